// Benchmark: bf16 training steps of a GPT-1.3B-class model (GPT-3 XL by default: 24 layers,
// hidden 2048, 16 heads, seq 2048, vocab 50304) on one GPU through the real model and trainer
// (GPT + Trainer on mock data, what `llm-pretrain --bf16 --mock-data` runs: fp32 master weights
// and AdamW state, bf16 working copy and activations, gradient clipping), reported as model
// TFLOPS and MFU (model FLOPs from train/flops.h: 3x the forward, dense attention, no recompute;
// MFU against the card's nominal dense bf16 peak, or --peak-tflops) and the allocator's peak.
//
//   bench-cuda-train-step [--layers 24 --hidden 2048 --heads 16 --seq 2048 --batch 4
//                          --vocab 50304 --steps 5 --peak-tflops 989 --profile 0]
// --profile 1 adds one step with every op synchronised and timed (the model runs on a
// ProfilingBackend around the CUDA backend, switched off for the timed steps).
#include <algorithm>
#include <cstdio>
#include <vector>

#include "backend/profiling_backend.h"
#include "cuda_bench_util.h"
#include "data/mock_data.h"
#include "train/flops.h"
#include "train/trainer.h"

int main(int argc, char** argv) {
  llm::cuda::CudaBackend& be = bench::backend_or_exit();
  const int64_t L = int64_t(bench::flag(argc, argv, "--layers", 24)), h = int64_t(bench::flag(argc, argv, "--hidden", 2048));
  const int64_t NH = int64_t(bench::flag(argc, argv, "--heads", 16));
  const int64_t T = int64_t(bench::flag(argc, argv, "--seq", 2048)), B = int64_t(bench::flag(argc, argv, "--batch", 4));
  const int64_t V = int64_t(bench::flag(argc, argv, "--vocab", 50304));
  const int steps = std::max(1, int(bench::flag(argc, argv, "--steps", 5)));
  const double peak = bench::flag(argc, argv, "--peak-tflops", bench::nominal_bf16_tflops(be.device().index));

  llm::TrainArgs args;
  args.num_layers = L, args.hidden_size = h, args.num_attention_heads = NH, args.vocab_size = V;
  args.seq_length = T, args.micro_batch_size = B, args.global_batch_size = B;
  args.train_iters = steps + 2;
  args.lr = 1e-4;
  args.bf16 = true;
  args.backend = "cuda";
  args.resolve_defaults();
  args.validate();
  llm::MockDataSource data(V, T, 1);
  llm::ProfilingBackend prof(be);
  prof.set_enabled(false);
  llm::GPT model(args.model_config(), prof, 1, T);
  llm::Trainer trainer(args, model, data);
  std::printf("# %s\n# GPT: %lld layers, hidden %lld, %lld heads, seq %lld, micro-batch %lld, vocab %lld: %.3fB parameters, bf16\n",
              bench::device_line(be.device().index).c_str(), (long long)L, (long long)h, (long long)NH, (long long)T,
              (long long)B, (long long)V, model.parameters().numel() / 1e9);

  trainer.train_step();  // warm-up: cuBLASLt plans, the allocator's blocks
  std::vector<double> step_ms, fb_ms, opt_ms;
  for (int s = 0; s < steps; ++s) {
    const llm::IterationStats st = trainer.train_step();
    step_ms.push_back(st.seconds * 1e3), fb_ms.push_back(st.forward_backward_seconds * 1e3),
        opt_ms.push_back(st.optimizer_seconds * 1e3);
  }
  auto med = [](std::vector<double> x) { std::sort(x.begin(), x.end()); return x[x.size() / 2]; };
  const double step = med(step_ms);
  const double tflops = llm::model_flops_per_iteration(model.config(), B, T) / (step * 1e-3) * 1e-12;
  std::printf("step %.1f ms (forward+backward %.1f, optimizer %.1f; median of %d); %.0f tokens/s; model %.1f TFLOPS",
              step, med(fb_ms), med(opt_ms), steps, double(B * T) / (step * 1e-3), tflops);
  if (peak > 0) std::printf("; MFU %.1f%% of %.1f", 100.0 * tflops / peak, peak);
  std::printf("\n%s\n", be.allocator().report().c_str());
  if (bench::flag(argc, argv, "--profile", 0) != 0) {
    prof.set_enabled(true);
    trainer.train_step();
    std::printf("# one step, op by op (synchronised around each op, so launch gaps are counted):\n%s",
                prof.report().c_str());
  }
  return 0;
}
