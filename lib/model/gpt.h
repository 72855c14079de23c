// GPT-2/GPT-3 decoder: token + learned position embeddings, pre-LayerNorm blocks
// (attention, GELU MLP), final LayerNorm, output projection tied to the token embedding.
// Parameter names follow Hugging Face's GPT-2 (wte, wpe, h.{i}.ln_1.weight, h.{i}.attn.c_attn.
// weight, ...) so conversion is a rename plus a transpose (our linear weights are [out, in]).
//
// Explicit forward/backward over a Backend; every activation a backward needs is owned here,
// sized for the last (B, T) seen.
#pragma once
#include <functional>
#include <memory>
#include <vector>

#include "backend/backend.h"
#include "comm/communicator.h"
#include "model/config.h"
#include "model/parameters.h"

namespace llm {

// Model parallelism inside one replica.
//  * Tensor parallelism (Megatron) over `group`: attention heads, the MLP's hidden units and the
//    vocabulary are split across the group (column-parallel c_attn and c_fc, row-parallel
//    c_proj's, vocab-parallel embedding and cross-entropy that never gathers the full logits).
//    With sequence_parallel (Megatron SP) the LayerNorm/residual regions hold only this rank's
//    1/tp of the B*T rows, with an all-gather before each column-parallel layer and a
//    reduce-scatter after each row-parallel one.
//  * Ulysses sequence parallelism (DeepSpeed) over `ulysses`: each rank holds T/sp consecutive
//    positions of every sequence; attention is preceded by an all-to-all from sequence shards to
//    head shards and followed by the reverse. Parameters are replicated across the group and
//    their gradients are partial sums (the trainer reduces them with the data-parallel ones).
//  * Pipeline parallelism over `pipeline`: rank s of the group is stage s and holds layers
//    [s*L/pp, (s+1)*L/pp); the first stage also the embeddings, the last the final LayerNorm and
//    a copy of the tied word embedding for the output projection (its gradient is summed with the
//    first stage's, reduce_tied_grads()). Stages exchange the residual stream ([rows, C], this
//    rank's rows under sequence parallelism) and its gradient; the trainer runs the schedule.
struct ModelParallel {
  Communicator* group = nullptr;  // tensor parallel; nullptr or a group of one: none
  bool sequence_parallel = false;
  Communicator* ulysses = nullptr;  // Ulysses sequence parallel; nullptr or one rank: none
  int rank() const { return group ? group->rank() : 0; }
  int size() const { return group ? group->size() : 1; }
  int sp_rank() const { return ulysses ? ulysses->rank() : 0; }
  int sp_size() const { return ulysses ? ulysses->size() : 1; }
  Communicator* pipeline = nullptr;  // pipeline parallel; nullptr or one rank: one stage
  int pp_rank() const { return pipeline ? pipeline->rank() : 0; }
  int pp_size() const { return pipeline ? pipeline->size() : 1; }
  // ZeRO storage: 2 keeps the layers' gradients in one working area, 3 the layers' parameters too
  // (ParameterSet::set_compact); the trainer fills and drains the area through the layer hooks.
  int zero_stage = 0;
  // Gradient working areas under ZeRO-2/3: 2 with --overlap-grad-reduce (a layer's reduction in
  // flight while the next layer's backward fills the other area).
  int zero_grad_areas = 1;
  // Parameter working areas under ZeRO-3: 2 with --overlap-param-gather (the next layer gathered
  // while this one computes).
  int zero_param_areas = 1;
  // ZeRO-1/2 in mixed precision with sharded masters (TrainArgs::shard_masters; the trainer keeps
  // its range of the f32 masters): bf16/f16 builds the model with the 16-bit copy in that type
  // and the LayerNorms' f32 masters only (ParameterSet::allocate_packed), never the whole f32
  // buffer, which would outgrow the run's steady state; f32: the usual model.
  DType sharded_masters = DType::f32;
  bool first_stage() const { return pp_rank() == 0; }
  bool last_stage() const { return pp_rank() == pp_size() - 1; }
};

// The parameters of `config` as tensor-parallel rank `rank` of `size` in pipeline stage
// `stage` of `stages` holds them (planned: offsets assigned, nothing allocated). Names and global
// shapes are the single-process ones.
ParameterSet gpt_parameters(const GPTConfig& config, int64_t max_pos, int rank, int size, bool sequence_parallel,
                            int stage = 0, int stages = 1);

// Keys and values of every layer for the tokens seen so far, for generation.
struct KVCache {
  int64_t batch = 0, max_len = 0, length = 0;  // length: positions filled
  std::vector<Tensor> k, v;                     // per layer [batch, max_len, C]
  int64_t bytes() const;
};

// A model that only runs forward (generation, evaluation): see GPT's second constructor.
struct InferenceOptions {
  DType precision = DType::f32;  // the weights' and activations' type (bf16/f16: Megatron's --bf16/--fp16)
};

class GPT {
 public:
  // seq_length sizes the position table when config.max_position_embeddings is 0.
  GPT(const GPTConfig& config, Backend& backend, uint64_t seed, int64_t seq_length, ModelParallel tp = {});
  // An inference model on one process: its weights in `precision` only (the LayerNorms' also in
  // f32), zeros until loaded (load_model_parameters), no gradients, and one block's activation
  // buffers shared by every layer, without backward scratch. About 2 bytes per parameter in
  // bf16 instead of 10. backward(), set_precision() to another type and the f32 view of a 16-bit
  // weight (parameters().param()) fail. config.max_position_embeddings sets the position table.
  GPT(const GPTConfig& config, Backend& backend, InferenceOptions inference);
  ~GPT();
  bool inference() const { return inference_; }

  const GPTConfig& config() const { return config_; }
  const ModelParallel& model_parallel() const { return tp_; }
  Backend& backend() { return backend_; }
  ParameterSet& parameters() { return params_; }
  const ParameterSet& parameters() const { return params_; }

  // tokens, targets: host or backend i32 [B, T]; targets < 0 are ignored. Returns the mean
  // loss over the non-ignored targets (computed in double). Under Ulysses sequence parallelism
  // they are this rank's [B, T/sp] positions and the loss is the mean over the whole sequences. Without targets only the logits
  // are computed (for generation).
  double forward(const Tensor& tokens, const Tensor& targets);
  // Training's forward: `loss_weight` is the one the backward() that follows will get. With a
  // logits chunk (set_logits_chunk) the output layer's backward then runs here, on each chunk
  // while its logits exist, so no chunk is recomputed; backward() checks it gets the same weight.
  // Without a chunk this is forward(tokens, targets).
  double forward(const Tensor& tokens, const Tensor& targets, float loss_weight);
  void forward_logits(const Tensor& tokens);
  // Gradients of (loss_weight * mean loss) accumulated into parameters().flat_grads().
  // Needs the forward() just before it (the logits buffer is turned into dlogits in place).
  // Under sequence parallelism the LayerNorm gradients are this rank's partial sums until
  // reduce_partial_grads().
  void backward(float loss_weight = 1.0f);
  // Sums the partial-gradient parameters (ParamSpec::partial_grad) over the tensor-parallel
  // group; call once per step after the last backward(). A no-op without them.
  void reduce_partial_grads();
  // Pipeline: sums the tied word embedding's gradient between the first and the last stage (both
  // must call it; other stages return at once). A no-op with one stage.
  void reduce_tied_grads();
  void zero_grad();

  // Pipeline stages (see ModelParallel). forward() on a stage other than the first reads its
  // input from stage_input() (sized for the [B, T] micro-batch given), and on a stage other than
  // the last leaves its output in stage_output() and returns 0. backward() on a stage other than
  // the last starts from the gradient written into stage_output_grad(); on a stage other than the
  // first it ends with d(input) in stage_input_grad(). Several micro-batches can be in flight:
  // select_micro_batch(k) switches to the k-th set of activation buffers (allocated on first use);
  // forward and backward of one micro-batch must run in the same set.
  const Tensor& stage_input(int64_t B, int64_t T);
  const Tensor& stage_output() const;
  const Tensor& stage_output_grad(int64_t B, int64_t T);
  const Tensor& stage_input_grad() const;
  void select_micro_batch(int k);
  // Activation sets allocated (1 without a pipeline schedule; at most stages - stage under 1F1B).
  int activation_sets() const;
  int first_layer() const { return first_layer_; }

  // Full activation recompute (Megatron's --recompute-granularity full): the blocks share one
  // set of activation buffers and keep only their outputs; backward re-runs each block's forward
  // just before its backward. Same ops in the same order, so the gradients are bit-identical.
  void set_recompute(bool on);
  // Called by backward() right after each block's gradients are complete, with the block's global
  // layer index (gradient buckets reduced while backward goes on). Empty: none.
  void set_grad_ready_hook(std::function<void(int layer)> hook) { grad_ready_ = std::move(hook); }
  // Called before a block's forward (also in generation) and before its backward (which may
  // first re-run its forward under recompute), with the global layer index: ZeRO-3 gathers the
  // layer's parameters into the working area there.
  void set_layer_hooks(std::function<void(int layer)> before_forward, std::function<void(int layer)> before_backward) {
    before_forward_ = std::move(before_forward);
    before_backward_ = std::move(before_backward);
  }
  bool recompute() const { return recompute_; }
  // The vocabulary projection and the cross-entropy of forward()/backward() a chunk of `tokens`
  // rows at a time (0: all B*T rows at once). Only one chunk's logits ([tokens, Vp/tp]) exist at
  // a time instead of [B*T, Vp/tp], the largest activation of a long sequence with a GPT-2
  // vocabulary. forward() with a loss weight runs the output layer's backward chunk by chunk as
  // it goes (no extra FLOPs); after forward() without one, backward() recomputes every chunk's
  // logits but the last (one more projection, 2*N*C*Vp/tp flops). Losses are the same; wte's
  // gradient sums the chunks' parts in turn. forward_logits() still computes every row. Under
  // TP each chunk's shard lse are combined before its backward (on the device with NCCL).
  void set_logits_chunk(int64_t tokens);
  int64_t logits_chunk() const { return logits_chunk_; }
  // Mixed precision (Megatron's --bf16/--fp16): bf16 or f16 activations and a copy of the weights
  // in that type for the ops (ParameterSet::set_compute_copy); parameters, their gradients and
  // the optimizer stay f32, as do LayerNorm parameters and statistics, log-sum-exps and losses.
  // Whoever changes the f32 parameters refreshes the copy (refresh_compute_weights, or
  // ParameterSet::refresh_compute for a range). f32: the plain model.
  void set_precision(DType compute);
  DType precision() const { return act_dtype_; }
  void refresh_compute_weights() { params_.refresh_compute(backend_); }
  // Sharded masters (the trainer's ZeRO-1/2 in mixed precision, which keeps its own range of the
  // f32 masters): ParameterSet::pack_masters, and the layers bound to the packed LayerNorms.
  void pack_masters() {
    params_.pack_masters(backend_);
    bind_blocks();
  }
  // Bytes of activation and scratch buffers currently allocated (for memory reports and tests).
  int64_t activation_bytes() const;
  // Of those, the logits buffers (every activation set's).
  int64_t logits_bytes() const;
  // Bytes of the parameter storage: f32 masters, gradients and the 16-bit copy, where present.
  int64_t parameter_bytes() const;

  // Generation. A cache for `batch` sequences of up to `max_len` positions (<= the position table).
  KVCache make_kv_cache(int64_t batch, int64_t max_len);
  // Runs tokens [B, Tn] at positions [cache.length, cache.length + Tn), appending their keys and
  // values to the cache, and returns the logits [B, Vp] of the last of them.
  const Tensor& forward_cached(const Tensor& tokens, KVCache& cache);

  // [B, T, Vp] logits of the last forward_logits() (or of a forward() without a loss weight
  // whose head ran in one chunk, before backward()); under tensor parallelism this rank's
  // vocabulary columns [B, T, Vp/tp]. Throws when the buffer does not hold them all.
  Tensor logits() const;
  // Per-token losses [B*T] of the last forward() (over the whole vocabulary under TP).
  const Tensor& losses() const;

 private:
  struct BlockActs;
  struct Block;
  struct Activations;
  struct Slot;
  void plan(int64_t seq_length);  // validation, layout, parameter plan, blocks (no allocation)
  void ensure_activations(int64_t B, int64_t T);
  // The losses and lse of forward() for the current (B, T), and a logits buffer of >= rows rows.
  void ensure_head_buffers(int64_t rows);
  int64_t head_chunk_rows() const;  // rows per chunk of the head for the current (B, T)
  const Tensor& head_input() const;  // the final LayerNorm's output, [B*T, C] (gathered under SP)
  Tensor target_rows(int64_t begin, int64_t rows) const;  // the targets of rows [begin, begin + rows)
  // d(loss_weight * mean loss)/d(a token's loss): loss_weight / the valid targets (0 with none).
  float loss_gradient(float loss_weight) const;
  // Logits of rows [begin, begin + rows) in the buffer's first rows (computed unless already there).
  Tensor head_logits(int64_t begin, int64_t rows);
  void bind_blocks();
  void run_forward(const Tensor& tokens);
  // The transformer blocks over acts_->encoded; with a cache, attention reads and extends it.
  const Tensor& run_blocks(KVCache* cache);
  void block_forward(size_t layer, const Tensor& x, KVCache* cache);
  void block_backward(size_t layer, const Tensor& x);
  // Tensor-parallel region edges (identities without TP): the full [N, C] input of a
  // column-parallel layer from this rank's rows, and this rank's rows of a row-parallel
  // layer's summed output (in place when not sequence parallel: `out` is `partial`).
  const Tensor& gather_rows(const Tensor& rows, const Tensor& full);
  void reduce_rows(const Tensor& out, const Tensor& partial);
  // Vocab-parallel loss: combines the shards' lse/losses of rows [begin, begin + rows) into
  // global ones (ce_lse, losses).
  void combine_vocab_shards(int64_t begin, int64_t rows);
  double forward_impl(const Tensor& tokens, const Tensor& targets, const float* loss_weight);
  // The output layer's backward on rows [begin, begin + rows): their logits (recomputed unless in
  // the buffer) -> dlogits, d(head input) rows and wte's gradient (+=).
  void head_backward(int64_t begin, int64_t rows, float dloss);
  // Ulysses: qkv [B, T/sp, 3C'] (sequence shard) <-> [B, T, 3C'/sp] (head shard), and the same
  // for the attention output [B, T/sp, C'] <-> [B, T, C'/sp]; `parts` is the row count per
  // position (3 for qkv, 1 for the output). to_heads=false runs the reverse exchange.
  // The all-to-all stages through send_buf and recv_buf (scratch that is free at the call).
  void ulysses_exchange(const Tensor& seq_shard, const Tensor& head_shard, int parts, bool to_heads,
                        const Tensor& send_buf, const Tensor& recv_buf);

  GPTConfig config_;
  Backend& backend_;
  ModelParallel tp_;
  int64_t vocab_begin_ = 0;  // first vocabulary row of this rank's wte shard
  int64_t max_pos_;
  ParameterSet params_;
  std::vector<std::unique_ptr<Block>> blocks_;
  std::unique_ptr<Activations> acts_;
  std::vector<Slot> slots_;  // the micro-batches' activation sets not selected now
  int slot_ = 0;
  int first_layer_ = 0;  // global index of blocks_[0]
  Tensor stage_output_;  // shared by the activation sets of a stage that is not the last
  Tensor last_hidden_, last_norm_, last_logits_;  // forward_cached's [B, C], [B, C], [B, Vp]
  int64_t valid_targets_ = 0;
  bool recompute_ = false;
  int64_t logits_chunk_ = 0;
  bool inference_ = false;
  DType act_dtype_ = DType::f32;
  std::function<void(int)> grad_ready_, before_forward_, before_backward_;
  bool have_loss_ = false;
};

}  // namespace llm
