#include "data/index_cache.h"

#include <unistd.h>

#include <cstdio>
#include <filesystem>

#include "core/error.h"
#include "core/fsync.h"
#include "core/log.h"
#include "data/hdf5_util.h"
#include "data/tokenizer.h"

namespace llm {

namespace {

namespace fs = std::filesystem;

// Over the three arrays and the epoch counts, word by word: a file whose blocks a crash zeroed
// (the rename reached the disk, the data did not) or that was altered is not the index built.
std::string index_checksum(const GPTIndex& ix) {
  uint64_t h = 0x243f6a8885a308d3ull;
  auto mix = [&h](const std::vector<int64_t>& v) {
    h ^= static_cast<uint64_t>(v.size()) * 0x9e3779b97f4a7c15ull;
    for (int64_t x : v) {
      h ^= static_cast<uint64_t>(x);
      h *= 0x9e3779b97f4a7c15ull;
      h ^= h >> 29;
    }
  };
  mix(ix.doc_idx);
  mix(ix.sample_idx);
  mix(ix.shuffle_idx);
  mix({ix.num_epochs});
  mix({ix.separate_last_epoch ? 1 : 0, ix.samples_before_last_epoch});
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(h));
  return buf;
}

// The cache file as it was written, or false for anything else (missing, truncated, written
// for another description): a bad cache entry is rebuilt, never trusted.
bool try_load(const fs::path& path, const std::string& description, GPTIndex& ix) {
  if (!fs::exists(path)) return false;
  try {
    const h5::File file = h5::File::open(path.string());
    if (file.read_string_attribute("description") != description) return false;
    ix.doc_idx = file.open_dataset("doc_idx").read_all<int64_t>();
    ix.sample_idx = file.open_dataset("sample_idx").read_all<int64_t>();
    ix.shuffle_idx = file.open_dataset("shuffle_idx").read_all<int64_t>();
    const std::vector<int64_t> epochs = file.open_dataset("num_epochs").read_all<int64_t>();
    const std::vector<int64_t> last = file.open_dataset("last_epoch").read_all<int64_t>();
    if (epochs.size() != 1 || last.size() != 2 || ix.sample_idx.size() != 2 * (ix.shuffle_idx.size() + 1))
      return false;
    ix.num_epochs = epochs[0];
    ix.separate_last_epoch = last[0] != 0;
    ix.samples_before_last_epoch = last[1];
    return file.has_attribute("checksum") && file.read_string_attribute("checksum") == index_checksum(ix);
  } catch (const Error&) {
    return false;
  }
}

void publish(const fs::path& path, const std::string& description, const GPTIndex& ix) {
  const fs::path tmp = path.string() + ".tmp-" + std::to_string(::getpid());
  try {
    h5::File file = h5::File::create(tmp.string(), true);
    file.write_string_attribute("description", description);
    file.write_string_attribute("checksum", index_checksum(ix));
    file.write_dataset<int64_t>("doc_idx", H5T_STD_I64LE, ix.doc_idx);
    file.write_dataset<int64_t>("sample_idx", H5T_STD_I64LE, ix.sample_idx);
    file.write_dataset<int64_t>("shuffle_idx", H5T_STD_I64LE, ix.shuffle_idx);
    const std::vector<int64_t> epochs{ix.num_epochs};
    file.write_dataset<int64_t>("num_epochs", H5T_STD_I64LE, epochs);
    const std::vector<int64_t> last{ix.separate_last_epoch ? 1 : 0, ix.samples_before_last_epoch};
    file.write_dataset<int64_t>("last_epoch", H5T_STD_I64LE, last);
    file.close();  // reports a failed write, which the destructor would not
    fsync_path(tmp);
    fs::rename(tmp, path);  // atomic on POSIX: readers see the old state or the whole file
    fsync_path(path.parent_path());
  } catch (...) {
    std::error_code ec;
    fs::remove(tmp, ec);
    throw;
  }
}

}  // namespace

bool load_or_build_index(const IndexCacheOptions& cache, const std::string& description, GPTIndex& index,
                         const std::function<GPTIndex()>& build) {
  std::error_code ec;
  fs::create_directories(cache.dir, ec);
  if (ec)
    throw ConfigError(cache.dir + ": cannot create the index cache directory: " + ec.message() +
                      " (--data-cache-path puts the sample index somewhere writable)");
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
    // The index's name hashes the dataset's description: a rank that sees other data under the
    // same path, or a cache directory of its own (node-local disk), looks for another file.
    if (!from_cache)
      throw ConfigError(path.string() +
                        ": not there after rank 0 built the sample index; every rank must see the same dataset "
                        "and the same index cache (--data-cache-path on a file system all nodes share)");
  }
  return from_cache;
}

}  // namespace llm
