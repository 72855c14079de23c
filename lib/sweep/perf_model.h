// Performance model: predicts iteration time, TFLOPS and memory per device for a GPT model and a
// parallel layout on a described cluster. Pure arithmetic over named terms, each a function
// here so tests can check it by hand:
//
//   time  = (m + p - 1) x t_stage  +  t_dp  +  t_optimizer           (1F1B pipeline, m micro-batches;
//                                                                      t_dp: what the data-parallel
//                                                                      collectives add, below)
//   t_stage = passes x [matmul FLOPs / (peak x eff(n)) + causal attention FLOPs / (peak x eff_attn)]
//           + activation traffic / memory bandwidth + TP/SP collectives + pipeline sends
//     passes = 3 (forward + backward = 2 forwards), 4 with full recompute
//     eff(n) = matmul_efficiency x n / (n + n_half): GEMMs with few rows (n = tokens per micro-batch
//              per device) run below the large-GEMM efficiency (Hockney's half-performance length)
//   collectives: alpha-beta, ring algorithms; bandwidth and latency of the node's links when the
//     group fits in a node (tp fastest, then Ulysses sp, then dp, then pp), else the network's
//     share per device (node bandwidth / devices per node); only the data-parallel ones
//     (data_parallel_time below) overlap compute, and only with --overlap
//   memory = model states (ZeRO stage over the dp x sp group) + activations (Korthikanti et al.
//     2022 per-layer bytes, 1F1B keeps min(p, m) micro-batches on the first stage, recompute keeps
//     each layer's input only) + one layer as backward workspace (two with recompute: the
//     recomputed layer) + the logits in the compute type (one chunk's rows with
//     --logits-chunk-tokens, which costs no time: training runs each chunk's backward in its
//     forward) + runtime overhead
//
// Communication volumes per device per layer and micro-batch, forward (backward is the same):
//   Megatron TP / SP: 4 N h (t-1)/t elements (2 all-reduces, or 2 all-gathers + 2 reduce-scatters)
//   DeepSpeed-Ulysses: 4 N h (P-1)/P^2 elements (all-to-all of q, k, v and the attention output)
// with N = micro-batch x sequence tokens: for large t = P, 4Nh against 4Nh/P (the Ulysses paper).
#pragma once
#include <cstdint>
#include <string>

#include "model/config.h"
#include "sweep/point.h"

namespace llm::sweep {

struct ClusterSpec {
  std::string name = "custom", device = "device";
  int64_t devices_per_node = 1;
  int64_t max_nodes = 0;                    // 0 = no limit
  std::string dtype = "bf16";               // compute dtype: bf16 | fp16 (mixed precision) | fp32
  double peak_tflops = 0;                   // dense, per device; 0 = measure (CPU: sgemm ceiling)
  double matmul_efficiency = 0.7;           // large-GEMM fraction of peak
  double matmul_half_tokens = 0;            // n_half of eff(n); 0 = constant efficiency
  double attention_efficiency = 0.5;        // fraction of peak for the (causal) attention products
  double memory_gib = 0;                    // per device
  double memory_bandwidth_gbs = 0;          // per device
  double memory_overhead_gib = 0;           // runtime / context per device
  double intra_node_bandwidth_gbs = 0;      // per device, one direction
  double intra_node_latency_us = 0;
  double inter_node_bandwidth_gbs = 0;      // per node, all NICs together
  double inter_node_latency_us = 0;
  double activation_bytes_per_hidden = 34;  // per token, layer and hidden unit (Megatron bf16: 34)
  bool flash_attention = true;              // false adds the 5 a s / h score/softmax term

  int64_t bytes_per_element() const;        // of activations: 4 for fp32, else 2
};

// Reads a cluster YAML file (keys as above with '-' for '_'); unknown keys and bad values are
// ConfigErrors naming file, line and key.
ClusterSpec load_cluster(const std::string& path);

// --- the named terms ---------------------------------------------------------------------------
// Bytes per parameter of weights, gradients and optimizer state as libllm's trainer holds them:
// f32 master weights and gradients in every precision and AdamW's two f32 moments (4 + 4 + 8),
// and in mixed precision the 16-bit copy the ops read beside the masters (6 + 4 + 8). (Megatron's
// and DeepSpeed's mixed-precision accounting is 2 + 2 + 12, the masters counted with the
// moments.)
struct StateBytes {
  double param, grad, optimizer;
};
StateBytes state_bytes_per_parameter(const std::string& dtype);
// Model-state bytes on one device holding `params` parameters, ZeRO stage 0-3 over `group` ranks:
// stage 1 shards the moments, and in mixed precision over 2 or more ranks the f32 masters (the
// 16-bit copy stays whole, and so do the `f32_op` elements' masters, the LayerNorms' the ops read
// in f32: 2 + 4/G bytes per parameter, Megatron's distributed optimizer); stage 2 also the
// gradients, which stay whole for the `resident` tensors (embeddings, final LayerNorm) and one
// working area of `layer` elements (two with --overlap-grad-reduce); stage 3 also the weights
// (the shard in f32, the areas with their copy; two with --overlap-param-gather).
// Trainer::state_bytes() gives the same (tests/mpi/zero_test.cpp).
struct ModelStateMemory {
  double params = 0, grads = 0, optimizer = 0;
  double total() const { return params + grads + optimizer; }
};
ModelStateMemory model_state_memory(double params, const std::string& dtype, int64_t zero_stage, int64_t group,
                                    double resident = 0, double layer = 0, int grad_areas = 1, int param_areas = 1,
                                    double f32_op = 0);
// Activation bytes of one transformer layer for one micro-batch on one device (no recompute).
double layer_activation_bytes(const GPTConfig& m, int64_t micro_batch, int64_t seq, int64_t tp, int64_t ulysses,
                              bool megatron_sp, const ClusterSpec& c);
// What full recompute keeps per layer: the layer's input (sharded like the sequence).
double layer_checkpoint_bytes(const GPTConfig& m, int64_t micro_batch, int64_t seq, int64_t tp, int64_t ulysses,
                              bool megatron_sp, const ClusterSpec& c);
// Forward communication elements per device per layer (see the header comment).
double megatron_tp_elements_per_layer(double tokens, double hidden, int64_t tp);
double ulysses_elements_per_layer(double tokens, double hidden, int64_t sp);
// Idle fraction of a 1F1B pipeline: (p - 1) / (m + p - 1).
double pipeline_bubble_fraction(int64_t stages, int64_t micro_batches);
// Ring collectives, alpha-beta: seconds for `bytes` (per device) over `ranks`.
double all_reduce_seconds(double bytes, int64_t ranks, double bandwidth_gbs, double latency_us);
double all_gather_seconds(double bytes, int64_t ranks, double bandwidth_gbs, double latency_us);  // also reduce-scatter
// A collective over the contiguous elements [begin, end) of a buffer of `total` elements that
// `ranks` own in equal consecutive shards (ZeRO's all_gather_ranges / reduce_scatter_ranges): one
// broadcast (or reduce) rooted at each owner, fused into one group. A ring carries an owner's part
// over every link but the one into the owner, so the busiest link moves the range less the
// smallest part any rank owns: a whole buffer costs an all-gather's (r-1)/r of it, a range some
// rank owns nothing of (a layer, unless it spans every shard) all of it.
double owner_ranges_seconds(double begin, double end, double total, int64_t ranks, double bytes_per_element,
                            double bandwidth_gbs, double latency_us);

// The data-parallel collectives of one iteration on one pipeline stage as libllm's trainer issues
// them, against that stage's compute, on two streams: compute, and communication in issue order
// (NCCL runs one communicator's operations in order; a blocking one holds both). Gradients are
// reduced in f32; parameters are gathered as `gather_bytes` per element (2 in mixed precision,
// the 16-bit copy: ZeRO-3's layer gathers, ZeRO-1/2's post-step gather of the sharded masters'
// copy, whose LayerNorm masters gathered beside it in f32 are left out), but ZeRO-3's resident
// tensors, gathered in f32.
//   ZeRO 0/1: all-reduce (ZeRO-1: reduce-scatter onto the owners) of the gradients after the
//     last backward (--overlap-grad-reduce: of buckets of whole layers, each started when backward
//     has finished its layers in the last micro-batch, the resident tensors after it); ZeRO-1
//     then all-gathers the updated shards.
//   ZeRO-2: every micro-batch, each layer's gradients reduced onto their owners after its
//     backward (overlapped: in flight while the next layer's runs, two working areas, so layer l
//     waits for layer l + 2's); the resident ones all-reduced after the last; the shards gathered.
//   ZeRO-3: every micro-batch, each layer gathered before its forward and again before its
//     backward (overlapped: the next layer's gather started as this one computes; a pass's first
//     layer waits for its own) and its gradients reduced as ZeRO-2; the resident tensors'
//     gradients all-reduced and their parameters gathered once per step.
//   ZeRO-1/2 with --overlap-param-gather: the gathers after the step go group by group (resident,
//     then the layers), in flight as the next iteration starts; the resident group is waited for
//     first, each layer before its forward in the first micro-batch.
// Compute per micro-batch: forward_rest (embedding, head) after the layers' forwards, then
// backward_rest (head) before the layers' backwards.
struct DataParallelPlan {
  int64_t zero_stage = 0, ranks = 1, micro_batches = 1, layers = 1;
  bool overlap = false;
  double resident = 0, per_layer = 0;  // elements on this rank's stage (TP-sharded)
  double bucket = 40e6;                // ZeRO 0/1 bucket elements with --overlap-grad-reduce
  double gather_bytes = 4;             // parameter gathers per element: 2 in mixed precision (the 16-bit copy)
  double forward_layer_s = 0, backward_layer_s = 0, forward_rest_s = 0, backward_rest_s = 0;
  double bandwidth_gbs = 1, latency_us = 0;
};
struct DataParallelTime {
  double collectives_s = 0;  // every collective's own duration, summed
  double exposed_s = 0;      // what they add to the stage's compute
  double bytes = 0;          // sent per device (ring collectives' average)
};
DataParallelTime data_parallel_time(const DataParallelPlan& plan);

// Forward FLOPs of one layer for one micro-batch (whole model, not per device): the matmuls,
// and the attention products as executed causally (half the dense 4 b s^2 h).
double layer_matmul_flops(const GPTConfig& m, int64_t micro_batch, int64_t seq);
double layer_causal_attention_flops(const GPTConfig& m, int64_t micro_batch, int64_t seq);

// --- the prediction ----------------------------------------------------------------------------
struct Prediction {
  std::string problem;  // non-empty: the point cannot run on this cluster (layout, size)
  int64_t micro_batches = 1;
  double bubble_fraction = 0;
  // seconds per iteration and its parts (stage parts are per micro-batch, slowest stage)
  double iteration_s = 0, stage_compute_s = 0, stage_memory_s = 0, stage_tp_s = 0, stage_sp_s = 0, stage_pp_s = 0;
  // dp_s: the data-parallel collectives; dp_exposed_s: the part the iteration waits for (all of
  // it, unless the point overlaps them with compute)
  double dp_s = 0, dp_exposed_s = 0, optimizer_s = 0;
  // per device
  double tflops_megatron = 0, tflops_model = 0, mfu = 0;
  double tokens_per_device_per_second = 0, samples_per_second = 0;
  // bytes per device (the most loaded pipeline stage)
  ModelStateMemory states;
  double activations = 0, logits = 0, workspace = 0, overhead = 0, total_memory = 0;
  bool fits = true;
  // communication bytes per device per iteration
  double tp_bytes = 0, sp_bytes = 0, pp_bytes = 0, dp_bytes = 0;
};

// `peak_tflops` overrides the cluster's when > 0 (the measured CPU ceiling).
Prediction predict(const SweepPoint& p, const GPTConfig& model, const ClusterSpec& c, double peak_tflops = 0);

// Largest sequence length (a multiple of `multiple`, within [lo, hi]) for which `fits(seq)`
// holds, by doubling from lo and then bisection; 0 when even lo does not fit. `fits` must be
// monotone (true below the boundary). Used with predictions and with real runs.
template <typename Fits>
int64_t find_max_fitting(int64_t lo, int64_t hi, int64_t multiple, Fits&& fits) {
  auto round_down = [&](int64_t v) { return v / multiple * multiple; };
  lo = (lo + multiple - 1) / multiple * multiple;
  hi = round_down(hi);
  if (lo > hi || !fits(lo)) return 0;
  int64_t good = lo, bad = 0;
  for (int64_t s = lo * 2; s <= hi; s *= 2) {  // doubling until the first failure
    if (!fits(round_down(s))) {
      bad = round_down(s);
      break;
    }
    good = round_down(s);
  }
  if (bad == 0) {
    if (good == hi || fits(hi)) return hi;
    bad = hi;
  }
  while (bad - good > multiple) {  // invariant: fits(good), !fits(bad)
    const int64_t mid = round_down(good + (bad - good) / 2);
    if (mid <= good) break;
    if (fits(mid)) good = mid; else bad = mid;
  }
  return good;
}

}  // namespace llm::sweep
