// Communication volume per training iteration, per group, from the layout alone: what each
// collective of the data-, tensor- and sequence-parallel schemes moves (message sizes as
// collective benchmarks count them; see Communicator::Volume). Compared with the communicators'
// counters after an iteration, it checks the implementation against the analysis; it is also the
// communication term of a performance model.
//
// Per micro-batch of N = B*T tokens on a replica (T/sp per Ulysses rank), hidden size h, L layers:
//   TP (Megatron):  all-reduce N*h bytes*4 for the embedding, 2 per layer forward, 2 per layer
//                   backward and the final LayerNorm's input gradient: (4L + 2) N h;
//   TP + Megatron SP: the all-reduces become all-gathers (output N*h) and reduce-scatters (input
//                   N*h): forward 2L+1 of each ("4*N*h per layer"), backward 4L+1 all-gathers and
//                   2L+1 reduce-scatters, plus the LayerNorm gradients (4L+2) h once per step;
//   Ulysses:        per layer, forward and backward, all-to-alls of q,k,v and of the attention
//                   output: 4 * (N/sp) * h per direction ("4*N*h/P");
//   vocab-parallel loss: two all-gathers of tp*N floats (log-sum-exp and loss per token);
//   full recompute re-runs the forward collectives of every layer but the last;
//   data parallel (x Ulysses): one all-reduce of the rank's gradients per step; ZeRO-1 instead
//   reduce-scatters them onto their owners and all-gathers the updated parameters (with sharded
//   masters, in mixed precision: the 16-bit copy and the LayerNorms' f32 masters); ZeRO-2/3 reduce-scatter each layer's gradients as its backward
//   ends (every micro-batch), all-reduce the resident (embedding, final LayerNorm) gradients once;
//   ZeRO-2 then all-gathers the parameters, ZeRO-3 gathers each layer before its forward and again
//   before its backward and refreshes the resident parameters after the step (and, under Megatron
//   SP, reduces the layers' LayerNorm partial gradients per micro-batch);
//   pipeline: L counts the stage's layers; the embedding's collectives happen on the first stage
//   and the head's on the last; per micro-batch a stage sends its output rows (rows x h) forward
//   unless it is the last and its input gradient backward unless it is the first; the first and
//   last stages exchange the tied word embedding's gradient once per step.
#pragma once
#include <string>

#include "comm/communicator.h"
#include "model/config.h"

namespace llm {

struct CommVolumeInputs {
  GPTConfig model;
  int64_t micro_batch = 1, seq_length = 1, micro_batches = 1;  // per replica per step
  int64_t tp = 1, sp = 1, dp = 1;                               // sp: Ulysses
  int64_t pp = 1, stage = 0;                                    // pipeline stages, the rank's stage
  bool megatron_sp = false, recompute = false;
  int64_t zero_stage = 0;
  int64_t params_per_rank = 0;  // elements of this rank's flat parameter buffer
  int64_t resident_params = 0;  // of which embeddings and final LayerNorm (ZeRO-2/3)
  int64_t layer_params = 0;     // elements of one layer (ZeRO-2/3)
  int64_t layer_f32_op_params = 0;  // of which the LayerNorms': in mixed precision ZeRO-3 gathers
                                    // the layer's 16-bit copy and these f32 masters beside it
  // ZeRO-1/2 with sharded masters (Trainer::shards_masters()): the post-step gather moves the
  // 16-bit copy and the f32 masters of the rank's f32_op elements (f32_op_params of them)
  bool sharded_masters = false;
  int64_t f32_op_params = 0;
  int64_t activation_bytes = 4;  // element size of activations (2 under --bf16/--fp16); the
                                 // gradients, loss statistics and parameters are f32 in every
                                 // precision, but ZeRO-3's layer gathers in mixed precision
};

struct GroupVolumes {
  Communicator::Volume tp, sp, dp;  // dp: the gradient group (data parallel x Ulysses)
  Communicator::Volume pp;          // the pipeline group
};

GroupVolumes analytic_comm_volume(const CommVolumeInputs& in);

// One block, a line per group and collective with bytes measured / modelled; "MISMATCH" marks a
// difference.
std::string comm_volume_report(const GroupVolumes& measured, const GroupVolumes& model);

}  // namespace llm
