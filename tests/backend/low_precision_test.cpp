// Mixed precision on every backend (the CPU backend emulates it; CUDA runs it natively): the
// bf16/f16 forms of each op against the CPU fp32 op on the same rounded inputs, with tolerances
// in units of the type's roundoff; conversion, the non-finite count, the AdamW that writes the
// low-precision copy, in-place and accumulating forms, and the type rules (backend.h).
#include <gtest/gtest.h>

#include <cctype>
#include <cmath>
#include <string>
#include <tuple>
#include <vector>

#include "backend/backend.h"
#include "backend/test_util.h"
#include "core/dtype.h"

namespace {

using bt::Tol;
using bt::Vec;
using llm::DType;
using llm::Shape;
using llm::Tensor;

using bt::host_low;
using bt::low_to_vec;
using bt::rounded_to;
using bt::unit;

class LowPrecision : public ::testing::TestWithParam<std::tuple<llm::Backend*, DType>> {
 protected:
  llm::Backend& be() { return *std::get<0>(GetParam()); }
  DType type() const { return std::get<1>(GetParam()); }
  llm::Backend& cpu = llm::cpu_backend();
  Tensor up(const Shape& s, const Vec& v, DType t = DType::f32) {
    return be().upload(t == DType::f32 ? bt::host_f32(s, v) : host_low(s, v, t));
  }
  Vec down(const Tensor& t) {
    be().synchronize();
    Tensor h = be().download(t);
    return t.dtype() == DType::f32 ? bt::to_vec(h) : low_to_vec(h);
  }
  static Vec vec(const Tensor& host) { return bt::to_vec(host); }
};

TEST_P(LowPrecision, ConvertRoundsToNearestEven) {
  const DType t = type();
  bt::Rng rng(300);
  Vec x = rng.normal(1001, 3.0);
  x[0] = 1.0 + 1.0 / 512;  // a tie for bf16
  Tensor low = be().empty({1001}, t), back = be().empty({1001});
  be().convert(low, up({1001}, x));
  be().convert(back, low);
  EXPECT_TRUE(bt::all_equal("f32 -> low -> f32", down(back), rounded_to(x, t)));
  EXPECT_TRUE(bt::all_equal("low tensor", down(low), rounded_to(x, t)));
  if (t == DType::bf16) {
    EXPECT_EQ(down(low)[0], 1.0) << "ties round to even";
  }
}

// The backend's f32 -> 16-bit conversion gives exactly the host's bits (core/dtype.h: what the
// checkpoint loader of an inference model rounds with, and the tests' references) at the edges:
// signed zeros, ties both ways, f16 and bf16 subnormals and the smallest of them, halfway below
// the smallest (ties to zero), the largest finite values, ties and overflow to inf, infinities.
// A NaN stays a NaN (its payload is not compared: the host keeps it, a GPU may not).
TEST_P(LowPrecision, ConvertEdgeCasesBitForBit) {
  const DType t = type();
  const float e = t == DType::bf16 ? 0x1p-8f : 0x1p-11f;  // half an ulp of 1
  const float tiny = t == DType::bf16 ? 0x1p-133f : 0x1p-24f;  // the smallest subnormal
  const float big = t == DType::bf16 ? 0x1.feP127f : 65504.0f;  // the largest finite
  const float big_ulp = t == DType::bf16 ? 0x1p120f : 32.0f;
  std::vector<float> x = {0.0f, -0.0f, 1.0f + e, 1.0f + 3 * e, -(1.0f + e), -(1.0f + 3 * e), 1.0f + e * 1.5f,
                          tiny, -tiny, tiny / 2, tiny * 1.5f, tiny * 2.5f, tiny / 3, 0x1p-126f, 0x1p-130f, 1e-40f,
                          6.1e-5f, 5.9e-5f, big, -big, big + big_ulp / 2, big + big_ulp / 4, 3.0e38f, 3.4028235e38f,
                          -3.4028235e38f, 70000.0f, INFINITY, -INFINITY, 1e-3f, 3.14159265f, -2.71828183f};
  const size_t specials = x.size();
  x.push_back(NAN);
  bt::Rng rng(302);
  for (double v : rng.normal(500, 4.0)) x.push_back(static_cast<float>(v));
  Tensor host = Tensor::empty({int64_t(x.size())});
  std::copy(x.begin(), x.end(), host.data<float>());
  Tensor low = be().empty({int64_t(x.size())}, t);
  be().convert(low, be().upload(host));
  const Tensor got = be().download(low);
  const auto* g = static_cast<const uint16_t*>(got.raw());
  for (size_t i = 0; i < x.size(); ++i) {
    if (std::isnan(x[i])) {
      const float back = t == DType::bf16 ? llm::bf16_to_f32(g[i]) : llm::f16_to_f32(g[i]);
      EXPECT_TRUE(std::isnan(back)) << "NaN converted to " << back;
      continue;
    }
    const uint16_t want = t == DType::bf16 ? llm::f32_to_bf16(x[i]) : llm::f32_to_f16(x[i]);
    EXPECT_EQ(g[i], want) << (i < specials ? "edge case " : "random value ") << i << ": " << x[i] << " (0x"
                          << std::hex << g[i] << " vs the host's 0x" << want << std::dec << ")";
  }
}

TEST_P(LowPrecision, CountNonFinite) {
  const DType t = type();
  Vec x(5000, 1.0);
  EXPECT_EQ(be().count_nonfinite(up({5000}, x, t)), 0);
  x[7] = NAN, x[4000] = INFINITY, x[4999] = -INFINITY;
  EXPECT_EQ(be().count_nonfinite(up({5000}, x, t)), 3);
  EXPECT_EQ(be().count_nonfinite(up({5000}, x)), 3);
  if (t == DType::f16) {
    x = Vec(10, 70000.0);  // overflows f16 on conversion
    Tensor low = be().empty({10}, t);
    be().convert(low, up({10}, x));
    EXPECT_EQ(be().count_nonfinite(low), 10);
  }
}

TEST_P(LowPrecision, LinearAccumulatesInFp32) {
  const DType t = type();
  const int N = 37, C = 96, OC = 130;
  bt::Rng rng(301);
  const Vec inp = rounded_to(rng.normal(size_t(N) * C), t), w = rounded_to(rng.normal(size_t(OC) * C, 0.1), t);
  const Vec bias = rounded_to(rng.normal(size_t(OC)), t), dout = rounded_to(rng.normal(size_t(N) * OC), t);
  // CPU fp32 on the same (rounded) values
  Tensor cout = Tensor::empty({N, OC}), cdinp = Tensor::empty({N, C}), cdw = Tensor::zeros({OC, C}), cdb = Tensor::zeros({OC});
  cpu.linear_forward(cout, bt::host_f32({N, C}, inp), bt::host_f32({OC, C}, w), bt::host_f32({OC}, bias));
  cpu.linear_backward(cdinp, cdw, cdb, bt::host_f32({N, OC}, dout), bt::host_f32({N, C}, inp), bt::host_f32({OC, C}, w));
  Tensor gi = up({N, C}, inp, t), gw = up({OC, C}, w, t);
  // f32 output: only the accumulation order differs
  Tensor out32 = be().empty({N, OC});
  be().linear_forward(out32, gi, gw, up({OC}, bias));
  EXPECT_TRUE(bt::all_close("linear out (low in, f32 out)", down(out32), vec(cout), Tol{1e-5, 1e-4}));
  // low-precision output: one rounding
  Tensor outl = be().empty({N, OC}, t);
  be().linear_forward(outl, gi, gw, up({OC}, bias, t));
  EXPECT_TRUE(bt::all_close("linear out (low)", down(outl), vec(cout), Tol{unit(t), 1e-4}));
  // backward: dinp in the low type, dweight/dbias accumulate into f32 (+=, twice)
  Tensor dinp = be().empty({N, C}, t), dw = be().zeros({OC, C}), db = be().zeros({OC});
  Tensor gd = up({N, OC}, dout, t);
  be().linear_backward(dinp, dw, db, gd, gi, gw);
  be().linear_backward(Tensor{}, dw, db, gd, gi, gw);
  Vec cdw2 = vec(cdw), cdb2 = vec(cdb);
  for (double& v : cdw2) v *= 2;
  for (double& v : cdb2) v *= 2;
  EXPECT_TRUE(bt::all_close("linear dinp (low)", down(dinp), vec(cdinp), Tol{unit(t), 1e-3}));
  EXPECT_TRUE(bt::all_close("linear dweight (f32 +=)", down(dw), cdw2, Tol{1e-5, 1e-4}));
  EXPECT_TRUE(bt::all_close("linear dbias (f32 +=)", down(db), cdb2, Tol{1e-5, 1e-4}));
}

// Few rows (a decode step, a small batch) against a 16-bit weight: the CPU reads the weight at its
// width a block of rows at a time (bf16, one row: in registers) instead of widening it whole.
// Row counts and widths that leave partial 4-row groups, partial blocks (12 rows at C = 2056) and
// partial 16-lane runs; even, as the model's are (a device's 16-bit GEMMs then have 4-byte rows).
TEST_P(LowPrecision, LinearWithFewRows) {
  const DType t = type();
  for (auto [N, C, OC] : std::vector<std::tuple<int, int, int>>{
           {1, 96, 130}, {1, 2056, 66}, {3, 2056, 66}, {16, 40, 10}, {1, 8, 6}, {5, 13, 7}, {3, 40, 64}}) {
    SCOPED_TRACE("N=" + std::to_string(N) + " C=" + std::to_string(C) + " OC=" + std::to_string(OC));
    bt::Rng rng(320 + N + C);
    const Vec inp = rounded_to(rng.normal(size_t(N) * C), t), w = rounded_to(rng.normal(size_t(OC) * C, 0.1), t);
    const Vec bias = rounded_to(rng.normal(size_t(OC)), t);
    Tensor cout = Tensor::empty({N, OC}), cnb = Tensor::empty({N, OC});
    cpu.linear_forward(cout, bt::host_f32({N, C}, inp), bt::host_f32({OC, C}, w), bt::host_f32({OC}, bias));
    cpu.linear_forward(cnb, bt::host_f32({N, C}, inp), bt::host_f32({OC, C}, w), Tensor{});
    Tensor gi = up({N, C}, inp, t), gw = up({OC, C}, w, t);
    Tensor out32 = be().empty({N, OC}), nb32 = be().empty({N, OC}), outl = be().empty({N, OC}, t);
    be().linear_forward(out32, gi, gw, up({OC}, bias));
    be().linear_forward(nb32, gi, gw, Tensor{});
    be().linear_forward(outl, gi, gw, up({OC}, bias, t));
    const double scale = std::sqrt(static_cast<double>(C)) * 0.1;  // |out| without the bias
    EXPECT_TRUE(bt::all_close("linear out (low in, f32 out)", down(out32), vec(cout), Tol{1e-5, 1e-5 * scale}));
    EXPECT_TRUE(bt::all_close("linear out, no bias", down(nb32), vec(cnb), Tol{1e-5, 1e-5 * scale}));
    EXPECT_TRUE(bt::all_close("linear out (low)", down(outl), vec(cout), Tol{unit(t), 1e-5 * scale}));
    // The same 16-bit output without the bias (run 20 failed the line above at N = 3, C = 2056,
    // OC = 66 on the GPU: this tells the GEMM from the bias epilogue).
    Tensor nbl = be().empty({N, OC}, t);
    be().linear_forward(nbl, gi, gw, Tensor{});
    EXPECT_TRUE(bt::all_close("linear out (low), no bias", down(nbl), vec(cnb), Tol{unit(t), 1e-5 * scale}));
    // A bias one element past an alignment, as a 16-bit bias packed among an odd-sized model's
    // parameters is (cuBLASLt's bias epilogue is not given it: the bias kernel adds it).
    Vec padded(1, 0.0);
    padded.insert(padded.end(), bias.begin(), bias.end());
    Tensor bpad = up({OC + 1}, padded, t), outb = be().empty({N, OC}, t);
    be().linear_forward(outb, gi, gw, bpad.flat(1, OC));
    EXPECT_TRUE(bt::all_close("linear out (low), unaligned bias", down(outb), vec(cout), Tol{unit(t), 1e-5 * scale}));
    // The f32 output with that bias (the GEMM, then the bias added in place), and at {3, 40, 64}
    // 16-bit rows 16-byte aligned with that bias (the f32 accumulator).
    Tensor bpad32 = up({OC + 1}, padded), outb32 = be().empty({N, OC});
    be().linear_forward(outb32, gi, gw, bpad32.flat(1, OC));
    EXPECT_TRUE(bt::all_close("linear out (f32), unaligned bias", down(outb32), vec(cout), Tol{1e-5, 1e-5 * scale}));
    // dinp in the low type ([N, C] rows 2C bytes apart: 26 at C = 13).
    const Vec dout = rounded_to(rng.normal(size_t(N) * OC), t);
    Tensor cdinp = Tensor::empty({N, C}), cdw = Tensor::zeros({OC, C});
    cpu.linear_backward(cdinp, cdw, Tensor{}, bt::host_f32({N, OC}, dout), bt::host_f32({N, C}, inp),
                        bt::host_f32({OC, C}, w));
    Tensor dinp = be().empty({N, C}, t), dw = be().zeros({OC, C});
    be().linear_backward(dinp, dw, Tensor{}, up({N, OC}, dout, t), gi, gw);
    const double dscale = std::sqrt(static_cast<double>(OC)) * 0.1;
    EXPECT_TRUE(bt::all_close("linear dinp (low)", down(dinp), vec(cdinp), Tol{unit(t), 1e-5 * dscale}));
  }
}

TEST_P(LowPrecision, ElementwiseLayerNormAndCrossEntropy) {
  const DType t = type();
  const int N = 19, C = 200;
  bt::Rng rng(302);
  const Vec x = rounded_to(rng.normal(size_t(N) * C, 2.0), t), y = rounded_to(rng.normal(size_t(N) * C), t);
  // gelu, and its backward in place (dinp aliases dout)
  Tensor cg = Tensor::empty({N, C}), cgd = Tensor::empty({N, C});
  cpu.gelu_forward(cg, bt::host_f32({N, C}, x));
  cpu.gelu_backward(cgd, bt::host_f32({N, C}, x), bt::host_f32({N, C}, y));
  Tensor gg = be().empty({N, C}, t);
  be().gelu_forward(gg, up({N, C}, x, t));
  EXPECT_TRUE(bt::all_close("gelu (low)", down(gg), vec(cg), Tol{unit(t), 1e-5}));
  Tensor gy = up({N, C}, y, t);
  be().gelu_backward(gy, up({N, C}, x, t), gy);
  EXPECT_TRUE(bt::all_close("gelu backward in place (low)", down(gy), vec(cgd), Tol{unit(t), 1e-5}));
  // residual, and its backward (+= into both)
  Tensor cr = Tensor::empty({N, C});
  cpu.residual_forward(cr, bt::host_f32({N, C}, x), bt::host_f32({N, C}, y));
  Tensor gr = be().empty({N, C}, t);
  be().residual_forward(gr, up({N, C}, x, t), up({N, C}, y, t));
  EXPECT_TRUE(bt::all_close("residual (low)", down(gr), vec(cr), Tol{unit(t), 1e-6}));
  Tensor da = up({N, C}, x, t), dbb = up({N, C}, x, t);
  be().residual_backward(da, dbb, up({N, C}, y, t));
  EXPECT_TRUE(bt::all_close("residual backward da (low +=)", down(da), vec(cr), Tol{unit(t), 1e-6}));
  EXPECT_TRUE(bt::all_close("residual backward db (low +=)", down(dbb), vec(cr), Tol{unit(t), 1e-6}));
  // layernorm: low activations, f32 parameters and statistics; backward accumulates into dinp
  const Vec w = rng.normal(size_t(C), 0.2, 1.0), b = rng.normal(size_t(C), 0.2);
  Tensor co = Tensor::empty({N, C}), cm = Tensor::empty({N}), cs = Tensor::empty({N});
  cpu.layernorm_forward(co, cm, cs, bt::host_f32({N, C}, x), bt::host_f32({C}, w), bt::host_f32({C}, b), 1e-5f);
  Tensor go = be().empty({N, C}, t), gm = be().empty({N}), gs = be().empty({N});
  be().layernorm_forward(go, gm, gs, up({N, C}, x, t), up({C}, w), up({C}, b), 1e-5f);
  EXPECT_TRUE(bt::all_close("layernorm out (low)", down(go), vec(co), Tol{unit(t), 4 * unit(t)}));
  EXPECT_TRUE(bt::all_close("layernorm rstd", down(gs), vec(cs), Tol{1e-5, 0}));
  Tensor cdi = bt::host_f32({N, C}, y), cdw = Tensor::zeros({C}), cdb = Tensor::zeros({C});
  cpu.layernorm_backward(cdi, cdw, cdb, bt::host_f32({N, C}, x), bt::host_f32({N, C}, x), bt::host_f32({C}, w), cm, cs);
  Tensor gdi = up({N, C}, y, t), gdw = be().zeros({C}), gdb = be().zeros({C});
  be().layernorm_backward(gdi, gdw, gdb, up({N, C}, x, t), up({N, C}, x, t), up({C}, w), gm, gs);
  const Vec rdi = vec(cdi);
  EXPECT_TRUE(bt::all_close("layernorm dinp (low +=)", down(gdi), rdi, Tol{unit(t), 4 * unit(t) * bt::max_abs(rdi)}));
  EXPECT_TRUE(bt::all_close("layernorm dweight (f32 +=)", down(gdw), vec(cdw), Tol{1e-4, 1e-3}));
  // cross-entropy over low-precision logits, f32 losses; backward in place (dlogits = logits)
  const int V = 1000, Vp = 1024;
  const Vec logits = rounded_to(rng.normal(size_t(N) * Vp, 2.0), t);
  bt::IVec tg = rng.below(size_t(N), V);
  tg[3] = -1;
  Tensor cl = Tensor::empty({N}), cls = Tensor::empty({N}), cd = Tensor::empty({N, Vp});
  Tensor ctg = bt::host_i32({N}, tg);
  cpu.cross_entropy_forward(cl, cls, bt::host_f32({N, Vp}, logits), ctg, V, 0);
  cpu.cross_entropy_backward(cd, bt::host_f32({N, Vp}, logits), cls, ctg, 0.25f, V, 0);
  Tensor gl = be().empty({N}), gls = be().empty({N});
  Tensor glog = up({N, Vp}, logits, t), gtg = be().upload(ctg);
  be().cross_entropy_forward(gl, gls, glog, gtg, V, 0);
  EXPECT_TRUE(bt::all_close("cross-entropy losses (low logits)", down(gl), vec(cl), Tol{1e-5, 1e-4}));
  be().cross_entropy_backward(glog, glog, gls, gtg, 0.25f, V, 0);
  EXPECT_TRUE(bt::all_close("cross-entropy dlogits in place (low)", down(glog), vec(cd), Tol{unit(t), 1e-6}));
}

TEST_P(LowPrecision, EmbeddingForwardBackward) {
  const DType t = type();
  const int B = 2, T = 9, C = 32, V = 40, maxT = 12;
  bt::Rng rng(304);
  const bt::IVec tokens = rng.below(size_t(B) * T, V);
  const Vec wte = rounded_to(rng.normal(size_t(V) * C), t), wpe = rounded_to(rng.normal(size_t(maxT) * C), t);
  const Vec dout = rounded_to(rng.normal(size_t(B) * T * C), t);
  Tensor ctok = bt::host_i32({B, T}, tokens);
  Tensor co = Tensor::empty({B, T, C}), cdwte = Tensor::zeros({V, C}), cdwpe = Tensor::zeros({maxT, C});
  cpu.embedding_forward(co, ctok, bt::host_f32({V, C}, wte), bt::host_f32({maxT, C}, wpe), 0, 0);
  cpu.embedding_backward(cdwte, cdwpe, bt::host_f32({B, T, C}, dout), ctok, 0);
  Tensor tok = be().upload(ctok), go = be().empty({B, T, C}, t);
  be().embedding_forward(go, tok, up({V, C}, wte, t), up({maxT, C}, wpe, t), 0, 0);
  EXPECT_TRUE(bt::all_close("embedding out (low)", down(go), vec(co), Tol{unit(t), 1e-6}));
  Tensor dwte = be().zeros({V, C}), dwpe = be().zeros({maxT, C});
  be().embedding_backward(dwte, dwpe, up({B, T, C}, dout, t), tok, 0);
  EXPECT_TRUE(bt::all_close("embedding dwte (f32)", down(dwte), vec(cdwte), Tol{1e-6, 1e-6}));
  EXPECT_TRUE(bt::all_close("embedding dwpe (f32)", down(dwpe), vec(cdwpe), Tol{1e-6, 1e-6}));
  // A few tokens from a large table (generation; the CPU widens only their rows), as the vocabulary
  // shard [100, 300) of 400: tokens outside it look up zeros, the position row is still added.
  const int Vs = 200, begin = 100, Vt = 400;
  const Vec shard = rounded_to(rng.normal(size_t(Vs) * C), t);
  const bt::IVec few = {0, 100, 299, 300, 157, 399};
  Vec pos(wpe.begin(), wpe.begin() + 3 * C);
  pos[0] = -0.0;  // an out-of-shard token at position 0 gets this row itself: -0 stays -0
  Tensor cfew = bt::host_i32({2, 3}, few), cf = Tensor::empty({2, 3, C});
  cpu.embedding_forward(cf, cfew, bt::host_f32({Vs, C}, shard), bt::host_f32({3, C}, pos), begin, Vt);
  Tensor gf = be().empty({2, 3, C}, t);
  be().embedding_forward(gf, be().upload(cfew), up({Vs, C}, shard, t), up({3, C}, pos, t), begin, Vt);
  EXPECT_TRUE(bt::all_close("embedding of a few tokens from a shard (low)", down(gf), vec(cf), Tol{unit(t), 1e-6}));
  // The CPU copies the position row itself under an out-of-shard token (a device kernel may add
  // +0 to it, which gives +0: IEEE's -0 + +0).
  if (be().device().is_cpu()) {
    EXPECT_TRUE(std::signbit(down(gf)[0])) << "the position row's -0 under an out-of-shard token";
  }
  EXPECT_THROW(be().embedding_forward(gf, be().upload(cfew), up({Vs, C}, shard, t), Tensor{}, 300, Vt), llm::Error)
      << "a shard [300, 500) of a vocabulary of 400";
  Tensor bad = bt::host_i32({1, 2}, {5, Vt});
  EXPECT_THROW(be().embedding_forward(be().empty({1, 2, C}, t), be().upload(bad), up({Vs, C}, shard, t), Tensor{}, begin, Vt),
               llm::Error);
}

TEST_P(LowPrecision, AttentionForwardBackward) {
  const DType t = type();
  // The CPU emulation computes in fp32: one head dim there; the device kernels have one per tile shape.
  const std::vector<int> dims = be().device().is_cpu() ? std::vector<int>{64} : std::vector<int>{48, 64, 80, 96, 128, 160};
  for (int hd : dims) {
    SCOPED_TRACE("hd=" + std::to_string(hd));
    const int B = 2, T = 200, NH = 2, C = NH * hd;
    bt::Rng rng(303 + hd);
    const Vec qkv = rounded_to(rng.normal(size_t(B) * T * 3 * C), t), dout = rounded_to(rng.normal(size_t(B) * T * C), t);
    Tensor co = Tensor::empty({B, T, C}), cl = Tensor::empty({B, NH, T}), cd = Tensor::empty({B, T, 3 * C});
    cpu.attention_forward(co, cl, bt::host_f32({B, T, 3 * C}, qkv), NH);
    cpu.attention_backward(cd, bt::host_f32({B, T, C}, dout), bt::host_f32({B, T, 3 * C}, qkv), co, cl, NH);
    Tensor gq = up({B, T, 3 * C}, qkv, t), go = be().empty({B, T, C}, t), gl = be().empty({B, NH, T});
    be().attention_forward(go, gl, gq, NH);
    // out is a convex combination of v (|v| < 5): P rounded to the low type inside the tile products
    EXPECT_TRUE(bt::all_close("attention out (low)", down(go), vec(co), Tol{2 * unit(t), 4 * unit(t)}));
    EXPECT_TRUE(bt::all_close("attention lse", down(gl), vec(cl), Tol{1e-3, 1e-3}));
    Tensor gd = be().empty({B, T, 3 * C}, t);
    be().attention_backward(gd, up({B, T, C}, dout, t), gq, go, gl, NH);
    const Vec ref = vec(cd);
    EXPECT_TRUE(bt::all_close("attention dqkv (low)", down(gd), ref, Tol{4 * unit(t), 8 * unit(t) * bt::max_abs(ref)}));
  }
}

// The whole sequence at once against the same through a cache, chunk by chunk. On a device, at
// every head dim of the model table and with chunks that cross the kernels' query blocks (64, 128,
// 192 rows) and key tiles (32 to 128) at offsets that are not tile multiples: the tensor-core
// kernels' causal offset, tile skips, rescaling across tiles and the cache's batch stride (its
// capacity, not its length) against the CPU. The CPU emulation: one small shape.
TEST_P(LowPrecision, AttentionWithKvCache) {
  const DType t = type();
  const bool dev = !be().device().is_cpu();
  const std::vector<int> dims = dev ? std::vector<int>{48, 64, 80, 96, 128, 160} : std::vector<int>{16};
  const std::vector<std::pair<int, int>> chunks =
      dev ? std::vector<std::pair<int, int>>{{0, 130}, {130, 1}, {131, 1}, {132, 70}, {202, 1}, {203, 127}}
          : std::vector<std::pair<int, int>>{{0, 4}, {4, 3}};
  const int B = 2, NH = 2, T = chunks.back().first + chunks.back().second, maxT = T + 13;
  for (int hd : dims) {
    SCOPED_TRACE("hd=" + std::to_string(hd));
    const int C = NH * hd;
    bt::Rng rng(305 + hd);
    const Vec qkv = rounded_to(rng.normal(size_t(B) * T * 3 * C), t);
    Tensor co = Tensor::empty({B, T, C}), cl = Tensor::empty({B, NH, T});
    cpu.attention_forward(co, cl, bt::host_f32({B, T, 3 * C}, qkv), NH);
    // the cache starts NaN past what is written: a kernel that reads a row it should not shows it
    Tensor kc = up({B, maxT, C}, Vec(size_t(B) * maxT * C, std::nan("")), t);
    Tensor vc = up({B, maxT, C}, Vec(size_t(B) * maxT * C, std::nan("")), t);
    Vec got(size_t(B) * T * C);
    for (auto [past, n] : chunks) {
      Vec part;
      for (int b = 0; b < B; ++b)
        part.insert(part.end(), qkv.begin() + (size_t(b) * T + past) * 3 * C, qkv.begin() + (size_t(b) * T + past + n) * 3 * C);
      Tensor o = be().empty({B, n, C}, t);
      be().attention_kv_forward(o, up({B, n, 3 * C}, part, t), kc, vc, past, NH);
      const Vec ov = down(o);
      for (int b = 0; b < B; ++b)
        std::copy(ov.begin() + size_t(b) * n * C, ov.begin() + size_t(b + 1) * n * C, got.begin() + (size_t(b) * T + past) * C);
    }
    EXPECT_TRUE(bt::all_close("attention through the cache (low)", got, vec(co), Tol{2 * unit(t), 4 * unit(t)}));
  }
}

TEST_P(LowPrecision, MixedAdamWWritesTheLowPrecisionCopy) {
  const DType t = type();
  bt::Rng rng(330);
  const int64_t n = 4097;
  Vec p = rng.normal(size_t(n)), g = rng.normal(size_t(n));
  Tensor gp = up({n}, p), gg = up({n}, g), gm = be().zeros({n}), gv = be().zeros({n}), low = be().empty({n}, t);
  Tensor cp = bt::host_f32({n}, p), cm = Tensor::zeros({n}), cv = Tensor::zeros({n});
  llm::AdamWParams ap;
  ap.lr = 1e-2f, ap.weight_decay = 0.1f;
  be().adamw_update_mixed(gp, gg, gm, gv, ap, low);
  cpu.adamw_update(cp, bt::host_f32({n}, g), cm, cv, ap);
  const Vec master = down(gp);
  EXPECT_TRUE(bt::all_close("fp32 master", master, vec(cp), Tol{1e-6, 1e-6}));
  EXPECT_TRUE(bt::all_equal("low copy = round(master)", down(low), rounded_to(master, t)));
}

TEST_P(LowPrecision, SumSquaresAndScale) {
  const DType t = type();
  bt::Rng rng(306);
  const Vec x = rounded_to(rng.normal(3001), t);
  double ref = 0;
  for (double v : x) ref += v * v;
  Tensor lx = up({3001}, x, t);
  EXPECT_NEAR(be().sum_squares(lx), ref, 1e-5 * ref);
  be().scale(lx, 0.5f);  // exact in every type (no underflow at these magnitudes)
  Vec half = x;
  for (double& v : half) v *= 0.5;
  EXPECT_TRUE(bt::all_equal("scale by 1/2 (low)", down(lx), half));
}

TEST_P(LowPrecision, TypeRulesAreEnforced) {
  const DType t = type();
  const DType other = t == DType::bf16 ? DType::f16 : DType::bf16;
  const int N = 4, C = 8, OC = 5;
  auto expect_error = [](const char* what, auto&& call, const std::string& needle) {
    try {
      call();
      ADD_FAILURE() << what << ": expected an error";
    } catch (const llm::Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << what << ": " << e.what();
    }
  };
  Tensor inp = be().zeros({N, C}, t), w32 = be().zeros({OC, C}), wo = be().zeros({OC, C}, other);
  Tensor out = be().zeros({N, OC}, t);
  expect_error("linear with an f32 weight", [&] { be().linear_forward(out, inp, w32, Tensor{}); }, "linear_forward");
  expect_error("linear with the other low type", [&] { be().linear_forward(out, inp, wo, Tensor{}); }, "linear_forward");
  Tensor lw = be().zeros({C}, t), lb = be().zeros({C}), m = be().zeros({N}), r = be().zeros({N});
  Tensor lo = be().zeros({N, C}, t);
  expect_error("layernorm with a low-precision weight", [&] { be().layernorm_forward(lo, m, r, inp, lw, lb, 1e-5f); },
               "layernorm_forward");
  Tensor o32 = be().zeros({N, C});
  expect_error("gelu with mixed types", [&] { be().gelu_forward(o32, inp); }, "gelu_forward");
  Tensor g = be().zeros({N, C}, t), p = be().zeros({N, C}), mm = be().zeros({N, C}), v = be().zeros({N, C});
  expect_error("adamw on low-precision gradients", [&] { be().adamw_update(p, g, mm, v, llm::AdamWParams{}); }, "adamw");
}

std::string param_name(const ::testing::TestParamInfo<std::tuple<llm::Backend*, DType>>& info) {
  std::string s = std::get<0>(info.param)->name() + "_" + std::string(llm::dtype_name(std::get<1>(info.param)));
  for (char& ch : s)
    if (!std::isalnum(static_cast<unsigned char>(ch))) ch = '_';
  return s;
}

INSTANTIATE_TEST_SUITE_P(Backends, LowPrecision,
                         ::testing::Combine(::testing::ValuesIn(llm::available_backends()),
                                            ::testing::Values(DType::bf16, DType::f16)),
                         param_name);

}  // namespace
