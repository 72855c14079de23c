// Flushing a written file or directory to the disk before a rename publishes it.
#pragma once
#include <filesystem>

namespace llm {

// fsync(2) on `p`. A failure that means the data may not be there (an I/O error, a full disk or
// quota) is an Error naming the path; a path that cannot be opened, a file system that cannot
// sync a directory (EINVAL) or a read-only one is not.
void fsync_path(const std::filesystem::path& p);

}  // namespace llm
