// What the multi-rank tests share: the small training configuration they run (layout set by each
// test), and the comparison of a rank's shard of a tensor with the single-process tensor.
#pragma once
#include <algorithm>
#include <cmath>
#include <functional>

#include "model/parameters.h"
#include "support/max_or_nan.h"
#include "train/args.h"

namespace mpi_support {

// 4 layers, hidden 32, 4 heads, vocabulary 200 (padded to 16s), sequence 16, micro-batch 2,
// 3 iterations at lr 3e-3; `layout` sets the parallel sizes and flags, then the arguments are
// resolved and validated.
inline llm::TrainArgs tiny_train_args(int64_t global_batch, int64_t seed,
                                      const std::function<void(llm::TrainArgs&)>& layout) {
  llm::TrainArgs a;
  a.num_layers = 4;
  a.hidden_size = 32;
  a.num_attention_heads = 4;
  a.vocab_size = 200;
  a.make_vocab_size_divisible_by = 16;
  a.seq_length = 16;
  a.micro_batch_size = 2;
  a.global_batch_size = global_batch;
  a.lr = 3e-3;
  a.train_iters = 3;
  a.seed = seed;
  layout(a);
  a.resolve_defaults();
  a.validate();
  return a;
}

// Largest |a - b| over the local tensor and the matching global box of the reference; *scale is
// the reference's largest magnitude (rows of the reference beyond its extent are skipped: the
// padded vocabulary differs between layouts).
inline double box_error(const llm::ParamSpec& spec, const llm::Tensor& local, const llm::Tensor& global,
                        double* scale) {
  const auto& gs = global.shape();
  const int64_t gcols = gs.size() == 2 ? gs[1] : 1, lcols = spec.shape.size() == 2 ? spec.shape[1] : 1;
  double err = 0, mag = 0;
  for (int64_t i = 0; i < global.numel(); ++i) mag = std::max(mag, std::fabs(double(global.data<float>()[i])));
  for (const llm::LocalBox& b : llm::local_boxes(spec)) {
    const int64_t rows = b.extent[0], cols = b.extent.size() == 2 ? b.extent[1] : 1;
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t gr = b.global_offset[0] + r, lr = b.local_offset[0] + r;
      if (gr >= gs[0]) continue;
      for (int64_t c = 0; c < cols; ++c) {
        const int64_t gc = (b.global_offset.size() == 2 ? b.global_offset[1] : 0) + c;
        const int64_t lc = (b.local_offset.size() == 2 ? b.local_offset[1] : 0) + c;
        const double want = global.data<float>()[gr * gcols + gc], got = local.data<float>()[lr * lcols + lc];
        err = llm::testing::max_or_nan(err, std::fabs(want - got));
      }
    }
  }
  *scale = mag;
  return err;
}

}  // namespace mpi_support
