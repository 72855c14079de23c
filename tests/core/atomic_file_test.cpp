// AtomicFile: a file replaced only when complete, through links, never a device.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "core/error.h"
#include "core/fsync.h"
#include "support/scratch_dir.h"

using namespace llm;
namespace fs = std::filesystem;

namespace {
std::string content(const fs::path& p) { return read_whole_file(p.string(), "test file"); }
void put(const fs::path& p, const std::string& s) { std::ofstream(p) << s; }
}  // namespace

TEST(AtomicFile, ReplacesOnlyWhenCommitted) {
  const llm::testing::ScratchDir dir("atomic-file");
  const fs::path p = dir / "out.txt";
  put(p, "old");
  {
    AtomicFile f(p);
    f.stream() << "half";
  }  // no commit: an error on the way
  EXPECT_EQ(content(p), "old");
  EXPECT_EQ(dir.num_entries(), 1u);  // no temporary left
  {
    AtomicFile f(p);
    f.stream() << "new";
    f.commit();
  }
  EXPECT_EQ(content(p), "new");
  EXPECT_EQ(dir.num_entries(), 1u);
}

TEST(AtomicFile, ReplacesTheFileALinkNamesAndKeepsTheLink) {
  const llm::testing::ScratchDir dir("atomic-file");
  const fs::path target = dir / "target.txt", link = dir / "link.txt";
  put(target, "old");
  fs::create_symlink(target, link);
  AtomicFile f(link);
  f.stream() << "new";
  f.commit();
  EXPECT_TRUE(fs::is_symlink(link));
  EXPECT_EQ(content(target), "new");
  EXPECT_EQ(content(link), "new");
}

TEST(AtomicFile, RefusesADevice) {
  EXPECT_THROW(AtomicFile("/dev/null"), Error);
  EXPECT_TRUE(fs::is_character_file("/dev/null"));
}

TEST(AtomicFile, FollowsADanglingLinkAndAChain) {
  const llm::testing::ScratchDir dir("atomic-file");
  fs::create_directory(dir.path() / "sub");
  const fs::path a = dir / "a.txt", b = dir / "sub/b.txt";
  fs::create_symlink("sub/b.txt", a);      // relative, dangling: b does not exist yet
  fs::create_symlink("c.txt", b);          // a chain: a -> sub/b -> sub/c
  AtomicFile f(a);
  f.stream() << "made";
  f.commit();
  EXPECT_TRUE(fs::is_symlink(a));
  EXPECT_TRUE(fs::is_symlink(b));
  EXPECT_EQ(content(dir.path() / "sub/c.txt"), "made");
  const fs::path loop = dir / "loop.txt";
  fs::create_symlink("loop.txt", loop);
  EXPECT_THROW(AtomicFile{loop}, ConfigError);
}

// A config or metadata file that is a device (a link to /dev/zero, which never ends) is refused
// naming it; a pipe is read to its end.
TEST(ReadWholeFile, RefusesADeviceAndReadsAPipe) {
  const llm::testing::ScratchDir dir("read-whole-file");
  const fs::path zero = dir / "metadata.json";
  fs::create_symlink("/dev/zero", zero);
  try {
    content(zero);
    FAIL() << "no error";
  } catch (const ConfigError& e) {
    EXPECT_EQ(std::string(e.what()), zero.string() + ": is a device or socket, where the test file should be");
  }
  int fds[2];
  ASSERT_EQ(::pipe(fds), 0);
  ASSERT_EQ(::write(fds[1], "piped", 5), 5);
  ::close(fds[1]);
  EXPECT_EQ(content("/dev/fd/" + std::to_string(fds[0])), "piped");
  ::close(fds[0]);
}
