#include "backend/matmul_split.h"

#include "core/error.h"

namespace llm::cuda {

namespace {

enum class Dim { m, n, k };

struct Span {
  int64_t elements = 0;
  Dim outer, inner;  // the dimension along the leading dimension's columns, and along its rows
};

bool has_aux(Epilogue e) { return e == Epilogue::gelu_bias_aux || e == Epilogue::dgelu; }

// The stored operands' spans, and which of m, n, k runs along each one's columns and rows.
std::vector<Span> spans(const Matmul& mm) {
  std::vector<Span> s;
  if (mm.trans_a)
    s.push_back({matmul_span(mm.k, mm.m, mm.lda), Dim::m, Dim::k});
  else
    s.push_back({matmul_span(mm.m, mm.k, mm.lda), Dim::k, Dim::m});
  if (mm.trans_b)
    s.push_back({matmul_span(mm.n, mm.k, mm.ldb), Dim::k, Dim::n});
  else
    s.push_back({matmul_span(mm.k, mm.n, mm.ldb), Dim::n, Dim::k});
  s.push_back({matmul_span(mm.m, mm.n, mm.ldd), Dim::n, Dim::m});
  if (has_aux(mm.epilogue)) s.push_back({matmul_span(mm.m, mm.n, mm.ld_aux), Dim::n, Dim::m});
  return s;
}

const void* advance(const void* p, int64_t elements, DType t) {
  return static_cast<const char*>(p) + elements * static_cast<int64_t>(dtype_size(t));
}
void* advance(void* p, int64_t elements, DType t) {
  return static_cast<char*>(p) + elements * static_cast<int64_t>(dtype_size(t));
}

// The piece of `mm` over [o, o + len) of dimension `d`.
Matmul piece(const Matmul& mm, Dim d, int64_t o, int64_t len) {
  Matmul p = mm;
  switch (d) {
    case Dim::m:
      p.m = len;
      p.a = advance(mm.a, mm.trans_a ? o * mm.lda : o, mm.a_type);
      p.d = advance(mm.d, o, mm.d_type);
      if (has_aux(mm.epilogue)) p.aux = advance(mm.aux, o, mm.d_type);
      if (mm.epilogue == Epilogue::bias || mm.epilogue == Epilogue::gelu_bias_aux)
        p.bias = advance(mm.bias, o, mm.d_type);
      break;  // bgradb's bias (over n) is written whole by every piece, the same values
    case Dim::n:
      p.n = len;
      p.b = advance(mm.b, mm.trans_b ? o : o * mm.ldb, mm.b_type);
      p.d = advance(mm.d, o * mm.ldd, mm.d_type);
      if (has_aux(mm.epilogue)) p.aux = advance(mm.aux, o * mm.ld_aux, mm.d_type);
      if (mm.epilogue == Epilogue::bgradb) p.bias = advance(mm.bias, o, DType::f32);
      break;
    case Dim::k:
      p.k = len;
      p.a = advance(mm.a, mm.trans_a ? o : o * mm.lda, mm.a_type);
      p.b = advance(mm.b, mm.trans_b ? o * mm.ldb : o, mm.b_type);
      if (o > 0) p.beta = 1.0f;  // later pieces add to what the first wrote
      break;
  }
  return p;
}

void split_into(const Matmul& mm, int64_t limit, std::vector<Matmul>& out) {
  Span worst{};
  for (const Span& s : spans(mm))
    if (s.elements > worst.elements) worst = s;
  if (worst.elements <= limit) {
    out.push_back(mm);
    return;
  }
  auto size = [&](Dim d) { return d == Dim::m ? mm.m : d == Dim::n ? mm.n : mm.k; };
  const Dim d = size(worst.outer) > 1 ? worst.outer : worst.inner;
  const int64_t s = size(d);
  LLM_CHECK(s > 1, "an operand spans ", worst.elements, " elements in one row or column, over the ", limit,
            " one cuBLASLt call takes");
  LLM_CHECK(d != Dim::k || mm.epilogue == Epilogue::none, "an operand spans ", worst.elements, " elements (over the ",
            limit, " one cuBLASLt call takes) and the split it needs, over k, is not possible under an epilogue");
  const int64_t half = s / 2, cut = half >= 16 ? half / 16 * 16 : half;
  split_into(piece(mm, d, 0, cut), limit, out);
  split_into(piece(mm, d, cut, s - cut), limit, out);
}

}  // namespace

std::vector<Matmul> split_matmul(const Matmul& mm, int64_t limit) {
  std::vector<Matmul> out;
  if (mm.m == 0 || mm.n == 0 || mm.k == 0) {
    out.push_back(mm);
    return out;
  }
  split_into(mm, limit, out);
  return out;
}

}  // namespace llm::cuda
