#include <gtest/gtest.h>

#include "data/json.h"
#include "sweep/report.h"

using namespace llm;
using namespace llm::sweep;

namespace {
std::vector<PointResult> three_points() {
  std::vector<PointResult> rs(3);
  const int64_t seqs[] = {1024, 2048, 4096};
  for (int i = 0; i < 3; ++i) {
    rs[i].point.model = "tiny";
    rs[i].point.seq_length = seqs[i];
  }
  rs[0].ms_per_iteration = stats_of({100, 110, 90});
  rs[0].tflops_megatron = 2.0, rs[0].tflops_model = 1.9, rs[0].mfu = 0.5, rs[0].peak_memory_bytes = 100 << 20;
  rs[0].predicted_ms = 110;
  rs[1].ms_per_iteration = stats_of({200});
  rs[1].tflops_megatron = 3.0, rs[1].peak_memory_bytes = 200 << 20, rs[1].predicted_ms = 150;
  rs[2].status = Status::oom;
  rs[2].message = "out of host memory allocating 1 bytes, really | badly";
  return rs;
}
}  // namespace

TEST(SweepReport, MarkdownHasTheSeedColumns) {
  const auto rs = three_points();
  ReportContext ctx;
  ctx.baseline = first_ok(rs);
  EXPECT_EQ(ctx.baseline, 0);
  const std::string md = markdown_table(rs, ctx);
  EXPECT_NE(md.find("| name | sequence length | ratio to smallest | TFLOPS (Megatron) | % of baseline |"), std::string::npos) << md;
  EXPECT_NE(md.find("| tiny mb1 dp1 tp1 pp1 sp1(ds) z0 fp32 cpu | 1024 | 1 | 2 | 100.0% |"), std::string::npos) << md;
  EXPECT_NE(md.find("| tiny mb1 dp1 tp1 pp1 sp1(ds) z0 fp32 cpu | 2048 | 2 | 3 | 150.0% |"), std::string::npos) << md;
  EXPECT_NE(md.find("| tiny mb1 dp1 tp1 pp1 sp1(ds) z0 fp32 cpu | 4096 | 4 | OOM | - |"), std::string::npos) << md;
  // Details: median and spread (half the range), MFU, memory, prediction error; '|' escaped.
  EXPECT_NE(md.find("| 100.0 (±10.0%, 3) |"), std::string::npos) << md;
  EXPECT_NE(md.find("| 50.0% | 100 | 110.0 | +10% | 0 |"), std::string::npos) << md;
  EXPECT_NE(md.find("out of memory: out of host memory allocating 1 bytes, really / badly"), std::string::npos) << md;
  // |110-100|/100 and |150-200|/200: median of 10% and 25%.
  EXPECT_DOUBLE_EQ(median_prediction_error(rs), 0.175);
  EXPECT_NE(md.find("median |predicted - measured| / measured iteration time = 17.5%"), std::string::npos) << md;
}

TEST(SweepReport, CsvAndJson) {
  const auto rs = three_points();
  ReportContext ctx;
  ctx.command = "llm-sweep --seq-lens \"1k:4k\"";
  const std::string csv = csv_table(rs, ctx);
  EXPECT_EQ(std::count(csv.begin(), csv.end(), '\n'), 4);
  EXPECT_EQ(csv.rfind("index,label,model,seq_length,", 0), 0u);
  EXPECT_NE(csv.find(",out of memory,\"out of host memory allocating 1 bytes, really | badly\","), std::string::npos) << csv;
  const json::Value v = json::parse(json_report(rs, ctx));
  EXPECT_EQ(v.find("command")->as_string(), ctx.command);
  const json::Array& pts = v.find("points")->as_array();
  ASSERT_EQ(pts.size(), 3u);
  EXPECT_EQ(pts[1].find("seq_length")->as_int(), 2048);
  EXPECT_DOUBLE_EQ(pts[0].find("ms_per_iteration")->find("median")->as_double(), 100);
  EXPECT_EQ(pts[2].find("status")->as_string(), "out of memory");
  EXPECT_EQ(pts[0].find("peak_memory_bytes")->as_int(), 100 << 20);
}
