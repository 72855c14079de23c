#include "data/hdf5_util.h"

#include <cstring>
#include <filesystem>

#include "core/error.h"

namespace llm::h5 {

namespace {

std::string with_detail(const std::string& where, const std::string& what) {
  std::string msg = where + ": " + what;
  const std::string detail = last_error_detail();
  if (!detail.empty()) msg += " (HDF5: " + detail + ")";
  return msg;
}

// Reading or opening: the file is user input.
[[noreturn]] void fail_read(const std::string& where, const std::string& what) {
  throw ConfigError(with_detail(where, what));
}

// A problem found without an HDF5 call failing (no HDF5 detail to add).
[[noreturn]] void fail_plain(const std::string& where, const std::string& what) {
  throw ConfigError(where + ": " + what);
}

// Creating or writing: an environment problem or a bug.
[[noreturn]] void fail_write(const std::string& where, const std::string& what) {
  throw Error(with_detail(where, what));
}

herr_t collect_detail(unsigned /*n*/, const H5E_error2_t* err, void* data) {
  auto* out = static_cast<std::string*>(data);
  if (out->empty() && err && err->desc && *err->desc) {
    *out = err->desc;
    // A failed system call's description is a multi-line dump (time, file name, descriptor,
    // buffer address, sizes ...) around the one thing that matters: keep the system's message.
    const std::string key = "error message = '";
    const size_t b = out->find(key);
    const size_t e = b == std::string::npos ? b : out->find('\'', b + key.size());
    if (e != std::string::npos) *out = out->substr(b + key.size(), e - b - key.size());
  }
  return 0;
}

Id file_access(std::optional<size_t> sieve_bytes) {
  Id fapl(H5Pcreate(H5P_FILE_ACCESS), H5Pclose);
  LLM_CHECK(fapl.valid(), "H5Pcreate(H5P_FILE_ACCESS) failed");
  // Lock like HDF5 does by default, but keep working on file systems without flock (Lustre
  // mounts without -o flock, some NFS): HDF5 then skips the lock instead of failing.
  H5Pset_file_locking(fapl.get(), true, true);
  if (sieve_bytes) H5Pset_sieve_buf_size(fapl.get(), *sieve_bytes);
  return fapl;
}

Id string_memory_type(bool variable, hid_t file_type) {
  Id t(H5Tcopy(variable ? H5T_C_S1 : file_type), H5Tclose);
  if (variable) {
    H5Tset_size(t.get(), H5T_VARIABLE);
    H5Tset_cset(t.get(), H5Tget_cset(file_type));
  }
  return t;
}

// No HDF5 exit handler. A file whose close failed (a full disk) stays open inside HDF5, and the
// handler's second try at it crashed the process (SIGSEGV in H5F__close_cb, under exit()) after
// the error had been reported. Every file here is closed explicitly and the close checked, so the
// handler has nothing else to do. (Before main: ahead of any HDF5 call, as H5dont_atexit needs.)
const bool kNoHdf5AtExit = [] {
  H5dont_atexit();
  return true;
}();

}  // namespace

void silence_errors() {
  // The error-stack settings are per thread in a thread-safe HDF5 build.
  thread_local bool silenced = false;
  if (!silenced) {
    H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
    silenced = true;
  }
}

std::string last_error_detail() {
  std::string detail;
  H5Ewalk2(H5E_DEFAULT, H5E_WALK_UPWARD, collect_detail, &detail);  // most specific first
  return detail;
}

// ---- Id, Type, Space ---------------------------------------------------------------------

Id& Id::operator=(Id&& o) noexcept {
  if (this != &o) {
    reset();
    id_ = o.id_;
    close_ = o.close_;
    o.id_ = H5I_INVALID_HID;
  }
  return *this;
}

bool Id::reset() noexcept {
  bool ok = true;
  if (id_ >= 0 && close_) ok = close_(id_) >= 0;
  id_ = H5I_INVALID_HID;
  return ok;
}

Type Type::fixed_string(size_t size) {
  silence_errors();
  Type t = owned(H5Tcopy(H5T_C_S1));
  LLM_CHECK(t.id() >= 0 && H5Tset_size(t.id(), std::max<size_t>(size, 1)) >= 0 &&
                H5Tset_strpad(t.id(), H5T_STR_NULLTERM) >= 0 && H5Tset_cset(t.id(), H5T_CSET_UTF8) >= 0,
            "cannot make an HDF5 string type of ", size, " bytes");
  return t;
}

Space Space::scalar() {
  silence_errors();
  Space s(Id(H5Screate(H5S_SCALAR), H5Sclose));
  LLM_CHECK(s.id() >= 0, "H5Screate(H5S_SCALAR) failed");
  return s;
}

Space Space::simple_1d(int64_t size, int64_t max_size) {
  silence_errors();
  LLM_CHECK(size >= 0, "negative dataspace size ", size);
  const hsize_t dims = static_cast<hsize_t>(size);
  const hsize_t max = max_size < 0 ? H5S_UNLIMITED : static_cast<hsize_t>(max_size);
  Space s(Id(H5Screate_simple(1, &dims, &max), H5Sclose));
  LLM_CHECK(s.id() >= 0, "H5Screate_simple(", size, ", ", max_size, ") failed");
  return s;
}

void Space::select_1d(int64_t offset, int64_t count, const std::string& where) {
  const hsize_t start = static_cast<hsize_t>(offset), n = static_cast<hsize_t>(count);
  if (H5Sselect_hyperslab(id_.get(), H5S_SELECT_SET, &start, nullptr, &n, nullptr) < 0)
    fail_read(where, detail::concat("cannot select elements [", offset, ", ", offset + count, ")"));
}

// ---- Attributes --------------------------------------------------------------------------

Type Attribute::type() const {
  Type t = Type::owned(H5Aget_type(id_.get()));
  if (t.id() < 0) fail_read(where_, "cannot read the attribute's type");
  return t;
}

Space Attribute::space() const {
  Space s(Id(H5Aget_space(id_.get()), H5Sclose));
  if (s.id() < 0) fail_read(where_, "cannot read the attribute's dataspace");
  return s;
}

bool Object::has_attribute(const std::string& name) const {
  silence_errors();
  return H5Aexists(id_.get(), name.c_str()) > 0;
}

Attribute Object::open_attribute(const std::string& name) const {
  if (!has_attribute(name)) fail_plain(where_, "attribute '" + name + "' is missing");
  Id a(H5Aopen(id_.get(), name.c_str(), H5P_DEFAULT), H5Aclose);
  if (!a.valid()) fail_read(where_, "cannot open attribute '" + name + "'");
  return Attribute(std::move(a), where_ + ": attribute '" + name + "'");
}

namespace {

void write_scalar_attribute(Object& obj, const std::string& name, hid_t file_type, hid_t mem_type,
                            const void* value) {
  silence_errors();
  if (obj.has_attribute(name) && H5Adelete(obj.id(), name.c_str()) < 0)
    fail_write(obj.where(), "cannot replace attribute '" + name + "'");
  Space space = Space::scalar();
  Id a(H5Acreate2(obj.id(), name.c_str(), file_type, space.id(), H5P_DEFAULT, H5P_DEFAULT), H5Aclose);
  if (!a.valid()) fail_write(obj.where(), "cannot create attribute '" + name + "'");
  if (H5Awrite(a.get(), mem_type, value) < 0) fail_write(obj.where(), "cannot write attribute '" + name + "'");
  if (!a.reset()) fail_write(obj.where(), "cannot close attribute '" + name + "'");
}

// Opens a single-element attribute of one of the expected classes.
Attribute open_single(const Object& obj, const std::string& name, std::initializer_list<H5T_class_t> classes,
                      const char* kind) {
  Attribute a = obj.open_attribute(name);
  const H5T_class_t c = a.type().type_class();
  bool ok = false;
  for (H5T_class_t k : classes) ok = ok || c == k;
  if (!ok) fail_plain(a.where(), std::string("is not ") + kind);
  if (a.space().num_elements() != 1) fail_plain(a.where(), "holds more than one value");
  return a;
}

}  // namespace

void Object::write_string_attribute(const std::string& name, std::string_view value) {
  const std::string s(value);  // NUL-terminated copy
  Type t = Type::fixed_string(s.size() + 1);
  write_scalar_attribute(*this, name, t.id(), t.id(), s.c_str());
}

void Object::write_int64_attribute(const std::string& name, int64_t value) {
  write_scalar_attribute(*this, name, H5T_STD_I64LE, H5T_NATIVE_INT64, &value);
}

void Object::write_double_attribute(const std::string& name, double value) {
  write_scalar_attribute(*this, name, H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, &value);
}

std::string Object::read_string_attribute(const std::string& name) const {
  Attribute a = open_single(*this, name, {H5T_STRING}, "a string");
  Type ft = a.type();
  const bool variable = H5Tis_variable_str(ft.id()) > 0;
  Id mt = string_memory_type(variable, ft.id());
  if (variable) {
    char* p = nullptr;
    if (H5Aread(a.id(), mt.get(), &p) < 0) fail_read(a.where(), "cannot read the string");
    std::string s = p ? p : "";
    if (p) H5free_memory(p);
    return s;
  }
  std::vector<char> buf(ft.size() + 1, '\0');
  if (H5Aread(a.id(), mt.get(), buf.data()) < 0) fail_read(a.where(), "cannot read the string");
  std::string s(buf.data(), strnlen(buf.data(), ft.size()));
  if (H5Tget_strpad(ft.id()) == H5T_STR_SPACEPAD)
    while (!s.empty() && s.back() == ' ') s.pop_back();
  return s;
}

int64_t Object::read_int64_attribute(const std::string& name) const {
  Attribute a = open_single(*this, name, {H5T_INTEGER}, "an integer");
  int64_t v = 0;
  if (H5Aread(a.id(), H5T_NATIVE_INT64, &v) < 0) fail_read(a.where(), "cannot read the integer");
  return v;
}

double Object::read_double_attribute(const std::string& name) const {
  Attribute a = open_single(*this, name, {H5T_FLOAT, H5T_INTEGER}, "a number");
  double v = 0;
  if (H5Aread(a.id(), H5T_NATIVE_DOUBLE, &v) < 0) fail_read(a.where(), "cannot read the number");
  return v;
}

// ---- Datasets ----------------------------------------------------------------------------

Type Dataset::type() const {
  Type t = Type::owned(H5Dget_type(id_.get()));
  if (t.id() < 0) fail_read(where_, "cannot read the dataset's type");
  return t;
}

Space Dataset::space() const {
  Space s(Id(H5Dget_space(id_.get()), H5Sclose));
  if (s.id() < 0) fail_read(where_, "cannot read the dataset's dataspace");
  return s;
}

namespace {

int64_t extent_1d(const Space& s, const std::string& where) {
  const int rank = s.rank();
  if (rank != 1) fail_plain(where, detail::concat("expected a 1-D dataset, found rank ", rank));
  hsize_t n = 0;
  H5Sget_simple_extent_dims(s.id(), &n, nullptr);
  return static_cast<int64_t>(n);
}

}  // namespace

int64_t Dataset::size() const { return extent_1d(space(), where_); }

void Dataset::set_extent(int64_t size) {
  silence_errors();
  const hsize_t n = static_cast<hsize_t>(size);
  if (H5Dset_extent(id_.get(), &n) < 0) fail_write(where_, detail::concat("cannot resize to ", size, " elements"));
}

void Dataset::read(int64_t offset, int64_t n, hid_t mem_type, void* out) const {
  silence_errors();
  if (n == 0) return;
  Space file_space = space();
  const int64_t size = extent_1d(file_space, where_);
  if (offset < 0 || n < 0 || offset > size - n)
    throw Error(detail::concat(where_, ": read of [", offset, ", ", offset + n, ") outside its ", size, " elements"));
  file_space.select_1d(offset, n, where_);
  Space mem_space = Space::simple_1d(n, n);
  if (H5Dread(id_.get(), mem_type, mem_space.id(), file_space.id(), H5P_DEFAULT, out) < 0)
    fail_read(where_, detail::concat("cannot read elements [", offset, ", ", offset + n, ")"));
}

void Dataset::write(int64_t offset, int64_t n, hid_t mem_type, const void* data) {
  silence_errors();
  if (n == 0) return;
  Space file_space = space();
  const int64_t size = extent_1d(file_space, where_);
  if (offset < 0 || n < 0 || offset > size - n)
    throw Error(detail::concat(where_, ": write of [", offset, ", ", offset + n, ") outside its ", size, " elements"));
  file_space.select_1d(offset, n, where_);
  Space mem_space = Space::simple_1d(n, n);
  if (H5Dwrite(id_.get(), mem_type, mem_space.id(), file_space.id(), H5P_DEFAULT, data) < 0)
    fail_write(where_, detail::concat("cannot write elements [", offset, ", ", offset + n, ")"));
}

// ---- Containers and files ----------------------------------------------------------------

std::string Container::child_where(const std::string& name) const {
  return where_ == file_ ? file_ + ":/" + name : where_ + "/" + name;
}

bool Container::has(const std::string& name) const {
  silence_errors();
  return H5Lexists(id_.get(), name.c_str(), H5P_DEFAULT) > 0;
}

namespace {

Id link_create_intermediate() {
  Id lcpl(H5Pcreate(H5P_LINK_CREATE), H5Pclose);
  LLM_CHECK(lcpl.valid() && H5Pset_create_intermediate_group(lcpl.get(), 1) >= 0, "cannot make a link property list");
  return lcpl;
}

}  // namespace

Group Container::create_group(const std::string& name) {
  silence_errors();
  Id lcpl = link_create_intermediate();
  Id g(H5Gcreate2(id_.get(), name.c_str(), lcpl.get(), H5P_DEFAULT, H5P_DEFAULT), H5Gclose);
  if (!g.valid()) fail_write(child_where(name), "cannot create the group");
  return Group(std::move(g), file_, child_where(name));
}

Group Container::open_group(const std::string& name) const {
  silence_errors();
  if (!has(name)) fail_plain(child_where(name), "group is missing");
  Id g(H5Gopen2(id_.get(), name.c_str(), H5P_DEFAULT), H5Gclose);
  if (!g.valid()) fail_read(child_where(name), "cannot open the group");
  return Group(std::move(g), file_, child_where(name));
}

Dataset Container::create_dataset(const std::string& name, hid_t type, int64_t size,
                                  const DatasetCreateOptions& options) {
  silence_errors();
  const std::string where = child_where(name);
  LLM_CHECK(!options.extendible || options.chunk > 0, where, ": an extendible dataset must be chunked");
  Id dcpl(H5Pcreate(H5P_DATASET_CREATE), H5Pclose);
  LLM_CHECK(dcpl.valid(), "H5Pcreate(H5P_DATASET_CREATE) failed");
  if (options.chunk > 0) {
    const hsize_t chunk = static_cast<hsize_t>(options.chunk);
    if (H5Pset_chunk(dcpl.get(), 1, &chunk) < 0) fail_write(where, detail::concat("bad chunk size ", options.chunk));
  }
  Space space = Space::simple_1d(size, options.extendible ? -1 : size);
  Id lcpl = link_create_intermediate();
  Id d(H5Dcreate2(id_.get(), name.c_str(), type, space.id(), lcpl.get(), dcpl.get(), H5P_DEFAULT), H5Dclose);
  if (!d.valid()) fail_write(where, "cannot create the dataset");
  return Dataset(std::move(d), file_, where);
}

Dataset Container::open_dataset(const std::string& name, const std::optional<ChunkCache>& cache) const {
  silence_errors();
  const std::string where = child_where(name);
  if (!has(name)) fail_plain(where, "dataset is missing");
  Id dapl(H5Pcreate(H5P_DATASET_ACCESS), H5Pclose);
  LLM_CHECK(dapl.valid(), "H5Pcreate(H5P_DATASET_ACCESS) failed");
  if (cache) H5Pset_chunk_cache(dapl.get(), cache->nslots, cache->nbytes, cache->w0);
  Id d(H5Dopen2(id_.get(), name.c_str(), dapl.get()), H5Dclose);
  if (!d.valid()) fail_read(where, "cannot open the dataset");
  return Dataset(std::move(d), file_, where);
}

File File::create(const std::string& path, bool truncate) {
  silence_errors();
  Id fapl = file_access(std::nullopt);
  Id f(H5Fcreate(path.c_str(), truncate ? H5F_ACC_TRUNC : H5F_ACC_EXCL, H5P_DEFAULT, fapl.get()), H5Fclose);
  if (!f.valid()) fail_write(path, truncate ? "cannot create the file" : "cannot create the file (does it exist?)");
  return File(std::move(f), path);
}

File File::open(const std::string& path, bool writable, std::optional<size_t> sieve_buffer_bytes) {
  silence_errors();
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec))
    fail_plain(path, std::filesystem::is_directory(path, ec) ? "is a directory, not an HDF5 file"
                     : std::filesystem::exists(path, ec)     ? "not a regular file (an HDF5 file expected)"
                                                             : "no such file");
  Id fapl = file_access(sieve_buffer_bytes);
  Id f(H5Fopen(path.c_str(), writable ? H5F_ACC_RDWR : H5F_ACC_RDONLY, fapl.get()), H5Fclose);
  if (!f.valid()) fail_read(path, "cannot open as an HDF5 file (truncated or corrupt?)");
  return File(std::move(f), path);
}

void File::flush() {
  silence_errors();
  if (H5Fflush(id_.get(), H5F_SCOPE_LOCAL) < 0) fail_write(file_, "cannot flush the file");
}

void File::close() {
  silence_errors();
  if (!id_.reset()) fail_write(file_, "closing the file failed");
}

}  // namespace llm::h5
