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

}  // namespace llm
