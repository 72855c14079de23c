// Fused softmax cross-entropy over the (padded) vocabulary. The logits are never normalised
// in memory: forward saves each row's log-sum-exp, and backward turns logits into dlogits in
// place, so the [N, Vp] buffer is the only vocabulary-sized activation.
#include <algorithm>
#include <cmath>

#include "backend/cpu/cpu_ops.h"
#include "backend/cpu/simd.h"

namespace llm::cpu {

namespace {

LLM_SIMD_CLONES float row_max(const float* x, int64_t n) {
  float m = -INFINITY;
  for (int64_t i = 0; i < n; ++i) m = x[i] > m ? x[i] : m;
  return m;
}

LLM_SIMD_CLONES float row_sum_exp(const float* x, int64_t n, float m) {
  float s = 0.0f;
  for (int64_t i = 0; i < n; ++i) s += fast_exp(x[i] - m);
  return s;
}

LLM_SIMD_CLONES void row_softmax_grad(float* d, const float* x, int64_t n, float lse, float scale) {
  for (int64_t i = 0; i < n; ++i) d[i] = fast_exp(x[i] - lse) * scale;
}

// Returns the shard's number of real columns.
int64_t check_args(const char* op, const Tensor& logits, const Tensor& targets, int64_t V, int64_t vocab_begin) {
  const int64_t Vp = logits.size(-1), N = rows_of(logits, op);
  check_f32(logits, logits.shape(), op);
  LLM_CHECK(V >= 1 && vocab_begin >= 0 && vocab_begin < V, op, ": vocabulary ", V, " and shard of columns [",
            vocab_begin, ", ", vocab_begin + Vp, "): the shard must hold at least one real column");
  LLM_CHECK(targets.numel() == N && targets.dtype() == DType::i32 && targets.is_contiguous(), op,
            ": targets must be ", N, " contiguous i32, got ", shape_str(targets.shape()), " ",
            dtype_name(targets.dtype()));
  const int32_t* t = targets.data<int32_t>();
  for (int64_t i = 0; i < N; ++i)
    LLM_CHECK(t[i] < V, op, ": target ", t[i], " at row ", i, " outside the vocabulary of ", V);
  return std::min(Vp, V - vocab_begin);
}

}  // namespace

void cross_entropy_forward(const Tensor& losses, const Tensor& lse, const Tensor& logits,
                           const Tensor& targets, int64_t V, int64_t vocab_begin) {
  const int64_t Vr = check_args("cross_entropy_forward", logits, targets, V, vocab_begin);
  const int64_t Vp = logits.size(-1), N = logits.numel() / Vp;  // Vp > 0: check_args
  check_f32(losses, {N}, "cross_entropy_forward losses");
  check_f32(lse, {N}, "cross_entropy_forward lse");
  const float* x = logits.data<float>();
  const int32_t* t = targets.data<int32_t>();
  float* pl = losses.data<float>();
  float* ps = lse.data<float>();
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < N; ++i) {
    const float* row = x + i * Vp;
    const float m = row_max(row, Vr);
    const float s = m + std::log(row_sum_exp(row, Vr, m));
    ps[i] = s;
    const int64_t col = static_cast<int64_t>(t[i]) - vocab_begin;
    pl[i] = t[i] < 0 ? 0.0f : s - (col >= 0 && col < Vr ? row[col] : 0.0f);
  }
}

void cross_entropy_combine(const Tensor& losses, const Tensor& lse, const Tensor& shard_lse,
                           const Tensor& shard_losses, const Tensor& targets, int64_t shard_vocab) {
  const char* op = "cross_entropy_combine";
  LLM_CHECK(shard_lse.dim() == 2, op, ": shard_lse must be [P, N], got ", shape_str(shard_lse.shape()));
  const int64_t P = shard_lse.size(0), N = shard_lse.size(1);
  check_f32(shard_lse, {P, N}, "cross_entropy_combine shard_lse");
  check_f32(shard_losses, {P, N}, "cross_entropy_combine shard_losses");
  check_f32(losses, {N}, "cross_entropy_combine losses");
  check_f32(lse, {N}, "cross_entropy_combine lse");
  LLM_CHECK(targets.numel() == N && targets.dtype() == DType::i32 && targets.is_contiguous() &&
                targets.device().is_cpu(),
            op, ": targets must be ", N, " contiguous host i32, got ", shape_str(targets.shape()), " ",
            dtype_name(targets.dtype()), " on ", targets.device().str());
  LLM_CHECK(shard_vocab >= 1, op, ": shard vocabulary ", shard_vocab);
  const int32_t* t = targets.data<int32_t>();
  const float* ls = shard_lse.data<float>();
  const float* lo = shard_losses.data<float>();
  float* pl = lse.data<float>();
  float* pv = losses.data<float>();
  for (int64_t i = 0; i < N; ++i)
    LLM_CHECK(t[i] / shard_vocab < P, op, ": target ", t[i], " at row ", i, " past ", P, " shards of ", shard_vocab);
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < N; ++i) {
    double m = -INFINITY;
    for (int64_t r = 0; r < P; ++r) m = std::max(m, static_cast<double>(ls[r * N + i]));
    double acc = 0;
    for (int64_t r = 0; r < P; ++r) acc += std::exp(static_cast<double>(ls[r * N + i]) - m);
    const double g = m + std::log(acc);
    pl[i] = static_cast<float>(g);
    if (t[i] < 0) {
      pv[i] = 0.0f;
      continue;
    }
    const int64_t o = t[i] / shard_vocab;
    pv[i] = static_cast<float>(g - (static_cast<double>(ls[o * N + i]) - static_cast<double>(lo[o * N + i])));
  }
}

void cross_entropy_backward(const Tensor& dlogits, const Tensor& logits, const Tensor& lse,
                            const Tensor& targets, float dloss, int64_t V, int64_t vocab_begin) {
  const int64_t Vr = check_args("cross_entropy_backward", logits, targets, V, vocab_begin);
  const int64_t Vp = logits.size(-1), N = logits.numel() / Vp;  // Vp > 0: check_args
  check_f32(dlogits, logits.shape(), "cross_entropy_backward dlogits");
  check_f32(lse, {N}, "cross_entropy_backward lse");
  const float* x = logits.data<float>();
  const int32_t* t = targets.data<int32_t>();
  const float* ps = lse.data<float>();
  float* d = dlogits.data<float>();
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < N; ++i) {
    float* drow = d + i * Vp;
    if (t[i] < 0) {
      std::fill(drow, drow + Vp, 0.0f);
      continue;
    }
    row_softmax_grad(drow, x + i * Vp, Vr, ps[i], dloss);  // element-wise: safe in place
    const int64_t col = static_cast<int64_t>(t[i]) - vocab_begin;
    if (col >= 0 && col < Vr) drow[col] -= dloss;
    std::fill(drow + Vr, drow + Vp, 0.0f);
  }
}

}  // namespace llm::cpu
