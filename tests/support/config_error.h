// The message of the ConfigError `f` throws, or "" when it throws none (another exception
// propagates and fails the test).
#pragma once
#include <functional>
#include <string>

#include "core/error.h"

namespace llm::testing {

inline std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const ConfigError& e) {
    return e.what();
  }
  return "";
}

}  // namespace llm::testing
