#include "io/checkpoint.h"

#include <fcntl.h>
#include <stdio.h>  // renameat2, RENAME_EXCHANGE (glibc >= 2.28)
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>

#include "core/error.h"
#include "core/fsync.h"
#include "data/hdf5_util.h"

namespace llm {

namespace fs = std::filesystem;

namespace {

// N for a directory named iter_<digits> (checkpoint_dir_name's form), else -1.
int64_t iteration_of(const std::string& name) {
  if (name.size() <= 5 || name.rfind("iter_", 0) != 0 || name.find_first_not_of("0123456789", 5) != std::string::npos)
    return -1;
  return std::stoll(name.substr(5));
}

std::string random_tag() {
  std::random_device rd;
  char buf[40];
  std::snprintf(buf, sizeof buf, "%d-%08x%08x", static_cast<int>(::getpid()), rd(), rd());
  return buf;
}

std::string shape_json(const Shape& s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
}

Shape shape_from_json(const json::Value& v, const std::string& where) {
  if (!v.is_array()) throw ConfigError(where + ": expected an array of integers");
  Shape s;
  for (const json::Value& x : v.as_array()) {
    if (!x.is_integer() || x.as_int() < 0) throw ConfigError(where + ": expected non-negative integers");
    s.push_back(x.as_int());
  }
  return s;
}

DType dtype_from_name(const std::string& n, const std::string& where) {
  for (DType d : {DType::f32, DType::bf16, DType::f16})
    if (dtype_name(d) == n) return d;
  throw ConfigError(where + ": unsupported stored dtype '" + n + "'");
}

// Stored bytes of `data` converted to `store` (f32, bf16 or f16).
std::vector<char> encode_as(const Tensor& data, DType store) {
  const int64_t n = data.numel();
  std::vector<char> bytes(static_cast<size_t>(n) * dtype_size(store));
  LLM_CHECK(data.dtype() == DType::f32 && data.is_contiguous() && data.device().is_cpu(),
            "checkpoint pieces are written from contiguous host f32 tensors");
  const float* src = data.data<float>();
  if (store == DType::f32) {
    std::memcpy(bytes.data(), src, bytes.size());
  } else {
    auto* dst = reinterpret_cast<uint16_t*>(bytes.data());
    for (int64_t i = 0; i < n; ++i) dst[i] = store == DType::bf16 ? f32_to_bf16(src[i]) : f32_to_f16(src[i]);
  }
  return bytes;
}

std::string dataset_name(const std::string& category, const std::string& name, int k) {
  std::string c = category;
  std::replace(c.begin(), c.end(), '/', '.');
  std::string n = name;
  std::replace(n.begin(), n.end(), '/', '.');
  return c + "|" + n + (k ? "#" + std::to_string(k) : "");
}

}  // namespace

std::string checkpoint_dir_name(int64_t iteration) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "iter_%07lld", static_cast<long long>(iteration));
  return buf;
}

namespace {

uint64_t mix64(uint64_t h, uint64_t w) {
  h ^= w * 0x87C37B91114253D5ull;
  h = (h << 31) | (h >> 33);
  return h * 0x4CF5AD432745937Full;
}

// One block: four independent lanes of multiply-rotate over 8-byte words, folded at the end.
uint64_t block_hash(const unsigned char* p, size_t n) {
  uint64_t lane[4] = {0x9E3779B97F4A7C15ull, 0xC2B2AE3D27D4EB4Full, 0x165667B19E3779F9ull, 0x27D4EB2F165667C5ull};
  size_t i = 0;
  for (; i + 32 <= n; i += 32)
    for (int l = 0; l < 4; ++l) {
      uint64_t w;
      std::memcpy(&w, p + i + 8 * l, 8);
      lane[l] = mix64(lane[l], w);
    }
  uint64_t h = static_cast<uint64_t>(n);
  for (int l = 0; l < 4; ++l) h = mix64(h, lane[l]);
  for (; i < n; ++i) h = mix64(h, p[i]);
  return h;
}

}  // namespace

std::string checksum_bytes(const void* data, size_t n) {
  // Blocks of 1 MiB hashed in parallel, then folded in order: the value does not depend on
  // the thread count, and a multi-GB checkpoint is checked at memory speed.
  constexpr size_t kBlock = size_t{1} << 20;
  const auto* p = static_cast<const unsigned char*>(data);
  const int64_t blocks = static_cast<int64_t>((n + kBlock - 1) / kBlock);
  std::vector<uint64_t> hashes(static_cast<size_t>(std::max<int64_t>(blocks, 1)), 0);
#pragma omp parallel for schedule(static) if (blocks > 4)
  for (int64_t b = 0; b < blocks; ++b)
    hashes[b] = block_hash(p + b * kBlock, std::min(kBlock, n - static_cast<size_t>(b) * kBlock));
  uint64_t h = static_cast<uint64_t>(n) ^ 0x5bd1e9955bd1e995ull;
  for (uint64_t x : hashes) h = mix64(h, x);
  h ^= h >> 33;
  h *= 0xFF51AFD7ED558CCDull;
  h ^= h >> 33;
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(h));
  return buf;
}

// ---- writer -----------------------------------------------------------------------------------

struct CheckpointWriter::Shard {
  std::string file_name;
  h5::File file;
  std::map<std::string, int> per_name;  // pieces of one tensor in this shard
};

CheckpointWriter::CheckpointWriter(std::string save_root, int64_t iteration)
    : root_(std::move(save_root)), iteration_(iteration) {
  std::error_code ec;
  fs::create_directories(root_, ec);
  if (ec) throw ConfigError(root_ + ": cannot create the checkpoint's save directory: " + ec.message());
  final_ = (fs::path(root_) / checkpoint_dir_name(iteration)).string();
  staging_ = final_ + ".tmp-" + random_tag();
  fs::create_directories(staging_, ec);
  if (ec) throw ConfigError(staging_ + ": cannot create directory: " + ec.message());
}

CheckpointWriter::CheckpointWriter(std::string save_root, int64_t iteration, std::string staging)
    : root_(std::move(save_root)), staging_(std::move(staging)), iteration_(iteration), joined_(true) {
  final_ = (fs::path(root_) / checkpoint_dir_name(iteration)).string();
  if (!fs::is_directory(staging_)) throw ConfigError(staging_ + ": checkpoint staging directory not found");
}

std::vector<PieceInfo> CheckpointWriter::finish() {
  LLM_CHECK(joined_, "finish() is for writers that joined another's staging directory");
  for (auto& [i, sh] : shards_) sh->file.close();
  for (auto& [i, sh] : shards_) fsync_path(fs::path(staging_) / sh->file_name);
  committed_ = true;  // nothing more may be added
  return pieces_;
}

void CheckpointWriter::add_pieces(const std::vector<PieceInfo>& pieces) {
  LLM_CHECK(!committed_ && !joined_, "add_pieces() is for the writer that commits");
  for (const PieceInfo& p : pieces) {
    LLM_CHECK(fs::exists(fs::path(staging_) / p.file), staging_, "/", p.file, ": shard file of piece '", p.name,
              "' is missing");
    pieces_.push_back(p);
  }
}

CheckpointWriter::~CheckpointWriter() {
  if (committed_ || joined_) return;
  shards_.clear();
  std::error_code ec;
  fs::remove_all(staging_, ec);
}

CheckpointWriter::Shard& CheckpointWriter::shard(int index) {
  auto& s = shards_[index];
  if (!s) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "shard_%05d.h5", index);
    s = std::make_unique<Shard>(Shard{buf, h5::File::create((fs::path(staging_) / buf).string(), true), {}});
  }
  return *s;
}

void CheckpointWriter::add(const std::string& category, const std::string& name, const Shape& global_shape,
                           const Box& box, const Tensor& data, DType store, int shard_index) {
  LLM_CHECK(!committed_, "checkpoint already committed");
  LLM_CHECK(box.offset.size() == global_shape.size() && box.extent.size() == global_shape.size(), name,
            ": box rank differs from the tensor's ", shape_str(global_shape));
  for (size_t d = 0; d < global_shape.size(); ++d)
    LLM_CHECK(box.offset[d] >= 0 && box.extent[d] >= 0 && box.offset[d] + box.extent[d] <= global_shape[d], name,
              ": box outside the tensor's ", shape_str(global_shape));
  LLM_CHECK(data.numel() == numel(box.extent), name, ": piece data has ", data.numel(), " elements, box has ",
            numel(box.extent));
  LLM_CHECK(is_float(store), "unsupported checkpoint dtype");
  Shard& s = shard(shard_index);
  const std::string key = category + "|" + name;
  const int k = s.per_name[key]++;
  const std::string ds_name = dataset_name(category, name, k);
  // f32 is written straight from the tensor; half types go through a converted copy.
  std::vector<char> converted;
  const void* bytes = data.raw();
  size_t nbytes = data.nbytes();
  if (store != DType::f32 || data.dtype() != DType::f32 || !data.is_contiguous()) {
    converted = encode_as(data, store);
    bytes = converted.data();
    nbytes = converted.size();
  }
  const hid_t file_type = store == DType::f32 ? H5T_IEEE_F32LE : H5T_STD_U16LE;
  const hid_t mem_type = store == DType::f32 ? H5T_NATIVE_FLOAT : H5T_NATIVE_UINT16;
  h5::Dataset ds = s.file.create_dataset(ds_name, file_type, data.numel());
  if (data.numel() > 0) ds.write(0, data.numel(), mem_type, bytes);
  PieceInfo p{s.file_name, ds_name, category, name, global_shape, box, store, checksum_bytes(bytes, nbytes)};
  ds.write_string_attribute("category", category);
  ds.write_string_attribute("name", name);
  ds.write_string_attribute("global_shape", shape_json(global_shape));
  ds.write_string_attribute("offset", shape_json(box.offset));
  ds.write_string_attribute("extent", shape_json(box.extent));
  ds.write_string_attribute("dtype", std::string(dtype_name(store)));
  ds.write_string_attribute("checksum", p.checksum);
  pieces_.push_back(std::move(p));
}

std::string CheckpointWriter::add_file(const std::string& source_path, const std::string& relative_path) {
  const fs::path dst = fs::path(staging_) / relative_path;
  std::error_code ec;
  fs::create_directories(dst.parent_path(), ec);
  fs::copy_file(source_path, dst, fs::copy_options::overwrite_existing, ec);
  if (ec) throw ConfigError(source_path + ": cannot copy into the checkpoint: " + ec.message());
  fsync_path(dst);  // `latest` must never point at a checkpoint whose tokenizer files are empty
  fsync_path(dst.parent_path());
  return relative_path;
}

std::string pieces_to_json(const std::vector<PieceInfo>& pieces) {
  std::ostringstream out;
  out << "[";
  for (size_t i = 0; i < pieces.size(); ++i) {
    const PieceInfo& p = pieces[i];
    out << (i ? ",\n    " : "\n    ") << "{\"file\": " << json::quote(p.file) << ", \"dataset\": " << json::quote(p.dataset)
        << ", \"category\": " << json::quote(p.category) << ", \"name\": " << json::quote(p.name)
        << ", \"global_shape\": " << shape_json(p.global_shape) << ", \"offset\": " << shape_json(p.box.offset)
        << ", \"extent\": " << shape_json(p.box.extent) << ", \"dtype\": \"" << dtype_name(p.dtype)
        << "\", \"checksum\": \"" << p.checksum << "\"}";
  }
  out << "\n  ]";
  return out.str();
}

namespace {
PieceInfo piece_from_json(const json::Value& v, const std::string& where) {
  auto str = [&](const char* key) {
    const json::Value* x = v.is_object() ? v.find(key) : nullptr;
    if (!x || !x->is_string()) throw ConfigError(where + ": piece without string '" + std::string(key) + "'");
    return x->as_string();
  };
  auto arr = [&](const char* key) {
    const json::Value* x = v.is_object() ? v.find(key) : nullptr;
    if (!x) throw ConfigError(where + ": piece without '" + std::string(key) + "'");
    return shape_from_json(*x, where + " '" + key + "'");
  };
  // (the piece's tensor named from here on: which one is broken matters more than the line)
  const std::string category = str("category"), name = str("name"), at = where + " (" + category + "/" + name + ")";
  PieceInfo p{str("file"), str("dataset"), category, name, arr("global_shape"),
              Box{arr("offset"), arr("extent")}, dtype_from_name(str("dtype"), at), str("checksum")};
  // (a shard is a file of this checkpoint's directory: a path out of it reads some other file)
  if (p.file.empty() || p.file == "." || p.file == ".." || p.file.find('/') != std::string::npos)
    throw ConfigError(at + ": 'file' must be a plain file name (a shard of this checkpoint), not '" + p.file + "'");
  const size_t r = p.global_shape.size();
  if (p.box.offset.size() != r || p.box.extent.size() != r) throw ConfigError(at + ": box rank differs from the shape's");
  for (size_t d = 0; d < r; ++d)
    if (p.box.offset[d] > p.global_shape[d] || p.box.extent[d] > p.global_shape[d] - p.box.offset[d])
      throw ConfigError(at + ": box outside the tensor");  // (written so that no sum can overflow)
  return p;
}
}  // namespace

std::vector<PieceInfo> pieces_from_json(const std::string& text, const std::string& where) {
  const json::Value v = json::parse(text, where);
  if (!v.is_array()) throw ConfigError(where + ": expected a JSON array of pieces");
  std::vector<PieceInfo> out;
  for (const json::Value& p : v.as_array()) out.push_back(piece_from_json(p, where + ":" + std::to_string(p.line())));
  return out;
}

std::string CheckpointWriter::commit(const std::string& fields, int keep_last) {
  LLM_CHECK(!committed_, "checkpoint already committed");
  for (auto& [i, s] : shards_) s->file.close();
  for (auto& [i, s] : shards_) fsync_path(fs::path(staging_) / s->file_name);
  LLM_CHECK(!joined_, "a joining writer does not commit (finish() and hand the pieces to the lead)");
  std::ostringstream meta;
  meta << "{\n  " << fields << (fields.empty() ? "" : ",\n  ") << "\"format_version\": " << kCheckpointFormatVersion
       << ",\n  \"iteration\": " << iteration_ << ",\n  \"pieces\": " << pieces_to_json(pieces_) << "\n}\n";
  const fs::path meta_path = fs::path(staging_) / "metadata.json";
  {
    std::ofstream out(meta_path);
    out << meta.str();
    if (!out) throw Error(meta_path.string() + ": cannot write checkpoint metadata");
  }
  fsync_path(meta_path);
  fsync_path(staging_);
  // Publish. An existing directory of the same iteration (a re-save after resume) is swapped
  // with the new one in one step (renameat2's RENAME_EXCHANGE), so iter_N is complete at every
  // moment. Where the file system cannot exchange, the old one is moved aside first and removed
  // once the new one is in place; a crash between the two renames leaves it as iter_N.old-*,
  // which latest_checkpoint() falls back to.
  std::error_code ec;
  std::string old;
  if (fs::exists(final_)) {
    // (LLM_CHECKPOINT_NO_EXCHANGE=1 takes the other path, as on a file system without exchange: tests)
    const char* no_exchange = std::getenv("LLM_CHECKPOINT_NO_EXCHANGE");
    const bool try_exchange = !(no_exchange && std::string(no_exchange) == "1");
    if (try_exchange && ::renameat2(AT_FDCWD, staging_.c_str(), AT_FDCWD, final_.c_str(), RENAME_EXCHANGE) == 0) {
      old = staging_;  // now holds the previous checkpoint
    } else {
      const int err = try_exchange ? errno : EINVAL;
      if (err != EINVAL && err != ENOSYS && err != EOPNOTSUPP)
        throw Error(final_ + ": cannot replace the previous checkpoint: " + std::strerror(err));
      old = final_ + ".old-" + random_tag();
      fs::rename(final_, old, ec);
      if (ec) throw Error(final_ + ": cannot move the previous checkpoint aside: " + ec.message());
      fs::rename(staging_, final_, ec);
      if (ec) {
        std::error_code back;
        fs::rename(old, final_, back);  // put the previous one back where `latest` expects it
        throw Error(final_ + ": cannot publish the checkpoint: " + ec.message());
      }
    }
  } else {
    fs::rename(staging_, final_, ec);
    if (ec) throw Error(final_ + ": cannot publish the checkpoint: " + ec.message());
  }
  committed_ = true;
  fsync_path(root_);
  if (!old.empty()) fs::remove_all(old, ec);
  // Point `latest` at it, atomically.
  const fs::path latest = fs::path(root_) / "latest", tmp = fs::path(root_) / ("latest.tmp-" + random_tag());
  {
    std::ofstream out(tmp);
    out << iteration_ << "\n";
    if (!out) throw Error(tmp.string() + ": cannot write");
  }
  fsync_path(tmp);
  fs::rename(tmp, latest, ec);
  if (ec) throw Error(latest.string() + ": cannot update: " + ec.message());
  fsync_path(root_);
  // Staging directories left by saves that died mid-way (a killed job cannot clean up after
  // itself) for this or earlier iterations: nothing will ever publish them. Likewise previous
  // checkpoints moved aside by a replace that died before removing them.
  for (const auto& e : fs::directory_iterator(root_)) {
    const std::string n = e.path().filename().string();
    size_t dot = n.find(".tmp-");
    if (dot == std::string::npos) dot = n.find(".old-");
    if (!e.is_directory() || dot == std::string::npos) continue;
    const int64_t it = iteration_of(n.substr(0, dot));
    if (it >= 0 && it <= iteration_) fs::remove_all(e.path(), ec);
  }
  if (keep_last > 0) {
    std::vector<std::pair<int64_t, fs::path>> done;
    for (const auto& e : fs::directory_iterator(root_)) {
      const std::string n = e.path().filename().string();
      const int64_t it = iteration_of(n);
      if (!e.is_directory() || it < 0) continue;  // only iter_<digits>: a user's iter_best is not ours to prune
      done.emplace_back(it, e.path());
    }
    // Only those older than this one: a run resumed from an earlier checkpoint of its root (to
    // retry past a loss spike, say) leaves the later ones alone.
    std::sort(done.begin(), done.end());
    done.erase(std::remove_if(done.begin(), done.end(), [&](const auto& d) { return d.first > iteration_; }), done.end());
    for (size_t i = 0; i + static_cast<size_t>(keep_last) < done.size(); ++i)
      if (done[i].first != iteration_) fs::remove_all(done[i].second, ec);
  }
  return final_;
}

// ---- reader -----------------------------------------------------------------------------------

struct CheckpointReader::Impl {
  std::string dir;
  int64_t iteration = 0;
  json::Value meta;
  std::vector<PieceInfo> pieces;
  std::map<std::pair<std::string, std::string>, std::vector<size_t>> index;
  mutable std::map<std::string, h5::File> files;

  const h5::File& file(const std::string& name) const {
    auto it = files.find(name);
    if (it == files.end()) {
      const std::string path = (fs::path(dir) / name).string();
      if (!fs::exists(path)) throw ConfigError(path + ": checkpoint shard file is missing");
      it = files.emplace(name, h5::File::open(path)).first;
    }
    return it->second;
  }
  const std::vector<size_t>& find(const std::string& category, const std::string& name) const {
    auto it = index.find({category, name});
    if (it == index.end()) throw ConfigError(dir + ": checkpoint has no tensor '" + name + "' (" + category + ")");
    return it->second;
  }
  // The piece's values as f32, after checking its checksum.
  std::vector<float> load(const PieceInfo& p) const {
    const int64_t n = numel(p.box.extent);
    const h5::Dataset ds = file(p.file).open_dataset(p.dataset);
    const std::string where = dir + "/" + p.file + ":" + p.dataset;
    if (ds.size() != n) throw ConfigError(where + ": holds " + std::to_string(ds.size()) + " elements, metadata says " + std::to_string(n));
    std::vector<float> out(static_cast<size_t>(n));
    std::string sum;
    if (p.dtype == DType::f32) {
      if (n) ds.read(0, n, H5T_NATIVE_FLOAT, out.data());
      sum = checksum_bytes(out.data(), out.size() * 4);
    } else {
      std::vector<uint16_t> raw(static_cast<size_t>(n));
      if (n) ds.read(0, n, H5T_NATIVE_UINT16, raw.data());
      sum = checksum_bytes(raw.data(), raw.size() * 2);
      for (int64_t i = 0; i < n; ++i) out[i] = p.dtype == DType::bf16 ? bf16_to_f32(raw[i]) : f16_to_f32(raw[i]);
    }
    if (sum != p.checksum)
      throw ConfigError(where + ": checksum mismatch for tensor '" + p.name + "' (stored " + p.checksum + ", computed " + sum + ")");
    return out;
  }
};

CheckpointReader::CheckpointReader(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
CheckpointReader::CheckpointReader(CheckpointReader&&) noexcept = default;
CheckpointReader::~CheckpointReader() = default;

std::string latest_checkpoint(const std::string& save_root) {
  const fs::path latest = fs::path(save_root) / "latest";
  if (!fs::exists(latest)) return "";
  std::ifstream in(latest);
  long long it = -1;
  std::string rest;  // one number and nothing else: '20abc' or '20 21' is a damaged file, not iteration 20
  if (!(in >> it) || it < 0 || (in >> rest))
    throw ConfigError(latest.string() + ": does not hold an iteration number (one integer >= 0)");
  const fs::path dir = fs::path(save_root) / checkpoint_dir_name(it);
  if (fs::exists(dir / "metadata.json")) return dir.string();
  // A replace that could not exchange the two directories and died between its two renames
  // left the previous checkpoint of this iteration as iter_N.old-*: it is complete.
  const std::string aside = checkpoint_dir_name(it) + ".old-";
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(save_root, ec))
    if (e.path().filename().string().rfind(aside, 0) == 0 && fs::exists(e.path() / "metadata.json"))
      return e.path().string();
  throw ConfigError(latest.string() + " points to " + dir.string() + ", which is not a complete checkpoint");
}

std::string newest_complete_iteration(const std::string& save_root) {
  std::error_code ec;
  int64_t best = -1;
  std::string found;
  for (const auto& e : fs::directory_iterator(save_root, ec)) {
    const int64_t it = iteration_of(e.path().filename().string());
    if (it > best && fs::exists(e.path() / "metadata.json")) best = it, found = e.path().string();
  }
  return found;
}

void refuse_foreign_checkpoints(const std::string& dir, const std::string& what) {
  std::error_code ec;
  if (fs::exists(fs::path(dir) / "latest_checkpointed_iteration.txt", ec))
    throw ConfigError(what + ": a Megatron checkpoint directory (latest_checkpointed_iteration.txt); libllm reads its own "
                      "sharded HDF5 checkpoints and Hugging Face GPT-2 directories (llm-ckpt import), not Megatron's "
                      "torch files: convert it to a Hugging Face GPT-2 directory with Megatron's tools and import "
                      "that, or name another directory");
}

void refuse_save_root_with_checkpoints(const std::string& save_root, const std::string& what, const std::string& remedy) {
  std::error_code ec;
  if (!fs::is_directory(save_root, ec)) return;
  refuse_foreign_checkpoints(save_root, what);
  std::string newest;
  try {
    newest = latest_checkpoint(save_root);
  } catch (const ConfigError&) {  // a 'latest' pointing nowhere: the directories decide
  }
  if (newest.empty()) newest = newest_complete_iteration(save_root);
  if (newest.empty()) return;
  throw ConfigError(what + ": already holds checkpoints (the newest: " + newest +
                    "); writing another here would move its 'latest' away from them. " + remedy);
}

bool checkpoint_is_under(const std::string& checkpoint_dir, const std::string& save_root) {
  std::error_code e1, e2;
  const fs::path parent = fs::weakly_canonical(fs::path(checkpoint_dir), e1).parent_path();
  const fs::path root = fs::weakly_canonical(fs::path(save_root), e2);
  return !e1 && !e2 && parent == root;
}

void check_save_root(const std::string& save_root) {
  std::error_code ec;
  fs::path p = fs::absolute(save_root, ec);
  if (ec) throw ConfigError("--save " + save_root + ": " + ec.message());
  while (!fs::exists(p, ec) && p.has_parent_path() && p.parent_path() != p) p = p.parent_path();
  if (!fs::is_directory(p, ec))
    throw ConfigError("--save " + save_root + ": " + p.string() + " is not a directory");
  if (::access(p.c_str(), W_OK | X_OK) != 0)
    throw ConfigError("--save " + save_root + ": " + p.string() + " is not writable (" + std::strerror(errno) + ")");
}

bool save_root_is_empty(const std::string& dir) {
  std::error_code ec;
  if (!fs::exists(dir, ec)) return true;
  if (!fs::is_directory(dir, ec)) return false;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    const std::string n = e.path().filename().string();
    const bool leftover = (n.rfind("iter_", 0) == 0 && (n.find(".tmp-") != std::string::npos ||
                                                         n.find(".old-") != std::string::npos)) ||
                          n.rfind("latest.tmp-", 0) == 0;
    if (!leftover) return false;
  }
  return true;
}

CheckpointReader CheckpointReader::open(const std::string& path) {
  auto impl = std::make_unique<Impl>();
  if (fs::exists(fs::path(path) / "metadata.json")) {
    fs::path d = fs::path(path).lexically_normal();  // "runs/ck/iter_0000060/" -> ".../iter_0000060"
    if (!d.has_filename() && d.has_parent_path() && d != d.root_path()) d = d.parent_path();
    impl->dir = d.string();
  } else if ((impl->dir = latest_checkpoint(path)).empty()) {
    throw ConfigError(path + ": no checkpoint here (neither metadata.json nor a 'latest' file)");
  }
  const std::string meta_path = (fs::path(impl->dir) / "metadata.json").string();
  impl->meta = json::parse_file(meta_path);
  const json::Value& m = impl->meta;
  auto get = [&](const char* key) -> const json::Value& {
    const json::Value* v = m.find(key);
    if (!v) throw ConfigError(meta_path + ": missing key '" + std::string(key) + "'");
    return *v;
  };
  if (!m.is_object()) throw ConfigError(meta_path + ": expected a JSON object");
  if (!get("format_version").is_integer() || get("format_version").as_int() != kCheckpointFormatVersion)
    throw ConfigError(meta_path + ": unsupported checkpoint format_version (this build reads " +
                      std::to_string(kCheckpointFormatVersion) + ")");
  if (!get("iteration").is_integer() || get("iteration").as_int() < 0)
    throw ConfigError(meta_path + ": 'iteration' must be a non-negative integer");
  impl->iteration = get("iteration").as_int();
  const json::Value& pieces = get("pieces");
  if (!pieces.is_array()) throw ConfigError(meta_path + ": 'pieces' must be an array");
  for (const json::Value& v : pieces.as_array()) {
    const std::string where = meta_path + ":" + std::to_string(v.line());
    PieceInfo p = piece_from_json(v, where);
    auto& list = impl->index[{p.category, p.name}];
    if (!list.empty() && impl->pieces[list.front()].global_shape != p.global_shape)
      throw ConfigError(where + ": tensor '" + p.name + "' has pieces of different global shapes");
    list.push_back(impl->pieces.size());
    impl->pieces.push_back(std::move(p));
  }
  return CheckpointReader(std::move(impl));
}

const std::string& CheckpointReader::dir() const { return impl_->dir; }
int64_t CheckpointReader::iteration() const { return impl_->iteration; }
const json::Value& CheckpointReader::metadata() const { return impl_->meta; }
const std::vector<PieceInfo>& CheckpointReader::pieces() const { return impl_->pieces; }

bool CheckpointReader::has(const std::string& category, const std::string& name) const {
  return impl_->index.count({category, name}) > 0;
}

std::vector<std::string> CheckpointReader::names(const std::string& category) const {
  std::vector<std::string> out;
  for (const auto& [key, list] : impl_->index)
    if (key.first == category) out.push_back(key.second);
  return out;
}

Shape CheckpointReader::global_shape(const std::string& category, const std::string& name) const {
  return impl_->pieces[impl_->find(category, name).front()].global_shape;
}

void CheckpointReader::read(const std::string& category, const std::string& name, const Box& box, const Tensor& out) const {
  const auto& list = impl_->find(category, name);
  const Shape& g = impl_->pieces[list.front()].global_shape;
  const std::string what = impl_->dir + ": tensor '" + name + "' (" + category + ")";
  const size_t r = g.size();
  if (box.offset.size() != r || box.extent.size() != r) throw ConfigError(what + ": requested box rank differs from " + shape_str(g));
  for (size_t d = 0; d < r; ++d)
    if (box.offset[d] < 0 || box.offset[d] + box.extent[d] > g[d])
      throw ConfigError(what + ": requested box outside the stored shape " + shape_str(g));
  LLM_CHECK(out.dtype() == DType::f32 && out.is_contiguous() && out.numel() == numel(box.extent), what,
            ": output must be contiguous f32 of the box's size");
  // The intersections of the pieces with the box must not overlap and must add up to the box.
  struct Hit {
    size_t piece;
    Shape lo, hi;
  };
  std::vector<Hit> hits;
  int64_t covered = 0;
  for (size_t idx : list) {
    const PieceInfo& p = impl_->pieces[idx];
    Hit h{idx, Shape(r), Shape(r)};
    bool empty = false;
    for (size_t d = 0; d < r; ++d) {
      h.lo[d] = std::max(p.box.offset[d], box.offset[d]);
      h.hi[d] = std::min(p.box.offset[d] + p.box.extent[d], box.offset[d] + box.extent[d]);
      empty |= h.hi[d] <= h.lo[d];
    }
    if (empty && r > 0) continue;
    int64_t vol = 1;
    for (size_t d = 0; d < r; ++d) vol *= h.hi[d] - h.lo[d];
    for (const Hit& o : hits) {
      bool overlap = true;
      for (size_t d = 0; d < r; ++d) overlap &= std::max(o.lo[d], h.lo[d]) < std::min(o.hi[d], h.hi[d]);
      if (overlap) throw ConfigError(what + ": stored pieces overlap (elements covered twice)");
    }
    covered += vol;
    hits.push_back(std::move(h));
  }
  if (covered != numel(box.extent))
    throw ConfigError(what + ": the checkpoint covers " + std::to_string(covered) + " of the " +
                      std::to_string(numel(box.extent)) + " requested elements");
  float* dst = out.data<float>();
  if (hits.size() == 1 && impl_->pieces[hits[0].piece].box == box && impl_->pieces[hits[0].piece].dtype == DType::f32) {
    // The common case (same layout): read straight into the destination, then check it.
    const PieceInfo& p = impl_->pieces[hits[0].piece];
    const h5::Dataset ds = impl_->file(p.file).open_dataset(p.dataset);
    const int64_t n = numel(box.extent);
    if (ds.size() != n) throw ConfigError(what + ": stored piece has " + std::to_string(ds.size()) + " elements");
    if (n) ds.read(0, n, H5T_NATIVE_FLOAT, dst);
    const std::string sum = checksum_bytes(dst, static_cast<size_t>(n) * sizeof(float));
    if (sum != p.checksum)
      throw ConfigError(impl_->dir + "/" + p.file + ":" + p.dataset + ": checksum mismatch for tensor '" + p.name +
                        "' (stored " + p.checksum + ", computed " + sum + ")");
    return;
  }
  for (const Hit& h : hits) {
    const PieceInfo& p = impl_->pieces[h.piece];
    const std::vector<float> src = impl_->load(p);
    if (r == 0) {
      dst[0] = src[0];
      continue;
    }
    // Walk the intersection's rows (all dims but the last); copy each contiguous run.
    Shape idx = h.lo;
    const int64_t run = h.hi[r - 1] - h.lo[r - 1];
    while (true) {
      int64_t so = 0, doff = 0;
      for (size_t d = 0; d < r; ++d) {
        so = so * p.box.extent[d] + (idx[d] - p.box.offset[d]);
        doff = doff * box.extent[d] + (idx[d] - box.offset[d]);
      }
      std::memcpy(dst + doff, src.data() + so, static_cast<size_t>(run) * sizeof(float));
      size_t d = r - 1;
      while (d-- > 0) {
        if (++idx[d] < h.hi[d]) break;
        idx[d] = h.lo[d];
      }
      if (d == static_cast<size_t>(-1)) break;
    }
  }
}

Tensor CheckpointReader::read_whole(const std::string& category, const std::string& name) const {
  const Shape g = global_shape(category, name);
  Tensor t = Tensor::empty(g);
  read(category, name, Box::whole(g), t);
  return t;
}

int64_t CheckpointReader::verify() const {
  int64_t n = 0;
  for (const auto& [key, list] : impl_->index) {
    read_whole(key.first, key.second);
    ++n;
  }
  return n;
}

}  // namespace llm
