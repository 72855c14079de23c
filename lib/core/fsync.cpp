#include "core/fsync.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

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

AtomicFile::AtomicFile(std::filesystem::path path)
    : path_(std::move(path)), temp_(path_.string() + ".tmp-" + std::to_string(::getpid())) {
  std::error_code ec;
  if (std::filesystem::is_directory(path_, ec)) throw Error(path_.string() + ": is a directory, not a file to write");
  out_.open(temp_, std::ios::binary | std::ios::trunc);
  if (!out_) throw Error(path_.string() + ": cannot write (creating " + temp_.string() + ": " + std::strerror(errno) + ")");
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
