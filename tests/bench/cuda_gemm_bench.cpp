// Benchmark: GEMM TFLOPS of our linear path (CudaBackend::linear_forward/backward: cuBLASLt,
// bf16 in, fp32 accumulate, first heuristic algorithm) for the matmuls of a GPT-1.3B-class
// layer, next to the measured peak for the same shape: the fastest of up to 32 cuBLASLt
// algorithms timed one by one. A large square GEMM gives the card's measured ceiling.
//
//   bench-cuda-gemm [--tokens 8192 --hidden 2048 --vocab 50304 --reps 5]
#include <cublasLt.h>

#include <cstdio>
#include <vector>

#include "backend/cuda/cuda_check.h"
#include "cuda_bench_util.h"

namespace {

// Best time over the heuristic's candidate algorithms for row-major out[M,N] = A[M,K] B[N,K]^T,
// bf16 in, `out_f32` ? f32 : bf16 out, fp32 compute.
double best_algorithm_ms(llm::cuda::CudaBackend& be, int64_t M, int64_t N, int64_t K, bool out_f32, int reps) {
  cublasLtHandle_t h;
  CUBLAS_CHECK(cublasLtCreate(&h));
  llm::Tensor A = be.zeros({M, K}, llm::DType::bf16), B = be.zeros({N, K}, llm::DType::bf16);
  llm::Tensor D = be.zeros({M, N}, out_f32 ? llm::DType::f32 : llm::DType::bf16);
  llm::Tensor ws = be.empty({int64_t(64) << 20}, llm::DType::u8);
  const cudaDataType_t dt = out_f32 ? CUDA_R_32F : CUDA_R_16BF;
  cublasLtMatmulDesc_t desc;
  CUBLAS_CHECK(cublasLtMatmulDescCreate(&desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  const cublasOperation_t T = CUBLAS_OP_T, Nn = CUBLAS_OP_N;
  cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSA, &T, sizeof(T));
  cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSB, &Nn, sizeof(Nn));
  // column-major: D^T[N, M] = B (K x N stored, transposed) * A^T (K x M)
  cublasLtMatrixLayout_t la, lb, ld;
  CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&la, CUDA_R_16BF, K, N, K));
  CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&lb, CUDA_R_16BF, K, M, K));
  CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&ld, dt, N, M, N));
  cublasLtMatmulPreference_t pref;
  cublasLtMatmulPreferenceCreate(&pref);
  const uint64_t wsb = uint64_t(64) << 20;
  cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &wsb, sizeof(wsb));
  std::vector<cublasLtMatmulHeuristicResult_t> res(32);
  int found = 0;
  cublasLtMatmulAlgoGetHeuristic(h, desc, la, lb, ld, ld, pref, 32, res.data(), &found);
  const float alpha = 1.0f, beta = 0.0f;
  double best = 1e30;
  for (int i = 0; i < found; ++i) {
    auto run = [&] {
      cublasLtMatmul(h, desc, &alpha, B.raw(), la, A.raw(), lb, &beta, D.raw(), ld, D.raw(), ld, &res[size_t(i)].algo,
                     ws.raw(), wsb, be.stream());
    };
    run();
    if (cudaStreamSynchronize(be.stream()) != cudaSuccess) {
      (void)cudaGetLastError();
      continue;
    }
    best = std::min(best, bench::time_ms(be, run, 1, reps));
  }
  cublasLtMatmulPreferenceDestroy(pref);
  cublasLtMatrixLayoutDestroy(la);
  cublasLtMatrixLayoutDestroy(lb);
  cublasLtMatrixLayoutDestroy(ld);
  cublasLtMatmulDescDestroy(desc);
  cublasLtDestroy(h);
  return best;
}

}  // namespace

int main(int argc, char** argv) {
  llm::cuda::CudaBackend& be = bench::backend_or_exit();
  const int64_t Ntok = static_cast<int64_t>(bench::flag(argc, argv, "--tokens", 8192));
  const int64_t h = static_cast<int64_t>(bench::flag(argc, argv, "--hidden", 2048));
  const int64_t V = static_cast<int64_t>(bench::flag(argc, argv, "--vocab", 50304));
  const int reps = static_cast<int>(bench::flag(argc, argv, "--reps", 5));
  std::printf("# %s\n# bf16 GEMMs of a GPT layer, %lld tokens, hidden %lld (TFLOPS; nominal dense bf16 peak %.1f)\n",
              bench::device_line(be.device().index).c_str(), (long long)Ntok, (long long)h,
              bench::nominal_bf16_tflops(be.device().index));
  std::printf("%-22s %6s %6s %6s %9s %9s %9s %7s\n", "gemm", "M", "N", "K", "ours_ms", "ours_TF", "best_TF", "ratio");
  struct Shape {
    const char* name;
    int64_t in, out;
  };
  const Shape shapes[] = {{"qkv", h, 3 * h}, {"attn_proj", h, h}, {"fc", h, 4 * h}, {"fc_proj", 4 * h, h}, {"lm_head", h, V}};
  for (const Shape& s : shapes) {
    llm::Tensor x = be.zeros({Ntok, s.in}, llm::DType::bf16), w = be.zeros({s.out, s.in}, llm::DType::bf16);
    llm::Tensor y = be.zeros({Ntok, s.out}, llm::DType::bf16), dx = be.zeros({Ntok, s.in}, llm::DType::bf16);
    llm::Tensor dw = be.zeros({s.out, s.in});
    const double flops = 2.0 * Ntok * s.in * s.out;
    struct Pass {
      const char* what;
      int64_t M, N, K;
      bool f32out;
      std::function<void()> run;
    };
    const Pass passes[] = {
        {"fwd", Ntok, s.out, s.in, false, [&] { be.linear_forward(y, x, w, llm::Tensor{}); }},
        {"dinp", Ntok, s.in, s.out, false, [&] { be.linear_backward(dx, dw, llm::Tensor{}, y, x, w); }},
    };
    for (const Pass& p : passes) {
      const double ms = bench::time_ms(be, p.run, 2, reps);
      // linear_backward runs dinp and dweight: count both
      const double f = p.what[0] == 'd' ? 2 * flops : flops;
      const double best = best_algorithm_ms(be, p.M, p.N, p.K, p.f32out, reps);
      const double best_tf = flops / best * 1e-9;
      const double ours_tf = f / ms * 1e-9;
      std::printf("%-22s %6lld %6lld %6lld %9.3f %9.1f %9.1f %7.2f\n",
                  (std::string(s.name) + (p.what[0] == 'f' ? " fwd" : " bwd(dinp+dw)")).c_str(), (long long)p.M,
                  (long long)p.N, (long long)p.K, ms, ours_tf, best_tf, ours_tf / best_tf);
      std::fflush(stdout);
    }
  }
  const double sq = best_algorithm_ms(be, 8192, 8192, 8192, false, reps);
  std::printf("# measured ceiling: 8192^3 bf16 GEMM, best algorithm: %.1f TFLOPS\n", 2.0 * 8192.0 * 8192 * 8192 / sq * 1e-9);
  return 0;
}
