#include "data/gpt2_bpe.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <bit>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <queue>
#include <sstream>
#include <unordered_map>

#include "core/error.h"
#include "core/fsync.h"
#include "data/json.h"
#include "data/utf8.h"

namespace llm {

namespace {

// ---------------------------------------------------------------------------------------------
// Pre-tokenisation. The reference (OpenAI's encoder.py, Megatron's copy of it, Hugging Face's
// GPT2Tokenizer; the JavaScript port we test against, its \s made Python's) splits text with
//   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
// PCRE2 gets the same alternatives, but with the classes spelled out, so they mean what the
// reference's mean rather than what this PCRE2 build's Unicode tables say:
//
// * \s is Python's `regex` module's, which encoder.py and Megatron split with: Unicode's
//   White_Space, \t \n \v \f \r, space, U+0085, U+00A0, U+1680, U+2000-200A, U+2028, U+2029,
//   U+202F, U+205F, U+3000. JavaScript's \s lacks U+0085 and has U+FEFF (the npm port's ids
//   differ there; the differential tests give the port Python's class, tests/data/
//   gpt2_python_regex.js); PCRE2's (with UCP) also has U+180E.
// * \p{L}, \p{N}: the reference runs Unicode 17 (Node 20.20, ICU 78), PCRE2 10.42 Unicode 14.
//   The letters and numbers assigned since are listed next to \p{L}/\p{N}. The lists come from
//   testing every code point with both engines; no code point stopped being L or N in that
//   time, so the union is exact with any PCRE2 from Unicode 14 to 17.
constexpr const char* kSpaceClass =
    "\\t\\n\\x0B\\f\\r\\x20\\x{85}\\x{A0}\\x{1680}\\x{2000}-\\x{200A}\\x{2028}\\x{2029}"
    "\\x{202F}\\x{205F}\\x{3000}";
constexpr const char* kLettersSinceUnicode14 =
    "\\x{88F}\\x{C5C}\\x{CDC}\\x{1C89}-\\x{1C8A}\\x{A7CB}-\\x{A7CF}\\x{A7D2}\\x{A7D4}"
    "\\x{A7DA}-\\x{A7DC}\\x{A7F1}\\x{105C0}-\\x{105F3}\\x{10940}-\\x{10959}\\x{10D4A}-\\x{10D65}"
    "\\x{10D6F}-\\x{10D85}\\x{10EC2}-\\x{10EC7}\\x{1123F}-\\x{11240}\\x{11380}-\\x{11389}"
    "\\x{1138B}\\x{1138E}\\x{11390}-\\x{113B5}\\x{113B7}\\x{113D1}\\x{113D3}"
    "\\x{11BC0}-\\x{11BE0}\\x{11DB0}-\\x{11DDB}\\x{11F02}\\x{11F04}-\\x{11F10}"
    "\\x{11F12}-\\x{11F33}\\x{1342F}\\x{13441}-\\x{13446}\\x{13460}-\\x{143FA}"
    "\\x{16100}-\\x{1611D}\\x{16D40}-\\x{16D6C}\\x{16EA0}-\\x{16EB8}\\x{16EBB}-\\x{16ED3}"
    "\\x{16FF2}-\\x{16FF3}\\x{187F8}-\\x{187FF}\\x{18CFF}\\x{18D09}-\\x{18D1E}"
    "\\x{18D80}-\\x{18DF2}\\x{1B132}\\x{1B155}\\x{1DF25}-\\x{1DF2A}\\x{1E030}-\\x{1E06D}"
    "\\x{1E4D0}-\\x{1E4EB}\\x{1E5D0}-\\x{1E5ED}\\x{1E5F0}\\x{1E6C0}-\\x{1E6DE}"
    "\\x{1E6E0}-\\x{1E6E2}\\x{1E6E4}-\\x{1E6E5}\\x{1E6E7}-\\x{1E6ED}\\x{1E6F0}-\\x{1E6F4}"
    "\\x{1E6FE}-\\x{1E6FF}\\x{2B739}-\\x{2B73F}\\x{2CEA2}-\\x{2CEAD}\\x{2EBF0}-\\x{2EE5D}"
    "\\x{31350}-\\x{33479}";
constexpr const char* kNumbersSinceUnicode14 =
    "\\x{10D40}-\\x{10D49}\\x{116D0}-\\x{116E3}\\x{11BF0}-\\x{11BF9}\\x{11DE0}-\\x{11DE9}"
    "\\x{11F50}-\\x{11F59}\\x{16130}-\\x{16139}\\x{16D70}-\\x{16D79}\\x{16FF4}-\\x{16FF6}"
    "\\x{1CCF0}-\\x{1CCF9}\\x{1D2C0}-\\x{1D2D3}\\x{1E4F0}-\\x{1E4F9}\\x{1E5F1}-\\x{1E5FA}";

std::string pretokenize_pattern() {
  const std::string space = kSpaceClass;
  const std::string letter = std::string("\\p{L}") + kLettersSinceUnicode14;
  const std::string number = std::string("\\p{N}") + kNumbersSinceUnicode14;
  return "'s|'t|'re|'ve|'m|'ll|'d"
         "| ?[" + letter + "]+"
         "| ?[" + number + "]+"
         "| ?[^" + space + letter + number + "]+"
         "|[" + space + "]+(?![^" + space + "])"
         "|[" + space + "]+";
}

// The regex costs ~40 ns a match even with JIT, and most text is ASCII, where the alternatives
// reduce to a few byte classes. ascii_piece_end gives the end of the match that starts at `at`
// when ASCII bytes alone decide it, and 0 when a non-ASCII character could change it (it could
// be a letter, digit, space or other); then the regex decides.
enum ByteClass : uint8_t { kOther, kLetter, kDigit, kSpace, kNonAscii };

constexpr std::array<ByteClass, 256> make_byte_classes() {
  std::array<ByteClass, 256> of{};
  for (int b = 0; b < 256; ++b) {
    of[b] = b >= 0x80                                           ? kNonAscii
            : (b >= 'a' && b <= 'z') || (b >= 'A' && b <= 'Z') ? kLetter
            : b >= '0' && b <= '9'                             ? kDigit
            : b == ' ' || (b >= '\t' && b <= '\r')             ? kSpace  // \t \n \v \f \r: JavaScript's
                                                               : kOther;
  }
  return of;
}
constexpr std::array<ByteClass, 256> kByteClasses = make_byte_classes();

size_t ascii_piece_end(const unsigned char* s, size_t n, size_t at) {
  const ByteClass* cls = kByteClasses.data();
  const unsigned char c = s[at];
  if (c == '\'' && at + 1 < n) {  // 's 't 're 've 'm 'll 'd
    const unsigned char d = s[at + 1];
    if (d == 's' || d == 't' || d == 'm' || d == 'd') return at + 2;
    if (at + 2 < n && ((d == 'r' && s[at + 2] == 'e') || (d == 'v' && s[at + 2] == 'e') ||
                       (d == 'l' && s[at + 2] == 'l')))
      return at + 3;
  }
  ByteClass run = cls[c];
  size_t from = at + 1;
  if (c == ' ' && at + 1 < n && cls[s[at + 1]] != kSpace) {  // " ?" before a letter/digit/other run
    run = cls[s[at + 1]];
    from = at + 2;
  }
  if (run == kNonAscii) return 0;
  size_t end = from;
  while (end < n && cls[s[end]] == run) ++end;
  if (end < n && cls[s[end]] == kNonAscii) return 0;  // the run might go on
  if (run != kSpace || end == n) return end;
  // A space run followed by a non-space: \s+(?!\S) leaves the last space to the next piece
  // (where " ?" takes it, or \s+ alone), and a single one is matched by \s+.
  return end - at >= 2 ? end - 1 : end;
}

// Skips ASCII a word at a time, then lets the full check look at the rest.
bool is_valid_utf8(std::string_view text) {
  size_t i = 0;
  for (; i + 8 <= text.size(); i += 8) {
    uint64_t w;
    std::memcpy(&w, text.data() + i, 8);
    if (w & 0x8080808080808080ull) break;
  }
  return find_invalid_utf8(text.substr(i)) == std::string_view::npos;
}

// Calls emit(piece) for each match of the pre-tokenisation regex over valid UTF-8. Every
// character starts a match of some alternative, so the matches tile the text.
template <typename Emit>
void for_each_piece(const pcre2_code* regex, bool jit, pcre2_match_data* match, std::string_view text,
                    bool regex_only, Emit&& emit) {
  const auto* subject = reinterpret_cast<PCRE2_SPTR>(text.data());
  const PCRE2_SIZE* span = pcre2_get_ovector_pointer(match);
  for (size_t at = 0, end = 0; at < text.size(); at = end) {
    end = regex_only ? 0 : ascii_piece_end(subject, text.size(), at);
    if (!end) {
      const int rc = jit ? pcre2_jit_match(regex, subject, text.size(), at, 0, match, nullptr)
                         : pcre2_match(regex, subject, text.size(), at, PCRE2_NO_UTF_CHECK, match, nullptr);
      if (rc < 0) {
        PCRE2_UCHAR message[256];
        pcre2_get_error_message(rc, message, sizeof message);
        LLM_FAIL("GPT-2 pre-tokenisation failed at byte ", at, ": ", reinterpret_cast<const char*>(message));
      }
      LLM_CHECK(span[0] == at && span[1] > at, "GPT-2 pre-tokenisation skipped text at byte ", at);
      end = span[1];
    }
    emit(text.substr(at, end - at));
  }
}

// ---------------------------------------------------------------------------------------------
// Reading the vocabulary and merges files.
//
// GPT-2's byte <-> character alphabet (bytes_to_unicode in encoder.py): printable Latin-1 bytes
// stand for themselves, the other 68 bytes for U+0100.. in byte order. Vocabulary and merges
// files spell tokens in these characters.
struct ByteAlphabet {
  uint32_t char_of_byte[256];
  int16_t byte_of_char[0x144];  // -1 where the character is not in the alphabet

  ByteAlphabet() {
    std::fill(std::begin(byte_of_char), std::end(byte_of_char), int16_t{-1});
    uint32_t next = 0x100;
    for (uint32_t b = 0; b < 256; ++b) {
      const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
      char_of_byte[b] = printable ? b : next++;
      byte_of_char[char_of_byte[b]] = static_cast<int16_t>(b);
    }
  }
};

const ByteAlphabet& byte_alphabet() {
  static const ByteAlphabet alphabet;
  return alphabet;
}

// Decodes one code point of valid UTF-8 at s[i], advancing i.
uint32_t next_code_point(std::string_view s, size_t& i) {
  const unsigned char c = static_cast<unsigned char>(s[i++]);
  if (c < 0x80) return c;
  const int extra = c >= 0xF0 ? 3 : c >= 0xE0 ? 2 : 1;
  uint32_t cp = c & (0x3F >> extra);
  for (int k = 0; k < extra && i < s.size(); ++k) cp = (cp << 6) | (static_cast<unsigned char>(s[i++]) & 0x3F);
  return cp;
}

// A token spelled in the byte alphabet -> its bytes; false if a character is outside it.
bool alphabet_to_bytes(std::string_view spelled, std::string& bytes, uint32_t* bad_char) {
  const ByteAlphabet& a = byte_alphabet();
  bytes.clear();
  for (size_t i = 0; i < spelled.size();) {
    const uint32_t cp = next_code_point(spelled, i);
    if (cp >= 0x144 || a.byte_of_char[cp] < 0) {
      *bad_char = cp;
      return false;
    }
    bytes += static_cast<char>(a.byte_of_char[cp]);
  }
  return true;
}

std::string code_point_name(uint32_t cp) {
  char buf[16];
  std::snprintf(buf, sizeof buf, "U+%04X", cp);
  return buf;
}

std::string read_file(const std::string& path, const char* what) {
  return read_whole_file(path, std::string("GPT-2 ") + what + " file");
}

// Merge rule lookup keyed by the pair of token ids: open addressing, linear probing, a power of
// two at most half full. The hot path of BPE is this lookup, so no strings are involved.
class MergeTable {
 public:
  struct Rule {
    int32_t rank;
    int32_t merged;  // id of the concatenated token
  };

  explicit MergeTable(size_t rules) {
    size_t cap = 16;
    while (cap < 2 * rules) cap *= 2;
    slots_.assign(cap, Slot{kEmpty, {0, 0}});
    shift_ = 64 - static_cast<int>(std::countr_zero(cap));
  }

  // Later rules for the same pair replace earlier ones (the reference builds a dict).
  void set(int32_t left, int32_t right, Rule rule) {
    const uint64_t key = pack(left, right);
    for (size_t i = slot_of(key);; i = (i + 1) & (slots_.size() - 1)) {
      if (slots_[i].key == kEmpty || slots_[i].key == key) {
        slots_[i] = Slot{key, rule};
        return;
      }
    }
  }

  const Rule* find(int32_t left, int32_t right) const {
    const uint64_t key = pack(left, right);
    for (size_t i = slot_of(key);; i = (i + 1) & (slots_.size() - 1)) {
      const Slot& s = slots_[i];
      if (s.key == key) return &s.rule;
      if (s.key == kEmpty) return nullptr;
    }
  }

 private:
  static constexpr uint64_t kEmpty = ~0ull;  // ids are < 2^31, so no pair packs to this
  struct Slot {
    uint64_t key;
    Rule rule;
  };
  static uint64_t pack(int32_t left, int32_t right) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(left)) << 32) | static_cast<uint32_t>(right);
  }
  size_t slot_of(uint64_t key) const { return (key * 0x9E3779B97F4A7C15ull) >> shift_; }

  std::vector<Slot> slots_;
  int shift_ = 0;
};

struct Vocabulary {
  std::vector<std::string> token_bytes;  // by id
  std::unordered_map<std::string, int32_t> id_of;
  int32_t byte_token[256];  // id of each single-byte token
  int32_t eod = -1;
};

// {"token spelled in the byte alphabet": id, ...} with ids numbering the tokens 0..n-1.
Vocabulary read_vocabulary(const std::string& path, const std::string& text) {
  const json::Value vocab = json::parse(text, path);
  if (!vocab.is_object()) throw ConfigError(path + ": expected a JSON object of token -> id");
  const json::Object& entries = vocab.as_object();
  const auto where = [&](const json::Value& v) {
    return detail::concat(path, ":", v.line(), ":", v.column(), ": ");
  };
  Vocabulary out;
  out.token_bytes.resize(entries.size());
  out.id_of.reserve(entries.size());
  std::vector<bool> seen(entries.size(), false);
  std::string bytes;
  for (const auto& [spelled, value] : entries) {
    if (!value.is_integer() || value.as_int() < 0 || value.as_int() >= static_cast<int64_t>(entries.size()))
      throw ConfigError(detail::concat(where(value), "id of token ", json::quote(spelled),
                                       " must be an integer in [0, ", entries.size(),
                                       ") (ids must number the tokens densely)"));
    const int32_t id = static_cast<int32_t>(value.as_int());
    if (seen[id]) throw ConfigError(detail::concat(where(value), "id ", id, " is used twice"));
    seen[id] = true;
    uint32_t bad = 0;
    if (!alphabet_to_bytes(spelled, bytes, &bad))
      throw ConfigError(detail::concat(where(value), "token ", json::quote(spelled), " contains ",
                                       code_point_name(bad),
                                       ", which is not in GPT-2's byte-to-unicode alphabet"));
    out.token_bytes[id] = bytes;
    out.id_of.emplace(bytes, id);
    if (spelled == "<|endoftext|>") out.eod = id;
  }
  if (out.eod < 0) throw ConfigError(path + ": no \"<|endoftext|>\" token");
  for (int b = 0; b < 256; ++b) {
    const auto it = out.id_of.find(std::string(1, static_cast<char>(b)));
    if (it == out.id_of.end())
      throw ConfigError(detail::concat(path, ": no token for the byte ", b, " (spelled ",
                                       code_point_name(byte_alphabet().char_of_byte[b]), ")"));
    out.byte_token[b] = it->second;
  }
  return out;
}

// Like every reference reader (encoder.py, Megatron, Hugging Face's GPT2Tokenizer): the first
// line is a "#version" header and the lines up to the last newline are rules "left right",
// ranked by position. Those readers silently drop a first line that is a rule and a last line
// without a newline, so both are errors here instead.
MergeTable read_merges(const std::string& path, const std::string& text, const Vocabulary& vocab,
                       const std::string& vocab_path) {
  // The decoder below trusts UTF-8 (an overlong "\xC0\xA1" would read as '!').
  if (const size_t bad = find_invalid_utf8(text); bad != std::string::npos)
    throw ConfigError(detail::concat(path, ":", 1 + std::count(text.begin(), text.begin() + static_cast<std::ptrdiff_t>(bad), '\n'),
                                     ": invalid UTF-8 at byte ", bad, " of the file"));
  std::vector<std::string_view> lines;
  for (size_t at = 0; at < text.size();) {
    size_t end = text.find('\n', at);
    if (end == std::string::npos) end = text.size();
    lines.push_back(std::string_view(text).substr(at, end - at));
    at = end + 1;
  }
  if (lines.empty() || !lines[0].starts_with("#version"))
    throw ConfigError(path + ":1: expected a \"#version\" header line");
  if (!text.ends_with('\n') && lines.back().find_first_not_of(" \t\r") != std::string_view::npos)
    throw ConfigError(detail::concat(path, ":", lines.size(),
                                     ": last line has no newline (GPT-2's readers ignore such a line)"));

  MergeTable merges(lines.size());
  std::string bytes[2];
  int32_t ids[2];
  for (size_t i = 1; i < lines.size(); ++i) {
    const auto at = [&] { return detail::concat(path, ":", i + 1, ": "); };  // for errors only
    std::string_view fields[2];
    size_t count = 0;
    const std::string_view line = lines[i];
    for (size_t p = line.find_first_not_of(" \t\r\v\f"); p != std::string_view::npos;
         p = line.find_first_not_of(" \t\r\v\f", p)) {
      const size_t end = std::min(line.find_first_of(" \t\r\v\f", p), line.size());
      if (count < 2) fields[count] = line.substr(p, end - p);
      ++count;
      p = end;
    }
    if (count == 0) continue;  // the references give a blank line a rank that matches nothing
    if (count != 2) throw ConfigError(detail::concat(at(), "expected two tokens, got ", count));
    for (int k = 0; k < 2; ++k) {
      uint32_t bad = 0;
      if (!alphabet_to_bytes(fields[k], bytes[k], &bad))
        throw ConfigError(detail::concat(at(), "token ", json::quote(fields[k]), " contains ",
                                         code_point_name(bad),
                                         ", which is not in GPT-2's byte-to-unicode alphabet"));
      const auto it = vocab.id_of.find(bytes[k]);
      if (it == vocab.id_of.end())
        throw ConfigError(
            detail::concat(at(), "token ", json::quote(fields[k]), " is not in the vocabulary ", vocab_path));
      ids[k] = it->second;
    }
    const auto merged = vocab.id_of.find(bytes[0] + bytes[1]);
    if (merged == vocab.id_of.end())
      throw ConfigError(detail::concat(at(), "merged token ",
                                       json::quote(std::string(fields[0]) + std::string(fields[1])),
                                       " is not in the vocabulary ", vocab_path));
    merges.set(ids[0], ids[1], {static_cast<int32_t>(i - 1), merged->second});
  }
  return merges;
}

pcre2_code* compile_pretokenizer(bool* jit) {
  int error = 0;
  PCRE2_SIZE error_at = 0;
  const std::string pattern = pretokenize_pattern();
  // ANCHORED: every position starts a match (see for_each_piece), so anchoring changes nothing
  // but lets the engine skip its search for a start.
  pcre2_code* regex = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(),
                                    PCRE2_UTF | PCRE2_UCP | PCRE2_ANCHORED, &error, &error_at, nullptr);
  if (!regex) {
    PCRE2_UCHAR message[256];
    pcre2_get_error_message(error, message, sizeof message);
    LLM_FAIL("GPT-2 pre-tokenisation regex does not compile at offset ", error_at, ": ",
             reinterpret_cast<const char*>(message));
  }
  // JIT is several times faster; without it (unsupported CPU, or disabled) the interpreter gives
  // the same matches.
  *jit = pcre2_jit_compile(regex, PCRE2_JIT_COMPLETE) == 0;
  return regex;
}

// ---------------------------------------------------------------------------------------------
// Encoding state and BPE.

// Each tokenizer gets a serial number so per-thread state can tell whose it is (an address
// could be reused by a later tokenizer with other files).
std::atomic<uint64_t> next_serial{1};

// Pieces longer than this are not cached: they are rare and repeat even more rarely.
constexpr size_t kMaxCachedPieceBytes = 128;

uint64_t load64(const char* p) {
  uint64_t w;
  std::memcpy(&w, p, 8);
  return w;
}

uint32_t load32(const char* p) {
  uint32_t w;
  std::memcpy(&w, p, 4);
  return w;
}

// The first 8 bytes of a piece, zero-padded, read with whole-word loads: byte-wise copies into
// a word stall the load that follows, and this runs once per piece.
uint64_t head_of(std::string_view piece) {
  const char* p = piece.data();
  const size_t n = piece.size();
  if (n >= 8) return load64(p);
  if (n >= 4) return load32(p) | static_cast<uint64_t>(load32(p + n - 4)) << (8 * (n - 4));
  if (n == 0) return 0;
  const auto byte = [&](size_t i) {
    return static_cast<uint64_t>(static_cast<unsigned char>(p[i])) << (8 * i);
  };
  return byte(0) | byte(n / 2) | byte(n - 1);
}

// 64-bit hash of a piece given its head: multiply-xorshift over 8-byte words (the last word may
// overlap the one before; the hash need not be injective, the cache compares keys).
uint64_t hash_piece(std::string_view piece, uint64_t head) {
  const auto mix = [](uint64_t h, uint64_t w) {
    h = (h ^ w) * 0xBF58476D1CE4E5B9ull;
    return h ^ (h >> 31);
  };
  uint64_t h = mix(0x9E3779B97F4A7C15ull ^ piece.size(), head);
  if (piece.size() > 8) {
    size_t i = 8;
    for (; i + 8 < piece.size(); i += 8) h = mix(h, load64(piece.data() + i));
    h = mix(h, load64(piece.data() + piece.size() - 8));
  }
  h *= 0x94D049BB133111EBull;
  return (h ^ (h >> 32)) | 1;  // 0 marks an empty cache slot
}

// Pre-token -> ids, open addressing with 16-byte slots: the table is probed once per piece at
// random, so its size in cache lines is what costs. A slot holds the key's first 8 bytes and,
// for the common short one-token piece, the id itself; longer keys and multi-token pieces keep
// the rest in a side record.
class PieceCache {
 public:
  // `piece` is 2..kMaxCachedPieceBytes long; `head` and `h` are head_of and hash_piece of it.
  const int32_t* find(std::string_view piece, uint64_t head, uint64_t h, uint32_t* count) const {
    if (slots_.empty()) return nullptr;
    const uint32_t check = check_of(piece, h);
    for (size_t i = index_of(check);; i = (i + 1) & (slots_.size() - 1)) {
      const Slot& s = slots_[i];
      if (s.check == 0) return nullptr;
      if (s.check != check || s.head != head) continue;
      if (s.value >= 0) {
        *count = 1;
        return &s.value;
      }
      const int32_t* record = records_.data() + ~s.value;  // count, tail offset, ids
      if (piece.size() > 8 && std::memcmp(tails_.data() + record[1], piece.data() + 8, piece.size() - 8) != 0)
        continue;
      *count = static_cast<uint32_t>(record[0]);
      return record + 2;
    }
  }

  void insert(std::string_view piece, uint64_t head, uint64_t h, const int32_t* ids, size_t count) {
    // Bounded memory: a long run over diverse text starts over rather than growing forever.
    if (used_ >= kMaxEntries) clear();
    if (2 * (used_ + 1) > slots_.size()) grow();
    Slot s{head, check_of(piece, h), 0};
    if (piece.size() <= 8 && count == 1) {
      s.value = ids[0];
    } else {
      s.value = ~static_cast<int32_t>(records_.size());
      records_.push_back(static_cast<int32_t>(count));
      records_.push_back(static_cast<int32_t>(tails_.size()));
      records_.insert(records_.end(), ids, ids + count);
      if (piece.size() > 8) tails_.append(piece.substr(8));
    }
    place(s);
    ++used_;
  }

  void clear() {
    slots_.clear();
    tails_.clear();
    records_.clear();
    used_ = 0;
  }

 private:
  // With keys of at most kMaxCachedPieceBytes, the side arenas stay far below 2^31 entries.
  static constexpr size_t kMaxEntries = size_t{1} << 17;
  struct Slot {
    uint64_t head;   // the key's first 8 bytes, zero-padded
    uint32_t check;  // 24 bits of hash above the key length; 0: empty (keys are >= 2 bytes)
    int32_t value;   // >= 0: the one id; < 0: ~offset of the record in records_
  };
  static uint32_t check_of(std::string_view piece, uint64_t h) {
    return static_cast<uint32_t>(h >> 40) << 8 | static_cast<uint32_t>(piece.size());
  }
  // The slot index is the top bits of the check's hash part, so growing can re-place slots
  // without their keys (tables stay far below 2^24 slots).
  size_t index_of(uint32_t check) const { return (check >> 8) >> shift_; }

  void place(const Slot& s) {
    for (size_t i = index_of(s.check);; i = (i + 1) & (slots_.size() - 1)) {
      if (slots_[i].check == 0) {
        slots_[i] = s;
        return;
      }
    }
  }

  void grow() {
    std::vector<Slot> old;
    old.swap(slots_);
    slots_.assign(std::max<size_t>(4096, 2 * old.size()), Slot{0, 0, 0});
    shift_ = 24 - std::countr_zero(slots_.size());
    for (const Slot& s : old)
      if (s.check) place(s);
  }

  std::vector<Slot> slots_;
  int shift_ = 0;
  std::string tails_;
  std::vector<int32_t> records_;
  size_t used_ = 0;
};

// Per-thread state: PCRE2 match data, the pre-token cache and BPE scratch space. encode() is
// const and may run on many threads at once; keeping this per thread needs no locks. One
// thread alternating between two tokenizers restarts the cache at each switch (correct, slower).
struct ThreadState {
  uint64_t owner = 0;  // serial of the tokenizer the cache belongs to
  pcre2_match_data* match = nullptr;
  PieceCache cache;
  std::vector<int32_t> symbols;
  std::vector<int32_t> next, prev;  // linked list for long pieces
  std::string repaired;

  ThreadState() : match(pcre2_match_data_create(1, nullptr)) {
    if (!match) throw std::bad_alloc();
  }
  ~ThreadState() { pcre2_match_data_free(match); }
  ThreadState(const ThreadState&) = delete;
  ThreadState& operator=(const ThreadState&) = delete;

  // Scratch space grown by a huge piece is given back rather than kept for the thread's life.
  void trim() {
    if (symbols.capacity() > (1u << 16)) {
      std::vector<int32_t>().swap(symbols);
      std::vector<int32_t>().swap(next);
      std::vector<int32_t>().swap(prev);
    }
    if (repaired.capacity() > (1u << 20)) std::string().swap(repaired);
  }
};

ThreadState& thread_state(uint64_t serial) {
  thread_local ThreadState state;
  if (state.owner != serial) {
    state.cache.clear();
    state.owner = serial;
  }
  return state;
}

// Pieces at least this long are merged with a heap (n log n) instead of rescanning all pairs
// after every merge (n^2), which matters for long runs of letters, digits or spaces.
constexpr size_t kHeapMinSymbols = 48;

// BPE on one piece as the reference does it: repeatedly take the lowest-ranked adjacent pair
// and merge all of its non-overlapping occurrences left to right. symbols holds the byte
// tokens on entry and the result on return.
void merge_by_scan(const MergeTable& merges, std::vector<int32_t>& symbols) {
  size_t n = symbols.size();
  int32_t* s = symbols.data();
  while (n > 1) {
    int32_t best_rank = INT32_MAX, merged = -1;
    size_t first = 0;
    for (size_t i = 0; i + 1 < n; ++i) {
      const MergeTable::Rule* r = merges.find(s[i], s[i + 1]);
      if (r && r->rank < best_rank) {
        best_rank = r->rank;
        merged = r->merged;
        first = i;
      }
    }
    if (merged < 0) break;
    const int32_t left = s[first], right = s[first + 1];
    size_t out = first;
    for (size_t i = first; i < n;) {
      if (i + 1 < n && s[i] == left && s[i + 1] == right) {
        s[out++] = merged;
        i += 2;
      } else {
        s[out++] = s[i++];
      }
    }
    n = out;
  }
  symbols.resize(n);
}

// The same result with a priority queue of candidate pairs ordered by (rank, position). All
// occurrences of one rank are merged before any pair created meanwhile is considered, even a
// pair of lower rank (possible when a token has two merge rules): the reference merges every
// occurrence of the chosen pair in one pass, then looks again.
void merge_by_heap(const MergeTable& merges, ThreadState& ts) {
  std::vector<int32_t>& s = ts.symbols;
  const int32_t n = static_cast<int32_t>(s.size());
  std::vector<int32_t>& next = ts.next;
  std::vector<int32_t>& prev = ts.prev;
  next.resize(n);
  prev.resize(n);
  for (int32_t i = 0; i < n; ++i) next[i] = i + 1 < n ? i + 1 : -1, prev[i] = i - 1;

  struct Candidate {
    int32_t rank, pos, left, right;
    bool operator>(const Candidate& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
  };
  std::priority_queue<Candidate, std::vector<Candidate>, std::greater<>> heap;
  std::vector<Candidate> deferred;
  int32_t current = -1;
  const auto consider = [&](int32_t pos) {
    const int32_t q = next[pos];
    if (q < 0) return;
    const MergeTable::Rule* r = merges.find(s[pos], s[q]);
    if (!r) return;
    const Candidate c{r->rank, pos, s[pos], s[q]};
    if (r->rank < current) deferred.push_back(c);
    else heap.push(c);
  };
  for (int32_t i = 0; i + 1 < n; ++i) consider(i);

  while (true) {
    if (heap.empty() || heap.top().rank != current) {
      for (const Candidate& c : deferred) heap.push(c);
      deferred.clear();
    }
    if (heap.empty()) break;
    const Candidate c = heap.top();
    heap.pop();
    current = c.rank;
    const int32_t q = next[c.pos];
    if (s[c.pos] != c.left || q < 0 || s[q] != c.right) continue;  // stale
    s[c.pos] = merges.find(c.left, c.right)->merged;
    next[c.pos] = next[q];
    if (next[q] >= 0) prev[next[q]] = c.pos;
    s[q] = -1;
    if (prev[c.pos] >= 0) consider(prev[c.pos]);
    consider(c.pos);
  }
  int32_t out = 0;
  for (int32_t i = 0; i >= 0; i = next[i]) s[out++] = s[i];
  s.resize(out);
}

}  // namespace

// ---------------------------------------------------------------------------------------------
struct GPT2BPETokenizer::Tables {
  Vocabulary vocab;
  MergeTable merges{0};
  TokenizerIdentity identity;
  pcre2_code* regex = nullptr;
  bool jit = false;
  uint64_t serial = 0;

  ~Tables() { pcre2_code_free(regex); }
};

GPT2BPETokenizer::GPT2BPETokenizer(const std::string& vocab_path, const std::string& merges_path) {
  auto t = std::make_unique<Tables>();
  const std::string vocab_text = read_file(vocab_path, "vocabulary");
  const std::string merges_text = read_file(merges_path, "merges");
  t->identity = {"GPT2BPETokenizer", hash_bytes(hash_bytes(vocab_text) + hash_bytes(merges_text))};
  t->vocab = read_vocabulary(vocab_path, vocab_text);
  t->merges = read_merges(merges_path, merges_text, t->vocab, vocab_path);
  t->vocab.id_of = {};  // only needed to read the merges
  t->regex = compile_pretokenizer(&t->jit);
  t->serial = next_serial.fetch_add(1);
  tables_ = std::move(t);
}

GPT2BPETokenizer::~GPT2BPETokenizer() = default;

void GPT2BPETokenizer::encode_append(std::string_view text, std::vector<int32_t>& out) const {
  const Tables& t = *tables_;
  ThreadState& ts = thread_state(t.serial);
  if (!is_valid_utf8(text)) {
    ts.repaired.assign(text);
    replace_invalid_utf8(ts.repaired);
    text = ts.repaired;
  }
  for_each_piece(t.regex, t.jit, ts.match, text, false, [&](std::string_view piece) {
    if (piece.size() == 1) {
      out.push_back(t.vocab.byte_token[static_cast<unsigned char>(piece[0])]);
      return;
    }
    const bool cacheable = piece.size() <= kMaxCachedPieceBytes;
    const uint64_t head = head_of(piece);
    const uint64_t h = cacheable ? hash_piece(piece, head) : 0;
    if (cacheable) {
      uint32_t count = 0;
      if (const int32_t* ids = ts.cache.find(piece, head, h, &count)) {
        if (count == 1) out.push_back(*ids);
        else out.insert(out.end(), ids, ids + count);
        return;
      }
    }
    ts.symbols.resize(piece.size());
    for (size_t i = 0; i < piece.size(); ++i)
      ts.symbols[i] = t.vocab.byte_token[static_cast<unsigned char>(piece[i])];
    if (piece.size() >= kHeapMinSymbols) merge_by_heap(t.merges, ts);
    else merge_by_scan(t.merges, ts.symbols);
    out.insert(out.end(), ts.symbols.begin(), ts.symbols.end());
    if (cacheable) ts.cache.insert(piece, head, h, ts.symbols.data(), ts.symbols.size());
  });
  ts.trim();
}

std::vector<int32_t> GPT2BPETokenizer::encode(std::string_view text) const {
  std::vector<int32_t> ids;
  ids.reserve(text.size() / 3 + 16);  // English text runs at about 4 bytes per token
  encode_append(text, ids);
  return ids;
}

std::vector<std::string> GPT2BPETokenizer::pretokenize(std::string_view text, bool regex_only) const {
  const Tables& t = *tables_;
  ThreadState& ts = thread_state(t.serial);
  std::string repaired;
  if (!is_valid_utf8(text)) {
    repaired.assign(text);
    replace_invalid_utf8(repaired);
    text = repaired;
  }
  std::vector<std::string> pieces;
  for_each_piece(t.regex, t.jit, ts.match, text, regex_only,
                 [&](std::string_view piece) { pieces.emplace_back(piece); });
  return pieces;
}

std::string GPT2BPETokenizer::decode(std::span<const int32_t> ids) const {
  std::string out;
  for (const int32_t id : ids) {
    LLM_CHECK(id >= 0 && id < vocab_size(), "GPT-2 token id ", id, " outside [0, ", vocab_size(), ")");
    out += tables_->vocab.token_bytes[id];
  }
  return out;
}

std::string GPT2BPETokenizer::token_bytes(int32_t id) const {
  LLM_CHECK(id >= 0 && id < vocab_size(), "GPT-2 token id ", id, " outside [0, ", vocab_size(), ")");
  return tables_->vocab.token_bytes[id];
}

int64_t GPT2BPETokenizer::vocab_size() const { return static_cast<int64_t>(tables_->vocab.token_bytes.size()); }

int32_t GPT2BPETokenizer::eod_id() const { return tables_->vocab.eod; }

TokenizerIdentity GPT2BPETokenizer::identity() const { return tables_->identity; }

}  // namespace llm
