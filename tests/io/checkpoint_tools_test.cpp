// llm-ckpt's library side: diff (compare_checkpoints) and convert (convert_checkpoint).
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <limits>

#include "core/error.h"
#include "io/checkpoint.h"
#include "io/checkpoint_compare.h"
#include "io/checkpoint_convert.h"
#include "support/config_error.h"
#include "support/scratch_dir.h"

using namespace llm;
namespace fs = std::filesystem;

namespace {

Tensor filled(const Shape& s, float base) {
  Tensor t = Tensor::empty(s);
  for (int64_t i = 0; i < t.numel(); ++i) t.data<float>()[i] = base + 0.25f * static_cast<float>(i);
  return t;
}

struct Named {
  std::string category, name;
  Tensor value;
};

std::string save(const std::string& root, const std::vector<Named>& tensors, int64_t iteration = 5) {
  CheckpointWriter w(root, iteration);
  for (const Named& n : tensors) w.add(n.category, n.name, n.value.shape(), Box::whole(n.value.shape()), n.value);
  return w.commit("");
}

using llm::testing::error_of;

}  // namespace

TEST(CheckpointDiff, NaNNeverComparesEqual) {
  const llm::testing::ScratchDir tmp("ckpt-tools");
  const std::string a = tmp / "nan-a", b = tmp / "nan-b";
  Tensor x = filled({4, 3}, 1.0f);
  x.data<float>()[5] = std::numeric_limits<float>::quiet_NaN();
  save(a, {{"model", "x", x}});
  save(b, {{"model", "x", x}});  // the same NaN at the same place: still not the same checkpoint
  const CheckpointDifference d = compare_checkpoints(a, b, false);
  ASSERT_EQ(d.tensors.size(), 1u);
  EXPECT_EQ(d.tensors[0].nonfinite, 1);
  EXPECT_TRUE(std::isinf(d.worst("model")));
  EXPECT_FALSE(d.worst("model") <= 1e-5);
  // equal infinities, on the other hand, are equal
  Tensor y = filled({4, 3}, 1.0f);
  y.data<float>()[2] = std::numeric_limits<float>::infinity();
  const std::string c = tmp / "inf-c", e = tmp / "inf-e";
  save(c, {{"model", "y", y}});
  save(e, {{"model", "y", y}});
  EXPECT_EQ(compare_checkpoints(c, e, false).worst("model"), 0.0);
}

TEST(CheckpointDiff, OnlyTheVocabularyMayDifferInRows) {
  const llm::testing::ScratchDir tmp("ckpt-tools");
  const std::string a = tmp / "rows-a", b = tmp / "rows-b";
  // wte padded for another tensor-parallel size: compared over the common rows
  save(a, {{"model", "wte", filled({6, 2}, 0.5f)}, {"model", "wpe", filled({4, 2}, 2.0f)}});
  save(b, {{"model", "wte", filled({8, 2}, 0.5f)}, {"model", "wpe", filled({8, 2}, 2.0f)}});
  const CheckpointDifference d = compare_checkpoints(a, b, false);
  ASSERT_EQ(d.tensors.size(), 1u);
  EXPECT_EQ(d.tensors[0].name, "wte");
  EXPECT_EQ(d.tensors[0].compared, 12);
  EXPECT_EQ(d.tensors[0].relative(), 0.0);
  ASSERT_EQ(d.problems.size(), 1u);  // wpe [4, 2] against [8, 2] is a difference, not a prefix
  EXPECT_NE(d.problems[0].find("wpe"), std::string::npos) << d.problems[0];
}

// Where the checkpoints record the real vocabulary, wte's padding rows past it (never looked up;
// an export drops them, an import fills them anew) are not compared; two vocabularies differ.
TEST(CheckpointDiff, WtesPaddingRowsAreNotCompared) {
  const llm::testing::ScratchDir tmp("ckpt-tools");
  auto with_vocab = [](const std::string& root, const Tensor& wte, int vocab) {
    CheckpointWriter w(root, 5);
    w.add("model", "wte", wte.shape(), Box::whole(wte.shape()), wte);
    return w.commit("\"model\": {\"vocab_size\": " + std::to_string(vocab) + "}");
  };
  Tensor x = filled({8, 2}, 0.5f), y = filled({8, 2}, 0.5f);
  y.data<float>()[6 * 2 + 1] = 99.0f;  // row 6: padding past a vocabulary of 5
  const std::string a = with_vocab(tmp / "pad-a", x, 5), b = with_vocab(tmp / "pad-b", y, 5);
  CheckpointDifference d = compare_checkpoints(a, b, false);
  ASSERT_EQ(d.tensors.size(), 1u);
  EXPECT_EQ(d.tensors[0].compared, 10);
  EXPECT_EQ(d.worst("model"), 0.0);
  EXPECT_TRUE(d.problems.empty());
  y.data<float>()[4 * 2] = 7.0f;  // row 4 is a real token's
  d = compare_checkpoints(a, with_vocab(tmp / "pad-c", y, 5), false);
  EXPECT_GT(d.worst("model"), 0.0);
  d = compare_checkpoints(a, with_vocab(tmp / "pad-d", x, 6), false);
  ASSERT_EQ(d.problems.size(), 1u);
  EXPECT_NE(d.problems[0].find("the vocabularies differ: 5 tokens"), std::string::npos) << d.problems[0];
}

TEST(CheckpointConvert, RefusesItsOwnSaveRootHoweverTheSourceIsWritten) {
  const llm::testing::ScratchDir tmp("ckpt-tools");
  const std::string root = tmp / "self";
  const std::string dir = save(root, {{"model", "x", filled({3}, 1.0f)}});
  for (const std::string& src : {dir, dir + "/", root, root + "/"}) {
    ConvertOptions o;
    o.dtype = DType::bf16;
    const std::string e = error_of([&] { convert_checkpoint(src, root, o); });
    EXPECT_NE(e.find("different directory"), std::string::npos) << src << ": " << e;
  }
  // from inside the iteration directory (".") and through a symbolic link to it
  const fs::path link = tmp.path() / "link";
  fs::create_directory_symlink(dir, link);
  const fs::path cwd = fs::current_path();
  fs::current_path(dir);
  for (const std::string& src : {std::string("."), link.string()}) {
    ConvertOptions o;
    o.dtype = DType::bf16;
    const std::string e = error_of([&] { convert_checkpoint(src, root, o); });
    EXPECT_NE(e.find("different directory"), std::string::npos) << src << ": " << e;
  }
  fs::current_path(cwd);
  // the source is untouched: still f32
  EXPECT_EQ(CheckpointReader::open(root).pieces()[0].dtype, DType::f32);
}

TEST(CheckpointConvert, F16KeepsTheMomentsInF32AndRefusesOverflow) {
  const llm::testing::ScratchDir tmp("ckpt-tools");
  const std::string root = tmp / "f16-src", out = tmp / "f16-out";
  Tensor m2 = filled({4}, 0.0f);
  m2.data<float>()[1] = 1e-9f;  // exp_avg_sq's scale: zero in f16
  save(root, {{"model", "w", filled({4}, 1.0f)}, {"optimizer/exp_avg_sq", "w", m2}});
  ConvertOptions o;
  o.dtype = DType::f16;
  const CheckpointReader r = CheckpointReader::open(convert_checkpoint(root, out, o));
  for (const PieceInfo& p : r.pieces())
    EXPECT_EQ(p.dtype, p.category == "model" ? DType::f16 : DType::f32) << p.category << "/" << p.name;
  EXPECT_EQ(r.read_whole("optimizer/exp_avg_sq", "w").data<float>()[1], 1e-9f);
  // a weight past f16's range is named rather than stored as infinity
  const std::string big = tmp / "f16-big", out2 = tmp / "f16-big-out";
  Tensor w = filled({3}, 1.0f);
  w.data<float>()[2] = 70000.0f;
  save(big, {{"model", "w", w}});
  const std::string e = error_of([&] { convert_checkpoint(big, out2, o); });
  EXPECT_NE(e.find("model/w"), std::string::npos) << e;
  EXPECT_NE(e.find("65504"), std::string::npos) << e;
  EXPECT_FALSE(fs::exists(fs::path(out2) / "latest"));
}
