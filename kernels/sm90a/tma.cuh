// Hopper (sm_90a) asynchronous copies and the barriers that track them, for the warp-specialised
// attention forward (attention_wgmma.cu, LLM_CUDA_ATTENTION=wgmma-ws). PTX ISA 8.0+: "Tensor
// copy" (cp.async.bulk.tensor), "mbarrier", "setmaxnreg"; nothing of CUTLASS is used.
//
// TMA. One instruction, issued by one thread, copies a box of a tensor described by a
// CUtensorMap (built on the host: attention_wgmma.cu, make_tile_map) from global to shared
// memory, zero-filling elements outside the tensor, and applies the map's swizzle to the shared
// addresses it writes. A box of W/2 columns (W bytes per row) by R rows under the W-byte swizzle
// lands exactly as one panel of wgmma_layout.h's tiles (tests/backend/wgmma_layout_test.cpp,
// TmaBoxesFillThePanels), so the wgmma descriptors are unchanged.
//
// mbarrier. A 64-bit shared-memory object counting arrivals and transaction bytes per phase: a
// phase completes when its expected arrivals have arrived and its expected bytes (declared by
// arrive_expect_tx) have landed; the TMA copy counts its bytes on the barrier named in the
// instruction. wait(bar, parity) returns once the phase of that parity has completed (phases
// alternate 0, 1, 0, ...; the k-th use of a barrier is phase k, parity k & 1). A waiter can be at
// most one phase behind, which the full/empty pairs of a pipeline guarantee.
#pragma once
#include <cstdint>

#include <cuda.h>  // CUtensorMap

namespace llm::kernels::sm90a {

__device__ __forceinline__ void mbarrier_init(uint32_t bar, uint32_t arrivals) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(arrivals) : "memory");
}
// Makes the initialised barriers visible to the async proxy (TMA) and the other threads; the
// block synchronises after it.
__device__ __forceinline__ void mbarrier_init_fence() {
  asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
}
// One arrival, declaring `bytes` more transaction bytes for the current phase.
__device__ __forceinline__ void mbarrier_arrive_expect_tx(uint32_t bar, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes) : "memory");
}
__device__ __forceinline__ void mbarrier_arrive(uint32_t bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
}
// kWatchdog: a wait of 2^24 tries (each try_wait suspends the thread up to a hardware-chosen
// time limit: seconds in all) ends in a trap, so a pipeline bug (a parity slip, a copy that never
// lands) that stalls the producer becomes a launch failure instead of a hang that eats a GPU
// lease. Only the producer's waits have it: in the consumers, any second exit from the wait
// loop cost hd 96/128 their spare registers (spills and serialised wgmma under -Xptxas=-v).
template <bool kWatchdog = false>
__device__ __forceinline__ void mbarrier_wait(uint32_t bar, uint32_t parity) {
  for (uint32_t tries = 0;; ++tries) {
    uint32_t done;
    asm volatile(
        "{\n"
        ".reg .pred p;\n"
        "mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n"
        "selp.u32 %0, 1, 0, p;\n"
        "}\n"
        : "=r"(done)
        : "r"(bar), "r"(parity)
        : "memory");
    if (done) return;
    if (kWatchdog && tries == (1u << 24)) asm volatile("trap;");
  }
}

// Copies the box at coordinates (c0 innermost .. c3) of the 4-D tensor `map` to shared address
// `dst` (1024-byte aligned for the swizzled layouts), counting its bytes on barrier `bar`.
__device__ __forceinline__ void tma_load_4d(uint32_t dst, const CUtensorMap* map, int c0, int c1, int c2, int c3,
                                            uint32_t bar) {
  asm volatile(
      "cp.async.bulk.tensor.4d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3, %4, %5}], [%6];\n"
      ::"r"(dst), "l"(reinterpret_cast<uint64_t>(map)), "r"(c0), "r"(c1), "r"(c2), "r"(c3), "r"(bar)
      : "memory");
}

// Adds the box at shared address `src` (laid out as a load of the same box would land) into the
// 4-D tensor `map` at coordinates (c0 innermost .. c3), element-wise, in the map's type (TMA
// reduction: fp32 add at L2; elements outside the tensor are skipped). Tracked by bulk groups:
// tma_commit_group closes the group, tma_wait_group_read<N> returns once all but N groups have
// finished reading shared memory (the source may be overwritten), tma_wait_group<N> once they
// have completed. The writers of `src` fence their stores for the async proxy
// (fence.proxy.async.shared::cta) before the issuing thread learns of them.
__device__ __forceinline__ void tma_reduce_add_4d(uint32_t src, const CUtensorMap* map, int c0, int c1, int c2, int c3) {
  asm volatile(
      "cp.reduce.async.bulk.tensor.4d.global.shared::cta.add.tile.bulk_group [%0, {%1, %2, %3, %4}], [%5];\n"
      ::"l"(reinterpret_cast<uint64_t>(map)), "r"(c0), "r"(c1), "r"(c2), "r"(c3), "r"(src)
      : "memory");
}
__device__ __forceinline__ void tma_commit_group() { asm volatile("cp.async.bulk.commit_group;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void tma_wait_group_read() {
  asm volatile("cp.async.bulk.wait_group.read %0;\n" ::"n"(N) : "memory");
}
template <int N>
__device__ __forceinline__ void tma_wait_group() {
  asm volatile("cp.async.bulk.wait_group %0;\n" ::"n"(N) : "memory");
}

// The warpgroup's register budget per thread from here on (every warp of the warpgroup executes
// it): a producer warpgroup gives registers back, consumers take them. The kernel must declare
// its block size and one block per SM (__launch_bounds__(threads, 1)), or ptxas ignores these
// (an info line, C7508, under -Xptxas=-v; not an error: check the build log when changing it).
template <int N>
__device__ __forceinline__ void setmaxnreg_dec() {
  asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(N));
}
template <int N>
__device__ __forceinline__ void setmaxnreg_inc() {
  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(N));
}

}  // namespace llm::kernels::sm90a
