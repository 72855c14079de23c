// CUDA-specific checks, next to the conformance suite (which runs every op on the CUDA backend
// automatically when a device is present): availability is reported (a skip with the reason,
// never a silent pass), the bf16/f16 paths against the CPU fp32 op on the same rounded inputs
// with dtype-appropriate tolerances, the mixed-precision pieces, determinism and error messages.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "backend/test_util.h"
#include "core/dtype.h"

#ifdef LLM_HAVE_CUDA
#include "backend/cuda/cuda_backend.h"
#endif

namespace {

using bt::Tol;
using bt::Vec;
using llm::DType;
using llm::Shape;
using llm::Tensor;

#ifndef LLM_HAVE_CUDA

TEST(CudaBackend, Available) { GTEST_SKIP() << "built without CUDA (LLM_ENABLE_CUDA=OFF or no nvcc found)"; }

#else

llm::cuda::CudaBackend* device_or_skip_reason(std::string& reason) {
  llm::cuda::CudaBackend* b = llm::cuda::cuda_backend();
  if (!b) reason = llm::cuda::device_status();
  return b;
}

#define REQUIRE_CUDA(be)                                  \
  std::string skip_reason_;                               \
  llm::cuda::CudaBackend* be = device_or_skip_reason(skip_reason_); \
  if (!be) GTEST_SKIP() << skip_reason_

TEST(CudaBackend, Available) {
  REQUIRE_CUDA(be);
  EXPECT_EQ(be->name(), "cuda");
  EXPECT_EQ(be->device().type, llm::DeviceType::cuda);
  bool listed = false;
  for (llm::Backend* b : llm::available_backends()) listed = listed || b == be;
  EXPECT_TRUE(listed) << "the CUDA backend must be in available_backends() (the conformance suite runs over it)";
  std::printf("  %s\n", llm::cuda::device_status().c_str());
}

TEST(CudaBackend, LocalDeviceFromLauncherVariables) {
  // Pure logic, runs without a device too. Start from none of the launcher variables set.
  const char* vars[] = {"OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "SLURM_LOCALID", "PALS_LOCAL_RANKID",
                        "PMI_LOCAL_RANK", "LOCAL_RANK"};
  std::vector<std::pair<std::string, std::string>> saved;
  for (const char* v : vars)
    if (const char* val = std::getenv(v)) saved.emplace_back(v, val), unsetenv(v);
  EXPECT_EQ(llm::cuda::local_device(4), 0);
  setenv("OMPI_COMM_WORLD_LOCAL_RANK", "5", 1);
  EXPECT_EQ(llm::cuda::local_device(4), 1);
  EXPECT_EQ(llm::cuda::local_device(8), 5);
  unsetenv("OMPI_COMM_WORLD_LOCAL_RANK");
  setenv("PALS_LOCAL_RANKID", "3", 1);
  EXPECT_EQ(llm::cuda::local_device(4), 3);
  unsetenv("PALS_LOCAL_RANKID");
  EXPECT_EQ(llm::cuda::local_device(0), 0);
  for (auto& [k, v] : saved) setenv(k.c_str(), v.c_str(), 1);
}

// Host tensors of a low-precision type holding round(v), and the f32 values they hold.
Tensor host_low(const Shape& s, const Vec& v, DType t) {
  Tensor h = Tensor::empty(s, t);
  auto* p = static_cast<uint16_t*>(h.raw());
  for (size_t i = 0; i < v.size(); ++i) p[i] = t == DType::bf16 ? llm::f32_to_bf16(float(v[i])) : llm::f32_to_f16(float(v[i]));
  return h;
}
Vec rounded_to(const Vec& v, DType t) {
  Vec r(v.size());
  for (size_t i = 0; i < v.size(); ++i)
    r[i] = t == DType::bf16 ? llm::bf16_to_f32(llm::f32_to_bf16(float(v[i]))) : llm::f16_to_f32(llm::f32_to_f16(float(v[i])));
  return r;
}
Vec low_to_vec(const Tensor& host) {
  const auto* p = static_cast<const uint16_t*>(host.raw());
  Vec r(size_t(host.numel()));
  for (size_t i = 0; i < r.size(); ++i)
    r[i] = host.dtype() == DType::bf16 ? llm::bf16_to_f32(p[i]) : llm::f16_to_f32(p[i]);
  return r;
}

struct Fixture {
  llm::cuda::CudaBackend& be;
  llm::Backend& cpu = llm::cpu_backend();
  Tensor up(const Shape& s, const Vec& v, DType t = DType::f32) {
    return be.upload(t == DType::f32 ? bt::host_f32(s, v) : host_low(s, v, t));
  }
  Vec down(const Tensor& t) {
    be.synchronize();
    Tensor h = be.download(t);
    return t.dtype() == DType::f32 ? bt::to_vec(h) : low_to_vec(h);
  }
  Vec cpu_vec(const Tensor& t) { return bt::to_vec(t); }
};

// Unit roundoff of a type: the relative error of storing one value.
double unit(DType t) { return t == DType::bf16 ? 1.0 / 256 : t == DType::f16 ? 1.0 / 2048 : 1e-7; }

class CudaLowPrecision : public ::testing::TestWithParam<DType> {};

TEST_P(CudaLowPrecision, ConvertRoundsToNearestEven) {
  REQUIRE_CUDA(be);
  Fixture f{*be};
  const DType t = GetParam();
  bt::Rng rng(300);
  Vec x = rng.normal(1001, 3.0);
  x[0] = 1.0 + 1.0 / 512;  // a tie for bf16
  Tensor low = be->empty({1001}, t), back = be->empty({1001});
  be->convert(low, f.up({1001}, x));
  be->convert(back, low);
  EXPECT_TRUE(bt::all_equal("f32 -> low -> f32", f.down(back), rounded_to(x, t)));
  EXPECT_TRUE(bt::all_equal("low tensor", f.down(low), rounded_to(x, t)));
}

TEST_P(CudaLowPrecision, CountNonFinite) {
  REQUIRE_CUDA(be);
  Fixture f{*be};
  const DType t = GetParam();
  Vec x(5000, 1.0);
  EXPECT_EQ(be->count_nonfinite(f.up({5000}, x, t)), 0);
  x[7] = NAN, x[4000] = INFINITY, x[4999] = -INFINITY;
  EXPECT_EQ(be->count_nonfinite(f.up({5000}, x, t)), 3);
  if (t == DType::f16) {
    x = Vec(10, 70000.0);  // overflows f16 on conversion
    Tensor low = be->empty({10}, t);
    be->convert(low, f.up({10}, x));
    EXPECT_EQ(be->count_nonfinite(low), 10);
  }
}

TEST_P(CudaLowPrecision, LinearAccumulatesInFp32) {
  REQUIRE_CUDA(be);
  Fixture f{*be};
  const DType t = GetParam();
  const int N = 37, C = 96, OC = 130;
  bt::Rng rng(301);
  const Vec inp = rounded_to(rng.normal(size_t(N) * C), t), w = rounded_to(rng.normal(size_t(OC) * C, 0.1), t);
  const Vec bias = rounded_to(rng.normal(size_t(OC)), t), dout = rounded_to(rng.normal(size_t(N) * OC), t);
  // CPU fp32 on the same (rounded) values
  Tensor cout = Tensor::empty({N, OC}), cdinp = Tensor::empty({N, C}), cdw = Tensor::zeros({OC, C}), cdb = Tensor::zeros({OC});
  f.cpu.linear_forward(cout, bt::host_f32({N, C}, inp), bt::host_f32({OC, C}, w), bt::host_f32({OC}, bias));
  f.cpu.linear_backward(cdinp, cdw, cdb, bt::host_f32({N, OC}, dout), bt::host_f32({N, C}, inp), bt::host_f32({OC, C}, w));
  Tensor gi = f.up({N, C}, inp, t), gw = f.up({OC, C}, w, t);
  // f32 output: only the accumulation order differs
  Tensor out32 = be->empty({N, OC});
  be->linear_forward(out32, gi, gw, f.up({OC}, bias));
  EXPECT_TRUE(bt::all_close("linear out (low in, f32 out)", f.down(out32), f.cpu_vec(cout), Tol{1e-5, 1e-4}));
  // low-precision output: one rounding
  Tensor outl = be->empty({N, OC}, t);
  be->linear_forward(outl, gi, gw, f.up({OC}, bias, t));
  EXPECT_TRUE(bt::all_close("linear out (low)", f.down(outl), f.cpu_vec(cout), Tol{unit(t), 1e-4}));
  // backward: dinp in the low type, dweight/dbias accumulate into f32 (+=, twice)
  Tensor dinp = be->empty({N, C}, t), dw = be->zeros({OC, C}), db = be->zeros({OC});
  Tensor gd = f.up({N, OC}, dout, t);
  be->linear_backward(dinp, dw, db, gd, gi, gw);
  be->linear_backward(Tensor{}, dw, db, gd, gi, gw);
  Vec cdw2 = f.cpu_vec(cdw), cdb2 = f.cpu_vec(cdb);
  for (double& v : cdw2) v *= 2;
  for (double& v : cdb2) v *= 2;
  EXPECT_TRUE(bt::all_close("linear dinp (low)", f.down(dinp), f.cpu_vec(cdinp), Tol{unit(t), 1e-3}));
  EXPECT_TRUE(bt::all_close("linear dweight (f32 +=)", f.down(dw), cdw2, Tol{1e-5, 1e-4}));
  EXPECT_TRUE(bt::all_close("linear dbias (f32 +=)", f.down(db), cdb2, Tol{1e-5, 1e-4}));
}

TEST_P(CudaLowPrecision, ElementwiseLayerNormAndCrossEntropy) {
  REQUIRE_CUDA(be);
  Fixture f{*be};
  const DType t = GetParam();
  const int N = 19, C = 200;
  bt::Rng rng(302);
  const Vec x = rounded_to(rng.normal(size_t(N) * C, 2.0), t), y = rounded_to(rng.normal(size_t(N) * C), t);
  // gelu
  Tensor cg = Tensor::empty({N, C});
  f.cpu.gelu_forward(cg, bt::host_f32({N, C}, x));
  Tensor gg = be->empty({N, C}, t);
  be->gelu_forward(gg, f.up({N, C}, x, t));
  EXPECT_TRUE(bt::all_close("gelu (low)", f.down(gg), f.cpu_vec(cg), Tol{unit(t), 1e-5}));
  // residual
  Tensor cr = Tensor::empty({N, C});
  f.cpu.residual_forward(cr, bt::host_f32({N, C}, x), bt::host_f32({N, C}, y));
  Tensor gr = be->empty({N, C}, t);
  be->residual_forward(gr, f.up({N, C}, x, t), f.up({N, C}, y, t));
  EXPECT_TRUE(bt::all_close("residual (low)", f.down(gr), f.cpu_vec(cr), Tol{unit(t), 1e-6}));
  // layernorm: low activations, f32 parameters and statistics
  const Vec w = rng.normal(size_t(C), 0.2, 1.0), b = rng.normal(size_t(C), 0.2);
  Tensor co = Tensor::empty({N, C}), cm = Tensor::empty({N}), cs = Tensor::empty({N});
  f.cpu.layernorm_forward(co, cm, cs, bt::host_f32({N, C}, x), bt::host_f32({C}, w), bt::host_f32({C}, b), 1e-5f);
  Tensor go = be->empty({N, C}, t), gm = be->empty({N}), gs = be->empty({N});
  be->layernorm_forward(go, gm, gs, f.up({N, C}, x, t), f.up({C}, w), f.up({C}, b), 1e-5f);
  EXPECT_TRUE(bt::all_close("layernorm out (low)", f.down(go), f.cpu_vec(co), Tol{unit(t), 4 * unit(t)}));
  EXPECT_TRUE(bt::all_close("layernorm rstd", f.down(gs), f.cpu_vec(cs), Tol{1e-5, 0}));
  // cross-entropy over low-precision logits, f32 losses
  const int V = 1000, Vp = 1024;
  const Vec logits = rounded_to(rng.normal(size_t(N) * Vp, 2.0), t);
  bt::IVec tg = rng.below(size_t(N), V);
  tg[3] = -1;
  Tensor cl = Tensor::empty({N}), cls = Tensor::empty({N});
  f.cpu.cross_entropy_forward(cl, cls, bt::host_f32({N, Vp}, logits), bt::host_i32({N}, tg), V, 0);
  Tensor gl = be->empty({N}), gls = be->empty({N});
  Tensor glog = f.up({N, Vp}, logits, t);
  be->cross_entropy_forward(gl, gls, glog, be->upload(bt::host_i32({N}, tg)), V, 0);
  EXPECT_TRUE(bt::all_close("cross-entropy losses (low logits)", f.down(gl), f.cpu_vec(cl), Tol{1e-5, 1e-4}));
}

TEST_P(CudaLowPrecision, AttentionForwardBackward) {
  REQUIRE_CUDA(be);
  Fixture f{*be};
  const DType t = GetParam();
  for (int hd : {48, 64, 80, 96, 128, 160}) {
    SCOPED_TRACE("hd=" + std::to_string(hd));
    const int B = 2, T = 200, NH = 2, C = NH * hd;
    bt::Rng rng(303 + hd);
    const Vec qkv = rounded_to(rng.normal(size_t(B) * T * 3 * C), t), dout = rounded_to(rng.normal(size_t(B) * T * C), t);
    Tensor co = Tensor::empty({B, T, C}), cl = Tensor::empty({B, NH, T}), cd = Tensor::empty({B, T, 3 * C});
    f.cpu.attention_forward(co, cl, bt::host_f32({B, T, 3 * C}, qkv), NH);
    f.cpu.attention_backward(cd, bt::host_f32({B, T, C}, dout), bt::host_f32({B, T, 3 * C}, qkv), co, cl, NH);
    Tensor gq = f.up({B, T, 3 * C}, qkv, t), go = be->empty({B, T, C}, t), gl = be->empty({B, NH, T});
    be->attention_forward(go, gl, gq, NH);
    // out is a convex combination of v (|v| < 5): P rounded to the low type inside the tile products
    EXPECT_TRUE(bt::all_close("attention out (low)", f.down(go), f.cpu_vec(co), Tol{2 * unit(t), 4 * unit(t)}));
    EXPECT_TRUE(bt::all_close("attention lse", f.down(gl), f.cpu_vec(cl), Tol{1e-3, 1e-3}));
    Tensor gd = be->empty({B, T, 3 * C}, t);
    be->attention_backward(gd, f.up({B, T, C}, dout, t), gq, go, gl, NH);
    const Vec ref = f.cpu_vec(cd);
    EXPECT_TRUE(bt::all_close("attention dqkv (low)", f.down(gd), ref, Tol{4 * unit(t), 8 * unit(t) * bt::max_abs(ref)}));
  }
}

INSTANTIATE_TEST_SUITE_P(Types, CudaLowPrecision, ::testing::Values(DType::bf16, DType::f16),
                         [](const auto& info) { return std::string(llm::dtype_name(info.param)); });

TEST(CudaBackend, AttentionHeadDimsOfTheModelTableInFp32) {
  REQUIRE_CUDA(be);
  Fixture f{*be};
  for (int hd : {48, 80, 96, 128, 160}) {
    SCOPED_TRACE("hd=" + std::to_string(hd));
    const int B = 1, T = 130, NH = 3, C = NH * hd;
    bt::Rng rng(310 + hd);
    const Vec qkv = rng.normal(size_t(B) * T * 3 * C), dout = rng.normal(size_t(B) * T * C);
    Tensor co = Tensor::empty({B, T, C}), cl = Tensor::empty({B, NH, T}), cd = Tensor::empty({B, T, 3 * C});
    f.cpu.attention_forward(co, cl, bt::host_f32({B, T, 3 * C}, qkv), NH);
    f.cpu.attention_backward(cd, bt::host_f32({B, T, C}, dout), bt::host_f32({B, T, 3 * C}, qkv), co, cl, NH);
    Tensor go = be->empty({B, T, C}), gl = be->empty({B, NH, T}), gd = be->empty({B, T, 3 * C});
    Tensor gq = f.up({B, T, 3 * C}, qkv);
    be->attention_forward(go, gl, gq, NH);
    be->attention_backward(gd, f.up({B, T, C}, dout), gq, go, gl, NH);
    const Vec ref = f.cpu_vec(cd);
    EXPECT_TRUE(bt::all_close("attention out", f.down(go), f.cpu_vec(co), Tol{1e-4, 2e-5}));
    EXPECT_TRUE(bt::all_close("attention dqkv", f.down(gd), ref, Tol{1e-4, 2e-5 * bt::max_abs(ref)}));
  }
}

TEST(CudaBackend, FusedLinearGeluMatchesLinearThenGelu) {
  REQUIRE_CUDA(be);
  Fixture f{*be};
  const int N = 64, C = 128, OC = 256;
  bt::Rng rng(320);
  Tensor inp = f.up({N, C}, rng.normal(size_t(N) * C)), w = f.up({OC, C}, rng.normal(size_t(OC) * C, 0.1));
  Tensor b = f.up({OC}, rng.normal(size_t(OC)));
  Tensor pre = be->empty({N, OC}), out = be->empty({N, OC}), pre2 = be->empty({N, OC}), out2 = be->empty({N, OC});
  be->linear_forward(pre, inp, w, b);
  be->gelu_forward(out, pre);
  be->linear_gelu_forward(out2, pre2, inp, w, b);
  EXPECT_TRUE(bt::all_close("pre-activation", f.down(pre2), f.down(pre), Tol{1e-5, 1e-5}));
  EXPECT_TRUE(bt::all_close("gelu epilogue", f.down(out2), f.down(out), Tol{1e-4, 1e-4}));
}

TEST(CudaBackend, MixedAdamWWritesTheLowPrecisionCopy) {
  REQUIRE_CUDA(be);
  Fixture f{*be};
  bt::Rng rng(330);
  const int64_t n = 4097;
  Vec p = rng.normal(size_t(n)), g = rng.normal(size_t(n));
  Tensor gp = f.up({n}, p), gg = f.up({n}, g), gm = be->zeros({n}), gv = be->zeros({n}), low = be->empty({n}, DType::bf16);
  Tensor cp = bt::host_f32({n}, p), cm = Tensor::zeros({n}), cv = Tensor::zeros({n});
  llm::AdamWParams ap;
  ap.lr = 1e-2f, ap.weight_decay = 0.1f;
  be->adamw_update_mixed(gp, gg, gm, gv, ap, low);
  f.cpu.adamw_update(cp, bt::host_f32({n}, g), cm, cv, ap);
  const Vec master = f.down(gp);
  EXPECT_TRUE(bt::all_close("fp32 master", master, f.cpu_vec(cp), Tol{1e-6, 1e-6}));
  EXPECT_TRUE(bt::all_equal("bf16 copy = round(master)", f.down(low), rounded_to(master, DType::bf16)));
}

TEST(CudaBackend, ReductionsAreDeterministic) {
  REQUIRE_CUDA(be);
  Fixture f{*be};
  bt::Rng rng(340);
  const int B = 4, T = 64, C = 96, V = 50;
  bt::IVec tokens = rng.below(size_t(B) * T, V);
  Tensor tok = be->upload(bt::host_i32({B, T}, tokens));
  Tensor dout = f.up({B, T, C}, rng.normal(size_t(B) * T * C));
  Vec first;
  for (int run = 0; run < 2; ++run) {
    Tensor dwte = be->zeros({V, C}), dwpe = be->zeros({T, C});
    be->embedding_backward(dwte, dwpe, dout, tok, 0);
    const Vec got = f.down(dwte);
    if (run == 0) first = got;
    else EXPECT_TRUE(bt::all_equal("embedding dwte, second run", got, first));
  }
  Tensor x = f.up({1000003}, rng.normal(1000003));
  EXPECT_EQ(be->sum_squares(x), be->sum_squares(x));
}

TEST(CudaBackend, ErrorsNameTheOpAndShapes) {
  REQUIRE_CUDA(be);
  Tensor inp = be->zeros({4, 8}), w = be->zeros({5, 7}), out = be->zeros({4, 5});
  try {
    be->linear_forward(out, inp, w, Tensor{});
    FAIL() << "expected an error";
  } catch (const llm::Error& e) {
    EXPECT_NE(std::string(e.what()).find("linear_forward"), std::string::npos) << e.what();
  }
  Tensor host = Tensor::zeros({4, 8});
  EXPECT_THROW(be->gelu_forward(out, host), llm::Error);  // host tensor into a device op
  Tensor tok = be->upload(bt::host_i32({1, 3}, {0, 7, 2}));
  Tensor e = be->zeros({1, 3, 4});
  try {
    be->embedding_forward(e, tok, be->zeros({5, 4}), Tensor{}, 0, 0);
    FAIL() << "expected an error";
  } catch (const llm::Error& err) {
    const std::string m = err.what();
    EXPECT_NE(m.find("token id 7 at position 1"), std::string::npos) << m;
  }
}

TEST(CudaBackend, CachingAllocatorReusesFreedBlocks) {
  REQUIRE_CUDA(be);
  const auto before = be->allocator().stats();
  { Tensor a = be->empty({1 << 20}); }
  { Tensor b = be->empty({1 << 20}); }
  const auto after = be->allocator().stats();
  EXPECT_GE(after.cache_hits, before.cache_hits + 1);
  EXPECT_EQ(llm::cuda::CachingAllocator::round_size(1), 512u);
  EXPECT_EQ(llm::cuda::CachingAllocator::round_size((1 << 20) + 1), size_t(2) << 20);
}

#endif  // LLM_HAVE_CUDA

}  // namespace
