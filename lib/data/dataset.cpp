#include "data/dataset.h"

#include <fcntl.h>
#include <unistd.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <optional>
#include <random>
#include <set>
#include <sstream>

#include "core/error.h"
#include "core/fsync.h"
#include "data/hdf5_util.h"

namespace llm {

namespace fs = std::filesystem;

namespace {

constexpr const char* kPartFormatName = "libllm-token-dataset-part";

// ---- Small file-system helpers ---------------------------------------------------------------

std::string join(const std::string& dir, const std::string& name) { return (fs::path(dir) / name).string(); }

// "out/ds/" -> "out/ds": the staging directory must be a sibling, never a child.
std::string strip_trailing_slashes(std::string p) {
  while (p.size() > 1 && p.back() == '/') p.pop_back();
  return p;
}

std::string shard_file_name(int64_t k) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "shard_%05lld.h5", static_cast<long long>(k));
  return buf;
}

std::string part_file_name(int64_t part, int64_t k) {
  char buf[48];
  std::snprintf(buf, sizeof buf, "part_%05lld_%05lld.h5", static_cast<long long>(part), static_cast<long long>(k));
  return buf;
}

std::string part_marker_name(int64_t part) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "part_%05lld.done", static_cast<long long>(part));
  return buf;
}

std::string parent_of(const std::string& path) {
  const fs::path p = fs::path(path).parent_path();
  return p.empty() ? "." : p.string();
}

// Writes `text` to `path` via a temporary name, fsynced, so `path` is either absent or complete.
void write_file_durably(const std::string& path, const std::string& text) {
  const std::string tmp = path + ".tmp";
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) throw Error(tmp + ": cannot create: " + std::strerror(errno));
  size_t done = 0;
  while (done < text.size()) {
    const ssize_t w = ::write(fd, text.data() + done, text.size() - done);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) {
      const int err = errno;
      ::close(fd);
      throw Error(tmp + ": write failed: " + std::strerror(err));
    }
    done += static_cast<size_t>(w);
  }
  if (::fsync(fd) != 0 || ::close(fd) != 0) throw Error(tmp + ": fsync/close failed: " + std::strerror(errno));
  if (std::rename(tmp.c_str(), path.c_str()) != 0) throw Error(path + ": rename failed: " + std::strerror(errno));
}

// ---- JSON ---------------------------------------------------------------------------------------

std::string json_string(std::string_view s) {
  std::string out = "\"";
  for (unsigned char c : s) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += static_cast<char>(c);
    } else if (c < 0x20) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\u%04x", c);
      out += buf;
    } else {
      out += static_cast<char>(c);
    }
  }
  return out + "\"";
}

struct ShardEntry {
  std::string file;
  int64_t num_tokens = 0, num_documents = 0;
};

std::string shards_json(const std::vector<ShardEntry>& shards) {
  std::string s = "[";
  for (size_t i = 0; i < shards.size(); ++i) {
    s += i ? ",\n    " : "\n    ";
    s += detail::concat("{\"file\": ", json_string(shards[i].file), ", \"num_tokens\": ", shards[i].num_tokens,
                        ", \"num_documents\": ", shards[i].num_documents, "}");
  }
  return s + (shards.empty() ? "]" : "\n  ]");
}

std::string manifest_json(const DatasetInfo& info, const std::vector<ShardEntry>& shards) {
  int64_t tokens = 0, docs = 0;
  for (const auto& e : shards) {
    tokens += e.num_tokens;
    docs += e.num_documents;
  }
  return detail::concat("{\n  \"format\": ", json_string(kDatasetFormatName), ",\n  \"version\": ", kDatasetFormatVersion,
                        ",\n  \"tokenizer\": {\"kind\": ", json_string(info.tokenizer.kind),
                        ", \"hash\": ", json_string(info.tokenizer.hash), "},\n  \"vocab_size\": ", info.vocab_size,
                        ",\n  \"eod_id\": ", info.eod_id, ",\n  \"dtype\": ", json_string(info.dtype()),
                        ",\n  \"num_tokens\": ", tokens, ",\n  \"num_documents\": ", docs,
                        ",\n  \"shards\": ", shards_json(shards), "\n}\n");
}

// A parsed JSON file: errors name the file and the key path ("shards[2].num_tokens").
class JsonDoc {
 public:
  explicit JsonDoc(std::string path) : path_(std::move(path)) {
    const std::string text = read_whole_file(path_, "dataset manifest (JSON)");  // (a directory named so)
    const size_t first = text.find_first_not_of(" \t\r\n");
    if (first == std::string::npos || text[first] != '{') throw ConfigError(path_ + ": not a JSON object");
    try {
      root_ = YAML::Load(text);  // JSON is YAML
    } catch (const YAML::Exception& e) {
      throw ConfigError(detail::concat(path_, ": not valid JSON (line ", e.mark.line + 1, ": ", e.msg, ")"));
    }
    if (!root_.IsMap()) throw ConfigError(path_ + ": not a JSON object");
  }
  const std::string& path() const { return path_; }
  const YAML::Node& root() const { return root_; }

  YAML::Node node(const YAML::Node& parent, const std::string& key, const std::string& ctx) const {
    const YAML::Node n = parent[key];
    if (!n) throw ConfigError(path_ + ": missing key '" + ctx + key + "'");
    return n;
  }
  int64_t integer(const YAML::Node& parent, const std::string& key, const std::string& ctx = "") const {
    const YAML::Node n = node(parent, key, ctx);
    try {
      if (n.IsScalar()) return n.as<int64_t>();
    } catch (const YAML::Exception&) {
    }
    throw ConfigError(path_ + ": key '" + ctx + key + "' is not an integer");
  }
  std::string string(const YAML::Node& parent, const std::string& key, const std::string& ctx = "") const {
    const YAML::Node n = node(parent, key, ctx);
    if (!n.IsScalar()) throw ConfigError(path_ + ": key '" + ctx + key + "' is not a string");
    return n.as<std::string>();
  }
  // The list at `key`, parsed as shard entries.
  std::vector<ShardEntry> shard_list(const std::string& key) const {
    const YAML::Node list = node(root_, key, "");
    if (!list.IsSequence()) throw ConfigError(path_ + ": key '" + key + "' is not a list");
    std::vector<ShardEntry> out;
    std::set<std::string> seen;
    for (size_t i = 0; i < list.size(); ++i) {
      const std::string ctx = detail::concat(key, "[", i, "].");
      if (!list[i].IsMap()) throw ConfigError(path_ + ": '" + key + "[" + std::to_string(i) + "]' is not an object");
      ShardEntry e{string(list[i], "file", ctx), integer(list[i], "num_tokens", ctx), integer(list[i], "num_documents", ctx)};
      if (e.file.empty() || e.file == "." || e.file == ".." || e.file.find('/') != std::string::npos)
        throw ConfigError(path_ + ": '" + ctx + "file' must be a plain file name, not '" + e.file + "'");
      if (!seen.insert(e.file).second) throw ConfigError(path_ + ": shard file '" + e.file + "' is listed twice");
      if (e.num_tokens < 0 || e.num_documents < 0 || (e.num_documents == 0 && e.num_tokens > 0))
        throw ConfigError(detail::concat(path_, ": '", ctx, "' has ", e.num_tokens, " tokens in ", e.num_documents,
                                         " documents"));
      out.push_back(std::move(e));
    }
    return out;
  }

 private:
  std::string path_;
  YAML::Node root_;
};

// ---- Shard files ------------------------------------------------------------------------------

hid_t token_file_type(const DatasetInfo& info) {
  return info.vocab_size > 65536 ? H5T_STD_U32LE : H5T_STD_U16LE;
}

// Writes one shard: tokens are buffered and written a whole chunk at a time (aligned, so every
// chunk is written once, directly); offsets and attributes are written at close(). A shard that
// was never closed has no attributes and does not open as a shard.
class ShardWriter {
 public:
  ShardWriter(std::string path, const DatasetInfo& info, int64_t chunk)
      : path_(std::move(path)), info_(info), wide_(info.vocab_size > 65536), chunk_(chunk),
        file_(h5::File::create(path_)) {
    tokens_.emplace(file_.create_dataset("tokens", token_file_type(info), 0, {chunk_, true}));
  }

  int64_t num_tokens() const { return written_ + buffered(); }
  int64_t num_documents() const { return static_cast<int64_t>(offsets_.size()) - 1; }

  void add(std::span<const int32_t> ids) {
    size_t i = 0;
    while (i < ids.size()) {
      const size_t take = std::min(ids.size() - i, static_cast<size_t>(chunk_ - buffered()));
      if (wide_) {
        for (size_t k = 0; k < take; ++k) buf32_.push_back(static_cast<uint32_t>(ids[i + k]));
      } else {
        for (size_t k = 0; k < take; ++k) buf16_.push_back(static_cast<uint16_t>(ids[i + k]));
      }
      i += take;
      if (buffered() == chunk_) flush();
    }
    offsets_.push_back(offsets_.back() + ids.size());
  }

  void close() {
    flush();
    tokens_.reset();
    file_.write_dataset<uint64_t>("doc_offsets", H5T_STD_U64LE, offsets_);
    file_.write_int64_attribute("format_version", kDatasetFormatVersion);
    file_.write_string_attribute("tokenizer_kind", info_.tokenizer.kind);
    file_.write_string_attribute("tokenizer_hash", info_.tokenizer.hash);
    file_.write_int64_attribute("vocab_size", info_.vocab_size);
    file_.write_int64_attribute("eod_id", info_.eod_id);
    file_.write_int64_attribute("num_tokens", num_tokens());
    file_.write_int64_attribute("num_documents", num_documents());
    file_.close();
    fsync_path(path_);
  }

 private:
  int64_t buffered() const { return static_cast<int64_t>(wide_ ? buf32_.size() : buf16_.size()); }

  void flush() {
    const int64_t n = buffered();
    if (n == 0) return;
    tokens_->set_extent(written_ + n);
    if (wide_) {
      tokens_->write<uint32_t>(written_, buf32_);
      buf32_.clear();
    } else {
      tokens_->write<uint16_t>(written_, buf16_);
      buf16_.clear();
    }
    written_ += n;
  }

  std::string path_;
  DatasetInfo info_;
  bool wide_;
  int64_t chunk_;
  h5::File file_;
  std::optional<h5::Dataset> tokens_;
  std::vector<uint16_t> buf16_;
  std::vector<uint32_t> buf32_;
  int64_t written_ = 0;
  std::vector<uint64_t> offsets_{0};
};

// Moves the complete staging directory to final_dir (see the rules in dataset.h).
void install(const std::string& staging, const std::string& final_dir, bool overwrite) {
  check_dataset_output(final_dir, overwrite);
  std::error_code ec;
  const bool exists = fs::exists(fs::symlink_status(final_dir, ec));
  if (!exists) {
    if (::renameat2(AT_FDCWD, staging.c_str(), AT_FDCWD, final_dir.c_str(), RENAME_NOREPLACE) != 0) {
      const int err = errno;
      if (err == EEXIST || err == ENOTEMPTY)
        throw ConfigError(final_dir + ": appeared while the dataset was being published; not replaced");
      if (err != EINVAL && err != ENOSYS) throw Error(final_dir + ": cannot rename into place: " + std::strerror(err));
      fs::rename(staging, final_dir);  // no RENAME_NOREPLACE on this file system
    }
  } else if (::renameat2(AT_FDCWD, staging.c_str(), AT_FDCWD, final_dir.c_str(), RENAME_EXCHANGE) == 0) {
    discard_staging_dir(staging);  // now holds the old dataset
  } else {
    const int err = errno;
    if (err != EINVAL && err != ENOSYS) throw Error(final_dir + ": cannot swap into place: " + std::strerror(err));
    // No atomic exchange: the final name is briefly absent, never incomplete.
    const std::string old = staging + ".old";
    fs::rename(final_dir, old);
    try {
      fs::rename(staging, final_dir);
    } catch (...) {
      fs::rename(old, final_dir, ec);  // put the old dataset back
      throw;
    }
    fs::remove_all(old, ec);
  }
  fsync_path(parent_of(final_dir));
}

}  // namespace

// ---- Output checks --------------------------------------------------------------------------

void check_dataset_output(const std::string& final_dir_in, bool overwrite) {
  const std::string final_dir = strip_trailing_slashes(final_dir_in);
  std::error_code ec;
  if (!fs::exists(fs::symlink_status(final_dir, ec))) return;
  if (!overwrite) throw ConfigError(final_dir + ": already exists; refusing to replace it (--overwrite replaces it once the new one is complete)");
  if (!fs::is_directory(final_dir, ec))
    throw ConfigError(final_dir + ": exists and is not a directory; refusing to replace it");
  if (!fs::is_empty(final_dir, ec) && !fs::exists(join(final_dir, kManifestFile), ec))
    throw ConfigError(final_dir + ": exists and is not a libllm token dataset (no " + kManifestFile +
                      "); refusing to replace it");
}

// ---- DatasetInfo ----------------------------------------------------------------------------

std::string DatasetInfo::dtype() const { return vocab_size > 65536 ? "uint32" : "uint16"; }

void DatasetInfo::validate(const std::string& where) const {
  if (vocab_size < 1 || vocab_size > (int64_t{1} << 31))
    throw ConfigError(detail::concat(where, ": vocab_size ", vocab_size, " is outside [1, 2^31]"));
  if (eod_id < 0 || eod_id >= vocab_size)
    throw ConfigError(detail::concat(where, ": eod_id ", eod_id, " is outside [0, ", vocab_size, ")"));
  if (tokenizer.kind.empty() || tokenizer.hash.empty())
    throw ConfigError(where + ": the tokenizer identity (kind and hash) must not be empty");
}

// ---- DatasetPartWriter ----------------------------------------------------------------------

struct DatasetPartWriter::Impl {
  std::string dir, label;
  int64_t part = 0;
  DatasetInfo info;
  int64_t shard_tokens = 0, chunk = 0;
  std::optional<ShardWriter> current;
  std::vector<ShardEntry> shards;    // closed shards
  std::vector<std::string> created;  // every file created, for cleanup
  int64_t docs = 0, tokens = 0;
  bool finished = false, failed = false;

  void close_current() {
    if (!current) return;
    current->close();
    shards.push_back({part_file_name(part, static_cast<int64_t>(shards.size())), current->num_tokens(),
                      current->num_documents()});
    current.reset();
  }
};

DatasetPartWriter::DatasetPartWriter(std::string staging_dir, int64_t part, DatasetInfo info, int64_t shard_tokens)
    : impl_(std::make_unique<Impl>()) {
  Impl& m = *impl_;
  m.dir = strip_trailing_slashes(std::move(staging_dir));
  m.part = part;
  m.label = detail::concat(m.dir, " (part ", part, ")");
  m.info = std::move(info);
  m.info.validate(m.label);
  if (part < 0) throw ConfigError(detail::concat(m.dir, ": negative part index ", part));
  if (shard_tokens < 1) throw ConfigError(detail::concat(m.label, ": shard_tokens must be positive, got ", shard_tokens));
  m.shard_tokens = shard_tokens;
  // Chunks of 1 Mi tokens; tiny shards (tests) get smaller chunks so files stay small.
  m.chunk = std::min(kTokenChunk, std::max<int64_t>(shard_tokens, 4096));
  std::error_code ec;
  fs::create_directories(m.dir, ec);
  if (!fs::is_directory(m.dir)) throw ConfigError(m.dir + ": cannot create the staging directory: " + ec.message());
}

DatasetPartWriter::~DatasetPartWriter() {
  if (!impl_ || impl_->finished) return;
  try {
    impl_->current.reset();  // closes the HDF5 handles
  } catch (...) {
  }
  std::error_code ec;
  for (const auto& f : impl_->created) fs::remove(f, ec);
  fs::remove(join(impl_->dir, part_marker_name(impl_->part)), ec);
  fs::remove(join(impl_->dir, part_marker_name(impl_->part)) + ".tmp", ec);
}

void DatasetPartWriter::add_document(std::span<const int32_t> ids) {
  Impl& m = *impl_;
  LLM_CHECK(!m.finished && !m.failed, m.label, ": add_document after finish() or after a write error");
  for (size_t k = 0; k < ids.size(); ++k) {
    if (ids[k] < 0 || ids[k] >= m.info.vocab_size)
      throw ConfigError(detail::concat(m.label, ": document ", m.docs, ": token id ", ids[k], " at position ", k,
                                       " is outside the vocabulary [0, ", m.info.vocab_size, ")"));
  }
  try {
    if (!m.current || m.current->num_tokens() >= m.shard_tokens) {
      m.close_current();
      const std::string path = join(m.dir, part_file_name(m.part, static_cast<int64_t>(m.shards.size())));
      m.created.push_back(path);
      m.current.emplace(path, m.info, m.chunk);
    }
    m.current->add(ids);
  } catch (...) {
    m.failed = true;
    throw;
  }
  ++m.docs;
  m.tokens += static_cast<int64_t>(ids.size());
}

void DatasetPartWriter::finish() {
  Impl& m = *impl_;
  LLM_CHECK(!m.finished && !m.failed, m.label, ": finish() twice or after a write error");
  try {
    m.close_current();
    const std::string marker = detail::concat(
        "{\n  \"format\": ", json_string(kPartFormatName), ",\n  \"part\": ", m.part, ",\n  \"num_tokens\": ", m.tokens,
        ",\n  \"num_documents\": ", m.docs, ",\n  \"shards\": ", shards_json(m.shards), "\n}\n");
    write_file_durably(join(m.dir, part_marker_name(m.part)), marker);
    fsync_path(m.dir);
  } catch (...) {
    m.failed = true;
    throw;
  }
  m.finished = true;
}

int64_t DatasetPartWriter::num_documents() const { return impl_->docs; }
int64_t DatasetPartWriter::num_tokens() const { return impl_->tokens; }

// ---- Staging and publishing -----------------------------------------------------------------

std::string staging_dir_path(const std::string& final_dir, const std::string& tag) {
  return strip_trailing_slashes(final_dir) + ".tmp-" + tag;
}

void discard_staging_dir(const std::string& staging_dir) noexcept {
  std::error_code ec;
  fs::remove_all(staging_dir, ec);
}

void publish_dataset(const std::string& staging_dir, const std::string& final_dir_in, const DatasetInfo& info,
                     int64_t num_parts, bool overwrite) {
  const std::string staging = strip_trailing_slashes(staging_dir);
  const std::string final_dir = strip_trailing_slashes(final_dir_in);
  info.validate(final_dir);
  LLM_CHECK(num_parts >= 1, "publish_dataset needs at least one part, got ", num_parts);
  check_dataset_output(final_dir, overwrite);  // fail before touching anything
  if (!fs::is_directory(staging)) throw ConfigError(staging + ": no such staging directory");

  // 1. Gather the parts' shards in order and give them their final names.
  std::vector<ShardEntry> entries;
  for (int64_t p = 0; p < num_parts; ++p) {
    const std::string marker = join(staging, part_marker_name(p));
    if (!fs::exists(marker))
      throw ConfigError(detail::concat(staging, ": part ", p, " did not finish (", part_marker_name(p), " is missing)"));
    const JsonDoc doc(marker);
    if (doc.string(doc.root(), "format") != kPartFormatName || doc.integer(doc.root(), "part") != p)
      throw ConfigError(detail::concat(marker, ": not the marker of part ", p));
    int64_t tokens = 0, docs = 0;
    for (const ShardEntry& e : doc.shard_list("shards")) {
      const std::string src = join(staging, e.file);
      if (!fs::exists(src)) throw ConfigError(marker + ": lists " + e.file + ", which is missing");
      const std::string name = shard_file_name(static_cast<int64_t>(entries.size()));
      fs::rename(src, join(staging, name));
      entries.push_back({name, e.num_tokens, e.num_documents});
      tokens += e.num_tokens;
      docs += e.num_documents;
    }
    if (tokens != doc.integer(doc.root(), "num_tokens") || docs != doc.integer(doc.root(), "num_documents"))
      throw ConfigError(marker + ": its totals disagree with its shard list");
  }

  // 2. Drop everything else (markers, unfinished files of failed attempts), write the manifest.
  std::set<std::string> keep;
  for (const auto& e : entries) keep.insert(e.file);
  for (const auto& entry : fs::directory_iterator(staging)) {
    const std::string name = entry.path().filename().string();
    if (!keep.count(name)) fs::remove_all(entry.path());
  }
  write_file_durably(join(staging, kManifestFile), manifest_json(info, entries));
  fsync_path(staging);

  // 3. Re-open as a reader would (every shard's attributes, lengths and offsets), then install.
  {
    const Dataset check = Dataset::open(staging, 1);
    LLM_CHECK(check.info() == info, staging, ": published info differs from the writer's");
  }
  install(staging, final_dir, overwrite);
}

// ---- DatasetWriter --------------------------------------------------------------------------

DatasetWriter::DatasetWriter(std::string final_dir, DatasetInfo info, int64_t shard_tokens, bool overwrite)
    : final_(strip_trailing_slashes(std::move(final_dir))), info_(std::move(info)), overwrite_(overwrite) {
  if (final_.empty()) throw ConfigError("dataset output directory: empty path");
  info_.validate(final_);
  check_dataset_output(final_, overwrite_);  // refuse before hours of tokenizing, not after
  std::error_code ec;
  fs::create_directories(parent_of(final_), ec);
  remove_dead_staging(final_);  // what killed writes of this dataset left
  staging_ = staging_dir_path(final_, staging_tag());
  if (!fs::create_directory(staging_, ec))
    throw ConfigError(staging_ + ": cannot create the staging directory" + (ec ? ": " + ec.message() : std::string()));
  try {
    part_ = std::make_unique<DatasetPartWriter>(staging_, 0, info_, shard_tokens);
  } catch (...) {
    discard_staging_dir(staging_);
    throw;
  }
  part_->impl_->label = final_;
}

DatasetWriter::~DatasetWriter() {
  if (finished_) return;
  part_.reset();
  discard_staging_dir(staging_);
}

void DatasetWriter::add_document(std::span<const int32_t> ids) { part_->add_document(ids); }

void DatasetWriter::finish() {
  LLM_CHECK(!finished_, final_, ": finish() called twice");
  part_->finish();
  publish_dataset(staging_, final_, info_, 1, overwrite_);
  finished_ = true;
}

int64_t DatasetWriter::num_documents() const { return part_->num_documents(); }
int64_t DatasetWriter::num_tokens() const { return part_->num_tokens(); }

// ---- Dataset (reader) -----------------------------------------------------------------------

struct Dataset::Impl {
  struct Shard {
    std::string name, path;
    int64_t first_token = 0, num_tokens = 0, first_doc = 0, num_docs = 0;
    std::optional<h5::File> file;
    std::optional<h5::Dataset> tokens;
    uint64_t last_use = 0;
  };
  std::string dir, manifest_path, description;
  DatasetInfo info;
  std::vector<Shard> shards;
  std::vector<int64_t> starts;   // first token of each shard, plus num_tokens at the end
  std::vector<int64_t> offsets;  // global document offsets, num_documents + 1
  int64_t max_open = 256, open_count = 0;
  uint64_t tick = 0;
  std::vector<uint16_t> scratch16;

  static h5::ChunkCache token_cache() { return {521, 0, 0.75}; }  // off: see dataset.h

  void close_shard(Shard& s) {
    if (!s.file) return;
    s.tokens.reset();
    s.file.reset();
    --open_count;
  }

  h5::Dataset& tokens_of(Shard& s) {
    s.last_use = ++tick;
    if (s.tokens) return *s.tokens;
    if (open_count >= max_open) {
      Shard* lru = nullptr;
      for (Shard& o : shards)
        if (o.file && (!lru || o.last_use < lru->last_use)) lru = &o;
      if (lru) close_shard(*lru);
    }
    s.file.emplace(h5::File::open(s.path));
    ++open_count;
    s.tokens.emplace(s.file->open_dataset("tokens", token_cache()));
    if (s.tokens->size() != s.num_tokens) {
      const int64_t n = s.tokens->size();
      close_shard(s);
      throw ConfigError(detail::concat(s.path, ": /tokens has ", n, " tokens, but ", manifest_path, " lists ",
                                       s.num_tokens, " (the file changed after the dataset was opened?)"));
    }
    return *s.tokens;
  }

  void validate_shard(size_t i, std::vector<int64_t>& global_offsets);
};

void Dataset::Impl::validate_shard(size_t i, std::vector<int64_t>& global_offsets) {
  Shard& s = shards[i];
  if (!fs::exists(s.path)) throw ConfigError(s.path + ": shard file listed in " + manifest_path + " is missing");
  h5::File file = h5::File::open(s.path);
  // Every shard is compared with the manifest; shard 0 already agreed with it, so a later
  // mismatch also names shard 0.
  const std::string also = i > 0 ? " (and in " + shards[0].name + ")" : std::string();
  auto mismatch = [&](const std::string& what, const std::string& have, const std::string& want) {
    throw ConfigError(s.path + ": " + what + " " + have + " differs from " + want + " in " + manifest_path + also);
  };
  const int64_t version = file.read_int64_attribute("format_version");
  if (version != kDatasetFormatVersion)
    throw ConfigError(detail::concat(s.path, ": format_version ", version, ", this build reads ", kDatasetFormatVersion));
  const TokenizerIdentity tok{file.read_string_attribute("tokenizer_kind"), file.read_string_attribute("tokenizer_hash")};
  if (!(tok == info.tokenizer)) mismatch("tokenizer", tok.str(), info.tokenizer.str());
  const int64_t vocab = file.read_int64_attribute("vocab_size");
  if (vocab != info.vocab_size) mismatch("vocab_size", std::to_string(vocab), std::to_string(info.vocab_size));
  const int64_t eod = file.read_int64_attribute("eod_id");
  if (eod != info.eod_id) mismatch("eod_id", std::to_string(eod), std::to_string(info.eod_id));
  const int64_t tokens = file.read_int64_attribute("num_tokens");
  if (tokens != s.num_tokens)
    throw ConfigError(detail::concat(s.path, ": num_tokens attribute is ", tokens, " but ", manifest_path, " lists ",
                                     s.num_tokens, " for ", s.name));
  const int64_t docs = file.read_int64_attribute("num_documents");
  if (docs != s.num_docs)
    throw ConfigError(detail::concat(s.path, ": num_documents attribute is ", docs, " but ", manifest_path, " lists ",
                                     s.num_docs, " for ", s.name));

  {
    const h5::Dataset t = file.open_dataset("tokens");
    if (!t.type().equals(token_file_type(info)))
      throw ConfigError(detail::concat(t.where(), ": token type is not the ", info.dtype(), " (little-endian) that ",
                                       manifest_path, " declares"));
    const int64_t n = t.size();
    if (n != s.num_tokens)
      throw ConfigError(detail::concat(t.where(), ": has ", n, " tokens, but the shard says ", s.num_tokens));
  }

  const h5::Dataset d = file.open_dataset("doc_offsets");
  if (d.type().type_class() != H5T_INTEGER) throw ConfigError(d.where() + ": document offsets are not integers");
  const int64_t n = d.size();
  if (n != s.num_docs + 1)
    throw ConfigError(detail::concat(d.where(), ": has ", n, " entries, expected num_documents + 1 = ", s.num_docs + 1));
  const std::vector<uint64_t> off = d.read_all<uint64_t>();
  if (off.front() != 0) throw ConfigError(detail::concat(d.where(), ": entry 0 is ", off.front(), ", expected 0"));
  for (size_t k = 1; k < off.size(); ++k) {
    if (off[k] < off[k - 1])
      throw ConfigError(detail::concat(d.where(), ": entry ", k, " (", off[k], ") is smaller than entry ", k - 1, " (",
                                       off[k - 1], ")"));
    global_offsets.push_back(s.first_token + static_cast<int64_t>(off[k]));
  }
  if (off.back() != static_cast<uint64_t>(s.num_tokens))
    throw ConfigError(detail::concat(d.where(), ": last entry is ", off.back(), ", expected num_tokens = ", s.num_tokens));

  if (open_count < max_open) {  // keep it open for reading
    s.tokens.emplace(file.open_dataset("tokens", token_cache()));
    s.file.emplace(std::move(file));
    ++open_count;
  }
}

Dataset Dataset::open(const std::string& dir_in, int64_t max_open_shards) {
  auto m = std::make_unique<Impl>();
  m->dir = strip_trailing_slashes(dir_in);
  m->max_open = std::max<int64_t>(1, max_open_shards);
  if (!fs::is_directory(m->dir)) {
    if (fs::exists(m->dir + ".idx") && fs::exists(m->dir + ".bin"))  // a Megatron --data-path prefix
      throw ConfigError(m->dir + ": a Megatron .bin/.idx dataset; convert it once with `llm-tokenize --from-megatron " +
                        m->dir + " --output-prefix DIR --tokenizer-type ...` and pass DIR");
    // Megatron's preprocess_data.py names its output PREFIX_text_document; llm-tokenize's is the
    // directory PREFIX itself. A script's Megatron-style path to a dataset made here says so.
    for (const char* suffix : {"_text_document", "_text_sentence"})
      if (m->dir.ends_with(suffix)) {
        const std::string ours = m->dir.substr(0, m->dir.size() - std::strlen(suffix));
        if (fs::exists(join(ours, kManifestFile)))
          throw ConfigError(m->dir + ": no such dataset directory; " + ours +
                            " is the dataset llm-tokenize wrote for that --output-prefix (its output is named "
                            "PREFIX, Megatron's PREFIX" + suffix + "): pass " + ours);
      }
    throw ConfigError(m->dir + ": no such dataset directory");
  }
  m->manifest_path = join(m->dir, kManifestFile);
  if (!fs::exists(m->manifest_path))
    throw ConfigError(m->manifest_path + ": missing (not a libllm token dataset, or an unfinished one)");

  const JsonDoc doc(m->manifest_path);
  const YAML::Node& root = doc.root();
  const std::string format = doc.string(root, "format");
  if (format != kDatasetFormatName)
    throw ConfigError(m->manifest_path + ": key 'format' is '" + format + "', expected '" + kDatasetFormatName + "'");
  const int64_t version = doc.integer(root, "version");
  if (version != kDatasetFormatVersion)
    throw ConfigError(detail::concat(m->manifest_path, ": key 'version' is ", version, "; this build reads version ",
                                     kDatasetFormatVersion));
  const YAML::Node tok = doc.node(root, "tokenizer", "");
  if (!tok.IsMap()) throw ConfigError(m->manifest_path + ": key 'tokenizer' is not an object");
  m->info.tokenizer = {doc.string(tok, "kind", "tokenizer."), doc.string(tok, "hash", "tokenizer.")};
  m->info.vocab_size = doc.integer(root, "vocab_size");
  const int64_t eod = doc.integer(root, "eod_id");
  if (eod < INT32_MIN || eod > INT32_MAX) throw ConfigError(m->manifest_path + ": key 'eod_id' is out of range");
  m->info.eod_id = static_cast<int32_t>(eod);
  m->info.validate(m->manifest_path);
  const std::string dtype = doc.string(root, "dtype");
  if (dtype != m->info.dtype())
    throw ConfigError(detail::concat(m->manifest_path, ": key 'dtype' is '", dtype, "', but vocab_size ",
                                     m->info.vocab_size, " is stored as '", m->info.dtype(), "'"));
  const int64_t num_tokens = doc.integer(root, "num_tokens"), num_docs = doc.integer(root, "num_documents");
  const std::vector<ShardEntry> entries = doc.shard_list("shards");
  int64_t tokens = 0, docs = 0;
  for (const auto& e : entries) {
    Impl::Shard s;
    s.name = e.file;
    s.path = join(m->dir, e.file);
    s.first_token = tokens;
    s.num_tokens = e.num_tokens;
    s.first_doc = docs;
    s.num_docs = e.num_documents;
    m->shards.push_back(std::move(s));
    m->starts.push_back(tokens);
    if (__builtin_add_overflow(tokens, e.num_tokens, &tokens) || __builtin_add_overflow(docs, e.num_documents, &docs))
      throw ConfigError(m->manifest_path + ": the shards' token or document counts overflow 64 bits");
  }
  m->starts.push_back(tokens);
  if (tokens != num_tokens)
    throw ConfigError(detail::concat(m->manifest_path, ": key 'num_tokens' is ", num_tokens, " but the shards hold ", tokens));
  if (docs != num_docs)
    throw ConfigError(detail::concat(m->manifest_path, ": key 'num_documents' is ", num_docs, " but the shards hold ", docs));

  // (the counts are the manifest's word until the shards are read: no allocation on it alone)
  m->offsets.reserve(static_cast<size_t>(std::min<int64_t>(num_docs, int64_t{1} << 20)) + 1);
  m->offsets.push_back(0);
  for (size_t i = 0; i < m->shards.size(); ++i) m->validate_shard(i, m->offsets);
  LLM_CHECK(static_cast<int64_t>(m->offsets.size()) == num_docs + 1, m->dir, ": document offsets miscounted");

  const std::string_view bytes(reinterpret_cast<const char*>(m->offsets.data()), m->offsets.size() * sizeof(int64_t));
  m->description = detail::concat(m->dir, " (", num_tokens, " tokens, ", num_docs, " documents, ", m->info.tokenizer.str(),
                                  ", offsets ", hash_bytes(bytes), ")");
  return Dataset(std::move(m));
}

Dataset::Dataset(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Dataset::Dataset(Dataset&&) noexcept = default;
Dataset& Dataset::operator=(Dataset&&) noexcept = default;
Dataset::~Dataset() = default;

const std::string& Dataset::dir() const { return impl_->dir; }
const DatasetInfo& Dataset::info() const { return impl_->info; }
int64_t Dataset::num_tokens() const { return impl_->starts.back(); }
int64_t Dataset::num_documents() const { return static_cast<int64_t>(impl_->offsets.size()) - 1; }
int64_t Dataset::num_shards() const { return static_cast<int64_t>(impl_->shards.size()); }
int64_t Dataset::vocab_size() const { return impl_->info.vocab_size; }
std::string Dataset::describe() const { return impl_->description; }
std::span<const int64_t> Dataset::document_offsets() const { return impl_->offsets; }

int64_t Dataset::document_offset(int64_t doc) const {
  LLM_CHECK(doc >= 0 && doc <= num_documents(), impl_->dir, ": document ", doc, " of ", num_documents());
  return impl_->offsets[static_cast<size_t>(doc)];
}

int64_t Dataset::document_length(int64_t doc) const {
  LLM_CHECK(doc >= 0 && doc < num_documents(), impl_->dir, ": document ", doc, " of ", num_documents());
  return impl_->offsets[static_cast<size_t>(doc) + 1] - impl_->offsets[static_cast<size_t>(doc)];
}

std::vector<int32_t> Dataset::document(int64_t doc) const {
  std::vector<int32_t> out(static_cast<size_t>(document_length(doc)));
  read(document_offset(doc), static_cast<int64_t>(out.size()), out.data());
  return out;
}

void Dataset::read(int64_t offset, int64_t n, int32_t* out) const {
  Impl& m = *impl_;
  LLM_CHECK(offset >= 0 && n >= 0 && offset <= num_tokens() - n, m.dir, ": read of tokens [", offset, ", ",
            offset + n, ") outside the dataset's ", num_tokens());
  const size_t num_shards = m.shards.size();
  while (n > 0) {
    // The last shard starting at or before `offset` (skips empty shards).
    const size_t s = static_cast<size_t>(
        std::upper_bound(m.starts.begin(), m.starts.begin() + static_cast<std::ptrdiff_t>(num_shards), offset) -
        m.starts.begin() - 1);
    Impl::Shard& shard = m.shards[s];
    const int64_t local = offset - shard.first_token;
    const int64_t take = std::min(n, shard.num_tokens - local);
    h5::Dataset& tokens = m.tokens_of(shard);
    uint32_t max_id = 0;
    if (m.info.vocab_size > 65536) {
      // Same width: read in place (int32 and uint32 may alias), then check.
      auto* u = reinterpret_cast<uint32_t*>(out);
      tokens.read<uint32_t>(local, take, u);
      for (int64_t k = 0; k < take; ++k) max_id = std::max(max_id, u[k]);
    } else {
      m.scratch16.resize(static_cast<size_t>(take));
      tokens.read<uint16_t>(local, take, m.scratch16.data());
      for (int64_t k = 0; k < take; ++k) {
        out[k] = m.scratch16[static_cast<size_t>(k)];
        max_id = std::max<uint32_t>(max_id, m.scratch16[static_cast<size_t>(k)]);
      }
    }
    if (max_id >= static_cast<uint64_t>(m.info.vocab_size)) {
      for (int64_t k = 0; k < take; ++k)
        if (static_cast<uint32_t>(out[k]) >= static_cast<uint64_t>(m.info.vocab_size))
          throw ConfigError(detail::concat(shard.path, ": token ", local + k, " is ", static_cast<uint32_t>(out[k]),
                                           ", outside the vocabulary [0, ", m.info.vocab_size, ")"));
    }
    out += take;
    offset += take;
    n -= take;
  }
}

}  // namespace llm
