// Checked CUDA / cuBLAS calls. Every failure becomes an llm::Error that names the call, the
// source line and, where the caller passes them, the op and the shapes it was working on:
//
//   CUDA_CHECK(cudaMemcpyAsync(...), "copy ", shape_str(dst.shape()));
//   CUBLAS_CHECK(cublasLtMatmul(...), "linear_forward m=", m, " n=", n, " k=", k);
//
// The context arguments are only formatted when the call failed.
#pragma once
#include <cublasLt.h>
#include <cuda_runtime.h>

#include <string>

#include "core/error.h"

namespace llm::cuda {

[[noreturn]] void throw_cuda_error(cudaError_t e, const char* expr, const char* file, int line,
                                   const std::string& context);
[[noreturn]] void throw_cublas_error(cublasStatus_t s, const char* expr, const char* file, int line,
                                     const std::string& context);

}  // namespace llm::cuda

#define CUDA_CHECK(call, ...)                                                                  \
  do {                                                                                         \
    const cudaError_t llm_cuda_err_ = (call);                                                  \
    if (llm_cuda_err_ != cudaSuccess)                                                          \
      ::llm::cuda::throw_cuda_error(llm_cuda_err_, #call, __FILE__, __LINE__,                  \
                                    ::llm::detail::concat("" __VA_OPT__(, ) __VA_ARGS__));     \
  } while (0)

#define CUBLAS_CHECK(call, ...)                                                                \
  do {                                                                                         \
    const cublasStatus_t llm_cublas_st_ = (call);                                              \
    if (llm_cublas_st_ != CUBLAS_STATUS_SUCCESS)                                               \
      ::llm::cuda::throw_cublas_error(llm_cublas_st_, #call, __FILE__, __LINE__,               \
                                      ::llm::detail::concat("" __VA_OPT__(, ) __VA_ARGS__));   \
  } while (0)
