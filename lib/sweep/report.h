// A sweep's outputs: the markdown table (the seed's columns first: name, sequence length, ratio
// to the smallest, TFLOPS, % of the baseline point; then the detail), CSV, JSON, and gnuplot
// plots of TFLOPS and memory against the swept variable.
#pragma once
#include <string>
#include <vector>

#include "sweep/result.h"

namespace llm::sweep {

struct ReportContext {
  std::string variable = "seq";  // swept variable: x axis (see SweepPoint::swept_value)
  int baseline = 0;              // index into the results of the % column's 100% point
  bool simulated = false;        // predictions only (no measurements)
  std::string peak_source;       // "sgemm ceiling 2 threads: 182.4 GFLOP/s", "A100-40GB bf16 datasheet ..."
  std::string command;           // the command line that produced it
};

// Index of the first ok point (the default baseline), or -1.
int first_ok(const std::vector<PointResult>& rs);
std::string markdown_table(const std::vector<PointResult>& rs, const ReportContext& ctx);
std::string csv_table(const std::vector<PointResult>& rs, const ReportContext& ctx);
std::string json_report(const std::vector<PointResult>& rs, const ReportContext& ctx);
// Median |predicted - measured| / measured over ok points that have both (0..1), -1 when none.
double median_prediction_error(const std::vector<PointResult>& rs);

// Writes <prefix>-tflops.svg and <prefix>-memory.svg (one line per series) through gnuplot.
// Returns "" on success, else why not (gnuplot missing or failing); data and script files stay.
std::string write_plots(const std::vector<PointResult>& rs, const ReportContext& ctx, const std::string& prefix);

}  // namespace llm::sweep
