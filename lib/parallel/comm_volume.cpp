#include "parallel/comm_volume.h"

#include <cstdio>

namespace llm {

GroupVolumes analytic_comm_volume(const CommVolumeInputs& in) {
  GroupVolumes v;
  const int64_t L = in.model.num_layers, h = in.model.hidden_size, f = 4;  // f32 bytes
  const int64_t tokens = in.micro_batch * (in.seq_length / in.sp);       // rows per rank
  const int64_t nh = tokens * h * f, m = in.micro_batches;
  const int64_t reruns = in.recompute ? L - 1 : 0;  // blocks whose forward runs again in backward
  if (in.tp > 1) {
    if (in.megatron_sp) {
      v.tp.all_gather = m * nh * ((2 * L + 1) + (4 * L + 1) + 2 * reruns);
      v.tp.reduce_scatter = m * nh * ((2 * L + 1) + (2 * L + 1) + 2 * reruns);
      v.tp.all_reduce = (4 * L + 2) * h * f;  // LayerNorm partial gradients, once per step
    } else {
      v.tp.all_reduce = m * nh * ((4 * L + 2) + 2 * reruns);
    }
    v.tp.all_gather += m * 2 * in.tp * tokens * f;  // vocab-parallel loss: lse and loss per token
  }
  if (in.sp > 1) {
    const int64_t heads_in = tokens * 3 * (h / in.tp) * f, out_in = tokens * (h / in.tp) * f;
    v.sp.all_to_all = m * (heads_in + out_in) * (2 * L + reruns);
  }
  if (in.dp * in.sp > 1) {
    v.dp.all_reduce = in.params_per_rank * f;
    if (in.zero_stage >= 1) v.dp.all_gather = in.params_per_rank * f;
  }
  return v;
}

std::string comm_volume_report(const GroupVolumes& measured, const GroupVolumes& model) {
  std::string out = "communication per iteration on rank 0 (MB, measured / model):";
  auto line = [&](const char* group, const char* what, int64_t got, int64_t want) {
    if (got == 0 && want == 0) return;
    char buf[160];
    std::snprintf(buf, sizeof buf, "\n    %-16s %-15s %10.3f / %10.3f%s", group, what, static_cast<double>(got) / 1e6,
                  static_cast<double>(want) / 1e6, got == want ? "" : "  MISMATCH");
    out += buf;
  };
  auto group = [&](const char* name, const Communicator::Volume& a, const Communicator::Volume& b) {
    line(name, "all-reduce", a.all_reduce, b.all_reduce);
    line(name, "all-gather", a.all_gather, b.all_gather);
    line(name, "reduce-scatter", a.reduce_scatter, b.reduce_scatter);
    line(name, "all-to-all", a.all_to_all, b.all_to_all);
    line(name, "send/recv", a.send_recv, b.send_recv);
  };
  group("tensor-parallel", measured.tp, model.tp);
  group("Ulysses", measured.sp, model.sp);
  group("data-parallel", measured.dp, model.dp);
  return out;
}

}  // namespace llm
