#include "core/log.h"

#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace llm {

LogLevel log_level() {
  static const LogLevel level = [] {
    const char* v = std::getenv("LLM_LOG_LEVEL");
    if (!v) return LogLevel::info;
    if (!std::strcmp(v, "debug")) return LogLevel::debug;
    if (!std::strcmp(v, "warn")) return LogLevel::warn;
    if (!std::strcmp(v, "error")) return LogLevel::error;
    return LogLevel::info;
  }();
  return level;
}

void log_message(LogLevel level, const std::string& msg) {
  static const char* names[] = {"debug", "info", "warning", "error"};
  std::fprintf(stderr, "[%s] %s\n", names[static_cast<int>(level)], msg.c_str());
}

}  // namespace llm
