// Streaming text output for llm-generate: token bytes in, printable text out.
//
// Two layers. (1) UTF-8: a token's bytes may end inside a character, so an incomplete trailing
// sequence is held until the next token completes it; bytes that can never become a character
// are emitted as U+FFFD as soon as that is certain, one per maximal ill-formed subpart (the
// Unicode/WHATWG practice, as in data/utf8.h). (2) Stop strings, matched on the decoded text: the
// longest tail that is still the beginning of some stop string is held back; when a stop string
// completes, the text before its earliest occurrence is emitted, stopped() turns true, and the
// stop string and everything after it are dropped.
//
//   TextStream out({"\n\n"});
//   for (each generated token) { std::cout << out.push(tok.token_bytes(id)); if (out.stopped()) break; }
//   std::cout << out.flush();
#pragma once
#include <string>
#include <string_view>
#include <vector>

namespace llm {

class TextStream {
 public:
  // Throws ConfigError ("--stop ...") for an empty stop string or one that is not valid UTF-8.
  explicit TextStream(std::vector<std::string> stop_strings = {});

  // The bytes of the next token; returns the text that can be printed now (maybe empty).
  // After stopped(), returns "" and ignores the input.
  std::string push(std::string_view token_bytes);

  // End of generation: returns everything held back (an incomplete UTF-8 sequence becomes
  // U+FFFD; a partial stop string is plain text after all). The stream is then empty and may be
  // pushed to again.
  std::string flush();

  bool stopped() const { return stopped_; }
  // The stop string that ended the stream ("" while not stopped).
  const std::string& matched_stop() const { return matched_stop_; }
  // Bytes received but not yet returned (incomplete UTF-8 + possible stop-string prefix).
  size_t held_bytes() const { return raw_.size() + text_.size(); }

 private:
  // Moves the complete (or certainly invalid) part of raw_ into text_; with `final`, the
  // incomplete tail too, as U+FFFD.
  void decode(bool final);
  // Emits from text_ what no stop string can claim; with `final`, all of it.
  std::string release(bool final);

  std::vector<std::string> stops_;
  std::string raw_;   // undecoded bytes: at most an incomplete UTF-8 sequence after decode()
  std::string text_;  // valid UTF-8 not yet returned: at most a stop-string prefix after release()
  bool stopped_ = false;
  std::string matched_stop_;
};

}  // namespace llm
