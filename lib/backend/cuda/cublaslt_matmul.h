// Matmuls through cuBLASLt, column-major like BLAS: D[m, n] = alpha op(A)[m, k] op(B)[k, n]
// + beta D, with an optional epilogue (Matmul and Epilogue are in backend/matmul_split.h). fp32
// inputs use CUBLAS_COMPUTE_32F (exact fp32, the conformance path) or TF32 when allowed; bf16/f16 inputs accumulate in fp32 and may write
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
#include <vector>

#include "backend/matmul_split.h"
#include "core/dtype.h"

namespace llm::cuda {

class CublasLt {
 public:
  explicit CublasLt(cudaStream_t stream);
  ~CublasLt();
  CublasLt(const CublasLt&) = delete;
  CublasLt& operator=(const CublasLt&) = delete;

  // `op` names the caller in error messages (with the shapes). A matmul with an operand over
  // 2^31 elements runs as the pieces of split_matmul (backend/matmul_split.h), every piece's plan
  // made before the first launch.
  void run(const Matmul& mm, const char* op);
  // run(), except that when a piece has no algorithm (or cannot be split) nothing runs and it
  // returns false with the reason in `why`: an epilogue's caller then falls back. (why = null: throws.)
  bool run_if_supported(const Matmul& mm, const char* op, std::string* why);
  void set_allow_tf32(bool on) { allow_tf32_ = on; }
  bool allow_tf32() const { return allow_tf32_; }

 private:
  struct Plan;
  std::vector<Matmul> pieces(const Matmul& mm, const char* op) const;
  Plan& plan(const Matmul& mm, const char* op);  // cached per shape, types, alignment, epilogue
  void launch(const Matmul& mm, Plan& p, const char* op);
  cublasLtHandle_t handle_ = nullptr;
  cudaStream_t stream_;
  void* workspace_ = nullptr;
  size_t workspace_bytes_ = 0;
  bool allow_tf32_ = false;
  std::unordered_map<std::string, std::unique_ptr<Plan>> plans_;
  std::unordered_map<std::string, std::string> unsupported_;  // plan key -> why no algorithm
};

cudaDataType_t cuda_data_type(DType t);

}  // namespace llm::cuda
