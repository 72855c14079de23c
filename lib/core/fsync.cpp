#include "core/fsync.h"

#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iterator>
#include <random>

#include "core/error.h"

namespace llm {

void fsync_path(const std::filesystem::path& p) {
  const int fd = ::open(p.c_str(), O_RDONLY);
  if (fd < 0) return;
  const int rc = ::fsync(fd);
  const int err = errno;
  ::close(fd);
  if (rc != 0 && (err == EIO || err == ENOSPC || err == EDQUOT))
    throw Error(p.string() + ": cannot flush to disk: " + std::strerror(err));
}

std::string read_whole_file(const std::string& path, const std::string& what) {
  std::error_code ec;
  const std::filesystem::file_status st = std::filesystem::status(path, ec);  // (through symbolic links)
  if (std::filesystem::is_directory(st)) throw ConfigError(path + ": is a directory, not a " + what);
  // A device never ends (/dev/zero, /dev/urandom) or waits on a terminal: refused. A pipe is read
  // (a config made on the fly: --config <(...)).
  if (std::filesystem::is_character_file(st) || std::filesystem::is_block_file(st) || std::filesystem::is_socket(st))
    throw ConfigError(path + ": is a device or socket, where the " + what + " should be");
  std::ifstream in(path, std::ios::binary);
  if (!in) throw ConfigError(path + ": cannot read the " + what + " (" + std::strerror(errno) + ")");
  std::string text;
  try {
    text.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  } catch (const std::exception& e) {
    throw ConfigError(path + ": error reading the " + what + " (" + e.what() + ")");
  }
  if (in.bad()) throw ConfigError(path + ": error reading the " + what);
  return text;
}

namespace {
std::string host_name() {
  char host[256] = {};
  if (::gethostname(host, sizeof(host) - 1) != 0 || !host[0]) return "localhost";
  std::string h = host;
  for (char& c : h)
    if (c == '/' || c == '@') c = '_';  // (a file name part; '@' ends the pid)
  return h;
}
}  // namespace

std::string staging_tag() {
  std::random_device rd;
  const uint64_t r = (static_cast<uint64_t>(rd()) << 32) ^ rd();
  char buf[24];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(r));
  return std::to_string(::getpid()) + "@" + host_name() + "-" + buf;
}

int remove_dead_staging(const std::filesystem::path& final_path) {
  namespace fs = std::filesystem;
  std::string base = final_path.filename().string();
  fs::path dir = final_path.parent_path();
  if (base.empty()) {  // "data/set/"
    base = final_path.parent_path().filename().string();
    dir = final_path.parent_path().parent_path();
  }
  if (dir.empty()) dir = ".";
  const std::string prefix = base + ".tmp-", host = host_name();
  int removed = 0;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    const std::string n = e.path().filename().string();
    if (n.rfind(prefix, 0) != 0) continue;
    // <pid>@<host>-<16 hex>[anything after: ".model", ...]
    const std::string tag = n.substr(prefix.size());
    const size_t at = tag.find('@');
    if (at == 0 || at == std::string::npos || tag.find_first_not_of("0123456789") != at) continue;
    const std::string rest = tag.substr(at + 1);
    if (rest.size() < host.size() + 17 || rest.compare(0, host.size(), host) != 0 || rest[host.size()] != '-') continue;
    if (rest.find_first_not_of("0123456789abcdef", host.size() + 1) < host.size() + 17) continue;
    const long long pid = std::atoll(tag.substr(0, at).c_str());
    if (pid <= 0 || pid == ::getpid() || ::kill(static_cast<pid_t>(pid), 0) == 0 || errno != ESRCH) continue;
    std::error_code rm;
    if (fs::remove_all(e.path(), rm) > 0 && !rm) ++removed;
  }
  return removed;
}

std::vector<std::filesystem::path> link_chain(const std::filesystem::path& path) {
  namespace fs = std::filesystem;
  std::vector<fs::path> chain{path};
  for (;;) {
    const fs::path& p = chain.back();
    std::error_code ec;
    if (!fs::is_symlink(fs::symlink_status(p, ec))) return chain;
    if (chain.size() > 40) throw ConfigError(path.string() + ": too many levels of symbolic links");
    const fs::path target = fs::read_symlink(p, ec);
    if (ec) throw ConfigError(path.string() + ": cannot read the link: " + ec.message());
    chain.push_back(target.is_absolute() ? target : p.parent_path() / target);
  }
}

// (links are followed, dangling ones and chains included: the file they name is replaced, the
// links kept)
AtomicFile::AtomicFile(std::filesystem::path path)
    : path_(link_chain(path).back()), temp_(path_.string() + ".tmp-" + staging_tag()) {
  const std::string named = path_ == path ? path.string() : path.string() + " (-> " + path_.string() + ")";
  std::error_code ec;
  if (std::filesystem::is_directory(path_, ec)) throw ConfigError(named + ": is a directory, not a file to write");
  if (std::filesystem::exists(path_, ec) && !std::filesystem::is_regular_file(path_, ec))
    throw ConfigError(named + ": not a regular file (a device or pipe cannot be replaced whole)");
  remove_dead_staging(path_);
  out_.open(temp_, std::ios::binary | std::ios::trunc);
  if (!out_) throw ConfigError(named + ": cannot write (creating " + temp_.string() + ": " + std::strerror(errno) + ")");
}

AtomicFile::~AtomicFile() {
  if (committed_) return;
  out_.close();
  std::error_code ec;
  std::filesystem::remove(temp_, ec);
}

void AtomicFile::commit() {
  out_.flush();
  const bool ok = static_cast<bool>(out_);
  out_.close();
  std::error_code ec;
  if (!ok || out_.fail()) {
    std::filesystem::remove(temp_, ec);
    throw Error(path_.string() + ": writing failed (is the disk full?); the file is unchanged");
  }
  fsync_path(temp_);
  std::filesystem::rename(temp_, path_, ec);
  if (ec) {
    const std::string why = ec.message();
    std::filesystem::remove(temp_, ec);
    throw Error(path_.string() + ": cannot replace it: " + why);
  }
  committed_ = true;
  fsync_path(path_.has_parent_path() ? path_.parent_path() : std::filesystem::path("."));
}

}  // namespace llm
