#include "data/json.h"

#include <charconv>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <optional>
#include <sstream>
#include <unordered_set>

#include "core/error.h"
#include "core/fsync.h"
#include "data/utf8.h"

namespace llm::json {

namespace {

// Deep enough for any real document, shallow enough that recursion cannot exhaust the stack.
constexpr int kMaxDepth = 512;

class Parser {
 public:
  Parser(std::string_view text, std::string_view source, bool record = false, bool hjson = false)
      : s_(text), source_(source), record_(record), hjson_(hjson) {}

  Value parse_document() {
    if (const size_t bad = find_invalid_utf8(s_); bad != std::string_view::npos) {
      advance_to(bad);
      fail("invalid UTF-8");
    }
    if (s_.substr(0, 3) == "\xEF\xBB\xBF") pos_ = 3;  // RFC 8259 lets parsers skip a BOM
    skip_space();
    Value v;
    if (hjson_ && peek() != '{' && peek() != '[' && s_.find('\n') != std::string_view::npos) {
      // Hjson's root braces are optional: a document of several lines that does not open with
      // '{' or '[' is the members of an object (hjson-py's rule).
      const int line = line_, column = static_cast<int>(pos_ - line_start_ + 1);
      v = parse_members(0, false);
      v.set_location(line, column);
    } else {
      v = parse_value(0);
    }
    skip_space();
    if (pos_ != s_.size()) fail("unexpected content after the JSON value");
    return v;
  }

 private:
  [[noreturn]] void fail(const std::string& why) const {
    if (record_) throw ConfigError(detail::concat(source_, ", column ", pos_ - line_start_ + 1, ": ", why));
    throw ConfigError(detail::concat(source_, ":", line_, ":", pos_ - line_start_ + 1, ": ", why));
  }

  // Moves to `target`, counting lines (used for error positions inside strings).
  void advance_to(size_t target) {
    for (; pos_ < target; ++pos_)
      if (s_[pos_] == '\n') ++line_, line_start_ = pos_ + 1;
  }

  // Whitespace, and in Hjson the comments too: '#' and '//' to the end of the line, '/* */'.
  void skip_space() {
    for (; pos_ < s_.size(); ++pos_) {
      const char c = s_[pos_];
      if (c == '\n') {
        ++line_;
        line_start_ = pos_ + 1;
      } else if (hjson_ && starts_comment(pos_)) {
        if (c == '#' || s_[pos_ + 1] == '/') {
          while (pos_ + 1 < s_.size() && s_[pos_ + 1] != '\n') ++pos_;
        } else {
          const size_t close = s_.find("*/", pos_ + 2);
          if (close == std::string_view::npos) fail("unterminated /* comment");
          advance_to(close + 1);
        }
      } else if (c != ' ' && c != '\t' && c != '\r') {
        return;
      }
    }
  }

  bool starts_comment(size_t at) const {
    if (at >= s_.size()) return false;
    if (s_[at] == '#') return true;
    return s_[at] == '/' && at + 1 < s_.size() && (s_[at + 1] == '/' || s_[at + 1] == '*');
  }

  bool at_end() const { return pos_ >= s_.size(); }
  char peek() const { return at_end() ? '\0' : s_[pos_]; }

  void expect(char c, const char* what) {
    if (peek() != c) fail(at_end() ? detail::concat("unexpected end of input, expected ", what)
                                   : detail::concat("expected ", what, ", got ", describe_here()));
    ++pos_;
  }

  std::string describe_here() const {
    const unsigned char c = static_cast<unsigned char>(peek());
    if (c >= 0x20 && c < 0x7F) return std::string("'") + static_cast<char>(c) + "'";
    char buf[16];
    std::snprintf(buf, sizeof buf, "byte 0x%02X", c);
    return buf;
  }

  Value parse_value(int depth) {
    if (depth > kMaxDepth) fail(detail::concat("nesting deeper than ", kMaxDepth));
    const int line = line_, column = static_cast<int>(pos_ - line_start_ + 1);
    Value v;
    if (hjson_ && peek() != '{' && peek() != '[' && peek() != '"') {
      v = parse_hjson_scalar();
      v.set_location(line, column);
      return v;
    }
    switch (peek()) {
      case '{': v = parse_object(depth); break;
      case '[': v = parse_array(depth); break;
      case '"': v = Value(parse_string()); break;
      case 't': v = Value(parse_word("true", true)); break;
      case 'f': v = Value(parse_word("false", false)); break;
      case 'n': parse_word("null", false); break;
      default:
        if (peek() == '-' || (peek() >= '0' && peek() <= '9')) {
          v = parse_number();
        } else if (at_end()) {
          fail("unexpected end of input, expected a value");
        } else {
          fail("expected a value, got " + describe_here());
        }
    }
    v.set_location(line, column);
    return v;
  }

  bool parse_word(std::string_view word, bool value) {
    if (s_.substr(pos_, word.size()) != word) fail("expected a value, got " + describe_here());
    pos_ += word.size();
    return value;
  }

  Value parse_number() {
    const size_t start = pos_;
    const auto digits = [&] {
      const size_t from = pos_;
      while (pos_ < s_.size() && s_[pos_] >= '0' && s_[pos_] <= '9') ++pos_;
      return pos_ - from;
    };
    if (peek() == '-') ++pos_;
    if (peek() == '0') {
      ++pos_;
      if (peek() >= '0' && peek() <= '9') fail("leading zeros are not allowed in numbers");
    } else if (!digits()) {
      fail("expected a digit");
    }
    bool integral = true;
    if (peek() == '.') {
      ++pos_;
      integral = false;
      if (!digits()) fail("expected a digit after '.'");
    }
    if (peek() == 'e' || peek() == 'E') {
      ++pos_;
      integral = false;
      if (peek() == '+' || peek() == '-') ++pos_;
      if (!digits()) fail("expected a digit in the exponent");
    }
    const char* first = s_.data() + start;
    const char* last = s_.data() + pos_;
    if (integral) {
      int64_t i = 0;
      if (auto r = std::from_chars(first, last, i); r.ec == std::errc() && r.ptr == last) return Value(i);
    }
    double d = 0;
    if (auto r = std::from_chars(first, last, d); r.ec != std::errc() || r.ptr != last) {
      pos_ = start;
      fail("number out of range");
    }
    return Value(d);
  }

  unsigned hex4() {
    unsigned u = 0;
    for (int k = 0; k < 4; ++k, ++pos_) {
      const char c = peek();
      u <<= 4;
      if (c >= '0' && c <= '9') u |= c - '0';
      else if (c >= 'a' && c <= 'f') u |= c - 'a' + 10;
      else if (c >= 'A' && c <= 'F') u |= c - 'A' + 10;
      else fail("expected four hex digits after \\u");
    }
    return u;
  }

  // The source is valid UTF-8 (checked up front), so only quotes, escapes and control
  // characters need attention; plain runs are copied in one go.
  std::string parse_string() {
    ++pos_;  // opening quote
    std::string out;
    while (true) {
      const size_t run = pos_;
      while (pos_ < s_.size()) {
        const unsigned char c = static_cast<unsigned char>(s_[pos_]);
        if (c == '"' || c == '\\' || c < 0x20) break;
        ++pos_;
      }
      out.append(s_, run, pos_ - run);
      if (at_end()) fail("unterminated string");
      const char c = s_[pos_];
      if (c == '"') {
        ++pos_;
        return out;
      }
      if (c != '\\') fail("control character in string (must be escaped)");
      ++pos_;
      const char e = peek();
      ++pos_;
      switch (e) {
        case '"': out += '"'; break;
        case '\\': out += '\\'; break;
        case '/': out += '/'; break;
        case 'b': out += '\b'; break;
        case 'f': out += '\f'; break;
        case 'n': out += '\n'; break;
        case 'r': out += '\r'; break;
        case 't': out += '\t'; break;
        case 'u': {
          const size_t escape_at = pos_ - 2;
          unsigned cp = hex4();
          if (cp >= 0xDC00 && cp <= 0xDFFF) {
            pos_ = escape_at;
            fail("lone low surrogate escape");
          }
          if (cp >= 0xD800 && cp <= 0xDBFF) {
            if (s_.substr(pos_, 2) != "\\u") {
              pos_ = escape_at;
              fail("high surrogate escape not followed by a low surrogate escape");
            }
            pos_ += 2;
            const unsigned lo = hex4();
            if (lo < 0xDC00 || lo > 0xDFFF) {
              pos_ = escape_at;
              fail("high surrogate escape not followed by a low surrogate escape");
            }
            cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
          }
          append_utf8(out, cp);
          break;
        }
        default:
          pos_ -= 2;
          fail("invalid escape in string");
      }
    }
  }

  Value parse_array(int depth) {
    ++pos_;  // '['
    Array items;
    skip_space();
    if (peek() == ']') {
      ++pos_;
      return Value(std::move(items));
    }
    while (true) {
      skip_space();
      items.push_back(parse_value(depth + 1));
      skip_space();
      if (hjson_ && peek() == ',') {  // Hjson: commas optional, a trailing one allowed
        ++pos_;
        skip_space();
      }
      if (peek() == ']') {
        ++pos_;
        return Value(std::move(items));
      }
      if (!hjson_) expect(',', "',' or ']'");
      else if (at_end()) fail("unexpected end of input, expected ']'");
    }
  }

  Value parse_object(int depth) {
    ++pos_;  // '{'
    return parse_members(depth, true);
  }

  // The members of an object, after its '{' (or from the start of an Hjson document without root
  // braces, `braced` false: then the end of input closes it).
  Value parse_members(int depth, bool braced) {
    Object members;
    std::vector<std::pair<int, int>> key_at;  // line, column of each key, for the duplicate error
    skip_space();
    if (braced && peek() == '}') {
      ++pos_;
      return Value(std::move(members));
    }
    while (true) {
      skip_space();
      key_at.emplace_back(line_, static_cast<int>(pos_ - line_start_ + 1));
      std::string key;
      if (peek() == '"') {
        key = parse_string();
      } else if (hjson_ && !at_end()) {
        key = parse_hjson_key();
      } else {
        fail(at_end() ? "unexpected end of input, expected a string key" : "expected a string key, got " + describe_here());
      }
      skip_space();
      expect(':', "':'");
      skip_space();
      Value v = parse_value(depth + 1);
      members.emplace_back(std::move(key), std::move(v));
      skip_space();
      if (hjson_ && peek() == ',') {  // Hjson: commas optional, a trailing one allowed
        ++pos_;
        skip_space();
      }
      if (braced ? peek() == '}' : at_end()) {
        if (braced) ++pos_;
        check_unique(members, key_at);
        return Value(std::move(members));
      }
      if (!hjson_) expect(',', "',' or '}'");
      else if (at_end()) fail("unexpected end of input, expected '}'");
    }
  }

  // An Hjson key without quotes: everything up to ':', which may not hold whitespace or {}[],.
  std::string parse_hjson_key() {
    const size_t begin = pos_;
    while (!at_end() && peek() != ':') {
      const char c = peek();
      if (c == '{' || c == '}' || c == '[' || c == ']' || c == ',')
        fail("expected a key, got " + describe_here() + " (quote a key that holds {}[],: or whitespace)");
      if (c == ' ' || c == '\t' || c == '\r' || c == '\n') {
        const size_t space = pos_;
        const int line = line_;
        const size_t line_start = line_start_;
        skip_space();
        if (peek() == ':') return std::string(s_.substr(begin, space - begin));
        pos_ = space, line_ = line, line_start_ = line_start;
        fail("whitespace in a key (quote the key to include it)");
      }
      ++pos_;
    }
    if (at_end()) fail("unexpected end of input, expected ':'");
    if (pos_ == begin) fail("':' without a key (quote an empty key: \"\")");
    return std::string(s_.substr(begin, pos_ - begin));
  }

  // An Hjson value that is not quoted, an object or an array: true, false, null or a number when
  // that is all there is before the end of the line, a ',', '}', ']' or a comment; otherwise a
  // string running to the end of the line, trimmed (hjson-py's rule, so `a, b` is one string).
  Value parse_hjson_scalar() {
    if (at_end()) fail("unexpected end of input, expected a value");
    const char first = peek();
    if (first == ',' || first == '}' || first == ']' || first == ':') fail("expected a value, got " + describe_here());
    if (s_.substr(pos_, 3) == "'''")
      fail("multiline ''' strings are not read here: write the value as a \"quoted string\"");
    const size_t begin = pos_;
    for (;; ++pos_) {
      const bool eol = at_end() || peek() == '\n' || peek() == '\r';
      if (eol || peek() == ',' || peek() == '}' || peek() == ']' || starts_comment(pos_)) {
        const std::string_view chunk = trim(s_.substr(begin, pos_ - begin));
        if (chunk == "true") return Value(true);
        if (chunk == "false") return Value(false);
        if (chunk == "null") return Value();
        if (std::optional<Value> number = hjson_number(chunk, begin)) return *std::move(number);
        if (eol) return Value(std::string(chunk));
      }
    }
  }

  static std::string_view trim(std::string_view t) {
    while (!t.empty() && (t.front() == ' ' || t.front() == '\t')) t.remove_prefix(1);
    while (!t.empty() && (t.back() == ' ' || t.back() == '\t' || t.back() == '\r')) t.remove_suffix(1);
    return t;
  }

  // A JSON number as hjson-py reads one: with a fraction or an exponent it is a float, unless its
  // value is integral and under 1e10, which it turns into an integer (8.0 reads as 8).
  std::optional<Value> hjson_number(std::string_view t, size_t begin) {
    size_t i = 0;
    const auto digits = [&] {
      const size_t from = i;
      while (i < t.size() && t[i] >= '0' && t[i] <= '9') ++i;
      return i - from;
    };
    if (i < t.size() && t[i] == '-') ++i;
    if (i < t.size() && t[i] == '0') ++i;
    else if (!digits()) return std::nullopt;
    bool integral = true;
    if (i < t.size() && t[i] == '.') {
      ++i;
      integral = false;
      if (!digits()) return std::nullopt;
    }
    if (i < t.size() && (t[i] == 'e' || t[i] == 'E')) {
      ++i;
      integral = false;
      if (i < t.size() && (t[i] == '+' || t[i] == '-')) ++i;
      if (!digits()) return std::nullopt;
    }
    if (i != t.size()) return std::nullopt;
    const char* first = t.data();
    const char* last = t.data() + t.size();
    if (integral) {
      int64_t n = 0;
      if (auto r = std::from_chars(first, last, n); r.ec == std::errc() && r.ptr == last) return Value(n);
    }
    double d = 0;
    if (auto r = std::from_chars(first, last, d); r.ec != std::errc() || r.ptr != last) {
      pos_ = begin;  // hjson-py fails on it too (its float is inf, which it cannot make an int)
      fail("number out of range");
    }
    if (!integral && d == std::floor(d) && std::fabs(d) < 1e10) return Value(static_cast<int64_t>(d));
    return Value(d);
  }

  // Duplicate keys are an error: JavaScript and Python keep the last one, other readers the
  // first, so a file that has them means different things to different tools.
  void check_unique(const Object& members, const std::vector<std::pair<int, int>>& key_at) {
    std::unordered_set<std::string_view> seen;
    seen.reserve(members.size());
    for (size_t i = 0; i < members.size(); ++i) {
      if (!seen.insert(members[i].first).second) {
        if (record_)
          throw ConfigError(detail::concat(source_, ", column ", key_at[i].second, ": duplicate key ", quote(members[i].first)));
        throw ConfigError(detail::concat(source_, ":", key_at[i].first, ":", key_at[i].second,
                                         ": duplicate key ", quote(members[i].first)));
      }
    }
  }

  std::string_view s_;
  std::string_view source_;
  bool record_ = false;  // one JSON-lines record: positions as ", column C"
  bool hjson_ = false;   // Hjson, DeepSpeed's reader: comments, optional commas and quotes
  size_t pos_ = 0;
  int line_ = 1;
  size_t line_start_ = 0;
};

}  // namespace

bool Value::as_bool() const {
  LLM_CHECK(is_bool(), "JSON value is not a boolean");
  return std::get<bool>(data_);
}

double Value::as_double() const {
  LLM_CHECK(is_number(), "JSON value is not a number");
  return std::get<Number>(data_).value;
}

int64_t Value::as_int() const {
  LLM_CHECK(is_integer(), "JSON value is not an integer");
  return std::get<Number>(data_).integer;
}

const std::string& Value::as_string() const {
  LLM_CHECK(is_string(), "JSON value is not a string");
  return std::get<std::string>(data_);
}

const Array& Value::as_array() const {
  LLM_CHECK(is_array(), "JSON value is not an array");
  return std::get<Array>(data_);
}

const Object& Value::as_object() const {
  LLM_CHECK(is_object(), "JSON value is not an object");
  return std::get<Object>(data_);
}

const Value* Value::find(std::string_view key) const {
  for (const auto& [k, v] : as_object())
    if (k == key) return &v;
  return nullptr;
}

Value parse(std::string_view text, std::string_view source) {
  return Parser(text, source).parse_document();
}

Value parse_record(std::string_view text, std::string_view where) { return Parser(text, where, true).parse_document(); }

Value parse_file(const std::string& path) { return parse(read_whole_file(path, "JSON file"), path); }

Value parse_hjson(std::string_view text, std::string_view source) {
  return Parser(text, source, false, true).parse_document();
}

Value parse_hjson_file(const std::string& path) { return parse_hjson(read_whole_file(path, "JSON file"), path); }

std::string quote(std::string_view text) {
  std::string out;
  out.reserve(text.size() + 2);
  out += '"';
  for (const char ch : text) {
    const unsigned char c = static_cast<unsigned char>(ch);
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      case '\b': out += "\\b"; break;
      case '\f': out += "\\f"; break;
      default:
        if (c < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof buf, "\\u%04x", c);
          out += buf;
        } else {
          out += ch;
        }
    }
  }
  out += '"';
  return out;
}

}  // namespace llm::json
