// Checkpoint format: pieces with boxes, resharding by box intersection, checksums, coverage,
// atomic publication and `latest`.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "core/error.h"
#include "core/fsync.h"
#include "core/philox.h"
#include "data/hdf5_util.h"
#include "io/checkpoint.h"
#include "support/config_error.h"

using namespace llm;
namespace fs = std::filesystem;

namespace {

std::string fresh_dir(const std::string& name) {
  const std::string d = ::testing::TempDir() + "/ckpt-" + name;
  fs::remove_all(d);
  return d;
}

Tensor random_tensor(const Shape& s, uint64_t seed) {
  Tensor t = Tensor::empty(s);
  for (int64_t i = 0; i < t.numel(); ++i) t.data<float>()[i] = philox_normal(seed, 1, i);
  return t;
}

// The sub-box of a contiguous tensor, as a new contiguous tensor.
Tensor crop(const Tensor& t, const Box& b) {
  Tensor out = Tensor::empty(b.extent);
  const size_t r = b.extent.size();
  Shape idx(r, 0);
  for (int64_t i = 0; i < out.numel(); ++i) {
    int64_t rem = i, src = 0;
    for (size_t d = r; d-- > 0;) {
      idx[d] = rem % b.extent[d];
      rem /= b.extent[d];
    }
    for (size_t d = 0; d < r; ++d) src = src * t.shape()[d] + idx[d] + b.offset[d];
    out.data<float>()[i] = t.data<float>()[src];
  }
  return out;
}

// A checkpoint of one tensor, model/x of shape [3], at `iteration` under root: its metadata.json.
fs::path save_one_tensor(const std::string& root, int64_t iteration = 1) {
  CheckpointWriter w(root, iteration);
  w.add("model", "x", {3}, Box::whole({3}), random_tensor({3}, 1));
  w.commit("");
  return fs::path(root) / checkpoint_dir_name(iteration) / "metadata.json";
}

// Splits dimension `axis` of shape into `parts` boxes.
std::vector<Box> split(const Shape& s, size_t axis, int parts) {
  std::vector<Box> out;
  for (int p = 0; p < parts; ++p) {
    Box b = Box::whole(s);
    b.offset[axis] = s[axis] * p / parts;
    b.extent[axis] = s[axis] * (p + 1) / parts - b.offset[axis];
    out.push_back(b);
  }
  return out;
}

using llm::testing::error_of;

}  // namespace

TEST(Checkpoint, WholeTensorsRoundTripAndMetadata) {
  const std::string root = fresh_dir("whole");
  Tensor a = random_tensor({7, 3}, 1), b = random_tensor({5}, 2), s = random_tensor({}, 3);
  {
    CheckpointWriter w(root, 42);
    w.add("model", "a", a.shape(), Box::whole(a.shape()), a);
    w.add("model", "b", b.shape(), Box::whole(b.shape()), b, DType::bf16);
    w.add("optimizer/exp_avg", "a", a.shape(), Box::whole(a.shape()), a);
    w.add("model", "scalar", {}, Box::whole({}), s);
    EXPECT_EQ(w.commit("\"note\": \"hello\""), (fs::path(root) / "iter_0000042").string());
  }
  CheckpointReader r = CheckpointReader::open(root);  // via `latest`
  EXPECT_EQ(r.iteration(), 42);
  EXPECT_EQ(r.metadata().find("note")->as_string(), "hello");
  Tensor a2 = r.read_whole("model", "a");
  EXPECT_EQ(0, std::memcmp(a2.raw(), a.raw(), a.nbytes()));
  Tensor b2 = r.read_whole("model", "b");
  for (int i = 0; i < 5; ++i) EXPECT_EQ(b2.data<float>()[i], bf16_to_f32(f32_to_bf16(b.data<float>()[i])));
  EXPECT_EQ(r.read_whole("model", "scalar").data<float>()[0], s.data<float>()[0]);
  EXPECT_EQ(r.names("model"), (std::vector<std::string>{"a", "b", "scalar"}));
  EXPECT_TRUE(r.has("optimizer/exp_avg", "a"));
  EXPECT_EQ(r.verify(), 4);
  EXPECT_NE(error_of([&] { r.read_whole("model", "nope"); }).find("'nope'"), std::string::npos);
}

// Written under one layout, read under others: the tests' own shardings stand in for parallel
// layouts (2-way along one axis, 3-way along another, uneven, several files).
TEST(Checkpoint, ReshardsByBoxIntersection) {
  const std::string root = fresh_dir("reshard");
  const Shape s2{6, 10}, s3{4, 5, 7};
  Tensor t2 = random_tensor(s2, 5), t3 = random_tensor(s3, 6);
  {
    CheckpointWriter w(root, 1);
    int shard = 0;
    for (const Box& b : split(s2, 0, 2)) w.add("model", "m", s2, b, crop(t2, b), DType::f32, shard++);
    for (const Box& b : split(s3, 2, 2)) w.add("model", "t", s3, b, crop(t3, b), DType::f32, shard++ % 3);
    w.commit("");
  }
  CheckpointReader r = CheckpointReader::open(root);
  for (size_t axis = 0; axis < 2; ++axis)
    for (int parts : {1, 2, 3, 4})
      for (const Box& b : split(s2, axis, parts)) {
        Tensor got = Tensor::empty(b.extent);
        r.read("model", "m", b, got);
        Tensor want = crop(t2, b);
        ASSERT_EQ(0, std::memcmp(got.raw(), want.raw(), want.nbytes())) << "axis " << axis << " parts " << parts;
      }
  for (size_t axis = 0; axis < 3; ++axis)
    for (int parts : {3, 5})
      for (const Box& b : split(s3, axis, parts)) {
        Tensor got = Tensor::empty(b.extent);
        r.read("model", "t", b, got);
        Tensor want = crop(t3, b);
        ASSERT_EQ(0, std::memcmp(got.raw(), want.raw(), want.nbytes())) << "axis " << axis << " parts " << parts;
      }
  Box odd{{1, 3}, {4, 5}};  // an arbitrary window straddling both stored pieces
  Tensor got = Tensor::empty(odd.extent);
  r.read("model", "m", odd, got);
  Tensor want = crop(t2, odd);
  EXPECT_EQ(0, std::memcmp(got.raw(), want.raw(), want.nbytes()));
}

TEST(Checkpoint, CoverageAndChecksumErrorsNameTheTensor) {
  const std::string root = fresh_dir("errors");
  const Shape s{6, 4};
  Tensor t = random_tensor(s, 9);
  {
    CheckpointWriter w(root, 3);
    const auto halves = split(s, 0, 2);
    w.add("model", "gap", s, halves[0], crop(t, halves[0]));  // second half missing
    w.add("model", "dup", s, Box::whole(s), t);
    w.add("model", "dup", s, halves[1], crop(t, halves[1]));  // covered twice
    w.add("model", "ok", s, Box::whole(s), t);
    w.commit("");
  }
  CheckpointReader r = CheckpointReader::open(root);
  std::string e = error_of([&] { r.read_whole("model", "gap"); });
  EXPECT_NE(e.find("'gap'"), std::string::npos) << e;
  EXPECT_NE(e.find("covers 12 of the 24"), std::string::npos) << e;
  e = error_of([&] { r.read_whole("model", "dup"); });
  EXPECT_NE(e.find("overlap"), std::string::npos) << e;
  // corrupt one stored value of "ok" behind the checkpoint's back
  {
    const PieceInfo* p = nullptr;
    for (const PieceInfo& q : r.pieces())
      if (q.name == "ok") p = &q;
    h5::File f = h5::File::open((fs::path(r.dir()) / p->file).string(), true);
    const float bad = 123.0f;
    f.open_dataset(p->dataset).write(5, 1, H5T_NATIVE_FLOAT, &bad);
  }
  CheckpointReader r2 = CheckpointReader::open(root);
  e = error_of([&] { r2.read_whole("model", "ok"); });
  EXPECT_NE(e.find("checksum mismatch for tensor 'ok'"), std::string::npos) << e;
  // ... and when a box of another layout is read from it (the piece loaded whole and cut)
  e = error_of([&] {
    Tensor half = Tensor::empty({3, 4});
    r2.read("model", "ok", split(s, 0, 2)[1], half);
  });
  EXPECT_NE(e.find("checksum mismatch for tensor 'ok'"), std::string::npos) << e;
  EXPECT_THROW(r2.verify(), ConfigError);
}

TEST(Checkpoint, AtomicPublicationLatestAndKeepLast) {
  const std::string root = fresh_dir("atomic");
  Tensor t = random_tensor({3}, 1);
  for (int it : {10, 20, 30}) {
    CheckpointWriter w(root, it);
    w.add("model", "x", {3}, Box::whole({3}), t);
    w.commit("", 2);
  }
  EXPECT_FALSE(fs::exists(fs::path(root) / "iter_0000010"));  // pruned: keep the last 2
  EXPECT_TRUE(fs::exists(fs::path(root) / "iter_0000020"));
  EXPECT_EQ(CheckpointReader::open(root).iteration(), 30);
  {
    // a save that never commits (a crash) leaves nothing behind and `latest` untouched
    CheckpointWriter w(root, 40);
    w.add("model", "x", {3}, Box::whole({3}), t);
  }
  for (const auto& e : fs::directory_iterator(root))
    EXPECT_EQ(e.path().filename().string().find(".tmp-"), std::string::npos) << e.path();
  EXPECT_EQ(CheckpointReader::open(root).iteration(), 30);
  // re-saving an iteration replaces it
  Tensor u = random_tensor({3}, 2);
  {
    CheckpointWriter w(root, 30);
    w.add("model", "x", {3}, Box::whole({3}), u);
    w.commit("");
  }
  EXPECT_EQ(CheckpointReader::open(root).read_whole("model", "x").data<float>()[1], u.data<float>()[1]);
  // a crashed save's staging directory (a killed job leaves it) is removed by the next commit of
  // that iteration or a later one; a later iteration's (another save in flight) is left alone
  fs::create_directories(fs::path(root) / "iter_0000035.tmp-dead");
  fs::create_directories(fs::path(root) / "iter_0000050.tmp-live");
  {
    CheckpointWriter w(root, 40);
    w.add("model", "x", {3}, Box::whole({3}), u);
    w.commit("");
  }
  EXPECT_FALSE(fs::exists(fs::path(root) / "iter_0000035.tmp-dead"));
  EXPECT_TRUE(fs::exists(fs::path(root) / "iter_0000050.tmp-live"));
  // `latest` pointing at a missing checkpoint is an error naming it
  std::ofstream(fs::path(root) / "latest") << "99\n";
  std::string e = error_of([&] { CheckpointReader::open(root); });
  EXPECT_NE(e.find("iter_0000099"), std::string::npos) << e;
  // one number and nothing else: a damaged `latest` is not read as its leading digits
  for (const char* bad : {"40abc\n", "40\n40\n", "-1\n", "x\n", ""}) {
    std::ofstream(fs::path(root) / "latest", std::ios::trunc) << bad;
    e = error_of([&] { CheckpointReader::open(root); });
    EXPECT_NE(e.find("latest: does not hold an iteration number"), std::string::npos) << bad << ": " << e;
  }
  std::ofstream(fs::path(root) / "latest", std::ios::trunc) << " 40 \n";
  EXPECT_NO_THROW(CheckpointReader::open(root));
  EXPECT_NE(error_of([&] { CheckpointReader::open(root + "/nothing-here"); }).find("no checkpoint"), std::string::npos);
}

// --keep-last prunes only checkpoints older than the one saved: a run resumed from an earlier
// checkpoint of its root (to retry past a loss spike, say) leaves the later ones alone.
TEST(Checkpoint, KeepLastLeavesLaterCheckpointsAlone) {
  const std::string root = fresh_dir("keep-last-resumed");
  Tensor t = random_tensor({3}, 1);
  auto save = [&](int it, int keep_last) {
    CheckpointWriter w(root, it);
    w.add("model", "x", {3}, Box::whole({3}), t);
    w.commit("", keep_last);
  };
  for (int it : {10, 20, 30, 40}) save(it, 0);
  save(25, 2);  // resumed from 20: the last 2 up to 25 are 20 and 25; 30 and 40 stay
  EXPECT_FALSE(fs::exists(fs::path(root) / "iter_0000010"));
  for (const char* d : {"iter_0000020", "iter_0000025", "iter_0000030", "iter_0000040"})
    EXPECT_TRUE(fs::exists(fs::path(root) / d)) << d;
  EXPECT_EQ(CheckpointReader::open(root).iteration(), 25);
}

TEST(Checkpoint, ReplacingAnIterationNeverLeavesItMissing) {
  const std::string root = fresh_dir("replace");
  Tensor t = random_tensor({3}, 1), u = random_tensor({3}, 2);
  auto save = [&](int it, const Tensor& x, int keep_last = 0) {
    CheckpointWriter w(root, it);
    w.add("model", "x", {3}, Box::whole({3}), x);
    w.commit("", keep_last);
  };
  save(30, t);
  save(30, u);  // a re-save of the same iteration: swapped in, the old one gone, nothing left over
  EXPECT_EQ(CheckpointReader::open(root).read_whole("model", "x").data<float>()[2], u.data<float>()[2]);
  for (const auto& e : fs::directory_iterator(root)) {
    const std::string n = e.path().filename().string();
    EXPECT_TRUE(n == "latest" || n == "iter_0000030") << n;
  }
  // The path for file systems without RENAME_EXCHANGE (move aside, publish, remove) gives the same.
  ::setenv("LLM_CHECKPOINT_NO_EXCHANGE", "1", 1);
  save(30, t);
  ::unsetenv("LLM_CHECKPOINT_NO_EXCHANGE");
  EXPECT_EQ(CheckpointReader::open(root).read_whole("model", "x").data<float>()[2], t.data<float>()[2]);
  for (const auto& e : fs::directory_iterator(root)) {
    const std::string n = e.path().filename().string();
    EXPECT_TRUE(n == "latest" || n == "iter_0000030") << n;
  }
  save(30, u);
  // Where the file system cannot exchange, a crash between moving the old one aside and
  // publishing the new one leaves iter_0000030.old-*: `latest` still finds a complete checkpoint.
  fs::rename(fs::path(root) / "iter_0000030", fs::path(root) / "iter_0000030.old-123-dead");
  const CheckpointReader r = CheckpointReader::open(root);
  EXPECT_EQ(r.iteration(), 30);
  EXPECT_EQ(r.read_whole("model", "x").data<float>()[0], u.data<float>()[0]);
  // the next commit removes it once `latest` points past it; a directory that is not ours
  // (iter_best) is neither pruned by keep_last nor a reason to fail
  fs::create_directories(fs::path(root) / "iter_best");
  save(40, t, 1);
  EXPECT_FALSE(fs::exists(fs::path(root) / "iter_0000030.old-123-dead"));
  EXPECT_TRUE(fs::exists(fs::path(root) / "iter_best"));
  EXPECT_EQ(CheckpointReader::open(root).iteration(), 40);
}

TEST(Checkpoint, IterationDirectoryPathsAndEmptySaveRoots) {
  const std::string root = fresh_dir("paths");
  EXPECT_TRUE(save_root_is_empty(root));  // does not exist
  fs::create_directories(fs::path(root) / "iter_0000004.tmp-77-dead");  // a first save that died
  std::ofstream(fs::path(root) / "latest.tmp-77-dead") << "4\n";
  EXPECT_TRUE(save_root_is_empty(root));
  {
    CheckpointWriter w(root, 4);
    w.add("model", "x", {3}, Box::whole({3}), random_tensor({3}, 3));
    w.commit("");
  }
  EXPECT_FALSE(save_root_is_empty(root));
  EXPECT_FALSE(fs::exists(fs::path(root) / "iter_0000004.tmp-77-dead"));
  // an iteration directory written with a trailing separator: dir() names the directory itself,
  // so its parent is the save root (llm-ckpt convert refuses to write into it)
  const CheckpointReader r = CheckpointReader::open(root + "/iter_0000004/");
  EXPECT_EQ(fs::path(r.dir()).filename().string(), "iter_0000004");
  EXPECT_TRUE(fs::equivalent(fs::path(r.dir()).parent_path(), root));
  const std::string f = root + "-file";
  std::ofstream(f) << "x";
  EXPECT_FALSE(save_root_is_empty(f));
}

// A piece's box must lie inside its tensor: one past the end (a hand edit, a damaged
// metadata.json) is named when the checkpoint is opened, not read as a coverage gap.
TEST(Checkpoint, APieceBoxPastItsTensorIsRefused) {
  const std::string root = fresh_dir("piece-box");
  const fs::path meta = save_one_tensor(root);
  std::string text = read_whole_file(meta, "metadata");
  const std::string box = "\"offset\": [0], \"extent\": [3]";
  ASSERT_NE(text.find(box), std::string::npos) << text;
  text.replace(text.find(box), box.size(), "\"offset\": [2], \"extent\": [3]");
  std::ofstream(meta, std::ios::trunc) << text;
  const std::string e = error_of([&] { CheckpointReader::open(root); });
  EXPECT_NE(e.find("metadata.json"), std::string::npos) << e;
  EXPECT_NE(e.find("box outside the tensor"), std::string::npos) << e;
}

// Without 'latest' (a first save killed before publishing it), the newest iteration whose
// directory is complete (metadata.json written last) is the one named, not a later half-written one.
TEST(Checkpoint, NewestCompleteIterationSkipsAnIncompleteDirectory) {
  const std::string root = fresh_dir("newest-complete");
  for (int it : {10, 20}) save_one_tensor(root, it);
  fs::remove(fs::path(root) / "latest");
  fs::create_directories(fs::path(root) / "iter_0000030");  // begun, never completed
  std::ofstream(fs::path(root) / "iter_0000030" / "shard_00000.h5") << "partial";
  EXPECT_EQ(fs::path(newest_complete_iteration(root)).filename(), "iter_0000020");
  fs::remove(fs::path(root) / "iter_0000020" / "metadata.json");
  EXPECT_EQ(fs::path(newest_complete_iteration(root)).filename(), "iter_0000010");
}

// A piece's file is a shard of the checkpoint's own directory: a path out of it (a hand edit, a
// damaged metadata.json) read another file, named only as a missing or unreadable shard.
TEST(Checkpoint, PieceFilesAreShardsOfTheCheckpointItself) {
  const std::string root = fresh_dir("piece-files");
  const fs::path meta = save_one_tensor(root);
  const std::string good = read_whole_file(meta, "metadata");
  const std::string shard = "\"file\": \"shard_00000.h5\"";
  ASSERT_NE(good.find(shard), std::string::npos) << good;
  for (const char* bad : {"../iter_0000001/shard_00000.h5", "/etc/passwd", "..", ""}) {
    std::string text = good;
    text.replace(text.find(shard), shard.size(), std::string("\"file\": \"") + bad + "\"");
    std::ofstream(meta, std::ios::trunc) << text;
    const std::string e = error_of([&] { CheckpointReader::open(root).read_whole("model", "x"); });
    EXPECT_NE(e.find("(model/x): 'file' must be a plain file name (a shard of this checkpoint), not '" + std::string(bad) + "'"),
              std::string::npos)
        << e;
  }
  std::ofstream(meta, std::ios::trunc) << good;
  EXPECT_EQ(CheckpointReader::open(root).read_whole("model", "x").numel(), 3);
}
