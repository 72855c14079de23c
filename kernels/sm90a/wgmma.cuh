// Hopper warpgroup MMA (wgmma.mma_async, sm_90a only) and the swizzled shared-memory
// tiles it reads, for the attention kernels in this folder. Everything here is PTX ISA 8.0+
// ("Asynchronous Warpgroup Level Matrix Multiply-Accumulate"); nothing of CUTLASS is used.
//
// Tiles and descriptors: wgmma_layout.h.
//
// Fragments. The fp32 accumulator of m64nNk16 gives warp w of the warpgroup rows 16w .. 16w + 15
// and lays them out like mma.sync m16n8: d[4i + 0, 1] = (row g, cols 8i + 2t, + 1), d[4i + 2, 3]
// = (row g + 8, same cols), g = lane / 4, t = lane % 4. The register A operand (the "RS" form)
// is mma.sync's m16n8k16 A fragment for the warp's 16 rows, so C fragments of two adjacent
// 8-column blocks, packed to 16-bit pairs, are an A fragment (flash attention's P stays in
// registers, as in the mma.sync kernels).
//
// Ordering. wgmma reads shared memory through the async proxy: copies that landed through the
// generic proxy (cp.async) must be fenced for it before the barrier that publishes them
// (next_tile<true> in mma.cuh). wgmma_fence() goes before the first wgmma of a batch whenever
// its accumulator or A registers were touched by ordinary instructions. fence_operands() pins
// registers at a point of the program, so the compiler moves no write of them past the
// wgmma_fence() that follows (every batch: fence_operands(accumulators, A), wgmma_fence(),
// issue, commit, wait, fence_operands again), no read of them ahead of the wait, and does not
// reuse an A register the tensor cores may still be reading.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "sm90a/wgmma_layout.h"

namespace llm::kernels::sm90a {

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void wgmma_wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}

// Named barrier `id` (1..15; 0 is __syncthreads) over n threads: sync waits for n arrivals
// (its own included), arrive counts without waiting. Every thread of a warp executes them.
__device__ __forceinline__ void named_barrier_sync(int id, int n) {
  asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(n) : "memory");
}
__device__ __forceinline__ void named_barrier_arrive(int id, int n) {
  asm volatile("bar.arrive %0, %1;\n" ::"r"(id), "r"(n) : "memory");
}

template <int N>
__device__ __forceinline__ void fence_operands(float (&d)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) asm volatile("" : "+f"(d[i])::"memory");
}
template <int N>
__device__ __forceinline__ void fence_operands(uint32_t (&d)[N][4]) {
#pragma unroll
  for (int i = 0; i < N; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) asm volatile("" : "+r"(d[i][j])::"memory");
}
// Several operand arrays at once, in the order given.
template <typename A, typename B, typename... Rest>
__device__ __forceinline__ void fence_operands(A& a, B& b, Rest&... rest) {
  fence_operands(a);
  fence_operands(b, rest...);
}

// The accumulator operand lists of m64nNk16 (N / 2 floats per thread) for the N used here.
#define LLM_WGMMA_D8 "{" "%0, %1, %2, %3, %4, %5, %6, %7" "}"
#define LLM_WGMMA_OUT8(d) \
    "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7])
#define LLM_WGMMA_D16 "{" "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15" "}"
#define LLM_WGMMA_OUT16(d) \
    "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), \
    "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15])
#define LLM_WGMMA_D24 "{" "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15" ", " \
    "%16, %17, %18, %19, %20, %21, %22, %23" "}"
#define LLM_WGMMA_OUT24(d) \
    "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), \
    "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), \
    "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23])
#define LLM_WGMMA_D32 "{" "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15" ", " \
    "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31" "}"
#define LLM_WGMMA_OUT32(d) \
    "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), \
    "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), \
    "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), \
    "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
#define LLM_WGMMA_D40 "{" "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15" ", " \
    "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31" ", " \
    "%32, %33, %34, %35, %36, %37, %38, %39" "}"
#define LLM_WGMMA_OUT40(d) \
    "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), \
    "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), \
    "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), \
    "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), \
    "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39])
#define LLM_WGMMA_D48 "{" "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15" ", " \
    "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31" ", " \
    "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47" "}"
#define LLM_WGMMA_OUT48(d) \
    "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), \
    "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), \
    "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), \
    "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), \
    "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), \
    "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47])
#define LLM_WGMMA_D64 "{" "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15" ", " \
    "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31" ", " \
    "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47" ", " \
    "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63" "}"
#define LLM_WGMMA_OUT64(d) \
    "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), \
    "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), \
    "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), \
    "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), \
    "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), \
    "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), \
    "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), \
    "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])

// d (64 x N, fp32) += A (64 x 16, K-major, shared) * B (16 x N, K-major, shared): "SS".
template <typename T, int N>
__device__ __forceinline__ void wgmma_ss(float (&d)[N / 2], uint64_t a, uint64_t b);
// d (64 x N, fp32) = A * B, the same operands, d's previous values ignored (scale-d 0): the
// first k-step of a product, instead of zeroing the accumulators first.
template <typename T, int N>
__device__ __forceinline__ void wgmma_ss_overwrite(float (&d)[N / 2], uint64_t a, uint64_t b);
// d (64 x N, fp32) += A (64 x 16, K-major, shared) * B (16 x N, MN-major, shared): the SS form
// with B transposed (P^T / dS^T stored, read with dO / Q: the fused backward's dV and dK products
// up to run 15, RS since; kept checked by WgmmaTileProductsAreExact for a stored score tile).
template <typename T, int N>
__device__ __forceinline__ void wgmma_ss_bt(float (&d)[N / 2], uint64_t a, uint64_t b);
// d (64 x N, fp32) += A (64 x 16, MN-major, shared) * B (16 x N, MN-major, shared): both
// transposed (the fused backward's dQ += dS K, dS read from the stored dS^T).
template <typename T, int N>
__device__ __forceinline__ void wgmma_ss_tt(float (&d)[N / 2], uint64_t a, uint64_t b);
// d (64 x N, fp32) += A (64 x 16, registers) * B (16 x N, MN-major, shared): "RS".
template <typename T, int N>
__device__ __forceinline__ void wgmma_rs(float (&d)[N / 2], const uint32_t (&a)[4], uint64_t b);
// d (64 x N, fp32) += / = A (64 x 16, registers) * B (16 x N, K-major, shared): the RS form with
// B as the score products' second operand (the dQ kernel's S = Q K^T and dP = dO V^T with Q and
// dO held in registers, LLM_CUDA_ATTENTION=wgmma-rs); the overwrite form ignores d (scale-d 0).
template <typename T, int N>
__device__ __forceinline__ void wgmma_rs_kb(float (&d)[N / 2], const uint32_t (&a)[4], uint64_t b);
template <typename T, int N>
__device__ __forceinline__ void wgmma_rs_kb_overwrite(float (&d)[N / 2], const uint32_t (&a)[4], uint64_t b);

// The SS form as function FN, with scale-d SCALE_D ("1": d += A B; "0": d = A B) and the
// transpose flags TRANS ("trans-a, trans-b": 0 K-major, 1 MN-major).
#define LLM_WGMMA_SS(FN, SCALE_D, TRANS, TYPE, PTX_TYPE, N, NR, DESC_A, DESC_B)                          \
  template <>                                                                                            \
  __device__ __forceinline__ void FN<TYPE, N>(float (&d)[N / 2], uint64_t a, uint64_t b) {                \
    asm volatile("wgmma.mma_async.sync.aligned.m64n" #N "k16.f32." PTX_TYPE "." PTX_TYPE " "             \
                 LLM_WGMMA_D##NR ", " DESC_A ", " DESC_B ", " SCALE_D ", 1, 1, " TRANS ";\n"              \
                 : LLM_WGMMA_OUT##NR(d)                                                                  \
                 : "l"(a), "l"(b));                                                                      \
  }

// The RS form as function FN, with scale-d SCALE_D and B's transpose flag TRANS_B.
#define LLM_WGMMA_RS(FN, SCALE_D, TRANS_B, TYPE, PTX_TYPE, N, NR, A0, A1, A2, A3, B_RS)                    \
  template <>                                                                                            \
  __device__ __forceinline__ void FN<TYPE, N>(float (&d)[N / 2], const uint32_t (&a)[4], uint64_t b) {     \
    asm volatile("wgmma.mma_async.sync.aligned.m64n" #N "k16.f32." PTX_TYPE "." PTX_TYPE " "             \
                 LLM_WGMMA_D##NR ", {" A0 ", " A1 ", " A2 ", " A3 "}, " B_RS ", " SCALE_D ", 1, 1, " TRANS_B ";\n" \
                 : LLM_WGMMA_OUT##NR(d)                                                                  \
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b));                                  \
  }

#define LLM_WGMMA_DEFINE(TYPE, PTX_TYPE, N, NR, DESC_A, DESC_B, A0, A1, A2, A3, B_RS)                     \
  LLM_WGMMA_SS(wgmma_ss, "1", "0, 0", TYPE, PTX_TYPE, N, NR, DESC_A, DESC_B)                              \
  LLM_WGMMA_SS(wgmma_ss_overwrite, "0", "0, 0", TYPE, PTX_TYPE, N, NR, DESC_A, DESC_B)                    \
  LLM_WGMMA_SS(wgmma_ss_bt, "1", "0, 1", TYPE, PTX_TYPE, N, NR, DESC_A, DESC_B)                           \
  LLM_WGMMA_SS(wgmma_ss_tt, "1", "1, 1", TYPE, PTX_TYPE, N, NR, DESC_A, DESC_B)                           \
  LLM_WGMMA_RS(wgmma_rs, "1", "1", TYPE, PTX_TYPE, N, NR, A0, A1, A2, A3, B_RS)                           \
  LLM_WGMMA_RS(wgmma_rs_kb, "1", "0", TYPE, PTX_TYPE, N, NR, A0, A1, A2, A3, B_RS)                        \
  LLM_WGMMA_RS(wgmma_rs_kb_overwrite, "0", "0", TYPE, PTX_TYPE, N, NR, A0, A1, A2, A3, B_RS)

// N 16 and 32: the fused backward's dQ column slices (dq_split_cols).
LLM_WGMMA_DEFINE(__nv_bfloat16, "bf16", 16, 8, "%8", "%9", "%8", "%9", "%10", "%11", "%12")
LLM_WGMMA_DEFINE(__half, "f16", 16, 8, "%8", "%9", "%8", "%9", "%10", "%11", "%12")
LLM_WGMMA_DEFINE(__nv_bfloat16, "bf16", 32, 16, "%16", "%17", "%16", "%17", "%18", "%19", "%20")
LLM_WGMMA_DEFINE(__half, "f16", 32, 16, "%16", "%17", "%16", "%17", "%18", "%19", "%20")
LLM_WGMMA_DEFINE(__nv_bfloat16, "bf16", 48, 24, "%24", "%25", "%24", "%25", "%26", "%27", "%28")
LLM_WGMMA_DEFINE(__half, "f16", 48, 24, "%24", "%25", "%24", "%25", "%26", "%27", "%28")
LLM_WGMMA_DEFINE(__nv_bfloat16, "bf16", 64, 32, "%32", "%33", "%32", "%33", "%34", "%35", "%36")
LLM_WGMMA_DEFINE(__half, "f16", 64, 32, "%32", "%33", "%32", "%33", "%34", "%35", "%36")
LLM_WGMMA_DEFINE(__nv_bfloat16, "bf16", 80, 40, "%40", "%41", "%40", "%41", "%42", "%43", "%44")
LLM_WGMMA_DEFINE(__half, "f16", 80, 40, "%40", "%41", "%40", "%41", "%42", "%43", "%44")
LLM_WGMMA_DEFINE(__nv_bfloat16, "bf16", 96, 48, "%48", "%49", "%48", "%49", "%50", "%51", "%52")
LLM_WGMMA_DEFINE(__half, "f16", 96, 48, "%48", "%49", "%48", "%49", "%50", "%51", "%52")
LLM_WGMMA_DEFINE(__nv_bfloat16, "bf16", 128, 64, "%64", "%65", "%64", "%65", "%66", "%67", "%68")
LLM_WGMMA_DEFINE(__half, "f16", 128, 64, "%64", "%65", "%64", "%65", "%66", "%67", "%68")

#undef LLM_WGMMA_DEFINE
#undef LLM_WGMMA_SS
#undef LLM_WGMMA_RS
#undef LLM_WGMMA_D8
#undef LLM_WGMMA_OUT8
#undef LLM_WGMMA_D16
#undef LLM_WGMMA_OUT16
#undef LLM_WGMMA_D24
#undef LLM_WGMMA_OUT24
#undef LLM_WGMMA_D32
#undef LLM_WGMMA_OUT32
#undef LLM_WGMMA_D40
#undef LLM_WGMMA_OUT40
#undef LLM_WGMMA_D48
#undef LLM_WGMMA_OUT48
#undef LLM_WGMMA_D64
#undef LLM_WGMMA_OUT64

}  // namespace llm::kernels::sm90a
