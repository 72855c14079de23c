#include "model/gpt.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>

namespace llm {

// The activations one transformer block's backward needs, [B,T,*] (one set per micro-batch in
// flight under pipeline parallelism).
struct GPT::BlockActs {
  Tensor ln1, ln1_mean, ln1_rstd, qkv, atty, att_lse, attproj, residual2, ln2, ln2_mean, ln2_rstd, fch, fch_gelu,
      fcproj, residual3;
  // Ulysses: attention's input and output in head-shard form [B, T, 3C'/sp], [B, T, C'/sp]
  Tensor qkv_heads, atty_heads;
};

// One transformer block's parameters and (the selected micro-batch's) activations.
struct GPT::Block : GPT::BlockActs {
  Tensor ln1_w, ln1_b, qkv_w, qkv_b, proj_w, proj_b, ln2_w, ln2_b, fc_w, fc_b, fcproj_w, fcproj_b;
  Tensor d_ln1_w, d_ln1_b, d_qkv_w, d_qkv_b, d_proj_w, d_proj_b, d_ln2_w, d_ln2_b, d_fc_w, d_fc_b,
      d_fcproj_w, d_fcproj_b;
};

struct GPT::Activations {
  int64_t B = 0, T = 0;
  Tensor tokens, targets;  // on the backend
  Tensor encoded, lnf, lnf_mean, lnf_rstd, losses, ce_lse;
  // [rows, Vl]: every row's logits, or one chunk's (GPT::set_logits_chunk). It holds the logits
  // of rows [logits_begin, logits_begin + logits_rows) of the last forward (0 rows: none).
  Tensor logits;
  int64_t logits_begin = 0, logits_rows = 0;
  // forward() with a loss weight ran the head's backward (dbuf and wte's gradient) with it
  bool head_backward_done = false;
  float head_backward_weight = 0;
  // backward scratch
  Tensor dresidual, dbuf, dqkv, dfch;
  // tensor/sequence parallel: [N, C] gathered rows, a row-parallel layer's partial sum, this
  // rank's rows of a gradient, and the final LayerNorm's gathered output (kept for backward)
  Tensor gathered, partial, drows, lnf_full;
  // Ulysses: exchange buffers and the attention gradients in head-shard form
  Tensor send, recv, dqkv_heads, datty_heads;
};

// A micro-batch's activation set while another one is selected.
struct GPT::Slot {
  std::unique_ptr<Activations> acts;
  std::vector<BlockActs> blocks;
  int64_t valid_targets = 0;
  bool have_loss = false;
};

ParameterSet gpt_parameters(const GPTConfig& config, int64_t max_pos, int rank, int size, bool sequence_parallel,
                            int stage, int stages) {
  const int64_t C = config.hidden_size, F = config.ffn(), L = config.num_layers;
  const int64_t Vp = config.padded_vocab_size();
  LLM_CHECK(C % size == 0 && F % size == 0 && config.num_heads % size == 0 && Vp % size == 0, "tensor parallel size ",
            size, " must divide the heads ", config.num_heads, ", hidden ", C, ", FFN ", F, " and padded vocabulary ", Vp);
  LLM_CHECK(stages >= 1 && stage >= 0 && stage < stages && L % stages == 0, "pipeline stage ", stage, " of ", stages,
            ": the ", L, " layers must split evenly");
  const int64_t Cl = C / size, Fl = F / size, Vl = Vp / size;
  const bool first = stage == 0, last = stage == stages - 1;
  const int64_t l_begin = L / stages * stage, l_end = L / stages * (stage + 1);
  // Megatron's (GPT-2's) initialisation: N(0, --init-method-std 0.02), residual output
  // projections scaled by 1/sqrt(2L).
  const float std = config.init_std, proj_std = config.init_std / std::sqrt(2.0f * static_cast<float>(L));
  ParameterSet ps;
  const bool tp = size > 1;
  // Rows [rank*n, (rank+1)*n) of a dimension, or columns of a matrix (dim 1).
  auto split = [&](const std::string& name, const Shape& global, int dim, Init init, float sd, bool decay) {
    if (!tp) return ps.add(name, global, init, sd, decay);
    Shape local = global;
    local[dim] /= size;
    ps.add_sharded(name, local, global, dim, {ShardChunk{rank * local[dim], 0, local[dim]}}, init, sd, decay);
  };
  // c_attn: this rank's heads of each of q, k and v.
  auto qkv = [&](const std::string& name, const Shape& global, Init init, float sd, bool decay) {
    if (!tp) return ps.add(name, global, init, sd, decay);
    Shape local = global;
    local[0] = 3 * Cl;
    ps.add_sharded(name, local, global, 0,
                   {ShardChunk{rank * Cl, 0, Cl}, ShardChunk{C + rank * Cl, Cl, Cl}, ShardChunk{2 * C + rank * Cl, 2 * Cl, Cl}},
                   init, sd, decay);
  };
  // The word embedding is tied to the output projection: the first stage looks tokens up in it,
  // the last projects onto it (a copy on another rank when they differ).
  if (first || last) split("wte", {Vp, C}, 0, Init::normal, std, true);
  if (!first && last) ps.set_tied_copy("wte");
  if (first) ps.add("wpe", {max_pos, C}, Init::normal, std, true);
  std::vector<std::string> norms;
  for (int64_t l = l_begin; l < l_end; ++l) {
    const std::string p = "h." + std::to_string(l) + ".";
    ps.begin_group(static_cast<int>(l));
    ps.add(p + "ln_1.weight", {C}, Init::ones, 0, false);
    ps.add(p + "ln_1.bias", {C}, Init::zeros, 0, false);
    qkv(p + "attn.c_attn.weight", {3 * C, C}, Init::normal, std, true);
    qkv(p + "attn.c_attn.bias", {3 * C}, Init::zeros, 0, false);
    split(p + "attn.c_proj.weight", {C, C}, 1, Init::normal, proj_std, true);
    ps.add(p + "attn.c_proj.bias", {C}, Init::zeros, 0, false);
    ps.add(p + "ln_2.weight", {C}, Init::ones, 0, false);
    ps.add(p + "ln_2.bias", {C}, Init::zeros, 0, false);
    split(p + "mlp.c_fc.weight", {F, C}, 0, Init::normal, std, true);
    split(p + "mlp.c_fc.bias", {F}, 0, Init::zeros, 0, false);
    split(p + "mlp.c_proj.weight", {C, F}, 1, Init::normal, proj_std, true);
    ps.add(p + "mlp.c_proj.bias", {C}, Init::zeros, 0, false);
    for (const char* n : {"ln_1.weight", "ln_1.bias", "ln_2.weight", "ln_2.bias"}) norms.push_back(p + n);
  }
  ps.begin_group(-1);
  if (last) {
    ps.add("ln_f.weight", {C}, Init::ones, 0, false);
    ps.add("ln_f.bias", {C}, Init::zeros, 0, false);
    ps.set_f32_op("ln_f.weight");
    ps.set_f32_op("ln_f.bias");
  }
  for (const std::string& n : norms) ps.set_f32_op(n);  // the LayerNorm ops take f32 parameters
  if (tp && sequence_parallel) {
    if (last) {
      norms.push_back("ln_f.weight");
      norms.push_back("ln_f.bias");
    }
    for (const std::string& n : norms) ps.set_partial_grad(n);
  }
  ps.plan();
  (void)Fl, (void)Vl;
  return ps;
}

GPT::GPT(const GPTConfig& config, Backend& backend, uint64_t seed, int64_t seq_length, ModelParallel tp)
    : config_(config), backend_(backend), tp_(tp) {
  plan(seq_length);
  if (tp_.sharded_masters != DType::f32) {
    params_.allocate_packed(backend_, seed, tp_.sharded_masters);
    act_dtype_ = tp_.sharded_masters;
  } else {
    params_.allocate(backend_, seed);
  }
  bind_blocks();
}

GPT::GPT(const GPTConfig& config, Backend& backend, InferenceOptions inference)
    : config_(config), backend_(backend), inference_(true) {
  LLM_CHECK(config.max_position_embeddings > 0, "an inference model needs max_position_embeddings (its context)");
  plan(config.max_position_embeddings);
  params_.allocate_inference(backend_, inference.precision);
  act_dtype_ = inference.precision;
  bind_blocks();
}

void GPT::plan(int64_t seq_length) {
  if (tp_.size() == 1) tp_.sequence_parallel = false;
  LLM_CHECK(!(tp_.sequence_parallel && tp_.sp_size() > 1),
            "Megatron sequence parallelism and Ulysses sequence parallelism exclude each other");
  LLM_CHECK(config_.num_heads % (tp_.size() * tp_.sp_size()) == 0, "attention heads ", config_.num_heads,
            " are not divisible by tensor parallel ", tp_.size(), " x Ulysses ", tp_.sp_size());
  config_.tensor_parallel = tp_.size();
  config_.validate(seq_length);
  max_pos_ = config_.max_position_embeddings ? config_.max_position_embeddings : seq_length;
  config_.max_position_embeddings = max_pos_;
  const int64_t L = config_.num_layers;
  vocab_begin_ = tp_.rank() * (config_.padded_vocab_size() / tp_.size());
  LLM_CHECK(L % tp_.pp_size() == 0, "--num-layers ", L, " is not divisible by pipeline parallel ", tp_.pp_size());
  first_layer_ = static_cast<int>(L / tp_.pp_size() * tp_.pp_rank());
  params_ = gpt_parameters(config_, max_pos_, tp_.rank(), tp_.size(), tp_.sequence_parallel, tp_.pp_rank(),
                           tp_.pp_size());
  params_.set_compact(tp_.zero_stage >= 3, tp_.zero_stage >= 2, tp_.zero_stage >= 2 ? tp_.zero_grad_areas : 1,
                      tp_.zero_stage >= 3 ? tp_.zero_param_areas : 1);
  for (int64_t l = first_layer_; l < first_layer_ + L / tp_.pp_size(); ++l) blocks_.push_back(std::make_unique<Block>());
  acts_ = std::make_unique<Activations>();
}

void GPT::bind_blocks() {
  for (size_t i = 0; i < blocks_.size(); ++i) {
    const std::string p = "h." + std::to_string(first_layer_ + static_cast<int64_t>(i)) + ".";
    Block& b = *blocks_[i];
    // LayerNorm parameters are f32 in every precision; the linear layers compute with the copy.
    auto bind = [&](Tensor& w, Tensor& g, const std::string& n, bool compute) {
      w = compute ? params_.compute_param(p + n) : params_.param(p + n);
      g = params_.has_grads() ? params_.grad(p + n) : Tensor{};
    };
    bind(b.ln1_w, b.d_ln1_w, "ln_1.weight", false);
    bind(b.ln1_b, b.d_ln1_b, "ln_1.bias", false);
    bind(b.qkv_w, b.d_qkv_w, "attn.c_attn.weight", true);
    bind(b.qkv_b, b.d_qkv_b, "attn.c_attn.bias", true);
    bind(b.proj_w, b.d_proj_w, "attn.c_proj.weight", true);
    bind(b.proj_b, b.d_proj_b, "attn.c_proj.bias", true);
    bind(b.ln2_w, b.d_ln2_w, "ln_2.weight", false);
    bind(b.ln2_b, b.d_ln2_b, "ln_2.bias", false);
    bind(b.fc_w, b.d_fc_w, "mlp.c_fc.weight", true);
    bind(b.fc_b, b.d_fc_b, "mlp.c_fc.bias", true);
    bind(b.fcproj_w, b.d_fcproj_w, "mlp.c_proj.weight", true);
    bind(b.fcproj_b, b.d_fcproj_b, "mlp.c_proj.bias", true);
  }
}

void GPT::set_precision(DType compute) {
  LLM_CHECK(is_float(compute),
            "model precision: f32, bf16 or f16, not ", dtype_name(compute));
  if (compute == act_dtype_) return;
  params_.set_compute_copy(backend_, compute);
  act_dtype_ = compute;
  bind_blocks();
  // Re-plan every activation set in the new type on the next forward.
  acts_ = std::make_unique<Activations>();
  slots_.clear();
  slot_ = 0;
  stage_output_ = last_hidden_ = last_norm_ = last_logits_ = Tensor{};
  have_loss_ = false;
}

GPT::~GPT() = default;

void GPT::select_micro_batch(int k) {
  LLM_CHECK(k >= 0, "micro-batch slot ", k);
  if (k == slot_) return;
  if (slots_.size() <= static_cast<size_t>(std::max(k, slot_))) slots_.resize(static_cast<size_t>(std::max(k, slot_)) + 1);
  // Park the selected set, then bring in k's (empty on first use: ensure_activations allocates).
  Slot& out = slots_[static_cast<size_t>(slot_)];
  out.acts = std::move(acts_);
  out.blocks.resize(blocks_.size());
  for (size_t l = 0; l < blocks_.size(); ++l) out.blocks[l] = static_cast<BlockActs&>(*blocks_[l]);
  out.valid_targets = valid_targets_;
  out.have_loss = have_loss_;
  Slot& in = slots_[static_cast<size_t>(k)];
  acts_ = in.acts ? std::move(in.acts) : std::make_unique<Activations>();
  in.blocks.resize(blocks_.size());
  for (size_t l = 0; l < blocks_.size(); ++l) static_cast<BlockActs&>(*blocks_[l]) = std::move(in.blocks[l]);
  in.blocks.clear();
  valid_targets_ = in.valid_targets;
  have_loss_ = in.have_loss;
  slot_ = k;
}

int GPT::activation_sets() const {
  int n = acts_->B > 0 ? 1 : 0;
  for (const Slot& s : slots_) n += s.acts && s.acts->B > 0 ? 1 : 0;
  return n;
}

const Tensor& GPT::stage_input(int64_t B, int64_t T) {
  LLM_CHECK(!tp_.first_stage(), "stage_input(): the first pipeline stage embeds its tokens");
  ensure_activations(B, T);
  return acts_->encoded;
}

const Tensor& GPT::stage_output() const {
  LLM_CHECK(!tp_.last_stage() && !blocks_.empty(), "stage_output(): the last pipeline stage ends in the loss");
  return blocks_.back()->residual3;
}

const Tensor& GPT::stage_output_grad(int64_t B, int64_t T) {
  LLM_CHECK(!tp_.last_stage(), "stage_output_grad(): the last pipeline stage starts backward from the loss");
  ensure_activations(B, T);
  return acts_->dresidual;
}

const Tensor& GPT::stage_input_grad() const {
  LLM_CHECK(!tp_.first_stage(), "stage_input_grad(): the first pipeline stage ends in the embedding");
  return acts_->dresidual;
}

void GPT::reduce_tied_grads() {
  if (tp_.pp_size() == 1 || !(tp_.first_stage() || tp_.last_stage())) return;
  // Both ends hold the same wte; each adds the other's gradient (commutative: bit-identical).
  const Tensor g = params_.grad("wte");
  const bool host = g.device().is_cpu();
  Tensor mine = host ? g : backend_.download(g);
  Tensor other = Tensor::empty(mine.shape());
  const int peer = tp_.first_stage() ? tp_.pp_size() - 1 : 0;
  tp_.pipeline->send_recv(mine, peer, 3, other, peer, 3);
  float* pm = mine.data<float>();
  const float* po = other.data<float>();
  for (int64_t i = 0, n = mine.numel(); i < n; ++i) pm[i] += po[i];
  if (!host) backend_.copy(g, mine);
}

void GPT::ensure_activations(int64_t B, int64_t T) {
  const int64_t S = tp_.sp_size();  // Ulysses: T is this rank's share of T * S positions
  LLM_CHECK(T >= 1 && T * S <= max_pos_, "sequence length ", T * S, " outside [1, ", max_pos_,
            "] (the position table)");
  Activations& a = *acts_;
  if (a.B == B && a.T == T) return;
  const int64_t P = tp_.size(), C = config_.hidden_size;
  const int64_t Cl = C / P, Fl = config_.ffn() / P, NHl = config_.num_heads / P / S, Cs = Cl / S;
  const int64_t N = B * T;
  const bool sp = tp_.sequence_parallel;
  LLM_CHECK(!sp || N % P == 0, "sequence parallel: ", N, " tokens per micro-batch are not divisible by ", P, " ranks");
  const int64_t R = sp ? N / P : N;  // rows of the residual stream held here
  Backend& be = backend_;
  const DType A = act_dtype_;  // activations; statistics, lse and losses stay f32
  a.B = B;
  a.T = T;
  a.tokens = be.empty({B, T}, DType::i32);
  a.targets = be.empty({B, T}, DType::i32);
  a.encoded = be.empty({R, C}, A);
  // Inference: the blocks' outputs alternate between two buffers (a block reads the previous
  // one's and writes the other), and everything else is block 0's (below), as under recompute.
  Tensor out_pair[2];
  if (inference_) out_pair[0] = be.empty({R, C}, A), out_pair[1] = be.empty({R, C}, A);
  for (size_t l = 0; l < blocks_.size(); ++l) {
    Block& b = *blocks_[l];
    if (inference_) {
      b.residual3 = out_pair[l % 2];
    } else if (l + 1 == blocks_.size() && tp_.pp_size() > 1 && !tp_.last_stage()) {
      // A pipeline stage's output is only sent on (its backward never reads it), so the
      // micro-batches in flight share one buffer instead of keeping one each (Megatron frees it).
      if (!stage_output_.defined() || stage_output_.shape() != Shape{R, C}) stage_output_ = be.empty({R, C}, A);
      b.residual3 = stage_output_;
    } else {
      b.residual3 = be.empty({R, C}, A);  // a block's output: kept (the next block's input)
    }
    if ((recompute_ || inference_) && l > 0) {
      // Full recompute: every block works in block 0's buffers and recomputes them in backward.
      const Block& first = *blocks_[0];
      b.ln1 = first.ln1, b.ln1_mean = first.ln1_mean, b.ln1_rstd = first.ln1_rstd, b.qkv = first.qkv;
      b.atty = first.atty, b.att_lse = first.att_lse, b.attproj = first.attproj, b.residual2 = first.residual2;
      b.ln2 = first.ln2, b.ln2_mean = first.ln2_mean, b.ln2_rstd = first.ln2_rstd, b.fch = first.fch;
      b.fch_gelu = first.fch_gelu, b.fcproj = first.fcproj;
      b.qkv_heads = first.qkv_heads, b.atty_heads = first.atty_heads;
      continue;
    }
    b.ln1 = be.empty({R, C}, A);
    b.ln1_mean = be.empty({R});
    b.ln1_rstd = be.empty({R});
    b.qkv = be.empty({B, T, 3 * Cl}, A);
    b.atty = be.empty({B, T, Cl}, A);
    b.att_lse = be.empty({B, NHl, T * S});
    if (S > 1) {
      b.qkv_heads = be.empty({B, T * S, 3 * Cs}, A);
      b.atty_heads = be.empty({B, T * S, Cs}, A);
    }
    b.attproj = be.empty({R, C}, A);
    b.residual2 = be.empty({R, C}, A);
    b.ln2 = be.empty({R, C}, A);
    b.ln2_mean = be.empty({R});
    b.ln2_rstd = be.empty({R});
    b.fch = be.empty({B, T, Fl}, A);
    b.fch_gelu = be.empty({B, T, Fl}, A);
    b.fcproj = be.empty({R, C}, A);
  }
  if (tp_.last_stage()) {  // the head's buffers: the last pipeline stage only
    a.lnf = be.empty({R, C}, A);
    a.lnf_mean = be.empty({R});
    a.lnf_rstd = be.empty({R});
  }
  a.logits = a.losses = a.ce_lse = Tensor{};
  a.logits_rows = 0;
  if (inference_) {  // no backward; the logits when forward() asks (forward_cached has its own)
    a.dresidual = a.dbuf = a.dqkv = a.dfch = Tensor{};
    return;  // one process: no tensor- or sequence-parallel buffers either
  }
  ensure_head_buffers(head_chunk_rows());
  a.dresidual = be.empty({R, C}, A);
  a.dbuf = be.empty({N, C}, A);
  a.dqkv = be.empty({B, T, 3 * Cl}, A);
  a.dfch = be.empty({B, T, Fl}, A);
  if (sp) {
    a.gathered = be.empty({N, C}, A);
    a.partial = be.empty({N, C}, A);
    a.drows = be.empty({R, C}, A);
    a.lnf_full = tp_.last_stage() ? be.empty({N, C}, A) : Tensor{};
  } else {
    a.gathered = a.partial = a.drows = a.lnf_full = Tensor{};
  }
  if (S > 1) {
    // The exchanges stage through scratch that is free at that moment (see ulysses_staging());
    // a separate send buffer only when the MLP's scratch is smaller than q,k,v (ffn < 3h).
    a.send = Fl >= 3 * Cl ? Tensor{} : be.empty({B * T * 3 * Cl}, A);
    a.recv = Tensor{};
    a.dqkv_heads = be.empty({B, T * S, 3 * Cs}, A);
    a.datty_heads = be.empty({B, T * S, Cs}, A);
  } else {
    a.send = a.recv = a.dqkv_heads = a.datty_heads = Tensor{};
  }
}

int64_t GPT::head_chunk_rows() const {
  const int64_t N = acts_->B * acts_->T;
  return logits_chunk_ > 0 ? std::min(N, logits_chunk_) : N;
}

void GPT::ensure_head_buffers(int64_t rows) {
  Activations& a = *acts_;
  if (!tp_.last_stage()) return;
  const int64_t N = a.B * a.T, Vl = config_.padded_vocab_size() / tp_.size();
  if (!a.losses.defined()) {
    a.losses = backend_.empty({N});
    a.ce_lse = backend_.empty({N});
  }
  if (a.logits.defined() && a.logits.size(0) == rows) return;
  a.logits = Tensor{};  // free the old one first (a chunked forward after forward_logits shrinks it)
  a.logits_rows = 0;
  a.logits = backend_.empty({rows, Vl}, act_dtype_);
}

Tensor GPT::target_rows(int64_t begin, int64_t rows) const {
  return acts_->targets.view({acts_->B * acts_->T}).slice(0, begin, rows);
}

float GPT::loss_gradient(float loss_weight) const {
  return valid_targets_ ? loss_weight / static_cast<float>(valid_targets_) : 0.0f;
}

const Tensor& GPT::head_input() const {
  return tp_.sequence_parallel ? acts_->lnf_full : acts_->lnf;
}

Tensor GPT::head_logits(int64_t begin, int64_t rows) {
  Activations& a = *acts_;
  const Tensor logits = a.logits.slice(0, 0, rows);
  if (a.logits_begin != begin || a.logits_rows != rows) {
    a.logits_rows = 0;  // nothing valid while it is rewritten
    backend_.linear_forward(logits, head_input().slice(0, begin, rows), params_.compute_param("wte"), Tensor{});
    a.logits_begin = begin;
    a.logits_rows = rows;
  }
  return logits;
}

void GPT::ulysses_exchange(const Tensor& seq, const Tensor& heads, int parts, bool to_heads, const Tensor& send_buf,
                           const Tensor& recv_buf) {
  const int64_t S = tp_.sp_size(), B = seq.size(0), Tl = seq.size(1), Cl = seq.size(2) / parts, Cs = Cl / S;
  const int64_t chunk = B * Tl * parts * Cs;  // elements per peer
  LLM_CHECK(send_buf.numel() >= chunk * S && recv_buf.numel() >= chunk * S, "Ulysses exchange: staging buffers of ",
            send_buf.numel(), " and ", recv_buf.numel(), " elements for ", chunk * S);
  LLM_CHECK(seq.dtype() == heads.dtype() && send_buf.dtype() == seq.dtype() && recv_buf.dtype() == seq.dtype(),
            "Ulysses exchange: activations and staging buffers must share one element type");
  const Tensor send = send_buf.flat(0, chunk * S), recv = recv_buf.flat(0, chunk * S);
  const Tensor sq = seq.flat(0, seq.numel()), hd = heads.flat(0, heads.numel());
  Backend& be = backend_;
  // Peer j's chunk is [B][Tl][parts][Cs]. In sequence form a position's `parts` rows of Cl hold
  // every head group (group j at column j * Cs): R = B * Tl * parts rows of Cs at pitch Cl. In head
  // form sequence chunk j of batch b is one block of Tl * parts * Cs at (b * S + j) * Tl * parts * Cs.
  const int64_t R = B * Tl * parts, block = Tl * parts * Cs;
  auto seq_rows = [&](int64_t j) { return sq.flat(j * Cs, (R - 1) * Cl + Cs); };
  auto head_blocks = [&](int64_t j) { return hd.flat(j * block, (B - 1) * S * block + block); };
  auto peer = [&](const Tensor& buf, int64_t j) { return buf.flat(j * chunk, chunk); };
  for (int64_t j = 0; j < S; ++j) {
    if (to_heads)
      be.copy_rows(peer(send, j), Cs, seq_rows(j), Cl, R, Cs);
    else
      be.copy_rows(peer(send, j), block, head_blocks(j), S * block, B, block);
  }
  tp_.ulysses->all_to_all(recv, send);
  for (int64_t i = 0; i < S; ++i) {
    if (to_heads)
      be.copy_rows(head_blocks(i), S * block, peer(recv, i), block, B, block);
    else
      be.copy_rows(seq_rows(i), Cl, peer(recv, i), Cs, R, Cs);
  }
}

const Tensor& GPT::gather_rows(const Tensor& rows, const Tensor& full) {
  if (!tp_.sequence_parallel) return rows;
  tp_.group->all_gather(full, rows);
  return full;
}

void GPT::reduce_rows(const Tensor& out, const Tensor& partial) {
  if (tp_.size() == 1) return;
  if (tp_.sequence_parallel)
    tp_.group->reduce_scatter(out, partial);
  else
    tp_.group->all_reduce_sum(partial);  // out is partial
}

// `t` itself on the host, else a host copy of it.
static Tensor on_host(Backend& be, const Tensor& t) { return t.device().is_cpu() ? t : be.download(t); }

static void stage(Backend& be, const Tensor& dst, const Tensor& src, const char* what) {
  expect_shape(src, dst.shape(), what, DType::i32);
  if (src.device() == dst.device() && src.raw() == dst.raw()) return;
  if (src.device().is_cpu() || src.device() == dst.device()) {
    if (src.device().is_cpu() && dst.device().is_cpu())
      dst.copy_from(src);
    else
      be.copy(dst, src);
  } else {
    LLM_FAIL(what, ": tensor on ", src.device().str(), " cannot feed a model on ", dst.device().str());
  }
}

// Token ids from the host must name a row of the real vocabulary: the backend's own check is against
// the padded table, whose rows past vocab_size no id should reach (they would train on them).
static void check_token_ids(const Tensor& tokens, int64_t vocab_size) {
  if (!tokens.device().is_cpu() || tokens.dtype() != DType::i32) return;
  const Tensor h = tokens.is_contiguous() ? tokens : tokens.clone();
  const int32_t* id = h.data<int32_t>();
  for (int64_t i = 0; i < h.numel(); ++i)
    if (id[i] < 0 || id[i] >= vocab_size)
      throw Error(detail::concat("tokens: id ", id[i], " at [", i / h.size(1), ", ", i % h.size(1),
                                 "] outside the vocabulary [0, ", vocab_size, ")"));
}

void GPT::run_forward(const Tensor& tokens) {
  LLM_CHECK(tokens.dim() == 2, "tokens must be [B, T], got ", shape_str(tokens.shape()));
  check_token_ids(tokens, config_.vocab_size);
  ensure_activations(tokens.size(0), tokens.size(1));
  Activations& a = *acts_;
  Backend& be = backend_;
  stage(be, a.tokens, tokens, "tokens");
  if (tp_.first_stage()) {
    // Vocab-parallel embedding: each rank looks up its rows (one rank adds the positions), summed
    // over the group (reduce-scattered to row shards under sequence parallelism). Later pipeline
    // stages find their input in a.encoded (stage_input()).
    const bool sp = tp_.sequence_parallel;
    const Tensor& emb = sp ? a.partial : a.encoded;
    const Tensor wpe = params_.compute_param("wpe").slice(0, tp_.sp_rank() * a.T, a.T);  // Ulysses: this rank's positions
    be.embedding_forward(emb.view({a.B, a.T, config_.hidden_size}), a.tokens, params_.compute_param("wte"),
                         tp_.rank() == 0 ? wpe : Tensor{}, vocab_begin_, config_.padded_vocab_size());
    reduce_rows(a.encoded, emb);
  }
  a.logits_rows = 0;  // the logits buffer holds nothing of this forward yet
  const Tensor& x = run_blocks(nullptr);
  if (!tp_.last_stage()) return;
  // The final LayerNorm; the vocabulary projection is the caller's (whole, or in chunks).
  be.layernorm_forward(a.lnf, a.lnf_mean, a.lnf_rstd, x, params_.param("ln_f.weight"),
                       params_.param("ln_f.bias"), config_.layernorm_eps);
  gather_rows(a.lnf, a.lnf_full);
}

void GPT::block_forward(size_t layer, const Tensor& x, KVCache* cache) {
  Block& b = *blocks_[layer];
  Activations& a = *acts_;
  Backend& be = backend_;
  const float eps = config_.layernorm_eps;
  const int nh = static_cast<int>(config_.num_heads / tp_.size() / tp_.sp_size());
  const bool sp = tp_.sequence_parallel, lead = tp_.rank() == 0;
  const int64_t N = b.qkv.numel() / b.qkv.size(-1);
  // Row-parallel layers add their bias once (on the group's first rank) before the sum.
  auto row_bias = [&](const Tensor& bias) { return lead ? bias : Tensor{}; };
  be.layernorm_forward(b.ln1, b.ln1_mean, b.ln1_rstd, x, b.ln1_w, b.ln1_b, eps);
  be.linear_forward(b.qkv.view({N, -1}), gather_rows(b.ln1, a.gathered), b.qkv_w, b.qkv_b);
  if (cache) {
    be.attention_kv_forward(b.atty, b.qkv, cache->k[layer], cache->v[layer], cache->length, nh);
  } else if (tp_.sp_size() > 1) {
    // Staging: the backward scratch (MLP hidden gradient, q,k,v gradient) is free in forward.
    const Tensor& send = a.send.defined() ? a.send : a.dfch;
    ulysses_exchange(b.qkv, b.qkv_heads, 3, true, send, a.dqkv);
    be.attention_forward(b.atty_heads, b.att_lse, b.qkv_heads, nh);
    ulysses_exchange(b.atty, b.atty_heads, 1, false, send, a.dqkv);
  } else {
    be.attention_forward(b.atty, b.att_lse, b.qkv, nh);
  }
  const Tensor& attp = sp ? a.partial : b.attproj;
  be.linear_forward(attp, b.atty.view({N, -1}), b.proj_w, row_bias(b.proj_b));
  reduce_rows(b.attproj, attp);
  be.residual_forward(b.residual2, x, b.attproj);
  be.layernorm_forward(b.ln2, b.ln2_mean, b.ln2_rstd, b.residual2, b.ln2_w, b.ln2_b, eps);
  be.linear_gelu_forward(b.fch_gelu.view({N, -1}), b.fch.view({N, -1}), gather_rows(b.ln2, a.gathered), b.fc_w, b.fc_b);
  const Tensor& fcp = sp ? a.partial : b.fcproj;
  be.linear_forward(fcp, b.fch_gelu.view({N, -1}), b.fcproj_w, row_bias(b.fcproj_b));
  reduce_rows(b.fcproj, fcp);
  be.residual_forward(b.residual3, b.residual2, b.fcproj);
}

const Tensor& GPT::run_blocks(KVCache* cache) {
  const Tensor* x = &acts_->encoded;
  for (size_t l = 0; l < blocks_.size(); ++l) {
    if (before_forward_) before_forward_(first_layer_ + static_cast<int>(l));
    block_forward(l, *x, cache);
    x = &blocks_[l]->residual3;
  }
  return *x;
}

void GPT::set_logits_chunk(int64_t tokens) {
  LLM_CHECK(tokens >= 0, "logits chunk of ", tokens, " tokens: must be >= 0 (0: every row at once)");
  if (tokens == logits_chunk_) return;
  logits_chunk_ = tokens;
  // Re-size the logits buffers on the next forward or backward, the parked micro-batches' too.
  acts_->logits = Tensor{};
  acts_->logits_rows = 0;
  for (Slot& s : slots_)
    if (s.acts) s.acts->logits = Tensor{}, s.acts->logits_rows = 0;
}

void GPT::set_recompute(bool on) {
  if (on == recompute_) return;
  // The buffers are re-planned: a forward's saved activations would be lost before its backward.
  LLM_CHECK(!have_loss_, "GPT::set_recompute(", on ? "true" : "false",
            ") between forward() and backward(): the forward's activations would be lost");
  recompute_ = on;
  acts_->B = acts_->T = 0;  // re-plan the buffers on the next forward
  for (Slot& s : slots_)
    if (s.acts) s.acts->B = s.acts->T = 0;
}

int64_t GPT::activation_bytes() const {
  // Count each distinct storage once (recompute aliases the blocks' buffers).
  std::vector<const Storage*> seen;
  int64_t total = 0;
  auto add = [&](const Tensor& t) {
    if (!t.defined() || std::find(seen.begin(), seen.end(), t.storage().get()) != seen.end()) return;
    seen.push_back(t.storage().get());
    total += static_cast<int64_t>(t.storage()->nbytes);
  };
  auto add_set = [&](const Activations& a, const std::vector<const BlockActs*>& blocks) {
    for (const Tensor* t : {&a.tokens, &a.targets, &a.encoded, &a.lnf, &a.lnf_mean, &a.lnf_rstd, &a.logits, &a.losses,
                            &a.ce_lse, &a.dresidual, &a.dbuf, &a.dqkv, &a.dfch, &a.gathered, &a.partial, &a.drows,
                            &a.lnf_full, &a.send, &a.recv, &a.dqkv_heads, &a.datty_heads})
      add(*t);
    for (const BlockActs* bp : blocks)
      for (const Tensor* t : {&bp->ln1, &bp->ln1_mean, &bp->ln1_rstd, &bp->qkv, &bp->atty, &bp->att_lse, &bp->attproj,
                              &bp->residual2, &bp->ln2, &bp->ln2_mean, &bp->ln2_rstd, &bp->fch, &bp->fch_gelu,
                              &bp->fcproj, &bp->residual3, &bp->qkv_heads, &bp->atty_heads})
        add(*t);
  };
  std::vector<const BlockActs*> live;
  for (const auto& bp : blocks_) live.push_back(bp.get());
  add_set(*acts_, live);
  for (const Slot& sl : slots_) {  // micro-batches in flight (pipeline)
    if (!sl.acts) continue;
    std::vector<const BlockActs*> parked;
    for (const BlockActs& b : sl.blocks) parked.push_back(&b);
    add_set(*sl.acts, parked);
  }
  return total;
}

int64_t GPT::logits_bytes() const {
  int64_t total = acts_->logits.defined() ? static_cast<int64_t>(acts_->logits.nbytes()) : 0;
  for (const Slot& sl : slots_)
    if (sl.acts && sl.acts->logits.defined()) total += static_cast<int64_t>(sl.acts->logits.nbytes());
  return total;
}

int64_t GPT::parameter_bytes() const {
  int64_t total = 0;
  for (const Tensor* t : {&params_.flat_params(), &params_.flat_grads(), &params_.flat_compute()})
    if (t->defined()) total += static_cast<int64_t>(t->nbytes());
  return total;
}

int64_t KVCache::bytes() const {
  int64_t total = 0;
  for (const std::vector<Tensor>* side : {&k, &v})
    for (const Tensor& t : *side)
      if (t.defined()) total += static_cast<int64_t>(t.nbytes());
  return total;
}

KVCache GPT::make_kv_cache(int64_t batch, int64_t max_len) {
  LLM_CHECK(tp_.size() == 1 && tp_.sp_size() == 1 && tp_.pp_size() == 1,
            "generation with a KV cache runs on one process (tensor parallel ", tp_.size(), ", sequence parallel ",
            tp_.sp_size(), ", pipeline parallel ", tp_.pp_size(), ")");
  LLM_CHECK(batch >= 1 && max_len >= 1 && max_len <= max_pos_, "KV cache of ", max_len,
            " positions: must be in [1, ", max_pos_, "] (the position table)");
  KVCache c;
  c.batch = batch;
  c.max_len = max_len;
  for (size_t l = 0; l < blocks_.size(); ++l) {
    c.k.push_back(backend_.empty({batch, max_len, config_.hidden_size}, act_dtype_));
    c.v.push_back(backend_.empty({batch, max_len, config_.hidden_size}, act_dtype_));
  }
  return c;
}

const Tensor& GPT::forward_cached(const Tensor& tokens, KVCache& cache) {
  LLM_CHECK(tokens.dim() == 2 && tokens.size(0) == cache.batch, "forward_cached: tokens ", shape_str(tokens.shape()),
            " for a cache of batch ", cache.batch);
  bool cache_fits = cache.k.size() == blocks_.size() && cache.v.size() == blocks_.size();
  for (size_t l = 0; cache_fits && l < blocks_.size(); ++l)
    for (const Tensor* t : {&cache.k[l], &cache.v[l]})
      cache_fits = cache_fits && t->defined() && t->dtype() == act_dtype_ && t->device() == backend_.device() &&
                   t->shape() == Shape{cache.batch, cache.max_len, config_.hidden_size};
  LLM_CHECK(cache_fits && !cache.k.empty(),
            "forward_cached: a KV cache of ", cache.k.size(), " layers in ",
            cache.k.empty() ? std::string("-") : std::string(dtype_name(cache.k[0].dtype())), " for a model of ",
            blocks_.size(), " layers computing in ", dtype_name(act_dtype_),
            " (make the cache after set_precision, from this model)");
  const int64_t B = tokens.size(0), Tn = tokens.size(1), C = config_.hidden_size;
  if (cache.length + Tn > cache.max_len)
    throw ConfigError(detail::concat("context full: ", cache.length, " + ", Tn, " tokens exceed the ", cache.max_len,
                                     "-position context"));
  check_token_ids(tokens, config_.vocab_size);  // before anything is re-planned
  ensure_activations(B, Tn);
  Activations& a = *acts_;
  Backend& be = backend_;
  stage(be, a.tokens, tokens, "tokens");
  // Positions continue where the cache ends: the position table is offset, not the op.
  be.embedding_forward(a.encoded.view({B, Tn, C}), a.tokens, params_.compute_param("wte"),
                       params_.compute_param("wpe").slice(0, cache.length, Tn));
  const Tensor& x = run_blocks(&cache);
  cache.length += Tn;
  if (!last_hidden_.defined() || last_hidden_.size(0) != B) {
    last_hidden_ = be.empty({B, C}, act_dtype_);
    last_norm_ = be.empty({B, C}, act_dtype_);
    // fp32 whatever the compute type (linear writes either): the sampler's logits unrounded.
    last_logits_ = be.empty({B, config_.padded_vocab_size()}, DType::f32);
  }
  // Only the last position's logits are needed: LayerNorm and the vocabulary projection run on
  // those rows alone (the projection is the largest matmul of a decode step).
  const Tensor rows = x.view({B * Tn, C});
  for (int64_t b = 0; b < B; ++b) be.copy(last_hidden_.slice(0, b, 1), rows.slice(0, b * Tn + Tn - 1, 1));
  be.layernorm_forward(last_norm_, a.lnf_mean.slice(0, 0, B), a.lnf_rstd.slice(0, 0, B), last_hidden_,
                       params_.param("ln_f.weight"), params_.param("ln_f.bias"), config_.layernorm_eps);
  be.linear_forward(last_logits_, last_norm_, params_.compute_param("wte"), Tensor{});
  have_loss_ = false;
  return last_logits_;
}

void GPT::forward_logits(const Tensor& tokens) {
  LLM_CHECK(tp_.pp_size() == 1, "forward_logits() runs on one pipeline stage (pipeline parallel ", tp_.pp_size(), ")");
  run_forward(tokens);
  const int64_t N = acts_->B * acts_->T;
  ensure_head_buffers(N);
  head_logits(0, N);
  have_loss_ = false;
}

double GPT::forward(const Tensor& tokens, const Tensor& targets) { return forward_impl(tokens, targets, nullptr); }

double GPT::forward(const Tensor& tokens, const Tensor& targets, float loss_weight) {
  LLM_CHECK(!inference_, "GPT::forward() with a loss weight: an inference model has no gradients");
  return forward_impl(tokens, targets, &loss_weight);
}

double GPT::forward_impl(const Tensor& tokens, const Tensor& targets, const float* loss_weight) {
  run_forward(tokens);
  Activations& a = *acts_;
  a.head_backward_done = false;
  if (!tp_.last_stage()) {  // the output goes on to the next stage; backward starts from its gradient
    valid_targets_ = 0;
    have_loss_ = true;
    return 0.0;
  }
  stage(backend_, a.targets, targets, "targets");
  const int64_t N = a.B * a.T, chunk = head_chunk_rows();
  // Counted from the caller's host copy where there is one: the device copy's download would wait
  // for the whole forward before the head is launched.
  const Tensor host_targets =
      targets.device().is_cpu() && targets.is_contiguous() ? targets : on_host(backend_, a.targets);
  const int32_t* t = host_targets.data<int32_t>();
  valid_targets_ = 0;
  for (int64_t i = 0; i < N; ++i) valid_targets_ += t[i] >= 0 ? 1 : 0;
  if (tp_.sp_size() > 1)  // Ulysses: the mean over every rank's positions
    valid_targets_ = static_cast<int64_t>(tp_.ulysses->all_reduce_sum(static_cast<double>(valid_targets_)));
  // The vocabulary projection and the loss, a chunk of rows at a time: only the per-row lse and
  // losses of every row are kept (under TP each shard's, combined into global ones). Training
  // with chunks (a loss weight given) also runs the head's backward on each chunk while its
  // logits exist, so backward() recomputes none.
  const bool fused = loss_weight && logits_chunk_ > 0;
  const float dloss = fused ? loss_gradient(*loss_weight) : 0.0f;
  ensure_head_buffers(chunk);
  for (int64_t r = 0; r < N; r += chunk) {
    const int64_t n = std::min(chunk, N - r);
    const Tensor logits = head_logits(r, n);
    backend_.cross_entropy_forward(a.losses.slice(0, r, n), a.ce_lse.slice(0, r, n), logits, target_rows(r, n),
                                   config_.vocab_size, vocab_begin_);
    if (!fused) continue;
    if (tp_.size() > 1) combine_vocab_shards(r, n);
    head_backward(r, n, dloss);
  }
  if (tp_.size() > 1 && !fused) combine_vocab_shards(0, N);
  a.head_backward_done = fused;
  a.head_backward_weight = fused ? *loss_weight : 0.0f;
  const Tensor host_losses = on_host(backend_, a.losses);
  const float* l = host_losses.data<float>();
  double sum = 0.0;
  for (int64_t i = 0; i < N; ++i)
    if (t[i] >= 0) sum += l[i];
  if (tp_.sp_size() > 1) sum = tp_.ulysses->all_reduce_sum(sum);
  have_loss_ = true;
  return valid_targets_ ? sum / static_cast<double>(valid_targets_) : 0.0;
}

void GPT::head_backward(int64_t r, int64_t n, float dloss) {
  Activations& a = *acts_;
  Backend& be = backend_;
  const Tensor logits = head_logits(r, n);
  a.logits_rows = 0;  // turned into dlogits
  be.cross_entropy_backward(logits, logits, a.ce_lse.slice(0, r, n), target_rows(r, n), dloss, config_.vocab_size,
                            vocab_begin_);
  be.linear_backward(a.dbuf.slice(0, r, n), params_.grad("wte"), Tensor{}, logits, head_input().slice(0, r, n),
                     params_.compute_param("wte"));
}

void GPT::combine_vocab_shards(int64_t begin, int64_t N) {
  // Each shard has the log-sum-exp of its columns and (lse - target logit) where it holds the
  // target: gather both for rows [begin, begin + N) (N floats per rank, never the logits) and
  // combine them (Backend::cross_entropy_combine, in double). On the device when the group takes
  // device tensors (NCCL: no host sync), else on the host.
  Activations& a = *acts_;
  const int64_t P = tp_.size(), Vl = config_.padded_vocab_size() / P;
  const Tensor lse_rows = a.ce_lse.slice(0, begin, N), loss_rows = a.losses.slice(0, begin, N);
  const Tensor targets = target_rows(begin, N);
  if (tp_.group->takes(backend_.device())) {
    const Tensor lse_all = backend_.empty({P, N}), loss_all = backend_.empty({P, N});
    tp_.group->all_gather(lse_all, lse_rows);
    tp_.group->all_gather(loss_all, loss_rows);
    backend_.cross_entropy_combine(loss_rows, lse_rows, lse_all, loss_all, targets, Vl);
    return;
  }
  Backend& host = cpu_backend();
  const Tensor lse_all = Tensor::empty({P, N}), loss_all = Tensor::empty({P, N});
  tp_.group->all_gather(lse_all, on_host(backend_, lse_rows));
  tp_.group->all_gather(loss_all, on_host(backend_, loss_rows));
  const Tensor lse = Tensor::empty({N}), losses = Tensor::empty({N});
  host.cross_entropy_combine(losses, lse, lse_all, loss_all, on_host(backend_, targets), Vl);
  backend_.copy(lse_rows, lse);
  backend_.copy(loss_rows, losses);
}

void GPT::backward(float loss_weight) {
  LLM_CHECK(!inference_, "GPT::backward(): an inference model has no gradients");
  LLM_CHECK(have_loss_, "GPT::backward() needs forward() with targets first");
  have_loss_ = false;  // logits become dlogits below
  Activations& a = *acts_;
  Backend& be = backend_;
  const int64_t N = a.B * a.T;
  if (tp_.last_stage()) {
    const bool sp = tp_.sequence_parallel;
    const float dloss = loss_gradient(loss_weight);
    // The output layer's backward, unless forward() with the loss weight ran it: chunk by chunk,
    // last first (forward left its logits in the buffer; the others are recomputed), logits ->
    // dlogits in place (a.ce_lse is the global log-sum-exp), then the chunk's rows of d(head
    // input) and its share of wte's gradient (accumulated).
    if (a.head_backward_done) {
      LLM_CHECK(loss_weight == a.head_backward_weight, "GPT::backward(", loss_weight,
                "): forward() ran the output layer's backward with loss weight ", a.head_backward_weight);
    } else {
      const int64_t chunk = head_chunk_rows();
      ensure_head_buffers(chunk);  // set_logits_chunk() since forward() re-sized it: all recomputed
      for (int64_t r = (N - 1) / chunk * chunk; r >= 0; r -= chunk) head_backward(r, std::min(chunk, N - r), dloss);
    }
    a.head_backward_done = false;
    const Tensor& last = blocks_.back()->residual3;
    // d(final LayerNorm output): summed over the vocabulary shards
    const Tensor& dlnf = sp ? a.drows : a.dbuf;
    reduce_rows(dlnf, a.dbuf);
    be.zero(a.dresidual);
    be.layernorm_backward(a.dresidual, params_.grad("ln_f.weight"), params_.grad("ln_f.bias"), dlnf, last,
                          params_.param("ln_f.weight"), a.lnf_mean, a.lnf_rstd);
  }  // else the next stage's gradient was received into a.dresidual (stage_output_grad())
  // a.dresidual is now d(loss)/d(last block output). Walk the blocks backwards; the residual
  // stream's gradient stays in a.dresidual (LayerNorm backward accumulates into it) and each
  // branch starts from it directly, since d(x + f(x)) passes the same gradient to both.
  for (size_t li = blocks_.size(); li-- > 0;) {
    const Tensor& x = li == 0 ? a.encoded : blocks_[li - 1]->residual3;
    // Rebuild this block's activations (the last block's are still in the shared buffers).
    if (before_backward_) before_backward_(first_layer_ + static_cast<int>(li));
    if (recompute_ && li + 1 < blocks_.size()) block_forward(li, x, nullptr);
    block_backward(li, x);
    if (grad_ready_) grad_ready_(first_layer_ + static_cast<int>(li));
  }
  if (!tp_.first_stage()) return;  // a.dresidual is d(stage input): stage_input_grad()
  // The embedding's output gradient, on every rank in full (the backward of its reduction).
  const Tensor& dembed = gather_rows(a.dresidual, a.gathered);
  be.embedding_backward(params_.grad("wte"), params_.grad("wpe").slice(0, tp_.sp_rank() * a.T, a.T),
                        dembed.view({a.B, a.T, config_.hidden_size}), a.tokens, vocab_begin_);
}

void GPT::block_backward(size_t li, const Tensor& x) {
  Block& b = *blocks_[li];
  Activations& a = *acts_;
  Backend& be = backend_;
  const int nh = static_cast<int>(config_.num_heads / tp_.size() / tp_.sp_size());
  const bool sp = tp_.sequence_parallel;
  const int64_t N = a.B * a.T;
  const Tensor& drows = sp ? a.drows : a.dbuf;  // d(LayerNorm output) rows held here
  // MLP branch. Row-parallel c_proj (its output gradient is the gathered residual gradient) and
  // the GELU before it, in one call (fused on CUDA).
  be.linear_backward_gelu(a.dfch.view({N, -1}), b.d_fcproj_w, b.d_fcproj_b, gather_rows(a.dresidual, a.gathered),
                          b.fch_gelu.view({N, -1}), b.fcproj_w, b.fch.view({N, -1}));
  // Column-parallel c_fc: its input gradient is a partial sum over the group.
  be.linear_backward(a.dbuf, b.d_fc_w, b.d_fc_b, a.dfch.view({N, -1}), gather_rows(b.ln2, a.gathered), b.fc_w);
  reduce_rows(drows, a.dbuf);
  be.layernorm_backward(a.dresidual, b.d_ln2_w, b.d_ln2_b, drows, b.residual2, b.ln2_w, b.ln2_mean, b.ln2_rstd);
  // attention branch (the attention output's gradient borrows the front of a.dbuf)
  const Tensor datty = a.dbuf.flat(0, b.atty.numel()).view(b.atty.shape());
  be.linear_backward(datty.view({N, -1}), b.d_proj_w, b.d_proj_b, gather_rows(a.dresidual, a.gathered),
                     b.atty.view({N, -1}), b.proj_w);
  if (tp_.sp_size() > 1) {
    // Staging: the MLP's scratch is done with; q,k,v's gradient is not yet written for the first
    // exchange, and the head-shard q,k,v are dead once attention's backward has run (second).
    const Tensor& send = a.send.defined() ? a.send : a.dfch;
    ulysses_exchange(datty, a.datty_heads, 1, true, send, a.dqkv);
    be.attention_backward(a.dqkv_heads, a.datty_heads, b.qkv_heads, b.atty_heads, b.att_lse, nh);
    ulysses_exchange(a.dqkv, a.dqkv_heads, 3, false, send, b.qkv_heads);
  } else {
    be.attention_backward(a.dqkv, datty, b.qkv, b.atty, b.att_lse, nh);
  }
  be.linear_backward(a.dbuf, b.d_qkv_w, b.d_qkv_b, a.dqkv.view({N, -1}), gather_rows(b.ln1, a.gathered), b.qkv_w);
  reduce_rows(drows, a.dbuf);
  be.layernorm_backward(a.dresidual, b.d_ln1_w, b.d_ln1_b, drows, x, b.ln1_w, b.ln1_mean, b.ln1_rstd);
}

void GPT::reduce_partial_grads() {
  if (tp_.size() == 1) return;
  const Tensor& g = params_.flat_grads();
  // (With compact gradients the layers' partial sums are reduced by the trainer as each layer
  // finishes; the resident ones are here.)
  const bool compact = params_.compact_grads();
  for (auto [b, e] : params_.ranges_if([&](const ParamSpec& s) { return s.partial_grad && (!compact || s.group < 0); })) {
    const Tensor part = g.flat(b, e - b);
    if (tp_.group->takes(part.device())) {
      tp_.group->all_reduce_sum(part);
    } else {
      Tensor h = backend_.download(part);
      tp_.group->all_reduce_sum(h);
      backend_.copy(part, h);
    }
  }
}

void GPT::zero_grad() {
  LLM_CHECK(!inference_, "GPT::zero_grad(): an inference model has no gradients");
  backend_.zero(params_.flat_grads());
}

Tensor GPT::logits() const {
  const Activations& a = *acts_;
  const int64_t N = a.B * a.T;
  LLM_CHECK(a.logits.defined() && a.logits_begin == 0 && a.logits_rows == N,
            "GPT::logits(): the buffer holds no whole forward's logits (forward() with a logits chunk of ",
            logits_chunk_, " tokens keeps one chunk; forward_logits() computes them all)");
  return a.logits.slice(0, 0, N).view({a.B, a.T, -1});
}
const Tensor& GPT::losses() const { return acts_->losses; }

}  // namespace llm
