// Files: flushing a written one to the disk before a rename publishes it, writing one atomically,
// staging beside a final path, and reading one whole.
#pragma once
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

namespace llm {

// fsync(2) on `p`. A failure that means the data may not be there (an I/O error, a full disk or
// quota) is an Error naming the path; a path that cannot be opened, a file system that cannot
// sync a directory (EINVAL) or a read-only one is not.
void fsync_path(const std::filesystem::path& p);

// The whole content of the file at `path`: a ConfigError naming the path and `what` it should be
// (e.g. "YAML config") when it is a directory, a device or socket, missing or unreadable (a pipe
// is read to its end).
std::string read_whole_file(const std::string& path, const std::string& what);

// Staging beside a final path: "<final>.tmp-<tag>", the tag "<pid>@<host>-<16 hex>" (unique,
// and saying whose it is), so that what a killed run left behind can be told from what a live one
// is writing, on a file system other hosts share.
std::string staging_tag();
// Removes the entries "<final>.tmp-<tag>..." beside `final_path` (files or directories) whose tag
// names this host and a process that no longer runs. Those of other hosts, of live processes and
// of unknown form are left alone. Returns how many it removed.
int remove_dead_staging(const std::filesystem::path& final_path);

// `path`, then the target of each symbolic link on the way, to the first that is not a link (it
// may not exist: a dangling link's target). Relative targets are taken from their link's
// directory. A ConfigError naming `path` for a loop or a link that cannot be read.
std::vector<std::filesystem::path> link_chain(const std::filesystem::path& path);

// A file that replaces `path` only once complete: written to "<path>.tmp-<tag>" beside it, then
// commit() checks the stream, flushes, fsyncs and renames it over `path`. Destroyed without a
// commit (an error on the way), the temporary is removed and `path` keeps what it held. A link is
// followed (the file it names is replaced, the link kept); a device or pipe is refused.
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
