// Safetensors files (https://huggingface.co/docs/safetensors): the tensor container Hugging Face
// models ship in.
//
// Layout: an 8-byte little-endian uint64 N, then N bytes of UTF-8 JSON header, then the data
// buffer. The header maps each tensor name to {"dtype", "shape", "data_offsets": [begin, end]}
// (byte offsets relative to the start of the buffer) and may hold "__metadata__", a
// string-to-string map. Tensors are little-endian, C order, unaligned.
//
// Writing lays the tensors out in the order given, pads the header with spaces to a multiple of
// 8 bytes (so the buffer starts 8-aligned, as the Python and Rust writers do), and publishes
// atomically: the bytes go to "<path>.tmp-<pid>-<n>" in the same directory, which is fsynced and
// renamed over <path> (then the directory is fsynced). A crash leaves either the old file or the
// new one under <path>, never a partial one.
//
// Reading validates the whole header at open() and refuses (ConfigError naming the file and,
// where there is one, the tensor) anything the specification does not allow: a header that is
// not a JSON object, entries with missing keys, unknown dtypes, non-integer or negative
// extents, offsets that are not [begin, end] with begin <= end, byte lengths that disagree with
// shape x dtype, tensors outside the buffer, overlaps, holes (the tensors must cover the buffer
// exactly), and metadata values that are not strings. Like the reference reader it ignores keys
// an entry has beyond dtype/shape/data_offsets, and takes a null __metadata__ as none. Tensor
// data is read with pread() from a descriptor held open by the SafetensorsFile into a fresh
// 64-byte aligned host tensor: no mapping outlives the file object and a tensor owns its bytes
// (no mmap lifetime or SIGBUS on a truncated file; a file truncated after open() is reported as a
// ConfigError at read()). The const readers may run concurrently from several threads (pread has
// no shared file position).
#pragma once
#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "core/tensor.h"

namespace llm {

// Byte size of one element of a safetensors dtype ("F32", "BF16", "I64", "BOOL", ...); 0 when
// the dtype is not one of the specification's byte-sized types.
size_t safetensors_dtype_size(std::string_view dtype);
// Our DType for a safetensors dtype: F32/BF16/F16/I32/I64/U16/U8; nullopt for the others
// (F64, I16, I8, BOOL, U32, U64, F8_*), which a file may hold but a Tensor cannot.
std::optional<DType> dtype_from_safetensors(std::string_view dtype);
// The safetensors name of one of our dtypes ("F32", "BF16", "F16", "I32", "I64", "U16", "U8").
std::string_view safetensors_dtype_name(DType dtype);

// Writes host tensors (contiguous, any DType) to `path` in the order given, with `metadata` as
// "__metadata__" (omitted when empty). Names must be unique, valid UTF-8 and not "__metadata__"
// (checked: internal errors). An I/O failure is a ConfigError naming the path; no temporary
// file is left behind and an existing file at `path` is untouched until the final rename.
void write_safetensors(const std::string& path, const std::vector<std::pair<std::string, Tensor>>& tensors,
                       const std::map<std::string, std::string>& metadata = {});

// The streaming form, for writers that build each tensor on the fly (a transpose, a conversion)
// and should hold only one at a time: the header comes from `entries`, then produce(i) is called
// once per entry, in order, and must return a contiguous host tensor of exactly that dtype and
// shape. An exception from produce() removes the temporary file and propagates.
struct SafetensorsEntry {
  std::string name;
  DType dtype = DType::f32;
  Shape shape;
};
void write_safetensors_streamed(const std::string& path, const std::vector<SafetensorsEntry>& entries,
                                const std::function<Tensor(size_t index)>& produce,
                                const std::map<std::string, std::string>& metadata = {});

struct SafetensorsInfo {
  std::string dtype;  // as stored: "F32", "BF16", ...
  Shape shape;
  uint64_t begin = 0, end = 0;  // data_offsets, relative to the data buffer
  uint64_t nbytes() const { return end - begin; }
};

class SafetensorsFile {
 public:
  SafetensorsFile() = default;
  explicit SafetensorsFile(const std::string& path) { open(path); }
  ~SafetensorsFile();
  SafetensorsFile(SafetensorsFile&& other) noexcept;
  SafetensorsFile& operator=(SafetensorsFile&& other) noexcept;
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  // Opens and validates `path` (see the file comment); closes any file opened before.
  void open(const std::string& path);
  bool is_open() const { return fd_ >= 0; }
  const std::string& path() const { return path_; }

  // Tensor names in data-offset order (ties, i.e. empty tensors, in header order).
  const std::vector<std::string>& names() const { return names_; }
  bool contains(const std::string& name) const { return info_.count(name) != 0; }
  // Throws ConfigError naming the file and the tensor when there is no such tensor.
  const SafetensorsInfo& info(const std::string& name) const;
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  // Size of the data buffer in bytes (the sum of all tensors' sizes).
  uint64_t buffer_size() const { return buffer_size_; }

  // The tensor as stored, in a new host tensor of the corresponding DType; ConfigError for
  // dtypes a Tensor cannot hold (use read_f32 for F64).
  Tensor read(const std::string& name) const;
  // The tensor converted to f32: F32 (copied), BF16, F16 and F64 (rounded to nearest);
  // ConfigError for integer and other dtypes.
  Tensor read_f32(const std::string& name) const;

 private:
  void close();
  void read_bytes(const std::string& name, uint64_t begin, uint64_t n, void* dst) const;

  std::string path_;
  int fd_ = -1;
  uint64_t data_start_ = 0, buffer_size_ = 0;
  std::vector<std::string> names_;
  std::map<std::string, SafetensorsInfo> info_;
  std::map<std::string, std::string> metadata_;
};

}  // namespace llm
