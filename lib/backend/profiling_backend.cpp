#include "backend/profiling_backend.h"

#include <algorithm>
#include <cstdio>
#include <vector>

namespace llm {

std::string ProfilingBackend::report() const {
  std::vector<std::pair<std::string, OpProfile>> rows(profile_.begin(), profile_.end());
  std::sort(rows.begin(), rows.end(), [](auto& a, auto& b) { return a.second.seconds > b.second.seconds; });
  double total = 0;
  for (auto& r : rows) total += r.second.seconds;
  std::string out;
  char buf[160];
  for (auto& [name, p] : rows) {
    std::snprintf(buf, sizeof buf, "  %-24s %7lld calls %10.2f ms %6.1f%%\n", name.c_str(),
                  static_cast<long long>(p.calls), p.seconds * 1e3, total > 0 ? 100 * p.seconds / total : 0.0);
    out += buf;
  }
  return out;
}

}  // namespace llm
