// Sharded HDF5 token datasets: what llm-tokenize writes and llm-pretrain reads.
//
// A dataset is a DIRECTORY:
//   manifest.json      {"format": "libllm-token-dataset", "version": 1,
//                       "tokenizer": {"kind": ..., "hash": ...}, "vocab_size": V, "eod_id": E,
//                       "dtype": "uint16" | "uint32", "num_tokens": T, "num_documents": D,
//                       "shards": [{"file": "shard_00000.h5", "num_tokens": t, "num_documents": d}, ...]}
//   shard_00000.h5 ... one HDF5 file per shard, in manifest order.
// The dataset's token stream and documents are the shards' concatenated in manifest order.
// A document never spans two shards.
//
// Each shard holds
//   /tokens        1-D, H5T_STD_U16LE when vocab_size <= 65536 else H5T_STD_U32LE, chunked in
//                  chunks of kTokenChunk (1 Mi) elements (fewer for tiny shards): 2-4 MiB, large
//                  enough that sequential reads are long contiguous runs and the chunk index
//                  stays tiny (64 chunks in a default 64 Mi-token shard).
//   /doc_offsets   1-D uint64 (H5T_STD_U64LE), num_documents + 1 entries, 0 first, num_tokens last.
//   root attributes  format_version, vocab_size, eod_id, num_tokens, num_documents (int64),
//                    tokenizer_kind, tokenizer_hash (strings).
//
// Documents may be empty (zero tokens): the writer records them so document indices stay
// aligned with the source (a Megatron import keeps every document); llm-tokenize skips empty
// texts before they get here.
//
// Publishing is atomic. Writers work in a staging directory next to the final one
// ("<final>.tmp-<tag>"), and only a complete, fsynced, re-validated directory is renamed to the
// final name; an interrupted run leaves at most a "<final>.tmp-*" directory (safe to delete),
// never something that opens under the final name. An existing final directory is refused unless
// `overwrite` is given; then it is replaced only after the new one is complete (atomically where
// the file system supports renameat2(RENAME_EXCHANGE)), and only if it is itself a token dataset
// (or an empty directory) — overwrite never deletes an unrelated directory.
#pragma once
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "data/gpt_dataset.h"
#include "data/tokenizer.h"

namespace llm {

inline constexpr int64_t kDatasetFormatVersion = 1;
inline constexpr const char* kDatasetFormatName = "libllm-token-dataset";
inline constexpr const char* kManifestFile = "manifest.json";
inline constexpr int64_t kDefaultShardTokens = int64_t{64} << 20;
inline constexpr int64_t kTokenChunk = int64_t{1} << 20;

struct DatasetInfo {
  TokenizerIdentity tokenizer;
  int64_t vocab_size = 0;
  int32_t eod_id = 0;
  bool operator==(const DatasetInfo&) const = default;
  // "uint16" when vocab_size <= 65536, else "uint32".
  std::string dtype() const;
  // Throws ConfigError(where + ...) unless 1 <= vocab_size <= 2^31, 0 <= eod_id < vocab_size and
  // the tokenizer kind and hash are non-empty.
  void validate(const std::string& where) const;
};

class DatasetPartWriter;

// ---- Writing: one process -------------------------------------------------------------------

// Writes documents in order into shards of about `shard_tokens` tokens (a shard is closed at the
// first document boundary at or after shard_tokens tokens) and publishes the dataset at
// `final_dir` in finish(). The destructor without finish() removes everything it wrote.
// An existing `final_dir` is refused already here (before any work) unless `overwrite`.
class DatasetWriter {
 public:
  DatasetWriter(std::string final_dir, DatasetInfo info, int64_t shard_tokens = kDefaultShardTokens,
                bool overwrite = false);
  ~DatasetWriter();
  DatasetWriter(const DatasetWriter&) = delete;
  DatasetWriter& operator=(const DatasetWriter&) = delete;

  // Appends one document. Ids outside [0, vocab_size) throw ConfigError naming the document index
  // (and nothing of that document is written).
  void add_document(std::span<const int32_t> ids);
  // Closes the shards, writes the manifest, fsyncs, validates and renames into place.
  void finish();

  int64_t num_documents() const;
  int64_t num_tokens() const;
  const std::string& staging_dir() const { return staging_; }

 private:
  std::string final_, staging_;
  DatasetInfo info_;
  bool overwrite_, finished_ = false;
  std::unique_ptr<DatasetPartWriter> part_;
};

// ---- Writing: several ranks -----------------------------------------------------------------
//
// Rank r of R takes a contiguous slice of the document sequence (slices in rank order) and
// writes it as part r into one shared staging directory:
//
//   tag = <same string on every rank, e.g. staging_tag() (core/fsync.h) on rank 0, broadcast>
//   dir = staging_dir_path(final_dir, tag)
//   { DatasetPartWriter w(dir, rank, info, shard_tokens); for (doc in my slice) w.add_document(doc);
//     w.finish(); }                         // part_<r>_<k>.h5 files + a part_<r>.done marker
//   barrier; all ranks succeeded?           // (allreduce of an ok flag)
//   rank 0: publish_dataset(dir, final_dir, info, R, overwrite)   // else discard_staging_dir(dir)
//
// publish_dataset renames the part files to shard_00000.h5, ... in (part, file) order and writes
// the manifest from the parts' markers, so the published dataset's documents are the parts'
// documents concatenated in part order: the same logical dataset (same documents, same token
// stream) for any number of ranks. Shard boundaries differ with R (each part starts a new shard);
// with R = 1 the files are identical to DatasetWriter's.

// "<final_dir>.tmp-<tag>": a sibling of the final directory (same file system, so the final
// rename is atomic).
std::string staging_dir_path(const std::string& final_dir, const std::string& tag);

// Writes part `part` of a dataset into `staging_dir` (created if missing). Files are
// "part_PPPPP_KKKKK.h5"; finish() fsyncs them and writes "part_PPPPP.done" (JSON: the part's
// shards and counts), which is what publish_dataset trusts. The destructor without finish()
// removes this part's files (not the directory, which other parts share).
class DatasetPartWriter {
 public:
  DatasetPartWriter(std::string staging_dir, int64_t part, DatasetInfo info,
                    int64_t shard_tokens = kDefaultShardTokens);
  ~DatasetPartWriter();
  DatasetPartWriter(const DatasetPartWriter&) = delete;
  DatasetPartWriter& operator=(const DatasetPartWriter&) = delete;

  // Ids outside [0, vocab_size) throw ConfigError naming the part and document index in the part.
  void add_document(std::span<const int32_t> ids);
  void finish();
  int64_t num_documents() const;
  int64_t num_tokens() const;

 private:
  friend class DatasetWriter;
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Assembles parts 0..num_parts-1 of `staging_dir` into a dataset and renames it to `final_dir`
// (see the overwrite rules at the top). Every part must have finished (its marker must exist);
// shard files must agree with `info` and their markers. Removes leftover files of the staging
// area. On failure throws and leaves the staging directory for discard_staging_dir.
void publish_dataset(const std::string& staging_dir, const std::string& final_dir, const DatasetInfo& info,
                     int64_t num_parts, bool overwrite = false);

// Removes a staging directory and everything in it (errors ignored).
void discard_staging_dir(const std::string& staging_dir) noexcept;

// Throws ConfigError unless a dataset may be published at final_dir: it does not exist, or
// `overwrite` and it is a token dataset or an empty directory. DatasetWriter checks this in its
// constructor and publish_dataset again at the end; multi-rank tools should call it on rank 0
// before tokenizing, so a refusal comes before hours of work rather than after.
void check_dataset_output(const std::string& final_dir, bool overwrite);

// ---- Reading --------------------------------------------------------------------------------

// An opened dataset. open() validates everything cheap to validate (see dataset.cpp) and keeps
// all document offsets in memory (8 bytes per document) and the shard files open (up to
// max_open_shards at once, least recently used closed beyond that, so huge datasets do not run
// out of file descriptors).
//
// read() is for the training loop: a hyperslab read straight from the file. The tokens' HDF5
// chunk cache is off (ChunkCache nbytes = 0): a random seq_length+1 window would otherwise pull
// a whole 2-4 MiB chunk through the cache for a few KiB, while repeats are served by the kernel's
// page cache anyway. HDF5's sieve buffer is 64 KiB (its default, the minimum read).
//
// Not thread-safe: one thread at a time may call read()/document() (they share a scratch buffer
// and the open-file pool; HDF5 itself serialises all calls behind one lock anyway).
class Dataset final : public DocumentStore {
 public:
  static Dataset open(const std::string& dir, int64_t max_open_shards = 256);
  Dataset(Dataset&&) noexcept;
  Dataset& operator=(Dataset&&) noexcept;
  ~Dataset() override;

  const std::string& dir() const;
  const DatasetInfo& info() const;
  int64_t num_tokens() const;
  int64_t num_documents() const override;
  int64_t num_shards() const;
  int64_t document_length(int64_t doc) const;
  // Global token offset of `doc`; doc == num_documents() gives num_tokens().
  int64_t document_offset(int64_t doc) const override;
  // All num_documents() + 1 offsets.
  std::span<const int64_t> document_offsets() const;

  // Writes tokens [offset, offset + n) of the concatenated stream into out (crossing shard
  // boundaries as needed). A token outside [0, vocab_size) in the file throws ConfigError
  // naming the shard.
  void read(int64_t offset, int64_t n, int32_t* out) const;
  std::vector<int32_t> document(int64_t doc) const;

  // DocumentStore.
  void read_tokens(int64_t offset, int64_t n, int32_t* out) const override { read(offset, n, out); }
  int64_t vocab_size() const override;
  // "<dir> (<T> tokens, <D> documents, <kind:hash>, offsets <hash>)": the hash of the document
  // offsets identifies what a sample index depends on.
  std::string describe() const override;

 private:
  struct Impl;
  explicit Dataset(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace llm
