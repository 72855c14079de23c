// Parsing of the sweep's value lists: "128,256,512", "128:1024" (doubling), "128:1024:x4"
// (geometric), "128:1024:+128" (arithmetic), and word lists "on,off". Malformed text is a
// ConfigError naming the flag and the offending piece, raised before anything runs.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace llm::sweep {

// Positive integers. `flag` ("--seq-lens") prefixes every error.
std::vector<int64_t> parse_int_list(const std::string& flag, const std::string& text);
// Comma- or space-separated words, each one of `allowed` (empty = anything non-empty).
std::vector<std::string> parse_word_list(const std::string& flag, const std::string& text,
                                         const std::vector<std::string>& allowed = {});
// A positive integer with an optional K/M suffix (x1024): "128", "64k", "256K".
int64_t parse_size(const std::string& flag, const std::string& text);

}  // namespace llm::sweep
