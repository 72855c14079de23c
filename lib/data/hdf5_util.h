// RAII wrappers for the HDF5 C API, shared by token datasets and (later) checkpoints.
//
// Every handle owns its hid_t and closes it in the destructor. Every failing HDF5 call becomes
// an exception whose message names the file (and the object or attribute inside it) and adds
// HDF5's own most specific reason, e.g.
//   "data/shard_00001.h5: cannot open the file (HDF5: truncated file: eof = 4096, ...)".
// Failures while reading or opening throw ConfigError (the file is user input: missing, corrupt,
// not HDF5); failures while creating or writing throw Error (disk full, permissions, bugs).
// HDF5's automatic printing of its error stack to stderr is switched off on every thread that
// goes through these wrappers (h5::silence_errors()).
//
// Threads: Debian's libhdf5 is built thread-safe (one global lock), so concurrent calls are
// correct but serialised; callers that keep per-handle scratch state must still not share a
// handle between threads.
#pragma once
#include <hdf5.h>

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

namespace llm::h5 {

// Turns off HDF5's automatic error printing for the calling thread (idempotent, cheap).
void silence_errors();

// HDF5's most specific message for the error just raised on this thread ("" when none).
std::string last_error_detail();

// Owns one hid_t and the function that closes it. A null closer borrows (predefined types).
class Id {
 public:
  using Closer = herr_t (*)(hid_t);
  Id() = default;
  Id(hid_t id, Closer close) : id_(id), close_(close) {}
  Id(Id&& o) noexcept : id_(o.id_), close_(o.close_) { o.id_ = H5I_INVALID_HID; }
  Id& operator=(Id&& o) noexcept;
  Id(const Id&) = delete;
  Id& operator=(const Id&) = delete;
  ~Id() { reset(); }
  hid_t get() const { return id_; }
  bool valid() const { return id_ >= 0; }
  // Closes now; returns false when HDF5 reported a failure while closing.
  bool reset() noexcept;

 private:
  hid_t id_ = H5I_INVALID_HID;
  Closer close_ = nullptr;
};

// A datatype: either borrowed (predefined, e.g. H5T_STD_U16LE) or owned (copied/derived).
class Type {
 public:
  static Type borrowed(hid_t predefined) { return Type(Id(predefined, nullptr)); }
  static Type owned(hid_t id) { return Type(Id(id, H5Tclose)); }
  // A fixed-length, NUL-terminated UTF-8 string type of `size` bytes (size >= 1).
  static Type fixed_string(size_t size);
  hid_t id() const { return id_.get(); }
  H5T_class_t type_class() const { return H5Tget_class(id_.get()); }
  size_t size() const { return H5Tget_size(id_.get()); }
  // Same type (class, size, byte order, sign): HDF5's H5Tequal.
  bool equals(hid_t other) const { return H5Tequal(id_.get(), other) > 0; }

 private:
  explicit Type(Id id) : id_(std::move(id)) {}
  Id id_;
};

// The in-memory HDF5 type of a C++ arithmetic type.
template <typename T>
hid_t native_type() {
  if constexpr (std::is_same_v<T, int8_t>) return H5T_NATIVE_INT8;
  else if constexpr (std::is_same_v<T, uint8_t>) return H5T_NATIVE_UINT8;
  else if constexpr (std::is_same_v<T, int16_t>) return H5T_NATIVE_INT16;
  else if constexpr (std::is_same_v<T, uint16_t>) return H5T_NATIVE_UINT16;
  else if constexpr (std::is_same_v<T, int32_t>) return H5T_NATIVE_INT32;
  else if constexpr (std::is_same_v<T, uint32_t>) return H5T_NATIVE_UINT32;
  else if constexpr (std::is_same_v<T, int64_t>) return H5T_NATIVE_INT64;
  else if constexpr (std::is_same_v<T, uint64_t>) return H5T_NATIVE_UINT64;
  else if constexpr (std::is_same_v<T, float>) return H5T_NATIVE_FLOAT;
  else if constexpr (std::is_same_v<T, double>) return H5T_NATIVE_DOUBLE;
  else static_assert(sizeof(T) == 0, "no HDF5 native type for this C++ type");
}

// A dataspace. Only what 1-D token arrays and scalar attributes need, plus generic access.
class Space {
 public:
  static Space scalar();
  // 1-D of `size` elements; max_size < 0 means unlimited (needs a chunked dataset).
  static Space simple_1d(int64_t size, int64_t max_size);
  explicit Space(Id id) : id_(std::move(id)) {}
  hid_t id() const { return id_.get(); }
  int rank() const { return H5Sget_simple_extent_ndims(id_.get()); }
  int64_t num_elements() const { return static_cast<int64_t>(H5Sget_simple_extent_npoints(id_.get())); }
  // Selects [offset, offset + count) of a 1-D space; `where` names it in errors.
  void select_1d(int64_t offset, int64_t count, const std::string& where);

 private:
  Id id_;
};

class Attribute {
 public:
  Attribute(Id id, std::string where) : id_(std::move(id)), where_(std::move(where)) {}
  hid_t id() const { return id_.get(); }
  const std::string& where() const { return where_; }  // "file.h5:/object attribute 'name'"
  Type type() const;
  Space space() const;

 private:
  Id id_;
  std::string where_;
};

// Anything that carries attributes: a file's root group, a group, a dataset.
class Object {
 public:
  hid_t id() const { return id_.get(); }
  const std::string& file_path() const { return file_; }
  // "file.h5" for a file's root, "file.h5:/name" for objects inside it.
  const std::string& where() const { return where_; }

  bool has_attribute(const std::string& name) const;
  // Writers replace an existing attribute of the same name.
  void write_string_attribute(const std::string& name, std::string_view value);
  void write_int64_attribute(const std::string& name, int64_t value);
  void write_double_attribute(const std::string& name, double value);
  // Readers throw ConfigError naming file and attribute when it is missing or of the wrong kind.
  // Strings may be fixed-length or variable-length (h5py's default); integers any width.
  std::string read_string_attribute(const std::string& name) const;
  int64_t read_int64_attribute(const std::string& name) const;
  double read_double_attribute(const std::string& name) const;
  Attribute open_attribute(const std::string& name) const;

 protected:
  Object(Id id, std::string file, std::string where)
      : id_(std::move(id)), file_(std::move(file)), where_(std::move(where)) {}
  Id id_;
  std::string file_, where_;
};

// HDF5's per-dataset chunk cache (H5Pset_chunk_cache). nbytes = 0 disables it: reads of
// uncompressed chunks then go straight to the file for exactly the selected elements.
struct ChunkCache {
  size_t nslots = 521;
  size_t nbytes = 1 << 20;
  double w0 = 0.75;
};

struct DatasetCreateOptions {
  int64_t chunk = 0;        // elements per chunk; 0 = contiguous layout
  bool extendible = false;  // unlimited max size (requires chunk > 0)
};

// A dataset. The typed helpers cover 1-D arrays; id() gives the raw handle for anything else.
class Dataset : public Object {
 public:
  Dataset(Id id, std::string file, std::string where) : Object(std::move(id), std::move(file), std::move(where)) {}
  Type type() const;
  Space space() const;
  // Elements of a 1-D dataset (ConfigError if it is not 1-D).
  int64_t size() const;
  void set_extent(int64_t size);
  // Hyperslab I/O of [offset, offset + n) in a 1-D dataset; mem_type is the buffer's type.
  void read(int64_t offset, int64_t n, hid_t mem_type, void* out) const;
  void write(int64_t offset, int64_t n, hid_t mem_type, const void* data);
  template <typename T>
  void read(int64_t offset, int64_t n, T* out) const {
    read(offset, n, native_type<T>(), out);
  }
  template <typename T>
  void write(int64_t offset, std::span<const T> data) {
    write(offset, static_cast<int64_t>(data.size()), native_type<T>(), data.data());
  }
  template <typename T>
  std::vector<T> read_all() const {
    std::vector<T> v(static_cast<size_t>(size()));
    read(0, static_cast<int64_t>(v.size()), native_type<T>(), v.data());
    return v;
  }
};

class Group;

// A file or a group: something that holds datasets and groups (names may be paths "a/b").
class Container : public Object {
 public:
  bool has(const std::string& name) const;  // a link of that name exists
  Group create_group(const std::string& name);
  Group open_group(const std::string& name) const;
  // 1-D dataset of `size` elements of file type `type`.
  Dataset create_dataset(const std::string& name, hid_t type, int64_t size, const DatasetCreateOptions& options = {});
  // Convenience: a contiguous 1-D dataset holding `data`, stored as `file_type`.
  template <typename T>
  Dataset write_dataset(const std::string& name, hid_t file_type, std::span<const T> data) {
    Dataset d = create_dataset(name, file_type, static_cast<int64_t>(data.size()));
    d.write(0, data);
    return d;
  }
  Dataset open_dataset(const std::string& name, const std::optional<ChunkCache>& cache = std::nullopt) const;

 protected:
  using Object::Object;
  std::string child_where(const std::string& name) const;
};

class Group : public Container {
 public:
  Group(Id id, std::string file, std::string where) : Container(std::move(id), std::move(file), std::move(where)) {}
};

class File : public Container {
 public:
  // Creates a new file; refuses to replace an existing one unless `truncate`.
  static File create(const std::string& path, bool truncate = false);
  // Opens an existing file (ConfigError naming it when missing, unreadable or not HDF5).
  // sieve_buffer_bytes: HDF5's sieve buffer (H5Pset_sieve_buf_size; default 64 KiB), the
  // minimum a small uncached read fetches from disk.
  static File open(const std::string& path, bool writable = false,
                   std::optional<size_t> sieve_buffer_bytes = std::nullopt);
  const std::string& path() const { return file_; }
  void flush();
  // Closes now and reports failures (the destructor closes silently).
  void close();

 private:
  File(Id id, std::string path) : Container(std::move(id), path, path) {}
};

}  // namespace llm::h5
