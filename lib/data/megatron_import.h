// Import of Megatron-LM / Megatron-DeepSpeed indexed datasets (PREFIX.idx + PREFIX.bin, the
// "MMIDIDX" format written by tools/preprocess_data.py) into a libllm token dataset.
//
// PREFIX.idx, little-endian:
//   9 bytes   magic "MMIDIDX\0\0"
//   uint64    version, 1
//   uint8     dtype code of the .bin elements: 1 uint8, 2 int8, 3 int16, 4 int32, 5 int64,
//             6 float64, 7 float32, 8 uint16 (megatron/core/datasets/indexed_dataset.py DType;
//             older copies label 6/7 differently, but both are floats, which token ids never are)
//   uint64    S, the number of sequences
//   uint64    N, the number of document-index entries (documents + 1)
//   int32     sizes[S]      elements per sequence
//   int64     pointers[S]   byte offset of each sequence in .bin (contiguous: p[i+1] = p[i] + size*elt)
//   int64     doc_idx[N]    sequence boundaries of documents: 0 first, S last, non-decreasing
// (a multimodal index adds int8 modes[S]; that is refused.)
// PREFIX.bin: the sequences' elements back to back.
//
// One Megatron document (its sequences concatenated) becomes one libllm document, empty ones
// included, so document indices match the source. Everything is validated before or while
// converting; errors name the file (.idx or .bin) and the offending index.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "data/dataset.h"

namespace llm {

struct MegatronIndex {
  std::string idx_path, bin_path;
  int dtype_code = 0;
  int64_t element_size = 0;
  std::vector<int32_t> sizes;
  std::vector<int64_t> pointers;
  std::vector<int64_t> doc_idx;
  // The file's doc_idx was [0] alone (older Megatron's merge tool wrote no document index): each
  // sequence taken as a document, as Megatron's GPT training reads such a file.
  bool documents_from_sequences = false;
  int64_t num_sequences() const { return static_cast<int64_t>(sizes.size()); }
  int64_t num_documents() const { return static_cast<int64_t>(doc_idx.size()) - 1; }
  int64_t num_tokens() const;
};

// "uint16", "float64", ...; "unknown" for codes outside the table.
const char* megatron_dtype_name(int code);

// Reads and validates PREFIX.idx (header, sizes, contiguous pointers, doc_idx) and checks that
// PREFIX.bin has exactly the size the index describes.
MegatronIndex read_megatron_index(const std::string& prefix);

// Random access to a Megatron dataset's documents.
class MegatronReader {
 public:
  explicit MegatronReader(const std::string& prefix);
  ~MegatronReader();
  MegatronReader(const MegatronReader&) = delete;
  MegatronReader& operator=(const MegatronReader&) = delete;

  const MegatronIndex& index() const { return index_; }
  int64_t num_documents() const { return index_.num_documents(); }
  // Document `doc`'s elements (all its sequences, in order), widened to int64.
  std::vector<int64_t> document(int64_t doc) const;

 private:
  MegatronIndex index_;
  int fd_ = -1;
  mutable std::vector<char> buffer_;
};

struct MegatronImportStats {
  int64_t documents = 0, tokens = 0;
  bool documents_from_sequences = false;  // MegatronIndex's
};

// Converts PREFIX into a dataset at out_dir (DatasetWriter: atomic publish, overwrite rules).
// The .idx does not record a tokenizer: `info` says which one made it (its vocabulary bounds
// every id; an id outside [0, vocab_size) throws naming PREFIX.bin and the document).
MegatronImportStats import_megatron(const std::string& prefix, const std::string& out_dir, const DatasetInfo& info,
                                    int64_t shard_tokens = kDefaultShardTokens, bool overwrite = false);

}  // namespace llm
