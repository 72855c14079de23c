// The CUDA backend: device memory through a caching allocator, one stream, the op set of
// backend.h on the kernels in kernels/ and cuBLASLt. Same semantics as the CPU backend
// (+= / = gradient rules, aliasing, undefined optional tensors, vocab-parallel forms); the
// conformance suite checks both against the same float64 reference.
//
// Element types: every op accepts f32 tensors (the reference path). Activations may also be
// bf16 or f16 (LayerNorm/linear/GELU/residual/attention/embedding/cross-entropy logits), with
// f32 statistics, LayerNorm parameters, parameter gradients and optimizer state; linear takes
// bf16/f16 inputs and weights, accumulates in fp32, writes bf16/f16 or f32 outputs and
// accumulates dweight/dbias into f32 buffers. The extra methods below are the pieces mixed
// precision needs (conversion, non-finite checks, AdamW writing a low-precision copy).
//
// Errors: every CUDA/cuBLAS call is checked and throws llm::Error naming the op and the
// shapes. Kernel faults are asynchronous: they surface at the next synchronising call, which
// names the last op launched; LLM_CUDA_SYNC=1 synchronises after every op to pin them down.
#pragma once
#include <cuda_runtime_api.h>

#include <memory>
#include <string>

#include "backend/backend.h"
#include "backend/cuda/cuda_allocator.h"

namespace llm::cuda {

class CublasLt;
struct Matmul;

class CudaBackend final : public Backend {
 public:
  explicit CudaBackend(int device);
  ~CudaBackend() override;

  std::string name() const override { return "cuda"; }
  Device device() const override { return device_; }
  Tensor empty(const Shape& shape, DType dtype = DType::f32) override;
  void copy(const Tensor& dst, const Tensor& src) override;
  void zero(const Tensor& t) override;
  void copy_rows(const Tensor& dst, int64_t dst_pitch, const Tensor& src, int64_t src_pitch, int64_t rows,
                 int64_t width) override;
  void synchronize() override;

  void embedding_forward(const Tensor& out, const Tensor& tokens, const Tensor& wte, const Tensor& wpe,
                         int64_t vocab_begin, int64_t vocab_total) override;
  void embedding_backward(const Tensor& dwte, const Tensor& dwpe, const Tensor& dout, const Tensor& tokens,
                          int64_t vocab_begin) override;
  void layernorm_forward(const Tensor& out, const Tensor& mean, const Tensor& rstd, const Tensor& inp,
                         const Tensor& weight, const Tensor& bias, float eps) override;
  void layernorm_backward(const Tensor& dinp, const Tensor& dweight, const Tensor& dbias, const Tensor& dout,
                          const Tensor& inp, const Tensor& weight, const Tensor& mean, const Tensor& rstd) override;
  void linear_forward(const Tensor& out, const Tensor& inp, const Tensor& weight, const Tensor& bias) override;
  void linear_backward(const Tensor& dinp, const Tensor& dweight, const Tensor& dbias, const Tensor& dout,
                       const Tensor& inp, const Tensor& weight) override;
  void linear_backward_gelu(const Tensor& dinp, const Tensor& dweight, const Tensor& dbias, const Tensor& dout,
                            const Tensor& inp, const Tensor& weight, const Tensor& pre_gelu) override;
  void gelu_forward(const Tensor& out, const Tensor& inp) override;
  void gelu_backward(const Tensor& dinp, const Tensor& inp, const Tensor& dout) override;
  void residual_forward(const Tensor& out, const Tensor& a, const Tensor& b) override;
  void residual_backward(const Tensor& da, const Tensor& db, const Tensor& dout) override;
  void attention_forward(const Tensor& out, const Tensor& lse, const Tensor& qkv, int n_head) override;
  void attention_backward(const Tensor& dqkv, const Tensor& dout, const Tensor& qkv, const Tensor& out,
                          const Tensor& lse, int n_head) override;
  void attention_kv_forward(const Tensor& out, const Tensor& qkv, const Tensor& k_cache, const Tensor& v_cache,
                            int64_t past, int n_head) override;
  void cross_entropy_forward(const Tensor& losses, const Tensor& lse, const Tensor& logits, const Tensor& targets,
                             int64_t V, int64_t vocab_begin) override;
  void cross_entropy_backward(const Tensor& dlogits, const Tensor& logits, const Tensor& lse, const Tensor& targets,
                              float dloss, int64_t V, int64_t vocab_begin) override;
  void cross_entropy_combine(const Tensor& losses, const Tensor& lse, const Tensor& shard_lse,
                             const Tensor& shard_losses, const Tensor& targets, int64_t shard_vocab) override;
  void adamw_update(const Tensor& param, const Tensor& grad, const Tensor& m, const Tensor& v,
                    const AdamWParams& p) override;
  double sum_squares(const Tensor& x) override;
  void scale(const Tensor& x, float s) override;

  // One cuBLASLt call with the GELU_AUX_BIAS epilogue (the base class's two ops without a bias).
  void linear_gelu_forward(const Tensor& out, const Tensor& pre_gelu, const Tensor& inp, const Tensor& weight,
                           const Tensor& bias) override;

  // ---- CUDA-only pieces for performance work -----------------------------------------------
  // dst = src converted between f32, bf16 and f16 (same shape; either may be the other's type).
  void convert(const Tensor& dst, const Tensor& src) override;
  // Number of NaN/Inf elements (synchronises).
  int64_t count_nonfinite(const Tensor& x) override;
  // AdamW on fp32 master weights that also writes the updated weights to `low` (bf16/f16).
  void adamw_update_mixed(const Tensor& param, const Tensor& grad, const Tensor& m, const Tensor& v,
                          const AdamWParams& p, const Tensor& low) override;
  // fp32 linear layers on TF32 tensor cores (off by default: the conformance path is exact fp32).
  void set_allow_tf32(bool on);
  // Synchronise and check after every op (also LLM_CUDA_SYNC=1).
  void set_sync_each_op(bool on) { sync_each_op_ = on; }

  cudaStream_t stream() const { return stream_; }
  CachingAllocator& allocator() { return *allocator_; }
  // Whether the GELU_AUX_BIAS / DGELU epilogues are still in use (cleared for the process when
  // cuBLASLt has no algorithm for one; DGELU also by LLM_CUDA_DGELU=0).
  bool gelu_epilogue() const { return gelu_epilogue_; }
  bool dgelu_epilogue() const { return dgelu_epilogue_; }
  bool device_memory(DeviceMemoryStats& out) const override;

 private:
  void launched(const char* op, std::initializer_list<const Tensor*> tensors);
  void check_ids(const Tensor& ids, int64_t lo, int64_t hi, const char* op, const char* what);
  Tensor scratch(int64_t n_floats);
  // At least n floats, zero, that the attention backward leaves zero (its fp32 dQ sums and
  // counters under LLM_CUDA_DQ_CONVERT=fused: kernels::attention_backward_workspace); kept from
  // call to call and grown (zeroed again) when a larger shape needs more.
  float* dq_workspace(int64_t n);

  Device device_;
  cudaStream_t stream_ = nullptr;
  std::shared_ptr<CachingAllocator> allocator_;
  std::unique_ptr<CublasLt> blas_;
  bool sync_each_op_ = false;
  size_t max_pitch_ = 0;  // cudaDevAttrMaxPitch, bytes: the widest pitch copy_rows gives one 2D copy
  // LLM_CUDA_BIAS_GRAD=epilogue: the linear bias gradient through cuBLASLt's BGRADB epilogue
  // (not yet run on a GPU); kernel (default): the deterministic column-sum kernels.
  bool bias_grad_epilogue_ = false;
  // cuBLASLt's GELU_AUX_BIAS epilogue for linear_gelu_forward; cleared (said once) when cuBLASLt has
  // no algorithm for a shape (generation brings one-row GEMMs, not yet run on a GPU).
  bool gelu_epilogue_ = true;
  bool bias_epilogue_warned_ = false;  // linear_forward without a cuBLASLt bias algorithm (said once)
  bool dgelu_epilogue_ = true;  // LLM_CUDA_DGELU=0 clears it; so does cuBLASLt without a DGELU algorithm (said once)
  // Runs a matmul whose fused epilogue cuBLASLt may not offer for its shape and types: when it
  // has no algorithm (found before anything runs), says once that `instead` takes over, clears
  // `enabled`, returns false.
  bool run_with_epilogue(const Matmul& mm, const char* op, bool& enabled, const char* instead);
  // A plain GEMM (beta 0) into a contiguous row-major output [mm.n, mm.m] of mm.d_type, plus
  // bias[mm.m] of the same type (may be null): cuBLASLt's bias epilogue where the output rows and
  // the bias are 16-byte aligned (or the output f32), else an f32 accumulator and one rounding.
  void run_gemm_with_bias(Matmul mm, const void* bias, const char* op);
  void linear_backward_impl(const Tensor& dinp, const Tensor& dweight, const Tensor& dbias, const Tensor& dout,
                            const Tensor& inp, const Tensor& weight, const Tensor* pre_gelu);
  const char* last_op_ = "none";
  unsigned long long* id_flag_dev_ = nullptr;  // find_bad_ids result
  unsigned long long* id_flag_host_ = nullptr;  // pinned
  double* partials_dev_ = nullptr;             // sum_squares per-block partials
  double* partials_host_ = nullptr;            // pinned
  unsigned long long* count_dev_ = nullptr;  // count_nonfinite: 64 bits (a tensor may pass 2^32 elements)
  unsigned long long* count_host_ = nullptr;
  Tensor dq_workspace_;
};

// Records elapsed device time between two points of a stream (cudaEvent pairs).
class CudaTimer {
 public:
  explicit CudaTimer(cudaStream_t stream);
  ~CudaTimer();
  CudaTimer(const CudaTimer&) = delete;
  CudaTimer& operator=(const CudaTimer&) = delete;
  void start();
  void stop();
  // Milliseconds between start() and stop() (waits for stop).
  double milliseconds();

 private:
  cudaStream_t stream_;
  cudaEvent_t start_ = nullptr, stop_ = nullptr;
};

// The registered CUDA backend, or nullptr when this process has no CUDA device.
CudaBackend* cuda_backend();
// "N CUDA device(s), using cuda:i (name)" or why there is none (cudaGetDeviceCount's error).
std::string device_status();
// The device this process uses: the node-local rank (OMPI_COMM_WORLD_LOCAL_RANK, MPI_LOCALRANKID,
// SLURM_LOCALID, PALS_LOCAL_RANKID, LOCAL_RANK) modulo the device count; 0 without one.
int local_device(int device_count);
// Called by available_backends() once: registers the backend if a device is present.
void register_backend_if_present();

}  // namespace llm::cuda
