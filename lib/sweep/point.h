// One point of a sweep (model, sequence, batch, parallel layout, recompute, dtype, backend), the
// grid of points a sweep's lists span, the model each point trains, and the llm-pretrain
// command line that measures it.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "model/config.h"

namespace llm::sweep {

struct SweepPoint {
  std::string model = "tiny";  // key in configs/models or a YAML path
  int64_t seq_length = 128;
  int64_t micro_batch = 1;
  int64_t grad_accum = 1;      // micro-batches per data-parallel rank per iteration
  int64_t dp = 1, tp = 1, pp = 1;
  int64_t sp = 1;              // sequence-parallel size
  std::string sp_type = "ds";  // ds (DeepSpeed-Ulysses: all-to-all) | megatron (over the TP group)
  int64_t zero_stage = 0;
  bool recompute = false;      // full activation recompute
  // The data-parallel collectives overlapped with compute: --overlap-grad-reduce (and with a
  // sharded optimizer, ZeRO 1-3, --overlap-param-gather).
  bool overlap = false;
  std::string dtype = "fp32";  // fp32 | bf16 | fp16
  std::string backend = "cpu"; // cpu | cuda
  int64_t vocab_size = 0;      // 0 = the model file's (else llm-pretrain's default)
  int64_t logits_chunk = 0;    // llm-pretrain's --logits-chunk-tokens (0 = all at once)

  // Ulysses ranks multiply the world; Megatron SP reuses the tensor-parallel group.
  int64_t ulysses() const { return sp_type == "ds" ? sp : 1; }
  int64_t world() const { return dp * tp * pp * ulysses(); }
  int64_t global_batch() const { return micro_batch * grad_accum * dp; }
  // "tiny s512 mb1 dp1 tp1 pp1 sp1(ds) z0 fp32 cpu", "+rc" with recompute, "+ov" overlapped,
  // "lc4096" with logits in chunks of 4096 tokens.
  std::string label() const { return label_without(""); }
  // The label without one swept variable (see swept_value): names a series of a sweep over it.
  std::string label_without(const std::string& variable) const;
  // The point's value of a swept variable: seq | mb | gas | dp | tp | pp | sp | zero.
  int64_t swept_value(const std::string& variable) const;
};

// The lists a sweep spans; the grid is their Cartesian product (model outermost, sequence
// length innermost).
struct SweepGrid {
  std::vector<std::string> models{"tiny"};
  std::vector<int64_t> seq_lengths{128};
  std::vector<int64_t> micro_batches{1};
  std::vector<int64_t> grad_accums{1};
  std::vector<int64_t> dps{1}, tps{1}, pps{1}, sps{1};
  std::vector<std::string> sp_types{"ds"};
  std::vector<int64_t> zero_stages{0};
  std::vector<bool> recomputes{false};
  std::vector<bool> overlaps{false};
  std::vector<std::string> dtypes{"fp32"};
  std::vector<std::string> backends{"cpu"};
  int64_t vocab_size = 0;
  int64_t logits_chunk = 0;
};
std::vector<SweepPoint> expand(const SweepGrid& g);
// The numeric variable the grid sweeps (the first of seq, mb, gas, dp, tp, pp, sp, zero with more
// than one value; "seq" when none does): the x axis of tables and plots.
std::string swept_variable(const SweepGrid& g);

// The model a point trains: the model file (resolved like llm-pretrain's --model) with the
// point's vocabulary and sequence length. Unknown keys are ConfigErrors naming the key.
GPTConfig point_model(const SweepPoint& p, const std::string& exe_dir);
// Why the point cannot run as laid out ("" when it can): llm::validate_layout's message, or the
// sweep's own rules (Megatron SP needs sp == tp, ZeRO stage in 0..3, dtype/backend names).
std::string layout_problem(const SweepPoint& p, const GPTConfig& model);

struct LaunchOptions {
  std::string pretrain;   // path of llm-pretrain
  std::string mpiexec = "mpiexec";
  std::string output_dir; // the point's run directory
  int64_t warmup_iters = 2, timed_iters = 5;
  int64_t threads = 0;    // total threads for the point (0 = inherit)
  bool as_root = false;   // adds Open MPI's run-as-root permission
  bool open_mpi = true;   // Open MPI's mpiexec (else MPICH/Hydra: -n N, environment inherited)
};
// argv for one point: llm-pretrain --mock-data ... (plus mpiexec -np N ... when world > 1).
std::vector<std::string> pretrain_command(const SweepPoint& p, const LaunchOptions& o);
// OMP_NUM_THREADS for each rank of the point.
int64_t threads_per_rank(const SweepPoint& p, int64_t total_threads);

}  // namespace llm::sweep
