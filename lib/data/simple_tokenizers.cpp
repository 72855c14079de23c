#include "data/simple_tokenizers.h"

#include <charconv>

#include "core/error.h"

namespace llm {

std::vector<int32_t> ByteTokenizer::encode(std::string_view text) const {
  std::vector<int32_t> ids(text.size());
  for (size_t i = 0; i < text.size(); ++i) ids[i] = static_cast<unsigned char>(text[i]);
  return ids;
}

std::string ByteTokenizer::decode(std::span<const int32_t> ids) const {
  std::string out;
  for (int32_t id : ids) out += token_bytes(id);
  return out;
}

std::string ByteTokenizer::token_bytes(int32_t id) const {
  LLM_CHECK(id >= 0 && id < 257, "byte tokenizer: id ", id, " outside [0, 257)");
  return id == 256 ? std::string() : std::string(1, static_cast<char>(id));
}

NullTokenizer::NullTokenizer(int64_t vocab_size) : vocab_(vocab_size) {
  if (vocab_size < 1) throw ConfigError("NullTokenizer: --vocab-size must be >= 1");
}

std::vector<int32_t> NullTokenizer::encode(std::string_view text) const {
  std::vector<int32_t> ids;
  size_t i = 0;
  while (i < text.size()) {
    while (i < text.size() && std::isspace(static_cast<unsigned char>(text[i]))) ++i;
    if (i == text.size()) break;
    int64_t v = 0;
    auto [p, ec] = std::from_chars(text.data() + i, text.data() + text.size(), v);
    if (ec != std::errc() || v < 0 || v >= vocab_ ||
        (p != text.data() + text.size() && !std::isspace(static_cast<unsigned char>(*p))))
      throw ConfigError(detail::concat("NullTokenizer: expected an integer id in [0, ", vocab_,
                                       ") at byte ", i));
    ids.push_back(static_cast<int32_t>(v));
    i = static_cast<size_t>(p - text.data());
  }
  return ids;
}

std::string NullTokenizer::decode(std::span<const int32_t> ids) const {
  std::string out;
  for (int32_t id : ids) {
    if (!out.empty()) out += ' ';
    out += std::to_string(id);
  }
  return out;
}

std::string NullTokenizer::token_bytes(int32_t id) const { return std::to_string(id) + " "; }

}  // namespace llm
