// Minimal leveled logging to stderr. Level comes from LLM_LOG_LEVEL (debug|info|warn|error).
// Only tools print progress; the library logs warnings and debug detail through this.
#pragma once
#include "core/error.h"

namespace llm {

enum class LogLevel { debug = 0, info = 1, warn = 2, error = 3 };

LogLevel log_level();
void log_message(LogLevel level, const std::string& msg);

template <typename... Args>
void log_info(Args&&... a) {
  if (log_level() <= LogLevel::info) log_message(LogLevel::info, detail::concat(a...));
}
template <typename... Args>
void log_warn(Args&&... a) {
  if (log_level() <= LogLevel::warn) log_message(LogLevel::warn, detail::concat(a...));
}
template <typename... Args>
void log_debug(Args&&... a) {
  if (log_level() <= LogLevel::debug) log_message(LogLevel::debug, detail::concat(a...));
}

}  // namespace llm
