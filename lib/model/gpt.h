// GPT-2/GPT-3 decoder: token + learned position embeddings, pre-LayerNorm blocks
// (attention, GELU MLP), final LayerNorm, output projection tied to the token embedding.
// Parameter names follow Hugging Face's GPT-2 (wte, wpe, h.{i}.ln_1.weight, h.{i}.attn.c_attn.
// weight, ...) so conversion is a rename plus a transpose (our linear weights are [out, in]).
//
// Explicit forward/backward over a Backend; every activation a backward needs is owned here,
// sized for the last (B, T) seen.
#pragma once
#include <memory>
#include <vector>

#include "backend/backend.h"
#include "model/config.h"
#include "model/parameters.h"

namespace llm {

// Keys and values of every layer for the tokens seen so far, for generation.
struct KVCache {
  int64_t batch = 0, max_len = 0, length = 0;  // length: positions filled
  std::vector<Tensor> k, v;                     // per layer [batch, max_len, C]
};

class GPT {
 public:
  // seq_length sizes the position table when config.max_position_embeddings is 0.
  GPT(const GPTConfig& config, Backend& backend, uint64_t seed, int64_t seq_length);
  ~GPT();

  const GPTConfig& config() const { return config_; }
  Backend& backend() { return backend_; }
  ParameterSet& parameters() { return params_; }
  const ParameterSet& parameters() const { return params_; }

  // tokens, targets: host or backend i32 [B, T]; targets < 0 are ignored. Returns the mean
  // loss over the non-ignored targets (computed in double). Without targets only the logits
  // are computed (for generation).
  double forward(const Tensor& tokens, const Tensor& targets);
  void forward_logits(const Tensor& tokens);
  // Gradients of (loss_weight * mean loss) accumulated into parameters().flat_grads().
  // Needs the forward() just before it (the logits buffer is turned into dlogits in place).
  void backward(float loss_weight = 1.0f);
  void zero_grad();

  // Full activation recompute (Megatron's --recompute-granularity full): the blocks share one
  // set of activation buffers and keep only their outputs; backward re-runs each block's forward
  // just before its backward. Same ops in the same order, so the gradients are bit-identical.
  void set_recompute(bool on);
  bool recompute() const { return recompute_; }
  // Bytes of activation and scratch buffers currently allocated (for memory reports and tests).
  int64_t activation_bytes() const;

  // Generation. A cache for `batch` sequences of up to `max_len` positions (<= the position table).
  KVCache make_kv_cache(int64_t batch, int64_t max_len);
  // Runs tokens [B, Tn] at positions [cache.length, cache.length + Tn), appending their keys and
  // values to the cache, and returns the logits [B, Vp] of the last of them.
  const Tensor& forward_cached(const Tensor& tokens, KVCache& cache);

  // [B, T, Vp] logits of the last forward_logits() (or forward() before backward()).
  const Tensor& logits() const;
  // Per-token losses [B*T] of the last forward().
  const Tensor& losses() const;

 private:
  struct Block;
  struct Activations;
  void ensure_activations(int64_t B, int64_t T);
  void run_forward(const Tensor& tokens);
  // The transformer blocks over acts_->encoded; with a cache, attention reads and extends it.
  const Tensor& run_blocks(KVCache* cache);
  void block_forward(size_t layer, const Tensor& x, KVCache* cache);

  GPTConfig config_;
  Backend& backend_;
  int64_t max_pos_;
  ParameterSet params_;
  std::vector<std::unique_ptr<Block>> blocks_;
  std::unique_ptr<Activations> acts_;
  Tensor last_hidden_, last_norm_, last_logits_;  // forward_cached's [B, C], [B, C], [B, Vp]
  int64_t valid_targets_ = 0;
  bool recompute_ = false;
  bool have_loss_ = false;
};

}  // namespace llm
