#include "infer/text_stream.h"

#include <gtest/gtest.h>

#include "core/error.h"
#include "core/philox.h"
#include "data/utf8.h"

using namespace llm;

namespace {

const std::string kFFFD = "\xEF\xBF\xBD";

// Pushes each token, collects what each push returned, then the flush.
struct StreamRun {
  std::vector<std::string> outputs;
  std::string flushed;
  std::string all() const {
    std::string s;
    for (const auto& o : outputs) s += o;
    return s + flushed;
  }
};

StreamRun run(TextStream& ts, const std::vector<std::string>& tokens, bool flush = true) {
  StreamRun r;
  for (const auto& t : tokens) r.outputs.push_back(ts.push(t));
  if (flush) r.flushed = ts.flush();
  return r;
}

}  // namespace

// ---- UTF-8 ---------------------------------------------------------------------------------

TEST(TextStream, AsciiPassesStraightThrough) {
  TextStream ts;
  EXPECT_EQ(ts.push("Hello"), "Hello");
  EXPECT_EQ(ts.push(", world"), ", world");
  EXPECT_EQ(ts.push(""), "");
  EXPECT_EQ(ts.flush(), "");
  EXPECT_FALSE(ts.stopped());
}

TEST(TextStream, TwoByteCharacterSplitAcrossTokens) {
  TextStream ts;  // é = C3 A9
  EXPECT_EQ(ts.push("caf\xC3"), "caf");
  EXPECT_EQ(ts.held_bytes(), 1u);
  EXPECT_EQ(ts.push("\xA9!"), "\xC3\xA9!");
  EXPECT_EQ(ts.held_bytes(), 0u);
}

TEST(TextStream, ThreeByteCharacterSplitAcrossThreeTokens) {
  TextStream ts;  // € = E2 82 AC
  EXPECT_EQ(ts.push("\xE2"), "");
  EXPECT_EQ(ts.push("\x82"), "");
  EXPECT_EQ(ts.push("\xAC" "5"), "\xE2\x82\xAC" "5");
}

TEST(TextStream, FourByteCharacterEverySplit) {
  const std::string emoji = "\xF0\x9F\x98\x80";  // U+1F600
  for (size_t a = 1; a < 4; ++a) {
    for (size_t b = a; b < 4; ++b) {
      TextStream ts;
      StreamRun r = run(ts, {"x" + emoji.substr(0, a), emoji.substr(a, b - a), emoji.substr(b) + "y"});
      EXPECT_EQ(r.outputs[0], "x");
      EXPECT_EQ(r.outputs[1], "");
      EXPECT_EQ(r.outputs[2], emoji + "y");
      EXPECT_EQ(r.flushed, "");
    }
  }
}

TEST(TextStream, InvalidBytesBecomeReplacementAsSoonAsCertain) {
  {
    TextStream ts;  // never valid anywhere: emitted at once
    EXPECT_EQ(ts.push("a\xFF" "b"), "a" + kFFFD + "b");
    EXPECT_EQ(ts.push("\x80"), kFFFD);  // lone continuation byte
    EXPECT_EQ(ts.push("\xC0\xAF"), kFFFD + kFFFD);  // C0 can never start a character
  }
  {
    TextStream ts;  // a lead byte waits, then the next token shows it cannot complete
    EXPECT_EQ(ts.push("\xC3"), "");
    EXPECT_EQ(ts.push("A"), kFFFD + "A");
  }
  {
    TextStream ts;  // a truncated 3-byte sequence is one maximal subpart: one U+FFFD
    EXPECT_EQ(ts.push("\xE2\x82"), "");
    EXPECT_EQ(ts.push("x"), kFFFD + "x");
  }
  {
    TextStream ts;  // E0 80 is an overlong start: certain at once, two replacements
    EXPECT_EQ(ts.push("\xE0\x80"), kFFFD + kFFFD);
    EXPECT_EQ(ts.held_bytes(), 0u);
  }
  {
    TextStream ts;  // surrogate ED A0 80: three replacements
    EXPECT_EQ(ts.push("\xED\xA0\x80"), kFFFD + kFFFD + kFFFD);
  }
  {
    TextStream ts;  // F4 90: above U+10FFFF
    EXPECT_EQ(ts.push("\xF4\x90\x80\x80"), kFFFD + kFFFD + kFFFD + kFFFD);
  }
}

TEST(TextStream, FlushTurnsIncompleteTailIntoOneReplacement) {
  TextStream ts;
  EXPECT_EQ(ts.push("ok\xF0\x9F\x98"), "ok");
  EXPECT_EQ(ts.flush(), kFFFD);
  EXPECT_EQ(ts.flush(), "");
  EXPECT_EQ(ts.push("again"), "again");  // usable after a flush
}

// Random bytes cut into random tokens: the stream's total equals replacing the whole text
// at once (the same maximal-subpart rule as data/utf8.h), whatever the cuts.
TEST(TextStream, AnySplitGivesTheSameTextAsWholeReplacement) {
  const std::vector<std::string> pieces = {"a", "\xC3", "\xA9", "\xE2\x82", "\xAC", "\xF0\x9F",
                                           "\x98\x80", "\x80", "\xFF", "\xED", "\xA0", "\xE0",
                                           "\xF4", "\x8F", " ", "\xBF"};
  for (uint64_t trial = 0; trial < 300; ++trial) {
    std::string whole;
    const uint64_t n = 1 + philox_below(11, trial, 0, 40);
    for (uint64_t i = 0; i < n; ++i) whole += pieces[philox_below(11, trial, i + 1, pieces.size())];
    std::vector<std::string> tokens;
    for (size_t at = 0, i = 0; at < whole.size(); ++i) {
      const size_t len = 1 + philox_below(12, trial, i, 5);
      tokens.push_back(whole.substr(at, len));
      at += len;
    }
    std::string want = whole;
    replace_invalid_utf8(want);
    TextStream ts;
    StreamRun r = run(ts, tokens);
    ASSERT_EQ(r.all(), want) << "trial " << trial;
    for (const auto& o : r.outputs) EXPECT_EQ(find_invalid_utf8(o), std::string::npos);
  }
}

// ---- stop strings --------------------------------------------------------------------------

TEST(TextStream, StopStringAcrossTokens) {
  TextStream ts({"###"});
  EXPECT_EQ(ts.push("abc#"), "abc");
  EXPECT_EQ(ts.push("#"), "");
  EXPECT_FALSE(ts.stopped());
  EXPECT_EQ(ts.push("#def"), "");
  EXPECT_TRUE(ts.stopped());
  EXPECT_EQ(ts.matched_stop(), "###");
  EXPECT_EQ(ts.push("more"), "");
  EXPECT_EQ(ts.flush(), "");
}

TEST(TextStream, StopStringStartingMidToken) {
  TextStream ts({"END"});
  EXPECT_EQ(ts.push("fooEN"), "foo");
  EXPECT_EQ(ts.push("Dbar"), "");
  EXPECT_TRUE(ts.stopped());
}

TEST(TextStream, StopStringInsideOneToken) {
  TextStream ts({"STOP"});
  EXPECT_EQ(ts.push("helloSTOPworld"), "hello");
  EXPECT_TRUE(ts.stopped());
}

TEST(TextStream, OverlappingCandidates) {
  TextStream ts({"abc"});
  StreamRun r = run(ts, {"a", "b", "a", "b", "c", "d"}, false);
  EXPECT_EQ(r.outputs, (std::vector<std::string>{"", "", "ab", "", "", ""}));
  EXPECT_TRUE(ts.stopped());
  TextStream t2({"aab"});
  EXPECT_EQ(t2.push("aaa"), "a");  // "aa" could still start "aab"
  EXPECT_EQ(t2.push("b"), "");
  EXPECT_TRUE(t2.stopped());
}

TEST(TextStream, StopAtTheVeryStart) {
  TextStream ts({"STOP"});
  EXPECT_EQ(ts.push("ST"), "");
  EXPECT_EQ(ts.push("OP and more"), "");
  EXPECT_TRUE(ts.stopped());
  TextStream one({"\n"});
  EXPECT_EQ(one.push("\nx"), "");
  EXPECT_TRUE(one.stopped());
}

TEST(TextStream, NoStopReleasesHeldPrefixWhenItDiverges) {
  TextStream ts({"abc"});
  EXPECT_EQ(ts.push("xab"), "x");
  EXPECT_EQ(ts.push("d"), "abd");
  EXPECT_EQ(ts.push("ab"), "");
  EXPECT_EQ(ts.flush(), "ab");  // a partial stop string at the end is just text
  EXPECT_FALSE(ts.stopped());
}

TEST(TextStream, MultipleStopStringsEarliestWins) {
  TextStream ts({"\n\n", "User:"});
  EXPECT_EQ(ts.push("Hi\nUs"), "Hi\n");  // "Us" may start "User:"; "s" cannot start "\n\n"
  EXPECT_EQ(ts.push("er: x"), "");
  EXPECT_TRUE(ts.stopped());
  EXPECT_EQ(ts.matched_stop(), "User:");

  TextStream t2({"b", "abc"});
  EXPECT_EQ(t2.push("xa"), "x");
  EXPECT_EQ(t2.push("bc"), "");  // "abc" starts before "b"
  EXPECT_EQ(t2.matched_stop(), "abc");
}

TEST(TextStream, StopStringWithMultibyteCharacterSplit) {
  TextStream ts({"\xC3\xA9!"});  // "é!"
  EXPECT_EQ(ts.push("caf\xC3"), "caf");
  EXPECT_EQ(ts.push("\xA9"), "");  // "é" may start the stop string
  EXPECT_EQ(ts.push("!tail"), "");
  EXPECT_TRUE(ts.stopped());

  TextStream t2({"\xC3\xA9!"});
  EXPECT_EQ(t2.push("caf\xC3"), "caf");
  EXPECT_EQ(t2.push("\xA9?"), "\xC3\xA9?");
}

TEST(TextStream, StopMatchedAfterFlushReplacement) {
  TextStream ts({"x" + kFFFD});
  EXPECT_EQ(ts.push("ax\xE2"), "a");
  EXPECT_EQ(ts.flush(), "");
  EXPECT_TRUE(ts.stopped());
}

// Random token streams over a small alphabet: the total output is the text up to the earliest
// stop string (or all of it), and nothing is ever returned that a later stop would have cut.
TEST(TextStream, RandomStreamsMatchWholeTextReference) {
  const std::vector<std::string> stops = {"aba", "bb", "cab"};
  for (uint64_t trial = 0; trial < 500; ++trial) {
    std::string whole;
    const uint64_t n = philox_below(21, trial, 0, 30);
    for (uint64_t i = 0; i < n; ++i) whole += "abcd"[philox_below(21, trial, i + 1, 4)];
    size_t cut = std::string::npos;
    for (const auto& s : stops) cut = std::min(cut, whole.find(s));
    const std::string want = whole.substr(0, cut);
    std::vector<std::string> tokens;
    for (size_t at = 0, i = 0; at < whole.size(); ++i) {
      const size_t len = 1 + philox_below(22, trial, i, 4);
      tokens.push_back(whole.substr(at, len));
      at += len;
    }
    TextStream ts(stops);
    std::string got;
    for (const auto& t : tokens) {
      got += ts.push(t);
      ASSERT_EQ(want.compare(0, got.size(), got), 0) << "trial " << trial << ": emitted too much";
    }
    got += ts.flush();
    ASSERT_EQ(got, want) << "trial " << trial << " text " << whole;
    EXPECT_EQ(ts.stopped(), cut != std::string::npos);
  }
}

TEST(TextStream, BadStopStringsAreConfigErrors) {
  EXPECT_THROW(TextStream({""}), ConfigError);
  EXPECT_THROW(TextStream({"ok", "\xC3"}), ConfigError);
  EXPECT_NO_THROW(TextStream({"\xE2\x82\xAC"}));
}
