// The warp-specialised attention forward's synchronisation (kernels/sm90a/ws_schedule.h, used by
// attention_forward_wgmma_ws), run on the host against a model of the hardware objects it uses:
//   * mbarrier: an expected arrival count and pending transaction bytes per phase; a phase
//     completes when both reach zero; try_wait.parity(p) succeeds once the current phase's
//     parity differs from p (PTX ISA, "mbarrier.test_wait/try_wait");
//   * TMA copies: land at an arbitrary later time, writing their tile into the buffer and
//     counting their bytes on the barrier;
//   * named barriers (bar.sync / bar.arrive over 256 threads): a generation completes at 256
//     arrivals and releases its waiting syncers.
// The producer and the two consumer warpgroups issue the kernel's waits, arrivals and copies in
// the kernel's order (each warpgroup's 128 threads as one agent arriving 128 times), and a random
// scheduler interleaves them and the copies. Checked for every interleaving: no deadlock; a
// consumer's wait returns exactly when its tile's copy landed in the stage (not an older or a
// newer tile); no copy lands in a buffer a consumer is still reading; no barrier is left with
// arrivals or waiters at the end.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "sm90a/ws_schedule.h"

namespace {

using llm::kernels::sm90a::WsDqSignal;
using llm::kernels::sm90a::WsDqStage;
using llm::kernels::sm90a::WsPingPong;
using llm::kernels::sm90a::WsRing;

constexpr int kWarpgroup = 128, kBytes = 1000;

struct MBarrier {
  int expected = 0, arrivals = 0, tx = 0, completed = 0;  // completed: phases so far
  void init(int count) { expected = count, arrivals = count; }
  void maybe_complete() {
    if (arrivals == 0 && tx == 0) ++completed, arrivals = expected;
  }
  bool ready(uint32_t parity) const { return uint32_t(completed & 1) != parity; }
};

struct NamedBarrier {
  int arrived = 0, generation = 0;
};

// Buffers: Q (one), K and V per stage; the tile each holds (-1: none yet) and its readers.
// kDq0, kDq1: the two consumers' halves of the backward's dQ staging tile (wgmma-ws-tma).
enum Buf { kQ, kK0, kK1, kV0, kV1, kDq0, kDq1, kBufs };
Buf k_buf(int stage) { return stage == 0 ? kK0 : kK1; }
Buf v_buf(int stage) { return stage == 0 ? kV0 : kV1; }

// Barriers: Q full; K full, V full, K empty, V empty per stage.
// kDqDone0/1, kDqFree0/1: the fused dQ conversion's signal slots (WsDqSignal).
enum Bar {
  kQFull, kKFull0, kKFull1, kVFull0, kVFull1, kKEmpty0, kKEmpty1, kVEmpty0, kVEmpty1, kDqFull, kDqEmpty,
  kDqDone0, kDqDone1, kDqFree0, kDqFree1, kBars
};
Bar dq_done(int slot) { return slot == 0 ? kDqDone0 : kDqDone1; }
Bar dq_free(int slot) { return slot == 0 ? kDqFree0 : kDqFree1; }
Bar k_full(int s) { return s == 0 ? kKFull0 : kKFull1; }
Bar v_full(int s) { return s == 0 ? kVFull0 : kVFull1; }
Bar k_empty(int s) { return s == 0 ? kKEmpty0 : kKEmpty1; }
Bar v_empty(int s) { return s == 0 ? kVEmpty0 : kVEmpty1; }

struct Op {
  enum Kind { kWait, kExpectTx, kCopy, kSync, kNamedArrive, kRelease, kArrive, kStore } kind;
  int bar = 0;           // mbarrier or named barrier
  uint32_t parity = 0;   // kWait
  int count = 0;         // kExpectTx: bytes; kRelease, kArrive: arrivals
  Buf buf = kQ;          // kWait (then read) / kCopy / kRelease / kStore (threads write it)
  int tile = -1;         // kWait: the tile the wait must deliver; kCopy, kStore: the tile written
  int phase = -1;        // kWait: the phase it waits for (completed must be phase + 1 on return)
};

struct World {
  MBarrier mb[kBars];
  NamedBarrier nb[5];
  int holds[kBufs], readers[kBufs];
  struct Copy {
    Buf buf;
    int tile, bar;
  };
  std::vector<Copy> in_flight;
  std::string error;
  // k_full_arrivals: the arrivals a K-full barrier expects (the backward's Q/dO-full barriers
  // take the TMA thread's expect_tx and the 32 lanes that stored lse and D).
  explicit World(int k_full_arrivals = 1, int consumers = 2, int dq_full_arrivals = 2 * kWarpgroup) {
    for (int b = 0; b < kBufs; ++b) holds[b] = -1, readers[b] = 0;
    mb[kQFull].init(1);
    mb[kDqFull].init(dq_full_arrivals), mb[kDqEmpty].init(1);
    for (int s = 0; s < 2; ++s) mb[dq_done(s)].init(2 * kWarpgroup), mb[dq_free(s)].init(1);
    for (int s = 0; s < 2; ++s) {
      mb[k_full(s)].init(k_full_arrivals), mb[v_full(s)].init(1);
      mb[k_empty(s)].init(consumers * kWarpgroup), mb[v_empty(s)].init(consumers * kWarpgroup);
    }
  }
};

// The producer's program (thread 0 of warpgroup 0), as attention_forward_wgmma_ws issues it.
std::vector<Op> producer_program(int tiles) {
  std::vector<Op> p;
  p.push_back({Op::kExpectTx, kQFull, 0, kBytes});
  p.push_back({Op::kCopy, kQFull, 0, 0, kQ, 0});
  for (int jt = 0; jt < tiles; ++jt) {
    const int st = WsRing::stage(jt);
    if (WsRing::needs_free(jt)) p.push_back({Op::kWait, k_empty(st), WsRing::free_parity(jt), 0, kQ, -1, jt / 2 - 1});
    p.push_back({Op::kExpectTx, k_full(st), 0, kBytes});
    p.push_back({Op::kCopy, k_full(st), 0, 0, k_buf(st), jt});
    if (WsRing::needs_free(jt)) p.push_back({Op::kWait, v_empty(st), WsRing::free_parity(jt), 0, kQ, -1, jt / 2 - 1});
    p.push_back({Op::kExpectTx, v_full(st), 0, kBytes});
    p.push_back({Op::kCopy, v_full(st), 0, 0, v_buf(st), jt});
  }
  return p;
}

// Consumer warpgroup cw's program: the kernel's waits (each returning with its buffer read until
// the matching release), ping-pong syncs and arrivals, and releases.
std::vector<Op> consumer_program(int cw, int tiles, bool ping_pong, int consumers = 2) {
  std::vector<Op> p;
  const auto wait = [&](int bar, uint32_t parity, Buf buf, int tile, int phase) {
    p.push_back({Op::kWait, bar, parity, 0, buf, tile, phase});
  };
  const auto release = [&](int bar, Buf buf) { p.push_back({Op::kRelease, bar, 0, kWarpgroup, buf}); };
  const auto issue_begin = [&] {
    if (ping_pong) p.push_back({Op::kSync, WsPingPong::barrier(cw)});
  };
  const auto issue_end = [&](bool last) {
    if (ping_pong && WsPingPong::arrives_after_issue(cw, last, consumers))
      p.push_back({Op::kNamedArrive, WsPingPong::next_barrier(cw, consumers)});
  };
  if (ping_pong && WsPingPong::arrives_first(cw, consumers))
    p.push_back({Op::kNamedArrive, WsPingPong::next_barrier(cw, consumers)});
  wait(kQFull, 0, kQ, 0, 0);
  wait(k_full(WsRing::stage(0)), WsRing::full_parity(0), k_buf(0), 0, 0);
  issue_begin();
  issue_end(false);
  release(k_empty(WsRing::stage(0)), k_buf(WsRing::stage(0)));
  for (int jt = 1; jt < tiles; ++jt) {
    const int st = WsRing::stage(jt), prev = WsRing::stage(jt - 1);
    wait(k_full(st), WsRing::full_parity(jt), k_buf(st), jt, jt / 2);
    wait(v_full(prev), WsRing::full_parity(jt - 1), v_buf(prev), jt - 1, (jt - 1) / 2);
    issue_begin();
    issue_end(false);
    release(k_empty(st), k_buf(st));
    release(v_empty(prev), v_buf(prev));
  }
  const int last = tiles - 1;
  wait(v_full(WsRing::stage(last)), WsRing::full_parity(last), v_buf(WsRing::stage(last)), last, last / 2);
  issue_begin();
  issue_end(true);
  return p;
}

struct Agent {
  std::vector<Op> program;
  size_t pc = 0;
  int sync_generation = -1;  // waiting in a bar.sync of this generation
  std::vector<Buf> reading;
  bool done() const { return pc == program.size(); }
};

// Tries to run the agent's next op; false when it is blocked.
bool step(World& w, Agent& a) {
  const Op& op = a.program[a.pc];
  switch (op.kind) {
    case Op::kWait: {
      const MBarrier& b = w.mb[op.bar];
      if (!b.ready(op.parity)) return false;
      if (b.completed != op.phase + 1)
        w.error = "a wait on barrier " + std::to_string(op.bar) + " for phase " + std::to_string(op.phase) +
                  " returned with " + std::to_string(b.completed) + " phases completed";
      if (op.tile >= 0) {
        if (w.holds[op.buf] != op.tile)
          w.error = "a wait for tile " + std::to_string(op.tile) + " found buffer " + std::to_string(op.buf) +
                    " holding tile " + std::to_string(w.holds[op.buf]);
        ++w.readers[op.buf];
        a.reading.push_back(op.buf);
      }
      break;
    }
    case Op::kExpectTx:
      w.mb[op.bar].tx += op.count;
      w.mb[op.bar].arrivals -= 1;
      w.mb[op.bar].maybe_complete();
      break;
    case Op::kCopy:
      w.in_flight.push_back({op.buf, op.tile, op.bar});
      break;
    case Op::kRelease:
      --w.readers[op.buf];
      w.mb[op.bar].arrivals -= op.count;
      if (w.mb[op.bar].arrivals < 0) w.error = "barrier " + std::to_string(op.bar) + " over-arrived";
      w.mb[op.bar].maybe_complete();
      break;
    case Op::kArrive:
      w.mb[op.bar].arrivals -= op.count;
      if (w.mb[op.bar].arrivals < 0) w.error = "barrier " + std::to_string(op.bar) + " over-arrived";
      w.mb[op.bar].maybe_complete();
      break;
    case Op::kSync: {
      NamedBarrier& n = w.nb[op.bar];
      if (a.sync_generation < 0) {  // arrive, then wait for the generation to complete
        a.sync_generation = n.generation;
        n.arrived += kWarpgroup;
        if (n.arrived == 2 * kWarpgroup) n.arrived = 0, ++n.generation;
      }
      if (n.generation == a.sync_generation) return false;
      a.sync_generation = -1;
      break;
    }
    case Op::kNamedArrive: {
      NamedBarrier& n = w.nb[op.bar];
      n.arrived += kWarpgroup;
      if (n.arrived == 2 * kWarpgroup) n.arrived = 0, ++n.generation;
      break;
    }
    case Op::kStore:
      if (w.readers[op.buf] > 0)
        w.error = "tile " + std::to_string(op.tile) + " stored into buffer " + std::to_string(op.buf) +
                  " while it was read";
      w.holds[op.buf] = op.tile;
      break;
  }
  ++a.pc;
  return true;
}

// Lands copy i: the buffer must have no reader.
void land(World& w, size_t i) {
  const World::Copy c = w.in_flight[i];
  w.in_flight.erase(w.in_flight.begin() + long(i));
  if (w.readers[c.buf] > 0)
    w.error = "tile " + std::to_string(c.tile) + " landed in buffer " + std::to_string(c.buf) + " while it was read";
  w.holds[c.buf] = c.tile;
  w.mb[c.bar].tx -= kBytes;
  w.mb[c.bar].maybe_complete();
}

// The programs of the producer and the consumers (two, or the 192-row forward's three).
std::vector<Agent> kernel_agents(int tiles, bool ping_pong, int consumers = 2) {
  std::vector<Agent> agents(size_t(1 + consumers));
  agents[0].program = producer_program(tiles);
  for (int c = 0; c < consumers; ++c) agents[size_t(1 + c)].program = consumer_program(c, tiles, ping_pong, consumers);
  return agents;
}

// One random interleaving of the agents and their copies; "" when every check held.
// consumers: the consumer warpgroups among the agents (all but the first unless given); dq_full:
// the arrivals the dQ staging's full barrier expects; slow: an agent that only steps when nothing
// else can (a warp starved of issue slots, or busy converting a tile), -1 for none.
std::string run(std::vector<Agent> agents, uint64_t seed, int k_full_arrivals = 1, int consumers = -1,
                int dq_full = 2 * kWarpgroup, int slow = -1) {
  const int n_agents = int(agents.size());
  World w(k_full_arrivals, consumers > 0 ? consumers : n_agents - 1, dq_full);
  std::mt19937_64 rng(seed);
  for (int steps = 0; steps < 100000; ++steps) {
    if (!w.error.empty()) return w.error;
    bool all_done = w.in_flight.empty();
    for (const Agent& a : agents) all_done = all_done && a.done();
    if (all_done) break;
    // Candidates: each unfinished agent, and each copy in flight; tried in a random order until
    // one makes progress.
    std::vector<int> order;
    for (int i = 0; i < n_agents; ++i)
      if (!agents[size_t(i)].done()) order.push_back(i);
    for (size_t i = 0; i < w.in_flight.size(); ++i) order.push_back(100 + int(i));
    std::shuffle(order.begin(), order.end(), rng);
    std::stable_partition(order.begin(), order.end(), [slow](int who) { return who != slow; });
    bool progressed = false;
    for (int who : order) {
      if (who >= 100) {
        land(w, size_t(who - 100));
        progressed = true;
      } else {
        progressed = step(w, agents[size_t(who)]);
      }
      if (progressed) break;
    }
    if (!progressed) {
      std::string where;
      for (int i = 0; i < n_agents; ++i)
        where += " agent " + std::to_string(i) + " at op " + std::to_string(agents[size_t(i)].pc);
      return "deadlock:" + where;
    }
  }
  if (!w.error.empty()) return w.error;
  for (int i = 0; i < n_agents; ++i)
    if (!agents[size_t(i)].done()) return "agent " + std::to_string(i) + " did not finish";
  for (int n = 1; n < 5; ++n)
    if (w.nb[n].arrived != 0) return "named barrier " + std::to_string(n) + " left with arrivals";
  return "";
}

TEST(WsSchedule, EveryInterleavingDeliversEachTileOnceAndEndsClean) {
  for (int consumers : {2, 3})
    for (bool ping_pong : {false, true})
      for (int tiles = 1; tiles <= 7; ++tiles)
        for (uint64_t seed = 0; seed < 300; ++seed) {
          const std::string e = run(kernel_agents(tiles, ping_pong, consumers), seed * 7919 + uint64_t(tiles));
          ASSERT_EQ(e, "") << consumers << " consumers, tiles " << tiles << (ping_pong ? ", ping-pong" : "") << ", seed "
                           << seed;
        }
}

// The ring of three: consumers issue in the order 0, 1, 2, 0, ... (each sync of a consumer needs
// its predecessor's arrival), and the model catches a ring that skips the last consumer's
// initial arrival (deadlock) or lets it arrive after its last issue (a barrier left half-arrived).
TEST(WsSchedule, TheThreeConsumerRingDeadlocksOrLeaksWhenItsArrivalsSlip) {
  const auto fails = [](auto mutate) {
    for (uint64_t seed = 0; seed < 300; ++seed) {
      std::vector<Agent> agents = kernel_agents(4, true, 3);
      mutate(agents);
      if (!run(agents, seed).empty()) return true;
    }
    return false;
  };
  EXPECT_FALSE(fails([](std::vector<Agent>&) {}));
  EXPECT_TRUE(fails([](std::vector<Agent>& a) {  // consumer 2 does not arrive ahead of the loop
    for (size_t i = 0; i < a[3].program.size(); ++i)
      if (a[3].program[i].kind == Op::kNamedArrive) {
        a[3].program.erase(a[3].program.begin() + long(i));
        break;
      }
  }));
  EXPECT_TRUE(fails([](std::vector<Agent>& a) { a[3].program.push_back({Op::kNamedArrive, WsPingPong::next_barrier(2, 3)}); }));
}

// The model catches the faults it is there for, in some interleaving: a producer that does not
// wait for the stages' release, a consumer waiting with the wrong parity, a consumer arriving at
// the other's ping-pong barrier once too often.
TEST(WsSchedule, TheModelCatchesParityReleaseAndArrivalSlips) {
  const auto fails = [](auto mutate) {
    for (uint64_t seed = 0; seed < 300; ++seed) {
      std::vector<Agent> agents = kernel_agents(5, true);
      mutate(agents);
      if (!run(agents, seed).empty()) return true;
    }
    return false;
  };
  EXPECT_TRUE(fails([](std::vector<Agent>& a) {
    std::vector<Op> p;
    for (const Op& op : a[0].program)
      if (op.kind != Op::kWait) p.push_back(op);
    a[0].program = p;
  }));
  EXPECT_TRUE(fails([](std::vector<Agent>& a) {
    for (Op& op : a[1].program)
      if (op.kind == Op::kWait && op.tile == 2 && op.buf == kK0) op.parity ^= 1u;
  }));
  EXPECT_TRUE(fails([](std::vector<Agent>& a) {
    for (Op& op : a[2].program)
      if (op.kind == Op::kWait && op.tile == 3 && op.buf == kV1) op.parity ^= 1u;
  }));
  EXPECT_TRUE(fails([](std::vector<Agent>& a) { a[2].program.push_back({Op::kNamedArrive, WsPingPong::next_barrier(1, 2)}); }));
  EXPECT_TRUE(fails([](std::vector<Agent>& a) {  // consumer 0 does not let consumer 1 go after its first issue
    for (size_t i = 0; i < a[1].program.size(); ++i)
      if (a[1].program[i].kind == Op::kNamedArrive) {
        a[1].program.erase(a[1].program.begin() + long(i));
        break;
      }
  }));
}


// The warp-specialised backward (attention_backward_wgmma_ws), on the same model with its
// barriers in the forward's slots: K and V (copied once) in buffer kQ under barrier kQFull; the
// Q/dO tile of stage s in buffer k_buf(s), full barrier k_full(s) (the TMA thread's expect_tx,
// then 32 arrivals of the lanes that stored lse and D: 33 expected), empty barrier k_empty(s)
// (256 consumer arrivals). Each consumer publishes its dS^T rows on named barrier 1 before its
// dQ product, then releases the stage.
constexpr int kBwdFullArrivals = 1 + 32;

std::vector<Op> backward_producer_program(int tiles) {
  std::vector<Op> p;
  p.push_back({Op::kExpectTx, kQFull, 0, kBytes});
  p.push_back({Op::kCopy, kQFull, 0, 0, kQ, 0});
  for (int it = 0; it < tiles; ++it) {
    const int st = WsRing::stage(it);
    if (WsRing::needs_free(it)) p.push_back({Op::kWait, k_empty(st), WsRing::free_parity(it), 0, kQ, -1, it / 2 - 1});
    p.push_back({Op::kExpectTx, k_full(st), 0, kBytes});
    p.push_back({Op::kCopy, k_full(st), 0, 0, k_buf(st), it});
    p.push_back({Op::kArrive, k_full(st), 0, 32});
  }
  return p;
}

// tma_dq (wgmma-ws-tma): after releasing the stage, consumer cw waits until the staging tile's
// previous reduction has read it (WsDqStage), stores its half and arrives on the full barrier.
// convert (LLM_CUDA_DQ_CONVERT=fused): after its adds, consumer cw waits until the conversion warp
// took the signal of tile it - 2 from the slot, and arrives on the slot's done barrier.
std::vector<Op> backward_consumer_program(int tiles, int cw = 0, bool tma_dq = false, bool convert = false) {
  std::vector<Op> p;
  p.push_back({Op::kWait, kQFull, 0, 0, kQ, 0, 0});  // K and V: read to the end
  const Buf half = cw == 0 ? kDq0 : kDq1;
  for (int it = 0; it < tiles; ++it) {
    const int st = WsRing::stage(it);
    p.push_back({Op::kWait, k_full(st), WsRing::full_parity(it), 0, k_buf(st), it, it / 2});
    p.push_back({Op::kSync, 1});
    p.push_back({Op::kRelease, k_empty(st), 0, kWarpgroup, k_buf(st)});
    if (tma_dq) {
      if (WsDqStage::needs_empty(it)) p.push_back({Op::kWait, kDqEmpty, WsDqStage::empty_parity(it), 0, kQ, -1, it - 1});
      p.push_back({Op::kStore, kDqFull, 0, 0, half, it});
      p.push_back({Op::kArrive, kDqFull, 0, kWarpgroup});
    }
    if (convert) {
      const int slot = WsRing::stage(it);
      if (WsRing::needs_free(it))
        p.push_back({Op::kWait, dq_free(slot), WsRing::free_parity(it), 0, kQ, -1, it / 2 - 1});
      p.push_back({Op::kArrive, dq_done(slot), 0, kWarpgroup});
    }
  }
  return p;
}

// The conversion warp (the fused conversion): per tile, wait until both consumers' adds are
// signalled in the tile's slot (the wait's phase check catches a consumer a whole phase ahead),
// count, free the slot.
std::vector<Op> dq_converter_program(int tiles) {
  std::vector<Op> p;
  for (int it = 0; it < tiles; ++it) {
    const int slot = WsRing::stage(it);
    p.push_back({Op::kWait, dq_done(slot), WsRing::full_parity(it), 0, kQ, -1, it / 2});
    p.push_back({Op::kArrive, dq_free(slot), 0, 1});
  }
  return p;
}

std::vector<Agent> converting_backward_agents(int tiles) {
  std::vector<Agent> agents(4);
  agents[0].program = backward_producer_program(tiles);
  agents[1].program = backward_consumer_program(tiles, 0, false, true);
  agents[2].program = backward_consumer_program(tiles, 1, false, true);
  agents[3].program = dq_converter_program(tiles);
  return agents;
}

// The producer thread that adds the staged dQ tiles (wgmma-ws-tma): per tile, wait until both
// halves are stored, read them (the TMA reductions) to the end of the read, release the tile.
std::vector<Op> dq_writer_program(int tiles) {
  std::vector<Op> p;
  for (int it = 0; it < tiles; ++it) {
    p.push_back({Op::kWait, kDqFull, WsDqStage::full_parity(it), 0, kDq0, it, it});
    p.push_back({Op::kWait, kDqFull, WsDqStage::full_parity(it), 0, kDq1, it, it});
    p.push_back({Op::kRelease, kDqEmpty, 0, 0, kDq0});
    p.push_back({Op::kRelease, kDqEmpty, 0, 0, kDq1});
    p.push_back({Op::kArrive, kDqEmpty, 0, 1});
  }
  return p;
}

std::vector<Agent> backward_agents(int tiles, bool tma_dq = false) {
  std::vector<Agent> agents(tma_dq ? 4 : 3);
  agents[0].program = backward_producer_program(tiles);
  agents[1].program = backward_consumer_program(tiles, 0, tma_dq);
  agents[2].program = backward_consumer_program(tiles, 1, tma_dq);
  if (tma_dq) agents[3].program = dq_writer_program(tiles);
  return agents;
}

TEST(WsSchedule, TheBackwardDeliversEachQueryTileOnceAndEndsClean) {
  for (int tiles = 1; tiles <= 7; ++tiles)
    for (uint64_t seed = 0; seed < 300; ++seed) {
      const std::string e = run(backward_agents(tiles), seed * 104729 + uint64_t(tiles), kBwdFullArrivals);
      ASSERT_EQ(e, "") << "tiles " << tiles << ", seed " << seed;
    }
}

// Caught: the producer not waiting for the release; a full barrier expecting the TMA thread only
// (the lanes' arrivals spill into the next phase); a consumer waiting with the wrong parity.
TEST(WsSchedule, TheBackwardModelCatchesReleaseCountAndParitySlips) {
  const auto fails = [](auto mutate, int full_arrivals) {
    for (uint64_t seed = 0; seed < 300; ++seed) {
      std::vector<Agent> agents = backward_agents(5);
      mutate(agents);
      if (!run(agents, seed, full_arrivals).empty()) return true;
    }
    return false;
  };
  EXPECT_TRUE(fails(
      [](std::vector<Agent>& a) {
        std::vector<Op> p;
        for (const Op& op : a[0].program)
          if (op.kind != Op::kWait) p.push_back(op);
        a[0].program = p;
      },
      kBwdFullArrivals));
  EXPECT_TRUE(fails([](std::vector<Agent>&) {}, 1));
  EXPECT_TRUE(fails(
      [](std::vector<Agent>& a) {
        for (Op& op : a[2].program)
          if (op.kind == Op::kWait && op.tile == 2) op.parity ^= 1u;
      },
      kBwdFullArrivals));
  EXPECT_FALSE(fails([](std::vector<Agent>&) {}, kBwdFullArrivals));
}

TEST(WsSchedule, TheDqStagingAddsEachTileOnceAfterBothHalvesLanded) {
  for (int tiles = 1; tiles <= 7; ++tiles)
    for (uint64_t seed = 0; seed < 300; ++seed) {
      const std::string e = run(backward_agents(tiles, true), seed * 7919 + uint64_t(tiles), kBwdFullArrivals, 2);
      ASSERT_EQ(e, "") << "tiles " << tiles << ", seed " << seed;
    }
}

// Caught: a consumer storing without waiting for the previous reduction's read; a full barrier
// expecting one consumer (the reduction reads the other half's previous tile); a parity slip on
// the empty barrier; the writer not arriving (deadlock).
TEST(WsSchedule, TheDqStagingModelCatchesAMissingWaitCountAndParitySlips) {
  const auto fails = [](auto mutate, int dq_full) {
    for (uint64_t seed = 0; seed < 300; ++seed) {
      std::vector<Agent> agents = backward_agents(5, true);
      mutate(agents);
      if (!run(agents, seed, kBwdFullArrivals, 2, dq_full).empty()) return true;
    }
    return false;
  };
  const auto drop_dq_empty_waits = [](std::vector<Op>& prog) {
    std::vector<Op> p;
    for (const Op& op : prog)
      if (!(op.kind == Op::kWait && op.bar == kDqEmpty)) p.push_back(op);
    prog = p;
  };
  EXPECT_TRUE(fails([&](std::vector<Agent>& a) { drop_dq_empty_waits(a[1].program); }, 2 * kWarpgroup));
  EXPECT_TRUE(fails([](std::vector<Agent>&) {}, kWarpgroup));
  EXPECT_TRUE(fails(
      [](std::vector<Agent>& a) {
        for (Op& op : a[2].program)
          if (op.kind == Op::kWait && op.bar == kDqEmpty && op.phase == 2) op.parity ^= 1u;
      },
      2 * kWarpgroup));
  EXPECT_TRUE(fails(
      [](std::vector<Agent>& a) {
        std::vector<Op> p;
        for (const Op& op : a[3].program)
          if (op.kind != Op::kArrive) p.push_back(op);
        a[3].program = p;
      },
      2 * kWarpgroup));
  EXPECT_FALSE(fails([](std::vector<Agent>&) {}, 2 * kWarpgroup));
}

// Random interleavings, and ones where the converter only moves when everything else waits.
TEST(WsSchedule, TheDqSignalReachesTheConverterOncePerTileInOrder) {
  for (int slow : {-1, 3})
    for (int tiles = 1; tiles <= 9; ++tiles)
      for (uint64_t seed = 0; seed < 300; ++seed) {
        const std::string e =
            run(converting_backward_agents(tiles), seed * 15485863 + uint64_t(tiles), kBwdFullArrivals, 2, 2 * kWarpgroup, slow);
        ASSERT_EQ(e, "") << "tiles " << tiles << ", seed " << seed << (slow >= 0 ? ", slow converter" : "");
      }
}

// Caught: consumers that do not wait for the slot to be freed (they run a phase ahead of a slow
// converter, whose wait then returns a phase late); a parity slip on the free barrier; a done
// barrier expecting one consumer; a converter that never frees (deadlock).
TEST(WsSchedule, TheDqSignalModelCatchesAMissingWaitParityAndCountSlips) {
  const auto fails = [](auto mutate) {
    for (int slow : {-1, 3})
      for (uint64_t seed = 0; seed < 300; ++seed) {
        std::vector<Agent> agents = converting_backward_agents(7);
        mutate(agents);
        if (!run(agents, seed, kBwdFullArrivals, 2, 2 * kWarpgroup, slow).empty()) return true;
      }
    return false;
  };
  const auto drop_free_waits = [](std::vector<Op>& prog) {
    std::vector<Op> p;
    for (const Op& op : prog)
      if (!(op.kind == Op::kWait && (op.bar == kDqFree0 || op.bar == kDqFree1))) p.push_back(op);
    prog = p;
  };
  EXPECT_TRUE(fails([&](std::vector<Agent>& a) { drop_free_waits(a[1].program), drop_free_waits(a[2].program); }));
  EXPECT_TRUE(fails([](std::vector<Agent>& a) {
    for (Op& op : a[2].program)
      if (op.kind == Op::kWait && op.bar == kDqFree1 && op.phase == 1) op.parity ^= 1u;
  }));
  EXPECT_TRUE(fails([](std::vector<Agent>& a) {
    for (Op& op : a[1].program)
      if (op.kind == Op::kArrive && (op.bar == kDqDone0 || op.bar == kDqDone1)) op.count = 2 * kWarpgroup;
  }));
  EXPECT_TRUE(fails([](std::vector<Agent>& a) {
    std::vector<Op> p;
    for (const Op& op : a[3].program)
      if (op.kind != Op::kArrive) p.push_back(op);
    a[3].program = p;
  }));
  EXPECT_FALSE(fails([](std::vector<Agent>&) {}));
}

// The counters of the fused conversion against the kernel's loop bounds: every key block (128 keys
// from j0) visits query_tiles(T, j0, BR) tiles from i0 = j0; each tile of every sequence length
// must then be counted by exactly contributors(i0) blocks, in a counter of its own below
// count_stride(T), so the block whose count completes it is the last to add. A formula counting
// the 64-row tiles' own index instead (i0 / BR + 1) is caught.
TEST(WsDqCount, EachQueryTileIsCountedByExactlyItsContributors) {
  const auto mismatches = [](auto contributors) {
    int bad = 0;
    for (int BR : {64, 128})
      for (int64_t T = 1; T <= 1300; T += (T < 300 ? 1 : 37)) {
        std::vector<int> counts(size_t(WsDqSignal::count_stride(T)), 0);
        for (int64_t j0 = 0; j0 < T; j0 += 128)
          for (int it = 0; it < WsDqSignal::query_tiles(T, j0, BR); ++it) {
            const int64_t i0 = j0 + int64_t(it) * BR;
            EXPECT_LT(i0, T);
            EXPECT_EQ(i0 % BR, 0);
            const int64_t k = WsDqSignal::count_index(i0);
            EXPECT_LT(k, WsDqSignal::count_stride(T));
            ++counts[size_t(k)];
          }
        for (int64_t k = 0; k < WsDqSignal::count_stride(T); ++k) {
          const int64_t i0 = k * 64;
          const int want = i0 % BR == 0 ? contributors(i0, BR) : 0;  // 128-row tiles use every other counter
          if (counts[size_t(k)] != want) ++bad;
        }
      }
    return bad;
  };
  EXPECT_EQ(mismatches([](int64_t i0, int) { return WsDqSignal::contributors(i0); }), 0);
  EXPECT_GT(mismatches([](int64_t i0, int BR) { return int(i0 / BR) + 1; }), 0);
}

// The pipelined backward's tile stream (PipeRing): the kernels' order of copies, waits and reads
// (ws_schedule.h) replayed against stages that record which tile they hold, whether it has
// landed (a cp.async group lands at the latest at the wait that covers it) and how many issued
// products still read them. A copy into a stage with pending reads, or a read of a stage not
// holding its tile landed, is an error; every tile must be read by its score products and its
// gradient products exactly once.
struct PipeModel {
  int stages;
  std::vector<int64_t> holds;
  std::vector<bool> landed;
  std::vector<int> in_flight;  // copies into the stage not landed yet
  std::vector<int> reading;
  std::vector<int> groups;    // committed cp.async groups, oldest first: their stage, or -1 (empty)
  std::vector<int> pending;   // stages read by issued products not yet waited for
  std::vector<int> score_reads, grad_reads;
  std::vector<std::string> errors;

  PipeModel(int n_stages, int64_t tiles)
      : stages(n_stages), holds(n_stages, -1), landed(n_stages, false), in_flight(n_stages, 0), reading(n_stages, 0),
        score_reads(tiles, 0), grad_reads(tiles, 0) {}
  void copy(int64_t tile, int stage) {
    if (reading[stage] > 0)
      errors.push_back("tile " + std::to_string(tile) + " copied into stage " + std::to_string(stage) + " while read");
    if (in_flight[stage] > 0)
      errors.push_back("tile " + std::to_string(tile) + " copied into stage " + std::to_string(stage) +
                       " while an earlier copy is in flight");
    holds[stage] = tile, landed[stage] = false, ++in_flight[stage];
    groups.push_back(stage);
  }
  void commit_empty() { groups.push_back(-1); }
  void wait_groups(size_t allowed_pending) {
    while (groups.size() > allowed_pending) {
      if (const int st = groups.front(); st >= 0) landed[st] = --in_flight[st] == 0;
      groups.erase(groups.begin());
    }
  }
  void read(int64_t tile, int stage, std::vector<int>& count) {
    if (holds[stage] != tile || !landed[stage])
      errors.push_back("tile " + std::to_string(tile) + " read from stage " + std::to_string(stage) + " holding tile " +
                       std::to_string(holds[stage]) + (landed[stage] ? "" : " (not landed)"));
    ++reading[stage], ++count[tile];
    pending.push_back(stage);
  }
  void wait_reads() {
    for (int s : pending) --reading[s];
    pending.clear();
  }
};

// The kernels' order (attention_backward_dkdv_wgmma and attention_backward_dq_wgmma, kPipelined),
// with the ring's stage and prefetch functions passed in so the test can also break them.
template <typename Stage, typename Prefetch>
PipeModel run_pipeline(int stages, int64_t tiles, Stage stage, Prefetch prefetch) {
  PipeModel m(stages, tiles);
  m.copy(0, stage(0));  // with K and V (dK/dV) or Q and dO (dQ): one group
  if (tiles > 1) m.copy(1, stage(1));
  else m.commit_empty();
  m.wait_groups(1);
  m.read(0, stage(0), m.score_reads);
  m.wait_reads();
  for (int64_t it = 0; it + 1 < tiles; ++it) {
    // the block barrier: every warp has waited for iteration it - 1's products (wait_reads)
    const int64_t p = prefetch(it);
    if (p < tiles) m.copy(p, stage(p));
    else m.commit_empty();
    m.wait_groups(1);
    m.read(it + 1, stage(it + 1), m.score_reads);
    m.read(it, stage(it), m.grad_reads);
    m.wait_reads();
  }
  m.read(tiles - 1, stage(tiles - 1), m.grad_reads);
  m.wait_reads();
  return m;
}

TEST(PipeSchedule, EveryTileIsReadOnceFromItsStageAfterItLands) {
  using llm::kernels::sm90a::PipeRing;
  for (int64_t tiles = 1; tiles <= 14; ++tiles) {
    SCOPED_TRACE("tiles=" + std::to_string(tiles));
    const PipeModel m = run_pipeline(PipeRing::kStages, tiles, [](int64_t i) { return PipeRing::stage(i); },
                                     [](int64_t it) { return PipeRing::prefetch(it); });
    EXPECT_TRUE(m.errors.empty()) << m.errors.front();
    for (int64_t i = 0; i < tiles; ++i) {
      EXPECT_EQ(m.score_reads[size_t(i)], 1) << "tile " << i;
      EXPECT_EQ(m.grad_reads[size_t(i)], 1) << "tile " << i;
    }
  }
}

TEST(PipeSchedule, TheModelCatchesTooFewStagesAndAWrongPrefetch) {
  // Two stages with the same prefetch distance: tile it + 2 overwrites tile it before its
  // gradient products read it.
  const PipeModel two = run_pipeline(2, 6, [](int64_t i) { return int(i % 2); }, [](int64_t it) { return it + 2; });
  EXPECT_FALSE(two.errors.empty());
  // Prefetching one tile too far: tile 3 lands in tile 0's stage before tile 0's gradient
  // products read it, and tile 2 is never copied.
  const PipeModel far = run_pipeline(3, 6, [](int64_t i) { return int(i % 3); }, [](int64_t it) { return it + 3; });
  EXPECT_FALSE(far.errors.empty());
  // One tile too near: tile 1 is copied a second time, and tile 2 is read before it lands.
  const PipeModel near = run_pipeline(3, 6, [](int64_t i) { return int(i % 3); }, [](int64_t it) { return it + 1; });
  EXPECT_FALSE(near.errors.empty());
}

// The pipelined fused backward's two dS^T tiles (ScoreTilePair), per warpgroup in the kernel's
// order: Store (this warpgroup's rows of a tile into a buffer), Issue (dQ products that read both
// warpgroups' rows of a buffer until the Wait), Barrier (both warpgroups). Between barriers the
// two warpgroups' steps interleave at random. Checked: a product reads only a buffer holding its
// tile in both halves, and no store lands in a buffer a product of either warpgroup still reads.
enum class ScoreOp { store, issue, wait, barrier };
struct ScoreStep {
  ScoreOp op;
  int64_t tile = -1;
  int buffer = -1;
};

template <typename Buffer>
std::vector<ScoreStep> fused_score_steps(int64_t tiles, Buffer buffer, bool last_barrier) {
  std::vector<ScoreStep> steps{{ScoreOp::store, 0, buffer(0)}};
  for (int64_t it = 0; it + 1 < tiles; ++it) {
    steps.push_back({ScoreOp::barrier});  // pipe_advance
    steps.push_back({ScoreOp::issue, it, buffer(it)});
    steps.push_back({ScoreOp::wait});
    steps.push_back({ScoreOp::store, it + 1, buffer(it + 1)});
  }
  if (last_barrier) steps.push_back({ScoreOp::barrier});
  steps.push_back({ScoreOp::issue, tiles - 1, buffer(tiles - 1)});
  steps.push_back({ScoreOp::wait});
  return steps;
}

std::string run_score_tiles(const std::vector<ScoreStep>& steps, int buffers, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<std::vector<int64_t>> rows(size_t(buffers), std::vector<int64_t>(2, -1));  // [buffer][warpgroup]
  int reading[2] = {-1, -1};
  size_t next[2] = {0, 0};
  const auto at_barrier = [&](int w) { return next[w] < steps.size() && steps[next[w]].op == ScoreOp::barrier; };
  while (next[0] < steps.size() || next[1] < steps.size()) {
    if (at_barrier(0) && at_barrier(1)) {
      ++next[0], ++next[1];
      continue;
    }
    int w = int(rng() % 2);
    if (next[w] >= steps.size() || at_barrier(w)) w = 1 - w;
    if (next[w] >= steps.size() || at_barrier(w)) return "a warpgroup waits at a barrier the other never reaches";
    const ScoreStep& s = steps[next[w]++];
    const std::string who = "warpgroup " + std::to_string(w) + ", tile " + std::to_string(s.tile) + ": ";
    if (s.op == ScoreOp::store) {
      for (int v = 0; v < 2; ++v)
        if (reading[v] == s.buffer)
          return who + "stored into buffer " + std::to_string(s.buffer) + " while warpgroup " + std::to_string(v) +
                 "'s dQ product reads it";
      rows[size_t(s.buffer)][size_t(w)] = s.tile;
    } else if (s.op == ScoreOp::issue) {
      for (int v = 0; v < 2; ++v)
        if (rows[size_t(s.buffer)][size_t(v)] != s.tile)
          return who + "dQ read buffer " + std::to_string(s.buffer) + " holding tile " +
                 std::to_string(rows[size_t(s.buffer)][size_t(v)]) + " in warpgroup " + std::to_string(v) + "'s rows";
      reading[w] = s.buffer;
    } else {
      reading[w] = -1;
    }
  }
  return "";
}

TEST(PipeSchedule, TheFusedScoreTilesHoldEachTileWhileItsDqProductsRead) {
  using llm::kernels::sm90a::ScoreTilePair;
  for (int64_t tiles = 1; tiles <= 9; ++tiles) {
    const auto steps = fused_score_steps(tiles, [](int64_t i) { return ScoreTilePair::buffer(i); }, true);
    for (uint64_t seed = 0; seed < 300; ++seed) {
      const std::string err = run_score_tiles(steps, ScoreTilePair::kBuffers, seed);
      ASSERT_EQ(err, "") << "tiles " << tiles << ", seed " << seed;
    }
  }
}

TEST(PipeSchedule, TheFusedScoreTileModelCatchesOneBufferAndAMissingBarrier) {
  const auto fails = [](const std::vector<ScoreStep>& steps, int buffers) {
    for (uint64_t seed = 0; seed < 300; ++seed)
      if (!run_score_tiles(steps, buffers, seed).empty()) return true;
    return false;
  };
  // One buffer: a warpgroup's next rows overwrite the tile the other's dQ product still reads.
  EXPECT_TRUE(fails(fused_score_steps(4, [](int64_t) { return 0; }, true), 1));
  // No barrier before the last tile's products: they may read the other warpgroup's rows before
  // it stored them.
  EXPECT_TRUE(fails(fused_score_steps(4, [](int64_t i) { return int(i % 2); }, false), 2));
  // The kernel's form passes the same seeds.
  EXPECT_FALSE(fails(fused_score_steps(4, [](int64_t i) { return int(i % 2); }, true), 2));
}

}  // namespace
