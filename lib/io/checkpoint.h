// Sharded, reshardable checkpoints.
//
// A checkpoint is a directory <save>/iter_NNNNNNN/ holding metadata.json and one or more HDF5
// shard files; <save>/latest names the newest complete one. Every stored piece of a tensor
// records the tensor's global name, global shape, dtype, the box (offset and extent per
// dimension) it covers and a checksum of its bytes. Reading asks for a box of a global tensor
// and intersects it with the stored pieces, so a checkpoint written under one parallel layout
// loads under any other; every element of the requested box must be covered exactly once.
//
// Saves are atomic: everything is written to <save>/iter_NNNNNNN.tmp-<tag>/, fsynced, renamed
// into place, and only then is `latest` replaced (itself through a temporary file and rename).
// A crash at any point leaves the previous checkpoint and a `latest` that points to a complete one.
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "data/json.h"

namespace llm {

inline constexpr int64_t kCheckpointFormatVersion = 1;

struct Box {
  Shape offset, extent;
  bool operator==(const Box&) const = default;
  static Box whole(const Shape& shape) { return {Shape(shape.size(), 0), shape}; }
};

// One stored piece of a global tensor.
struct PieceInfo {
  std::string file;      // shard file name inside the checkpoint directory
  std::string dataset;   // HDF5 path inside the file
  std::string category;  // "model", "optimizer/exp_avg", "optimizer/exp_avg_sq", ...
  std::string name;      // global tensor name
  Shape global_shape;
  Box box;
  DType dtype = DType::f32;
  std::string checksum;  // 16 hex digits over the stored bytes
};

// "iter_0000100"
std::string checkpoint_dir_name(int64_t iteration);
// 64-bit checksum of a byte range (word-wise multiply-xorshift; ~memory speed), as 16 hex digits.
std::string checksum_bytes(const void* data, size_t n);

// The pieces' index as metadata.json stores it (a JSON array), and back (for ranks that write
// shard files in parallel and send their index to the rank that commits).
std::string pieces_to_json(const std::vector<PieceInfo>& pieces);
std::vector<PieceInfo> pieces_from_json(const std::string& text, const std::string& where);

class CheckpointWriter {
 public:
  // Starts iteration `iteration` under `save_root` (created if missing).
  CheckpointWriter(std::string save_root, int64_t iteration);
  // Parallel saves: another process's writer joins the staging directory `staging` (the lead's
  // staging_dir()) and writes its own shard files there (distinct shard numbers); finish() closes
  // and fsyncs them and returns their pieces for the lead's add_pieces() before it commits. A
  // joining writer never removes or publishes the directory.
  CheckpointWriter(std::string save_root, int64_t iteration, std::string staging);
  std::vector<PieceInfo> finish();
  void add_pieces(const std::vector<PieceInfo>& pieces);
  ~CheckpointWriter();  // without commit(): removes the temporary directory
  CheckpointWriter(const CheckpointWriter&) = delete;
  CheckpointWriter& operator=(const CheckpointWriter&) = delete;

  // Stores `data` (host, any float dtype; converted to `store`) as the piece `box` of the global
  // tensor category/name of shape global_shape, in shard file number `shard`.
  void add(const std::string& category, const std::string& name, const Shape& global_shape, const Box& box,
           const Tensor& data, DType store = DType::f32, int shard = 0);
  // Copies a file into the checkpoint (e.g. tokenizer files); returns its relative path.
  std::string add_file(const std::string& source_path, const std::string& relative_path);
  // Writes metadata.json = {the given fields..., "format_version", "iteration", "pieces": [...]},
  // fsyncs, publishes the directory and updates `latest`; then keeps only the newest keep_last
  // checkpoints up to this one (0 = keep all; later iterations, of a run resumed from an earlier
  // checkpoint, are never pruned). `fields` is a JSON object body without braces, e.g.
  // "\"consumed_samples\": 10, \"model\": {...}".
  std::string commit(const std::string& fields, int keep_last = 0);
  const std::string& staging_dir() const { return staging_; }

 private:
  struct Shard;
  Shard& shard(int index);
  std::string root_, final_, staging_;
  int64_t iteration_;
  std::map<int, std::unique_ptr<Shard>> shards_;
  std::vector<PieceInfo> pieces_;
  bool committed_ = false;
  bool joined_ = false;
};

class CheckpointReader {
 public:
  // `path` is an iteration directory, or a save root holding `latest`.
  static CheckpointReader open(const std::string& path);
  CheckpointReader(CheckpointReader&&) noexcept;
  ~CheckpointReader();

  const std::string& dir() const;
  int64_t iteration() const;
  const json::Value& metadata() const;
  bool has(const std::string& category, const std::string& name) const;
  // Names stored under a category, sorted.
  std::vector<std::string> names(const std::string& category) const;
  Shape global_shape(const std::string& category, const std::string& name) const;
  const std::vector<PieceInfo>& pieces() const;

  // Fills `out` (host f32, shape = box.extent) with that box of the global tensor. Throws
  // ConfigError naming the checkpoint and tensor when the tensor is missing, the shapes
  // disagree, a piece's checksum fails, or some element is covered zero or several times.
  void read(const std::string& category, const std::string& name, const Box& box, const Tensor& out) const;
  Tensor read_whole(const std::string& category, const std::string& name) const;
  // Checks every piece's checksum and that every global tensor is covered exactly once.
  // Returns the number of tensors checked.
  int64_t verify() const;

 private:
  struct Impl;
  explicit CheckpointReader(std::unique_ptr<Impl>);
  std::unique_ptr<Impl> impl_;
};

// The iteration directory `latest` under save_root points to, or "" if there is none.
std::string latest_checkpoint(const std::string& save_root);

// The newest iter_<digits> directory under save_root holding a metadata.json, or "".
std::string newest_complete_iteration(const std::string& save_root);

// True when dir does not exist or holds nothing but what interrupted saves leave behind
// (iter_N.tmp-*, iter_N.old-*, latest.tmp-*): a save root to start from scratch in.
bool save_root_is_empty(const std::string& dir);

// A ConfigError naming `what` when `dir` holds another program's checkpoints that libllm cannot
// read (Megatron's latest_checkpointed_iteration.txt), instead of taking it for an empty one.
void refuse_foreign_checkpoints(const std::string& dir, const std::string& what);

// For whoever is about to add checkpoints to save_root: a ConfigError when it already holds a
// complete one (naming `what`, e.g. "--save runs/ck", that checkpoint, and `remedy`). The new
// checkpoint would move 'latest' away from the ones there, and a --keep-last would count them.
void refuse_save_root_with_checkpoints(const std::string& save_root, const std::string& what, const std::string& remedy);
// Whether `checkpoint_dir` (an iteration directory) sits directly under save_root.
bool checkpoint_is_under(const std::string& checkpoint_dir, const std::string& save_root);

// Whether a save under save_root can be made, checked before a run trains for it: the root is a
// directory, or its nearest existing ancestor is one that can be written into. Throws
// ConfigError naming --save and the path otherwise.
void check_save_root(const std::string& save_root);

}  // namespace llm
