// The order in which causal attention's blocks take their work. A causal grid's blocks differ in
// work: a forward query block (or a dQ block) at the end of the sequence visits every key tile, one
// at the start only its own; a dK/dV block at the start visits every query tile. The grids are
// (blocks per head, NH, B), and the GPU starts blocks in linear order (x fastest), so with the
// head on y each head's blocks ran heaviest to lightest and then the next head's: the last head's
// heaviest block started near the end of the kernel and ran alone (run 16's shapes: 3-15% past the
// ideal makespan in tests/backend/block_order_test.cpp's list-scheduling model; 14.5% at the
// training step's hd 128, seq 2048).
//
// heaviest_first hands out work longest first across a group of heads instead (the longest-
// processing-time rule): block lin of a group takes work rank lin / heads_in_group (0 = the
// heaviest) of head lin % heads_in_group. A group holds as many heads as fit a share of L2 (what
// the blocks of one head re-read from L2: K and V in the forward, Q, dO and the fp32 dQ sums in
// the fused backward), so the heads running at once still hit in L2, as when they ran one head
// at a time. The groups are sized evenly (sizes differ by at most one) with the smaller ones
// first, so the last group, whose tail decides the makespan, is never the smallest.
//
// Plain C++ (host and device), checked on the host: a bijection, every group longest first, and
// the makespan of the scheduling model.
#pragma once
#include <cstdint>

#ifdef __CUDACC__
#define LLM_ORDER_HD __host__ __device__ __forceinline__
#else
#define LLM_ORDER_HD inline
#endif

namespace llm::kernels {

// Unsigned, so a kernel's int64 offsets from them are zero-extended (one register each, as
// blockIdx's were).
struct BlockTask {
  uint32_t rank = 0;  // 0 = the heaviest block of its head
  uint32_t head = 0;  // b * NH + h
  LLM_ORDER_HD uint32_t b(int nh) const { return head / unsigned(nh); }
  LLM_ORDER_HD uint32_t h(int nh) const { return head % unsigned(nh); }
};

// The L2 share one group of heads may re-read (H100 and H200: 50 MB of L2), by what the blocks
// re-read: the backward's dK/dV blocks (Q, dO and the fp32 dQ sums) take 32 MiB; the forward and
// dQ blocks (K and V: two products per tile read, against the backward's five) 16, which run 18
// measured on an H100 (the forward at 32 MiB lost up to 5% at 4096 tokens).
constexpr int kBackwardL2MiB = 32, kForwardL2MiB = 16;

// Heads per group: as many as fit share_mib MiB at bytes_per_head, at least one.
LLM_ORDER_HD int heads_per_group(int64_t bytes_per_head, int heads, int share_mib) {
  const int64_t g = bytes_per_head > 0 ? (int64_t(share_mib) << 20) / bytes_per_head : heads;
  return g < 1 ? 1 : g > heads ? heads : static_cast<int>(g);
}

// Block lin (0 .. blocks_per_head * heads - 1, launch order) of a grid whose heads go in groups of
// at most `group` heads.
LLM_ORDER_HD BlockTask heaviest_first(int64_t lin, int blocks_per_head, int heads, int group) {
  const int groups = (heads + group - 1) / group;
  const int small = heads / groups, large_groups = heads % groups, small_groups = groups - large_groups;
  const int64_t small_span = int64_t(small_groups) * small * blocks_per_head;
  int size, first_head;
  int64_t offset;
  if (lin < small_span) {
    const int64_t per = int64_t(small) * blocks_per_head;
    const int g = static_cast<int>(lin / per);
    size = small;
    first_head = g * small;
    offset = lin - g * per;
  } else {
    const int64_t per = int64_t(small + 1) * blocks_per_head, rest = lin - small_span;
    const int g = static_cast<int>(rest / per);
    size = small + 1;
    first_head = small_groups * small + g * (small + 1);
    offset = rest - g * per;
  }
  return {static_cast<uint32_t>(offset / size), static_cast<uint32_t>(first_head + offset % size)};
}

#ifdef __CUDACC__
// This block's task in a (blocks per head, NH, B) grid; bytes_per_head as for heads_per_group.
// order (the attention args' block_order, from LLM_CUDA_BLOCK_ORDER): 0 this kernel's share,
// default_mib; N > 0 a share of N MiB; -1 the launch order, head by head (rank = blockIdx.x).
// The grid registers are read with volatile moves, so a kernel may call this again where it needs
// the task late instead of keeping it in registers (see reread).
__device__ __forceinline__ BlockTask block_task(int64_t bytes_per_head, int order, int default_mib) {
  unsigned x, y, z, nx, ny, nz;
  asm volatile("mov.u32 %0, %%ctaid.x;" : "=r"(x));
  asm volatile("mov.u32 %0, %%ctaid.y;" : "=r"(y));
  asm volatile("mov.u32 %0, %%ctaid.z;" : "=r"(z));
  asm volatile("mov.u32 %0, %%nctaid.x;" : "=r"(nx));
  asm volatile("mov.u32 %0, %%nctaid.y;" : "=r"(ny));
  asm volatile("mov.u32 %0, %%nctaid.z;" : "=r"(nz));
  if (order < 0) return {x, z * ny + y};
  const int heads = static_cast<int>(ny * nz);
  const int64_t lin = x + int64_t(nx) * (y + int64_t(ny) * z);
  return heaviest_first(lin, static_cast<int>(nx), heads,
                        heads_per_group(bytes_per_head, heads, order > 0 ? order : default_mib));
}

// A task kept in shared memory (written once, before the block's first barrier), re-read where a
// register-bound kernel needs it (its epilogue, its key block per tile) instead of keeping it or
// what it derives in registers through the main loop: volatile loads, so the compiler can neither
// hoist them nor keep the values live.
__device__ __forceinline__ BlockTask reread(const BlockTask& shared) {
  const volatile BlockTask& s = shared;
  return {s.rank, s.head};
}

// block_task where kReorder, else the launch order (head by head, rank = blockIdx.x): for a kernel
// with no register to spare for the task (see attention_backward_dkdv_wgmma).
template <bool kReorder>
__device__ __forceinline__ BlockTask block_task_if(int64_t bytes_per_head, int order, int default_mib) {
  if constexpr (kReorder) return block_task(bytes_per_head, order, default_mib);
  else return {blockIdx.x, blockIdx.z * gridDim.y + blockIdx.y};
}
#endif

}  // namespace llm::kernels
