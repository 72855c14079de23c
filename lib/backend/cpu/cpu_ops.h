// CPU implementations of the op set (see backend/backend.h for shapes and semantics).
// Each op lives in its own file; CpuBackend forwards to these.
#pragma once
#include "backend/backend.h"

namespace llm::cpu {

// wte may be bf16/f16 (out and wpe f32): each looked-up row is widened as it is copied, the
// whole table never (generation looks up a few rows of a large table).
void embedding_forward(const Tensor& out, const Tensor& tokens, const Tensor& wte, const Tensor& wpe,
                       int64_t vocab_begin, int64_t vocab_total);
void embedding_backward(const Tensor& dwte, const Tensor& dwpe, const Tensor& dout, const Tensor& tokens,
                        int64_t vocab_begin);
void layernorm_forward(const Tensor& out, const Tensor& mean, const Tensor& rstd, const Tensor& inp,
                       const Tensor& weight, const Tensor& bias, float eps);
void layernorm_backward(const Tensor& dinp, const Tensor& dweight, const Tensor& dbias,
                        const Tensor& dout, const Tensor& inp, const Tensor& weight,
                        const Tensor& mean, const Tensor& rstd);
void linear_forward(const Tensor& out, const Tensor& inp, const Tensor& weight, const Tensor& bias);
// linear_forward with a bf16/f16 weight (f32 out, inp and bias), for few rows (generation): the
// weight is widened a block of rows at a time into a per-thread buffer that stays in cache and
// multiplied there, so it is read once at its own width and never copied whole.
void linear_forward_low_weight(const Tensor& out, const Tensor& inp, const Tensor& weight, const Tensor& bias);
void linear_backward(const Tensor& dinp, const Tensor& dweight, const Tensor& dbias,
                     const Tensor& dout, const Tensor& inp, const Tensor& weight);
void gelu_forward(const Tensor& out, const Tensor& inp);
void gelu_backward(const Tensor& dinp, const Tensor& inp, const Tensor& dout);
void residual_forward(const Tensor& out, const Tensor& a, const Tensor& b);
void residual_backward(const Tensor& da, const Tensor& db, const Tensor& dout);
void attention_forward(const Tensor& out, const Tensor& lse, const Tensor& qkv, int n_head);
void attention_backward(const Tensor& dqkv, const Tensor& dout, const Tensor& qkv,
                        const Tensor& out, const Tensor& lse, int n_head);
void attention_kv_forward(const Tensor& out, const Tensor& qkv, const Tensor& k_cache, const Tensor& v_cache,
                          int64_t past, int n_head);
void cross_entropy_forward(const Tensor& losses, const Tensor& lse, const Tensor& logits,
                           const Tensor& targets, int64_t V, int64_t vocab_begin);
void cross_entropy_combine(const Tensor& losses, const Tensor& lse, const Tensor& shard_lse,
                           const Tensor& shard_losses, const Tensor& targets, int64_t shard_vocab);
void cross_entropy_backward(const Tensor& dlogits, const Tensor& logits, const Tensor& lse,
                            const Tensor& targets, float dloss, int64_t V, int64_t vocab_begin);
void adamw_update(const Tensor& param, const Tensor& grad, const Tensor& m, const Tensor& v,
                  const AdamWParams& p);
double sum_squares(const Tensor& x);
void scale(const Tensor& x, float s);
// dst = src between f32, bf16 and f16 (round to nearest even); NaN/Inf elements of a float tensor.
void convert(const Tensor& dst, const Tensor& src);
// n elements of type `st` (f32, bf16, f16) at src widened to f32 at dst, on the calling thread.
void widen(float* dst, DType st, const void* src, int64_t n);
int64_t count_nonfinite(const Tensor& x);

// Shared argument checks: contiguous host f32 tensor of the given shape; or f32/bf16/f16.
void check_f32(const Tensor& t, const Shape& shape, const char* what);
void check_float(const Tensor& t, const Shape& shape, const char* what);

}  // namespace llm::cpu
