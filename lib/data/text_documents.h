// Reading raw documents for tokenization: plain text (a document per file, per blank-line
// separated paragraph, or per line) or JSON lines (the text of the --json-keys fields), from
// files or stdin, with UTF-8 repair/failure and counted skips.
//
// Under MPI each rank reads a part: the inputs are seen as one byte stream, rank r owns the
// documents whose first byte lies in [r*S/W, (r+1)*S/W). Documents keep their global order
// across ranks (rank order = input order), so the assembled dataset does not depend on W.
#pragma once
#include <cstdint>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

namespace llm {

enum class DocumentBoundary { file, blank_line, line };
enum class InputFormat { text, jsonl };

struct InputOptions {
  InputFormat format = InputFormat::text;
  DocumentBoundary boundary = DocumentBoundary::blank_line;  // text format only
  std::vector<std::string> json_keys{"text"};  // jsonl: each key's text is a document
  bool fail_on_invalid_utf8 = false;  // else replace with U+FFFD and count
  bool fail_on_bad_json = false;      // else skip the line and count
};

struct RawDocument {
  std::string text;
  std::string key;    // the JSON key it came from (jsonl), empty for text
  std::string where;  // "file:line (byte N)" (no line after a rank's seek; the file alone in file mode)
};

struct InputStats {
  int64_t documents = 0;         // returned
  int64_t empty_skipped = 0;     // empty documents (whitespace-only text, or encoding to no token)
  int64_t bad_json_skipped = 0;  // lines that did not parse or lacked the key
  int64_t utf8_replaced = 0;     // documents with invalid UTF-8 repaired
  int64_t bytes = 0;             // input bytes consumed by this rank
};

class DocumentReader {
 public:
  // files: paths, or "-" for stdin (only when world == 1).
  DocumentReader(std::vector<std::string> files, InputOptions options, int rank = 0, int world = 1);
  ~DocumentReader();
  // Appends documents until about max_bytes of text were read; false when the input is done.
  bool next_batch(std::vector<RawDocument>& out, size_t max_bytes);
  const InputStats& stats() const { return stats_; }
  // Total bytes this rank will read (for progress), 0 for stdin.
  int64_t bytes_to_read() const { return range_end_ - range_begin_; }

 private:
  bool read_line(std::string& line);
  bool open_next_file();
  // Where a text document starts in its file: the file's name, its line (-1: not known, a rank
  // that started mid-file) and byte; an invalid byte is then named by its own line and byte.
  struct Start {
    std::string file;
    int64_t line = -1, byte = 0;
  };
  void emit(std::string text, const std::string& key, const std::string& where, std::vector<RawDocument>& out,
            const Start* start = nullptr);
  void emit_json(const std::string& line, const std::string& where, std::vector<RawDocument>& out);

  std::vector<std::string> files_;
  std::vector<int64_t> file_start_;  // global byte offset of each file
  InputOptions opt_;
  int64_t range_begin_ = 0, range_end_ = 0;
  size_t file_ = 0;
  std::FILE* fp_ = nullptr;
  int64_t pos_ = 0;          // global offset of the next unread byte
  int64_t line_no_ = 0;      // 1-based line number in the current file
  InputStats stats_;
  std::string para_;          // blank-line mode: paragraph being collected
  int64_t para_start_ = -1;
  std::string para_where_;
  Start para_at_;
  bool done_ = false;
};

}  // namespace llm
