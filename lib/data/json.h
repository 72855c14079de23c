// A small, strict JSON reader (RFC 8259) for the files tokenizers and datasets read: GPT-2's
// encoder.json, JSON-lines documents, golden test fixtures. Errors are ConfigErrors that name the
// source, line and column. Strict means: no comments, no trailing commas, no NaN/Infinity, no
// leading zeros, no raw control characters or invalid UTF-8 in strings, no lone surrogate escapes,
// no duplicate object keys, nothing after the value but whitespace. parse_hjson() relaxes this for
// the files people write by hand that another reader defines as Hjson (DeepSpeed's config).
#pragma once
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

namespace llm::json {

class Value;
using Array = std::vector<Value>;
using Object = std::vector<std::pair<std::string, Value>>;  // members in document order

class Value {
 public:
  enum class Kind { null, boolean, number, string, array, object };

  Value() = default;
  explicit Value(bool b) : data_(b) {}
  explicit Value(double d) : data_(Number{d, false, 0}) {}
  explicit Value(int64_t i) : data_(Number{static_cast<double>(i), true, i}) {}
  explicit Value(std::string s) : data_(std::move(s)) {}
  explicit Value(Array a) : data_(std::move(a)) {}
  explicit Value(Object o) : data_(std::move(o)) {}

  Kind kind() const { return static_cast<Kind>(data_.index()); }
  bool is_null() const { return kind() == Kind::null; }
  bool is_bool() const { return kind() == Kind::boolean; }
  bool is_number() const { return kind() == Kind::number; }
  // A number written without fraction or exponent that fits in int64.
  bool is_integer() const { return is_number() && std::get<Number>(data_).exact; }
  bool is_string() const { return kind() == Kind::string; }
  bool is_array() const { return kind() == Kind::array; }
  bool is_object() const { return kind() == Kind::object; }

  // Accessors throw llm::Error when the kind is wrong; callers that read user files check the
  // kind first and report the location (line(), column()) themselves.
  bool as_bool() const;
  double as_double() const;
  int64_t as_int() const;
  const std::string& as_string() const;
  const Array& as_array() const;
  const Object& as_object() const;
  // Member `key` of an object, or nullptr (linear search: objects here are small or iterated).
  const Value* find(std::string_view key) const;

  // Where the value starts in its source (1-based; the column counts bytes); 0 if built in code.
  int line() const { return line_; }
  int column() const { return column_; }
  void set_location(int line, int column) { line_ = line, column_ = column; }

 private:
  struct Number {
    double value;
    bool exact;  // `integer` holds the literal exactly
    int64_t integer;
  };
  std::variant<std::monostate, bool, Number, std::string, Array, Object> data_;
  int line_ = 0, column_ = 0;
};

// Parses one JSON text. `source` names it in errors ("file.json:3:14: expected ':'").
Value parse(std::string_view text, std::string_view source = "<json>");
// The same for one record of a JSON-lines file: errors read "<where>, column C: why" (where names
// the file, line and byte offset; the record's own line number would always be 1).
Value parse_record(std::string_view text, std::string_view where);
// Reads and parses a file; a missing or unreadable file is a ConfigError naming the path.
Value parse_file(const std::string& path);

// Hjson (hjson.github.io), the reader DeepSpeed loads its config with (hjson-py's rules): JSON plus
// '#', '//' and '/* */' comments, optional and trailing commas, keys without quotes, values
// without quotes (true, false, null or a number when nothing else precedes the end of the line, a
// ',', '}', ']' or a comment; otherwise a string to the end of the line), and optional braces
// around a document's root object. A number with a fraction or exponent whose value is integral
// and under 1e10 reads as an integer, as hjson-py has it. Multiline ''' strings are refused by
// name. Duplicate keys stay an error (DeepSpeed refuses them too).
Value parse_hjson(std::string_view text, std::string_view source = "<hjson>");
Value parse_hjson_file(const std::string& path);

// The JSON string literal for UTF-8 text (quotes included). Control characters, '"' and '\' are
// escaped; everything else is copied, so invalid UTF-8 stays invalid (callers repair first).
std::string quote(std::string_view text);

}  // namespace llm::json
