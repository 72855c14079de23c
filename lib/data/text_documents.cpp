#include "data/text_documents.h"

#include <sys/stat.h>

#include <algorithm>
#include <cstring>
#include <limits>

#include "core/error.h"
#include "data/json.h"
#include "data/utf8.h"

namespace llm {

namespace {
bool is_blank(const std::string& line) {
  return std::all_of(line.begin(), line.end(), [](char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\n'; });
}
void strip_newline(std::string& s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == '\r')) s.pop_back();
}
}  // namespace

DocumentReader::DocumentReader(std::vector<std::string> files, InputOptions options, int rank, int world)
    : files_(std::move(files)), opt_(std::move(options)) {
  if (files_.empty()) throw ConfigError("--input: no input files");
  if (opt_.format == InputFormat::jsonl && opt_.json_keys.empty()) throw ConfigError("--json-keys: no keys given");
  int64_t total = 0;
  for (const std::string& f : files_) {
    file_start_.push_back(total);
    if (f == "-") {
      if (world > 1 || files_.size() > 1)
        throw ConfigError("--input -: stdin can only be read by a single process as the only input");
      total = std::numeric_limits<int64_t>::max() / 2;
      continue;
    }
    struct stat st {};
    if (::stat(f.c_str(), &st) != 0) throw ConfigError(f + ": cannot read input file (" + std::strerror(errno) + ")");
    if (!S_ISREG(st.st_mode)) throw ConfigError(f + ": not a regular file");
    total += st.st_size;
  }
  file_start_.push_back(total);
  range_begin_ = total / world * rank + std::min<int64_t>(rank, total % world);
  range_end_ = total / world * (rank + 1) + std::min<int64_t>(rank + 1, total % world);
  // skip whole files that end before our range
  while (file_ < files_.size() && file_start_[file_ + 1] <= range_begin_) ++file_;
}

DocumentReader::~DocumentReader() {
  if (fp_ && fp_ != stdin) std::fclose(fp_);
}

bool DocumentReader::open_next_file() {
  while (file_ < files_.size()) {
    const int64_t start = file_start_[file_];
    if (start >= range_end_) break;  // later files belong to later ranks
    const std::string& f = files_[file_];
    if (opt_.format == InputFormat::text && opt_.boundary == DocumentBoundary::file && start < range_begin_) {
      ++file_;  // its single document started on an earlier rank
      continue;
    }
    fp_ = f == "-" ? stdin : std::fopen(f.c_str(), "rb");
    if (!fp_) throw ConfigError(f + ": cannot open input file (" + std::strerror(errno) + ")");
    pos_ = start;
    line_no_ = 0;
    const bool line_based = opt_.format == InputFormat::jsonl || opt_.boundary == DocumentBoundary::line;
    if (line_based && start < range_begin_) {
      // Start at the first line that begins inside our range: seek one byte before the range
      // and drop everything up to and including the next newline.
      const int64_t skip_to = range_begin_ - 1;
      if (std::fseek(fp_, static_cast<long>(skip_to - start), SEEK_SET) != 0)
        throw ConfigError(f + ": cannot seek in input file");
      pos_ = skip_to;
      line_no_ = -1;  // unknown after a seek; messages then give byte offsets only
      int c;
      while ((c = std::fgetc(fp_)) != EOF) {
        ++pos_;
        if (c == '\n') break;
      }
    }
    return true;
  }
  done_ = true;
  return false;
}

bool DocumentReader::read_line(std::string& line) {
  char* buf = nullptr;
  size_t cap = 0;
  const ssize_t n = ::getline(&buf, &cap, fp_);
  if (n < 0) {
    std::free(buf);
    if (std::ferror(fp_)) throw ConfigError(files_[file_] + ": read error");
    return false;
  }
  line.assign(buf, static_cast<size_t>(n));
  std::free(buf);
  pos_ += n;
  if (line_no_ >= 0) ++line_no_;
  stats_.bytes += n;
  return true;
}

void DocumentReader::emit(std::string text, const std::string& key, const std::string& where,
                          std::vector<RawDocument>& out, const Start* start) {
  // A blank text paragraph is no document; a JSON field's text goes to the tokenizer as given
  // (GPT-2's BPE encodes whitespace; a document that encodes to nothing is skipped there, as
  // Megatron's preprocess_data.py adds no EOD to and no sequence for it).
  if (opt_.format != InputFormat::jsonl ? is_blank(text) : text.empty()) {
    ++stats_.empty_skipped;
    return;
  }
  const size_t bad = find_invalid_utf8(text);
  if (bad != std::string::npos) {
    if (opt_.fail_on_invalid_utf8) {
      const int64_t lines_before = std::count(text.begin(), text.begin() + static_cast<std::ptrdiff_t>(bad), '\n');
      if (start)  // the byte's own line and offset in the file, as an editor goes to it
        throw ConfigError(detail::concat(
            start->file, start->line >= 0 ? ":" + std::to_string(start->line + lines_before) : std::string(), " (byte ",
            start->byte + static_cast<int64_t>(bad), "): invalid UTF-8 (in the document from ",
            start->line >= 0 ? "line " + std::to_string(start->line) : "byte " + std::to_string(start->byte), ")"));
      throw ConfigError(detail::concat(where, ": invalid UTF-8 at byte ", bad, " of the document, on its line ",
                                       1 + lines_before));
    }
    replace_invalid_utf8(text);
    ++stats_.utf8_replaced;
  }
  ++stats_.documents;
  out.push_back({std::move(text), key, where});
}

void DocumentReader::emit_json(const std::string& line, const std::string& where, std::vector<RawDocument>& out) {
  if (is_blank(line)) return;  // blank lines between records are not records
  auto bad = [&](const std::string& why) {
    if (opt_.fail_on_bad_json) throw ConfigError(where + ": " + why);
    ++stats_.bad_json_skipped;
  };
  // Invalid UTF-8 inside a JSON line is repaired (or refused) before parsing, like text input.
  std::string text = line;
  const size_t invalid = find_invalid_utf8(text);
  if (invalid != std::string::npos) {
    if (opt_.fail_on_invalid_utf8) throw ConfigError(detail::concat(where, ": invalid UTF-8 at byte ", invalid, " of the line"));
    replace_invalid_utf8(text);
    ++stats_.utf8_replaced;
  }
  json::Value v;
  try {
    v = json::parse_record(text, where);
  } catch (const ConfigError& e) {
    if (opt_.fail_on_bad_json) throw;
    ++stats_.bad_json_skipped;
    return;
  }
  if (!v.is_object()) return bad("expected a JSON object");
  for (const std::string& key : opt_.json_keys) {
    const json::Value* field = v.find(key);
    if (!field) return bad("no key '" + key + "'");
    if (!field->is_string()) return bad("key '" + key + "' is not a string");
  }
  for (const std::string& key : opt_.json_keys) emit(v.find(key)->as_string(), key, where, out);
}

bool DocumentReader::next_batch(std::vector<RawDocument>& out, size_t max_bytes) {
  size_t taken = 0;
  std::string line;
  auto where = [&](int64_t global) {
    const std::string& f = files_[file_];
    std::string w = f == "-" ? "<stdin>" : f;
    if (line_no_ >= 0) w += ":" + std::to_string(line_no_);
    return w + detail::concat(" (byte ", global - file_start_[file_], ")");
  };
  auto start_of = [&](int64_t global) {
    return Start{files_[file_] == "-" ? "<stdin>" : files_[file_], line_no_, global - file_start_[file_]};
  };
  auto flush_paragraph = [&] {
    if (para_start_ >= 0 && para_start_ >= range_begin_ && para_start_ < range_end_) {
      strip_newline(para_);
      taken += para_.size();
      emit(std::move(para_), "", para_where_, out, &para_at_);
    }
    para_.clear();
    para_start_ = -1;
  };
  while (!done_ && taken < max_bytes) {
    if (!fp_ && !open_next_file()) break;
    const int64_t line_start = pos_;
    if (!read_line(line)) {
      // end of this file
      if (opt_.format == InputFormat::text && opt_.boundary == DocumentBoundary::file) {
        taken += para_.size();
        emit(std::move(para_), "", files_[file_] == "-" ? "<stdin>" : files_[file_], out);  // the whole file
        para_.clear();
      } else if (opt_.format == InputFormat::text && opt_.boundary == DocumentBoundary::blank_line) {
        flush_paragraph();
      }
      if (fp_ != stdin) std::fclose(fp_);
      fp_ = nullptr;
      ++file_;
      continue;
    }
    if (opt_.format == InputFormat::jsonl || opt_.boundary == DocumentBoundary::line) {
      if (line_start >= range_end_) {
        done_ = true;
        break;
      }
      taken += line.size();
      if (opt_.format == InputFormat::jsonl) {
        emit_json(line, where(line_start), out);
      } else {
        strip_newline(line);
        const Start at = start_of(line_start);
        emit(std::move(line), "", where(line_start), out, &at);
      }
    } else if (opt_.boundary == DocumentBoundary::file) {
      para_ += line;
    } else {  // blank-line separated paragraphs
      if (is_blank(line)) {
        flush_paragraph();
        continue;
      }
      if (para_start_ < 0) {
        if (line_start >= range_end_) {
          done_ = true;
          break;
        }
        para_start_ = line_start;
        para_where_ = where(line_start);
        para_at_ = start_of(line_start);
      }
      para_ += line;
    }
  }
  if (done_ && !para_.empty()) flush_paragraph();
  return !out.empty() || !done_;
}

}  // namespace llm
