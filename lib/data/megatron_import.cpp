#include "data/megatron_import.h"

#include <fcntl.h>
#include <unistd.h>

#include <bit>
#include <cerrno>
#include <cstring>
#include <numeric>
#include <filesystem>
#include <fstream>

#include "core/error.h"

namespace llm {

static_assert(std::endian::native == std::endian::little, "the Megatron reader assumes a little-endian host");

namespace {

constexpr char kMagic[9] = {'M', 'M', 'I', 'D', 'I', 'D', 'X', '\0', '\0'};
constexpr int64_t kHeaderBytes = 9 + 8 + 1 + 8 + 8;

int64_t element_size_of(int code) {
  switch (code) {
    case 1: case 2: return 1;  // uint8, int8
    case 3: case 8: return 2;  // int16, uint16
    case 4: case 7: return 4;  // int32, float32
    case 5: case 6: return 8;  // int64, float64
    default: return 0;
  }
}

template <typename T>
T load(const char* p) {
  T v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

template <typename T>
void read_array(std::ifstream& in, std::vector<T>& v, uint64_t n) {
  v.resize(static_cast<size_t>(n));
  if (n) in.read(reinterpret_cast<char*>(v.data()), static_cast<std::streamsize>(n * sizeof(T)));
}

}  // namespace

int64_t MegatronIndex::num_tokens() const {
  int64_t n = 0;
  for (int32_t s : sizes) n += s;
  return n;
}

const char* megatron_dtype_name(int code) {
  switch (code) {
    case 1: return "uint8";
    case 2: return "int8";
    case 3: return "int16";
    case 4: return "int32";
    case 5: return "int64";
    case 6: return "float64";
    case 7: return "float32";
    case 8: return "uint16";
    default: return "unknown";
  }
}

MegatronIndex read_megatron_index(const std::string& prefix) {
  namespace fs = std::filesystem;
  MegatronIndex ix;
  ix.idx_path = prefix + ".idx";
  ix.bin_path = prefix + ".bin";
  const std::string& idx = ix.idx_path;
  std::error_code ec;
  if (!fs::is_regular_file(idx, ec)) throw ConfigError(idx + ": no such file (expected a Megatron index)");
  if (!fs::is_regular_file(ix.bin_path, ec)) throw ConfigError(ix.bin_path + ": no such file (expected Megatron data)");
  const auto idx_size = static_cast<uint64_t>(fs::file_size(idx));
  const auto bin_size = static_cast<uint64_t>(fs::file_size(ix.bin_path));

  std::ifstream in(idx, std::ios::binary);
  if (!in) throw ConfigError(idx + ": cannot read");
  if (idx_size < static_cast<uint64_t>(kHeaderBytes))
    throw ConfigError(detail::concat(idx, ": truncated header (", idx_size, " bytes, a header is ", kHeaderBytes, ")"));
  char header[kHeaderBytes];
  in.read(header, kHeaderBytes);
  if (!in) throw ConfigError(idx + ": cannot read the header");
  if (std::memcmp(header, kMagic, sizeof kMagic) != 0)
    throw ConfigError(idx + (std::memcmp(header, "TNTIDX\0\0", 8) == 0
                                 ? ": Megatron's legacy index (TNTIDX, --dataset-impl lazy or cached); only the mmap "
                                   "format (MMIDIDX) is read: run preprocess_data.py with --dataset-impl mmap"
                                 : ": bad magic (not a Megatron MMIDIDX index file)"));
  const auto version = load<uint64_t>(header + 9);
  if (version != 1) throw ConfigError(detail::concat(idx, ": version ", version, ", expected 1"));
  ix.dtype_code = static_cast<unsigned char>(header[17]);
  ix.element_size = element_size_of(ix.dtype_code);
  if (ix.element_size == 0) throw ConfigError(detail::concat(idx, ": unknown dtype code ", ix.dtype_code));
  if (ix.dtype_code == 6 || ix.dtype_code == 7)
    throw ConfigError(detail::concat(idx, ": dtype code ", ix.dtype_code, " (", megatron_dtype_name(ix.dtype_code),
                                     ") is not an integer token type"));
  const auto seqs = load<uint64_t>(header + 18);
  const auto entries = load<uint64_t>(header + 26);

  // Sizes must match exactly; the divisions keep huge header counts from overflowing.
  const uint64_t body = idx_size - static_cast<uint64_t>(kHeaderBytes);
  const bool fits = seqs <= body / 12 && entries <= (body - seqs * 12) / 8;
  const uint64_t expected = fits ? static_cast<uint64_t>(kHeaderBytes) + seqs * 12 + entries * 8 : 0;
  if (fits && idx_size == expected + seqs && seqs > 0)
    throw ConfigError(idx + ": has per-sequence modes (a multimodal index); only token datasets can be imported");
  if (!fits)
    throw ConfigError(detail::concat(idx, ": is ", idx_size, " bytes, too short for the ", seqs, " sequences and ",
                                     entries, " document-index entries its header announces (truncated?)"));
  if (idx_size != expected)
    throw ConfigError(detail::concat(idx, ": is ", idx_size, " bytes, but its header (", seqs, " sequences, ", entries,
                                     " document-index entries) needs ", expected, " bytes (trailing data?)"));
  read_array(in, ix.sizes, seqs);
  read_array(in, ix.pointers, seqs);
  read_array(in, ix.doc_idx, entries);
  if (!in) throw ConfigError(idx + ": read failed");

  int64_t pos = 0;
  for (uint64_t i = 0; i < seqs; ++i) {
    if (ix.sizes[i] < 0) throw ConfigError(detail::concat(idx, ": sequence ", i, " has negative size ", ix.sizes[i]));
    if (ix.pointers[i] != pos)
      throw ConfigError(detail::concat(idx, ": sequence ", i, " points at byte ", ix.pointers[i], ", expected ", pos,
                                       " (sequences must be stored back to back)"));
    pos += ix.sizes[i] * ix.element_size;
  }
  if (static_cast<uint64_t>(pos) != bin_size)
    throw ConfigError(detail::concat(ix.bin_path, ": is ", bin_size, " bytes, but ", idx, " describes ", pos,
                                     " bytes (", bin_size < static_cast<uint64_t>(pos) ? "truncated" : "trailing data",
                                     ")"));
  if (entries == 0) throw ConfigError(idx + ": doc_idx is empty (it needs at least the leading 0)");
  if (entries == 1 && ix.doc_idx[0] == 0 && seqs > 0) {
    // Older Megatron's merge_file_ (tools/merge_datasets.py) appended the sizes but never the
    // document index; its GPT training reads sequences alone, so each sequence is a document.
    ix.doc_idx.resize(seqs + 1);
    std::iota(ix.doc_idx.begin(), ix.doc_idx.end(), int64_t{0});
    ix.documents_from_sequences = true;
  }
  if (ix.doc_idx[0] != 0) throw ConfigError(detail::concat(idx, ": doc_idx[0] is ", ix.doc_idx[0], ", expected 0"));
  for (uint64_t d = 1; d < entries; ++d)
    if (ix.doc_idx[d] < ix.doc_idx[d - 1])
      throw ConfigError(detail::concat(idx, ": doc_idx[", d, "] = ", ix.doc_idx[d], " is smaller than doc_idx[", d - 1,
                                       "] = ", ix.doc_idx[d - 1]));
  if (ix.doc_idx.back() != static_cast<int64_t>(seqs))
    throw ConfigError(detail::concat(idx, ": doc_idx[", entries - 1, "] = ", ix.doc_idx.back(),
                                     ", expected the sequence count ", seqs));
  return ix;
}

MegatronReader::MegatronReader(const std::string& prefix) : index_(read_megatron_index(prefix)) {
  fd_ = ::open(index_.bin_path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd_ < 0) throw ConfigError(index_.bin_path + ": cannot open: " + std::strerror(errno));
}

MegatronReader::~MegatronReader() {
  if (fd_ >= 0) ::close(fd_);
}

std::vector<int64_t> MegatronReader::document(int64_t doc) const {
  LLM_CHECK(doc >= 0 && doc < num_documents(), index_.idx_path, ": document ", doc, " of ", num_documents());
  const int64_t first = index_.doc_idx[static_cast<size_t>(doc)], last = index_.doc_idx[static_cast<size_t>(doc) + 1];
  if (first == last) return {};
  const int64_t begin = index_.pointers[static_cast<size_t>(first)];
  const int64_t end = index_.pointers[static_cast<size_t>(last - 1)] +
                      int64_t{index_.sizes[static_cast<size_t>(last - 1)]} * index_.element_size;
  buffer_.resize(static_cast<size_t>(end - begin));
  size_t done = 0;
  while (done < buffer_.size()) {
    const ssize_t r = ::pread(fd_, buffer_.data() + done, buffer_.size() - done, static_cast<off_t>(begin) +
                                                                                     static_cast<off_t>(done));
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0)
      throw ConfigError(detail::concat(index_.bin_path, ": cannot read document ", doc, " (bytes ", begin, "-", end,
                                       "): ", r == 0 ? "unexpected end of file" : std::strerror(errno)));
    done += static_cast<size_t>(r);
  }
  const size_t n = buffer_.size() / static_cast<size_t>(index_.element_size);
  std::vector<int64_t> out(n);
  const char* p = buffer_.data();
  switch (index_.dtype_code) {
    case 1: for (size_t k = 0; k < n; ++k) out[k] = load<uint8_t>(p + k); break;
    case 2: for (size_t k = 0; k < n; ++k) out[k] = load<int8_t>(p + k); break;
    case 3: for (size_t k = 0; k < n; ++k) out[k] = load<int16_t>(p + 2 * k); break;
    case 8: for (size_t k = 0; k < n; ++k) out[k] = load<uint16_t>(p + 2 * k); break;
    case 4: for (size_t k = 0; k < n; ++k) out[k] = load<int32_t>(p + 4 * k); break;
    case 5: for (size_t k = 0; k < n; ++k) out[k] = load<int64_t>(p + 8 * k); break;
    default: LLM_FAIL(index_.idx_path, ": dtype code ", index_.dtype_code, " slipped through validation");
  }
  return out;
}

MegatronImportStats import_megatron(const std::string& prefix, const std::string& out_dir, const DatasetInfo& info,
                                    int64_t shard_tokens, bool overwrite) {
  const MegatronReader reader(prefix);  // validates the index before the writer refuses or creates anything
  DatasetWriter writer(out_dir, info, shard_tokens, overwrite);
  const MegatronIndex& ix = reader.index();
  std::vector<int32_t> ids;
  MegatronImportStats stats;
  stats.documents_from_sequences = ix.documents_from_sequences;
  for (int64_t d = 0; d < reader.num_documents(); ++d) {
    const std::vector<int64_t> doc = reader.document(d);
    ids.resize(doc.size());
    for (size_t k = 0; k < doc.size(); ++k) {
      if (doc[k] < 0 || doc[k] >= info.vocab_size)
        throw ConfigError(detail::concat(ix.bin_path, ": document ", d, " (sequences ", ix.doc_idx[static_cast<size_t>(d)],
                                         "-", ix.doc_idx[static_cast<size_t>(d) + 1] - 1, "): token id ", doc[k],
                                         " at position ", k, " is outside the vocabulary [0, ", info.vocab_size,
                                         ") of ", info.tokenizer.str()));
      ids[k] = static_cast<int32_t>(doc[k]);
    }
    writer.add_document(ids);
    ++stats.documents;
    stats.tokens += static_cast<int64_t>(ids.size());
  }
  writer.finish();
  return stats;
}

}  // namespace llm
