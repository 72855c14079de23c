#include "model/gpt.h"

#include <algorithm>
#include <cmath>
#include <string>

namespace llm {

// One transformer block's parameters and the activations its backward needs.
struct GPT::Block {
  Tensor ln1_w, ln1_b, qkv_w, qkv_b, proj_w, proj_b, ln2_w, ln2_b, fc_w, fc_b, fcproj_w, fcproj_b;
  Tensor d_ln1_w, d_ln1_b, d_qkv_w, d_qkv_b, d_proj_w, d_proj_b, d_ln2_w, d_ln2_b, d_fc_w, d_fc_b,
      d_fcproj_w, d_fcproj_b;
  // activations, [B,T,*]
  Tensor ln1, ln1_mean, ln1_rstd, qkv, atty, att_lse, attproj, residual2, ln2, ln2_mean, ln2_rstd,
      fch, fch_gelu, fcproj, residual3;
};

struct GPT::Activations {
  int64_t B = 0, T = 0;
  Tensor tokens, targets;  // on the backend
  Tensor encoded, lnf, lnf_mean, lnf_rstd, logits, losses, ce_lse;
  // backward scratch
  Tensor dresidual, dbuf, dqkv, dfch;
};

GPT::GPT(const GPTConfig& config, Backend& backend, uint64_t seed, int64_t seq_length)
    : config_(config), backend_(backend) {
  config_.validate(seq_length);
  max_pos_ = config_.max_position_embeddings ? config_.max_position_embeddings : seq_length;
  config_.max_position_embeddings = max_pos_;
  const int64_t C = config_.hidden_size, F = config_.ffn(), L = config_.num_layers;
  const int64_t Vp = config_.padded_vocab_size();
  // GPT-2 initialisation: N(0, 0.02), residual output projections scaled by 1/sqrt(2L).
  const float std = 0.02f, proj_std = 0.02f / std::sqrt(2.0f * static_cast<float>(L));
  params_.add("wte", {Vp, C}, Init::normal, std, true);
  params_.add("wpe", {max_pos_, C}, Init::normal, std, true);
  for (int64_t l = 0; l < L; ++l) {
    const std::string p = "h." + std::to_string(l) + ".";
    params_.add(p + "ln_1.weight", {C}, Init::ones, 0, false);
    params_.add(p + "ln_1.bias", {C}, Init::zeros, 0, false);
    params_.add(p + "attn.c_attn.weight", {3 * C, C}, Init::normal, std, true);
    params_.add(p + "attn.c_attn.bias", {3 * C}, Init::zeros, 0, false);
    params_.add(p + "attn.c_proj.weight", {C, C}, Init::normal, proj_std, true);
    params_.add(p + "attn.c_proj.bias", {C}, Init::zeros, 0, false);
    params_.add(p + "ln_2.weight", {C}, Init::ones, 0, false);
    params_.add(p + "ln_2.bias", {C}, Init::zeros, 0, false);
    params_.add(p + "mlp.c_fc.weight", {F, C}, Init::normal, std, true);
    params_.add(p + "mlp.c_fc.bias", {F}, Init::zeros, 0, false);
    params_.add(p + "mlp.c_proj.weight", {C, F}, Init::normal, proj_std, true);
    params_.add(p + "mlp.c_proj.bias", {C}, Init::zeros, 0, false);
  }
  params_.add("ln_f.weight", {C}, Init::ones, 0, false);
  params_.add("ln_f.bias", {C}, Init::zeros, 0, false);
  params_.allocate(backend_, seed);

  for (int64_t l = 0; l < L; ++l) {
    const std::string p = "h." + std::to_string(l) + ".";
    auto b = std::make_unique<Block>();
    auto bind = [&](Tensor& w, Tensor& g, const std::string& n) {
      w = params_.param(p + n);
      g = params_.grad(p + n);
    };
    bind(b->ln1_w, b->d_ln1_w, "ln_1.weight");
    bind(b->ln1_b, b->d_ln1_b, "ln_1.bias");
    bind(b->qkv_w, b->d_qkv_w, "attn.c_attn.weight");
    bind(b->qkv_b, b->d_qkv_b, "attn.c_attn.bias");
    bind(b->proj_w, b->d_proj_w, "attn.c_proj.weight");
    bind(b->proj_b, b->d_proj_b, "attn.c_proj.bias");
    bind(b->ln2_w, b->d_ln2_w, "ln_2.weight");
    bind(b->ln2_b, b->d_ln2_b, "ln_2.bias");
    bind(b->fc_w, b->d_fc_w, "mlp.c_fc.weight");
    bind(b->fc_b, b->d_fc_b, "mlp.c_fc.bias");
    bind(b->fcproj_w, b->d_fcproj_w, "mlp.c_proj.weight");
    bind(b->fcproj_b, b->d_fcproj_b, "mlp.c_proj.bias");
    blocks_.push_back(std::move(b));
  }
  acts_ = std::make_unique<Activations>();
}

GPT::~GPT() = default;

void GPT::ensure_activations(int64_t B, int64_t T) {
  LLM_CHECK(T >= 1 && T <= max_pos_, "sequence length ", T, " outside [1, ", max_pos_,
            "] (the position table)");
  Activations& a = *acts_;
  if (a.B == B && a.T == T) return;
  const int64_t C = config_.hidden_size, F = config_.ffn(), NH = config_.num_heads;
  const int64_t Vp = config_.padded_vocab_size(), N = B * T;
  Backend& be = backend_;
  a.B = B;
  a.T = T;
  a.tokens = be.empty({B, T}, DType::i32);
  a.targets = be.empty({B, T}, DType::i32);
  a.encoded = be.empty({B, T, C});
  for (size_t l = 0; l < blocks_.size(); ++l) {
    Block& b = *blocks_[l];
    b.residual3 = be.empty({B, T, C});  // a block's output: always kept (the next block's input)
    if (recompute_ && l > 0) {
      // Full recompute: every block works in block 0's buffers and recomputes them in backward.
      const Block& first = *blocks_[0];
      b.ln1 = first.ln1, b.ln1_mean = first.ln1_mean, b.ln1_rstd = first.ln1_rstd, b.qkv = first.qkv;
      b.atty = first.atty, b.att_lse = first.att_lse, b.attproj = first.attproj, b.residual2 = first.residual2;
      b.ln2 = first.ln2, b.ln2_mean = first.ln2_mean, b.ln2_rstd = first.ln2_rstd, b.fch = first.fch;
      b.fch_gelu = first.fch_gelu, b.fcproj = first.fcproj;
      continue;
    }
    b.ln1 = be.empty({B, T, C});
    b.ln1_mean = be.empty({N});
    b.ln1_rstd = be.empty({N});
    b.qkv = be.empty({B, T, 3 * C});
    b.atty = be.empty({B, T, C});
    b.att_lse = be.empty({B, NH, T});
    b.attproj = be.empty({B, T, C});
    b.residual2 = be.empty({B, T, C});
    b.ln2 = be.empty({B, T, C});
    b.ln2_mean = be.empty({N});
    b.ln2_rstd = be.empty({N});
    b.fch = be.empty({B, T, F});
    b.fch_gelu = be.empty({B, T, F});
    b.fcproj = be.empty({B, T, C});
  }
  a.lnf = be.empty({B, T, C});
  a.lnf_mean = be.empty({N});
  a.lnf_rstd = be.empty({N});
  a.logits = be.empty({B, T, Vp});
  a.losses = be.empty({N});
  a.ce_lse = be.empty({N});
  a.dresidual = be.empty({B, T, C});
  a.dbuf = be.empty({B, T, C});
  a.dqkv = be.empty({B, T, 3 * C});
  a.dfch = be.empty({B, T, F});
}

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

void GPT::run_forward(const Tensor& tokens) {
  LLM_CHECK(tokens.dim() == 2, "tokens must be [B, T], got ", shape_str(tokens.shape()));
  ensure_activations(tokens.size(0), tokens.size(1));
  Activations& a = *acts_;
  Backend& be = backend_;
  stage(be, a.tokens, tokens, "tokens");
  be.embedding_forward(a.encoded, a.tokens, params_.param("wte"), params_.param("wpe"));
  const Tensor& x = run_blocks(nullptr);
  const float eps = config_.layernorm_eps;
  be.layernorm_forward(a.lnf, a.lnf_mean, a.lnf_rstd, x, params_.param("ln_f.weight"),
                       params_.param("ln_f.bias"), eps);
  be.linear_forward(a.logits, a.lnf, params_.param("wte"), Tensor{});
}

void GPT::block_forward(size_t layer, const Tensor& x, KVCache* cache) {
  Block& b = *blocks_[layer];
  Backend& be = backend_;
  const float eps = config_.layernorm_eps;
  const int nh = static_cast<int>(config_.num_heads);
  be.layernorm_forward(b.ln1, b.ln1_mean, b.ln1_rstd, x, b.ln1_w, b.ln1_b, eps);
  be.linear_forward(b.qkv, b.ln1, b.qkv_w, b.qkv_b);
  if (cache)
    be.attention_kv_forward(b.atty, b.qkv, cache->k[layer], cache->v[layer], cache->length, nh);
  else
    be.attention_forward(b.atty, b.att_lse, b.qkv, nh);
  be.linear_forward(b.attproj, b.atty, b.proj_w, b.proj_b);
  be.residual_forward(b.residual2, x, b.attproj);
  be.layernorm_forward(b.ln2, b.ln2_mean, b.ln2_rstd, b.residual2, b.ln2_w, b.ln2_b, eps);
  be.linear_forward(b.fch, b.ln2, b.fc_w, b.fc_b);
  be.gelu_forward(b.fch_gelu, b.fch);
  be.linear_forward(b.fcproj, b.fch_gelu, b.fcproj_w, b.fcproj_b);
  be.residual_forward(b.residual3, b.residual2, b.fcproj);
}

const Tensor& GPT::run_blocks(KVCache* cache) {
  const Tensor* x = &acts_->encoded;
  for (size_t l = 0; l < blocks_.size(); ++l) {
    block_forward(l, *x, cache);
    x = &blocks_[l]->residual3;
  }
  return *x;
}

void GPT::set_recompute(bool on) {
  if (on == recompute_) return;
  recompute_ = on;
  acts_->B = acts_->T = 0;  // re-plan the buffers on the next forward
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
  const Activations& a = *acts_;
  for (const Tensor* t : {&a.tokens, &a.targets, &a.encoded, &a.lnf, &a.lnf_mean, &a.lnf_rstd, &a.logits, &a.losses,
                          &a.ce_lse, &a.dresidual, &a.dbuf, &a.dqkv, &a.dfch})
    add(*t);
  for (const auto& bp : blocks_)
    for (const Tensor* t : {&bp->ln1, &bp->ln1_mean, &bp->ln1_rstd, &bp->qkv, &bp->atty, &bp->att_lse, &bp->attproj,
                            &bp->residual2, &bp->ln2, &bp->ln2_mean, &bp->ln2_rstd, &bp->fch, &bp->fch_gelu,
                            &bp->fcproj, &bp->residual3})
      add(*t);
  return total;
}

KVCache GPT::make_kv_cache(int64_t batch, int64_t max_len) {
  LLM_CHECK(batch >= 1 && max_len >= 1 && max_len <= max_pos_, "KV cache of ", max_len,
            " positions: must be in [1, ", max_pos_, "] (the position table)");
  KVCache c;
  c.batch = batch;
  c.max_len = max_len;
  for (size_t l = 0; l < blocks_.size(); ++l) {
    c.k.push_back(backend_.empty({batch, max_len, config_.hidden_size}));
    c.v.push_back(backend_.empty({batch, max_len, config_.hidden_size}));
  }
  return c;
}

const Tensor& GPT::forward_cached(const Tensor& tokens, KVCache& cache) {
  LLM_CHECK(tokens.dim() == 2 && tokens.size(0) == cache.batch, "forward_cached: tokens ", shape_str(tokens.shape()),
            " for a cache of batch ", cache.batch);
  const int64_t B = tokens.size(0), Tn = tokens.size(1), C = config_.hidden_size;
  if (cache.length + Tn > cache.max_len)
    throw ConfigError(detail::concat("context full: ", cache.length, " + ", Tn, " tokens exceed the ", cache.max_len,
                                     "-position context"));
  ensure_activations(B, Tn);
  Activations& a = *acts_;
  Backend& be = backend_;
  stage(be, a.tokens, tokens, "tokens");
  // Positions continue where the cache ends: the position table is offset, not the op.
  be.embedding_forward(a.encoded, a.tokens, params_.param("wte"), params_.param("wpe").slice(0, cache.length, Tn));
  const Tensor& x = run_blocks(&cache);
  cache.length += Tn;
  if (!last_hidden_.defined() || last_hidden_.size(0) != B) {
    last_hidden_ = be.empty({B, C});
    last_norm_ = be.empty({B, C});
    last_logits_ = be.empty({B, config_.padded_vocab_size()});
  }
  // Only the last position's logits are needed: LayerNorm and the vocabulary projection run on
  // those rows alone (the projection is the largest matmul of a decode step).
  const Tensor rows = x.view({B * Tn, C});
  for (int64_t b = 0; b < B; ++b) be.copy(last_hidden_.slice(0, b, 1), rows.slice(0, b * Tn + Tn - 1, 1));
  be.layernorm_forward(last_norm_, a.lnf_mean.slice(0, 0, B), a.lnf_rstd.slice(0, 0, B), last_hidden_,
                       params_.param("ln_f.weight"), params_.param("ln_f.bias"), config_.layernorm_eps);
  be.linear_forward(last_logits_, last_norm_, params_.param("wte"), Tensor{});
  have_loss_ = false;
  return last_logits_;
}

void GPT::forward_logits(const Tensor& tokens) {
  run_forward(tokens);
  have_loss_ = false;
}

double GPT::forward(const Tensor& tokens, const Tensor& targets) {
  run_forward(tokens);
  Activations& a = *acts_;
  stage(backend_, a.targets, targets, "targets");
  backend_.cross_entropy_forward(a.losses, a.ce_lse, a.logits, a.targets, config_.vocab_size);
  Tensor host_targets = a.targets.device().is_cpu() ? a.targets : backend_.download(a.targets);
  Tensor host_losses = a.losses.device().is_cpu() ? a.losses : backend_.download(a.losses);
  const int32_t* t = host_targets.data<int32_t>();
  const float* l = host_losses.data<float>();
  double sum = 0.0;
  valid_targets_ = 0;
  for (int64_t i = 0, n = host_losses.numel(); i < n; ++i) {
    if (t[i] < 0) continue;
    sum += l[i];
    ++valid_targets_;
  }
  have_loss_ = true;
  return valid_targets_ ? sum / static_cast<double>(valid_targets_) : 0.0;
}

void GPT::backward(float loss_weight) {
  LLM_CHECK(have_loss_, "GPT::backward() needs forward() with targets first");
  have_loss_ = false;  // logits become dlogits below
  Activations& a = *acts_;
  Backend& be = backend_;
  const int nh = static_cast<int>(config_.num_heads);
  const float dloss = valid_targets_ ? loss_weight / static_cast<float>(valid_targets_) : 0.0f;
  // in place: logits -> dlogits
  be.cross_entropy_backward(a.logits, a.logits, a.ce_lse, a.targets, dloss, config_.vocab_size);
  const Tensor& last = blocks_.back()->residual3;
  be.linear_backward(a.dbuf, params_.grad("wte"), Tensor{}, a.logits, a.lnf, params_.param("wte"));
  be.zero(a.dresidual);
  be.layernorm_backward(a.dresidual, params_.grad("ln_f.weight"), params_.grad("ln_f.bias"), a.dbuf,
                        last, params_.param("ln_f.weight"), a.lnf_mean, a.lnf_rstd);
  // a.dresidual is now d(loss)/d(last block output). Walk the blocks backwards; the residual
  // stream's gradient stays in a.dresidual (LayerNorm backward accumulates into it) and each
  // branch starts from it directly, since d(x + f(x)) passes the same gradient to both.
  for (size_t li = blocks_.size(); li-- > 0;) {
    Block& b = *blocks_[li];
    const Tensor& x = li == 0 ? a.encoded : blocks_[li - 1]->residual3;
    // Rebuild this block's activations (the last block's are still in the shared buffers).
    if (recompute_ && li + 1 < blocks_.size()) block_forward(li, x, nullptr);
    // MLP branch
    be.linear_backward(a.dfch, b.d_fcproj_w, b.d_fcproj_b, a.dresidual, b.fch_gelu, b.fcproj_w);
    be.gelu_backward(a.dfch, b.fch, a.dfch);
    be.linear_backward(a.dbuf, b.d_fc_w, b.d_fc_b, a.dfch, b.ln2, b.fc_w);
    be.layernorm_backward(a.dresidual, b.d_ln2_w, b.d_ln2_b, a.dbuf, b.residual2, b.ln2_w, b.ln2_mean,
                          b.ln2_rstd);
    // attention branch
    be.linear_backward(a.dbuf, b.d_proj_w, b.d_proj_b, a.dresidual, b.atty, b.proj_w);
    be.attention_backward(a.dqkv, a.dbuf, b.qkv, b.atty, b.att_lse, nh);
    be.linear_backward(a.dbuf, b.d_qkv_w, b.d_qkv_b, a.dqkv, b.ln1, b.qkv_w);
    be.layernorm_backward(a.dresidual, b.d_ln1_w, b.d_ln1_b, a.dbuf, x, b.ln1_w, b.ln1_mean, b.ln1_rstd);
  }
  be.embedding_backward(params_.grad("wte"), params_.grad("wpe"), a.dresidual, a.tokens);
}

void GPT::zero_grad() { backend_.zero(params_.flat_grads()); }

const Tensor& GPT::logits() const { return acts_->logits; }
const Tensor& GPT::losses() const { return acts_->losses; }

}  // namespace llm
