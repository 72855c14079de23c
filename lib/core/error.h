// Errors are exceptions that carry what they concern (file, line, key, tensor, rank); tools turn
// them into one clear message and a non-zero exit.
#pragma once
#include <sstream>
#include <stdexcept>
#include <string>

namespace llm {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what) : std::runtime_error(what) {}
};

// Bad user input: configuration, flags, data files. Message names the source.
class ConfigError : public Error {
 public:
  using Error::Error;
};

namespace detail {
template <typename... Args>
std::string concat(Args&&... args) {
  std::ostringstream os;
  (os << ... << args);
  return os.str();
}
}  // namespace detail

}  // namespace llm

// LLM_CHECK(cond, parts...) throws llm::Error("parts..." + source location) when cond is false.
#define LLM_CHECK(cond, ...)                                                                   \
  do {                                                                                         \
    if (!(cond))                                                                               \
      throw ::llm::Error(::llm::detail::concat(__VA_ARGS__, " [check '", #cond, "' at ",       \
                                               __FILE__, ":", __LINE__, "]"));                 \
  } while (0)

#define LLM_FAIL(...) throw ::llm::Error(::llm::detail::concat(__VA_ARGS__))
