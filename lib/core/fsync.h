// Flushing a written file or directory to the disk before a rename publishes it.
#pragma once
#include <filesystem>
#include <fstream>
#include <string>

namespace llm {

// fsync(2) on `p`. A failure that means the data may not be there (an I/O error, a full disk or
// quota) is an Error naming the path; a path that cannot be opened, a file system that cannot
// sync a directory (EINVAL) or a read-only one is not.
void fsync_path(const std::filesystem::path& p);

// A file that replaces `path` only once complete: written to "<path>.tmp-<pid>" beside it, then
// commit() checks the stream, flushes, fsyncs and renames it over `path`. Destroyed without a
// commit (an error on the way), the temporary is removed and `path` keeps what it held.
class AtomicFile {
 public:
  explicit AtomicFile(std::filesystem::path path);
  ~AtomicFile();
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;
  std::ofstream& stream() { return out_; }
  // An Error naming `path` when a write failed (a full disk, say); the temporary is removed.
  void commit();

 private:
  std::filesystem::path path_, temp_;
  std::ofstream out_;
  bool committed_ = false;
};

}  // namespace llm
