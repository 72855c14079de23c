// Warp-level tensor-core helpers (sm_80+): mma.sync m16n8k16 with fp32 accumulators and
// ldmatrix fragment loads. Fragment layouts (PTX ISA, "Matrix fragments for mma.m16n8k16"),
// with g = lane / 4 and t = lane % 4:
//   A 16x16 (row-major): a0 (row g, cols 2t..2t+1), a1 (row g+8, same cols),
//                        a2 (row g, cols 2t+8..2t+9), a3 (row g+8, cols 2t+8..)
//   B 16x8 (k x n, "col"): b0 (k 2t..2t+1, col g), b1 (k 2t+8..2t+9, col g)
//   C 16x8 f32:            c0, c1 (row g, cols 2t, 2t+1), c2, c3 (row g+8, same cols)
// so the C fragments of two adjacent n-blocks are exactly an A fragment of the next product
// once packed to 16-bit pairs (FlashAttention-2's P stays in registers).
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

namespace llm::kernels {

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* smem) {
  const uint32_t a = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(a));
}

__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void* smem) {
  const uint32_t a = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(a));
}

// Asynchronous global -> shared copies (cp.async, sm_80+). A copy with valid == false reads
// nothing and writes zeros (src-size 0), so tiles past the sequence end need no branch; `gmem`
// must still be a valid address. Copies are grouped by cp_async_commit(); cp_async_wait<N>()
// returns once at most N of this thread's groups are in flight, and a __syncthreads() after it
// makes every thread's copies visible to the block.
__device__ __forceinline__ void cp_async_16(void* smem, const void* gmem, bool valid) {
  const uint32_t s = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem), "r"(valid ? 16 : 0) : "memory");
}
__device__ __forceinline__ void cp_async_4(void* smem, const void* gmem, bool valid) {
  const uint32_t s = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(s), "l"(gmem), "r"(valid ? 4 : 0) : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

// Issues the cp.async copies of R rows of CH 16-byte chunks (rows `row_stride` elements apart
// from src) by NT threads, chunk c of row r to byte offset(r, c) from dst; rows at or past `valid`
// are zero-filled (src itself must be addressable). The layouts: PaddedRows below, and the
// swizzled panels of sm90a/wgmma_layout.h. Unrolled over the compile-time chunk count, with
// unsigned indices, so the row and column of each chunk fold to the thread's first plus
// constants where NT is a multiple of CH.
template <int NT, int CH, int R, typename T, typename Offset>
__device__ __forceinline__ void copy_tile_async(void* dst, const T* src, int64_t row_stride, int64_t valid,
                                                Offset offset) {
  constexpr unsigned N = unsigned(R) * CH;
#pragma unroll
  for (unsigned k = 0; k < (N + NT - 1) / NT; ++k) {
    const unsigned idx = threadIdx.x + k * NT;
    if (N % NT != 0 && idx >= N) break;
    const int r = int(idx / CH), c = int(idx % CH);
    const bool ok = r < valid;
    cp_async_16(static_cast<unsigned char*>(dst) + offset(r, c), src + (ok ? r : 0) * row_stride + c * 8, ok);
  }
}
// Rows of LD elements of T (the mma.sync kernels pad rows by 16 bytes: conflict-free ldmatrix).
template <typename T, int LD>
struct PaddedRows {
  __device__ __forceinline__ int operator()(int r, int c) const { return (r * LD + c * 8) * int(sizeof(T)); }
};

// The top of a double-buffered tile loop: once every warp is done with the buffer the next copy
// overwrites (the last tile's), issue(next) copies tile `next` (when there is one) as its own
// group, then the current tile's group is waited for and made visible to the block. Called by
// every thread at each tile index `cur` of [0, tiles). kAsyncProxy (sm_90 wgmma kernels only):
// the landed copies are also fenced for the async proxy, through which wgmma reads shared memory.
template <bool kAsyncProxy = false, typename F>
__device__ __forceinline__ void next_tile(int64_t cur, int64_t tiles, F&& issue) {
  __syncthreads();
  if (cur + 1 < tiles) {
    issue(cur + 1);
    cp_async_commit();
    cp_async_wait<1>();  // tile cur has landed; cur + 1 stays in flight
  } else {
    cp_async_wait<0>();
  }
  if constexpr (kAsyncProxy) asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
  __syncthreads();
}

// d += a * b for 16-bit inputs of type T (bf16 or f16).
template <typename T>
__device__ __forceinline__ void mma_16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1);

template <>
__device__ __forceinline__ void mma_16816<__nv_bfloat16>(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

template <>
__device__ __forceinline__ void mma_16816<__half>(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Two floats as one 32-bit register of 16-bit values (lo at the lower column).
template <typename T> __device__ __forceinline__ uint32_t pack2(float lo, float hi);
template <> __device__ __forceinline__ uint32_t pack2<__nv_bfloat16>(float lo, float hi) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&v);
}
template <> __device__ __forceinline__ uint32_t pack2<__half>(float lo, float hi) {
  const __half2 v = __floats2half2_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&v);
}

}  // namespace llm::kernels
