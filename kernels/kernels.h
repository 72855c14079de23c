// Host-side entry points of the CUDA kernels (one op per .cu file in this folder). Plain C++:
// raw device pointers, sizes and a stream, no Tensor checks — the CUDA backend
// (lib/backend/cuda/cuda_backend.cpp) validates shapes and dtypes and then calls these.
//
// Element types: `DType t` selects the activation type (f32, bf16 or f16) of the tensors typed
// void* below; statistics, LayerNorm parameters, gradients of parameters and optimizer state
// are always f32. Each function launches asynchronously on `stream`.
#pragma once
#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include "core/dtype.h"

namespace llm::kernels {

// ---- embedding.cu -----------------------------------------------------------------------------
// out[i, :] = wte[tokens[i] - vocab_begin, :] (if in the shard) + wpe[i % T, :] (if wpe)
void embedding_forward(DType t, void* out, const int32_t* tokens, const void* wte, const void* wpe,
                       int64_t BT, int64_t T, int64_t C, int64_t vocab_begin, int64_t Vl,
                       cudaStream_t stream);
// dwte[rows[b], :] += sum over positions[starts[b] .. starts[b+1]) of dout[pos, :], in order
// (positions bucketed by token on the host: deterministic, no atomics).
void embedding_backward_wte(DType t, float* dwte, const void* dout, const int32_t* rows,
                            const int32_t* starts, const int32_t* positions, int64_t n_buckets,
                            int64_t C, cudaStream_t stream);
// dwpe[t, :] += sum_b dout[b, t, :]
void embedding_backward_wpe(DType t, float* dwpe, const void* dout, int64_t B, int64_t T, int64_t C,
                            cudaStream_t stream);

// ---- validate_ids.cu --------------------------------------------------------------------------
// *first_bad = min(*first_bad, smallest i with ids[i] outside [lo, hi)). *first_bad must be
// initialised (e.g. to all ones) by the caller.
void find_bad_ids(const int32_t* ids, int64_t n, int64_t lo, int64_t hi,
                  unsigned long long* first_bad, cudaStream_t stream);

// ---- layernorm.cu -----------------------------------------------------------------------------
void layernorm_forward(DType t, void* out, float* mean, float* rstd, const void* inp,
                       const float* weight, const float* bias, int64_t N, int64_t C, float eps,
                       cudaStream_t stream);
// dinp += ..., dweight += ..., dbias += ... ; scratch holds column_sum_scratch(N, 2*C) floats.
void layernorm_backward(DType t, void* dinp, float* dweight, float* dbias, const void* dout,
                        const void* inp, const float* weight, const float* mean, const float* rstd,
                        int64_t N, int64_t C, float* scratch, cudaStream_t stream);

// ---- linear.cu (the matmuls are cuBLASLt: lib/backend/cuda/cublaslt_matmul.h) -----------------
// dbias[OC] += column sums of dout[N, OC]; scratch holds column_sum_scratch(N, OC) floats.
void bias_backward(DType t, float* dbias, const void* dout, int64_t N, int64_t OC, float* scratch,
                   cudaStream_t stream);
// out[N, OC] (type t) = acc[N, OC] (fp32) + bias[OC] (type t; may be null), rounded once. out may
// alias acc when t is f32.
void bias_epilogue(DType t, void* out, const float* acc, const void* bias, int64_t N, int64_t OC,
                   cudaStream_t stream);
// Floats of scratch the deterministic column reductions need for N rows and `width` sums.
int64_t column_sum_scratch(int64_t N, int64_t width);

// ---- gelu.cu ----------------------------------------------------------------------------------
void gelu_forward(DType t, void* out, const void* inp, int64_t n, cudaStream_t stream);
void gelu_backward(DType t, void* dinp, const void* inp, const void* dout, int64_t n,
                   cudaStream_t stream);

// ---- residual.cu ------------------------------------------------------------------------------
void residual_forward(DType t, void* out, const void* a, const void* b, int64_t n, cudaStream_t stream);
void residual_backward(DType t, void* da, void* db, const void* dout, int64_t n, cudaStream_t stream);

// ---- cross_entropy.cu -------------------------------------------------------------------------
// Rows of Vp logits; the shard's first Vr columns are real; targets are global column ids.
void cross_entropy_forward(DType t, float* losses, float* lse, const void* logits,
                           const int32_t* targets, int64_t N, int64_t Vp, int64_t Vr,
                           int64_t vocab_begin, cudaStream_t stream);
void cross_entropy_backward(DType t, void* dlogits, const void* logits, const float* lse,
                            const int32_t* targets, float dloss, int64_t N, int64_t Vp, int64_t Vr,
                            int64_t vocab_begin, cudaStream_t stream);
// The P vocab shards' [P, N] lse and losses into the global lse and losses (one thread a row;
// an owner t / Vl past P gives NaN: no host check, so no sync).
void cross_entropy_combine(float* losses, float* lse, const float* shard_lse, const float* shard_losses,
                           const int32_t* targets, int64_t P, int64_t N, int64_t Vl, cudaStream_t stream);

// ---- adamw.cu ---------------------------------------------------------------------------------
struct AdamWConstants {
  float lr, beta1, beta2, eps, weight_decay, grad_scale;
  float bias_correction1, bias_correction2;  // 1 / (1 - beta^step)
};
// One fused step over flat f32 param/grad/m/v. If low_precision is non-null it receives the
// updated parameters rounded to low_type (bf16/f16 working copy of fp32 master weights).
void adamw_update(float* param, const float* grad, float* m, float* v, int64_t n,
                  const AdamWConstants& c, DType low_type, void* low_precision, cudaStream_t stream);

// ---- grad_norm.cu -----------------------------------------------------------------------------
// partials[kSumSquaresBlocks] (device) receive per-block sums of x^2 (double); the caller adds
// them in order on the host (deterministic for a given n).
inline constexpr int kSumSquaresBlocks = 264;
void sum_squares(DType t, const void* x, int64_t n, double* partials, cudaStream_t stream);
// x *= s
void scale(DType t, void* x, int64_t n, float s, cudaStream_t stream);
// *count += number of NaN/Inf elements of x (count is device memory).
void count_nonfinite(DType t, const void* x, int64_t n, unsigned long long* count, cudaStream_t stream);

// ---- convert.cu -------------------------------------------------------------------------------
// dst = src converted (f32 <-> bf16/f16, round to nearest even; same type is a copy).
void convert(DType dst_type, void* dst, DType src_type, const void* src, int64_t n, cudaStream_t stream);

// ---- attention.cu / attention_tc.cu -------------------------------------------------------------
// Causal attention for one layer. Element offsets: query row i of batch b, head h starts at
// q + b*q_batch_stride + i*q_row_stride + h*hd (likewise k, v with kv strides, out with out
// strides). Query i sits at absolute position q_pos0 + i and sees keys [0, q_pos0 + i].
struct AttentionForwardArgs {
  const void* q = nullptr;
  const void* k = nullptr;
  const void* v = nullptr;
  void* out = nullptr;
  float* lse = nullptr;  // [B, NH, Tq] or null
  int64_t q_batch_stride = 0, q_row_stride = 0;
  int64_t kv_batch_stride = 0, kv_row_stride = 0;
  int64_t out_batch_stride = 0, out_row_stride = 0;
  int B = 0, NH = 0, hd = 0;
  int64_t Tq = 0, q_pos0 = 0;
  int block_order = 0;  // 0: LLM_CUDA_BLOCK_ORDER's (block_order_setting); else as it (block_order.h)
};
void attention_forward(DType t, const AttentionForwardArgs& a, cudaStream_t stream);
// The head dims the attention kernels take, [1, 256]: an Error naming `op` otherwise.
void check_attention_head_dim(int hd, const char* op);
// The arguments of self-attention over qkv[B, T, 3C] (q | k | v per token, elem_size bytes per
// element) into out[B, T, C] and lse[B, NH, T].
inline AttentionForwardArgs self_attention_args(const void* qkv, void* out, float* lse, size_t elem_size, int B,
                                                int64_t T, int NH, int hd) {
  const int64_t C = int64_t(NH) * hd;
  AttentionForwardArgs a;
  a.q = qkv;
  a.k = static_cast<const char*>(qkv) + C * int64_t(elem_size);
  a.v = static_cast<const char*>(qkv) + 2 * C * int64_t(elem_size);
  a.out = out;
  a.lse = lse;
  a.q_batch_stride = a.kv_batch_stride = T * 3 * C;
  a.q_row_stride = a.kv_row_stride = 3 * C;
  a.out_batch_stride = T * C;
  a.out_row_stride = C;
  a.B = B, a.NH = NH, a.hd = hd;
  a.Tq = T, a.q_pos0 = 0;
  return a;
}

// Backward of self-attention over qkv[B, T, 3C] (q | k | v per token): dqkv (=) from dout, out
// and lse. scratch holds attention_backward_scratch() floats (D = rowsum(dout * out) first).
struct AttentionBackwardArgs {
  const void* qkv = nullptr;
  void* dqkv = nullptr;
  const void* out = nullptr;
  const void* dout = nullptr;
  const float* lse = nullptr;
  float* scratch = nullptr;
  // Optional: attention_backward_workspace() floats, zero, which the backward leaves zero (the
  // atomic backwards' fp32 dQ sums and counters then live there instead of in the scratch, and no
  // memset clears them; the caller keeps it from call to call: CudaBackend).
  float* dq_workspace = nullptr;
  // Set by attention_backward (the atomic backwards: tc-atomic, wgmma-atomic, wgmma-ws-*): the
  // fp32 dQ sums [B, T, C], the fused conversion's counters after them (B*NH*ceil(T/64) ints),
  // and whether both are zero on entry and must be left zero (from dq_workspace) or are zeroed
  // by a memset first (from the scratch).
  float* dq_accum = nullptr;
  int* dq_count = nullptr;
  bool dq_clean = false;
  int B = 0, NH = 0, hd = 0;
  int64_t T = 0;
  int block_order = 0;  // 0: LLM_CUDA_BLOCK_ORDER's (block_order_setting); else as it (block_order.h)
  int dq_convert = 0;   // 0: LLM_CUDA_DQ_CONVERT's (dq_convert_setting); 1 kernel; 2 fused
  int dq_red = 0;       // 0: LLM_CUDA_DQ_RED's (dq_red_setting); 2 or 4 floats per reduction
};
void attention_backward(DType t, const AttentionBackwardArgs& a, cudaStream_t stream);
// Floats of scratch attention_backward needs: B*NH*T (D), plus, for the atomic backwards (bf16 /
// f16 under tc-atomic, wgmma-atomic, wgmma-ws-*, auto's on sm_90) without a dq_workspace, the
// fp32 dQ sums (B*T*C) and the counters (B*NH*ceil(T/64)).
int64_t attention_backward_scratch(DType t, int B, int NH, int hd, int64_t T, bool with_workspace = false);
// Floats of dq_workspace worth keeping for this shape: the sums and counters when the backward
// adds dQ with atomics and LLM_CUDA_DQ_CONVERT=fused (the conversion then zeroes them as it
// goes, so a persistent workspace saves the memset); 0 otherwise (a workspace would only move the
// memset's traffic into the conversion kernel).
int64_t attention_backward_workspace(DType t, int B, int NH, int hd, int64_t T);

// ---- attention_kv.cu ----------------------------------------------------------------------------
// Appends the Tn new tokens' k and v (from qkv[B, Tn, 3C]) to the caches [B, maxT, C] at rows
// [past, past + Tn), then out[B, Tn, C] = causal attention of the new queries over the cache.
void attention_kv_forward(DType t, void* out, const void* qkv, void* k_cache, void* v_cache, int B, int64_t Tn,
                          int64_t C, int64_t maxT, int64_t past, int NH, cudaStream_t stream);

// Which attention kernels run for bf16/f16, from LLM_CUDA_ATTENTION (read once):
//   auto (default) per pass and head dim, the choice measured fastest on an H100 (run 16;
//                 attention.cu: automatic_kernels): wgmma-ws3's forward and wgmma-ws-atomic's
//                 backward on sm_90 (wgmma's backward under LLM_CUDA_DETERMINISTIC=1), tc elsewhere;
//   tc            tensor cores, K/V (Q/dO) tiles double-buffered with cp.async, 4 warps per block;
//   tc-m32        tc with 32 query rows per warp in the forward (FlashAttention-2's shape, hd <= 128);
//   tc-atomic     tc with dQ fused into the dK/dV kernel through fp32 atomics (FlashAttention-2's
//                 way: 5 instead of 7 products in the backward; dQ not bit-reproducible);
//   wgmma         Hopper warpgroup MMA (sm_90a kernels, head dims 48-128) on compute
//                 capability 9.0 devices; tc for every other shape and device;
//   wgmma-pp      wgmma with the forward's two warpgroups in ping-pong;
//   wgmma-ws      wgmma with the forward warp-specialised: TMA producer, intra-warpgroup
//                 overlap (FlashAttention-3's structure);
//   wgmma-ws-pp   wgmma-ws with the consumer warpgroups in ping-pong;
//   wgmma-ws3     wgmma-ws-pp with three consumer warpgroups (192 query rows per block) at head
//                 dims up to 64 (FlashAttention-3's tile there), two consumers above;
//   wgmma-atomic  wgmma with the backward's dQ fused into the dK/dV kernel through fp32 atomics
//                 (tc-atomic where wgmma does not run);
//   wgmma-rs      wgmma with the backward's score products taking their per-block operand from
//                 registers: Q and dO in the dQ kernel (head dims up to 96), K and V in the dK/dV
//                 kernel (up to 80);
//   wgmma-ws-atomic the forward of wgmma-ws-pp, the backward of wgmma-atomic warp-specialised (a
//                 TMA producer warpgroup, two consumers: FlashAttention-3's structure, and its
//                 128-query tiles at head dims up to 64);
//   wgmma-ws-dqfirst wgmma-ws-atomic's backward with dQ's product before dK's and the atomic adds
//                 under dK's (FlashAttention-3's order), the forward of wgmma-ws3; not yet run on a GPU;
//   wgmma-ws-tma  wgmma-ws-dqfirst's backward with FlashAttention-3's dQ path (dQ staged in shared
//                 memory, added by TMA reductions a producer thread issues, dQ's product before
//                 dK's so the staging runs under dK), the forward of wgmma-ws3; not yet run on a GPU;
//   simt          the fp32 SIMT kernels for every dtype (triage: tensor-core path vs the rest).
// Anything else is an error naming the variable.
enum class AttentionKernels {
  automatic, tc, tc_m32, tc_atomic, wgmma, wgmma_pp, wgmma_ws, wgmma_ws_pp, wgmma_ws3, wgmma_atomic, wgmma_rs,
  wgmma_ws_atomic, wgmma_ws_dqfirst, wgmma_ws_tma, simt
};
AttentionKernels attention_kernels();
// Whether the choice's backward adds dQ with fp32 atomics (not bit-reproducible; bf16/f16 only:
// the fp32 kernels never do): tc-atomic, wgmma-atomic, wgmma-ws-atomic, wgmma-ws-dqfirst, wgmma-ws-tma (TMA
// reductions: their order varies too).
bool adds_with_atomics(AttentionKernels k);
// LLM_CUDA_DETERMINISTIC=1: results bit-reproducible from run to run: `auto` never picks an
// attention backward that adds with atomics (tc-atomic, wgmma-atomic, wgmma-ws-atomic; it takes
// the seven-product wgmma form, 0.74-1.00x wgmma-ws-atomic in run 16), and naming one in LLM_CUDA_ATTENTION is
// an error naming both variables. 0 or unset: `auto` takes the fastest measured. Anything else is
// an error.
bool deterministic_kernels();
// LLM_CUDA_BLOCK_ORDER: the order in which the tensor-core attention kernels' blocks take their
// work (kernels/block_order.h). heaviest (default, or unset): longest first across groups of heads
// that fit each kernel's share of L2 (0); heaviest:N the same with a share of N MiB (N, 1-1024);
// launch: head by head, each head's blocks heaviest first (-1; the order before run 18: triage and
// A/B). Anything else is an error naming the variable.
int block_order_setting();
// LLM_CUDA_DQ_CONVERT: how the atomic backwards turn the fp32 dQ sums into dqkv's q columns.
// kernel (default, or unset; 1): a conversion kernel after the backward (dq_from_accum_packed),
// the sums zeroed by a memset before it; fused (2): inside the warp-specialised atomic backwards
// (wgmma-ws-atomic, wgmma-ws-dqfirst; not auto's wgmma-ws-tma), each query tile converted by the block
// that adds its last sums, from L2, by a producer warp (no conversion kernel; with a persistent
// dq_workspace no memset either); the other atomic backwards keep the kernel. Anything else is an
// error naming the variable.
int dq_convert_setting();
// LLM_CUDA_DQ_RED: the width of the dQ reductions of wgmma-ws-atomic and wgmma-ws-dqfirst (not
// auto's wgmma-ws-tma, whose dQ goes by TMA reductions). v2
// (default, or unset; 2): the accumulator fragments' own float pairs, 8 bytes per reduction; v4
// (4): quad lanes trade halves so each reduction adds 16 bytes, half the instructions
// (red.global.add.v4.f32, sm_90), at head dims 48, 80, 96 and 128 (at 64 the trade spills: v2
// there). Anything else is an error naming the variable.
int dq_red_setting();
// LLM_CUDA_SMEM_LIMIT: a cap on the shared memory a kernel may opt in to per block, below the
// device's own maximum, so that one card can stand in for a smaller one (kernels/smem_limit.cu):
// unset or empty (0: the device's), a byte count of at least 49152, or a compute capability's
// maximum by name: sm80 (166912, A100), sm86 or sm89 (101376: A10, A40, L4, L40S, RTX 30/40) or
// sm90 (232448, H100/H200). Anything else is an error naming the variable.
int smem_limit_setting();
// The shared memory (bytes) a block may opt in to here: the device's maximum
// (cudaDevAttrMaxSharedMemoryPerBlockOptin), or LLM_CUDA_SMEM_LIMIT's cap where that is lower.
// Read once per process (one device per process). allow_smem (common.cuh) refuses a launch that
// needs more, with an error that names both numbers.
size_t smem_optin_limit();
// Whether LLM_CUDA_SMEM_LIMIT is below the device's own maximum: a smaller card stood in for, so
// no wgmma kernels (wgmma_unavailable says why).
bool smem_capped();
// The kernels attention uses for this head dim and pass: LLM_CUDA_ATTENTION's choice, or auto's
// pick (which depends on the device: tc off compute capability 9.0).
AttentionKernels attention_kernels_for(int hd, bool backward);

// Tensor-core (mma.sync bf16/f16) paths, attention_tc.cu: forward for head dims 48, 64, 80, 96,
// 128 and 160 with 16-byte aligned rows; false when the shape is not covered (the caller falls
// back to the SIMT kernels). m32: 32 query rows per warp (head dims up to 128).
bool attention_forward_tensor_cores(DType t, const AttentionForwardArgs& a, bool m32, cudaStream_t stream);
// The dynamic shared memory (bytes) that forward asks for at head dim hd (bf16/f16; 0 for a head
// dim it does not cover): tc-m32 at hd 128 104448, more than the 99 KiB of sm_86/sm_89.
size_t attention_forward_tc_smem(int hd, bool m32);
// attention_tc_backward.cu: dqkv from a.scratch already holding D = rowsum(dout * out);
// atomic_dq: dQ through a.dq_accum (false when it is null), by the 8-warp dK/dV kernel (128 keys
// per block, FlashAttention-2's tile) at head dims up to 128 where the block may opt in to its
// shared memory, else by the 4-warp one; warps 4 or 8 asks for that one (false when 8 does not
// fit or !atomic_dq).
bool attention_backward_tensor_cores(DType t, const AttentionBackwardArgs& a, bool atomic_dq, cudaStream_t stream,
                                     int warps = 0);
// The 8-warp fused dK/dV kernel's dynamic shared memory at head dim hd (bf16/f16); 0 where that
// shape does not exist (hd 160).
size_t attention_backward_tc_wide_smem(int hd);

// sm90a/attention_wgmma.cu (built when CMAKE_CUDA_ARCHITECTURES has 90; stubs otherwise).
// nullptr when the wgmma kernels can run in this process, else the reason they cannot.
const char* wgmma_unavailable();
// The head dims the wgmma kernels are built for (auto takes tc at any other, 160).
inline bool wgmma_head_dim(int hd) { return hd == 48 || hd == 64 || hd == 80 || hd == 96 || hd == 128; }
// Forward / backward (a.scratch already holding D) on wgmma: false when the dtype (bf16, f16),
// head dim (48, 64, 80, 96, 128), alignment or device is not covered (the caller falls back).
// The forward's form: plain (wgmma), ping_pong (the two warpgroups' products and softmax
// interleaved, wgmma-pp), warp_specialized (a TMA producer warpgroup, the next tile's Q K^T issued
// before this tile's softmax: FlashAttention-3's structure, wgmma-ws), warp_specialized_ping_pong
// (that, with the two consumer warpgroups' products alternating: wgmma-ws-pp),
// warp_specialized_3 (wgmma-ws-pp with three consumer warpgroups, 192 query rows per block, at
// head dims up to 96; two at 128: wgmma-ws3). Equal outputs.
enum class WgmmaForward { plain, ping_pong, warp_specialized, warp_specialized_ping_pong, warp_specialized_3 };
bool attention_forward_wgmma(DType t, const AttentionForwardArgs& a, cudaStream_t stream,
                             WgmmaForward form = WgmmaForward::plain);
// The backward's form: separate_dq (the dQ kernel recomputes S and dP: seven products), or dQ
// fused into the dK/dV kernel (five products; a.dq_accum set, false when it is null) and added
// into a.dq_accum by per-thread fp32 atomics (atomic_dq, wgmma-atomic; not bit-reproducible);
// separate_dq_rs (wgmma-rs): separate_dq with the score products as RS products, the operand
// that stays for the whole block in registers: Q and dO in the dQ kernel (head dims up to 96), K
// and V in the dK/dV kernel (up to 80); separate_dq elsewhere; ws_atomic_dq (wgmma-ws-atomic):
// atomic_dq warp-specialised (a TMA producer warpgroup and two consumers, FlashAttention-3's
// structure); ws_atomic_dq_first (wgmma-ws-dqfirst): ws_atomic_dq with dQ's product issued before
// dK's and its adds under dK's (FlashAttention-3's order); ws_tma_dq (wgmma-ws-tma): that order
// with FlashAttention-3's dQ path, the tile's dQ staged in shared memory and added by TMA
// reductions a producer thread issues.
enum class WgmmaBackward { separate_dq, atomic_dq, separate_dq_rs, ws_atomic_dq, ws_atomic_dq_first, ws_tma_dq };
bool attention_backward_wgmma(DType t, const AttentionBackwardArgs& a, cudaStream_t stream,
                              WgmmaBackward form = WgmmaBackward::separate_dq);
// The wgmma forms the attention kernels use, alone, for a test: s[64][128] = q[64][hd] k^T (both
// operands from swizzled shared memory) and, from s rounded to T, o[64][hd] = s k three ways:
// A from registers (o), A stored K-major with B transposed (o_bt), A stored transposed and read
// MN-major with B transposed (o_tt), and o_tt again in the fused backward's two dQ column slices
// (o_split: N = dq_split_cols, B from a column inside the k tile); k is read MN-major. s_rs is s
// again with q's rows as A fragments in registers and k K-major (wgmma-rs's score products). q
// is [64][hd] and k [128][hd], row-major T (bf16/f16); hd as above; false when not covered.
bool wgmma_tile_check(DType t, int hd, const void* q, const void* k, float* s, float* o, float* o_bt, float* o_tt,
                      float* o_split, float* s_rs, cudaStream_t stream);

}  // namespace llm::kernels
