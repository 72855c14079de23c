// Causal self-attention, computed flash-style (FlashAttention-2 algorithm on the CPU).
//
// Forward: for each (batch, head, query tile) walk the key tiles up to the diagonal, keeping a
// running row max m and row sum l (online softmax), so memory is O(T) per head: no [T, T]
// score matrix is ever stored. The log-sum-exp per query is saved for backward.
// Backward: per (batch, head), walk key tiles and, for each, the query tiles at or below the
// diagonal; recompute P = exp(S - lse) from the saved lse, and accumulate dV, dK, dQ. One task
// owns a whole (batch, head), so the dQ accumulation across key tiles needs no atomics.
// Tile products go through sgemm (single-threaded inside the OpenMP region).
#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "backend/cpu/cpu_ops.h"
#include "backend/cpu/simd.h"

namespace llm::cpu {

namespace {

constexpr int64_t kTile = 64;  // query and key tile (Br = Bc)

struct Dims {
  int64_t B, T, C, NH, hd;
};

Dims attention_dims(const Tensor& qkv, int n_head, const char* op) {
  LLM_CHECK(qkv.dim() == 3 && qkv.size(2) % 3 == 0, op, ": qkv must be [B,T,3C], got ",
            shape_str(qkv.shape()));
  Dims d{qkv.size(0), qkv.size(1), qkv.size(2) / 3, n_head, 0};
  LLM_CHECK(n_head > 0 && d.C % n_head == 0, op, ": C=", d.C, " not divisible by n_head=", n_head);
  d.hd = d.C / n_head;
  return d;
}

// Online-softmax update of one query row against one key tile. s[0..valid) are scaled scores,
// overwritten with probabilities; s[valid..nc) are zeroed. Returns the correction factor for
// the running output.
LLM_SIMD_CLONES float online_softmax_row(float* s, int64_t valid, int64_t nc, float* m, float* l) {
  float mx = *m;
  for (int64_t c = 0; c < valid; ++c) mx = s[c] > mx ? s[c] : mx;
  const float corr = (*m == -INFINITY) ? 0.0f : fast_exp(*m - mx);
  float sum = 0.0f;
  for (int64_t c = 0; c < valid; ++c) {
    float p = fast_exp(s[c] - mx);
    s[c] = p;
    sum += p;
  }
  for (int64_t c = valid; c < nc; ++c) s[c] = 0.0f;
  *m = mx;
  *l = *l * corr + sum;
  return corr;
}

// p[c] = exp(s[c] - lse) for c < valid, else 0 (the causal mask).
LLM_SIMD_CLONES void recompute_row(float* p, int64_t valid, int64_t nc, float lse) {
  for (int64_t c = 0; c < valid; ++c) p[c] = fast_exp(p[c] - lse);
  for (int64_t c = valid; c < nc; ++c) p[c] = 0.0f;
}

LLM_SIMD_CLONES void softmax_grad_row(float* ds, const float* p, int64_t nc, float D) {
  for (int64_t c = 0; c < nc; ++c) ds[c] = p[c] * (ds[c] - D);
}

LLM_SIMD_CLONES float dot(const float* a, const float* b, int64_t n) {
  float s = 0.0f;
  for (int64_t i = 0; i < n; ++i) s += a[i] * b[i];
  return s;
}

LLM_SIMD_CLONES void scale_row(float* x, int64_t n, float s) {
  for (int64_t i = 0; i < n; ++i) x[i] *= s;
}

}  // namespace

void attention_forward(const Tensor& out, const Tensor& lse, const Tensor& qkv, int n_head) {
  const Dims d = attention_dims(qkv, n_head, "attention_forward");
  check_f32(qkv, qkv.shape(), "attention_forward qkv");
  check_f32(out, {d.B, d.T, d.C}, "attention_forward out");
  check_f32(lse, {d.B, d.NH, d.T}, "attention_forward lse");
  const int64_t T = d.T, C = d.C, hd = d.hd, ld = 3 * C;
  const int64_t ntiles = (T + kTile - 1) / kTile;
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
  const float* base = qkv.data<float>();
  float* po = out.data<float>();
  float* pl = lse.data<float>();

#pragma omp parallel
  {
    std::vector<float> S(kTile * kTile), O(kTile * hd), m(kTile), l(kTile);
#pragma omp for collapse(3) schedule(dynamic, 1)
    for (int64_t b = 0; b < d.B; ++b)
      for (int64_t h = 0; h < d.NH; ++h)
        for (int64_t qt = ntiles - 1; qt >= 0; --qt) {  // longest rows first: better balance
          const float* q = base + b * T * ld + h * hd;
          const float* k = q + C;
          const float* v = q + 2 * C;
          const int64_t i0 = qt * kTile, nr = std::min(kTile, T - i0);
          std::fill(O.begin(), O.begin() + nr * hd, 0.0f);
          std::fill(m.begin(), m.end(), -INFINITY);
          std::fill(l.begin(), l.end(), 0.0f);
          for (int64_t j0 = 0; j0 < i0 + nr; j0 += kTile) {
            const int64_t nc = std::min(kTile, i0 + nr - j0);
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<int>(nr),
                        static_cast<int>(nc), static_cast<int>(hd), scale, q + i0 * ld,
                        static_cast<int>(ld), k + j0 * ld, static_cast<int>(ld), 0.0f, S.data(),
                        static_cast<int>(kTile));
            for (int64_t r = 0; r < nr; ++r) {
              const int64_t valid = std::clamp<int64_t>(i0 + r - j0 + 1, 0, nc);
              float* srow = S.data() + r * kTile;
              if (valid == 0) {
                std::fill(srow, srow + nc, 0.0f);
                continue;
              }
              const float corr = online_softmax_row(srow, valid, nc, &m[r], &l[r]);
              if (corr != 1.0f) scale_row(O.data() + r * hd, hd, corr);
            }
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, static_cast<int>(nr),
                        static_cast<int>(hd), static_cast<int>(nc), 1.0f, S.data(),
                        static_cast<int>(kTile), v + j0 * ld, static_cast<int>(ld), 1.0f, O.data(),
                        static_cast<int>(hd));
          }
          for (int64_t r = 0; r < nr; ++r) {
            const float inv = 1.0f / l[r];
            float* dst = po + (b * T + i0 + r) * C + h * hd;
            const float* src = O.data() + r * hd;
            for (int64_t e = 0; e < hd; ++e) dst[e] = src[e] * inv;
            pl[(b * d.NH + h) * T + i0 + r] = m[r] + std::log(l[r]);
          }
        }
  }
}

void attention_backward(const Tensor& dqkv, const Tensor& dout, const Tensor& qkv,
                        const Tensor& out, const Tensor& lse, int n_head) {
  const Dims d = attention_dims(qkv, n_head, "attention_backward");
  check_f32(qkv, qkv.shape(), "attention_backward qkv");
  check_f32(dqkv, qkv.shape(), "attention_backward dqkv");
  check_f32(out, {d.B, d.T, d.C}, "attention_backward out");
  check_f32(dout, {d.B, d.T, d.C}, "attention_backward dout");
  check_f32(lse, {d.B, d.NH, d.T}, "attention_backward lse");
  const int64_t T = d.T, C = d.C, hd = d.hd, ld = 3 * C;
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
  const float* base = qkv.data<float>();
  float* dbase = dqkv.data<float>();
  const float* po = out.data<float>();
  const float* pdo = dout.data<float>();
  const float* pl = lse.data<float>();

#pragma omp parallel
  {
    std::vector<float> P(kTile * kTile), dS(kTile * kTile), D(static_cast<size_t>(T));
#pragma omp for collapse(2) schedule(dynamic, 1)
    for (int64_t b = 0; b < d.B; ++b)
      for (int64_t h = 0; h < d.NH; ++h) {
        const float* q = base + b * T * ld + h * hd;
        const float* k = q + C;
        const float* v = q + 2 * C;
        float* dq = dbase + b * T * ld + h * hd;
        float* dk = dq + C;
        float* dv = dq + 2 * C;
        const float* o = po + b * T * C + h * hd;
        const float* dO = pdo + b * T * C + h * hd;
        const float* L = pl + (b * d.NH + h) * T;
        for (int64_t t = 0; t < T; ++t) {
          D[t] = dot(dO + t * C, o + t * C, hd);  // rowsum(dO * O) = rowsum(P * dP)
          std::fill(dq + t * ld, dq + t * ld + hd, 0.0f);
          std::fill(dk + t * ld, dk + t * ld + hd, 0.0f);
          std::fill(dv + t * ld, dv + t * ld + hd, 0.0f);
        }
        for (int64_t j0 = 0; j0 < T; j0 += kTile) {
          const int64_t nc = std::min(kTile, T - j0);
          for (int64_t i0 = j0; i0 < T; i0 += kTile) {
            const int64_t nr = std::min(kTile, T - i0);
            // P = exp(scale * Q_i K_j^T - lse_i), causal-masked
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<int>(nr),
                        static_cast<int>(nc), static_cast<int>(hd), scale, q + i0 * ld,
                        static_cast<int>(ld), k + j0 * ld, static_cast<int>(ld), 0.0f, P.data(),
                        static_cast<int>(kTile));
            for (int64_t r = 0; r < nr; ++r) {
              const int64_t valid = std::clamp<int64_t>(i0 + r - j0 + 1, 0, nc);
              recompute_row(P.data() + r * kTile, valid, nc, L[i0 + r]);
            }
            // dV_j += P^T dO_i
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, static_cast<int>(nc),
                        static_cast<int>(hd), static_cast<int>(nr), 1.0f, P.data(),
                        static_cast<int>(kTile), dO + i0 * C, static_cast<int>(C), 1.0f,
                        dv + j0 * ld, static_cast<int>(ld));
            // dP = dO_i V_j^T ; dS = P * (dP - D_i)
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<int>(nr),
                        static_cast<int>(nc), static_cast<int>(hd), 1.0f, dO + i0 * C,
                        static_cast<int>(C), v + j0 * ld, static_cast<int>(ld), 0.0f, dS.data(),
                        static_cast<int>(kTile));
            for (int64_t r = 0; r < nr; ++r)
              softmax_grad_row(dS.data() + r * kTile, P.data() + r * kTile, nc, D[i0 + r]);
            // dK_j += scale * dS^T Q_i ;  dQ_i += scale * dS K_j
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, static_cast<int>(nc),
                        static_cast<int>(hd), static_cast<int>(nr), scale, dS.data(),
                        static_cast<int>(kTile), q + i0 * ld, static_cast<int>(ld), 1.0f,
                        dk + j0 * ld, static_cast<int>(ld));
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, static_cast<int>(nr),
                        static_cast<int>(hd), static_cast<int>(nc), scale, dS.data(),
                        static_cast<int>(kTile), k + j0 * ld, static_cast<int>(ld), 1.0f,
                        dq + i0 * ld, static_cast<int>(ld));
          }
        }
      }
  }
}

}  // namespace llm::cpu
