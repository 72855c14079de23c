// Matmuls through cuBLASLt, column-major like BLAS: D[m, n] = alpha op(A)[m, k] op(B)[k, n]
// + beta D, with an optional epilogue. fp32 inputs use CUBLAS_COMPUTE_32F (exact fp32, the
// conformance path) or TF32 when allowed; bf16/f16 inputs accumulate in fp32 and may write
// bf16/f16 or fp32 outputs (weight gradients accumulate into fp32 with beta = 1).
//
// Plans (descriptors + the heuristic's algorithm) are cached per shape, types, leading
// dimensions, epilogue and pointer alignment, so steady-state calls only set pointers.
#pragma once
#include <cublasLt.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>

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

class CublasLt {
 public:
  explicit CublasLt(cudaStream_t stream);
  ~CublasLt();
  CublasLt(const CublasLt&) = delete;
  CublasLt& operator=(const CublasLt&) = delete;

  // `op` names the caller in error messages (with the shapes).
  void run(const Matmul& mm, const char* op);
  void set_allow_tf32(bool on) { allow_tf32_ = on; }
  bool allow_tf32() const { return allow_tf32_; }

 private:
  struct Plan;
  cublasLtHandle_t handle_ = nullptr;
  cudaStream_t stream_;
  void* workspace_ = nullptr;
  size_t workspace_bytes_ = 0;
  bool allow_tf32_ = false;
  std::unordered_map<std::string, std::unique_ptr<Plan>> plans_;
};

cudaDataType_t cuda_data_type(DType t);

}  // namespace llm::cuda
