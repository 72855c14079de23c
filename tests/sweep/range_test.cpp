#include <gtest/gtest.h>

#include "core/error.h"
#include "sweep/range.h"

using namespace llm;
using namespace llm::sweep;

namespace {
std::string error_of(const std::string& flag, const std::string& text) {
  try {
    parse_int_list(flag, text);
  } catch (const ConfigError& e) {
    return e.what();
  }
  return "";
}
}  // namespace

TEST(SweepRange, ListsAndRanges) {
  EXPECT_EQ(parse_int_list("--seq-lens", "128,256, 512"), (std::vector<int64_t>{128, 256, 512}));
  EXPECT_EQ(parse_int_list("--seq-lens", "128 256"), (std::vector<int64_t>{128, 256}));
  EXPECT_EQ(parse_int_list("--seq-lens", "128:1024"), (std::vector<int64_t>{128, 256, 512, 1024}));
  EXPECT_EQ(parse_int_list("--seq-lens", "2k:256k:x4"), (std::vector<int64_t>{2048, 8192, 32768, 131072}));
  EXPECT_EQ(parse_int_list("--seq-lens", "100:400:+100"), (std::vector<int64_t>{100, 200, 300, 400}));
  EXPECT_EQ(parse_int_list("--seq-lens", "128:1000"), (std::vector<int64_t>{128, 256, 512}));  // stops below LAST
  EXPECT_EQ(parse_int_list("--tp", "1,2:8"), (std::vector<int64_t>{1, 2, 4, 8}));
  EXPECT_EQ(parse_size("--x", "64K"), 65536);
  EXPECT_EQ(parse_size("--x", "1m"), 1048576);
}

TEST(SweepRange, MalformedInputNamesFlagAndValue) {
  EXPECT_EQ(error_of("--seq-lens", "128:abc"), "--seq-lens '128:abc': 'abc' is not a positive integer");
  EXPECT_EQ(error_of("--seq-lens", "abc"), "--seq-lens 'abc': expected a positive integer (optionally with a k or m suffix: 64k = 65536, 1m = 1048576)");
  EXPECT_EQ(error_of("--seq-lens", "512:128"), "--seq-lens '512:128': the range ends before it starts");
  EXPECT_EQ(error_of("--seq-lens", "128:512:*2"), "--seq-lens '128:512:*2': the step '*2' must be xFACTOR or +STEP");
  EXPECT_EQ(error_of("--tp", "0"), "--tp '0': expected a positive integer (optionally with a k or m suffix: 64k = 65536, 1m = 1048576)");
  EXPECT_EQ(error_of("--tp", "-2"), "--tp '-2': expected a positive integer (optionally with a k or m suffix: 64k = 65536, 1m = 1048576)");
  EXPECT_EQ(error_of("--tp", ""), "--tp: empty list");
  EXPECT_EQ(error_of("--seq-lens", "1:2:3:4"), "--seq-lens '1:2:3:4': a range is FIRST:LAST[:xFACTOR|:+STEP]");
  EXPECT_EQ(error_of("--seq-lens", "1:8:x1"), "--seq-lens '1:8:x1': a factor must be at least 2");
}

TEST(SweepRange, WordLists) {
  EXPECT_EQ(parse_word_list("--models", "tiny,small GPT125M"), (std::vector<std::string>{"tiny", "small", "GPT125M"}));
  try {
    parse_word_list("--sp-type", "ds,ring", {"ds", "megatron"});
    FAIL() << "accepted an unknown word";
  } catch (const ConfigError& e) {
    EXPECT_STREQ(e.what(), "--sp-type: unknown value 'ring' (expected one of: ds, megatron)");
  }
}
