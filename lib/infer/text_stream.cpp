#include "infer/text_stream.h"

#include <algorithm>

#include "core/error.h"
#include "data/utf8.h"

namespace llm {

namespace {

constexpr std::string_view kReplacement = "\xEF\xBF\xBD";  // U+FFFD

// For the character starting at lead byte c: its length (0 if c cannot start one) and the
// allowed range of its second byte (the ranges that exclude overlongs, surrogates and code
// points above U+10FFFF; later bytes are always 80..BF).
struct LeadInfo {
  size_t length;
  unsigned char lo, hi;
};

LeadInfo lead_info(unsigned char c) {
  if (c < 0x80) return {1, 0, 0};
  if (c >= 0xC2 && c <= 0xDF) return {2, 0x80, 0xBF};
  if (c == 0xE0) return {3, 0xA0, 0xBF};
  if (c == 0xED) return {3, 0x80, 0x9F};
  if (c >= 0xE1 && c <= 0xEF) return {3, 0x80, 0xBF};
  if (c == 0xF0) return {4, 0x90, 0xBF};
  if (c >= 0xF1 && c <= 0xF3) return {4, 0x80, 0xBF};
  if (c == 0xF4) return {4, 0x80, 0x8F};
  return {0, 0, 0};  // continuation byte, C0/C1 or F5..FF
}

}  // namespace

TextStream::TextStream(std::vector<std::string> stop_strings) : stops_(std::move(stop_strings)) {
  for (const std::string& s : stops_) {
    if (s.empty()) throw ConfigError("--stop: a stop string must not be empty");
    // A valid stop string starts on a character boundary, so a match in the decoded text never
    // begins or ends inside a character.
    if (find_invalid_utf8(s) != std::string::npos)
      throw ConfigError(detail::concat("--stop '", s, "' is not valid UTF-8"));
  }
}

void TextStream::decode(bool final) {
  const auto byte = [&](size_t k) { return static_cast<unsigned char>(raw_[k]); };
  size_t i = 0;
  while (i < raw_.size()) {
    const LeadInfo lead = lead_info(byte(i));
    if (lead.length == 1) {
      text_ += raw_[i++];
      continue;
    }
    if (lead.length == 0) {
      text_ += kReplacement;
      ++i;
      continue;
    }
    // Check the continuation bytes that have arrived; stop at the first that cannot belong.
    size_t k = 1;
    bool broken = false;
    for (; k < lead.length && i + k < raw_.size(); ++k) {
      const unsigned char x = byte(i + k);
      const unsigned char lo = k == 1 ? lead.lo : 0x80, hi = k == 1 ? lead.hi : 0xBF;
      if (x < lo || x > hi) {
        broken = true;
        break;
      }
    }
    if (!broken && k == lead.length) {  // complete character
      text_.append(raw_, i, lead.length);
      i += lead.length;
    } else if (broken) {  // the maximal subpart [i, i+k) can never complete
      text_ += kReplacement;
      i += k;
    } else if (final) {  // incomplete at the end of generation
      text_ += kReplacement;
      i = raw_.size();
    } else {
      break;  // a valid prefix: the next token may complete it
    }
  }
  raw_.erase(0, i);
}

std::string TextStream::release(bool final) {
  // Earliest completed stop string wins: everything before it is the text.
  size_t first = std::string::npos;
  for (const std::string& s : stops_) {
    const size_t at = text_.find(s);
    if (at < first) {
      first = at;
      matched_stop_ = s;
    }
  }
  if (first != std::string::npos) {
    std::string out = text_.substr(0, first);
    text_.clear();
    raw_.clear();
    stopped_ = true;
    return out;
  }
  // Hold the longest tail that is a proper prefix of some stop string: any match completed
  // later must start inside it.
  size_t hold = 0;
  if (!final) {
    for (const std::string& s : stops_) {
      for (size_t len = std::min(s.size() - 1, text_.size()); len > hold; --len) {
        if (std::string_view(text_).substr(text_.size() - len) == std::string_view(s).substr(0, len)) {
          hold = len;
          break;
        }
      }
    }
  }
  std::string out = text_.substr(0, text_.size() - hold);
  text_.erase(0, text_.size() - hold);
  return out;
}

std::string TextStream::push(std::string_view token_bytes) {
  if (stopped_) return {};
  raw_.append(token_bytes);
  decode(false);
  return release(false);
}

std::string TextStream::flush() {
  if (stopped_) return {};
  decode(true);
  return release(true);
}

}  // namespace llm
