// Tensor: a typed, shaped, strided view of reference-counted storage on one device.
//
// Storage is shared between views (slice/view), so a layer can hand out windows of one flat
// buffer (the parameter and gradient buffers are single allocations; ZeRO shards them later).
// Host storage is 64-byte aligned so AVX-512 loads never split cache lines.
#pragma once
#include <cstring>
#include <functional>
#include <memory>
#include <span>
#include <string>

#include "core/device.h"
#include "core/dtype.h"
#include "core/error.h"
#include "core/shape.h"

namespace llm {

struct Storage {
  void* data = nullptr;
  size_t nbytes = 0;
  Device device;
  std::function<void(void*)> release;
  Storage() = default;
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;
  ~Storage() {
    if (release && data) release(data);
  }
};

// Allocates `nbytes` of 64-byte aligned, uninitialised host memory.
std::shared_ptr<Storage> host_storage(size_t nbytes);

class Tensor {
 public:
  Tensor() = default;
  Tensor(std::shared_ptr<Storage> storage, size_t byte_offset, Shape shape, DType dtype);

  // New contiguous host tensors.
  static Tensor empty(const Shape& shape, DType dtype = DType::f32);
  static Tensor zeros(const Shape& shape, DType dtype = DType::f32);

  bool defined() const { return storage_ != nullptr; }
  const Shape& shape() const { return shape_; }
  const Shape& strides() const { return strides_; }
  int64_t dim() const { return static_cast<int64_t>(shape_.size()); }
  int64_t size(int64_t d) const { return shape_.at(d < 0 ? d + dim() : d); }
  int64_t numel() const { return llm::numel(shape_); }
  DType dtype() const { return dtype_; }
  Device device() const { return storage_ ? storage_->device : kCPU; }
  size_t nbytes() const { return static_cast<size_t>(numel()) * dtype_size(dtype_); }
  bool is_contiguous() const;
  const std::shared_ptr<Storage>& storage() const { return storage_; }
  size_t byte_offset() const { return offset_; }

  void* raw() const { return static_cast<char*>(storage_->data) + offset_; }
  template <typename T>
  T* data() const {
    LLM_CHECK(dtype_of<T>() == dtype_, "tensor holds ", dtype_name(dtype_), ", accessed as ",
              dtype_name(dtype_of<T>()));
    return static_cast<T*>(raw());
  }
  // Contiguous host tensors only: the elements as a span.
  template <typename T>
  std::span<T> span() const {
    LLM_CHECK(is_contiguous(), "span() needs a contiguous tensor");
    return {data<T>(), static_cast<size_t>(numel())};
  }

  // Views share storage. view() reshapes a contiguous tensor (one extent may be -1);
  // slice() narrows dimension `d` to [start, start+len).
  Tensor view(Shape shape) const;
  Tensor slice(int64_t d, int64_t start, int64_t len) const;
  // Flat contiguous window [start, start+len) of a contiguous tensor, as 1-D.
  Tensor flat(int64_t start, int64_t len) const;

  // Host-only helpers for tests and tools.
  void fill(float v) const;
  void zero() const;
  Tensor clone() const;  // contiguous deep copy (host)
  void copy_from(const Tensor& src) const;  // same shape & dtype, host

 private:
  std::shared_ptr<Storage> storage_;
  size_t offset_ = 0;
  Shape shape_;
  Shape strides_;
  DType dtype_ = DType::f32;
};

// Throws naming `what` if `t` is not exactly `shape` (and dtype).
void expect_shape(const Tensor& t, const Shape& shape, const char* what, DType dtype = DType::f32);

}  // namespace llm
