#include "data/index_cache.h"

#include <hdf5.h>
#include <unistd.h>

#include <filesystem>

#include "core/error.h"
#include "core/log.h"
#include "data/tokenizer.h"

namespace llm {

namespace {

namespace fs = std::filesystem;

// Minimal scoped HDF5 id.
struct H5Id {
  hid_t id = -1;
  herr_t (*close)(hid_t) = nullptr;
  H5Id(hid_t i, herr_t (*c)(hid_t)) : id(i), close(c) {}
  ~H5Id() {
    if (id >= 0 && close) close(id);
  }
  H5Id(const H5Id&) = delete;
  H5Id& operator=(const H5Id&) = delete;
};

void write_vector(hid_t file, const char* name, const std::vector<int64_t>& v) {
  hsize_t n = v.size();
  H5Id space(H5Screate_simple(1, &n, nullptr), H5Sclose);
  H5Id set(H5Dcreate2(file, name, H5T_STD_I64LE, space.id, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT), H5Dclose);
  LLM_CHECK(set.id >= 0, "cannot create ", name, " in the index cache");
  if (n) LLM_CHECK(H5Dwrite(set.id, H5T_NATIVE_INT64, H5S_ALL, H5S_ALL, H5P_DEFAULT, v.data()) >= 0, "write ", name);
}

bool read_vector(hid_t file, const char* name, std::vector<int64_t>& v) {
  if (H5Lexists(file, name, H5P_DEFAULT) <= 0) return false;
  H5Id set(H5Dopen2(file, name, H5P_DEFAULT), H5Dclose);
  H5Id space(H5Dget_space(set.id), H5Sclose);
  if (set.id < 0 || space.id < 0 || H5Sget_simple_extent_ndims(space.id) != 1) return false;
  hsize_t n = 0;
  H5Sget_simple_extent_dims(space.id, &n, nullptr);
  v.resize(n);
  return n == 0 || H5Dread(set.id, H5T_NATIVE_INT64, H5S_ALL, H5S_ALL, H5P_DEFAULT, v.data()) >= 0;
}

void write_string_attr(hid_t file, const char* name, const std::string& s) {
  H5Id type(H5Tcopy(H5T_C_S1), H5Tclose);
  H5Tset_size(type.id, std::max<size_t>(1, s.size()));
  H5Id space(H5Screate(H5S_SCALAR), H5Sclose);
  H5Id attr(H5Acreate2(file, name, type.id, space.id, H5P_DEFAULT, H5P_DEFAULT), H5Aclose);
  LLM_CHECK(attr.id >= 0 && H5Awrite(attr.id, type.id, s.data()) >= 0, "write attribute ", name);
}

bool read_string_attr(hid_t file, const char* name, std::string& s) {
  if (H5Aexists(file, name) <= 0) return false;
  H5Id attr(H5Aopen(file, name, H5P_DEFAULT), H5Aclose);
  H5Id type(H5Aget_type(attr.id), H5Tclose);
  if (attr.id < 0 || H5Tget_class(type.id) != H5T_STRING || H5Tis_variable_str(type.id)) return false;
  s.resize(H5Tget_size(type.id));
  return H5Aread(attr.id, type.id, s.data()) >= 0;
}

bool try_load(const fs::path& path, const std::string& description, GPTIndex& ix) {
  if (!fs::exists(path)) return false;
  H5E_BEGIN_TRY {
    H5Id file(H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT), H5Fclose);
    std::string desc;
    std::vector<int64_t> epochs;
    if (file.id < 0 || !read_string_attr(file.id, "description", desc) || desc != description ||
        !read_vector(file.id, "doc_idx", ix.doc_idx) || !read_vector(file.id, "sample_idx", ix.sample_idx) ||
        !read_vector(file.id, "shuffle_idx", ix.shuffle_idx) || !read_vector(file.id, "num_epochs", epochs) ||
        epochs.size() != 1 || ix.sample_idx.size() != 2 * (ix.shuffle_idx.size() + 1)) {
      return false;
    }
    ix.num_epochs = epochs[0];
  }
  H5E_END_TRY;
  return true;
}

void publish(const fs::path& path, const std::string& description, const GPTIndex& ix) {
  const fs::path tmp = path.string() + ".tmp-" + std::to_string(::getpid());
  {
    H5Id file(H5Fcreate(tmp.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT), H5Fclose);
    if (file.id < 0) throw ConfigError(tmp.string() + ": cannot create the sample-index cache file");
    write_string_attr(file.id, "description", description);
    write_vector(file.id, "doc_idx", ix.doc_idx);
    write_vector(file.id, "sample_idx", ix.sample_idx);
    write_vector(file.id, "shuffle_idx", ix.shuffle_idx);
    write_vector(file.id, "num_epochs", {ix.num_epochs});
    H5Fflush(file.id, H5F_SCOPE_GLOBAL);
  }
  fs::rename(tmp, path);  // atomic on POSIX: readers see the old state or the whole file
}

}  // namespace

bool load_or_build_index(const IndexCacheOptions& cache, const std::string& description, GPTIndex& index,
                         const std::function<GPTIndex()>& build) {
  std::error_code ec;
  fs::create_directories(cache.dir, ec);
  if (ec) throw ConfigError(cache.dir + ": cannot create the index cache directory: " + ec.message());
  const fs::path path = fs::path(cache.dir) / ("gpt-index-" + hash_bytes(description) + ".h5");
  bool from_cache = false;
  if (cache.is_builder) {
    from_cache = try_load(path, description, index);
    if (!from_cache) {
      index = build();
      publish(path, description, index);
    }
  }
  cache.barrier();
  if (!cache.is_builder) {
    from_cache = try_load(path, description, index);
    if (!from_cache) throw Error(path.string() + ": the sample index was not published by the building rank");
  }
  return from_cache;
}

}  // namespace llm
