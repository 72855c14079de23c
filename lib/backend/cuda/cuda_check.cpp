#include "backend/cuda/cuda_check.h"

namespace llm::cuda {

void throw_cuda_error(cudaError_t e, const char* expr, const char* file, int line, const std::string& context) {
  throw Error(detail::concat("CUDA error ", cudaGetErrorName(e), " (", cudaGetErrorString(e), ")",
                             context.empty() ? "" : " in ", context, " [", expr, " at ", file, ":", line, "]"));
}

void throw_cublas_error(cublasStatus_t s, const char* expr, const char* file, int line, const std::string& context) {
  throw Error(detail::concat("cuBLAS error ", cublasLtGetStatusName(s), " (", cublasLtGetStatusString(s), ")",
                             context.empty() ? "" : " in ", context, " [", expr, " at ", file, ":", line, "]"));
}

}  // namespace llm::cuda
