// Linear layer through CBLAS sgemm (OpenBLAS, OpenMP flavour: it uses our thread pool).
#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <vector>

#include "backend/cpu/cpu_ops.h"

namespace llm::cpu {

void linear_forward(const Tensor& out, const Tensor& inp, const Tensor& weight, const Tensor& bias) {
  const int64_t C = inp.size(-1), N = inp.numel() / C, OC = weight.size(0);
  check_f32(inp, inp.shape(), "linear_forward inp");
  check_f32(weight, {OC, C}, "linear_forward weight");
  LLM_CHECK(out.numel() == N * OC && out.size(-1) == OC, "linear_forward out: expected ", N, "x",
            OC, " elements, got ", shape_str(out.shape()));
  check_f32(out, out.shape(), "linear_forward out");
  float* o = out.data<float>();
  float beta = 0.0f;
  if (bias.defined()) {
    check_f32(bias, {OC}, "linear_forward bias");
    const float* b = bias.data<float>();
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < N; ++i) std::copy(b, b + OC, o + i * OC);
    beta = 1.0f;
  }
  if (N == 1) {
    // One row (a decode step): a matrix-vector product, bound by reading the weights once.
    cblas_sgemv(CblasRowMajor, CblasNoTrans, static_cast<int>(OC), static_cast<int>(C), 1.0f,
                weight.data<float>(), static_cast<int>(C), inp.data<float>(), 1, beta, o, 1);
    return;
  }
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<int>(N), static_cast<int>(OC),
              static_cast<int>(C), 1.0f, inp.data<float>(), static_cast<int>(C), weight.data<float>(),
              static_cast<int>(C), beta, o, static_cast<int>(OC));
}

void linear_backward(const Tensor& dinp, const Tensor& dweight, const Tensor& dbias,
                     const Tensor& dout, const Tensor& inp, const Tensor& weight) {
  const int64_t C = inp.size(-1), N = inp.numel() / C, OC = weight.size(0);
  check_f32(inp, inp.shape(), "linear_backward inp");
  check_f32(weight, {OC, C}, "linear_backward weight");
  LLM_CHECK(dout.numel() == N * OC && dout.size(-1) == OC, "linear_backward dout: expected ", N,
            "x", OC, " elements, got ", shape_str(dout.shape()));
  check_f32(dout, dout.shape(), "linear_backward dout");
  const float* d = dout.data<float>();
  if (dinp.defined()) {
    check_f32(dinp, inp.shape(), "linear_backward dinp");
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, static_cast<int>(N), static_cast<int>(C),
                static_cast<int>(OC), 1.0f, d, static_cast<int>(OC), weight.data<float>(),
                static_cast<int>(C), 0.0f, dinp.data<float>(), static_cast<int>(C));
  }
  check_f32(dweight, {OC, C}, "linear_backward dweight");
  cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, static_cast<int>(OC), static_cast<int>(C),
              static_cast<int>(N), 1.0f, d, static_cast<int>(OC), inp.data<float>(),
              static_cast<int>(C), 1.0f, dweight.data<float>(), static_cast<int>(C));
  if (dbias.defined()) {
    check_f32(dbias, {OC}, "linear_backward dbias");
    float* db = dbias.data<float>();
    // Column sums: each thread owns a band of output channels and walks every row.
#pragma omp parallel
    {
      const int nt = omp_get_num_threads(), id = omp_get_thread_num();
      const int64_t c0 = OC * id / nt, c1 = OC * (id + 1) / nt;
      std::vector<float> acc(static_cast<size_t>(c1 - c0), 0.0f);
      for (int64_t i = 0; i < N; ++i) {
        const float* row = d + i * OC;
        for (int64_t c = c0; c < c1; ++c) acc[c - c0] += row[c];
      }
      for (int64_t c = c0; c < c1; ++c) db[c] += acc[c - c0];
    }
  }
}

}  // namespace llm::cpu
