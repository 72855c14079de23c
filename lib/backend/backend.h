// The backend interface: memory and stream management plus the op set.
//
// Every op is a forward/backward pair (no autograd). Shapes use B batch, T time, C channels,
// N = B*T rows, OC output channels, NH heads, hd = C/NH, Vp the padded vocabulary, V the real
// vocabulary. Float tensors are f32 unless mixed precision (below) allows bf16/f16; tokens and
// targets are i32.
//
// Gradient convention (the rule every backend follows):
//   * parameter gradients always ACCUMULATE (+=), so gradient accumulation over micro-batches is
//     free and the caller zeroes them once per step;
//   * activation gradients are WRITTEN (=) except where the op's input is the residual stream
//     (layernorm_backward's dinp and residual_backward's da/db), which ACCUMULATE (+=) so the
//     residual path and the branch path add without an extra buffer.
// Ops never allocate: the caller owns every buffer, including the statistics an op saves for its
// backward (LayerNorm mean/rstd, attention and cross-entropy log-sum-exp).
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "core/tensor.h"

namespace llm {

// Device memory held by a backend's allocator (bytes). CPU backends have none of their own: host
// memory is the process's resident set.
struct DeviceMemoryStats {
  int64_t allocated = 0;      // handed out now
  int64_t max_allocated = 0;  // the most handed out at once since the start
  int64_t reserved = 0;       // allocated + cached free blocks (what the driver sees)
};

struct AdamWParams {
  float lr = 1e-3f;
  float beta1 = 0.9f;
  float beta2 = 0.95f;
  float eps = 1e-8f;
  float weight_decay = 0.0f;  // decoupled: p -= lr * wd * p
  int64_t step = 1;           // 1-based, for bias correction
  float grad_scale = 1.0f;    // gradients are multiplied by this first (clipping, loss scale)
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::string name() const = 0;
  virtual Device device() const = 0;

  // ---- memory and streams -----------------------------------------------------------------
  virtual Tensor empty(const Shape& shape, DType dtype = DType::f32) = 0;
  // Copies between a host tensor and a tensor of this backend (either direction, same shape).
  virtual void copy(const Tensor& dst, const Tensor& src) = 0;
  virtual void zero(const Tensor& t) = 0;
  // Strided copy of `rows` rows of `width` elements: row r of dst starts at element r * dst_pitch
  // of dst, row r of src at r * src_pitch of src (contiguous tensors of this backend, one dtype;
  // both must hold their last row). Layout changes such as Ulysses' sequence <-> head shards.
  virtual void copy_rows(const Tensor& dst, int64_t dst_pitch, const Tensor& src, int64_t src_pitch, int64_t rows,
                         int64_t width) = 0;
  virtual void synchronize() = 0;
  // The allocator's figures on a device backend; false (and `out` untouched) on the CPU.
  virtual bool device_memory(DeviceMemoryStats& out) const {
    (void)out;
    return false;
  }
  Tensor zeros(const Shape& shape, DType dtype = DType::f32) {
    Tensor t = empty(shape, dtype);
    zero(t);
    return t;
  }
  Tensor upload(const Tensor& host) {
    Tensor t = empty(host.shape(), host.dtype());
    copy(t, host);
    return t;
  }
  Tensor download(const Tensor& t) {
    Tensor h = Tensor::empty(t.shape(), t.dtype());
    copy(h, t);
    return h;
  }

  // ---- ops --------------------------------------------------------------------------------
  // out[B,T,C] = wte[tokens[b,t], :] + wpe[t, :]      tokens[B,T] i32, wte[Vp,C], wpe[maxT,C]
  // Vocab-parallel form: wte holds vocabulary rows [vocab_begin, vocab_begin + wte.size(0)) of
  // a table of vocab_total rows (0 = wte.size(0), unsharded); tokens must lie in
  // [0, vocab_total) and those outside the shard contribute zero (the tensor-parallel group sums
  // the shards). wpe may be undefined: no position term (only one shard adds it).
  virtual void embedding_forward(const Tensor& out, const Tensor& tokens, const Tensor& wte,
                                 const Tensor& wpe, int64_t vocab_begin = 0,
                                 int64_t vocab_total = 0) = 0;
  // dwte[tokens[b,t] - vocab_begin] += dout[b,t] for tokens in the shard;
  // dwpe[t] += sum_b dout[b,t]   (both +=; dwpe may be undefined)
  virtual void embedding_backward(const Tensor& dwte, const Tensor& dwpe, const Tensor& dout,
                                  const Tensor& tokens, int64_t vocab_begin = 0) = 0;

  // out[N,C] = (inp - mean) * rstd * weight + bias;  saves mean[N], rstd[N]
  virtual void layernorm_forward(const Tensor& out, const Tensor& mean, const Tensor& rstd,
                                 const Tensor& inp, const Tensor& weight, const Tensor& bias,
                                 float eps) = 0;
  // dinp[N,C] +=, dweight[C] +=, dbias[C] +=
  virtual void layernorm_backward(const Tensor& dinp, const Tensor& dweight, const Tensor& dbias,
                                  const Tensor& dout, const Tensor& inp, const Tensor& weight,
                                  const Tensor& mean, const Tensor& rstd) = 0;

  // out[N,OC] = inp[N,C] @ weight[OC,C]^T + bias[OC]   (bias may be undefined)
  virtual void linear_forward(const Tensor& out, const Tensor& inp, const Tensor& weight,
                              const Tensor& bias) = 0;
  // dinp[N,C] = dout @ weight;  dweight[OC,C] += dout^T @ inp;  dbias[OC] += colsum(dout)
  // (dinp and dbias may be undefined when not needed)
  virtual void linear_backward(const Tensor& dinp, const Tensor& dweight, const Tensor& dbias,
                               const Tensor& dout, const Tensor& inp, const Tensor& weight) = 0;

  // out[N,OC] = gelu(inp @ weight^T + bias), the pre-activation kept in pre_gelu[N,OC] (what
  // gelu_backward reads): linear_forward then gelu_forward, or one fused call where the backend
  // has one (CUDA: cuBLASLt's GELU_AUX_BIAS epilogue).
  virtual void linear_gelu_forward(const Tensor& out, const Tensor& pre_gelu, const Tensor& inp, const Tensor& weight,
                                   const Tensor& bias) {
    linear_forward(pre_gelu, inp, weight, bias);
    gelu_forward(out, pre_gelu);
  }

  // The backward of a linear layer whose input was gelu(pre_gelu), through the GELU:
  // linear_backward, then dinp = gelu'(pre_gelu) * dinp (dinp[N,C], pre_gelu[N,C] as kept by
  // linear_gelu_forward of the layer before). One call where the backend fuses it (CUDA:
  // cuBLASLt's DGELU epilogue on the dinp GEMM).
  virtual void linear_backward_gelu(const Tensor& dinp, const Tensor& dweight, const Tensor& dbias,
                                    const Tensor& dout, const Tensor& inp, const Tensor& weight,
                                    const Tensor& pre_gelu) {
    linear_backward(dinp, dweight, dbias, dout, inp, weight);
    gelu_backward(dinp, pre_gelu, dinp);
  }

  // out = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))   any shape
  virtual void gelu_forward(const Tensor& out, const Tensor& inp) = 0;
  // dinp = gelu'(inp) * dout   (=; dinp may alias dout)
  virtual void gelu_backward(const Tensor& dinp, const Tensor& inp, const Tensor& dout) = 0;

  // out = a + b   any shape (out may alias a or b)
  virtual void residual_forward(const Tensor& out, const Tensor& a, const Tensor& b) = 0;
  // da += dout; db += dout
  virtual void residual_backward(const Tensor& da, const Tensor& db, const Tensor& dout) = 0;

  // Causal multi-head self-attention, flash-style (tiled, online softmax, memory O(T)).
  // qkv[B,T,3C] holds q | k | v, each [NH, hd] per token (GPT-2 layout); out[B,T,C];
  // lse[B,NH,T] = log-sum-exp of each query's scaled scores (saved for backward).
  // Scale is 1/sqrt(hd).
  virtual void attention_forward(const Tensor& out, const Tensor& lse, const Tensor& qkv,
                                 int n_head) = 0;
  // dqkv[B,T,3C] = d(out)/d(qkv)^T dout   (=; the backward recomputes the score tiles)
  virtual void attention_backward(const Tensor& dqkv, const Tensor& dout, const Tensor& qkv,
                                  const Tensor& out, const Tensor& lse, int n_head) = 0;

  // Incremental (inference) attention with a KV cache. qkv[B,Tn,3C] holds the Tn new tokens at
  // positions [past, past+Tn); their k and v are first written into k_cache/v_cache [B,maxT,C]
  // rows [past, past+Tn), then each new query attends causally to cache rows [0, its position].
  // out[B,Tn,C] (=). No backward: generation only.
  virtual void attention_kv_forward(const Tensor& out, const Tensor& qkv, const Tensor& k_cache,
                                    const Tensor& v_cache, int64_t past, int n_head) = 0;

  // Softmax cross-entropy over the first V columns of logits[N,Vp] (columns >= V are padding).
  // losses[N] = lse - logits[target];  lse[N] saved;  target < 0 means "ignore" (loss 0).
  // Vocab-parallel form: logits[N,Vl] are global columns [vocab_begin, vocab_begin + Vl) of a
  // vocabulary of V real columns (global columns >= V are padding; every shard must hold at
  // least one real column). lse is then over the shard's real columns, and a target outside
  // the shard counts as logit 0 in losses (so lse - losses is the target logit on its owner and
  // exactly 0 elsewhere); the caller combines the shards' lse and target logits.
  virtual void cross_entropy_forward(const Tensor& losses, const Tensor& lse,
                                     const Tensor& logits, const Tensor& targets, int64_t V,
                                     int64_t vocab_begin = 0) = 0;
  // dlogits[N,Vp] = (softmax - onehot(target)) * dloss (=; padding columns and ignored rows 0).
  // dlogits may alias logits: the fused, in-place form used in training. Vocab-parallel form:
  // lse is the GLOBAL log-sum-exp and the one-hot only applies on the shard holding the target.
  virtual void cross_entropy_backward(const Tensor& dlogits, const Tensor& logits,
                                      const Tensor& lse, const Tensor& targets, float dloss,
                                      int64_t V, int64_t vocab_begin = 0) = 0;
  // The vocab-parallel shards' cross_entropy_forward outputs for the same N rows combined:
  // shard_lse[P,N] and shard_losses[P,N] as shard r (columns [r*Vl, (r+1)*Vl), Vl = shard_vocab)
  // wrote them. lse[N] = log sum_r exp(shard_lse[r]) (=); losses[N] = lse - the target logit,
  // which is shard_lse - shard_losses on the target's owner t / Vl, and 0 where t < 0. Computed
  // in double; all f32, targets i32 [N]. The forward checked the targets: a target whose owner
  // is past P is refused on the CPU and gives a NaN loss on CUDA (a check there would sync).
  virtual void cross_entropy_combine(const Tensor& losses, const Tensor& lse, const Tensor& shard_lse,
                                     const Tensor& shard_losses, const Tensor& targets, int64_t shard_vocab) = 0;

  // One AdamW step over flat, same-length param/grad/m/v (all f32, m and v are fp32 state).
  virtual void adamw_update(const Tensor& param, const Tensor& grad, const Tensor& m,
                            const Tensor& v, const AdamWParams& p) = 0;
  // sum(x^2) for the global gradient norm: float partials over short runs, combined in double
  // in a fixed order (deterministic for a given input).
  virtual double sum_squares(const Tensor& x) = 0;
  // x *= s
  virtual void scale(const Tensor& x, float s) = 0;

  // ---- mixed precision ---------------------------------------------------------------------
  // Element types: every op takes f32 tensors. Activations may also be bf16 or f16, one type per
  // op call, with f32 statistics (LayerNorm mean/rstd, attention and cross-entropy lse, losses),
  // LayerNorm parameters, parameter gradients and optimizer state: embedding's out/wte/wpe,
  // LayerNorm's inp/out/dout/dinp, linear's inp/weight/dout/dinp (out: that type or f32, bias:
  // out's type; dweight/dbias f32, fp32 accumulation), GELU, residual, attention's qkv/out/dout/
  // dqkv/caches and cross-entropy's logits/dlogits. Values are computed in fp32 and rounded once
  // when stored.
  // dst = src converted between f32, bf16 and f16 (round to nearest even; same shape).
  virtual void convert(const Tensor& dst, const Tensor& src) = 0;
  // Number of NaN/Inf elements of a float tensor.
  virtual int64_t count_nonfinite(const Tensor& x) = 0;
  // AdamW on fp32 master weights that also writes the updated weights to `low` (bf16/f16, same
  // shape): the compute copy in one pass.
  virtual void adamw_update_mixed(const Tensor& param, const Tensor& grad, const Tensor& m, const Tensor& v,
                                  const AdamWParams& p, const Tensor& low) {
    adamw_update(param, grad, m, v, p);
    convert(low, param);
  }
};

// attention_kv_forward's arguments, validated the same way by every backend: qkv [B, Tn, 3C]
// with C divisible by n_head, caches [B, maxT, C], and positions [past, past + Tn) inside them.
struct AttentionKvShape {
  int64_t B = 0, Tn = 0, C = 0, maxT = 0;
};
AttentionKvShape attention_kv_shape(const Tensor& qkv, const Tensor& k_cache, int64_t past, int n_head);

// The rows of an op's [..., width] operand, numel / width; an Error naming `what` and its shape when
// the last dimension is empty (every backend divides by it).
int64_t rows_of(const Tensor& t, const char* what);
// A linear op's sizes, checked the same way by every backend: N = rows_of(inp) rows of C = the last
// dimension, and OC = the weight's rows, an Error naming `op`'s weight when it has none. The
// weight's [OC, C] shape, its type and its device are each backend's to check.
struct LinearShape {
  int64_t N = 0, C = 0, OC = 0;
};
LinearShape linear_shape(const Tensor& inp, const Tensor& weight, const char* op);
// An Error naming `what` when two outputs of an op overlap in memory (residual_backward's da and
// db each accumulate dout: one buffer passed as both would receive it once or twice by the path).
void check_disjoint(const Tensor& a, const Tensor& b, const char* what);

// copy_rows' arguments, validated the same way by every backend (returns the element size).
size_t copy_rows_check(const Tensor& dst, int64_t dst_pitch, const Tensor& src, int64_t src_pitch, int64_t rows,
                       int64_t width);

// The CPU backend (always present), and every backend this build has (CPU first).
Backend& cpu_backend();
std::vector<Backend*> available_backends();
// The backend called `name` ("cpu", "cuda"), or ConfigError naming `flag` and why it is not
// there (not built, or no usable device and the reason).
Backend& backend_by_name(const std::string& name, const std::string& flag = "--backend");
// Backends add themselves at static-initialisation time (the CUDA backend does).
void register_backend(Backend* b);

}  // namespace llm
