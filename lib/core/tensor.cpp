#include "core/tensor.h"

#include <cstdlib>

namespace llm {

std::shared_ptr<Storage> host_storage(size_t nbytes) {
  auto s = std::make_shared<Storage>();
  size_t rounded = (nbytes + 63) / 64 * 64;
  if (rounded == 0) rounded = 64;
  s->data = std::aligned_alloc(64, rounded);
  if (!s->data) LLM_FAIL("out of host memory allocating ", nbytes, " bytes");
  s->nbytes = nbytes;
  s->device = kCPU;
  s->release = [](void* p) { std::free(p); };
  return s;
}

static Shape contiguous_strides(const Shape& shape) {
  Shape st(shape.size());
  int64_t acc = 1;
  for (size_t i = shape.size(); i-- > 0;) {
    st[i] = acc;
    acc *= shape[i];
  }
  return st;
}

Tensor::Tensor(std::shared_ptr<Storage> storage, size_t byte_offset, Shape shape, DType dtype)
    : storage_(std::move(storage)), offset_(byte_offset), shape_(std::move(shape)), dtype_(dtype) {
  for (int64_t d : shape_) LLM_CHECK(d >= 0, "negative extent in shape ", shape_str(shape_));
  strides_ = contiguous_strides(shape_);
  LLM_CHECK(offset_ + nbytes() <= storage_->nbytes, "tensor ", shape_str(shape_),
            " exceeds its storage");
}

Tensor Tensor::empty(const Shape& shape, DType dtype) {
  return Tensor(host_storage(static_cast<size_t>(llm::numel(shape)) * dtype_size(dtype)), 0,
                shape, dtype);
}

Tensor Tensor::zeros(const Shape& shape, DType dtype) {
  Tensor t = empty(shape, dtype);
  std::memset(t.raw(), 0, t.nbytes());
  return t;
}

bool Tensor::is_contiguous() const { return strides_ == contiguous_strides(shape_); }

Tensor Tensor::view(Shape shape) const {
  LLM_CHECK(is_contiguous(), "view() of a non-contiguous tensor ", shape_str(shape_));
  int64_t known = 1, infer = -1;
  for (size_t i = 0; i < shape.size(); ++i) {
    if (shape[i] == -1) {
      LLM_CHECK(infer < 0, "view(): more than one -1 in ", shape_str(shape));
      infer = static_cast<int64_t>(i);
    } else {
      LLM_CHECK(shape[i] >= 0, "view(): negative extent in ", shape_str(shape));
      known *= shape[i];
    }
  }
  if (infer >= 0) shape[infer] = known ? numel() / known : 0;
  LLM_CHECK(llm::numel(shape) == numel(), "view(): cannot view ", shape_str(shape_), " as ",
            shape_str(shape));
  Tensor t = *this;
  t.shape_ = shape;
  t.strides_ = contiguous_strides(shape);
  return t;
}

Tensor Tensor::slice(int64_t d, int64_t start, int64_t len) const {
  if (d < 0) d += dim();
  LLM_CHECK(d >= 0 && d < dim(), "slice(): bad dimension ", d, " for ", shape_str(shape_));
  LLM_CHECK(start >= 0 && len >= 0 && start + len <= shape_[d], "slice(): [", start, ", ",
            start + len, ") out of range for extent ", shape_[d]);
  Tensor t = *this;
  t.offset_ += static_cast<size_t>(start * strides_[d]) * dtype_size(dtype_);
  t.shape_[d] = len;
  return t;
}

Tensor Tensor::flat(int64_t start, int64_t len) const {
  LLM_CHECK(is_contiguous(), "flat() of a non-contiguous tensor");
  LLM_CHECK(start >= 0 && len >= 0 && start + len <= numel(), "flat(): window [", start, ", ",
            start + len, ") out of range for ", numel(), " elements");
  Tensor t = *this;
  t.offset_ += static_cast<size_t>(start) * dtype_size(dtype_);
  t.shape_ = {len};
  t.strides_ = {1};
  return t;
}

void Tensor::fill(float v) const {
  LLM_CHECK(device().is_cpu() && is_contiguous(), "fill() needs a contiguous host tensor");
  float* p = data<float>();
  for (int64_t i = 0, n = numel(); i < n; ++i) p[i] = v;
}

void Tensor::zero() const {
  LLM_CHECK(device().is_cpu() && is_contiguous(), "zero() needs a contiguous host tensor");
  std::memset(raw(), 0, nbytes());
}

Tensor Tensor::clone() const {
  Tensor t = empty(shape_, dtype_);
  t.copy_from(*this);
  return t;
}

void Tensor::copy_from(const Tensor& src) const {
  LLM_CHECK(src.shape_ == shape_ && src.dtype_ == dtype_, "copy_from(): ", shape_str(src.shape_),
            " ", dtype_name(src.dtype_), " into ", shape_str(shape_), " ", dtype_name(dtype_));
  LLM_CHECK(device().is_cpu() && src.device().is_cpu(), "copy_from() is host-only");
  LLM_CHECK(is_contiguous() && src.is_contiguous(), "copy_from() needs contiguous tensors");
  std::memcpy(raw(), src.raw(), nbytes());
}

void expect_shape(const Tensor& t, const Shape& shape, const char* what, DType dtype) {
  LLM_CHECK(t.defined(), what, ": tensor is undefined");
  if (t.shape() != shape || t.dtype() != dtype)
    LLM_FAIL(what, ": expected ", shape_str(shape), " ", dtype_name(dtype), ", got ",
             shape_str(t.shape()), " ", dtype_name(t.dtype()));
}

}  // namespace llm
