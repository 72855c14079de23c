#include <gtest/gtest.h>

#include "data/utf8.h"

using namespace llm;

TEST(Utf8, FindsTheFirstInvalidByte) {
  EXPECT_EQ(find_invalid_utf8("plain ascii"), std::string::npos);
  EXPECT_EQ(find_invalid_utf8("na\xC3\xAFve \xF0\x9F\x98\x80 \xE4\xB8\xAD"), std::string::npos);
  EXPECT_EQ(find_invalid_utf8("ab\xFF"), 2u);
  EXPECT_EQ(find_invalid_utf8("a\xC0\xAF"), 1u);          // overlong '/'
  EXPECT_EQ(find_invalid_utf8("xy\xED\xA0\x80"), 2u);      // surrogate U+D800
  EXPECT_EQ(find_invalid_utf8("\xF4\x90\x80\x80"), 0u);    // > U+10FFFF
  EXPECT_EQ(find_invalid_utf8("abc\xE4\xB8"), 3u);         // truncated at the end
  EXPECT_EQ(find_invalid_utf8("\x80"), 0u);                // lone continuation
}

TEST(Utf8, ReplacesMaximalSubpartsLikeTextDecoder) {
  std::string s = "a\xE4\xB8" "b";  // truncated 3-byte sequence: one U+FFFD
  EXPECT_EQ(replace_invalid_utf8(s), 1u);
  EXPECT_EQ(s, "a\xEF\xBF\xBD" "b");
  s = "\xC0\xAF";  // C0 is never valid; AF is a lone continuation: two replacements
  EXPECT_EQ(replace_invalid_utf8(s), 2u);
  EXPECT_EQ(s, "\xEF\xBF\xBD\xEF\xBF\xBD");
  s = "\xED\xA0\x80";  // surrogate: ED is valid lead but A0 out of range -> 3 replacements
  EXPECT_EQ(replace_invalid_utf8(s), 3u);
  s = "ok \xF0\x9F\x98\x80";
  EXPECT_EQ(replace_invalid_utf8(s), 0u);
  EXPECT_EQ(s, "ok \xF0\x9F\x98\x80");
}
