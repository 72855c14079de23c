#include "data/tokenizer.h"

#include <cstdio>
#include <fstream>
#include <sstream>

#include "core/error.h"
#include "core/fsync.h"

namespace llm {

std::string hash_bytes(std::string_view bytes) {
  uint64_t h = 1469598103934665603ull;
  for (unsigned char c : bytes) {
    h ^= c;
    h *= 1099511628211ull;
  }
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(h));
  return buf;
}

std::string hash_file(const std::string& path) { return hash_bytes(read_whole_file(path, "tokenizer file")); }

}  // namespace llm
