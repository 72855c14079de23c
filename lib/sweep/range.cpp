#include "sweep/range.h"

#include <algorithm>
#include <cctype>

#include "core/error.h"

namespace llm::sweep {

namespace {

std::vector<std::string> split_items(const std::string& text) {
  std::vector<std::string> out;
  std::string cur;
  for (char c : text) {
    if (c == ',' || std::isspace(static_cast<unsigned char>(c))) {
      if (!cur.empty()) out.push_back(cur);
      cur.clear();
    } else {
      cur += c;
    }
  }
  if (!cur.empty()) out.push_back(cur);
  return out;
}

std::vector<std::string> split_colon(const std::string& s) {
  std::vector<std::string> parts;
  size_t start = 0;
  for (;;) {
    const size_t p = s.find(':', start);
    parts.push_back(s.substr(start, p == std::string::npos ? std::string::npos : p - start));
    if (p == std::string::npos) break;
    start = p + 1;
  }
  return parts;
}

}  // namespace

int64_t parse_size(const std::string& flag, const std::string& text) {
  auto bad = [&] {
    throw ConfigError(flag + " '" + text + "': expected a positive integer (optionally with a k or m suffix: 64k = 65536, 1m = 1048576)");
  };
  if (text.empty()) bad();
  std::string digits = text;
  int64_t scale = 1;
  const char last = static_cast<char>(std::tolower(static_cast<unsigned char>(text.back())));
  if (last == 'k') scale = 1024, digits.pop_back();
  if (last == 'm') scale = 1024 * 1024, digits.pop_back();
  if (digits.empty() || digits.size() > 12) bad();
  for (char c : digits)
    if (!std::isdigit(static_cast<unsigned char>(c))) bad();
  const int64_t v = std::stoll(digits) * scale;
  if (v <= 0) bad();
  return v;
}

std::vector<int64_t> parse_int_list(const std::string& flag, const std::string& text) {
  std::vector<int64_t> out;
  const std::vector<std::string> items = split_items(text);
  if (items.empty()) throw ConfigError(flag + ": empty list");
  for (const std::string& item : items) {
    const std::vector<std::string> parts = split_colon(item);
    if (parts.size() == 1) {
      out.push_back(parse_size(flag, item));
      continue;
    }
    if (parts.size() > 3)
      throw ConfigError(flag + " '" + item + "': a range is FIRST:LAST[:xFACTOR|:+STEP]");
    auto piece = [&](const std::string& p) {
      try {
        return parse_size(flag, p);
      } catch (const ConfigError&) {
        throw ConfigError(flag + " '" + item + "': '" + p + "' is not a positive integer");
      }
    };
    const int64_t first = piece(parts[0]), last = piece(parts[1]);
    if (last < first) throw ConfigError(flag + " '" + item + "': the range ends before it starts");
    bool geometric = true;
    int64_t step = 2;
    if (parts.size() == 3) {
      const std::string& s = parts[2];
      if (s.size() < 2 || (s[0] != 'x' && s[0] != '+'))
        throw ConfigError(flag + " '" + item + "': the step '" + s + "' must be xFACTOR or +STEP");
      geometric = s[0] == 'x';
      step = piece(s.substr(1));
      if (geometric && step < 2) throw ConfigError(flag + " '" + item + "': a factor must be at least 2");
    }
    for (int64_t v = first; v <= last; v = geometric ? v * step : v + step) {
      out.push_back(v);
      if (out.size() > 100000) throw ConfigError(flag + " '" + item + "': more than 100000 values");
    }
  }
  return out;
}

std::vector<std::string> parse_word_list(const std::string& flag, const std::string& text,
                                         const std::vector<std::string>& allowed) {
  std::vector<std::string> out = split_items(text);
  if (out.empty()) throw ConfigError(flag + ": empty list");
  for (const std::string& w : out)
    if (!allowed.empty() && std::find(allowed.begin(), allowed.end(), w) == allowed.end()) {
      std::string list;
      for (const std::string& a : allowed) list += (list.empty() ? "" : ", ") + a;
      throw ConfigError(flag + ": unknown value '" + w + "' (expected one of: " + list + ")");
    }
  return out;
}

}  // namespace llm::sweep
