// Benchmark: one GPT training step (forward + backward + AdamW) on the CPU backend, reported as
// tokens/s and model GFLOP/s next to the sgemm GFLOP/s and memory bandwidth this machine
// gives in the same run (the ceilings). Not a test: run by hand, results go into
// docs/benchmarks.md.
//
//   bench-train-step [--vocab 8192 --layers 6 --hidden 384 --heads 6 --seq 256 --batch 8
//                     --steps 10 --profile]
#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "backend/profiling_backend.h"
#include "core/philox.h"
#include "core/timer.h"
#include "data/mock_data.h"
#include "train/flops.h"
#include "train/trainer.h"

using namespace llm;

namespace {

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.size() % 2 ? v[v.size() / 2] : 0.5 * (v[v.size() / 2 - 1] + v[v.size() / 2]);
}

// Median sgemm GFLOP/s for C[M,N] = A[M,K] B[K,N]^T (the linear layer's form).
double sgemm_gflops(int M, int N, int K, int reps) {
  std::vector<float> A(static_cast<size_t>(M) * K), B(static_cast<size_t>(N) * K), C(static_cast<size_t>(M) * N);
  for (size_t i = 0; i < A.size(); ++i) A[i] = philox_uniform(1, 1, i) - 0.5f;
  for (size_t i = 0; i < B.size(); ++i) B[i] = philox_uniform(1, 2, i) - 0.5f;
  std::vector<double> t;
  for (int r = 0; r < reps + 1; ++r) {
    Timer tm;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, N, K, 1.0f, A.data(), K, B.data(), K, 0.0f, C.data(), N);
    if (r) t.push_back(tm.seconds());
  }
  return 2.0 * M * N * K / median(t) / 1e9;
}

// Median bandwidth (GB/s) of a triad a = b + s*c over 3 x 64 MiB arrays, all threads.
double triad_gbs(int reps) {
  const size_t n = 16u << 20;
  std::vector<float> a(n), b(n, 1.0f), c(n, 2.0f);
  std::vector<double> t;
  for (int r = 0; r < reps + 1; ++r) {
    Timer tm;
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; ++i) a[i] = b[i] + 0.5f * c[i];
    if (r) t.push_back(tm.seconds());
  }
  return 3.0 * n * sizeof(float) / median(t) / 1e9;
}

}  // namespace

int main(int argc, char** argv) {
  int64_t V = 8192, L = 6, C = 384, NH = 6, T = 256, B = 8, steps = 10;
  bool profile = false, recompute = false;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto next = [&] { return std::atoll(argv[++i]); };
    if (a == "--vocab") V = next();
    else if (a == "--layers") L = next();
    else if (a == "--hidden") C = next();
    else if (a == "--heads") NH = next();
    else if (a == "--seq") T = next();
    else if (a == "--batch") B = next();
    else if (a == "--steps") steps = next();
    else if (a == "--profile") profile = true;
    else if (a == "--recompute") recompute = true;
    else {
      std::fprintf(stderr, "usage: %s [--vocab N --layers N --hidden N --heads N --seq N --batch N --steps N --profile --recompute]\n", argv[0]);
      return 2;
    }
  }
  const char* coretype = std::getenv("OPENBLAS_CORETYPE");
  std::printf("threads %d, OPENBLAS_CORETYPE=%s\n", omp_get_max_threads(), coretype ? coretype : "(unset)");
  TrainArgs args;
  args.vocab_size = V;
  args.num_layers = L;
  args.hidden_size = C;
  args.num_attention_heads = NH;
  args.seq_length = T;
  args.micro_batch_size = B;
  args.global_batch_size = B;
  args.train_iters = steps + 2;
  args.lr = 1e-4;
  if (recompute) args.recompute_granularity = "full";
  args.resolve_defaults();
  args.validate();
  // Ceilings, measured before and after the steps with the same threads and environment; the
  // better of the two is used so machine noise cannot flatter the ratio.
  const int gM = static_cast<int>(B * T), gN = static_cast<int>(4 * C), gK = static_cast<int>(C);
  const double gemm_model_before = sgemm_gflops(gM, gN, gK, 20);
  const double gemm_square_before = sgemm_gflops(2048, 2048, 2048, 5);
  MockDataSource data(V, T, 1);
  ProfilingBackend prof(cpu_backend());
  Backend& be = profile ? static_cast<Backend&>(prof) : cpu_backend();
  GPT model(args.model_config(), be, 1, T);
  Trainer trainer(args, model, data);
  trainer.train_step();  // warm-up: first-touch of every buffer
  trainer.train_step();
  prof.reset();
  std::vector<double> times;
  for (int64_t s = 0; s < steps; ++s) times.push_back(trainer.train_step().seconds);
  const double step = median(times);
  const double flops = model_flops_per_iteration(model.config(), B, T);
  const double gflops = flops / step / 1e9;

  const double gemm_model = std::max(gemm_model_before, sgemm_gflops(gM, gN, gK, 20));
  const double gemm_square = std::max(gemm_square_before, sgemm_gflops(2048, 2048, 2048, 5));
  const double gemm_ceiling = std::max(gemm_model, gemm_square);
  const double bw = triad_gbs(5);
  std::printf("model: vocab %lld, %lld layers, hidden %lld, %lld heads, seq %lld, micro-batch %lld, fp32, %.2fM params\n",
              (long long)V, (long long)L, (long long)C, (long long)NH, (long long)T, (long long)B,
              model.parameters().numel() / 1e6);
  std::printf("train step (fwd+bwd+AdamW): median %.1f ms over %lld steps (min %.1f, max %.1f)\n", step * 1e3,
              (long long)steps, *std::min_element(times.begin(), times.end()) * 1e3,
              *std::max_element(times.begin(), times.end()) * 1e3);
  std::printf("tokens/s: %.0f\n", static_cast<double>(B * T) / step);
  std::printf("activation + scratch memory: %.1f MB%s\n", model.activation_bytes() / 1e6,
              recompute ? " (full recompute)" : "");
  std::printf("model FLOPs/step: %.2f GFLOP -> achieved %.1f GFLOP/s\n", flops / 1e9, gflops);
  std::printf("sgemm ceiling: %.1f GFLOP/s (%lldx%lldx%lld: %.1f, 2048^3: %.1f)\n", gemm_ceiling,
              (long long)(B * T), (long long)(4 * C), (long long)C, gemm_model, gemm_square);
  std::printf("memory bandwidth (triad): %.1f GB/s\n", bw);
  std::printf("achieved / sgemm ceiling: %.1f%%\n", 100.0 * gflops / gemm_ceiling);
  if (profile) std::printf("per-op time over the measured steps (synchronised per op):\n%s", prof.report().c_str());
  return 0;
}
