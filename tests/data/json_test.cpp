#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <string>

#include "core/error.h"
#include "data/json.h"

using namespace llm;
using json::Value;

namespace {

// The ConfigError message for `text` as `source` (JSON by default, or Hjson), or "(parsed)".
std::string error_of(std::string_view text, Value (*parse)(std::string_view, std::string_view) = json::parse,
                     std::string_view source = "t.json") {
  try {
    parse(text, source);
  } catch (const ConfigError& e) {
    return e.what();
  }
  return "(parsed)";
}

}  // namespace

TEST(Json, ParsesEveryKind) {
  const Value v = json::parse(
      R"({"null": null, "t": true, "f": false, "int": -42, "big": 12345678901234, "pi": 3.25,)"
      R"( "exp": 1e3, "s": "text", "a": [1, [2, {}], []], "o": {"k": "v"}})");
  ASSERT_TRUE(v.is_object());
  EXPECT_EQ(v.as_object().size(), 10u);
  EXPECT_TRUE(v.find("null")->is_null());
  EXPECT_TRUE(v.find("t")->as_bool());
  EXPECT_FALSE(v.find("f")->as_bool());
  EXPECT_EQ(v.find("int")->as_int(), -42);
  EXPECT_EQ(v.find("big")->as_int(), 12345678901234);
  EXPECT_TRUE(v.find("pi")->is_number());
  EXPECT_FALSE(v.find("pi")->is_integer());
  EXPECT_DOUBLE_EQ(v.find("pi")->as_double(), 3.25);
  EXPECT_FALSE(v.find("exp")->is_integer());  // written with an exponent
  EXPECT_DOUBLE_EQ(v.find("exp")->as_double(), 1000.0);
  EXPECT_EQ(v.find("s")->as_string(), "text");
  const json::Array& a = v.find("a")->as_array();
  ASSERT_EQ(a.size(), 3u);
  EXPECT_EQ(a[1].as_array()[0].as_int(), 2);
  EXPECT_TRUE(a[1].as_array()[1].as_object().empty());
  EXPECT_TRUE(a[2].as_array().empty());
  EXPECT_EQ(v.find("o")->find("k")->as_string(), "v");
  EXPECT_EQ(v.find("missing"), nullptr);
  // Members keep document order.
  EXPECT_EQ(v.as_object().front().first, "null");
  EXPECT_EQ(v.as_object().back().first, "o");
  EXPECT_THROW(v.find("s")->as_int(), Error);
  EXPECT_THROW(v.as_array(), Error);
}

TEST(Json, ScalarsAtTopLevelAndWhitespace) {
  EXPECT_EQ(json::parse(" \t\r\n 7 \n").as_int(), 7);
  EXPECT_EQ(json::parse("\"x\"").as_string(), "x");
  EXPECT_TRUE(json::parse("null").is_null());
  EXPECT_EQ(json::parse("-0").as_int(), 0);
  EXPECT_DOUBLE_EQ(json::parse("-1.5E-2").as_double(), -0.015);
  EXPECT_DOUBLE_EQ(json::parse("1E+2").as_double(), 100.0);
  // Beyond int64: still a number, not an integer.
  const Value huge = json::parse("123456789012345678901234567890");
  EXPECT_FALSE(huge.is_integer());
  EXPECT_DOUBLE_EQ(huge.as_double(), 1.2345678901234568e29);
  EXPECT_EQ(json::parse("\xEF\xBB\xBF[1]").as_array().size(), 1u);  // a BOM is skipped
}

TEST(Json, StringEscapesAndUnicode) {
  EXPECT_EQ(json::parse(R"("a\"b\\c\/d\b\f\n\r\t")").as_string(), "a\"b\\c/d\b\f\n\r\t");
  EXPECT_EQ(json::parse(R"("\u0041\u00e9\u4e2d")").as_string(), "A\xC3\xA9\xE4\xB8\xAD");
  EXPECT_EQ(json::parse(R"("\u0000")").as_string(), std::string(1, '\0'));
  // Surrogate pairs, either case of hex digits.
  EXPECT_EQ(json::parse(R"("\ud83d\ude00")").as_string(), "\xF0\x9F\x98\x80");
  EXPECT_EQ(json::parse(R"("\uD83E\uDD8A")").as_string(), "\xF0\x9F\xA6\x8A");
  EXPECT_EQ(json::parse(R"("\udbff\udfff")").as_string(), "\xF4\x8F\xBF\xBF");
  // Raw UTF-8 is copied, including U+2028 (valid in JSON).
  EXPECT_EQ(json::parse("\"caf\xC3\xA9 \xE2\x80\xA8\"").as_string(), "caf\xC3\xA9 \xE2\x80\xA8");
  // encoder.json style: byte-alphabet characters written as escapes.
  const Value v = json::parse(R"({"\u0120the": 262, "\u010a": 198})");
  EXPECT_EQ(v.as_object()[0].first, "\xC4\xA0the");
  EXPECT_EQ(v.find("\xC4\x8A")->as_int(), 198);
}

TEST(Json, QuoteRoundTrips) {
  const std::string text =
      std::string("a\"b\\c\n\t\x01\x1f\x7f caf\xC3\xA9 \xF0\x9F\x98\x80") + std::string(1, '\0');
  const std::string quoted = json::quote(text);
  EXPECT_EQ(quoted.find('\n'), std::string::npos);
  EXPECT_EQ(json::parse(quoted).as_string(), text);
  EXPECT_EQ(json::quote("x"), "\"x\"");
  EXPECT_EQ(json::quote("\x01"), "\"\\u0001\"");
}

TEST(Json, LocationsOfValues) {
  const Value v = json::parse("{\n  \"a\": [1,\n    true]\n}");
  EXPECT_EQ(v.line(), 1);
  EXPECT_EQ(v.column(), 1);
  const Value& a = *v.find("a");
  EXPECT_EQ(a.line(), 2);
  EXPECT_EQ(a.column(), 8);
  EXPECT_EQ(a.as_array()[1].line(), 3);
  EXPECT_EQ(a.as_array()[1].column(), 5);
}

TEST(Json, ErrorsNameSourceLineAndColumn) {
  EXPECT_EQ(error_of("{\"a\": 1,}"), "t.json:1:9: expected a string key, got '}'");
  EXPECT_EQ(error_of("[1, 2,]"), "t.json:1:7: expected a value, got ']'");
  EXPECT_EQ(error_of("{\n  \"a\" 1}"), "t.json:2:7: expected ':', got '1'");
  EXPECT_EQ(error_of("[1 2]"), "t.json:1:4: expected ',' or ']', got '2'");
  EXPECT_EQ(error_of("{\"a\": 1 \"b\": 2}"), "t.json:1:9: expected ',' or '}', got '\"'");
  EXPECT_EQ(error_of(""), "t.json:1:1: unexpected end of input, expected a value");
  EXPECT_EQ(error_of("[1,"), "t.json:1:4: unexpected end of input, expected a value");
  EXPECT_EQ(error_of("{\"a\""), "t.json:1:5: unexpected end of input, expected ':'");
  EXPECT_EQ(error_of("1 2"), "t.json:1:3: unexpected content after the JSON value");
  EXPECT_EQ(error_of("{\"a\": 1, \"a\": 2}"), "t.json:1:10: duplicate key \"a\"");
  EXPECT_EQ(error_of("\n\n  \"abc"), "t.json:3:7: unterminated string");
  EXPECT_EQ(error_of("\"a\nb\""), "t.json:1:3: control character in string (must be escaped)");
  EXPECT_EQ(error_of("\"a\tb\""), "t.json:1:3: control character in string (must be escaped)");
  EXPECT_EQ(error_of(R"("\x")"), "t.json:1:2: invalid escape in string");
  EXPECT_EQ(error_of(R"("\u12g4")"), "t.json:1:6: expected four hex digits after \\u");
  const std::string unpaired = "t.json:1:2: high surrogate escape not followed by a low surrogate escape";
  EXPECT_EQ(error_of(R"("\ud83d")"), unpaired);
  EXPECT_EQ(error_of(R"("\ud83d\u0041")"), unpaired);
  EXPECT_EQ(error_of(R"(  "\ude00")"), "t.json:1:4: lone low surrogate escape");
  EXPECT_EQ(error_of("[\"ok\", \"\xFF\"]"), "t.json:1:9: invalid UTF-8");
  EXPECT_EQ(error_of("[\n\"\xC3\"]"), "t.json:2:2: invalid UTF-8");
}

TEST(Json, StrictAboutNonStandardSyntax) {
  for (const char* bad : {"01", "-", "1.", ".5", "1e", "+1", "NaN", "Infinity", "-Infinity", "tru", "nul", "True",
                          "'a'", "// c\n1", "/* c */ 1", "[1,]", "{,}", "{\"a\"}", "{a: 1}", "0x10", "1e999"}) {
    EXPECT_NE(error_of(bad), "(parsed)") << bad;
  }
  EXPECT_EQ(error_of("01"), "t.json:1:2: leading zeros are not allowed in numbers");
  EXPECT_EQ(error_of("1e999"), "t.json:1:1: number out of range");
}

TEST(Json, NestingIsLimited) {
  EXPECT_NO_THROW(json::parse(std::string(500, '[') + std::string(500, ']')));
  const std::string deep = std::string(100000, '[') + std::string(100000, ']');
  EXPECT_NE(error_of(deep).find("nesting deeper than 512"), std::string::npos);
}

TEST(Json, ParseFileNamesTheFile) {
  const std::string path = (std::filesystem::temp_directory_path() / "llm_json_test.json").string();
  {
    std::ofstream(path) << "{\"k\": [1, 2]}\n";
  }
  EXPECT_EQ(json::parse_file(path).find("k")->as_array().size(), 2u);
  {
    std::ofstream(path) << "{\"k\":\n oops}\n";
  }
  try {
    json::parse_file(path);
    FAIL() << "no error";
  } catch (const ConfigError& e) {
    EXPECT_EQ(std::string(e.what()), path + ":2:2: expected a value, got 'o'");
  }
  std::filesystem::remove(path);
  try {
    json::parse_file(path);
    FAIL() << "no error";
  } catch (const ConfigError& e) {
    EXPECT_EQ(std::string(e.what()), path + ": cannot read the JSON file (No such file or directory)");
  }
}

namespace {

std::string hjson_error_of(std::string_view text) { return error_of(text, json::parse_hjson, "ds.json"); }

}  // namespace

// DeepSpeed reads its config with hjson: what hjson-py accepts beyond JSON, and what it makes of it.
TEST(Hjson, CommentsCommasAndQuotesAreOptional) {
  const Value v = json::parse_hjson(R"({
  # a comment
  "train_batch_size": 8,   // another
  /* a block
     comment */ "zero_optimization": {stage: 2, "overlap_comm": true,},
  steps_per_print: 10
  optimizer: {
    type: AdamW
    params: {lr: 3e-4, betas: [0.9, 0.95,], eps: 1.0e-8}
  }
  note: a string, with a comma   # and a comment that stays in it
  path: /tmp/x//y
  items: [
    1
    two
    null
  ]
  empty: ""
})");
  EXPECT_EQ(v.find("train_batch_size")->as_int(), 8);
  EXPECT_EQ(v.find("zero_optimization")->find("stage")->as_int(), 2);
  EXPECT_TRUE(v.find("zero_optimization")->find("overlap_comm")->as_bool());
  EXPECT_EQ(v.find("steps_per_print")->as_int(), 10);
  const Value& opt = *v.find("optimizer");
  EXPECT_EQ(opt.find("type")->as_string(), "AdamW");
  EXPECT_DOUBLE_EQ(opt.find("params")->find("lr")->as_double(), 3e-4);
  EXPECT_EQ(opt.find("params")->find("betas")->as_array().size(), 2u);
  EXPECT_DOUBLE_EQ(opt.find("params")->find("betas")->as_array()[1].as_double(), 0.95);
  EXPECT_DOUBLE_EQ(opt.find("params")->find("eps")->as_double(), 1e-8);
  // A quoteless string runs to the end of the line, commas and '#' included (hjson-py's rule).
  EXPECT_EQ(v.find("note")->as_string(), "a string, with a comma   # and a comment that stays in it");
  EXPECT_EQ(v.find("path")->as_string(), "/tmp/x//y");
  const json::Array& items = v.find("items")->as_array();
  ASSERT_EQ(items.size(), 3u);
  EXPECT_EQ(items[0].as_int(), 1);
  EXPECT_EQ(items[1].as_string(), "two");
  EXPECT_TRUE(items[2].is_null());
  EXPECT_EQ(v.find("empty")->as_string(), "");
  EXPECT_EQ(v.find("optimizer")->line(), 7);
}

TEST(Hjson, NumbersAsHjsonPyReadsThem) {
  const Value v = json::parse_hjson("{a: 8.0, b: 1e3, c: 2.5, d: 1e10, e: -0\nf: 01\ng: 0x10\nh: 12 monkeys\ni: 3, j: four, 4\n}");
  EXPECT_TRUE(v.find("a")->is_integer());  // integral and under 1e10: an integer
  EXPECT_EQ(v.find("a")->as_int(), 8);
  EXPECT_EQ(v.find("b")->as_int(), 1000);
  EXPECT_FALSE(v.find("c")->is_integer());
  EXPECT_FALSE(v.find("d")->is_integer());  // 1e10 stays a float
  EXPECT_DOUBLE_EQ(v.find("d")->as_double(), 1e10);
  EXPECT_EQ(v.find("e")->as_int(), 0);
  EXPECT_EQ(v.find("f")->as_string(), "01");  // not a JSON number: a string
  EXPECT_EQ(v.find("g")->as_string(), "0x10");
  EXPECT_EQ(v.find("h")->as_string(), "12 monkeys");
  EXPECT_EQ(v.find("i")->as_int(), 3);  // a number ends at the ','; a string would not
  EXPECT_EQ(v.find("j")->as_string(), "four, 4");
}

TEST(Hjson, RootBracesAreOptionalAndPlainJsonReadsTheSame) {
  const Value v = json::parse_hjson("# DeepSpeed\ntrain_batch_size: 4\nfp16: {enabled: true}\n");
  EXPECT_EQ(v.find("train_batch_size")->as_int(), 4);
  EXPECT_TRUE(v.find("fp16")->find("enabled")->as_bool());
  const std::string text = R"({"a": [1, 2.5, "x", null, true, {"b": {}}], "c": "\u00e9\n"})";
  const Value strict = json::parse(text), relaxed = json::parse_hjson(text);
  EXPECT_EQ(relaxed.find("a")->as_array().size(), strict.find("a")->as_array().size());
  EXPECT_DOUBLE_EQ(relaxed.find("a")->as_array()[1].as_double(), 2.5);
  EXPECT_EQ(relaxed.find("c")->as_string(), strict.find("c")->as_string());
  EXPECT_EQ(json::parse_hjson("7").as_int(), 7);  // one line: a single value, not an object
}

TEST(Hjson, ErrorsNameTheLineAndColumn) {
  EXPECT_EQ(hjson_error_of("{\n  a: 1,\n  a: 2\n}"), "ds.json:3:3: duplicate key \"a\"");
  EXPECT_EQ(hjson_error_of("{\n  \"a\": 1\n"), "ds.json:3:1: unexpected end of input, expected '}'");
  EXPECT_EQ(hjson_error_of("{\n  my key: 1\n}"), "ds.json:2:5: whitespace in a key (quote the key to include it)");
  EXPECT_EQ(hjson_error_of("{\n  a: ,\n}"), "ds.json:2:6: expected a value, got ','");
  EXPECT_EQ(hjson_error_of("{a: 1 /* open\n}"), "ds.json:1:7: unterminated /* comment");
  EXPECT_EQ(hjson_error_of("{\n  a: '''\n  text'''\n}"),
            "ds.json:2:6: multiline ''' strings are not read here: write the value as a \"quoted string\"");
  EXPECT_EQ(hjson_error_of("[1, 2"), "ds.json:1:6: unexpected end of input, expected ']'");
  EXPECT_EQ(hjson_error_of("{a: 1e400\n}"), "ds.json:1:5: number out of range");
  // The strict reader still refuses what Hjson allows.
  EXPECT_EQ(error_of("{a: 1}"), "t.json:1:2: expected a string key, got 'a'");
}
