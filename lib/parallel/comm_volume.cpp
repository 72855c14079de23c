#include "parallel/comm_volume.h"

#include <cstdio>

namespace llm {

GroupVolumes analytic_comm_volume(const CommVolumeInputs& in) {
  GroupVolumes v;
  // f: f32 bytes (gradients, parameters but ZeRO-3's 16-bit layer gathers, loss statistics),
  // a: activation bytes; the stage's layers
  const int64_t L = in.model.num_layers / in.pp, h = in.model.hidden_size, f = 4, a = in.activation_bytes;
  const int64_t first = in.stage == 0 ? 1 : 0, last = in.stage == in.pp - 1 ? 1 : 0;
  const int64_t tokens = in.micro_batch * (in.seq_length / in.sp);  // rows per rank
  const int64_t nh = tokens * h * a, m = in.micro_batches;
  const int64_t reruns = in.recompute ? L - 1 : 0;  // blocks whose forward runs again in backward
  if (in.tp > 1) {
    if (in.megatron_sp) {
      // forward: 2 per layer + the logits' input; backward: 4 per layer + the embedding's gradient
      v.tp.all_gather = m * nh * ((2 * L + last) + (4 * L + first) + 2 * reruns);
      // forward: 2 per layer + the embedding; backward: 2 per layer + the final LayerNorm's input
      v.tp.reduce_scatter = m * nh * ((2 * L + first) + (2 * L + last) + 2 * reruns);
      // LayerNorm partial gradients: once per step, or per micro-batch for the layers under ZeRO-2/3
      // (whose per-layer hook reduces them whatever the data-parallel size)
      v.tp.all_reduce = (4 * L * (in.zero_stage >= 2 ? m : 1) + 2 * last) * h * f;
    } else {
      v.tp.all_reduce = m * nh * ((4 * L + first + last) + 2 * reruns);
    }
    v.tp.all_gather += last * m * 2 * in.tp * tokens * f;  // vocab-parallel loss: lse and loss per token
  }
  if (in.sp > 1) {
    const int64_t heads_in = tokens * 3 * (h / in.tp) * a, out_in = tokens * (h / in.tp) * a;
    v.sp.all_to_all = m * (heads_in + out_in) * (2 * L + reruns);
  }
  // ZeRO-1/2's gather of the updated parameters: with sharded masters the 16-bit copy and the
  // f32_op tensors' masters, else the f32 parameters
  const int64_t post_step_gather =
      in.sharded_masters ? in.params_per_rank * a + in.f32_op_params * f : in.params_per_rank * f;
  if (in.dp * in.sp > 1 && in.zero_stage >= 2) {
    const int64_t layer = in.layer_params * f;
    v.dp.reduce_scatter = m * L * layer;
    v.dp.all_reduce = in.resident_params * f;
    // ZeRO-3 gathers a layer before its forward and its backward: in mixed precision the 16-bit
    // copy and the f32_op tensors' masters
    const int64_t gathered = a == f ? layer : in.layer_params * a + in.layer_f32_op_params * f;
    v.dp.all_gather = in.zero_stage == 2 ? post_step_gather : 2 * m * L * gathered + in.resident_params * f;
  } else if (in.dp * in.sp > 1 && in.zero_stage == 1) {
    v.dp.reduce_scatter = in.params_per_rank * f;  // the gradients onto their owners
    v.dp.all_gather = post_step_gather;            // the updated parameters
  } else if (in.dp * in.sp > 1) {
    v.dp.all_reduce = in.params_per_rank * f;
  }
  if (in.pp > 1) {
    const int64_t rows = in.megatron_sp && in.tp > 1 ? tokens / in.tp : tokens;
    v.pp.send_recv = m * rows * h * a * ((1 - last) + (1 - first));
    const int64_t vocab_rows = in.model.padded_vocab_size() / in.tp;
    if (first || last) v.pp.send_recv += vocab_rows * h * f;  // tied embedding gradient
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
  group("pipeline", measured.pp, model.pp);
  return out;
}

}  // namespace llm
