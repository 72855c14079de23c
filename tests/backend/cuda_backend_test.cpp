// CUDA-specific checks, next to the conformance suite (which runs every op on the CUDA backend
// automatically when a device is present): availability is reported (a skip with the reason,
// never a silent pass), the head dimensions of the model table, the fused GELU epilogues
// (forward and backward), determinism and error messages. The bf16/f16 paths are in
// low_precision_test.cpp (every backend).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "backend/test_util.h"
#include "support/require_cuda.h"
#include "core/dtype.h"

#ifdef LLM_HAVE_CUDA
#include "backend/cuda/cuda_backend.h"
#include "kernels.h"
#endif

namespace {

using bt::Tol;
using bt::Vec;
using llm::DType;
using llm::Shape;
using llm::Tensor;

// Without a device the test reports itself skipped with the reason; under LLM_REQUIRE_CUDA=1 it
// fails instead (support/require_cuda.h).
using llm::testing::cuda_required;

#ifndef LLM_HAVE_CUDA

TEST(CudaBackend, Available) {
  if (cuda_required()) GTEST_FAIL() << "LLM_REQUIRE_CUDA=1 in a build without CUDA";
  GTEST_SKIP() << "built without CUDA (LLM_ENABLE_CUDA=OFF or no nvcc found)";
}

#else

// Fills a device tensor with NaN (f32, bf16 or f16) before a kernel writes it, so that a row the
// kernel leaves unwritten shows instead of keeping an earlier run's values.
void nan_fill(llm::Backend& be, const Tensor& t) {
  Tensor h = Tensor::empty(t.shape(), t.dtype());
  if (t.dtype() == DType::f32) {
    std::fill(h.data<float>(), h.data<float>() + h.numel(), NAN);
  } else {
    const uint16_t bits = t.dtype() == DType::bf16 ? 0x7FC0 : 0x7E00;
    std::fill(static_cast<uint16_t*>(h.raw()), static_cast<uint16_t*>(h.raw()) + h.numel(), bits);
  }
  be.copy(t, be.upload(h));
}

llm::cuda::CudaBackend* device_or_skip_reason(std::string& reason) {
  llm::cuda::CudaBackend* b = llm::cuda::cuda_backend();
  if (!b) reason = llm::cuda::device_status();
  return b;
}

#define REQUIRE_CUDA(be)                                                                       \
  std::string skip_reason_;                                                                    \
  llm::cuda::CudaBackend* be = device_or_skip_reason(skip_reason_);                            \
  if (!be && cuda_required()) GTEST_FAIL() << "LLM_REQUIRE_CUDA=1 and no CUDA backend: " << skip_reason_; \
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

TEST(CudaBackend, AttentionChoiceIsCheckedByName) {
  // Pure logic, no device. LLM_CUDA_ATTENTION is read once per process, so each case runs in a
  // freshly started child (death tests' "threadsafe" style re-executes the binary).
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  using llm::kernels::AttentionKernels;
  const auto choice_is = [](const char* value, AttentionKernels want) {
    setenv("LLM_CUDA_ATTENTION", value, 1);
    std::exit(llm::kernels::attention_kernels() == want ? 0 : 1);
  };
  EXPECT_EXIT(choice_is("", AttentionKernels::automatic), ::testing::ExitedWithCode(0), "");
  EXPECT_EXIT(choice_is("auto", AttentionKernels::automatic), ::testing::ExitedWithCode(0), "");
  EXPECT_EXIT(choice_is("wgmma-pp", AttentionKernels::wgmma_pp), ::testing::ExitedWithCode(0), "");
  EXPECT_EXIT(choice_is("wgmma-ws", AttentionKernels::wgmma_ws), ::testing::ExitedWithCode(0), "");
  EXPECT_EXIT(choice_is("wgmma-ws-pp", AttentionKernels::wgmma_ws_pp), ::testing::ExitedWithCode(0), "");
  EXPECT_EXIT(choice_is("wgmma-ws3", AttentionKernels::wgmma_ws3), ::testing::ExitedWithCode(0), "");
  EXPECT_EXIT(choice_is("wgmma-atomic", AttentionKernels::wgmma_atomic), ::testing::ExitedWithCode(0), "");
  EXPECT_EXIT(choice_is("wgmma-rs", AttentionKernels::wgmma_rs), ::testing::ExitedWithCode(0), "");
  EXPECT_EXIT(choice_is("wgmma-ws-atomic", AttentionKernels::wgmma_ws_atomic), ::testing::ExitedWithCode(0), "");
  EXPECT_EXIT(choice_is("wgmma-ws-dqfirst", AttentionKernels::wgmma_ws_dqfirst), ::testing::ExitedWithCode(0), "");
  EXPECT_EXIT(choice_is("wgmma-ws-tma", AttentionKernels::wgmma_ws_tma), ::testing::ExitedWithCode(0), "");
  EXPECT_EXIT(choice_is("tc-m32", AttentionKernels::tc_m32), ::testing::ExitedWithCode(0), "");
  EXPECT_EXIT(
      {
        setenv("LLM_CUDA_ATTENTION", "fast", 1);
        try {
          llm::kernels::attention_kernels();
        } catch (const std::exception& e) {
          std::fprintf(stderr, "%s\n", e.what());
          std::exit(2);
        }
        std::exit(0);
      },
      ::testing::ExitedWithCode(2), "LLM_CUDA_ATTENTION='fast': expected auto, tc, tc-m32, tc-atomic, wgmma, wgmma-pp, wgmma-ws, wgmma-ws-pp, wgmma-ws3, wgmma-atomic, wgmma-rs, wgmma-ws-atomic, wgmma-ws-dqfirst, wgmma-ws-tma or simt");
}

// For the settings read once per process (each case in a death test's fresh child): sets `var` to
// `value` (nullptr: unset) and exits 0 when setting() returns want, 1 when it returns something
// else, 2 with the error's message when it refuses the value.
[[noreturn]] void exit_on_setting(const char* var, const char* value, int (*setting)(), int want) {
  if (value) setenv(var, value, 1);
  else unsetenv(var);
  try {
    std::exit(setting() == want ? 0 : 1);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s\n", e.what());
    std::exit(2);
  }
}

TEST(CudaBackend, BlockOrderIsCheckedByName) {
  // Pure logic, no device; read once per process, so each case in a fresh child.
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  const auto setting_is = [](const char* value, int want) {
    exit_on_setting("LLM_CUDA_BLOCK_ORDER", value, llm::kernels::block_order_setting, want);
  };
  EXPECT_EXIT(setting_is(nullptr, 0), ::testing::ExitedWithCode(0), "");
  EXPECT_EXIT(setting_is("heaviest", 0), ::testing::ExitedWithCode(0), "");
  EXPECT_EXIT(setting_is("launch", -1), ::testing::ExitedWithCode(0), "");
  EXPECT_EXIT(setting_is("heaviest:8", 8), ::testing::ExitedWithCode(0), "");
  EXPECT_EXIT(setting_is("heaviest:1024", 1024), ::testing::ExitedWithCode(0), "");
  for (const char* bad : {"heaviest:0", "heaviest:2000", "heaviest:8x", "heaviest:", "longest"})
    EXPECT_EXIT(setting_is(bad, 0), ::testing::ExitedWithCode(2),
                std::string("LLM_CUDA_BLOCK_ORDER='") + bad + "': expected heaviest");
}

TEST(CudaBackend, DqConvertIsCheckedByName) {
  // Pure logic, no device; read once per process, so each case in a fresh child.
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  const auto setting_is = [](const char* value, int want) {
    exit_on_setting("LLM_CUDA_DQ_CONVERT", value, llm::kernels::dq_convert_setting, want);
  };
  EXPECT_EXIT(setting_is(nullptr, 1), ::testing::ExitedWithCode(0), "");
  EXPECT_EXIT(setting_is("kernel", 1), ::testing::ExitedWithCode(0), "");
  EXPECT_EXIT(setting_is("fused", 2), ::testing::ExitedWithCode(0), "");
  for (const char* bad : {"1", "Fused", "fused ", "inline"})
    EXPECT_EXIT(setting_is(bad, 0), ::testing::ExitedWithCode(2),
                std::string("LLM_CUDA_DQ_CONVERT='") + bad + "': expected kernel");
}

TEST(CudaBackend, DqRedIsCheckedByName) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  const auto setting_is = [](const char* value, int want) {
    exit_on_setting("LLM_CUDA_DQ_RED", value, llm::kernels::dq_red_setting, want);
  };
  EXPECT_EXIT(setting_is(nullptr, 2), ::testing::ExitedWithCode(0), "");
  EXPECT_EXIT(setting_is("v2", 2), ::testing::ExitedWithCode(0), "");
  EXPECT_EXIT(setting_is("v4", 4), ::testing::ExitedWithCode(0), "");
  for (const char* bad : {"4", "V4", "v8", "v4 "})
    EXPECT_EXIT(setting_is(bad, 0), ::testing::ExitedWithCode(2), std::string("LLM_CUDA_DQ_RED='") + bad + "': expected v2");
}

TEST(CudaBackend, SmemLimitIsCheckedByName) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  const auto setting_is = [](const char* value, int want) {
    exit_on_setting("LLM_CUDA_SMEM_LIMIT", value, llm::kernels::smem_limit_setting, want);
  };
  EXPECT_EXIT(setting_is(nullptr, 0), ::testing::ExitedWithCode(0), "");
  EXPECT_EXIT(setting_is("", 0), ::testing::ExitedWithCode(0), "");
  EXPECT_EXIT(setting_is("sm80", 166912), ::testing::ExitedWithCode(0), "");
  EXPECT_EXIT(setting_is("sm86", 101376), ::testing::ExitedWithCode(0), "");
  EXPECT_EXIT(setting_is("sm89", 101376), ::testing::ExitedWithCode(0), "");
  EXPECT_EXIT(setting_is("sm90", 232448), ::testing::ExitedWithCode(0), "");
  EXPECT_EXIT(setting_is("49152", 49152), ::testing::ExitedWithCode(0), "");
  EXPECT_EXIT(setting_is("200000", 200000), ::testing::ExitedWithCode(0), "");
  for (const char* bad : {"49151", "0", "-100000", "1e5", "100k", "1000000000", "A100", "sm_80", " 100000"})
    EXPECT_EXIT(setting_is(bad, 0), ::testing::ExitedWithCode(2),
                std::string("LLM_CUDA_SMEM_LIMIT='") + bad + "': expected a byte count of at least 49152");
}

// The mma.sync kernels' shared memory by head dim (pure arithmetic, no device), which auto and the
// tc-atomic backward compare with the opt-in limit: tc's forward (64 queries; Q staged in the K/V
// buffers), tc-m32's (128 queries; hd 160 has only the first), and tc-atomic's 8-warp backward
// (none at hd 160; at hd 128 under an A100's 166,912 bytes, over the 101,376 of sm_86/sm_89).
TEST(CudaBackend, TensorCoreKernelsSharedMemoryByHeadDim) {
  using llm::kernels::attention_backward_tc_wide_smem;
  using llm::kernels::attention_forward_tc_smem;
  EXPECT_EQ(attention_forward_tc_smem(64, false), size_t(36864));   // 2 buffers x K, V x 64 rows x 72 x 2 bytes
  EXPECT_EQ(attention_forward_tc_smem(128, true), size_t(104448));  // 2 x (4 x 64 + 128) x 136
  EXPECT_EQ(attention_forward_tc_smem(160, true), attention_forward_tc_smem(160, false));
  EXPECT_EQ(attention_forward_tc_smem(160, false), size_t(43008));  // 32-key tiles
  EXPECT_EQ(attention_forward_tc_smem(100, false), size_t(0));
  // K, V [128][HD + 8], two stages of Q, dO [64][HD + 8] and lse, D [64], dS^T [128][72].
  for (int hd : {48, 64, 80, 96, 128})
    EXPECT_EQ(attention_backward_tc_wide_smem(hd), size_t(2 * 512 * (hd + 8) + 1024 + 2 * 128 * 72)) << "hd " << hd;
  EXPECT_EQ(attention_backward_tc_wide_smem(128), size_t(158720));
  EXPECT_LE(attention_backward_tc_wide_smem(128), size_t(166912));
  EXPECT_GT(attention_backward_tc_wide_smem(80), size_t(101376));
  EXPECT_LE(attention_backward_tc_wide_smem(64), size_t(101376));
  EXPECT_EQ(attention_backward_tc_wide_smem(160), size_t(0));
  EXPECT_EQ(attention_backward_tc_wide_smem(100), size_t(0));
}

// A child process (a death test's) under LLM_CUDA_SMEM_LIMIT=limit and LLM_CUDA_ATTENTION=attention
// (unset: null): exits 0 when body(backend) is true, 1 when false, 2 on an error (printed). The
// settings are read once per process, so each case needs a fresh child.
template <typename Body>
[[noreturn]] void smem_child(const char* limit, const char* attention, Body body) {
  setenv("LLM_CUDA_SMEM_LIMIT", limit, 1);
  if (attention) setenv("LLM_CUDA_ATTENTION", attention, 1);
  else unsetenv("LLM_CUDA_ATTENTION");
  try {
    std::exit(body(*llm::cuda::cuda_backend()) ? 0 : 1);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s\n", e.what());
    std::exit(2);
  }
}
// A bf16 attention forward (and backward) at head dim hd, T 256, two heads, for smem_child: true
// when out (and dqkv) match the CPU fp32 op on the same rounded inputs within LowPrecision's
// tolerances (a mismatch is printed), so a kernel chosen under a cap is checked, not just run.
auto attention_pass(int hd, bool backward) {
  return [hd, backward](llm::cuda::CudaBackend& be) {
    const int64_t B = 1, T = 256, NH = 2, C = NH * hd;
    const double u = bt::unit(DType::bf16);
    bt::Rng rng(330);
    Tensor qkv = be.empty({B, T, 3 * C}, DType::bf16), dout = be.empty({B, T, C}, DType::bf16);
    be.convert(qkv, be.upload(bt::host_f32({B, T, 3 * C}, rng.normal(size_t(B) * T * 3 * C))));
    be.convert(dout, be.upload(bt::host_f32({B, T, C}, rng.normal(size_t(B) * T * C))));
    Tensor out = be.zeros({B, T, C}, DType::bf16), lse = be.zeros({B, NH, T});
    be.attention_forward(out, lse, qkv, static_cast<int>(NH));
    be.synchronize();
    llm::Backend& cpu = llm::cpu_backend();
    const Tensor hq = bt::host_f32({B, T, 3 * C}, bt::low_to_vec(be.download(qkv)));
    Tensor co = Tensor::empty({B, T, C}), cl = Tensor::empty({B, NH, T});
    cpu.attention_forward(co, cl, hq, static_cast<int>(NH));
    bool ok = true;
    const auto check = [&](const ::testing::AssertionResult& r) {
      if (!r) std::fprintf(stderr, "%s\n", r.message());
      ok = ok && bool(r);
    };
    check(bt::all_close("attention out", bt::low_to_vec(be.download(out)), bt::to_vec(co), Tol{2 * u, 4 * u}));
    if (backward) {
      Tensor dqkv = be.zeros({B, T, 3 * C}, DType::bf16);
      be.attention_backward(dqkv, dout, qkv, out, lse, static_cast<int>(NH));
      be.synchronize();
      Tensor cd = Tensor::empty({B, T, 3 * C});
      cpu.attention_backward(cd, bt::host_f32({B, T, C}, bt::low_to_vec(be.download(dout))), hq, co, cl,
                             static_cast<int>(NH));
      const Vec ref = bt::to_vec(cd);
      check(bt::all_close("attention dqkv", bt::low_to_vec(be.download(dqkv)), ref, Tol{4 * u, 8 * u * bt::max_abs(ref)}));
    }
    return ok;
  };
}

// Under LLM_CUDA_SMEM_LIMIT a launch that needs more shared memory than the cap is refused before
// CUDA sees it, the error naming the op, its shapes and both byte counts; what fits still runs
// (the bf16 forward of `tc-m32` at hd 128: 384 rows x 136 x 2 = 104448 bytes, over a 65536-byte
// cap; tc's at hd 64 under sm86's 101376). A cap
// below the device's own maximum stands in for a smaller card: auto takes what it takes off
// sm_90, and the kernels of an A100 and of a 99 KiB card run a bf16 forward and backward at hd 128
// within their limits. (tc-atomic's shapes under the caps: TcFusedBackwardTakesItsShapeByTheCap.)
TEST(CudaBackend, SmemLimitRefusesLaunchesOverTheCap) {
  REQUIRE_CUDA(probe);
  (void)probe;
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  using llm::kernels::AttentionKernels;
  EXPECT_EXIT(smem_child("sm86", "tc", attention_pass(64, false)), ::testing::ExitedWithCode(0), "");
  // tc-m32's 104448 bytes at hd 128 (attention_forward_tc_smem; tc's own at hd 64, 36864, is under
  // the 48 KiB that needs no opt-in, so no cap refuses it): over a 65536-byte cap.
  EXPECT_EXIT(smem_child("65536", "tc-m32", attention_pass(128, false)), ::testing::ExitedWithCode(2),
              "attention_forward on .*: a kernel needs 104448 bytes of shared memory per block; this device allows "
              "65536 \\(LLM_CUDA_SMEM_LIMIT\\)");
  // The A100 stood in for (whatever the device): tc everywhere but tc-m32's forward at hd 128, and
  // its kernels fit; the 99 KiB cards: tc everywhere, and so do theirs.
  const auto off_sm90 = [](AttentionKernels forward_128) {
    return [forward_128](llm::cuda::CudaBackend&) {
      for (int hd : {48, 64, 80, 96, 128, 160})
        for (bool backward : {false, true}) {
          const AttentionKernels want = !backward && hd == 128 ? forward_128 : AttentionKernels::tc;
          if (llm::kernels::attention_kernels_for(hd, backward) != want) return false;
        }
      return llm::kernels::wgmma_unavailable() != nullptr;
    };
  };
  EXPECT_EXIT(smem_child("sm80", nullptr, off_sm90(AttentionKernels::tc_m32)), ::testing::ExitedWithCode(0), "");
  EXPECT_EXIT(smem_child("sm80", nullptr, attention_pass(128, true)), ::testing::ExitedWithCode(0), "");
  EXPECT_EXIT(smem_child("sm86", nullptr, off_sm90(AttentionKernels::tc)), ::testing::ExitedWithCode(0), "");
  EXPECT_EXIT(smem_child("sm86", nullptr, attention_pass(128, true)), ::testing::ExitedWithCode(0), "");
}

// tc-atomic's backward takes its 8-warp shape where it fits (158720 bytes at hd 128: an A100's cap
// holds it) and the 4-warp one where it does not (sm86's 101376). Named with TcFused so that it
// runs in that test's own process (gpu_validation.sh): the 8-warp kernel has not run on a GPU yet,
// and a fault or hang there must not take the main test process with it.
TEST(CudaBackend, TcFusedBackwardTakesItsShapeByTheCap) {
  REQUIRE_CUDA(probe);
  (void)probe;
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_EQ(llm::kernels::attention_backward_tc_wide_smem(128), size_t(158720));
  EXPECT_EXIT(smem_child("sm80", "tc-atomic", attention_pass(128, true)), ::testing::ExitedWithCode(0), "");
  EXPECT_EXIT(smem_child("sm86", "tc-atomic", attention_pass(128, true)), ::testing::ExitedWithCode(0), "");
}

// The scratch and workspace sizes of the backward (pure arithmetic on the settings; no device):
// fp32 and non-atomic choices need D only; the atomic ones the sums and the counters too, in the
// scratch unless a workspace holds them, and a workspace only when the conversion is fused.
TEST(CudaBackend, AttentionBackwardScratchHoldsTheDqSumsAndCounters) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  const auto sizes_are = [](const char* convert) {
    setenv("LLM_CUDA_ATTENTION", "tc-atomic", 1);
    setenv("LLM_CUDA_DQ_CONVERT", convert, 1);
    using llm::kernels::attention_backward_scratch;
    using llm::kernels::attention_backward_workspace;
    const int B = 2, NH = 3, hd = 64;
    const int64_t T = 333, d = int64_t(B) * NH * T, pad = (d + 63) / 64 * 64;
    const int64_t sums = int64_t(B) * T * NH * hd, counts = int64_t(B) * NH * 6;  // ceil(333 / 64) = 6
    const bool fused = std::string(convert) == "fused";
    bool ok = attention_backward_scratch(DType::f32, B, NH, hd, T) == d &&
              attention_backward_workspace(DType::f32, B, NH, hd, T) == 0 &&
              attention_backward_scratch(DType::bf16, B, NH, hd, T) == pad + sums + counts &&
              attention_backward_scratch(DType::bf16, B, NH, hd, T, true) == d &&
              attention_backward_workspace(DType::f16, B, NH, hd, T) == (fused ? sums + counts : 0);
    std::exit(ok ? 0 : 1);
  };
  EXPECT_EXIT(sizes_are("kernel"), ::testing::ExitedWithCode(0), "");
  EXPECT_EXIT(sizes_are("fused"), ::testing::ExitedWithCode(0), "");
}

TEST(CudaBackend, DeterministicModeExcludesTheAtomicAttentionKernels) {
  // Pure logic and the device query; each case in a fresh child (both variables are read once).
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  using llm::kernels::AttentionKernels;
  const auto run = [](const char* deterministic, const char* attention, auto body) {
    if (deterministic) setenv("LLM_CUDA_DETERMINISTIC", deterministic, 1);
    else unsetenv("LLM_CUDA_DETERMINISTIC");
    if (attention) setenv("LLM_CUDA_ATTENTION", attention, 1);
    else unsetenv("LLM_CUDA_ATTENTION");
    try {
      std::exit(body() ? 0 : 1);
    } catch (const std::exception& e) {
      std::fprintf(stderr, "%s\n", e.what());
      std::exit(2);
    }
  };
  const auto atomic = [](AttentionKernels k) {
    return k == AttentionKernels::tc_atomic || k == AttentionKernels::wgmma_atomic ||
           k == AttentionKernels::wgmma_ws_atomic || k == AttentionKernels::wgmma_ws_dqfirst ||
           k == AttentionKernels::wgmma_ws_tma;
  };
  for (AttentionKernels k : {AttentionKernels::tc_atomic, AttentionKernels::wgmma_atomic, AttentionKernels::wgmma_ws_atomic,
                             AttentionKernels::wgmma_ws_dqfirst, AttentionKernels::wgmma_ws_tma,
                             AttentionKernels::tc, AttentionKernels::wgmma, AttentionKernels::wgmma_rs})
    EXPECT_EQ(llm::kernels::adds_with_atomics(k), atomic(k));
  // auto under LLM_CUDA_DETERMINISTIC=1: no atomic kernel at any head dim, either pass.
  EXPECT_EXIT(run("1", nullptr,
                  [&] {
                    for (int hd : {48, 64, 80, 96, 128, 160})
                      for (bool backward : {false, true})
                        if (atomic(llm::kernels::attention_kernels_for(hd, backward))) return false;
                    return llm::kernels::deterministic_kernels();
                  }),
              ::testing::ExitedWithCode(0), "");
  // Without it, auto's backward at every head dim is the warp-specialised fused form with dQ through
  // TMA bulk reductions (run 20) and its
  // forward the three-consumer ws-pp (run 16) where wgmma runs (an sm_90 device and the sm_90a
  // build), tc elsewhere, but for the forward at hd 128 on a device whose blocks may opt in to
  // tc-m32's 104448 bytes (an A100; none without a device).
  EXPECT_EXIT(run("0", nullptr,
                  [&] {
                    const bool off = llm::kernels::wgmma_unavailable();
                    const bool m32_fits = llm::kernels::smem_optin_limit() >= 104448;
                    for (int hd : {48, 64, 80, 96, 128}) {
                      if (llm::kernels::attention_kernels_for(hd, true) !=
                          (off ? AttentionKernels::tc : AttentionKernels::wgmma_ws_tma))
                        return false;
                      const AttentionKernels off_forward =
                          hd == 128 && m32_fits ? AttentionKernels::tc_m32 : AttentionKernels::tc;
                      if (llm::kernels::attention_kernels_for(hd, false) != (off ? off_forward : AttentionKernels::wgmma_ws3))
                        return false;
                    }
                    // hd 160 (no wgmma kernel): tc both ways everywhere, not an atomic fallback.
                    for (bool backward : {false, true})
                      if (llm::kernels::attention_kernels_for(160, backward) != AttentionKernels::tc) return false;
                    return !llm::kernels::deterministic_kernels();
                  }),
              ::testing::ExitedWithCode(0), "");
  // Naming an atomic kernel under it is an error naming both variables.
  EXPECT_EXIT(run("1", "wgmma-atomic", [] { return llm::kernels::attention_kernels() == AttentionKernels::wgmma_atomic; }),
              ::testing::ExitedWithCode(2), "LLM_CUDA_ATTENTION='wgmma-atomic' adds dQ with atomics.*LLM_CUDA_DETERMINISTIC=1");
  EXPECT_EXIT(run("1", "tc-atomic", [] { return llm::kernels::attention_kernels() == AttentionKernels::tc_atomic; }),
              ::testing::ExitedWithCode(2), "LLM_CUDA_ATTENTION='tc-atomic' adds dQ with atomics");
  EXPECT_EXIT(
      run("1", "wgmma-ws-atomic", [] { return llm::kernels::attention_kernels() == AttentionKernels::wgmma_ws_atomic; }),
      ::testing::ExitedWithCode(2), "LLM_CUDA_ATTENTION='wgmma-ws-atomic' adds dQ with atomics");
  EXPECT_EXIT(run("1", "wgmma", [] { return llm::kernels::attention_kernels() == AttentionKernels::wgmma; }),
              ::testing::ExitedWithCode(0), "");
  EXPECT_EXIT(run("yes", nullptr, [] { return llm::kernels::deterministic_kernels(); }), ::testing::ExitedWithCode(2),
              "LLM_CUDA_DETERMINISTIC='yes': expected 1 \\(bit-reproducible kernels only\\) or 0");
}

struct Fixture {
  llm::cuda::CudaBackend& be;
  llm::Backend& cpu = llm::cpu_backend();
  Tensor up(const Shape& s, const Vec& v) { return be.upload(bt::host_f32(s, v)); }
  Vec down(const Tensor& t) {
    be.synchronize();
    return bt::to_vec(be.download(t));
  }
  Vec cpu_vec(const Tensor& t) { return bt::to_vec(t); }
};

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

// A backward check's inputs, bf16/f16-rounded (qkv [B, T, 3C], dout [B, T, C], drawn from seed),
// and the CPU fp32 op's out, lse and dqkv on them.
struct AttentionCase {
  Vec qkv, dout;
  Tensor out, lse, dqkv;
};
AttentionCase attention_case(DType t, int B, int T, int NH, int hd, uint64_t seed) {
  const int C = NH * hd;
  bt::Rng rng(seed);
  AttentionCase c;
  c.qkv = bt::rounded_to(rng.normal(size_t(B) * T * 3 * C), t);
  c.dout = bt::rounded_to(rng.normal(size_t(B) * T * C), t);
  c.out = Tensor::empty({B, T, C}), c.lse = Tensor::empty({B, NH, T}), c.dqkv = Tensor::empty({B, T, 3 * C});
  llm::Backend& cpu = llm::cpu_backend();
  cpu.attention_forward(c.out, c.lse, bt::host_f32({B, T, 3 * C}, c.qkv), NH);
  cpu.attention_backward(c.dqkv, bt::host_f32({B, T, C}, c.dout), bt::host_f32({B, T, 3 * C}, c.qkv), c.out, c.lse, NH);
  return c;
}

// D = rowsum(dout * out) per (b, h, t) of [B, T, NH * hd] rows: what attention.cu computes from a
// forward's own (rounded) out before the backward kernels run.
Vec attention_rowdot(const Vec& dout, const Vec& out, int B, int T, int NH, int hd) {
  const size_t C = size_t(NH) * hd;
  Vec D(size_t(B) * NH * T, 0.0);
  for (int b = 0; b < B; ++b)
    for (int h = 0; h < NH; ++h)
      for (int i = 0; i < T; ++i)
        for (int e = 0; e < hd; ++e) {
          const size_t at = (size_t(b) * T + i) * C + size_t(h) * hd + e;
          D[(size_t(b) * NH + h) * T + i] += dout[at] * out[at];
        }
  return D;
}

// The mma.sync kernels (what an A100 runs) against the CPU fp32 op on the same rounded inputs,
// with LowPrecision's tolerances. Forward: `tc` and `tc-m32` (32 query rows per warp, its int32
// mask), out and lse. Backward: the fused form (tc-atomic: dQ added with atomics from the dK/dV
// kernel) in both shapes, 4 warps of 16 keys over 32-query tiles and 8 warps (128 keys) over
// 64-query tiles, FlashAttention-2's sm_80 tile, at every head dim where each exists (the wide one
// up to 128), and the seven-product form (no atomics) beside them; D from the tc forward's own
// rounded output, as attention.cu computes it. T: 1 and 17 (less than one tile: warps whose keys
// all lie past T), 65 (a second query tile of one row), 128 (whole tiles, no masking at the
// end), 333 (three 128-key blocks, the last partial, tiles crossing the diagonal and the end).
TEST(CudaBackend, TcFusedBackwardMatchesTheCpuOp) {
  REQUIRE_CUDA(be);
  Fixture f{*be};
  for (int T : {1, 17, 65, 128, 333})
    for (DType t : {DType::bf16, DType::f16})
      for (int hd : {48, 64, 80, 96, 128, 160}) {
        SCOPED_TRACE(std::string(llm::dtype_name(t)) + " hd=" + std::to_string(hd) + " T=" + std::to_string(T));
        const int B = 2, NH = 2, C = NH * hd;
        const double u = bt::unit(t);
        const AttentionCase c = attention_case(t, B, T, NH, hd, 740 + hd + T);
        const Vec ref = f.cpu_vec(c.dqkv);
        const Tol tol{4 * u, 8 * u * bt::max_abs(ref)};

        Tensor gq = be->upload(bt::host_low({B, T, 3 * C}, c.qkv, t)), gdo = be->upload(bt::host_low({B, T, C}, c.dout, t));
        Tensor go = be->empty({B, T, C}, t), gl = be->empty({B, NH, T});
        for (bool m32 : {true, false}) {  // tc last: its output feeds the backward
          const char* name = m32 ? "tc-m32" : "tc";
          // (tc-m32 at hd 128 needs more shared memory than a 99 KiB card, or such a cap, allows)
          if (m32 && llm::kernels::attention_forward_tc_smem(hd, m32) > llm::kernels::smem_optin_limit()) continue;
          nan_fill(*be, go), nan_fill(*be, gl);
          be->synchronize();
          ASSERT_TRUE(llm::kernels::attention_forward_tensor_cores(
              t, llm::kernels::self_attention_args(gq.raw(), go.raw(), gl.data<float>(), llm::dtype_size(t), B, T, NH, hd),
              m32, be->stream()))
              << name;
          be->synchronize();
          EXPECT_TRUE(bt::all_close(std::string(name) + " out", bt::low_to_vec(be->download(go)), f.cpu_vec(c.out),
                                    Tol{2 * u, 4 * u}));
          EXPECT_TRUE(bt::all_close(std::string(name) + " lse", bt::to_vec(be->download(gl)), f.cpu_vec(c.lse),
                                    Tol{1e-3, 1e-3}));
        }
        const Vec D = attention_rowdot(c.dout, bt::low_to_vec(be->download(go)), B, T, NH, hd);
        Tensor gD = f.up({B, NH, T}, D), accum = be->empty({B, T, C});
        llm::kernels::AttentionBackwardArgs ba;
        ba.qkv = gq.raw(), ba.out = go.raw(), ba.dout = gdo.raw(), ba.lse = gl.data<float>(), ba.scratch = gD.data<float>();
        ba.dq_accum = accum.data<float>();
        ba.B = B, ba.NH = NH, ba.hd = hd, ba.T = T;
        struct Form {
          bool atomic;
          int warps;
          const char* name;
        };
        for (const Form& form : {Form{false, 0, "tc dqkv"}, Form{true, 4, "tc-atomic 4 warps dqkv"},
                                 Form{true, 8, "tc-atomic 8 warps dqkv"}, Form{true, 0, "tc-atomic dqkv"}}) {
          Tensor gd = be->zeros({B, T, 3 * C}, t);
          ba.dqkv = gd.raw();
          be->synchronize();
          const bool ran = llm::kernels::attention_backward_tensor_cores(t, ba, form.atomic, be->stream(), form.warps);
          // No 8-warp form at hd 160 (dK and dV alone would hold 160 registers per thread), nor where
          // a block may not opt in to its shared memory (a 99 KiB card, or under such a cap).
          const size_t wide = llm::kernels::attention_backward_tc_wide_smem(hd);
          if (form.warps == 8 && (wide == 0 || wide > llm::kernels::smem_optin_limit())) {
            EXPECT_FALSE(ran) << "the 8-warp form at hd " << hd;
            continue;
          }
          ASSERT_TRUE(ran) << form.name;
          be->synchronize();
          EXPECT_TRUE(bt::all_close(form.name, bt::low_to_vec(be->download(gd)), ref, tol));
        }
      }
}

// copy_rows with a pitch over the device's limit for one cudaMemcpy2D (a Ulysses move of a long
// sequence: the head form's pitch passes 2 GiB in bf16 from about 175K tokens at 2048 columns per
// rank): the rows go one by one, both ways. 2 GiB of device memory for the wide tensor.
TEST(CudaBackend, CopyRowsPastTheMaxPitch) {
  REQUIRE_CUDA(be);
  int max_pitch = 0;
  ASSERT_EQ(cudaDeviceGetAttribute(&max_pitch, cudaDevAttrMaxPitch, be->device().index), cudaSuccess);
  const int64_t width = 64, rows = 2, pitch = int64_t(max_pitch) / 4 + width;  // f32: pitch bytes > the limit
  ASSERT_GT(pitch * 4, int64_t(max_pitch));
  bt::Rng rng(77);
  const Vec a = rng.normal(size_t(rows * width));
  Tensor wide = be->zeros({(rows - 1) * pitch + width}), narrow = be->empty({rows * width});
  for (int64_t r = 0; r < rows; ++r)  // the wide rows from the host, then gathered
    be->copy(wide.flat(r * pitch, width), bt::host_f32({width}, Vec(a.begin() + r * width, a.begin() + (r + 1) * width)));
  be->copy_rows(narrow, width, wide, pitch, rows, width);
  be->synchronize();
  EXPECT_TRUE(bt::all_equal("gathered past the max pitch", bt::to_vec(be->download(narrow)), a));
  const Vec b = rng.normal(size_t(rows * width));  // and scattered back
  be->copy(narrow, bt::host_f32({rows * width}, b));
  be->copy_rows(wide, pitch, narrow, width, rows, width);
  be->synchronize();
  for (int64_t r = 0; r < rows; ++r)
    EXPECT_TRUE(bt::all_equal("scattered past the max pitch", bt::to_vec(be->download(wide.flat(r * pitch, width))),
                              Vec(b.begin() + r * width, b.begin() + (r + 1) * width)));
  EXPECT_EQ(bt::to_vec(be->download(wide.flat(width, 1)))[0], 0.0) << "between the rows is left alone";
  wide = narrow = Tensor();
  be->allocator().empty_cache();  // the other tests share the card
}

// A head dim the kernels do not take (264 > 256) is refused before the new keys and values are
// written: the cache is left as it was.
TEST(CudaBackend, AttentionKvRefusesAHeadDimBeforeWritingTheCache) {
  REQUIRE_CUDA(be);
  const int64_t B = 1, Tn = 2, C = 264, maxT = 4;
  Tensor qkv = be->upload(bt::host_f32({B, Tn, 3 * C}, Vec(size_t(B * Tn * 3 * C), 1.0)));
  Tensor kc = be->zeros({B, maxT, C}), vc = be->zeros({B, maxT, C}), out = be->empty({B, Tn, C});
  try {
    be->attention_kv_forward(out, qkv, kc, vc, 0, 1);
    ADD_FAILURE() << "head dim 264 accepted";
  } catch (const llm::Error& e) {
    EXPECT_NE(std::string(e.what()).find("attention_kv_forward: head dim 264 outside [1, 256]"), std::string::npos)
        << e.what();
  }
  be->synchronize();
  EXPECT_TRUE(bt::all_equal("k cache untouched", bt::to_vec(be->download(kc)), Vec(size_t(B * maxT * C), 0.0)));
  EXPECT_TRUE(bt::all_equal("v cache untouched", bt::to_vec(be->download(vc)), Vec(size_t(B * maxT * C), 0.0)));
}

// The logits past 2^31 elements (B*T*V from 42,692 tokens at V = 50304), through the training
// step's ops: the logits GEMM (cuBLASLt gets it as pieces under 2^31: split_matmul; some cuBLASLt
// kernels index in 32 bits), cross-entropy forward, its backward in place, and the linear backward
// (dinp, and dweight split over the tokens). Rows on both sides of element 2^31 and a few others
// carry data and targets, one row zero inputs and a target (loss log V), the rest are ignored
// (target -1: loss and gradient 0), so the references are a few rows in float64 on the values the
// GPU wrote. 4.3 GB of device memory in bf16, 8.6 GB in f32.
TEST(CudaBackend, LogitsPast2To31Elements) {
  REQUIRE_CUDA(be);
  const int64_t V = 50304, C = 64, N = (int64_t(1) << 31) / V + 48;
  const int64_t edge = (int64_t(1) << 31) / V;  // the row holding element 2^31
  const std::vector<int64_t> data_rows = {0, 1, N / 2, edge - 1, edge, edge + 1, N - 1};
  std::vector<int64_t> rows = data_rows;  // the checked rows: those and row 2 (zero inputs)
  rows.push_back(2);
  for (DType t : {DType::bf16, DType::f32}) {
    SCOPED_TRACE(llm::dtype_name(t));
    bt::Rng rng(91);
    Vec inp(size_t(N * C), 0.0), w = rng.normal(size_t(V * C), 0.1);
    bt::IVec targets(size_t(N), -1);
    for (int64_t r : rows) targets[size_t(r)] = static_cast<int32_t>(rng.below(1, V)[0]);
    for (int64_t r : data_rows)
      for (int64_t c = 0; c < C; ++c) inp[size_t(r * C + c)] = rng.normal(1)[0];
    auto up = [&](const Shape& sh, const Vec& v) {
      return be->upload(t == DType::f32 ? bt::host_f32(sh, v) : bt::host_low(sh, v, t));
    };
    auto down = [&](const Tensor& x) {
      be->synchronize();
      Tensor h = be->download(x);
      return x.dtype() == DType::f32 ? bt::to_vec(h) : bt::low_to_vec(h);
    };
    const Vec wr = t == DType::f32 ? w : bt::rounded_to(w, t), ir = t == DType::f32 ? inp : bt::rounded_to(inp, t);
    Tensor gi = up({N, C}, inp), gw = up({V, C}, w), logits = be->empty({N, V}, t);
    Tensor tg = be->upload(bt::host_i32({N}, targets));
    ASSERT_GT(logits.numel(), int64_t(1) << 31);
    std::printf("  %s logits: %lld elements\n", std::string(llm::dtype_name(t)).c_str(),
                static_cast<long long>(logits.numel()));
    // Outputs in t: within rtol of ref plus stol of the terms' magnitude (fp32 sums of up to V
    // terms); the fp32 loss and lse: 1e-5 relative.
    const double rtol = t == DType::f32 ? 1e-5 : 1.0 / 128, stol = t == DType::f32 ? 1e-4 : 1e-3;
    int bad = 0;
    auto within = [&](const char* what, double got, double ref, double tol, int64_t at) {
      if (!(std::fabs(got - ref) <= tol)) {
        if (bad++ < 3) ADD_FAILURE() << what << " at " << at << ": got " << got << ", want " << ref;
      }
    };
    auto check = [&](const char* what, double got, double ref, double mag, int64_t at) {
      within(what, got, ref, rtol * std::fabs(ref) + stol * mag, at);
    };
    be->linear_forward(logits, gi, gw, Tensor());
    std::vector<Vec> lrow;  // the logits of the checked rows, as the GPU wrote them
    for (int64_t r : rows) {
      lrow.push_back(down(logits.flat(r * V, V)));
      for (int64_t v = 0; v < V; ++v) {
        double ref = 0, mag = 0;
        for (int64_t c = 0; c < C; ++c)
          ref += ir[size_t(r * C + c)] * wr[size_t(v * C + c)], mag += std::fabs(ir[size_t(r * C + c)] * wr[size_t(v * C + c)]);
        check("logits", lrow.back()[size_t(v)], ref, mag, r * V + v);
      }
    }
    EXPECT_TRUE(bt::all_equal("the logits of zero inputs", lrow.back(), Vec(size_t(V), 0.0)));
    // cross-entropy: loss = lse - logit[target]; ignored rows 0
    Tensor losses = be->empty({N}), lse = be->empty({N});
    be->cross_entropy_forward(losses, lse, logits, tg, V, 0);
    const Vec gl = down(losses), gs = down(lse);
    std::vector<double> ref_lse;
    for (size_t i = 0; i < rows.size(); ++i) {
      double mx = -1e300, sum = 0;
      for (double x : lrow[i]) mx = std::max(mx, x);
      for (double x : lrow[i]) sum += std::exp(x - mx);
      ref_lse.push_back(mx + std::log(sum));
      const int64_t r = rows[i];
      const double ref_loss = ref_lse.back() - lrow[i][size_t(targets[size_t(r)])];
      within("lse", gs[size_t(r)], ref_lse.back(), 1e-5 * (1 + std::fabs(ref_lse.back())), r);
      within("loss", gl[size_t(r)], ref_loss, 1e-5 * (1 + std::fabs(ref_lse.back())), r);
    }
    EXPECT_NEAR(gl[2], std::log(double(V)), 1e-4) << "uniform logits";
    EXPECT_EQ(gl[3], 0.0) << "an ignored row";
    EXPECT_EQ(gl[size_t(edge + 2)], 0.0) << "an ignored row";
    // its backward in place: dlogits = softmax - onehot, ignored rows 0
    be->cross_entropy_backward(logits, logits, lse, tg, 1.0f, V, 0);
    std::vector<Vec> drow;
    for (size_t i = 0; i < rows.size(); ++i) {
      const int64_t r = rows[i];
      drow.push_back(down(logits.flat(r * V, V)));
      for (int64_t v = 0; v < V; ++v) {
        const double ref = std::exp(lrow[i][size_t(v)] - ref_lse[i]) - (v == targets[size_t(r)] ? 1.0 : 0.0);
        within("dlogits", drow.back()[size_t(v)], ref, rtol * std::fabs(ref) + 1e-9, r * V + v);
      }
    }
    EXPECT_TRUE(bt::all_equal("an ignored row's dlogits", down(logits.flat((edge + 2) * V, V)), Vec(size_t(V), 0.0)));
    // the linear backward from them: dinp = dlogits W, dweight += dlogits^T inp (the checked rows
    // alone: the others' dlogits are 0)
    Tensor dinp = be->empty({N, C}, t), dw = be->zeros({V, C});
    be->linear_backward(dinp, dw, Tensor(), logits, gi, gw);
    for (size_t i = 0; i < rows.size(); ++i) {
      const Vec got = down(dinp.flat(rows[i] * C, C));
      for (int64_t c = 0; c < C; ++c) {
        double ref = 0, mag = 0;
        for (int64_t v = 0; v < V; ++v)
          ref += drow[i][size_t(v)] * wr[size_t(v * C + c)], mag += std::fabs(drow[i][size_t(v)] * wr[size_t(v * C + c)]);
        check("dinp", got[size_t(c)], ref, mag, rows[i] * C + c);
      }
    }
    const Vec gdw = down(dw);
    for (int64_t v = 0; v < V; ++v)
      for (int64_t c = 0; c < C; ++c) {
        double ref = 0, mag = 0;
        for (size_t i = 0; i < rows.size(); ++i)
          ref += drow[i][size_t(v)] * ir[size_t(rows[i] * C + c)], mag += std::fabs(drow[i][size_t(v)] * ir[size_t(rows[i] * C + c)]);
        check("dweight", gdw[size_t(v * C + c)], ref, mag, v * C + c);
      }
    EXPECT_EQ(bad, 0);
    logits = dinp = Tensor();
    be->allocator().empty_cache();  // the other tests share the card
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
  EXPECT_TRUE(be->gelu_epilogue()) << "cuBLASLt had no GELU_AUX_BIAS algorithm: the two ops ran instead";
}

// The MLP's backward through c_proj and the GELU: cuBLASLt's DGELU epilogue on the dinp GEMM
// against linear_backward then gelu_backward (fp32 and bf16).
TEST(CudaBackend, FusedLinearBackwardGeluMatchesTheTwoOps) {
  REQUIRE_CUDA(be);
  Fixture f{*be};
  const int N = 64, C = 256, OC = 128;
  bt::Rng rng(330);
  for (DType t : {DType::f32, DType::bf16}) {
    SCOPED_TRACE(llm::dtype_name(t));
    auto up = [&](Shape s, const Vec& v) {
      Tensor x = f.up(s, v);
      if (t == DType::f32) return x;
      Tensor y = be->empty(s, t);
      be->convert(y, x);
      return y;
    };
    auto down = [&](const Tensor& x) {
      if (x.dtype() == DType::f32) return f.down(x);
      Tensor y = be->empty(x.shape());
      be->convert(y, x);
      return f.down(y);
    };
    const Vec pre_v = rng.normal(size_t(N) * C), dout_v = rng.normal(size_t(N) * OC), w_v = rng.normal(size_t(OC) * C, 0.1);
    Tensor pre = up({N, C}, pre_v), inp = be->empty({N, C}, t), dout = up({N, OC}, dout_v), w = up({OC, C}, w_v);
    be->gelu_forward(inp, pre);
    Tensor dinp = be->empty({N, C}, t), dw = be->zeros({OC, C}), db = be->zeros({OC});
    Tensor dinp2 = be->empty({N, C}, t), dw2 = be->zeros({OC, C}), db2 = be->zeros({OC});
    be->linear_backward(dinp, dw, db, dout, inp, w);
    be->gelu_backward(dinp, pre, dinp);
    be->linear_backward_gelu(dinp2, dw2, db2, dout, inp, w, pre);
    const Tol tol = t == DType::f32 ? Tol{1e-4, 1e-4} : Tol{2e-2, 2e-2};  // bf16: the two ops round dinp once more
    EXPECT_TRUE(bt::all_close("dinp through the GELU", down(dinp2), down(dinp), tol));
    EXPECT_TRUE(bt::all_equal("dweight", f.down(dw2), f.down(dw)));
    EXPECT_TRUE(bt::all_equal("dbias", f.down(db2), f.down(db)));
  }
  const char* off = std::getenv("LLM_CUDA_DGELU");
  EXPECT_TRUE(be->dgelu_epilogue() || (off && std::string(off) == "0"))
      << "cuBLASLt had no DGELU algorithm: the separate GELU backward ran instead";
}

// The Hopper kernels (kernels/sm90a, LLM_CUDA_ATTENTION=wgmma) run only on compute capability
// 9.0 and only when built for sm_90a; elsewhere these two tests say why they were skipped.
// On an sm_90 card with no shared-memory cap (LLM_CUDA_SMEM_LIMIT, which the sm_80 step sets) and
// LLM_REQUIRE_CUDA=1, the wgmma kernels must be there: a build without sm_90a fails instead of
// skipping every wgmma test.
bool wgmma_expected() {
  if (!cuda_required() || std::getenv("LLM_CUDA_SMEM_LIMIT")) return false;
  int dev = 0, major = 0, minor = 0;
  if (cudaGetDevice(&dev) != cudaSuccess || cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) ||
      cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev)) {
    (void)cudaGetLastError();
    return false;
  }
  return major == 9 && minor == 0;
}
#define REQUIRE_WGMMA(be)                                                                           \
  REQUIRE_CUDA(be);                                                                                 \
  if (const char* why = llm::kernels::wgmma_unavailable()) {                                        \
    if (wgmma_expected()) GTEST_FAIL() << "LLM_REQUIRE_CUDA=1 on sm_90 with no cap, and wgmma: " << why; \
    GTEST_SKIP() << "wgmma: " << why;                                                               \
  }                                                                                                 \
  static_assert(true)

// The wgmma forms alone (SS both K-major; RS with B MN-major or K-major; SS with B or both
// operands transposed; N 16-64 slices of K from inside a tile), on
// small-integer inputs where every product and sum is exact in the 16-bit types and fp32: a
// wrong descriptor, swizzle, transpose flag or fragment layout shows as a wrong element.
TEST(CudaBackend, WgmmaTileProductsAreExact) {
  REQUIRE_WGMMA(be);
  for (DType t : {DType::bf16, DType::f16})
    for (int hd : {48, 64, 80, 96, 128}) {
      SCOPED_TRACE(std::string(llm::dtype_name(t)) + " hd=" + std::to_string(hd));
      bt::Rng rng(520 + hd);
      Vec q = rng.uniform(size_t(64) * hd, -1.49, 1.49), k = rng.uniform(size_t(128) * hd, -1.49, 1.49);
      for (double& x : q) x = std::round(x);  // -1, 0, 1: |S| <= hd and |O| <= 128 hd, all exact
      for (double& x : k) x = std::round(x);
      Vec s_ref(size_t(64) * 128, 0.0), o_ref(size_t(64) * hd, 0.0);
      for (int i = 0; i < 64; ++i)
        for (int j = 0; j < 128; ++j)
          for (int e = 0; e < hd; ++e) s_ref[size_t(i) * 128 + j] += q[size_t(i) * hd + e] * k[size_t(j) * hd + e];
      for (int i = 0; i < 64; ++i)
        for (int j = 0; j < 128; ++j)
          for (int e = 0; e < hd; ++e) o_ref[size_t(i) * hd + e] += s_ref[size_t(i) * 128 + j] * k[size_t(j) * hd + e];
      Tensor gq = be->upload(bt::host_low({64, hd}, q, t)), gk = be->upload(bt::host_low({128, hd}, k, t));
      Tensor gs = be->empty({64, 128}), go = be->empty({64, hd}), gbt = be->empty({64, hd}), gtt = be->empty({64, hd});
      Tensor gsplit = be->empty({64, hd}), gsrs = be->empty({64, 128});
      be->synchronize();
      ASSERT_TRUE(llm::kernels::wgmma_tile_check(t, hd, gq.raw(), gk.raw(), gs.data<float>(), go.data<float>(),
                                                 gbt.data<float>(), gtt.data<float>(), gsplit.data<float>(), gsrs.data<float>(),
                                                 be->stream()));
      be->synchronize();
      EXPECT_TRUE(bt::all_equal("S = Q K^T (SS, K-major)", bt::to_vec(be->download(gs)), s_ref));
      EXPECT_TRUE(bt::all_equal("O = P K (RS, MN-major)", bt::to_vec(be->download(go)), o_ref));
      EXPECT_TRUE(bt::all_equal("O = P K (SS, P stored K-major, K MN-major)", bt::to_vec(be->download(gbt)), o_ref));
      EXPECT_TRUE(bt::all_equal("O = P K (SS, P^T stored and read MN-major)", bt::to_vec(be->download(gtt)), o_ref));
      EXPECT_TRUE(bt::all_equal("O = P K in the fused backward's two dQ column slices (SS, both MN-major)",
                                bt::to_vec(be->download(gsplit)), o_ref));
      EXPECT_TRUE(bt::all_equal("S = Q K^T (RS: Q in registers, K K-major)", bt::to_vec(be->download(gsrs)), s_ref));
    }
}

// The wgmma attention kernels called directly (whatever LLM_CUDA_ATTENTION says), forward and
// backward (and the ping-pong forward, equal to the plain one), against the CPU fp32 op on the same
// rounded inputs, with LowPrecision's tolerances. form: the backward's (dQ by its own kernel, or
// fused into the dK/dV kernel and added by atomics, wgmma-atomic, or by its own kernel with Q and dO
// in registers for the score products, wgmma-rs).
// T = 333: several 128-row blocks, a partial last one, and 64-row tiles crossing the diagonal.
// dq_convert 2 (the warp-specialised atomic forms): dQ converted inside the kernel
// (LLM_CUDA_DQ_CONVERT=fused), from a zeroed workspace that must be left zero, twice, and then
// from sums and counters full of ones that the kernel's memset must clear first.
// dq_red 4: wgmma-ws-atomic's adds as 16-byte reductions (LLM_CUDA_DQ_RED=v4; v2 at hd 64).
void check_wgmma_attention(llm::cuda::CudaBackend& gpu, llm::kernels::WgmmaBackward form, int dq_convert = 1,
                           int dq_red = 2) {
  using llm::kernels::WgmmaBackward;
  const bool fused_dq = form == WgmmaBackward::atomic_dq || form == WgmmaBackward::ws_atomic_dq ||
                        form == WgmmaBackward::ws_atomic_dq_first || form == WgmmaBackward::ws_tma_dq;
  const char* name = form == WgmmaBackward::separate_dq      ? "wgmma dqkv"
                     : form == WgmmaBackward::atomic_dq      ? "wgmma-atomic dqkv"
                     : form == WgmmaBackward::ws_atomic_dq   ? "wgmma-ws-atomic dqkv"
                     : form == WgmmaBackward::ws_atomic_dq_first ? "wgmma-ws-dqfirst dqkv"
                     : form == WgmmaBackward::ws_tma_dq      ? "wgmma-ws-tma dqkv"
                                                             : "wgmma-rs dqkv";
  Fixture f{gpu};
  const auto down_low = [&](const Tensor& d) {
    gpu.synchronize();
    return bt::low_to_vec(gpu.download(d));
  };
  for (DType t : {DType::bf16, DType::f16})
    for (int hd : {48, 64, 80, 96, 128}) {
      SCOPED_TRACE(std::string(llm::dtype_name(t)) + " hd=" + std::to_string(hd));
      const int B = 2, T = 333, NH = 2, C = NH * hd;
      const double u = bt::unit(t);
      const AttentionCase c = attention_case(t, B, T, NH, hd, 530 + hd);

      Tensor gq = gpu.upload(bt::host_low({B, T, 3 * C}, c.qkv, t)), gdo = gpu.upload(bt::host_low({B, T, C}, c.dout, t));
      Tensor go = gpu.empty({B, T, C}, t), gl = gpu.empty({B, NH, T}), gd = gpu.empty({B, T, 3 * C}, t);
      gpu.synchronize();
      const llm::kernels::AttentionForwardArgs fa =
          llm::kernels::self_attention_args(gq.raw(), go.raw(), gl.data<float>(), llm::dtype_size(t), B, T, NH, hd);
      // The ping-pong form first (the same arithmetic in another order of issue: equal outputs),
      // then the plain one, whose out and lse the backward uses.
      ASSERT_TRUE(llm::kernels::attention_forward_wgmma(t, fa, gpu.stream(), llm::kernels::WgmmaForward::ping_pong));
      const Vec out_pp = down_low(go), lse_pp = f.down(gl);
      nan_fill(gpu, go), nan_fill(gpu, gl);  // the plain form must write every row itself
      ASSERT_TRUE(llm::kernels::attention_forward_wgmma(t, fa, gpu.stream()));
      const Vec out = down_low(go);
      EXPECT_TRUE(bt::all_close("wgmma out", out, bt::to_vec(c.out), Tol{2 * u, 4 * u}));
      EXPECT_TRUE(bt::all_close("wgmma lse", f.down(gl), bt::to_vec(c.lse), Tol{1e-3, 1e-3}));
      EXPECT_TRUE(bt::all_equal("wgmma ping-pong out", out_pp, out));
      EXPECT_TRUE(bt::all_equal("wgmma ping-pong lse", lse_pp, f.down(gl)));

      Tensor gD = f.up({B, NH, T}, attention_rowdot(c.dout, out, B, T, NH, hd));
      Tensor accum = gpu.empty({B, T, C});  // the fused form's dQ accumulator (NaN-free: it zeroes it)
      llm::kernels::AttentionBackwardArgs ba;
      ba.qkv = gq.raw(), ba.dqkv = gd.raw(), ba.out = go.raw(), ba.dout = gdo.raw();
      ba.lse = gl.data<float>(), ba.scratch = gD.data<float>();
      ba.B = B, ba.NH = NH, ba.hd = hd, ba.T = T, ba.dq_red = dq_red;
      if (fused_dq) ba.dq_accum = accum.data<float>();
      const Vec ref = bt::to_vec(c.dqkv);
      if (dq_convert == 2) {
        const int64_t sums = int64_t(B) * T * C, counts = int64_t(B) * NH * ((T + 63) / 64);
        Tensor ws = gpu.zeros({int(sums + counts)});
        ba.dq_accum = ws.data<float>(), ba.dq_count = reinterpret_cast<int*>(ws.data<float>() + sums);
        ba.dq_clean = true, ba.dq_convert = 2;
        for (int run = 0; run < 2; ++run) {
          gd = gpu.zeros({B, T, 3 * C}, t), ba.dqkv = gd.raw();
          ASSERT_TRUE(llm::kernels::attention_backward_wgmma(t, ba, gpu.stream(), form));
          EXPECT_TRUE(bt::all_close(std::string(name) + " (converted in the kernel, run " + std::to_string(run) + ")",
                                    down_low(gd), ref, Tol{4 * u, 8 * u * bt::max_abs(ref)}));
          const Vec left = f.down(ws);
          EXPECT_TRUE(bt::all_equal("the workspace after the backward (sums, then counters)", left, Vec(left.size(), 0.0)));
        }
        // Not clean: the memset zeroes the sums and counters (ones here: 1.0f, and the int 1065353216).
        gpu.copy(ws, bt::host_f32({int(sums + counts)}, Vec(size_t(sums + counts), 1.0)));
        ba.dq_clean = false;
        gd = gpu.zeros({B, T, 3 * C}, t), ba.dqkv = gd.raw();
        ASSERT_TRUE(llm::kernels::attention_backward_wgmma(t, ba, gpu.stream(), form));
        EXPECT_TRUE(bt::all_close(std::string(name) + " (converted in the kernel, sums zeroed by the memset)", down_low(gd),
                                  ref, Tol{4 * u, 8 * u * bt::max_abs(ref)}));
        continue;
      }
      gpu.synchronize();
      ASSERT_TRUE(llm::kernels::attention_backward_wgmma(t, ba, gpu.stream(), form));
      const Vec got = down_low(gd);
      EXPECT_TRUE(bt::all_close(name, got, ref, Tol{4 * u, 8 * u * bt::max_abs(ref)}));
      if (!fused_dq) {  // no atomics: a second run gives the same bits (LLM_CUDA_DETERMINISTIC=1 relies on it)
        nan_fill(gpu, gd);
        ASSERT_TRUE(llm::kernels::attention_backward_wgmma(t, ba, gpu.stream(), form));
        EXPECT_TRUE(bt::all_equal(std::string(name) + " (second run)", down_low(gd), got));
      }
    }
}

TEST(CudaBackend, WgmmaAttentionMatchesTheCpuOp) {
  REQUIRE_WGMMA(be);
  check_wgmma_attention(*be, llm::kernels::WgmmaBackward::separate_dq);
}

// Its own test (and process in gpu_validation.sh, with the warp-specialised forwards): a fault in
// the fused kernel leaves the others' results.
TEST(CudaBackend, WgmmaFusedBackwardMatchesTheCpuOp) {
  REQUIRE_WGMMA(be);
  check_wgmma_attention(*be, llm::kernels::WgmmaBackward::atomic_dq);
}

// The warp-specialised fused backward (TMA producer, two consumers: wgmma-ws-atomic): its own
// process too (a fault or a hang there leaves the others' results).
TEST(CudaBackend, WgmmaWsFusedBackwardMatchesTheCpuOp) {
  REQUIRE_WGMMA(be);
  check_wgmma_attention(*be, llm::kernels::WgmmaBackward::ws_atomic_dq);
}

// LLM_CUDA_DQ_CONVERT=fused: both atomic warp-specialised forms with dQ converted inside the kernel
// by the block that adds a query tile's last sums (a producer warp, counters in global memory);
// its own process (a hang there leaves the others' results).
TEST(CudaBackend, WgmmaWsConvertedBackwardMatchesTheCpuOp) {
  REQUIRE_WGMMA(be);
  check_wgmma_attention(*be, llm::kernels::WgmmaBackward::ws_atomic_dq, 2);
  check_wgmma_attention(*be, llm::kernels::WgmmaBackward::ws_atomic_dq_first, 2);
}

// LLM_CUDA_DQ_RED=v4: the atomic warp-specialised forms' dQ adds as 16-byte reductions (quad lanes
// trading halves), with the conversion kernel and converted in the kernel, in both orders
// (wgmma-ws-atomic, and wgmma-ws-dqfirst's adds under dK's product); its own process.
TEST(CudaBackend, WgmmaWsV4ReductionsBackwardMatchesTheCpuOp) {
  REQUIRE_WGMMA(be);
  for (const auto form : {llm::kernels::WgmmaBackward::ws_atomic_dq, llm::kernels::WgmmaBackward::ws_atomic_dq_first}) {
    check_wgmma_attention(*be, form, 1, 4);
    check_wgmma_attention(*be, form, 2, 4);
  }
}

// The warp-specialised fused backward with dQ's product before dK's (wgmma-ws-dqfirst), and that
// with dQ staged in shared memory and added by TMA reductions (wgmma-ws-tma): each its own process.
TEST(CudaBackend, WgmmaWsDqFirstBackwardMatchesTheCpuOp) {
  REQUIRE_WGMMA(be);
  check_wgmma_attention(*be, llm::kernels::WgmmaBackward::ws_atomic_dq_first);
}

TEST(CudaBackend, WgmmaWsTmaBackwardMatchesTheCpuOp) {
  REQUIRE_WGMMA(be);
  check_wgmma_attention(*be, llm::kernels::WgmmaBackward::ws_tma_dq);
}

// The dQ kernel with register Q/dO score products (wgmma-rs): its own process too.
TEST(CudaBackend, WgmmaRegisterScoresBackwardMatchesTheCpuOp) {
  REQUIRE_WGMMA(be);
  check_wgmma_attention(*be, llm::kernels::WgmmaBackward::separate_dq_rs);
}

// The warp-specialised forwards (TMA, mbarriers, setmaxnreg: LLM_CUDA_ATTENTION=wgmma-ws and
// wgmma-ws-pp) compute what the plain wgmma forward computes, in the same order per element: their
// out and lse must equal it exactly. Shapes: self-attention over qkv (T = 333: a partial last
// block, rows past the end zero-filled by TMA), and the KV-cache form (queries at positions past
// .. past + Tq - 1 over separate K/V caches of maxT rows: a prompt chunk and one decoded token).
// Its own test (and process in gpu_validation.sh): a fault or hang here leaves the others' results.
// Each form in `forms` against the plain wgmma forward, out and lse bit for bit.
void check_forward_forms_equal_the_plain_one(llm::cuda::CudaBackend* be,
                                             const std::vector<std::pair<llm::kernels::WgmmaForward, const char*>>& forms) {
  using llm::kernels::WgmmaForward;
  struct Shape {
    int B, NH;
    int64_t Tq, past, maxT;  // maxT 0: self-attention over qkv
  };
  for (DType t : {DType::bf16, DType::f16})
    for (int hd : {48, 64, 80, 96, 128})
      for (const Shape& sh : {Shape{2, 2, 333, 0, 0}, Shape{2, 3, 70, 200, 300}, Shape{1, 2, 1, 250, 256}}) {
        SCOPED_TRACE(std::string(llm::dtype_name(t)) + " hd=" + std::to_string(hd) + " Tq=" + std::to_string(sh.Tq) +
                     " past=" + std::to_string(sh.past));
        const int64_t C = int64_t(sh.NH) * hd, Tk = sh.past + sh.Tq;
        bt::Rng rng(560 + hd + sh.Tq);
        const Vec qkv = bt::rounded_to(rng.normal(size_t(sh.B * sh.Tq * 3 * C)), t);
        Tensor gq = be->upload(bt::host_low({sh.B, int(sh.Tq), int(3 * C)}, qkv, t));
        Tensor go = be->empty({sh.B, int(sh.Tq), int(C)}, t), gl = be->empty({sh.B, sh.NH, int(sh.Tq)});
        Tensor gk, gv;
        llm::kernels::AttentionForwardArgs fa =
            llm::kernels::self_attention_args(gq.raw(), go.raw(), gl.data<float>(), llm::dtype_size(t), sh.B,
                                              sh.Tq, sh.NH, hd);
        if (sh.maxT > 0) {  // K/V caches of maxT rows, the first Tk of them in use (the rest NaN-free noise)
          const Vec kc = bt::rounded_to(rng.normal(size_t(sh.B * sh.maxT * C)), t);
          const Vec vc = bt::rounded_to(rng.normal(size_t(sh.B * sh.maxT * C)), t);
          gk = be->upload(bt::host_low({sh.B, int(sh.maxT), int(C)}, kc, t));
          gv = be->upload(bt::host_low({sh.B, int(sh.maxT), int(C)}, vc, t));
          fa.k = gk.raw(), fa.v = gv.raw();
          fa.kv_batch_stride = sh.maxT * C, fa.kv_row_stride = C;
          fa.q_pos0 = sh.past;
        }
        ASSERT_LE(Tk, sh.maxT > 0 ? sh.maxT : sh.Tq);
        const auto run = [&](WgmmaForward form) {
          nan_fill(*be, go), nan_fill(*be, gl);  // each form must write every row itself
          EXPECT_TRUE(llm::kernels::attention_forward_wgmma(t, fa, be->stream(), form));
          be->synchronize();
          return std::make_pair(bt::low_to_vec(be->download(go)), bt::to_vec(be->download(gl)));
        };
        const auto plain = run(WgmmaForward::plain);
        for (const auto& [form, name] : forms) {
          const auto got = run(form);
          EXPECT_TRUE(bt::all_equal(std::string(name) + " out", got.first, plain.first));
          EXPECT_TRUE(bt::all_equal(std::string(name) + " lse", got.second, plain.second));
        }
      }
}

TEST(CudaBackend, WgmmaWarpSpecialisedForwardsEqualThePlainOne) {
  REQUIRE_WGMMA(be);
  using llm::kernels::WgmmaForward;
  check_forward_forms_equal_the_plain_one(
      be, {{WgmmaForward::warp_specialized, "wgmma-ws"}, {WgmmaForward::warp_specialized_ping_pong, "wgmma-ws-pp"}});
}

// The three-consumer form (wgmma-ws3: 192-row blocks, a ring of three in ping-pong), in its own
// process: the same rows, the same key tiles, the same arithmetic per element.
TEST(CudaBackend, WgmmaThreeConsumerForwardEqualsThePlainOne) {
  REQUIRE_WGMMA(be);
  check_forward_forms_equal_the_plain_one(be, {{llm::kernels::WgmmaForward::warp_specialized_3, "wgmma-ws3"}});
}

// kernels/block_order.h: the order in which the tensor-core kernels' blocks take their work
// changes which block runs when, not what a block computes. At sequences long enough for several
// groups of heads (uneven ones: 16384 tokens at hd 128 put 16 MiB per head into the fused
// backward's L2 share of 32, so 5 heads go 1 + 2 + 2), the default order gives the launch order's
// out and lse bit for bit, dK and dV bit for bit, and dQ bit for bit unless auto's backward adds it
// with atomics (then to its rounding); and D (attention.cu's packed rowdot) matches rowsum(dout *
// out) in float64.
TEST(CudaBackend, AttentionBlockOrderChangesNoResult) {
  REQUIRE_CUDA(be);
  const DType t = DType::bf16;
  struct Shape {
    int B, NH, hd;
    int64_t T;
  };
  for (const Shape& sh : {Shape{1, 5, 128, 16384}, Shape{2, 3, 64, 16384}, Shape{2, 3, 96, 4096}}) {
    SCOPED_TRACE("B=" + std::to_string(sh.B) + " NH=" + std::to_string(sh.NH) + " hd=" + std::to_string(sh.hd) +
                 " T=" + std::to_string(sh.T));
    const int B = sh.B, NH = sh.NH, hd = sh.hd, T = int(sh.T), C = NH * hd;
    bt::Rng rng(610 + hd);
    const Vec qkv = bt::rounded_to(rng.normal(size_t(B) * T * 3 * C), t);
    const Vec dout = bt::rounded_to(rng.normal(size_t(B) * T * C), t);
    Tensor gq = be->upload(bt::host_low({B, T, 3 * C}, qkv, t)), gdo = be->upload(bt::host_low({B, T, C}, dout, t));
    Tensor go = be->empty({B, T, C}, t), gl = be->empty({B, NH, T}), gd = be->empty({B, T, 3 * C}, t);
    Tensor scratch = be->empty({int(llm::kernels::attention_backward_scratch(t, B, NH, hd, T))});
    const auto run = [&](int block_order) {
      nan_fill(*be, go), nan_fill(*be, gl), nan_fill(*be, gd);  // each order must write every tile itself
      llm::kernels::AttentionForwardArgs fa =
          llm::kernels::self_attention_args(gq.raw(), go.raw(), gl.data<float>(), llm::dtype_size(t), B, T, NH, hd);
      fa.block_order = block_order;
      llm::kernels::attention_forward(t, fa, be->stream());
      llm::kernels::AttentionBackwardArgs ba;
      ba.qkv = gq.raw(), ba.dqkv = gd.raw(), ba.out = go.raw(), ba.dout = gdo.raw();
      ba.lse = gl.data<float>(), ba.scratch = scratch.data<float>();
      ba.B = B, ba.NH = NH, ba.hd = hd, ba.T = T, ba.block_order = block_order;
      llm::kernels::attention_backward(t, ba, be->stream());
      be->synchronize();
      struct Out {
        Vec out, lse, dqkv, D;
      };
      const Vec all = bt::to_vec(be->download(scratch));
      return Out{bt::low_to_vec(be->download(go)), bt::to_vec(be->download(gl)), bt::low_to_vec(be->download(gd)),
                 Vec(all.begin(), all.begin() + size_t(B) * NH * T)};
    };
    const auto launch = run(-1), heaviest = run(0);
    EXPECT_TRUE(bt::all_equal("out", heaviest.out, launch.out));
    EXPECT_TRUE(bt::all_equal("lse", heaviest.lse, launch.lse));
    const size_t rows = size_t(B) * T;
    const Vec dq = bt::columns(heaviest.dqkv, rows, 3 * C, 0, C), dq_launch = bt::columns(launch.dqkv, rows, 3 * C, 0, C);
    EXPECT_TRUE(bt::all_equal("dK, dV", bt::columns(heaviest.dqkv, rows, 3 * C, C, 2 * C),
                              bt::columns(launch.dqkv, rows, 3 * C, C, 2 * C)));
    if (llm::kernels::adds_with_atomics(llm::kernels::attention_kernels_for(hd, true)))
      EXPECT_TRUE(bt::all_close("dQ (atomic adds)", dq, dq_launch, Tol{2 * bt::unit(t), 1e-3 * bt::max_abs(dq_launch)}));
    else
      EXPECT_TRUE(bt::all_equal("dQ", dq, dq_launch));
    // D = rowsum(dout * out) per (b, h, t) in float64, from the kernels' own (rounded) out.
    const Vec D = attention_rowdot(dout, heaviest.out, B, T, NH, hd);
    EXPECT_TRUE(bt::all_close("D", heaviest.D, D, Tol{1e-5, 1e-4 * bt::max_abs(D)}));
  }
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
