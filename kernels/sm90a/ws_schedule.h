// The synchronisation schedule of the warp-specialised attention forward (attention_wgmma.cu,
// LLM_CUDA_ATTENTION=wgmma-ws / wgmma-ws-pp), and the stage ring of the pipelined backward
// (PipeRing, at the end), as plain arithmetic that host code can call too:
// tests/backend/ws_schedule_test.cpp runs the producer and both consumers against a model of
// mbarriers and named barriers, in many random interleavings, with the kernel's order of waits
// and arrivals, and checks that nothing deadlocks, that every tile is read only after its copy
// landed and overwritten only after both consumers released it, and that no barrier is left
// half-arrived. A GPU run then only has to confirm the hardware semantics.
//
// The ring: key tile j's K and V live in stage j % kStages. Each stage has a "full" barrier per
// operand (completes when the copy's bytes landed) and an "empty" one (completes when both
// consumer warpgroups released it). The u-th use of a stage (u = j / kStages) is phase u of its
// barriers; mbarrier.try_wait.parity(p) returns once the phase of parity p has completed, so a
// consumer waits for tile j with parity full_parity(j), and the producer, before copying tile j
// into a stage used before (needs_free(j)), waits for the previous use's release with
// free_parity(j).
//
// Ping-pong (wgmma-ws-pp): consumer c issues its products after a bar.sync on named barrier
// barrier(c) and arrives at the next consumer's barrier after issuing; the last consumer arrives
// once at consumer 0's barrier before its first issue (consumer 0 goes first), and skips its
// arrival after its last issue, so each barrier sees exactly as many arrivals as syncs.
#pragma once
#include <cstdint>

#ifdef __CUDACC__
#define LLM_WS_HD __host__ __device__ __forceinline__
#else
#define LLM_WS_HD inline
#endif

namespace llm::kernels::sm90a {

struct WsRing {
  static constexpr int kStages = 2;
  LLM_WS_HD static int stage(int tile) { return tile % kStages; }
  LLM_WS_HD static uint32_t full_parity(int tile) { return uint32_t(tile / kStages) & 1u; }
  LLM_WS_HD static bool needs_free(int tile) { return tile >= kStages; }
  LLM_WS_HD static uint32_t free_parity(int tile) { return uint32_t(tile / kStages - 1) & 1u; }
};

// Ping-pong over `consumers` warpgroups (two, or three in the 192-row forward): a ring, consumer c
// issuing after c - 1 (mod consumers); the last one arrives first and skips its last arrival.
struct WsPingPong {
  LLM_WS_HD static int barrier(int consumer) { return 2 + consumer; }  // 0: __syncthreads, 1: wgmma-pp
  LLM_WS_HD static int next_barrier(int consumer, int consumers) { return 2 + (consumer + 1) % consumers; }
  LLM_WS_HD static bool arrives_first(int consumer, int consumers) { return consumer == consumers - 1; }
  LLM_WS_HD static bool arrives_after_issue(int consumer, bool last_issue, int consumers) {
    return !(last_issue && consumer == consumers - 1);
  }
};

// The software-pipelined seven-product backward (attention_wgmma.cu, kPipelined: the dK/dV
// kernel's Q/dO tiles, the dQ kernel's K/V tiles; no warp specialisation, cp.async copies): tile
// i lives in stage i % kStages. The prologue copies tiles 0 .. kStages - 2 and issues tile 0's
// score products. Iteration it (0 .. tiles - 2) passes a block barrier (every warp has waited for
// iteration it - 1's products), copies tile prefetch(it) if there is one, waits until tile it + 1
// has landed, then issues tile it + 1's score products and tile it's gradient products and waits
// for both; after the loop, the last tile's gradient products. tests/backend/ws_schedule_test.cpp
// (PipeSchedule.*) replays that order against a model of the stages.
struct PipeRing {
  static constexpr int kStages = 3;
  LLM_WS_HD static int stage(int64_t tile) { return int(tile % kStages); }
  LLM_WS_HD static int64_t prefetch(int64_t it) { return it + kStages - 1; }
};

// The pipelined fused backward (wgmma-atomic up to hd 64) on top of that ring: each warpgroup
// stores its 64 rows of query tile i's dS^T into score tile buffer(i), and tile i's dQ product of
// each warpgroup reads both warpgroups' rows of it (dQ's columns are split, its keys are not).
// Warpgroup order per iteration it: [block barrier] issue tile it's products (dQ reads buffer(it)),
// wait for them, store tile it + 1's rows into buffer(it + 1); tile 0's rows are stored before the
// loop, and a barrier precedes the last tile's products. PipeSchedule.TheFusedScoreTiles* replays
// that for two warpgroups in random interleavings between the barriers.
struct ScoreTilePair {
  static constexpr int kBuffers = 2;
  LLM_WS_HD static int buffer(int64_t tile) { return int(tile % kBuffers); }
};

// The warp-specialised backward's dQ through shared memory (LLM_CUDA_ATTENTION=wgmma-ws-tma,
// FlashAttention-3's dQ path): per query tile both consumers store their dQ fragments into one
// staging tile and arrive on its "full" barrier (256 arrivals); one producer thread waits for it,
// issues the TMA reductions that add the tile into the fp32 accumulator, waits until they have
// read the staging tile, and arrives on its "empty" barrier (1 arrival), which the consumers wait
// for before storing the next tile's fragments. One buffer: the next store comes a whole tile of
// products later. Tile i is phase i of both barriers. WsSchedule.TheDqStaging* replays it.
struct WsDqStage {
  LLM_WS_HD static uint32_t full_parity(int tile) { return uint32_t(tile) & 1u; }
  LLM_WS_HD static bool needs_empty(int tile) { return tile >= 1; }
  LLM_WS_HD static uint32_t empty_parity(int tile) { return uint32_t(tile - 1) & 1u; }
};

// The warp-specialised atomic backward's fused dQ conversion (LLM_CUDA_DQ_CONVERT=fused,
// attention_wgmma.cu kConvert): the block of keys j0 .. j0 + 127 visits the query tiles of BR
// rows from i0 = j0 on (query_tiles), adding its dQ sums into the fp32 accumulator; the tile at i0
// receives them from the key blocks at or before it, contributors(i0) blocks in all. Per tile,
// both consumer warpgroups arrive on a "done" barrier after their adds (256 arrivals); warp 1 of
// the producer waits for it, counts the block's contribution in the tile's global counter
// (count_index: one per 64 rows of each head, count_stride of them), and arrives on the matching
// "free" barrier (1 arrival); the block whose count completes the tile converts it into dqkv. The
// done/free pairs form a ring of WsRing's shape: tile it signals in slot WsRing::stage(it), the
// converter waits for done with WsRing::full_parity(it), and a consumer arrives for tile it only
// after the converter freed tile it - WsRing::kStages's slot (WsRing::needs_free, free_parity), so
// the converter is never more than one phase behind a barrier. WsSchedule.TheDqSignal* replays
// it; WsDqCount.* checks the counts against the loop bounds.
struct WsDqSignal {
  // The query tiles of BR rows the key block at j0 visits in a sequence of T (from i0 = j0).
  LLM_WS_HD static int query_tiles(int64_t T, int64_t j0, int BR) { return int((T - j0 + BR - 1) / BR); }
  // The key blocks (128 keys each) that add into the query tile at i0: those at j0 <= i0.
  LLM_WS_HD static int contributors(int64_t i0) { return int(i0 / 128) + 1; }
  LLM_WS_HD static int64_t count_stride(int64_t T) { return (T + 63) / 64; }
  LLM_WS_HD static int64_t count_index(int64_t i0) { return i0 / 64; }
  LLM_WS_HD static int64_t counters(int64_t B, int64_t NH, int64_t T) { return B * NH * count_stride(T); }
};

}  // namespace llm::kernels::sm90a

#undef LLM_WS_HD
