// Diagnostic (no timing): every algorithm cuBLASLt's heuristic offers for the small GEMMs of
// `LowPrecision.LinearWithFewRows`, each run on its own output (filled with NaN first) and checked
// against a float64 product on the host. Run 20 found the 16-bit output of out[3, 66] =
// inp[3, 2056] w[66, 2056]^T wrong on an H200 while the f32 output of the same inputs was right;
// this prints which algorithms are wrong, their configuration (algorithm id, tile, stages, split-K,
// reduction scheme, ...) and under which alignment hints, so one short call tells the cause.
//
//   bench-cuda-gemm-probe        one line per (shape, types, hints, algorithm), then the library's
//                                own linear_forward on each shape; exit 1 if the library's is wrong
//
// Hints: "unset" leaves cuBLASLt's default (it assumes 256-byte aligned matrices), "pointer" the
// pointers' alignment alone (what the library gave before b031c5d), "ld" the pointers' and the
// columns' (pointer | ld * element size: the library's now), "2" the smallest for 16-bit types.
#include <cublasLt.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include "backend/cuda/cuda_check.h"
#include "core/dtype.h"
#include "cuda_bench_util.h"

namespace {

using llm::DType;
using llm::Tensor;

int align_of(uintptr_t a) {
  int al = 256;
  while (al > 1 && (a % static_cast<uintptr_t>(al)) != 0) al /= 2;
  return al;
}

cudaDataType_t cuda_type(DType t) {
  return t == DType::f32 ? CUDA_R_32F : t == DType::bf16 ? CUDA_R_16BF : CUDA_R_16F;
}

// Rounds through the 16-bit type, so the host reference multiplies the values the GPU sees.
float rounded(float v, DType t) {
  if (t == DType::bf16) return llm::bf16_to_f32(llm::f32_to_bf16(v));
  if (t == DType::f16) return llm::f16_to_f32(llm::f32_to_f16(v));
  return v;
}

Tensor host_of(const std::vector<float>& v, const llm::Shape& shape, DType t) {
  Tensor h = Tensor::empty(shape, t);
  for (size_t i = 0; i < v.size(); ++i) {
    if (t == DType::f32) static_cast<float*>(h.raw())[i] = v[i];
    else static_cast<uint16_t*>(h.raw())[i] = t == DType::bf16 ? llm::f32_to_bf16(v[i]) : llm::f32_to_f16(v[i]);
  }
  return h;
}

std::vector<double> values_of(const Tensor& h) {
  std::vector<double> v(static_cast<size_t>(h.numel()));
  for (size_t i = 0; i < v.size(); ++i) {
    if (h.dtype() == DType::f32) v[i] = static_cast<const float*>(h.raw())[i];
    else {
      const uint16_t u = static_cast<const uint16_t*>(h.raw())[i];
      v[i] = h.dtype() == DType::bf16 ? llm::bf16_to_f32(u) : llm::f16_to_f32(u);
    }
  }
  return v;
}

struct Check {
  int bad = 0;
  double worst = 0;  // NaN when an element was not written
  std::string cols;  // bad elements per output row (row-major [N, OC]: a cuBLAS column each)
};

// Row-major out[N, OC] against the float64 reference: an element is bad past the output type's
// rounding (2^-8 bf16, 2^-11 f16, 1e-5 f32, relative) plus 1e-5 * scale.
Check check(const std::vector<double>& got, const std::vector<double>& ref, int N, int OC, DType t, double scale) {
  const double unit = t == DType::bf16 ? 1.0 / 256 : t == DType::f16 ? 1.0 / 2048 : 1e-5;
  Check c;
  for (int r = 0; r < N; ++r) {
    int in_row = 0;
    for (int j = 0; j < OC; ++j) {
      const size_t i = size_t(r) * OC + j;
      const double e = std::fabs(got[i] - ref[i]);
      if (!(e <= unit * std::fabs(ref[i]) + 1e-5 * scale)) ++in_row;
      if (!(e <= c.worst)) c.worst = std::isnan(e) ? e : std::max(c.worst, e);
    }
    c.bad += in_row;
    c.cols += (r ? "," : "") + std::to_string(in_row);
  }
  return c;
}

uint64_t config(const cublasLtMatmulAlgo_t& algo, cublasLtMatmulAlgoConfigAttributes_t a) {
  uint64_t v = 0;
  size_t written = 0;
  if (cublasLtMatmulAlgoConfigGetAttribute(&algo, a, &v, sizeof v, &written) != CUBLAS_STATUS_SUCCESS) return ~uint64_t(0);
  return v;  // little-endian: the attribute's own width in the low bytes
}

// The algorithm's own minimum alignment of D (bytes), 0 when the query fails.
uint32_t min_align_d(const cublasLtMatmulAlgo_t& algo) {
  uint32_t v = 0;
  size_t written = 0;
  if (cublasLtMatmulAlgoCapGetAttribute(&algo, CUBLASLT_ALGO_CAP_MIN_ALIGNMENT_D_BYTES, &v, sizeof v, &written) !=
      CUBLAS_STATUS_SUCCESS)
    return 0;
  return v;
}

}  // namespace

int main() {
  llm::cuda::CudaBackend& be = bench::backend_or_exit();
  std::printf("# %s, cuBLASLt %zu\n", bench::device_line(be.device().index).c_str(), cublasLtGetVersion());
  std::printf("# row-major out[N, OC] = inp[N, C] w[OC, C]^T (cuBLASLt: TN, m = OC, n = N, k = C, ldd = OC)\n");
  std::printf("%-14s %-9s %-7s %3s %5s %5s %6s %6s %4s %4s %4s %5s %5s %9s %5s %10s %s\n", "N,C,OC", "in->out", "hints",
              "#", "algo", "tile", "stages", "splitk", "red", "swz", "cust", "inner", "clust", "ws_bytes", "bad", "worst",
              "bad per row, the algorithm's min D alignment");
  struct Case {
    int N, C, OC;
  };
  const Case cases[] = {{3, 2056, 66}, {1, 2056, 66}, {2, 2056, 66}, {4, 2056, 66}, {3, 2056, 72}, {3, 2048, 64},
                        {16, 40, 10}, {3, 64, 66}};
  cublasLtHandle_t h;
  CUBLAS_CHECK(cublasLtCreate(&h), "cublasLtCreate");
  const uint64_t wsb = uint64_t(32) << 20;
  Tensor ws = be.empty({int64_t(wsb)}, DType::u8);
  int library_bad = 0;
  for (const Case& cs : cases) {
    const int N = cs.N, C = cs.C, OC = cs.OC;
    const std::string shape = std::to_string(N) + "," + std::to_string(C) + "," + std::to_string(OC);
    const double scale = std::sqrt(double(C)) * 0.1;
    uint64_t state = 0x9e3779b97f4a7c15ull + uint64_t(N) * 131 + uint64_t(C) * 7 + uint64_t(OC);
    auto normal = [&state] {  // Box-Muller on a 64-bit LCG: deterministic, no library needed
      auto u = [&state] {
        state = state * 6364136223846793005ull + 1442695040888963407ull;
        return (double((state >> 11) & ((uint64_t(1) << 53) - 1)) + 0.5) / double(uint64_t(1) << 53);
      };
      const double a = u(), b = u();
      return std::sqrt(-2 * std::log(a)) * std::cos(6.283185307179586 * b);
    };
    std::vector<float> inp(size_t(N) * C), w(size_t(OC) * C);
    for (float& v : inp) v = static_cast<float>(normal());
    for (float& v : w) v = static_cast<float>(0.1 * normal());
    for (DType in : {DType::bf16, DType::f16}) {
      std::vector<float> ri(inp), rw(w);
      for (float& v : ri) v = rounded(v, in);
      for (float& v : rw) v = rounded(v, in);
      std::vector<double> ref(size_t(N) * OC);
      for (int r = 0; r < N; ++r)
        for (int j = 0; j < OC; ++j) {
          double s = 0;
          for (int k = 0; k < C; ++k) s += double(ri[size_t(r) * C + k]) * double(rw[size_t(j) * C + k]);
          ref[size_t(r) * OC + j] = s;
        }
      Tensor gi = be.upload(host_of(ri, {N, C}, in)), gw = be.upload(host_of(rw, {OC, C}, in));
      for (DType out : {DType::f32, in}) {
        const std::string types = std::string(llm::dtype_name(in)) + "->" + std::string(llm::dtype_name(out));
        Tensor d = be.empty({N, OC}, out);
        const size_t esz = llm::dtype_size(out);
        for (const char* hints : {"unset", "pointer", "ld", "2"}) {
          cublasLtMatmulDesc_t desc;
          CUBLAS_CHECK(cublasLtMatmulDescCreate(&desc, CUBLAS_COMPUTE_32F, CUDA_R_32F), "desc");
          const cublasOperation_t T = CUBLAS_OP_T, Nn = CUBLAS_OP_N;
          CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSA, &T, sizeof T), "transa");
          CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSB, &Nn, sizeof Nn), "transb");
          cublasLtMatrixLayout_t la, lb, ld;
          CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&la, cuda_type(in), C, OC, C), "A");
          CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&lb, cuda_type(in), C, N, C), "B");
          CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&ld, cuda_type(out), OC, N, OC), "D");
          cublasLtMatmulPreference_t pref;
          CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref), "pref");
          CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &wsb, sizeof wsb), "ws");
          const std::string hs = hints;
          if (hs != "unset") {
            const size_t ein = llm::dtype_size(in);
            auto al = [&](const void* p, int64_t ldm, size_t e) -> uint32_t {
              if (hs == "2") return 2;
              const uintptr_t a = reinterpret_cast<uintptr_t>(p) | (hs == "ld" ? uintptr_t(ldm) * e : 0);
              return static_cast<uint32_t>(align_of(a));
            };
            const uint32_t aa = al(gw.raw(), C, ein), ab = al(gi.raw(), C, ein), ad = al(d.raw(), OC, esz);
            CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &aa, sizeof aa), "al");
            CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &ab, sizeof ab), "al");
            CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &ad, sizeof ad), "al");
            CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &ad, sizeof ad), "al");
          }
          std::vector<cublasLtMatmulHeuristicResult_t> res(32);
          int found = 0;
          const cublasStatus_t hst = cublasLtMatmulAlgoGetHeuristic(h, desc, la, lb, ld, ld, pref, 32, res.data(), &found);
          if (hst != CUBLAS_STATUS_SUCCESS || found == 0)
            std::printf("%-14s %-9s %-7s   - no algorithm (status %d)\n", shape.c_str(), types.c_str(), hints, int(hst));
          const float alpha = 1.0f, beta = 0.0f;
          for (int i = 0; i < found; ++i) {
            const cublasLtMatmulAlgo_t& algo = res[size_t(i)].algo;
            CUDA_CHECK(cudaMemsetAsync(d.raw(), 0xff, size_t(N) * OC * esz, be.stream()), "NaN fill");
            const cublasStatus_t st = cublasLtMatmul(h, desc, &alpha, gw.raw(), la, gi.raw(), lb, &beta, d.raw(), ld,
                                                     d.raw(), ld, &algo, ws.raw(), wsb, be.stream());
            const cudaError_t ce = cudaStreamSynchronize(be.stream());
            std::string verdict;
            Check c;
            if (st != CUBLAS_STATUS_SUCCESS || ce != cudaSuccess) {
              verdict = "launch failed: cublas " + std::to_string(int(st)) + ", cuda " + cudaGetErrorString(ce);
              (void)cudaGetLastError();
            } else {
              c = check(values_of(be.download(d)), ref, N, OC, out, scale);
              verdict = c.cols;
            }
            std::printf("%-14s %-9s %-7s %3d %5llu %5llu %6llu %6llu %4llu %4llu %4llu %5llu %5llu %9zu %5d %10.3g %s, D %u\n",
                        shape.c_str(), types.c_str(), hints, i,
                        (unsigned long long)(config(algo, CUBLASLT_ALGO_CONFIG_ID) & 0xffffffffu),
                        (unsigned long long)(config(algo, CUBLASLT_ALGO_CONFIG_TILE_ID) & 0xffffffffu),
                        (unsigned long long)(config(algo, CUBLASLT_ALGO_CONFIG_STAGES_ID) & 0xffffffffu),
                        (unsigned long long)(config(algo, CUBLASLT_ALGO_CONFIG_SPLITK_NUM) & 0xffffffffu),
                        (unsigned long long)(config(algo, CUBLASLT_ALGO_CONFIG_REDUCTION_SCHEME) & 0xffffffffu),
                        (unsigned long long)(config(algo, CUBLASLT_ALGO_CONFIG_CTA_SWIZZLING) & 0xffffffffu),
                        (unsigned long long)(config(algo, CUBLASLT_ALGO_CONFIG_CUSTOM_OPTION) & 0xffffffffu),
                        (unsigned long long)(config(algo, CUBLASLT_ALGO_CONFIG_INNER_SHAPE_ID) & 0xffffu),
                        (unsigned long long)(config(algo, CUBLASLT_ALGO_CONFIG_CLUSTER_SHAPE_ID) & 0xffffu),
                        res[size_t(i)].workspaceSize, c.bad, c.worst, verdict.c_str(), min_align_d(algo));
          }
          std::fflush(stdout);
          cublasLtMatmulPreferenceDestroy(pref);
          cublasLtMatrixLayoutDestroy(la);
          cublasLtMatrixLayoutDestroy(lb);
          cublasLtMatrixLayoutDestroy(ld);
          cublasLtMatmulDescDestroy(desc);
        }
        // The library's own path (first heuristic algorithm under its hints).
        CUDA_CHECK(cudaMemsetAsync(d.raw(), 0xff, size_t(N) * OC * esz, be.stream()), "NaN fill");
        be.linear_forward(d, gi, gw, Tensor{});
        const Check c = check(values_of(be.download(d)), ref, N, OC, out, scale);
        std::printf("%-14s %-9s library linear_forward: %d bad, worst %.3g (per row %s) %s\n", shape.c_str(),
                    types.c_str(), c.bad, c.worst, c.cols.c_str(), c.bad ? "WRONG" : "OK");
        library_bad += c.bad;
      }
    }
  }
  cublasLtDestroy(h);
  std::printf("# library linear_forward: %s\n", library_bad ? "WRONG on some shape" : "right on every shape");
  return library_bad ? 1 : 0;
}
