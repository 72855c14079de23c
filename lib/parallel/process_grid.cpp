#include "parallel/process_grid.h"

#include "core/error.h"

namespace llm {

void validate_layout(const ParallelLayout& l, const LayoutConstraints& c) {
  auto fail = [](auto&&... parts) { throw ConfigError(detail::concat(parts...)); };
  if (l.tp < 1 || l.pp < 1 || l.sp < 1) fail("parallel sizes must be >= 1 (tp ", l.tp, ", pp ", l.pp, ", sp ", l.sp, ")");
  const int64_t model = l.tp * l.pp * l.sp;
  if (l.world % model)
    fail("world size ", l.world, " is not divisible by --tensor-model-parallel-size ", l.tp,
         " x --pipeline-model-parallel-size ", l.pp, " x --ds-sequence-parallel-size ", l.sp, " = ", model);
  if (c.num_heads % l.tp)
    fail("--num-attention-heads ", c.num_heads, " is not divisible by --tensor-model-parallel-size ", l.tp);
  if (c.num_heads % l.sp)
    fail("--num-attention-heads ", c.num_heads, " is not divisible by --ds-sequence-parallel-size ", l.sp);
  if (c.num_heads % (l.tp * l.sp))  // each tensor-parallel rank's heads split again over Ulysses
    fail("--num-attention-heads ", c.num_heads, " is not divisible by --tensor-model-parallel-size ", l.tp,
         " x --ds-sequence-parallel-size ", l.sp, " = ", l.tp * l.sp);
  if (c.seq_length % l.sp) fail("--seq-length ", c.seq_length, " is not divisible by --ds-sequence-parallel-size ", l.sp);
  if (c.num_layers % l.pp)
    fail("--num-layers ", c.num_layers, " is not divisible by --pipeline-model-parallel-size ", l.pp);
  if (c.megatron_sp && l.sp > 1) fail("--sequence-parallel (Megatron) and --ds-sequence-parallel-size > 1 (Ulysses) exclude each other");
  if (c.megatron_sp && l.tp > 1 && (c.micro_batch * c.seq_length) % l.tp)  // the residual stream's rows split over TP
    fail("--sequence-parallel: --micro-batch-size ", c.micro_batch, " x --seq-length ", c.seq_length, " = ",
         c.micro_batch * c.seq_length, " tokens are not divisible by --tensor-model-parallel-size ", l.tp);
  const int64_t dp = l.dp();
  if (c.micro_batch < 1) fail("--micro-batch-size must be >= 1, got ", c.micro_batch);
  if (c.global_batch % (c.micro_batch * dp))
    fail("--global-batch-size ", c.global_batch, " is not divisible by --micro-batch-size ", c.micro_batch,
         " x data-parallel size ", dp, " (world ", l.world, " / (tp ", l.tp, " x pp ", l.pp, " x sp ", l.sp, "))");
}

GridCoordinates grid_coordinates(const ParallelLayout& l, int64_t rank) {
  GridCoordinates g;
  g.tp_rank = rank % l.tp;
  g.sp_rank = (rank / l.tp) % l.sp;
  g.dp_rank = (rank / (l.tp * l.sp)) % l.dp();
  g.pp_rank = rank / (l.tp * l.sp * l.dp());
  return g;
}

}  // namespace llm
