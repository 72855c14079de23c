// A cuBLASLt matmul as data (column-major like BLAS: D[m, n] = alpha op(A)[m, k] op(B)[k, n] +
// beta D, with an optional epilogue), and its split into matmuls whose operands each span fewer
// than 2^31 elements. Pure C++ (no CUDA headers), so CI tests the split on the host.
//
// Why split: cuBLASLt takes 64-bit sizes, but some of its kernels index an operand in 32 bits
// (cuBLASLt 13.6 picks an algorithm that fails at a 2^31-element input span: NVIDIA/raft#3097).
// The model's largest GEMMs pass that: the logits [B*T, V] hold 2^31 elements from 42,692 tokens
// per micro-batch at V = 50304 (8 x 8192, or one long sequence), the MLP's [B*T, 4C] from 131,072
// tokens at C = 4096. Each piece is still a GEMM of at least 2^30 elements, so the split costs
// nothing measurable.
#pragma once
#include <cstdint>
#include <vector>

#include "core/dtype.h"

namespace llm::cuda {

enum class Epilogue : uint8_t {
  none,
  bias,           // D = AB + bias (bias[m], broadcast over columns)
  gelu_bias_aux,  // aux = AB + bias; D = gelu_tanh(aux)
  dgelu,          // D = AB * gelu'(aux)
  bgradb,         // D as without epilogue; bias[n] (f32) = sum over k of op(B)[k, n] (the bias gradient)
};

struct Matmul {
  bool trans_a = false, trans_b = false;
  int64_t m = 0, n = 0, k = 0;
  DType a_type = DType::f32, b_type = DType::f32, d_type = DType::f32;
  const void* a = nullptr;
  int64_t lda = 0;
  const void* b = nullptr;
  int64_t ldb = 0;
  void* d = nullptr;
  int64_t ldd = 0;
  float alpha = 1.0f, beta = 0.0f;
  Epilogue epilogue = Epilogue::none;
  const void* bias = nullptr;  // same type as D (bgradb: written, f32)
  void* aux = nullptr;         // gelu pre-activation, same type as D, leading dimension ld_aux
  int64_t ld_aux = 0;
};

// The widest span (elements from an operand's first to its last, leading dimensions included) one
// cuBLASLt call is given.
inline constexpr int64_t kMatmulSpanLimit = (int64_t(1) << 31) - 1;

// Elements from the first to the last of each stored operand (column-major, leading dimension ld).
inline int64_t matmul_span(int64_t rows, int64_t cols, int64_t ld) { return (cols - 1) * ld + rows; }

// `mm` as pieces that together compute the same D (and aux, bias) and each span at most `limit`
// elements per operand: columns of D (n) split D, aux, B and bgradb's bias; rows (m) split D, A,
// aux and the bias epilogue's bias; the reduction (k) splits A and B, each piece after the first
// adding to D (beta = 1), which only a matmul without an epilogue allows. Splits fall on multiples
// of 16 where the dimension allows (the pieces keep the pointers' alignment). Throws when a piece
// cannot get under the limit (a single row or column over it, or a k split under an epilogue).
// A k split into a 16-bit D rounds each partial sum to D's type; the model's only k split is
// dweight's, into fp32 (dinp would need a weight of 2^31 elements: vocabulary x hidden).
std::vector<Matmul> split_matmul(const Matmul& mm, int64_t limit = kMatmulSpanLimit);

}  // namespace llm::cuda
