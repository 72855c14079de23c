// split_matmul (backend/matmul_split.h): a cuBLASLt matmul whose operands span more elements than
// one call takes runs as pieces. Here a host executor of the same Matmul (column-major, both
// transposes, every epilogue, f32 and bf16 storage) runs the whole and the pieces under a small
// limit; on small integers every sum is exact, so the buffers (padding between columns included,
// which no piece may touch) must be bit-equal, and every piece must be under the limit.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "backend/matmul_split.h"
#include "core/dtype.h"
#include "core/error.h"

namespace {

using llm::DType;
using llm::cuda::Epilogue;
using llm::cuda::Matmul;

float load(const void* p, int64_t i, DType t) {
  if (t == DType::f32) return static_cast<const float*>(p)[i];
  return llm::bf16_to_f32(static_cast<const uint16_t*>(p)[i]);
}
void store(void* p, int64_t i, DType t, float v) {
  if (t == DType::f32)
    static_cast<float*>(p)[i] = v;
  else
    static_cast<uint16_t*>(p)[i] = llm::f32_to_bf16(v);
}
float gelu(float x) { return 0.5f * x * (1.0f + std::tanh(0.7978845608f * (x + 0.044715f * x * x * x))); }
float dgelu(float x) {
  const float u = 0.7978845608f * (x + 0.044715f * x * x * x), t = std::tanh(u);
  return 0.5f * (1.0f + t) + 0.5f * x * (1.0f - t * t) * 0.7978845608f * (1.0f + 3.0f * 0.044715f * x * x);
}

// What cuBLASLt computes for `mm`, on host pointers.
void execute(const Matmul& mm) {
  for (int64_t j = 0; j < mm.n; ++j)
    for (int64_t i = 0; i < mm.m; ++i) {
      double acc = 0;
      for (int64_t l = 0; l < mm.k; ++l) {
        const float a = load(mm.a, mm.trans_a ? l + i * mm.lda : i + l * mm.lda, mm.a_type);
        const float b = load(mm.b, mm.trans_b ? j + l * mm.ldb : l + j * mm.ldb, mm.b_type);
        acc += double(a) * b;
      }
      const int64_t at = i + j * mm.ldd;
      float v = float(mm.alpha * acc + (mm.beta != 0.0f ? mm.beta * load(mm.d, at, mm.d_type) : 0.0f));
      if (mm.epilogue == Epilogue::bias) v += load(mm.bias, i, mm.d_type);
      if (mm.epilogue == Epilogue::gelu_bias_aux) {
        v += load(mm.bias, i, mm.d_type);
        store(mm.aux, i + j * mm.ld_aux, mm.d_type, v);
        v = gelu(v);
      }
      if (mm.epilogue == Epilogue::dgelu) v *= dgelu(load(mm.aux, i + j * mm.ld_aux, mm.d_type));
      store(mm.d, at, mm.d_type, v);
    }
  if (mm.epilogue == Epilogue::bgradb)
    for (int64_t j = 0; j < mm.n; ++j) {
      double s = 0;
      for (int64_t l = 0; l < mm.k; ++l) s += load(mm.b, mm.trans_b ? j + l * mm.ldb : l + j * mm.ldb, mm.b_type);
      static_cast<float*>(const_cast<void*>(mm.bias))[j] = float(s);
    }
}

struct Buffers {
  std::vector<char> a, b, d, aux, bias;
};

int64_t span_of(int64_t rows, int64_t cols, int64_t ld) { return llm::cuda::matmul_span(rows, cols, ld); }

TEST(MatmulSplit, PiecesComputeTheWholeUnderTheLimit) {
  std::mt19937 rng(11);
  auto pick = [&](int lo, int hi) { return int64_t(std::uniform_int_distribution<int>(lo, hi)(rng)); };
  int split_cases = 0, k_splits = 0, refused = 0, epilogue_splits = 0;
  for (int c = 0; c < 400; ++c) {
    Matmul mm;
    mm.trans_a = pick(0, 1), mm.trans_b = pick(0, 1);
    mm.m = pick(1, 40), mm.n = pick(1, 40), mm.k = pick(1, 40);
    mm.a_type = mm.b_type = pick(0, 1) ? DType::bf16 : DType::f32;
    mm.d_type = mm.a_type == DType::f32 || pick(0, 1) ? DType::f32 : DType::bf16;
    mm.epilogue = static_cast<Epilogue>(pick(0, 4));
    const int64_t a_rows = mm.trans_a ? mm.k : mm.m, a_cols = mm.trans_a ? mm.m : mm.k;
    const int64_t b_rows = mm.trans_b ? mm.n : mm.k, b_cols = mm.trans_b ? mm.k : mm.n;
    mm.lda = a_rows + pick(0, 5), mm.ldb = b_rows + pick(0, 5), mm.ldd = mm.m + pick(0, 5), mm.ld_aux = mm.m + pick(0, 3);
    mm.beta = pick(0, 1) ? 1.0f : 0.0f;
    mm.alpha = pick(0, 1) ? 1.0f : 2.0f;
    const int64_t limit = pick(1, 300);
    SCOPED_TRACE("case " + std::to_string(c) + ": " + (mm.trans_a ? "T" : "N") + (mm.trans_b ? "T" : "N") +
                 " m=" + std::to_string(mm.m) + " n=" + std::to_string(mm.n) + " k=" + std::to_string(mm.k) +
                 " epilogue=" + std::to_string(int(mm.epilogue)) + " limit=" + std::to_string(limit));
    // Small integers (GELU's inputs kept small too), padding included: the sums are exact in f32 and bf16.
    auto fill = [&](std::vector<char>& buf, int64_t n, DType t, int lo, int hi) {
      buf.assign(size_t(n + 8) * llm::dtype_size(t), 0);
      for (int64_t i = 0; i < n + 8; ++i) store(buf.data(), i, t, float(pick(lo, hi)));
    };
    Buffers whole;
    fill(whole.a, span_of(a_rows, a_cols, mm.lda), mm.a_type, -1, 1);
    fill(whole.b, span_of(b_rows, b_cols, mm.ldb), mm.b_type, -1, 1);
    fill(whole.d, span_of(mm.m, mm.n, mm.ldd), mm.d_type, -3, 3);
    fill(whole.aux, span_of(mm.m, mm.n, mm.ld_aux), mm.d_type, -3, 3);
    fill(whole.bias, std::max(mm.m, mm.n), mm.epilogue == Epilogue::bgradb ? DType::f32 : mm.d_type, -3, 3);
    Buffers parts = whole;
    auto bind = [&](Matmul x, Buffers& buf) {
      x.a = buf.a.data(), x.b = buf.b.data(), x.d = buf.d.data(), x.aux = buf.aux.data(), x.bias = buf.bias.data();
      return x;
    };
    const Matmul w = bind(mm, whole), p = bind(mm, parts);
    std::vector<Matmul> pieces;
    try {
      pieces = llm::cuda::split_matmul(p, limit);
    } catch (const llm::Error& e) {
      // only a split over k under an epilogue is refused, with the reason
      EXPECT_NE(mm.epilogue, Epilogue::none) << e.what();
      EXPECT_NE(std::string(e.what()).find("over k"), std::string::npos) << e.what();
      ++refused;
      continue;
    }
    execute(w);
    bool k_split = false;
    for (const Matmul& q : pieces) {
      EXPECT_LE(span_of(q.trans_a ? q.k : q.m, q.trans_a ? q.m : q.k, q.lda), limit);
      EXPECT_LE(span_of(q.trans_b ? q.n : q.k, q.trans_b ? q.k : q.n, q.ldb), limit);
      EXPECT_LE(span_of(q.m, q.n, q.ldd), limit);
      if (q.epilogue == Epilogue::gelu_bias_aux || q.epilogue == Epilogue::dgelu) {
        EXPECT_LE(span_of(q.m, q.n, q.ld_aux), limit);
      }
      k_split = k_split || q.k < mm.k;
      execute(q);
    }
    split_cases += pieces.size() > 1;
    epilogue_splits += pieces.size() > 1 && mm.epilogue != Epilogue::none;
    k_splits += k_split;
    EXPECT_EQ(whole.d, parts.d) << "D";
    EXPECT_EQ(whole.aux, parts.aux) << "aux";
    EXPECT_EQ(whole.bias, parts.bias) << "bias";
  }
  // the draw covers every kind of split
  std::printf("  %d of 400 split (%d under an epilogue), %d over k, %d refused\n", split_cases, epilogue_splits,
              k_splits, refused);
  EXPECT_GT(split_cases, 100);
  EXPECT_GT(k_splits, 20);
  EXPECT_GT(epilogue_splits, 40);
  EXPECT_GT(refused, 10);
}

// The model's shapes: nothing under 2^31 - 1 elements is split; the logits of 8 x 8192 tokens at
// V = 50304 (4.1e9 elements) and their backward come out in pieces of at least 2^30 elements.
TEST(MatmulSplit, TheLogitsOfALongBatchSplitIntoLargePieces) {
  const int64_t N = 8 * 8192, C = 2048, V = 50304;
  Matmul fwd;  // logits^T[V, N] = W[V, C] inp^T[C, N] (linear_forward)
  fwd.trans_a = true, fwd.m = V, fwd.n = N, fwd.k = C, fwd.lda = C, fwd.ldb = C, fwd.ldd = V;
  fwd.a_type = fwd.b_type = fwd.d_type = DType::bf16;
  fwd.a = fwd.b = fwd.d = reinterpret_cast<void*>(uintptr_t(1) << 40);
  const auto f = llm::cuda::split_matmul(fwd);
  EXPECT_EQ(f.size(), 2u);
  int64_t cols = 0;
  for (const Matmul& q : f) {
    EXPECT_EQ(q.m, V);
    EXPECT_GE(q.n * V, int64_t(1) << 30);
    EXPECT_LE(llm::cuda::matmul_span(q.m, q.n, q.ldd), llm::cuda::kMatmulSpanLimit);
    EXPECT_EQ(static_cast<const char*>(q.d) - static_cast<const char*>(fwd.d), cols * V * 2) << "D's columns in order";
    cols += q.n;
  }
  EXPECT_EQ(cols, N);
  Matmul dw;  // dweight^T[C, V] += inp^T[C, N] dlogits[N, V] (linear_backward): a split over k
  dw.trans_b = true, dw.m = C, dw.n = V, dw.k = N, dw.lda = C, dw.ldb = V, dw.ldd = C, dw.beta = 1.0f;
  dw.a_type = dw.b_type = DType::bf16, dw.d_type = DType::f32;
  dw.a = dw.b = fwd.a, dw.d = fwd.d;
  const auto g = llm::cuda::split_matmul(dw);
  EXPECT_EQ(g.size(), 2u);
  for (const Matmul& q : g) EXPECT_EQ(q.beta, 1.0f);
  fwd.n = 1024;  // a GPT-2 micro-batch: one call
  EXPECT_EQ(llm::cuda::split_matmul(fwd).size(), 1u);
}

}  // namespace
