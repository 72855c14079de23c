#include "io/safetensors.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <bit>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <set>

#include "core/error.h"
#include "core/fsync.h"
#include "data/json.h"
#include "data/utf8.h"

namespace llm {

static_assert(std::endian::native == std::endian::little,
              "safetensors data is little-endian; this reader copies bytes as they are");

namespace {

constexpr uint64_t kMaxHeaderBytes = 100'000'000;  // the reference implementation's limit

struct DTypeEntry {
  std::string_view name;
  size_t size;
};
// The specification's byte-sized dtypes.
constexpr DTypeEntry kDTypes[] = {
    {"BOOL", 1}, {"U8", 1},  {"I8", 1},  {"F8_E5M2", 1}, {"F8_E4M3", 1}, {"F8_E8M0", 1},
    {"I16", 2},  {"U16", 2}, {"F16", 2}, {"BF16", 2},    {"I32", 4},     {"U32", 4},
    {"F32", 4},  {"F64", 8}, {"I64", 8}, {"U64", 8},
};

[[noreturn]] void fail(const std::string& path, const std::string& why) { throw ConfigError(path + ": " + why); }

std::string errno_text() { return std::strerror(errno); }

class Fd {
 public:
  explicit Fd(int fd = -1) : fd_(fd) {}
  ~Fd() {
    if (fd_ >= 0) ::close(fd_);
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  int get() const { return fd_; }
  int release() {
    const int f = fd_;
    fd_ = -1;
    return f;
  }

 private:
  int fd_;
};

// Writes all n bytes or returns false (errno set).
bool write_all(int fd, const void* data, size_t n) {
  const char* p = static_cast<const char*>(data);
  while (n > 0) {
    const ssize_t w = ::write(fd, p, std::min<size_t>(n, size_t{1} << 30));
    if (w < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    p += w;
    n -= static_cast<size_t>(w);
  }
  return true;
}

std::string temp_name(const std::string& path) {
  static std::atomic<uint64_t> counter{0};
  return path + ".tmp-" + std::to_string(::getpid()) + "-" + std::to_string(counter++);
}

void append_uint(std::string& s, uint64_t v) { s += std::to_string(v); }

}  // namespace

size_t safetensors_dtype_size(std::string_view dtype) {
  for (const DTypeEntry& e : kDTypes)
    if (e.name == dtype) return e.size;
  return 0;
}

std::optional<DType> dtype_from_safetensors(std::string_view dtype) {
  if (dtype == "F32") return DType::f32;
  if (dtype == "BF16") return DType::bf16;
  if (dtype == "F16") return DType::f16;
  if (dtype == "I32") return DType::i32;
  if (dtype == "I64") return DType::i64;
  if (dtype == "U16") return DType::u16;
  if (dtype == "U8") return DType::u8;
  return std::nullopt;
}

std::string_view safetensors_dtype_name(DType dtype) {
  switch (dtype) {
    case DType::f32: return "F32";
    case DType::bf16: return "BF16";
    case DType::f16: return "F16";
    case DType::i32: return "I32";
    case DType::i64: return "I64";
    case DType::u16: return "U16";
    case DType::u8: return "U8";
  }
  LLM_FAIL("safetensors: unhandled dtype ", static_cast<int>(dtype));
}

// ---------------------------------------------------------------------------------------------
// Writer

void write_safetensors_streamed(const std::string& path, const std::vector<SafetensorsEntry>& entries,
                                const std::function<Tensor(size_t index)>& produce,
                                const std::map<std::string, std::string>& metadata) {
  std::string header = "{";
  bool first = true;
  if (!metadata.empty()) {
    header += "\"__metadata__\":{";
    for (const auto& [k, v] : metadata) {
      LLM_CHECK(find_invalid_utf8(k) == std::string::npos && find_invalid_utf8(v) == std::string::npos,
                path, ": safetensors metadata '", k, "' is not valid UTF-8");
      if (!first) header += ',';
      first = false;
      header += json::quote(k) + ':' + json::quote(v);
    }
    header += '}';
    first = false;
  }
  std::set<std::string_view> seen;
  uint64_t offset = 0;
  for (const SafetensorsEntry& e : entries) {
    LLM_CHECK(e.name != "__metadata__", path, ": '__metadata__' cannot name a tensor");
    LLM_CHECK(find_invalid_utf8(e.name) == std::string::npos, path, ": tensor name is not valid UTF-8");
    LLM_CHECK(seen.insert(e.name).second, path, ": tensor '", e.name, "' given twice");
    for (int64_t d : e.shape) LLM_CHECK(d >= 0, path, ": tensor '", e.name, "' has shape ", shape_str(e.shape));
    if (!first) header += ',';
    first = false;
    header += json::quote(e.name);
    header += ":{\"dtype\":\"";
    header += safetensors_dtype_name(e.dtype);
    header += "\",\"shape\":[";
    for (size_t d = 0; d < e.shape.size(); ++d) {
      if (d) header += ',';
      append_uint(header, static_cast<uint64_t>(e.shape[d]));
    }
    header += "],\"data_offsets\":[";
    append_uint(header, offset);
    header += ',';
    offset += static_cast<uint64_t>(numel(e.shape)) * dtype_size(e.dtype);
    append_uint(header, offset);
    header += "]}";
  }
  header += '}';
  header.append((8 - header.size() % 8) % 8, ' ');
  LLM_CHECK(header.size() <= kMaxHeaderBytes, path, ": safetensors header of ", header.size(),
            " bytes exceeds the format's 100 MB limit");

  const std::string tmp = temp_name(path);
  Fd fd(::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644));
  if (fd.get() < 0) fail(path, "cannot create " + tmp + ": " + errno_text());
  try {
    auto check = [&](bool ok, const char* what) {
      if (!ok) fail(path, std::string(what) + ": " + errno_text());
    };
    unsigned char len[8];
    const uint64_t n = header.size();
    for (int i = 0; i < 8; ++i) len[i] = static_cast<unsigned char>(n >> (8 * i));
    check(write_all(fd.get(), len, 8) && write_all(fd.get(), header.data(), header.size()),
          "cannot write the safetensors header");
    for (size_t i = 0; i < entries.size(); ++i) {
      const SafetensorsEntry& e = entries[i];
      const Tensor t = produce(i);
      LLM_CHECK(t.defined(), path, ": tensor '", e.name, "' is undefined");
      LLM_CHECK(t.device().is_cpu(), path, ": tensor '", e.name, "' is on ", t.device().str(), ", not the host");
      LLM_CHECK(t.is_contiguous(), path, ": tensor '", e.name, "' is not contiguous");
      LLM_CHECK(t.dtype() == e.dtype && t.shape() == e.shape, path, ": tensor '", e.name, "' is ",
                shape_str(t.shape()), " ", dtype_name(t.dtype()), ", announced as ", shape_str(e.shape), " ",
                dtype_name(e.dtype));
      check(write_all(fd.get(), t.raw(), t.nbytes()), "cannot write tensor data");
    }
    check(::fsync(fd.get()) == 0, "cannot fsync");
    check(::close(fd.release()) == 0, "cannot close");
    check(::rename(tmp.c_str(), path.c_str()) == 0, "cannot rename the temporary file into place");
  } catch (...) {
    ::unlink(tmp.c_str());
    throw;
  }
  const std::filesystem::path dir = std::filesystem::path(path).parent_path();
  fsync_path(dir.empty() ? std::filesystem::path(".") : dir);
}

void write_safetensors(const std::string& path, const std::vector<std::pair<std::string, Tensor>>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  std::vector<SafetensorsEntry> entries;
  entries.reserve(tensors.size());
  for (const auto& [name, t] : tensors) {
    LLM_CHECK(t.defined(), path, ": tensor '", name, "' is undefined");
    entries.push_back({name, t.dtype(), t.shape()});
  }
  write_safetensors_streamed(path, entries, [&](size_t i) { return tensors[i].second; }, metadata);
}

// ---------------------------------------------------------------------------------------------
// Reader

SafetensorsFile::~SafetensorsFile() { close(); }

SafetensorsFile::SafetensorsFile(SafetensorsFile&& other) noexcept { *this = std::move(other); }

SafetensorsFile& SafetensorsFile::operator=(SafetensorsFile&& other) noexcept {
  if (this != &other) {
    close();
    path_ = std::move(other.path_);
    fd_ = other.fd_;
    other.fd_ = -1;
    data_start_ = other.data_start_;
    buffer_size_ = other.buffer_size_;
    names_ = std::move(other.names_);
    info_ = std::move(other.info_);
    metadata_ = std::move(other.metadata_);
  }
  return *this;
}

void SafetensorsFile::close() {
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
}

void SafetensorsFile::open(const std::string& path) {
  close();
  names_.clear();
  info_.clear();
  metadata_.clear();
  path_ = path;

  Fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (fd.get() < 0) fail(path, "cannot open safetensors file: " + errno_text());
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) fail(path, "cannot stat: " + errno_text());
  if (!S_ISREG(st.st_mode)) fail(path, "not a regular file");
  const uint64_t file_size = static_cast<uint64_t>(st.st_size);
  if (file_size < 8)
    fail(path, "not a safetensors file: " + std::to_string(file_size) +
                   " bytes, shorter than the 8-byte header length");

  auto pread_all = [&](void* dst, uint64_t n, uint64_t at) {
    char* p = static_cast<char*>(dst);
    while (n > 0) {
      const ssize_t r = ::pread(fd.get(), p, std::min<uint64_t>(n, uint64_t{1} << 30), static_cast<off_t>(at));
      if (r < 0 && errno == EINTR) continue;
      if (r < 0) fail(path, "read error: " + errno_text());
      if (r == 0) fail(path, "file ended early while reading the header");
      p += r, n -= static_cast<uint64_t>(r), at += static_cast<uint64_t>(r);
    }
  };
  unsigned char len[8];
  pread_all(len, 8, 0);
  uint64_t header_size = 0;
  for (int i = 0; i < 8; ++i) header_size |= static_cast<uint64_t>(len[i]) << (8 * i);
  if (header_size > kMaxHeaderBytes)
    fail(path, "header length " + std::to_string(header_size) + " exceeds the 100 MB limit (corrupt file?)");
  if (header_size > file_size - 8)
    fail(path, "header length " + std::to_string(header_size) + " is larger than the file (" +
                   std::to_string(file_size) + " bytes)");
  std::string text(header_size, '\0');
  pread_all(text.data(), header_size, 8);
  if (text.empty() || text[0] != '{') fail(path, "safetensors header does not start with '{'");
  const json::Value header = json::parse(text, path + " (safetensors header)");
  if (!header.is_object()) fail(path, "safetensors header is not a JSON object");

  const uint64_t buffer_size = file_size - 8 - header_size;
  std::vector<std::pair<std::string, SafetensorsInfo>> entries;  // header order
  for (const auto& [name, v] : header.as_object()) {
    if (name == "__metadata__") {
      if (v.is_null()) continue;  // the reference reader's Option<HashMap>: null is no metadata
      if (!v.is_object()) fail(path, "\"__metadata__\" is not a JSON object");
      for (const auto& [k, mv] : v.as_object()) {
        if (!mv.is_string()) fail(path, "metadata value of '" + k + "' is not a string");
        metadata_[k] = mv.as_string();
      }
      continue;
    }
    const std::string where = "tensor '" + name + "'";
    if (!v.is_object()) fail(path, where + ": entry is not a JSON object");
    // (other keys are ignored, as the reference reader's serde structs ignore them)
    const json::Value* dtype = v.find("dtype");
    const json::Value* shape = v.find("shape");
    const json::Value* offsets = v.find("data_offsets");
    if (!dtype) fail(path, where + ": missing key 'dtype'");
    if (!shape) fail(path, where + ": missing key 'shape'");
    if (!offsets) fail(path, where + ": missing key 'data_offsets'");
    SafetensorsInfo info;
    if (!dtype->is_string()) fail(path, where + ": 'dtype' is not a string");
    info.dtype = dtype->as_string();
    const size_t esize = safetensors_dtype_size(info.dtype);
    if (esize == 0) fail(path, where + ": unknown dtype '" + info.dtype + "'");
    if (!shape->is_array()) fail(path, where + ": 'shape' is not an array");
    uint64_t count = 1;
    bool overflow = false;
    for (const json::Value& d : shape->as_array()) {
      if (!d.is_integer() || d.as_int() < 0)
        fail(path, where + ": 'shape' entries must be non-negative integers");
      info.shape.push_back(d.as_int());
      overflow |= __builtin_mul_overflow(count, static_cast<uint64_t>(d.as_int()), &count);
    }
    if (!offsets->is_array() || offsets->as_array().size() != 2)
      fail(path, where + ": 'data_offsets' must be [begin, end]");
    for (const json::Value& o : offsets->as_array())
      if (!o.is_integer() || o.as_int() < 0) fail(path, where + ": 'data_offsets' must be non-negative integers");
    info.begin = static_cast<uint64_t>(offsets->as_array()[0].as_int());
    info.end = static_cast<uint64_t>(offsets->as_array()[1].as_int());
    if (info.begin > info.end)
      fail(path, where + ": data_offsets [" + std::to_string(info.begin) + ", " + std::to_string(info.end) +
                     "] has begin > end");
    uint64_t bytes = 0;
    overflow |= __builtin_mul_overflow(count, static_cast<uint64_t>(esize), &bytes);
    if (overflow || bytes != info.nbytes())
      fail(path, where + ": " + std::to_string(info.nbytes()) + " bytes in data_offsets, but shape " +
                     shape_str(info.shape) + " of " + info.dtype + " needs " +
                     (overflow ? std::string("more than 2^64") : std::to_string(bytes)));
    if (info.end > buffer_size)
      fail(path, where + ": data_offsets [" + std::to_string(info.begin) + ", " + std::to_string(info.end) +
                     "] outside the " + std::to_string(buffer_size) + "-byte data buffer");
    entries.emplace_back(name, std::move(info));
  }

  // The tensors must tile the buffer: sorted by offset, each begins where the previous ended.
  std::stable_sort(entries.begin(), entries.end(), [](const auto& a, const auto& b) {
    return std::pair(a.second.begin, a.second.end) < std::pair(b.second.begin, b.second.end);
  });
  uint64_t cursor = 0;
  std::string previous;
  for (const auto& [name, info] : entries) {
    if (info.begin < cursor)
      fail(path, "tensor '" + name + "' overlaps tensor '" + previous + "' (begins at " +
                     std::to_string(info.begin) + ", before byte " + std::to_string(cursor) + ")");
    if (info.begin > cursor)
      fail(path, "hole in the data buffer: bytes [" + std::to_string(cursor) + ", " + std::to_string(info.begin) +
                     ") before tensor '" + name + "' belong to no tensor");
    cursor = info.end;
    previous = name;
  }
  if (cursor != buffer_size)
    fail(path, "the data buffer has " + std::to_string(buffer_size - cursor) +
                   " trailing bytes that belong to no tensor (tensors end at byte " + std::to_string(cursor) + " of " +
                   std::to_string(buffer_size) + ")");

  for (auto& [name, info] : entries) {
    names_.push_back(name);
    info_.emplace(name, std::move(info));
  }
  data_start_ = 8 + header_size;
  buffer_size_ = buffer_size;
  fd_ = fd.release();
}

const SafetensorsInfo& SafetensorsFile::info(const std::string& name) const {
  auto it = info_.find(name);
  if (it == info_.end()) fail(path_, "no tensor '" + name + "'");
  return it->second;
}

void SafetensorsFile::read_bytes(const std::string& name, uint64_t begin, uint64_t n, void* dst) const {
  LLM_CHECK(fd_ >= 0, "SafetensorsFile: read of '", name, "' before open()");
  char* p = static_cast<char*>(dst);
  uint64_t at = data_start_ + begin;
  while (n > 0) {
    const ssize_t r = ::pread(fd_, p, std::min<uint64_t>(n, uint64_t{1} << 30), static_cast<off_t>(at));
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) fail(path_, "tensor '" + name + "': read error: " + errno_text());
    if (r == 0) fail(path_, "tensor '" + name + "': file ended early (truncated after it was opened?)");
    p += r, n -= static_cast<uint64_t>(r), at += static_cast<uint64_t>(r);
  }
}

Tensor SafetensorsFile::read(const std::string& name) const {
  const SafetensorsInfo& in = info(name);
  const std::optional<DType> dt = dtype_from_safetensors(in.dtype);
  if (!dt)
    fail(path_, "tensor '" + name + "' has dtype " + in.dtype + ", which no libllm tensor type holds" +
                    (in.dtype == "F64" ? " (read_f32 converts it)" : ""));
  Tensor t = Tensor::empty(in.shape, *dt);
  read_bytes(name, in.begin, in.nbytes(), t.raw());
  return t;
}

Tensor SafetensorsFile::read_f32(const std::string& name) const {
  const SafetensorsInfo& in = info(name);
  if (in.dtype == "F32") return read(name);
  const size_t esize = safetensors_dtype_size(in.dtype);
  if (in.dtype != "BF16" && in.dtype != "F16" && in.dtype != "F64")
    fail(path_, "tensor '" + name + "' has dtype " + in.dtype + "; expected a floating-point type (F32, BF16, F16, F64)");
  Tensor t = Tensor::empty(in.shape, DType::f32);
  float* out = t.data<float>();
  const uint64_t n = static_cast<uint64_t>(t.numel());
  constexpr uint64_t kChunk = 1 << 20;  // elements per read
  std::vector<unsigned char> buf(std::min(n, kChunk) * esize);
  for (uint64_t i = 0; i < n; i += kChunk) {
    const uint64_t m = std::min(kChunk, n - i);
    read_bytes(name, in.begin + i * esize, m * esize, buf.data());
    if (in.dtype == "F64") {
      for (uint64_t j = 0; j < m; ++j) {
        double d;
        std::memcpy(&d, buf.data() + 8 * j, 8);
        out[i + j] = static_cast<float>(d);
      }
    } else {
      const bool bf = in.dtype == "BF16";
      for (uint64_t j = 0; j < m; ++j) {
        uint16_t h;
        std::memcpy(&h, buf.data() + 2 * j, 2);
        out[i + j] = bf ? bf16_to_f32(h) : f16_to_f32(h);
      }
    }
  }
  return t;
}

}  // namespace llm
