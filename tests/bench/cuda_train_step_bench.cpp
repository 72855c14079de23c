// Benchmark: one bf16 training step (forward + backward + AdamW on fp32 master weights) of a
// GPT-1.3B-class model (24 layers, hidden 2048, 16 heads, seq 2048, vocab 50304) through the
// CUDA backend's ops on one GPU, reported as model TFLOPS and MFU (model FLOPs from
// train/flops.h: 3x the forward, dense attention, no recompute; MFU against the card's nominal
// dense bf16 peak, or --peak-tflops). Weights are bf16 working copies of fp32 masters,
// gradients fp32, activations bf16, LayerNorm statistics and the loss fp32.
//
//   bench-cuda-train-step [--layers 24 --hidden 2048 --heads 16 --seq 2048 --batch 4
//                          --vocab 50304 --steps 5 --peak-tflops 989 --profile 0]
// --profile 1 adds one step through a ProfilingBackend and prints the time of every op.
#include <cmath>
#include <cstdio>
#include <vector>

#include "backend/profiling_backend.h"
#include "cuda_bench_util.h"
#include "model/config.h"
#include "train/flops.h"

using llm::DType;
using llm::Tensor;

namespace {

struct Layer {
  Tensor ln1_w, ln1_b, ln2_w, ln2_b;                           // f32 views of the master buffer
  Tensor qkv_w, qkv_b, proj_w, proj_b, fc_w, fc_b, fp_w, fp_b;  // bf16 views of the working copy
  Tensor d_ln1_w, d_ln1_b, d_ln2_w, d_ln2_b, d_qkv_w, d_qkv_b, d_proj_w, d_proj_b, d_fc_w, d_fc_b, d_fp_w, d_fp_b;
  // activations kept for backward
  Tensor x, ln1, mean1, rstd1, qkv, att, lse, x2, ln2, mean2, rstd2, fc_pre, fc;
};

}  // namespace

int main(int argc, char** argv) {
  llm::cuda::CudaBackend& be = bench::backend_or_exit();
  const int64_t L = int64_t(bench::flag(argc, argv, "--layers", 24)), h = int64_t(bench::flag(argc, argv, "--hidden", 2048));
  const int NH = int(bench::flag(argc, argv, "--heads", 16));
  const int64_t T = int64_t(bench::flag(argc, argv, "--seq", 2048)), B = int64_t(bench::flag(argc, argv, "--batch", 4));
  const int64_t V = int64_t(bench::flag(argc, argv, "--vocab", 50304));
  const int steps = int(bench::flag(argc, argv, "--steps", 5));
  double peak = bench::flag(argc, argv, "--peak-tflops", bench::nominal_bf16_tflops(be.device().index));
  const int64_t N = B * T, Vp = (V + 127) / 128 * 128;

  // ---- parameters: one flat fp32 master buffer, its bf16 copy, fp32 grads, AdamW state ----
  int64_t total = 0;
  auto take = [&](int64_t n) { const int64_t o = total; total += n; return o; };
  const int64_t o_wte = take(Vp * h), o_wpe = take(T * h);
  struct Off { int64_t ln1w, ln1b, ln2w, ln2b, qkvw, qkvb, projw, projb, fcw, fcb, fpw, fpb; };
  std::vector<Off> off(static_cast<size_t>(L));
  for (auto& o : off)
    o = {take(h), take(h), take(h), take(h), take(3 * h * h), take(3 * h), take(h * h), take(h), take(4 * h * h),
         take(4 * h), take(4 * h * h), take(h)};
  const int64_t o_lnfw = take(h), o_lnfb = take(h);
  std::printf("# %s\n# GPT: %lld layers, hidden %lld, %d heads, seq %lld, micro-batch %lld, vocab %lld: %.3fB parameters\n",
              bench::device_line(be.device().index).c_str(), (long long)L, (long long)h, NH, (long long)T, (long long)B,
              (long long)V, total / 1e9);
  Tensor master = be.empty({total}), low = be.empty({total}, DType::bf16), grad = be.zeros({total});
  Tensor m = be.zeros({total}), v = be.zeros({total});
  {
    const int64_t chunk = int64_t(1) << 24;
    Tensor r = be.upload(bench::host_normal(chunk, 0.02, 5));
    for (int64_t o = 0; o < total; o += chunk) be.copy(master.flat(o, std::min(chunk, total - o)), r.flat(0, std::min(chunk, total - o)));
    for (const auto& o : off) {  // LayerNorm weights 1, biases 0
      Tensor ones = be.upload(bench::host_const(h, 1.0f));
      be.copy(master.flat(o.ln1w, h), ones), be.copy(master.flat(o.ln2w, h), ones);
      be.zero(master.flat(o.ln1b, h)), be.zero(master.flat(o.ln2b, h));
    }
    be.convert(low, master);
  }
  auto W = [&](int64_t o, llm::Shape s) { return low.flat(o, llm::numel(s)).view(s); };
  auto F = [&](int64_t o, llm::Shape s) { return master.flat(o, llm::numel(s)).view(s); };
  auto G = [&](int64_t o, llm::Shape s) { return grad.flat(o, llm::numel(s)).view(s); };
  std::vector<Layer> layers(static_cast<size_t>(L));
  for (int64_t l = 0; l < L; ++l) {
    Layer& y = layers[size_t(l)];
    const Off& o = off[size_t(l)];
    y.ln1_w = F(o.ln1w, {h}), y.ln1_b = F(o.ln1b, {h}), y.ln2_w = F(o.ln2w, {h}), y.ln2_b = F(o.ln2b, {h});
    y.qkv_w = W(o.qkvw, {3 * h, h}), y.qkv_b = W(o.qkvb, {3 * h}), y.proj_w = W(o.projw, {h, h}), y.proj_b = W(o.projb, {h});
    y.fc_w = W(o.fcw, {4 * h, h}), y.fc_b = W(o.fcb, {4 * h}), y.fp_w = W(o.fpw, {h, 4 * h}), y.fp_b = W(o.fpb, {h});
    y.d_ln1_w = G(o.ln1w, {h}), y.d_ln1_b = G(o.ln1b, {h}), y.d_ln2_w = G(o.ln2w, {h}), y.d_ln2_b = G(o.ln2b, {h});
    y.d_qkv_w = G(o.qkvw, {3 * h, h}), y.d_qkv_b = G(o.qkvb, {3 * h}), y.d_proj_w = G(o.projw, {h, h});
    y.d_proj_b = G(o.projb, {h}), y.d_fc_w = G(o.fcw, {4 * h, h}), y.d_fc_b = G(o.fcb, {4 * h});
    y.d_fp_w = G(o.fpw, {h, 4 * h}), y.d_fp_b = G(o.fpb, {h});
    y.x = be.empty({N, h}, DType::bf16), y.ln1 = be.empty({N, h}, DType::bf16), y.mean1 = be.empty({N}), y.rstd1 = be.empty({N});
    y.qkv = be.empty({B, T, 3 * h}, DType::bf16), y.att = be.empty({B, T, h}, DType::bf16), y.lse = be.empty({B, NH, T});
    y.x2 = be.empty({N, h}, DType::bf16), y.ln2 = be.empty({N, h}, DType::bf16), y.mean2 = be.empty({N}), y.rstd2 = be.empty({N});
    y.fc_pre = be.empty({N, 4 * h}, DType::bf16), y.fc = be.empty({N, 4 * h}, DType::bf16);
  }
  Tensor wte = W(o_wte, {Vp, h}), wpe = W(o_wpe, {T, h}), lnf_w = F(o_lnfw, {h}), lnf_b = F(o_lnfb, {h});
  Tensor d_wte = G(o_wte, {Vp, h}), d_wpe = G(o_wpe, {T, h}), d_lnf_w = G(o_lnfw, {h}), d_lnf_b = G(o_lnfb, {h});
  be.copy(lnf_w, be.upload(bench::host_const(h, 1.0f)));
  be.zero(lnf_b);
  Tensor x_out = be.empty({N, h}, DType::bf16), lnf = be.empty({N, h}, DType::bf16), meanf = be.empty({N}), rstdf = be.empty({N});
  Tensor logits = be.empty({N, Vp}, DType::bf16), losses = be.empty({N}), lse_ce = be.empty({N});
  Tensor dres = be.empty({N, h}, DType::bf16), dln = be.empty({N, h}, DType::bf16), dfc = be.empty({N, 4 * h}, DType::bf16);
  Tensor datt = be.empty({B, T, h}, DType::bf16), dqkv = be.empty({B, T, 3 * h}, DType::bf16), tmp = be.empty({N, h}, DType::bf16);
  Tensor tokens = be.upload(bench::host_ids({B, T}, int(V), 9));
  Tensor targets = be.upload(bench::host_ids({N}, int(V), 10));

  // The step's ops go through `ops`: the backend itself, or (--profile 1, one extra step after
  // the timed ones) a ProfilingBackend around it that synchronises and times every op.
  llm::Backend* ops = &be;
  auto forward = [&] {
    ops->embedding_forward(layers[0].x.view({B, T, h}), tokens, wte, wpe, 0, 0);
    for (int64_t l = 0; l < L; ++l) {
      Layer& y = layers[size_t(l)];
      ops->layernorm_forward(y.ln1, y.mean1, y.rstd1, y.x, y.ln1_w, y.ln1_b, 1e-5f);
      ops->linear_forward(y.qkv.view({N, 3 * h}), y.ln1, y.qkv_w, y.qkv_b);
      ops->attention_forward(y.att, y.lse, y.qkv, NH);
      ops->linear_forward(tmp, y.att.view({N, h}), y.proj_w, y.proj_b);
      ops->residual_forward(y.x2, y.x, tmp);
      ops->layernorm_forward(y.ln2, y.mean2, y.rstd2, y.x2, y.ln2_w, y.ln2_b, 1e-5f);
      ops->linear_gelu_forward(y.fc, y.fc_pre, y.ln2, y.fc_w, y.fc_b);
      ops->linear_forward(tmp, y.fc, y.fp_w, y.fp_b);
      ops->residual_forward(l + 1 < L ? layers[size_t(l + 1)].x : x_out, y.x2, tmp);
    }
    ops->layernorm_forward(lnf, meanf, rstdf, x_out, lnf_w, lnf_b, 1e-5f);
    ops->linear_forward(logits, lnf, wte, Tensor{});
    ops->cross_entropy_forward(losses, lse_ce, logits, targets, V, 0);
  };
  auto backward = [&] {
    ops->cross_entropy_backward(logits, logits, lse_ce, targets, 1.0f / float(N), V, 0);
    ops->linear_backward(dln, d_wte, Tensor{}, logits, lnf, wte);
    ops->zero(dres);
    ops->layernorm_backward(dres, d_lnf_w, d_lnf_b, dln, x_out, lnf_w, meanf, rstdf);
    for (int64_t l = L - 1; l >= 0; --l) {
      Layer& y = layers[size_t(l)];
      ops->linear_backward_gelu(dfc, y.d_fp_w, y.d_fp_b, dres, y.fc, y.fp_w, y.fc_pre);
      ops->linear_backward(dln, y.d_fc_w, y.d_fc_b, dfc, y.ln2, y.fc_w);
      ops->layernorm_backward(dres, y.d_ln2_w, y.d_ln2_b, dln, y.x2, y.ln2_w, y.mean2, y.rstd2);
      ops->linear_backward(datt.view({N, h}), y.d_proj_w, y.d_proj_b, dres, y.att.view({N, h}), y.proj_w);
      ops->attention_backward(dqkv, datt, y.qkv, y.att, y.lse, NH);
      ops->linear_backward(dln, y.d_qkv_w, y.d_qkv_b, dqkv.view({N, 3 * h}), y.ln1, y.qkv_w);
      ops->layernorm_backward(dres, y.d_ln1_w, y.d_ln1_b, dln, y.x, y.ln1_w, y.mean1, y.rstd1);
    }
    ops->embedding_backward(d_wte, d_wpe, dres.view({B, T, h}), tokens, 0);
  };
  llm::AdamWParams ap;
  ap.lr = 1e-4f, ap.weight_decay = 0.1f;
  auto optimizer = [&] {
    const double norm = std::sqrt(ops->sum_squares(grad));
    ap.grad_scale = norm > 1.0 ? float(1.0 / (norm + 1e-6)) : 1.0f;
    ops->adamw_update_mixed(master, grad, m, v, ap, low);
    ++ap.step;
  };

  llm::cuda::CudaTimer tf(be.stream()), tb(be.stream()), to(be.stream());
  std::vector<double> fwd_ms, bwd_ms, opt_ms;
  for (int s = 0; s < steps + 1; ++s) {
    be.zero(grad);
    tf.start(); forward(); tf.stop();
    tb.start(); backward(); tb.stop();
    to.start(); optimizer(); to.stop();
    if (s == 0) { tf.milliseconds(); continue; }  // warm-up: plans, allocator
    fwd_ms.push_back(tf.milliseconds()), bwd_ms.push_back(tb.milliseconds()), opt_ms.push_back(to.milliseconds());
  }
  auto med = [](std::vector<double> x) { std::sort(x.begin(), x.end()); return x[x.size() / 2]; };
  const double f = med(fwd_ms), b = med(bwd_ms), o = med(opt_ms), step = f + b + o;
  llm::GPTConfig cfg;
  cfg.num_layers = L, cfg.hidden_size = h, cfg.num_heads = NH, cfg.vocab_size = V, cfg.max_position_embeddings = T;
  const double flops = llm::model_flops_per_iteration(cfg, B, T);
  const double tflops = flops / (step * 1e-3) * 1e-12;
  std::printf("step %.1f ms (forward %.1f, backward %.1f, optimizer %.1f); %.0f tokens/s; model %.1f TFLOPS",
              step, f, b, o, N / (step * 1e-3), tflops);
  if (peak > 0) std::printf("; MFU %.1f%% of %.1f", 100.0 * tflops / peak, peak);
  std::printf("\n%s\n", be.allocator().report().c_str());
  if (bench::flag(argc, argv, "--profile", 0) != 0) {
    llm::ProfilingBackend prof(be);
    ops = &prof;
    be.zero(grad);
    forward(), backward(), optimizer();
    std::printf("# one step, op by op (synchronised around each op, so launch gaps are counted):\n%s",
                prof.report().c_str());
  }
  return 0;
}
