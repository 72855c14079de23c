// Benchmark: causal flash attention forward + backward TFLOPS on the CUDA backend, bf16, head
// dims 64 and 128 (--head-dims: others; the heads are hidden / hd, rounded down), sequence
// 2k-16k at 16k tokens per batch and hidden 2048 (the FlashAttention-2 paper's setting).
// FLOPs: forward 4 B NH T^2 hd / 2 (causal), backward 2.5x forward.
// Run tests/bench/cuda_attention_torch.py on the same GPU for PyTorch's fused attention.
//
//   bench-cuda-attention [--tokens 16384 --hidden 2048 --reps 5 --head-dims 64,128 --seqs 2048,4096,8192,16384]
#include <cmath>
#include <cstdio>

#include "cuda_bench_util.h"

int main(int argc, char** argv) {
  llm::cuda::CudaBackend& be = bench::backend_or_exit();
  const int64_t tokens = static_cast<int64_t>(bench::flag(argc, argv, "--tokens", 16384));
  const int64_t hidden = static_cast<int64_t>(bench::flag(argc, argv, "--hidden", 2048));
  const int reps = static_cast<int>(bench::flag(argc, argv, "--reps", 5));
  const std::vector<int> head_dims = bench::int_list(argc, argv, "--head-dims", {64, 128});
  const std::vector<int> seqs = bench::int_list(argc, argv, "--seqs", {2048, 4096, 8192, 16384});
  std::printf("# %s\n", bench::device_line(be.device().index).c_str());
  std::printf("# causal flash attention, bf16, %lld tokens per batch, hidden %lld\n", (long long)tokens, (long long)hidden);
  std::printf("%4s %6s %3s %4s %9s %9s %9s %9s %9s\n", "hd", "seq", "B", "NH", "fwd_ms", "fwd_TF", "bwd_ms", "bwd_TF",
              "fb_TF");
  // B * T = tokens for every point, so the inputs are drawn once (the host draw is what takes time).
  const llm::Tensor qkv_host = bench::host_normal(tokens * 3 * hidden, 1.0, 1);
  const llm::Tensor dout_host = bench::host_normal(tokens * hidden, 1.0, 2);
  for (int hd : head_dims)
    for (const int64_t T : seqs) {
      const int64_t B = std::max<int64_t>(1, tokens / T), NH = hidden / hd, C = NH * hd;
      if (B * T != tokens) continue;  // (tokens not a multiple of T)
      llm::Tensor qkv = be.empty({B, T, 3 * C}, llm::DType::bf16), out = be.empty({B, T, C}, llm::DType::bf16);
      llm::Tensor lse = be.empty({B, NH, T}), dout = be.empty({B, T, C}, llm::DType::bf16);
      llm::Tensor dqkv = be.empty({B, T, 3 * C}, llm::DType::bf16);
      {
        // (C < hidden when hd does not divide it: the inputs' first elements.)
        llm::Tensor f = be.upload(C == hidden ? qkv_host : bench::host_prefix(qkv_host, B * T * 3 * C));
        be.convert(qkv.view({B * T * 3 * C}), f);
        llm::Tensor g = be.upload(C == hidden ? dout_host : bench::host_prefix(dout_host, B * T * C));
        be.convert(dout.view({B * T * C}), g);
      }
      const double fwd = bench::time_ms(be, [&] { be.attention_forward(out, lse, qkv, int(NH)); }, 2, reps);
      const double bwd = bench::time_ms(be, [&] { be.attention_backward(dqkv, dout, qkv, out, lse, int(NH)); }, 2, reps);
      const double fwd_flops = 4.0 * B * NH * double(T) * T * hd / 2;
      const double bwd_flops = 2.5 * fwd_flops;
      std::printf("%4d %6lld %3lld %4lld %9.3f %9.1f %9.3f %9.1f %9.1f\n", hd, (long long)T, (long long)B,
                  (long long)NH, fwd, fwd_flops / fwd * 1e-9, bwd, bwd_flops / bwd * 1e-9,
                  (fwd_flops + bwd_flops) / (fwd + bwd) * 1e-9);
      std::fflush(stdout);
    }
  return 0;
}
