#include "backend/cuda/cuda_backend.h"

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdlib>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "backend/cuda/cublaslt_matmul.h"
#include "backend/cuda/cuda_check.h"
#include "kernels.h"

namespace llm::cuda {

namespace {

std::string shapes_of(std::initializer_list<const Tensor*> ts) {
  std::string s;
  for (const Tensor* t : ts) {
    if (!s.empty()) s += ", ";
    s += t && t->defined() ? shape_str(t->shape()) + " " + std::string(dtype_name(t->dtype())) : "undefined";
  }
  return s;
}

// Runs a kernels:: entry point whose own errors (a shared-memory opt-in over the device's limit, a
// setting it refuses) know neither the op nor its tensors: prefixes them with both.
template <typename F>
void with_op_context(const char* op, std::initializer_list<const Tensor*> ts, F&& f) {
  try {
    f();
  } catch (const Error& e) {
    LLM_FAIL(op, " on ", shapes_of(ts), ": ", e.what());
  }
}

}  // namespace

// ---- construction, memory -------------------------------------------------------------------

CudaBackend::CudaBackend(int device) : device_{DeviceType::cuda, device} {
  CUDA_CHECK(cudaSetDevice(device), "selecting cuda:", device);
  CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), "creating the stream");
  allocator_ = std::make_shared<CachingAllocator>(device);
  int max_pitch = 0;
  CUDA_CHECK(cudaDeviceGetAttribute(&max_pitch, cudaDevAttrMaxPitch, device), "backend setup");
  max_pitch_ = static_cast<size_t>(max_pitch);
  blas_ = std::make_unique<CublasLt>(stream_);
  CUDA_CHECK(cudaMalloc(&id_flag_dev_, sizeof(unsigned long long)), "backend setup");
  CUDA_CHECK(cudaMallocHost(&id_flag_host_, sizeof(unsigned long long)), "backend setup");
  CUDA_CHECK(cudaMalloc(&partials_dev_, sizeof(double) * kernels::kSumSquaresBlocks), "backend setup");
  CUDA_CHECK(cudaMallocHost(&partials_host_, sizeof(double) * kernels::kSumSquaresBlocks), "backend setup");
  CUDA_CHECK(cudaMalloc(&count_dev_, sizeof(unsigned long long)), "backend setup");
  CUDA_CHECK(cudaMallocHost(&count_host_, sizeof(unsigned long long)), "backend setup");
  const char* env = std::getenv("LLM_CUDA_SYNC");
  sync_each_op_ = env && *env && std::strcmp(env, "0") != 0;
  const char* bias = std::getenv("LLM_CUDA_BIAS_GRAD");
  const std::string bias_grad = bias ? bias : "";
  LLM_CHECK(bias_grad.empty() || bias_grad == "kernel" || bias_grad == "epilogue", "LLM_CUDA_BIAS_GRAD='", bias_grad,
            "': expected kernel or epilogue");
  bias_grad_epilogue_ = bias_grad == "epilogue";
  const char* dgelu = std::getenv("LLM_CUDA_DGELU");  // 0: the separate GELU backward kernel (triage)
  dgelu_epilogue_ = !(dgelu && std::string(dgelu) == "0");
}

CudaBackend::~CudaBackend() {
  // The backend lives until exit; tensors may outlive it, so the allocator (shared with their
  // release functions) is not emptied here.
  blas_.reset();
}

Tensor CudaBackend::empty(const Shape& shape, DType dtype) {
  const size_t nbytes = static_cast<size_t>(numel(shape)) * dtype_size(dtype);
  auto s = std::make_shared<Storage>();
  s->data = allocator_->allocate(nbytes);
  s->nbytes = nbytes;
  s->device = device_;
  std::shared_ptr<CachingAllocator> alloc = allocator_;
  s->release = [alloc](void* p) { alloc->release(p); };
  return Tensor(std::move(s), 0, shape, dtype);
}

Tensor CudaBackend::scratch(int64_t n_floats) { return empty({n_floats > 0 ? n_floats : 1}, DType::f32); }

float* CudaBackend::dq_workspace(int64_t n) {
  if (!dq_workspace_.defined() || dq_workspace_.numel() < n) {
    dq_workspace_ = Tensor{};  // the old one back to the allocator first (stream-ordered)
    dq_workspace_ = zeros({n});
  }
  return dq_workspace_.data<float>();
}

void CudaBackend::copy(const Tensor& dst, const Tensor& src) {
  LLM_CHECK(dst.defined() && src.defined(), "cuda copy: undefined tensor");
  LLM_CHECK(dst.shape() == src.shape() && dst.dtype() == src.dtype(), "cuda copy: ", shape_str(src.shape()), " ",
            dtype_name(src.dtype()), " into ", shape_str(dst.shape()), " ", dtype_name(dst.dtype()));
  LLM_CHECK(dst.is_contiguous() && src.is_contiguous(), "cuda copy: needs contiguous tensors");
  const size_t n = dst.nbytes();
  if (n == 0) return;
  const bool d_dev = !dst.device().is_cpu(), s_dev = !src.device().is_cpu();
  LLM_CHECK((!d_dev || dst.device() == device_) && (!s_dev || src.device() == device_), "cuda copy: ",
            src.device().str(), " -> ", dst.device().str(), " on backend ", device_.str());
  const std::string ctx = detail::concat("copy ", shape_str(src.shape()), " ", src.device().str(), " -> ",
                                         dst.device().str());
  if (!d_dev && !s_dev) {
    std::memcpy(dst.raw(), src.raw(), n);
  } else if (d_dev && !s_dev) {
    CUDA_CHECK(cudaMemcpyAsync(dst.raw(), src.raw(), n, cudaMemcpyHostToDevice, stream_), ctx);
  } else if (!d_dev && s_dev) {
    CUDA_CHECK(cudaMemcpyAsync(dst.raw(), src.raw(), n, cudaMemcpyDeviceToHost, stream_), ctx);
    CUDA_CHECK(cudaStreamSynchronize(stream_), ctx, " (or an earlier op: last launched ", last_op_, ")");
  } else {
    CUDA_CHECK(cudaMemcpyAsync(dst.raw(), src.raw(), n, cudaMemcpyDeviceToDevice, stream_), ctx);
  }
}

void CudaBackend::copy_rows(const Tensor& dst, int64_t dst_pitch, const Tensor& src, int64_t src_pitch, int64_t rows,
                            int64_t width) {
  const size_t es = copy_rows_check(dst, dst_pitch, src, src_pitch, rows, width);
  LLM_CHECK(dst.device() == device_ && src.device() == device_, "cuda copy_rows: needs ", device_.str(), " tensors, got ",
            dst.device().str(), " and ", src.device().str());
  if (rows == 0 || width == 0) return;
  const size_t dp = static_cast<size_t>(dst_pitch) * es, sp = static_cast<size_t>(src_pitch) * es,
               w = static_cast<size_t>(width) * es;
  if (rows == 1 || std::max(dp, sp) > max_pitch_) {
    // cudaMemcpy2D refuses a pitch over the device's limit (cudaDevAttrMaxPitch, 2^31 - 1 bytes
    // on current GPUs). A Ulysses move of a long sequence reaches it: the head form's pitch is
    // S * Tl * parts * Cs elements, 2 GiB in bf16 at 175K tokens of qkv with 2048 columns per
    // rank. Such a pitch leaves room for few rows (the micro-batch), so they go one by one.
    for (int64_t r = 0; r < rows; ++r)
      CUDA_CHECK(cudaMemcpyAsync(static_cast<char*>(dst.raw()) + r * dp, static_cast<const char*>(src.raw()) + r * sp, w,
                                 cudaMemcpyDeviceToDevice, stream_),
                 "copy_rows row ", r, " of ", rows, " x ", width, " (pitches ", dst_pitch, ", ", src_pitch, ")");
    return;
  }
  CUDA_CHECK(cudaMemcpy2DAsync(dst.raw(), dp, src.raw(), sp, w, static_cast<size_t>(rows), cudaMemcpyDeviceToDevice,
                               stream_),
             "copy_rows ", rows, " x ", width, " (pitches ", dst_pitch, ", ", src_pitch, ")");
}

void CudaBackend::zero(const Tensor& t) {
  LLM_CHECK(t.defined() && t.device() == device_ && t.is_contiguous(), "cuda zero: needs a contiguous ",
            device_.str(), " tensor");
  if (t.nbytes()) CUDA_CHECK(cudaMemsetAsync(t.raw(), 0, t.nbytes(), stream_), "zero ", shape_str(t.shape()));
}

bool CudaBackend::device_memory(DeviceMemoryStats& out) const {
  const AllocatorStats s = allocator_->stats();
  out.allocated = static_cast<int64_t>(s.in_use);
  out.max_allocated = static_cast<int64_t>(s.peak_in_use);
  out.reserved = static_cast<int64_t>(s.in_use + s.cached);
  return true;
}

void CudaBackend::synchronize() {
  CUDA_CHECK(cudaStreamSynchronize(stream_), "synchronize (last op launched: ", last_op_, ")");
}

void CudaBackend::launched(const char* op, std::initializer_list<const Tensor*> tensors) {
  last_op_ = op;
  const cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess) throw_cuda_error(e, "kernel launch", __FILE__, __LINE__, detail::concat(op, " on ", shapes_of(tensors)));
  if (sync_each_op_) {
    const cudaError_t s = cudaStreamSynchronize(stream_);
    if (s != cudaSuccess)
      throw_cuda_error(s, "cudaStreamSynchronize after the op", __FILE__, __LINE__,
                       detail::concat(op, " on ", shapes_of(tensors)));
  }
}

namespace {
// Contiguous tensor of this device with the given shape and dtype.
void check_dev(const Tensor& t, const Shape& shape, DType dtype, Device dev, const char* what) {
  expect_shape(t, shape, what, dtype);
  LLM_CHECK(t.device() == dev && t.is_contiguous(), what, ": needs a contiguous ", dev.str(), " tensor, got ",
            t.device().str(), t.is_contiguous() ? "" : " (non-contiguous)");
}
void check_float_type(DType t, const char* what) {
  LLM_CHECK(is_float(t), what, ": element type must be f32, bf16 or f16, got ", dtype_name(t));
}
}  // namespace

void CudaBackend::check_ids(const Tensor& ids, int64_t lo, int64_t hi, const char* op, const char* what) {
  const int64_t n = ids.numel();
  if (n == 0) return;
  CUDA_CHECK(cudaMemsetAsync(id_flag_dev_, 0xff, sizeof(unsigned long long), stream_), op);
  kernels::find_bad_ids(ids.data<int32_t>(), n, lo, hi, id_flag_dev_, stream_);
  launched(op, {&ids});
  CUDA_CHECK(cudaMemcpyAsync(id_flag_host_, id_flag_dev_, sizeof(unsigned long long), cudaMemcpyDeviceToHost, stream_),
             op);
  CUDA_CHECK(cudaStreamSynchronize(stream_), op, " (checking ", what, ")");
  const unsigned long long bad = *id_flag_host_;
  if (bad == ~0ULL) return;
  int32_t value = 0;
  CUDA_CHECK(cudaMemcpyAsync(&value, ids.data<int32_t>() + bad, sizeof(value), cudaMemcpyDeviceToHost, stream_), op);
  CUDA_CHECK(cudaStreamSynchronize(stream_), op, " (reading the bad ", what, ")");
  LLM_FAIL(op, ": ", what, " ", value, " at position ", bad, " outside [", lo == INT_MIN ? 0 : lo, ", ", hi, ")");
}

// ---- embedding --------------------------------------------------------------------------------

void CudaBackend::embedding_forward(const Tensor& out, const Tensor& tokens, const Tensor& wte, const Tensor& wpe,
                                    int64_t vocab_begin, int64_t vocab_total) {
  LLM_CHECK(tokens.dim() == 2, "embedding_forward tokens: expected [B,T], got ", shape_str(tokens.shape()));
  const int64_t B = tokens.size(0), T = tokens.size(1), C = wte.size(1), Vl = wte.size(0);
  const int64_t Vt = vocab_total > 0 ? vocab_total : Vl;
  const DType t = wte.dtype();
  check_float_type(t, "embedding_forward wte");
  check_dev(tokens, {B, T}, DType::i32, device_, "embedding_forward tokens");
  check_dev(wte, {Vl, C}, t, device_, "embedding_forward wte");
  LLM_CHECK(vocab_begin >= 0 && vocab_begin + Vl <= Vt, "embedding_forward: shard [", vocab_begin, ", ",
            vocab_begin + Vl, ") outside the vocabulary of ", Vt);
  if (wpe.defined()) {
    LLM_CHECK(wpe.dim() == 2 && wpe.size(0) >= T, "embedding_forward: sequence length ", T,
              " exceeds the position table ", shape_str(wpe.shape()));
    check_dev(wpe, {wpe.size(0), C}, t, device_, "embedding_forward wpe");
  }
  check_dev(out, {B, T, C}, t, device_, "embedding_forward out");
  check_ids(tokens, 0, Vt, "embedding_forward", "token id");
  kernels::embedding_forward(t, out.raw(), tokens.data<int32_t>(), wte.raw(), wpe.defined() ? wpe.raw() : nullptr,
                             B * T, T, C, vocab_begin, Vl, stream_);
  launched("embedding_forward", {&out, &tokens, &wte, &wpe});
}

void CudaBackend::embedding_backward(const Tensor& dwte, const Tensor& dwpe, const Tensor& dout, const Tensor& tokens,
                                     int64_t vocab_begin) {
  LLM_CHECK(tokens.dim() == 2, "embedding_backward tokens: expected [B,T], got ", shape_str(tokens.shape()));
  const int64_t B = tokens.size(0), T = tokens.size(1), C = dwte.size(1), Vl = dwte.size(0);
  const DType t = dout.dtype();
  check_float_type(t, "embedding_backward dout");
  check_dev(tokens, {B, T}, DType::i32, device_, "embedding_backward tokens");
  check_dev(dwte, {Vl, C}, DType::f32, device_, "embedding_backward dwte");
  check_dev(dout, {B, T, C}, t, device_, "embedding_backward dout");
  if (dwpe.defined()) {
    LLM_CHECK(dwpe.dim() == 2 && dwpe.size(0) >= T, "embedding_backward: sequence length ", T,
              " exceeds the position gradient ", shape_str(dwpe.shape()));
    check_dev(dwpe, {dwpe.size(0), C}, DType::f32, device_, "embedding_backward dwpe");
  }
  // Bucket positions by token on the host (ids are a few KB): one block per token then sums
  // its rows in position order, deterministic and without atomics.
  std::vector<int32_t> tok(static_cast<size_t>(B * T));
  CUDA_CHECK(cudaMemcpyAsync(tok.data(), tokens.raw(), tok.size() * sizeof(int32_t), cudaMemcpyDeviceToHost, stream_),
             "embedding_backward tokens ", shape_str(tokens.shape()));
  CUDA_CHECK(cudaStreamSynchronize(stream_), "embedding_backward (last op launched: ", last_op_, ")");
  std::vector<int32_t> count(static_cast<size_t>(Vl), 0);
  for (int32_t id : tok) {
    const int64_t row = int64_t(id) - vocab_begin;
    if (row >= 0 && row < Vl) ++count[static_cast<size_t>(row)];
  }
  // layout: rows[nb] | starts[nb + 1] | positions[np]
  std::vector<int32_t> rows, starts{0};
  std::vector<int32_t> first(static_cast<size_t>(Vl), -1);
  for (int64_t r = 0; r < Vl; ++r)
    if (count[static_cast<size_t>(r)]) {
      first[static_cast<size_t>(r)] = starts.back();
      rows.push_back(static_cast<int32_t>(r));
      starts.push_back(starts.back() + count[static_cast<size_t>(r)]);
    }
  std::vector<int32_t> buf(rows.size() + starts.size() + static_cast<size_t>(starts.back()));
  std::copy(rows.begin(), rows.end(), buf.begin());
  std::copy(starts.begin(), starts.end(), buf.begin() + static_cast<int64_t>(rows.size()));
  int32_t* pos = buf.data() + rows.size() + starts.size();
  for (size_t i = 0; i < tok.size(); ++i) {
    const int64_t row = int64_t(tok[i]) - vocab_begin;
    if (row >= 0 && row < Vl) pos[first[static_cast<size_t>(row)]++] = static_cast<int32_t>(i);
  }
  const int64_t nb = static_cast<int64_t>(rows.size());
  Tensor dev = empty({static_cast<int64_t>(buf.size())}, DType::i32);
  if (!buf.empty())
    CUDA_CHECK(cudaMemcpyAsync(dev.raw(), buf.data(), buf.size() * sizeof(int32_t), cudaMemcpyHostToDevice, stream_),
               "embedding_backward buckets");
  const int32_t* d = dev.data<int32_t>();
  kernels::embedding_backward_wte(t, dwte.data<float>(), dout.raw(), d, d + nb, d + 2 * nb + 1, nb, C, stream_);
  if (dwpe.defined()) kernels::embedding_backward_wpe(t, dwpe.data<float>(), dout.raw(), B, T, C, stream_);
  launched("embedding_backward", {&dwte, &dwpe, &dout, &tokens});
  // The host buffer must outlive the (pageable) copy: wait for it before returning.
  CUDA_CHECK(cudaStreamSynchronize(stream_), "embedding_backward");
}

// ---- layernorm --------------------------------------------------------------------------------

void CudaBackend::layernorm_forward(const Tensor& out, const Tensor& mean, const Tensor& rstd, const Tensor& inp,
                                    const Tensor& weight, const Tensor& bias, float eps) {
  const int64_t C = inp.size(-1), N = rows_of(inp, "layernorm_forward inp");
  const DType t = inp.dtype();
  check_float_type(t, "layernorm_forward inp");
  check_dev(inp, inp.shape(), t, device_, "layernorm_forward inp");
  check_dev(out, inp.shape(), t, device_, "layernorm_forward out");
  check_dev(mean, {N}, DType::f32, device_, "layernorm_forward mean");
  check_dev(rstd, {N}, DType::f32, device_, "layernorm_forward rstd");
  check_dev(weight, {C}, DType::f32, device_, "layernorm_forward weight");
  check_dev(bias, {C}, DType::f32, device_, "layernorm_forward bias");
  kernels::layernorm_forward(t, out.raw(), mean.data<float>(), rstd.data<float>(), inp.raw(), weight.data<float>(),
                             bias.data<float>(), N, C, eps, stream_);
  launched("layernorm_forward", {&out, &inp, &weight});
}

void CudaBackend::layernorm_backward(const Tensor& dinp, const Tensor& dweight, const Tensor& dbias,
                                     const Tensor& dout, const Tensor& inp, const Tensor& weight, const Tensor& mean,
                                     const Tensor& rstd) {
  const int64_t C = inp.size(-1), N = rows_of(inp, "layernorm_backward inp");
  const DType t = inp.dtype();
  check_float_type(t, "layernorm_backward inp");
  check_dev(inp, inp.shape(), t, device_, "layernorm_backward inp");
  check_dev(dout, inp.shape(), t, device_, "layernorm_backward dout");
  check_dev(dinp, inp.shape(), t, device_, "layernorm_backward dinp");
  check_dev(weight, {C}, DType::f32, device_, "layernorm_backward weight");
  check_dev(dweight, {C}, DType::f32, device_, "layernorm_backward dweight");
  check_dev(dbias, {C}, DType::f32, device_, "layernorm_backward dbias");
  check_dev(mean, {N}, DType::f32, device_, "layernorm_backward mean");
  check_dev(rstd, {N}, DType::f32, device_, "layernorm_backward rstd");
  Tensor s = scratch(kernels::column_sum_scratch(N, 2 * C));
  kernels::layernorm_backward(t, dinp.raw(), dweight.data<float>(), dbias.data<float>(), dout.raw(), inp.raw(),
                              weight.data<float>(), mean.data<float>(), rstd.data<float>(), N, C, s.data<float>(),
                              stream_);
  launched("layernorm_backward", {&dinp, &dout, &inp, &weight});
}

// ---- linear -----------------------------------------------------------------------------------
// Row-major out[N, OC] = inp[N, C] W[OC, C]^T is column-major out^T[OC, N] = W^T inp^T: cuBLASLt
// sees A = W (stored C x OC, transposed), B = inp (stored C x N), D = out (OC x N).

namespace {
using LinearDims = LinearShape;
LinearDims linear_dims(const char* op, const Tensor& inp, const Tensor& weight, Device dev) {
  const LinearDims d = linear_shape(inp, weight, op);
  const std::string in = std::string(op) + " inp", w = std::string(op) + " weight";
  check_float_type(inp.dtype(), in.c_str());
  check_dev(inp, inp.shape(), inp.dtype(), dev, in.c_str());
  LLM_CHECK(weight.dtype() == inp.dtype(), w, " is ", dtype_name(weight.dtype()), ", the input is ",
            dtype_name(inp.dtype()), " (they must match)");
  check_dev(weight, {d.OC, d.C}, inp.dtype(), dev, w.c_str());
  return d;
}

bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }
}  // namespace

void CudaBackend::linear_forward(const Tensor& out, const Tensor& inp, const Tensor& weight, const Tensor& bias) {
  const LinearDims d = linear_dims("linear_forward", inp, weight, device_);
  const DType ot = out.dtype();
  LLM_CHECK(ot == inp.dtype() || ot == DType::f32, "linear_forward out: ", dtype_name(ot), " for ",
            dtype_name(inp.dtype()), " inputs (same type or f32)");
  LLM_CHECK(out.numel() == d.N * d.OC && out.size(-1) == d.OC, "linear_forward out: expected ", d.N, "x", d.OC,
            " elements, got ", shape_str(out.shape()));
  check_dev(out, out.shape(), ot, device_, "linear_forward out");
  if (bias.defined()) check_dev(bias, {d.OC}, ot, device_, "linear_forward bias (type of out)");
  if (d.N == 0) return;
  Matmul mm;
  mm.trans_a = true;
  mm.m = d.OC, mm.n = d.N, mm.k = d.C;
  mm.a_type = mm.b_type = inp.dtype();
  mm.d_type = ot;
  mm.a = weight.raw(), mm.lda = d.C;
  mm.b = inp.raw(), mm.ldb = d.C;
  mm.d = out.raw(), mm.ldd = d.OC;
  run_gemm_with_bias(mm, bias.defined() ? bias.raw() : nullptr, "linear_forward");
  launched("linear_forward", {&out, &inp, &weight, &bias});
}

void CudaBackend::linear_gelu_forward(const Tensor& out, const Tensor& pre_gelu, const Tensor& inp,
                                      const Tensor& weight, const Tensor& bias) {
  // The fused form where its bias and pre-activation are 16-byte aligned (linear_forward then
  // the GELU kernel otherwise: linear_forward handles the rest).
  // (cuBLASLt's GELU aux needs a leading dimension divisible by 8; OC % 8 also aligns the rows.)
  const int64_t oc = weight.dim() == 2 ? weight.size(0) : 0;
  if (!bias.defined() || !gelu_epilogue_ || oc % 8 != 0 || !aligned16(bias.raw()) || !aligned16(pre_gelu.raw()) ||
      !aligned16(out.raw()))
    return Backend::linear_gelu_forward(out, pre_gelu, inp, weight, bias);
  const LinearDims d = linear_dims("linear_gelu_forward", inp, weight, device_);
  const DType ot = out.dtype();
  LLM_CHECK(ot == inp.dtype() || ot == DType::f32, "linear_gelu_forward out: ", dtype_name(ot));
  LLM_CHECK(out.numel() == d.N * d.OC && out.size(-1) == d.OC, "linear_gelu_forward out: expected ", d.N, "x", d.OC,
            " elements, got ", shape_str(out.shape()));
  check_dev(out, out.shape(), ot, device_, "linear_gelu_forward out");
  check_dev(pre_gelu, out.shape(), ot, device_, "linear_gelu_forward pre_gelu");
  check_dev(bias, {d.OC}, ot, device_, "linear_gelu_forward bias");
  if (d.N == 0) return;
  Matmul mm;
  mm.trans_a = true;
  mm.m = d.OC, mm.n = d.N, mm.k = d.C;
  mm.a_type = mm.b_type = inp.dtype();
  mm.d_type = ot;
  mm.a = weight.raw(), mm.lda = d.C;
  mm.b = inp.raw(), mm.ldb = d.C;
  mm.d = out.raw(), mm.ldd = d.OC;
  mm.epilogue = Epilogue::gelu_bias_aux, mm.bias = bias.raw(), mm.aux = pre_gelu.raw(), mm.ld_aux = d.OC;
  if (!run_with_epilogue(mm, "linear_gelu_forward", gelu_epilogue_, "the linear layer then the GELU kernel"))
    return Backend::linear_gelu_forward(out, pre_gelu, inp, weight, bias);
  launched("linear_gelu_forward", {&out, &inp, &weight, &bias});
}

void CudaBackend::run_gemm_with_bias(Matmul mm, const void* bias, const char* op) {
  LLM_CHECK(mm.epilogue == Epilogue::none && mm.beta == 0.0f && mm.ldd == mm.m, op,
            ": run_gemm_with_bias takes a plain GEMM into a contiguous output");
  const int64_t rows = mm.n, cols = mm.m;  // D row-major [rows, cols] is cuBLASLt's cols x rows
  const DType ot = mm.d_type;
  // cuBLASLt writes D itself (and adds the bias in its epilogue) where D is f32 or its rows start
  // 16 bytes apart from a 16-byte aligned start, and the bias is 16-byte aligned. Otherwise, or where it has no bias algorithm,
  // the GEMM writes f32 and bias_epilogue adds the bias and rounds once. (An H200 gave wrong
  // bf16/f16 [3, 66] outputs, rows 132 bytes apart, in runs 20-22, where the same GEMM's f32
  // output was right; a 16-bit bias packed among an odd-sized model's parameters is 2-byte aligned.)
  const bool rows_aligned =
      ot == DType::f32 || ((cols * static_cast<int64_t>(dtype_size(ot))) % 16 == 0 && aligned16(mm.d));
  if (rows_aligned && (!bias || aligned16(bias))) {
    if (!bias) return blas_->run(mm, op);
    Matmul mb = mm;
    mb.epilogue = Epilogue::bias, mb.bias = bias;
    std::string why;
    if (blas_->run_if_supported(mb, op, &why)) return;
    if (!bias_epilogue_warned_)
      std::fprintf(stderr, "[warning] %s; adding the bias with a kernel where cuBLASLt has none\n", why.c_str());
    bias_epilogue_warned_ = true;
  }
  if (ot == DType::f32) {  // the GEMM into D, the bias added in place
    blas_->run(mm, op);
    if (bias) kernels::bias_epilogue(ot, mm.d, static_cast<const float*>(mm.d), bias, rows, cols, stream_);
    return;
  }
  // The f32 accumulator a block of output rows at a time (at most 64 Mi floats, 256 MiB: the
  // logits of an odd padded vocabulary come this way), B's columns and D's rows walked with it.
  LLM_CHECK(!mm.trans_b, op, ": the f32-accumulator path takes B untransposed");
  const int64_t block = std::max<int64_t>(1, std::min<int64_t>(rows, (int64_t(64) << 20) / cols));
  Tensor acc = scratch(block * cols);
  const size_t b_col = static_cast<size_t>(mm.ldb) * dtype_size(mm.b_type), d_row = static_cast<size_t>(cols) * dtype_size(ot);
  for (int64_t r = 0; r < rows; r += block) {
    const int64_t n = std::min(block, rows - r);
    Matmul piece = mm;
    piece.n = n;
    piece.b = static_cast<const char*>(mm.b) + static_cast<size_t>(r) * b_col;
    piece.d_type = DType::f32, piece.d = acc.raw();
    blas_->run(piece, op);
    kernels::bias_epilogue(ot, static_cast<char*>(mm.d) + static_cast<size_t>(r) * d_row, acc.data<float>(), bias, n,
                           cols, stream_);
  }
  launched(op, {});  // before acc goes back to the allocator
}

bool CudaBackend::run_with_epilogue(const Matmul& mm, const char* op, bool& enabled, const char* instead) {
  // Only a missing algorithm falls back (found before anything runs); a failed launch is an error.
  std::string why;
  if (blas_->run_if_supported(mm, op, &why)) return true;
  std::fprintf(stderr, "[warning] %s; using %s from now on\n", why.c_str(), instead);
  enabled = false;
  return false;
}

void CudaBackend::linear_backward(const Tensor& dinp, const Tensor& dweight, const Tensor& dbias, const Tensor& dout,
                                  const Tensor& inp, const Tensor& weight) {
  linear_backward_impl(dinp, dweight, dbias, dout, inp, weight, nullptr);
}

void CudaBackend::linear_backward_gelu(const Tensor& dinp, const Tensor& dweight, const Tensor& dbias,
                                       const Tensor& dout, const Tensor& inp, const Tensor& weight,
                                       const Tensor& pre_gelu) {
  LLM_CHECK(dinp.defined(), "linear_backward_gelu: dinp is required");
  check_dev(pre_gelu, inp.shape(), inp.dtype(), device_, "linear_backward_gelu pre_gelu (shape and type of inp)");
  linear_backward_impl(dinp, dweight, dbias, dout, inp, weight, &pre_gelu);
}

void CudaBackend::linear_backward_impl(const Tensor& dinp, const Tensor& dweight, const Tensor& dbias,
                                       const Tensor& dout, const Tensor& inp, const Tensor& weight,
                                       const Tensor* pre_gelu) {
  const LinearDims d = linear_dims("linear_backward", inp, weight, device_);
  const DType t = inp.dtype();
  LLM_CHECK(dout.numel() == d.N * d.OC && dout.size(-1) == d.OC, "linear_backward dout: expected ", d.N, "x", d.OC,
            " elements, got ", shape_str(dout.shape()));
  check_dev(dout, dout.shape(), t, device_, "linear_backward dout (type of inp)");
  check_dev(dweight, {d.OC, d.C}, DType::f32, device_, "linear_backward dweight");
  if (dinp.defined()) check_dev(dinp, inp.shape(), t, device_, "linear_backward dinp");
  if (dbias.defined()) check_dev(dbias, {d.OC}, DType::f32, device_, "linear_backward dbias");
  if (d.N == 0) return;
  if (dinp.defined()) {
    // dinp^T[C, N] = W^T[C, OC] dout^T[OC, N]: A = W stored C x OC, B = dout stored OC x N.
    Matmul mm;
    mm.m = d.C, mm.n = d.N, mm.k = d.OC;
    mm.a_type = mm.b_type = mm.d_type = t;
    mm.a = weight.raw(), mm.lda = d.C;
    mm.b = dout.raw(), mm.ldb = d.OC;
    mm.d = dinp.raw(), mm.ldd = d.C;
    bool fused = false;
    // The DGELU epilogue where the aux's leading dimension is divisible by 8 (cuBLASLt's rule) and
    // both matrices 16-byte aligned; otherwise the GEMM, then the GELU backward kernel.
    if (pre_gelu && dgelu_epilogue_ && d.C % 8 == 0 && aligned16(pre_gelu->raw()) && aligned16(dinp.raw())) {
      // D = (W^T dout^T) * gelu'(aux), aux = the pre-activation (C x N column-major, like D).
      Matmul mg = mm;
      mg.epilogue = Epilogue::dgelu, mg.aux = const_cast<void*>(pre_gelu->raw()), mg.ld_aux = d.C;
      fused = run_with_epilogue(mg, "linear_backward_gelu dinp", dgelu_epilogue_, "a separate GELU backward");
    }
    if (!fused) {
      run_gemm_with_bias(mm, nullptr, "linear_backward dinp");
      if (pre_gelu) {
        kernels::gelu_backward(t, dinp.raw(), pre_gelu->raw(), dinp.raw(), dinp.numel(), stream_);
        launched("linear_backward_gelu dinp (GELU backward)", {&dinp, pre_gelu});  // before scratch() allocates
      }
    }
  }
  // dweight^T[C, OC] += inp^T[C, N] dout[N, OC]: A = inp stored C x N, B = dout stored OC x N (T).
  Matmul mm;
  mm.trans_b = true;
  mm.m = d.C, mm.n = d.OC, mm.k = d.N;
  mm.a_type = mm.b_type = t;
  mm.d_type = DType::f32;
  mm.a = inp.raw(), mm.lda = d.C;
  mm.b = dout.raw(), mm.ldb = d.OC;
  mm.d = dweight.raw(), mm.ldd = d.C;
  mm.beta = 1.0f;
  bool bias_done = false;
  if (dbias.defined() && bias_grad_epilogue_) {
    // LLM_CUDA_BIAS_GRAD=epilogue: cuBLASLt's BGRADB epilogue writes the column sums of dout
    // into a scratch vector in the same pass, then dbias += it. If cuBLASLt has no algorithm for
    // it, the column-sum kernels take over for the rest of the process (said once).
    Tensor s = scratch(d.OC);
    Matmul mb = mm;
    mb.epilogue = Epilogue::bgradb, mb.bias = s.raw();
    bias_done = run_with_epilogue(mb, "linear_backward dweight + dbias (LLM_CUDA_BIAS_GRAD=epilogue)",
                                  bias_grad_epilogue_, "the column-sum kernels");
    if (bias_done) {
      kernels::residual_forward(DType::f32, dbias.raw(), dbias.raw(), s.raw(), d.OC, stream_);
      launched("linear_backward dbias += the epilogue's column sums", {&dbias});
    }
  }
  if (!bias_done) {
    blas_->run(mm, "linear_backward dweight");
    if (dbias.defined()) {
      Tensor s = scratch(kernels::column_sum_scratch(d.N, d.OC));
      kernels::bias_backward(t, dbias.data<float>(), dout.raw(), d.N, d.OC, s.data<float>(), stream_);
    }
  }
  launched("linear_backward", {&dinp, &dweight, &dbias, &dout, &inp, &weight});
}

// ---- element-wise -----------------------------------------------------------------------------

void CudaBackend::gelu_forward(const Tensor& out, const Tensor& inp) {
  check_float_type(inp.dtype(), "gelu_forward inp");
  check_dev(inp, inp.shape(), inp.dtype(), device_, "gelu_forward inp");
  check_dev(out, inp.shape(), inp.dtype(), device_, "gelu_forward out");
  kernels::gelu_forward(inp.dtype(), out.raw(), inp.raw(), inp.numel(), stream_);
  launched("gelu_forward", {&out, &inp});
}

void CudaBackend::gelu_backward(const Tensor& dinp, const Tensor& inp, const Tensor& dout) {
  check_float_type(inp.dtype(), "gelu_backward inp");
  check_dev(inp, inp.shape(), inp.dtype(), device_, "gelu_backward inp");
  check_dev(dout, inp.shape(), inp.dtype(), device_, "gelu_backward dout");
  check_dev(dinp, inp.shape(), inp.dtype(), device_, "gelu_backward dinp");
  kernels::gelu_backward(inp.dtype(), dinp.raw(), inp.raw(), dout.raw(), inp.numel(), stream_);
  launched("gelu_backward", {&dinp, &inp, &dout});
}

void CudaBackend::residual_forward(const Tensor& out, const Tensor& a, const Tensor& b) {
  check_float_type(a.dtype(), "residual_forward a");
  check_dev(a, a.shape(), a.dtype(), device_, "residual_forward a");
  check_dev(b, a.shape(), a.dtype(), device_, "residual_forward b");
  check_dev(out, a.shape(), a.dtype(), device_, "residual_forward out");
  kernels::residual_forward(a.dtype(), out.raw(), a.raw(), b.raw(), a.numel(), stream_);
  launched("residual_forward", {&out, &a, &b});
}

void CudaBackend::residual_backward(const Tensor& da, const Tensor& db, const Tensor& dout) {
  check_float_type(dout.dtype(), "residual_backward dout");
  check_dev(dout, dout.shape(), dout.dtype(), device_, "residual_backward dout");
  check_dev(da, dout.shape(), dout.dtype(), device_, "residual_backward da");
  check_dev(db, dout.shape(), dout.dtype(), device_, "residual_backward db");
  check_disjoint(da, db, "residual_backward da/db");
  kernels::residual_backward(dout.dtype(), da.raw(), db.raw(), dout.raw(), dout.numel(), stream_);
  launched("residual_backward", {&da, &db, &dout});
}

// ---- attention --------------------------------------------------------------------------------

namespace {
struct AttnDims {
  int64_t B, T, C, hd;
};
// The attention kernels' grids put the heads on y and the batch on z (at most 65535 each).
void check_grid_yz(const char* op, int64_t B, int n_head) {
  LLM_CHECK(B <= 65535 && n_head <= 65535, op, ": batch ", B, " and heads ", n_head,
            " must each be at most 65535 (the launch grid's y and z)");
}
AttnDims attention_dims(const Tensor& qkv, int n_head, const char* op) {
  LLM_CHECK(qkv.dim() == 3 && qkv.size(2) % 3 == 0, op, ": qkv must be [B,T,3C], got ", shape_str(qkv.shape()));
  AttnDims d{qkv.size(0), qkv.size(1), qkv.size(2) / 3, 0};
  LLM_CHECK(n_head > 0 && d.C % n_head == 0, op, ": C=", d.C, " not divisible by n_head=", n_head);
  d.hd = d.C / n_head;
  check_grid_yz(op, d.B, n_head);
  return d;
}
}  // namespace

void CudaBackend::attention_forward(const Tensor& out, const Tensor& lse, const Tensor& qkv, int n_head) {
  const AttnDims d = attention_dims(qkv, n_head, "attention_forward");
  const DType t = qkv.dtype();
  check_float_type(t, "attention_forward qkv");
  check_dev(qkv, qkv.shape(), t, device_, "attention_forward qkv");
  check_dev(out, {d.B, d.T, d.C}, t, device_, "attention_forward out");
  check_dev(lse, {d.B, n_head, d.T}, DType::f32, device_, "attention_forward lse");
  const kernels::AttentionForwardArgs a = kernels::self_attention_args(
      qkv.raw(), out.raw(), lse.data<float>(), dtype_size(t), static_cast<int>(d.B), d.T, n_head, static_cast<int>(d.hd));
  with_op_context("attention_forward", {&out, &lse, &qkv}, [&] { kernels::attention_forward(t, a, stream_); });
  launched("attention_forward", {&out, &lse, &qkv});
}

void CudaBackend::attention_backward(const Tensor& dqkv, const Tensor& dout, const Tensor& qkv, const Tensor& out,
                                     const Tensor& lse, int n_head) {
  const AttnDims d = attention_dims(qkv, n_head, "attention_backward");
  const DType t = qkv.dtype();
  check_float_type(t, "attention_backward qkv");
  check_dev(qkv, qkv.shape(), t, device_, "attention_backward qkv");
  check_dev(dqkv, qkv.shape(), t, device_, "attention_backward dqkv");
  check_dev(out, {d.B, d.T, d.C}, t, device_, "attention_backward out");
  check_dev(dout, {d.B, d.T, d.C}, t, device_, "attention_backward dout");
  check_dev(lse, {d.B, n_head, d.T}, DType::f32, device_, "attention_backward lse");
  const int B = static_cast<int>(d.B), hd = static_cast<int>(d.hd);
  const int64_t workspace = kernels::attention_backward_workspace(t, B, n_head, hd, d.T);
  Tensor s = scratch(kernels::attention_backward_scratch(t, B, n_head, hd, d.T, workspace > 0));
  kernels::AttentionBackwardArgs a;
  if (workspace > 0) a.dq_workspace = dq_workspace(workspace);
  a.qkv = qkv.raw();
  a.dqkv = dqkv.raw();
  a.out = out.raw();
  a.dout = dout.raw();
  a.lse = lse.data<float>();
  a.scratch = s.data<float>();
  a.B = static_cast<int>(d.B), a.NH = n_head, a.hd = static_cast<int>(d.hd);
  a.T = d.T;
  with_op_context("attention_backward", {&dqkv, &dout, &qkv, &out, &lse},
                  [&] { kernels::attention_backward(t, a, stream_); });
  launched("attention_backward", {&dqkv, &dout, &qkv, &out, &lse});
}

void CudaBackend::attention_kv_forward(const Tensor& out, const Tensor& qkv, const Tensor& k_cache,
                                       const Tensor& v_cache, int64_t past, int n_head) {
  const AttentionKvShape k = attention_kv_shape(qkv, k_cache, past, n_head);
  const int64_t B = k.B, Tn = k.Tn, C = k.C, maxT = k.maxT;
  const DType t = qkv.dtype();
  check_float_type(t, "attention_kv_forward qkv");
  check_dev(qkv, qkv.shape(), t, device_, "attention_kv_forward qkv");
  check_dev(k_cache, {B, maxT, C}, t, device_, "attention_kv_forward k_cache");
  check_dev(v_cache, {B, maxT, C}, t, device_, "attention_kv_forward v_cache");
  check_dev(out, {B, Tn, C}, t, device_, "attention_kv_forward out");
  check_grid_yz("attention_kv_forward", B, n_head);
  with_op_context("attention_kv_forward", {&out, &qkv, &k_cache, &v_cache}, [&] {
    kernels::attention_kv_forward(t, out.raw(), qkv.raw(), k_cache.raw(), v_cache.raw(), static_cast<int>(B), Tn, C,
                                  maxT, past, n_head, stream_);
  });
  launched("attention_kv_forward", {&out, &qkv, &k_cache, &v_cache});
}

// ---- cross-entropy ----------------------------------------------------------------------------

namespace {
int64_t ce_real_columns(const char* op, const Tensor& logits, int64_t V, int64_t vocab_begin) {
  const int64_t Vp = logits.size(-1);
  LLM_CHECK(V >= 1 && vocab_begin >= 0 && vocab_begin < V, op, ": vocabulary ", V, " and shard of columns [",
            vocab_begin, ", ", vocab_begin + Vp, "): the shard must hold at least one real column");
  return std::min(Vp, V - vocab_begin);
}
}  // namespace

void CudaBackend::cross_entropy_forward(const Tensor& losses, const Tensor& lse, const Tensor& logits,
                                        const Tensor& targets, int64_t V, int64_t vocab_begin) {
  const char* op = "cross_entropy_forward";
  const int64_t Vp = logits.size(-1), N = rows_of(logits, op);
  const DType t = logits.dtype();
  check_float_type(t, op);
  check_dev(logits, logits.shape(), t, device_, "cross_entropy_forward logits");
  const int64_t Vr = ce_real_columns(op, logits, V, vocab_begin);
  LLM_CHECK(targets.numel() == N && targets.dtype() == DType::i32 && targets.is_contiguous() &&
                targets.device() == device_,
            op, ": targets must be ", N, " contiguous i32 on ", device_.str(), ", got ", shape_str(targets.shape()),
            " ", dtype_name(targets.dtype()), " on ", targets.device().str());
  check_dev(losses, {N}, DType::f32, device_, "cross_entropy_forward losses");
  check_dev(lse, {N}, DType::f32, device_, "cross_entropy_forward lse");
  check_ids(targets, INT_MIN, V, op, "target");
  kernels::cross_entropy_forward(t, losses.data<float>(), lse.data<float>(), logits.raw(), targets.data<int32_t>(), N,
                                 Vp, Vr, vocab_begin, stream_);
  launched(op, {&losses, &lse, &logits, &targets});
}

void CudaBackend::cross_entropy_backward(const Tensor& dlogits, const Tensor& logits, const Tensor& lse,
                                         const Tensor& targets, float dloss, int64_t V, int64_t vocab_begin) {
  const char* op = "cross_entropy_backward";
  const int64_t Vp = logits.size(-1), N = rows_of(logits, op);
  const DType t = logits.dtype();
  check_float_type(t, op);
  check_dev(logits, logits.shape(), t, device_, "cross_entropy_backward logits");
  check_dev(dlogits, logits.shape(), t, device_, "cross_entropy_backward dlogits");
  const int64_t Vr = ce_real_columns(op, logits, V, vocab_begin);
  LLM_CHECK(targets.numel() == N && targets.dtype() == DType::i32 && targets.is_contiguous() &&
                targets.device() == device_,
            op, ": targets must be ", N, " contiguous i32 on ", device_.str(), ", got ", shape_str(targets.shape()));
  check_dev(lse, {N}, DType::f32, device_, "cross_entropy_backward lse");
  kernels::cross_entropy_backward(t, dlogits.raw(), logits.raw(), lse.data<float>(), targets.data<int32_t>(), dloss, N,
                                  Vp, Vr, vocab_begin, stream_);
  launched(op, {&dlogits, &logits, &lse, &targets});
}

void CudaBackend::cross_entropy_combine(const Tensor& losses, const Tensor& lse, const Tensor& shard_lse,
                                        const Tensor& shard_losses, const Tensor& targets, int64_t shard_vocab) {
  const char* op = "cross_entropy_combine";
  LLM_CHECK(shard_lse.dim() == 2, op, ": shard_lse must be [P, N], got ", shape_str(shard_lse.shape()));
  const int64_t P = shard_lse.size(0), N = shard_lse.size(1);
  check_dev(shard_lse, {P, N}, DType::f32, device_, "cross_entropy_combine shard_lse");
  check_dev(shard_losses, {P, N}, DType::f32, device_, "cross_entropy_combine shard_losses");
  check_dev(losses, {N}, DType::f32, device_, "cross_entropy_combine losses");
  check_dev(lse, {N}, DType::f32, device_, "cross_entropy_combine lse");
  LLM_CHECK(targets.numel() == N && targets.dtype() == DType::i32 && targets.is_contiguous() &&
                targets.device() == device_,
            op, ": targets must be ", N, " contiguous i32 on ", device_.str(), ", got ", shape_str(targets.shape()));
  LLM_CHECK(shard_vocab >= 1, op, ": shard vocabulary ", shard_vocab);
  // No check_ids here (it synchronises): cross_entropy_forward checked these targets.
  kernels::cross_entropy_combine(losses.data<float>(), lse.data<float>(), shard_lse.data<float>(),
                                 shard_losses.data<float>(), targets.data<int32_t>(), P, N, shard_vocab, stream_);
  launched(op, {&losses, &lse, &shard_lse, &shard_losses, &targets});
}

// ---- optimizer and reductions -------------------------------------------------------------------

namespace {
kernels::AdamWConstants adamw_constants(const AdamWParams& a) {
  LLM_CHECK(a.step >= 1, "adamw step must be >= 1, got ", a.step);
  kernels::AdamWConstants c{};
  c.lr = a.lr, c.beta1 = a.beta1, c.beta2 = a.beta2, c.eps = a.eps, c.weight_decay = a.weight_decay;
  c.grad_scale = a.grad_scale;
  c.bias_correction1 = static_cast<float>(1.0 / (1.0 - std::pow(static_cast<double>(a.beta1), a.step)));
  c.bias_correction2 = static_cast<float>(1.0 / (1.0 - std::pow(static_cast<double>(a.beta2), a.step)));
  return c;
}
}  // namespace

void CudaBackend::adamw_update(const Tensor& param, const Tensor& grad, const Tensor& m, const Tensor& v,
                               const AdamWParams& p) {
  check_dev(param, param.shape(), DType::f32, device_, "adamw param");
  check_dev(grad, param.shape(), DType::f32, device_, "adamw grad");
  check_dev(m, param.shape(), DType::f32, device_, "adamw m");
  check_dev(v, param.shape(), DType::f32, device_, "adamw v");
  kernels::adamw_update(param.data<float>(), grad.data<float>(), m.data<float>(), v.data<float>(), param.numel(),
                        adamw_constants(p), DType::f32, nullptr, stream_);
  launched("adamw_update", {&param, &grad});
}

void CudaBackend::adamw_update_mixed(const Tensor& param, const Tensor& grad, const Tensor& m, const Tensor& v,
                                     const AdamWParams& p, const Tensor& low) {
  check_dev(param, param.shape(), DType::f32, device_, "adamw param");
  check_dev(grad, param.shape(), DType::f32, device_, "adamw grad");
  check_dev(m, param.shape(), DType::f32, device_, "adamw m");
  check_dev(v, param.shape(), DType::f32, device_, "adamw v");
  LLM_CHECK(low.dtype() == DType::bf16 || low.dtype() == DType::f16, "adamw low-precision copy must be bf16 or f16");
  check_dev(low, param.shape(), low.dtype(), device_, "adamw low-precision copy");
  kernels::adamw_update(param.data<float>(), grad.data<float>(), m.data<float>(), v.data<float>(), param.numel(),
                        adamw_constants(p), low.dtype(), low.raw(), stream_);
  launched("adamw_update_mixed", {&param, &grad, &low});
}

double CudaBackend::sum_squares(const Tensor& x) {
  check_float_type(x.dtype(), "sum_squares x");
  check_dev(x, x.shape(), x.dtype(), device_, "sum_squares x");
  kernels::sum_squares(x.dtype(), x.raw(), x.numel(), partials_dev_, stream_);
  launched("sum_squares", {&x});
  CUDA_CHECK(cudaMemcpyAsync(partials_host_, partials_dev_, sizeof(double) * kernels::kSumSquaresBlocks,
                             cudaMemcpyDeviceToHost, stream_),
             "sum_squares ", shape_str(x.shape()));
  CUDA_CHECK(cudaStreamSynchronize(stream_), "sum_squares ", shape_str(x.shape()));
  double total = 0.0;
  for (int i = 0; i < kernels::kSumSquaresBlocks; ++i) total += partials_host_[i];
  return total;
}

void CudaBackend::scale(const Tensor& x, float s) {
  check_float_type(x.dtype(), "scale x");
  check_dev(x, x.shape(), x.dtype(), device_, "scale x");
  kernels::scale(x.dtype(), x.raw(), x.numel(), s, stream_);
  launched("scale", {&x});
}

void CudaBackend::convert(const Tensor& dst, const Tensor& src) {
  check_float_type(src.dtype(), "convert src");
  check_float_type(dst.dtype(), "convert dst");
  check_dev(src, src.shape(), src.dtype(), device_, "convert src");
  check_dev(dst, src.shape(), dst.dtype(), device_, "convert dst");
  kernels::convert(dst.dtype(), dst.raw(), src.dtype(), src.raw(), src.numel(), stream_);
  launched("convert", {&dst, &src});
}

int64_t CudaBackend::count_nonfinite(const Tensor& x) {
  check_float_type(x.dtype(), "count_nonfinite x");
  check_dev(x, x.shape(), x.dtype(), device_, "count_nonfinite x");
  CUDA_CHECK(cudaMemsetAsync(count_dev_, 0, sizeof(unsigned long long), stream_), "count_nonfinite");
  kernels::count_nonfinite(x.dtype(), x.raw(), x.numel(), count_dev_, stream_);
  launched("count_nonfinite", {&x});
  CUDA_CHECK(cudaMemcpyAsync(count_host_, count_dev_, sizeof(unsigned long long), cudaMemcpyDeviceToHost, stream_),
             "count_nonfinite");
  CUDA_CHECK(cudaStreamSynchronize(stream_), "count_nonfinite ", shape_str(x.shape()));
  return static_cast<int64_t>(*count_host_);
}

void CudaBackend::set_allow_tf32(bool on) { blas_->set_allow_tf32(on); }

// ---- timer ------------------------------------------------------------------------------------

CudaTimer::CudaTimer(cudaStream_t stream) : stream_(stream) {
  CUDA_CHECK(cudaEventCreate(&start_), "timer event");
  CUDA_CHECK(cudaEventCreate(&stop_), "timer event");
}
CudaTimer::~CudaTimer() {
  if (start_) (void)cudaEventDestroy(start_);
  if (stop_) (void)cudaEventDestroy(stop_);
}
void CudaTimer::start() { CUDA_CHECK(cudaEventRecord(start_, stream_), "timer start"); }
void CudaTimer::stop() { CUDA_CHECK(cudaEventRecord(stop_, stream_), "timer stop"); }
double CudaTimer::milliseconds() {
  CUDA_CHECK(cudaEventSynchronize(stop_), "timer");
  float ms = 0.0f;
  CUDA_CHECK(cudaEventElapsedTime(&ms, start_, stop_), "timer");
  return ms;
}

// ---- registration ---------------------------------------------------------------------------

namespace {
CudaBackend* g_backend = nullptr;
std::string g_status = "CUDA backend not initialised";
}  // namespace

int local_device(int device_count) {
  if (device_count <= 0) return 0;
  for (const char* var : {"OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "SLURM_LOCALID", "PALS_LOCAL_RANKID",
                          "PMI_LOCAL_RANK", "LOCAL_RANK"}) {
    const char* v = std::getenv(var);
    if (v && *v) {
      char* end = nullptr;
      const long r = std::strtol(v, &end, 10);
      if (end && *end == '\0' && r >= 0) return static_cast<int>(r % device_count);
    }
  }
  return 0;
}

void register_backend_if_present() {
  int count = 0;
  const cudaError_t e = cudaGetDeviceCount(&count);
  if (e != cudaSuccess) {
    (void)cudaGetLastError();
    g_status = detail::concat("no usable CUDA device: cudaGetDeviceCount failed with ", cudaGetErrorName(e), " (",
                              cudaGetErrorString(e), ")");
    return;
  }
  if (count == 0) {
    g_status = "no CUDA device: cudaGetDeviceCount returned 0";
    return;
  }
  const int dev = local_device(count);
  cudaDeviceProp prop{};
  if (const cudaError_t pe = cudaGetDeviceProperties(&prop, dev); pe != cudaSuccess) {
    (void)cudaGetLastError();  // not left behind for the first kernel's launch check to blame
    g_status = detail::concat("no usable CUDA device: cudaGetDeviceProperties(", dev, ") failed with ",
                              cudaGetErrorName(pe), " (", cudaGetErrorString(pe), ")");
    return;
  }
  // Leaked on purpose: tensors in static storage may be released after main returns.
  g_backend = new CudaBackend(dev);
  register_backend(g_backend);
  g_status = detail::concat(count, " CUDA device(s), using cuda:", dev, " (", prop.name, ", sm_", prop.major,
                            prop.minor, ")");
}

CudaBackend* cuda_backend() {
  (void)available_backends();  // runs the registration once
  return g_backend;
}

std::string device_status() {
  (void)available_backends();
  return g_status;
}

}  // namespace llm::cuda
