// The MPI communicator's collectives against values every rank can compute locally.
#include <gtest/gtest.h>

#include <cstdlib>
#include <numeric>

#include "comm/communicator.h"
#include "core/dtype.h"

namespace {

using llm::Tensor;

// Element i of rank r's input: distinct, exactly representable values.
float value(int r, int64_t i) { return static_cast<float>(r * 1000 + i); }

Tensor filled(int r, int64_t n) {
  Tensor t = Tensor::empty({n});
  for (int64_t i = 0; i < n; ++i) t.data<float>()[i] = value(r, i);
  return t;
}

TEST(MpiCommunicator, AllGatherConcatenatesInRankOrder) {
  auto c = llm::mpi_world_communicator();
  const int P = c->size(), n = 5;
  Tensor out = Tensor::empty({P * n});
  c->all_gather(out, filled(c->rank(), n));
  for (int r = 0; r < P; ++r)
    for (int i = 0; i < n; ++i) EXPECT_EQ(out.data<float>()[r * n + i], value(r, i)) << "rank " << r << " elem " << i;
  EXPECT_EQ(c->volume().all_gather, P > 1 ? int64_t(P * n * 4) : 0);  // nothing moves in a group of 1
}

TEST(MpiCommunicator, ReduceScatterGivesEachRankItsChunkOfTheSum) {
  auto c = llm::mpi_world_communicator();
  const int P = c->size(), n = 3;
  Tensor out = Tensor::empty({n});
  c->reduce_scatter(out, filled(c->rank(), P * n));
  for (int i = 0; i < n; ++i) {
    double want = 0;
    for (int r = 0; r < P; ++r) want += value(r, c->rank() * n + i);
    EXPECT_EQ(out.data<float>()[i], want);
  }
}

TEST(MpiCommunicator, ReduceScatterRangesSumsEachRanksUnevenRange) {
  auto c = llm::mpi_world_communicator();
  const int P = c->size(), me = c->rank();
  // Uneven ranges, one of them empty (rank 1's when there are more than 2 ranks).
  std::vector<int64_t> off{0};
  for (int r = 0; r < P; ++r) off.push_back(off.back() + (r == 1 && P > 2 ? 0 : 3 + 2 * r));
  Tensor x = filled(me, off.back());
  c->reduce_scatter_ranges(x, off);
  for (int64_t i = off[me]; i < off[me + 1]; ++i) {
    double want = 0;
    for (int r = 0; r < P; ++r) want += value(r, i);
    EXPECT_EQ(x.data<float>()[i], want) << "element " << i;
  }
  EXPECT_EQ(c->volume().reduce_scatter, P > 1 ? off.back() * 4 : 0);
}

// bf16 and f16 travel as 2-byte types of their own and are summed by the communicator's own
// operation (in f32, rounded once per combining step). Values that are small multiples of 1/4 sum
// exactly in either type, so all-reduce, reduce-scatter (plain and in ranges) and all-gather
// have one right answer: the closed form.
TEST(MpiCommunicator, SixteenBitCollectivesSumInTheirOwnType) {
  auto c = llm::mpi_world_communicator();
  const int P = c->size(), me = c->rank();
  const int64_t n = 6 * P;  // 6 elements per rank: a window of 97 (the -windows runs) splits none
  auto v = [](int r, int64_t i) { return 0.25f * static_cast<float>((r + 1) * (i % 8 + 1)); };
  auto sum = [&](int64_t i) {
    float s = 0;
    for (int r = 0; r < P; ++r) s += v(r, i);
    return s;
  };
  for (llm::DType t : {llm::DType::bf16, llm::DType::f16}) {
    const bool bf = t == llm::DType::bf16;
    auto to16 = [&](float f) { return bf ? llm::f32_to_bf16(f) : llm::f32_to_f16(f); };
    // element i of a 16-bit tensor, as f32
    auto at = [&](const Tensor& x, int64_t i) {
      const uint16_t h = static_cast<const uint16_t*>(x.raw())[i];
      return bf ? llm::bf16_to_f32(h) : llm::f16_to_f32(h);
    };
    auto mine = [&](int64_t count) {
      Tensor x = Tensor::empty({count}, t);
      for (int64_t i = 0; i < count; ++i) static_cast<uint16_t*>(x.raw())[i] = to16(v(me, i));
      return x;
    };
    const char* name = bf ? "bf16" : "f16";
    Tensor x = mine(n);
    c->all_reduce_sum(x);
    for (int64_t i = 0; i < n; ++i) EXPECT_EQ(at(x, i), sum(i)) << name << " all-reduce, element " << i;
    Tensor chunk = Tensor::empty({6}, t);
    c->reduce_scatter(chunk, mine(n));
    for (int64_t i = 0; i < 6; ++i)
      EXPECT_EQ(at(chunk, i), sum(me * 6 + i)) << name << " reduce-scatter, element " << i;
    std::vector<int64_t> off{0};
    for (int r = 0; r < P; ++r) off.push_back(off.back() + 1 + r);
    Tensor y = mine(off.back());
    c->reduce_scatter_ranges(y, off);
    for (int64_t i = off[me]; i < off[me + 1]; ++i)
      EXPECT_EQ(at(y, i), sum(i)) << name << " reduce-scatter of ranges, element " << i;
    Tensor all = Tensor::empty({n}, t);
    c->all_gather(all, mine(6));
    for (int r = 0; r < P; ++r)
      for (int64_t i = 0; i < 6; ++i)
        EXPECT_EQ(at(all, r * 6 + i), v(r, i)) << name << " all-gather, rank " << r << " element " << i;
  }
}

// Sizes that cross windows when LLM_MPI_MAX_COUNT is small (the mpi-np*-windows tests run 97):
// ranges straddling window boundaries, an empty one, a short last window, the plain forms past a
// window per rank, all-reduce, and point to point over several windows.
TEST(MpiCommunicator, CollectivesAcrossWindows) {
  // The window this process runs with: LLM_MPI_MAX_COUNT's where ctest sets it (mpi-np*-windows),
  // so those runs do move every buffer in windows and are not copies of the plain ones.
  const char* knob = std::getenv("LLM_MPI_MAX_COUNT");
  EXPECT_EQ(llm::mpi_window_elements(), knob ? std::atoll(knob) : int64_t{1} << 30);
  auto c = llm::mpi_world_communicator();
  const int P = c->size(), me = c->rank();
  std::vector<int64_t> off{0};
  for (int r = 0; r < P; ++r) off.push_back(off.back() + (r == 1 && P > 2 ? 0 : 150 + 37 * r));
  const int64_t n = off.back();
  auto owner = [&](int64_t i) {
    int r = 0;
    while (i >= off[size_t(r) + 1]) ++r;
    return r;
  };
  Tensor g = Tensor::zeros({n});
  for (int64_t i = off[size_t(me)]; i < off[size_t(me) + 1]; ++i) g.data<float>()[i] = value(me, i);
  c->all_gather_ranges(g, off);
  for (int64_t i = 0; i < n; ++i) ASSERT_EQ(g.data<float>()[i], value(owner(i), i)) << "all_gather_ranges element " << i;
  Tensor x = filled(me, n);
  c->reduce_scatter_ranges(x, off);
  for (int64_t i = off[size_t(me)]; i < off[size_t(me) + 1]; ++i) {
    double want = 0;
    for (int r = 0; r < P; ++r) want += value(r, i);
    ASSERT_EQ(x.data<float>()[i], want) << "reduce_scatter_ranges element " << i;
  }
  const int64_t m = 130;  // per rank, past one window of 97
  Tensor out = Tensor::empty({P * m});
  c->all_gather(out, filled(me, m));
  for (int r = 0; r < P; ++r)
    for (int64_t i = 0; i < m; ++i) ASSERT_EQ(out.data<float>()[r * m + i], value(r, i)) << "all_gather " << r << "," << i;
  Tensor chunk = Tensor::empty({m});
  c->reduce_scatter(chunk, filled(me, P * m));
  for (int64_t i = 0; i < m; ++i) {
    double want = 0;
    for (int r = 0; r < P; ++r) want += value(r, me * m + i);
    ASSERT_EQ(chunk.data<float>()[i], want) << "reduce_scatter element " << i;
  }
  // Each rank's part within a window, the whole past it (60 x P > 97): windowed by the whole,
  // since MPI's block offsets (rank x count) are int inside it. Also with aliased buffers.
  const int64_t q = 60;
  for (bool in_place : {false, true}) {
    Tensor all = Tensor::zeros({P * q});
    const Tensor mine = all.flat(me * q, q);
    mine.copy_from(filled(me, q));
    c->all_gather(all, in_place ? mine : filled(me, q));
    for (int r = 0; r < P; ++r)
      for (int64_t i = 0; i < q; ++i)
        ASSERT_EQ(all.data<float>()[r * q + i], value(r, i)) << (in_place ? "in-place " : "") << "all_gather " << r << "," << i;
    Tensor whole = filled(me, P * q);
    const Tensor part = in_place ? whole.flat(0, q) : Tensor::empty({q});  // the output inside the input
    c->reduce_scatter(part, whole);
    for (int64_t i = 0; i < q; ++i) {
      double want = 0;
      for (int r = 0; r < P; ++r) want += value(r, me * q + i);
      ASSERT_EQ(part.data<float>()[i], want) << (in_place ? "aliased " : "") << "reduce_scatter element " << i;
    }
  }
  Tensor exchanged = Tensor::empty({P * q});
  c->all_to_all(exchanged, filled(me, P * q));
  for (int s = 0; s < P; ++s)
    for (int64_t i = 0; i < q; ++i)
      ASSERT_EQ(exchanged.data<float>()[s * q + i], value(s, me * q + i)) << "all_to_all " << s << "," << i;
  for (bool async : {false, true}) {
    Tensor s = filled(me, 300);
    if (async)
      c->all_reduce_sum_async(s)->wait();
    else
      c->all_reduce_sum(s);
    for (int64_t i = 0; i < 300; ++i) {
      double want = 0;
      for (int r = 0; r < P; ++r) want += value(r, i);
      ASSERT_EQ(s.data<float>()[i], want) << (async ? "async " : "") << "all-reduce element " << i;
    }
  }
  if (P < 2) return;
  // a ring of send_recv, then rank 0 -> 1 as send/recv and as their async forms
  const int next = (me + 1) % P, prev = (me + P - 1) % P;
  Tensor got = Tensor::empty({300});
  c->send_recv(filled(me, 300), next, 7, got, prev, 7);
  for (int64_t i = 0; i < 300; ++i) ASSERT_EQ(got.data<float>()[i], value(prev, i)) << "send_recv element " << i;
  for (bool async : {false, true}) {
    Tensor r1 = Tensor::empty({250});
    if (me == 0) {
      if (async)
        c->send_async(filled(0, 250), 1, 8)->wait();
      else
        c->send(filled(0, 250), 1, 8);
    } else if (me == 1) {
      if (async)
        c->recv_async(r1, 0, 8)->wait();
      else
        c->recv(r1, 0, 8);
      for (int64_t i = 0; i < 250; ++i) ASSERT_EQ(r1.data<float>()[i], value(0, i)) << "recv element " << i;
    }
  }
}

TEST(MpiCommunicator, AllToAllTransposesChunks) {
  auto c = llm::mpi_world_communicator();
  const int P = c->size(), n = 2;
  Tensor out = Tensor::empty({P * n});
  c->all_to_all(out, filled(c->rank(), P * n));
  // chunk s of out came from rank s's chunk c->rank()
  for (int s = 0; s < P; ++s)
    for (int i = 0; i < n; ++i) EXPECT_EQ(out.data<float>()[s * n + i], value(s, c->rank() * n + i));
}

TEST(MpiCommunicator, SendRecvRing) {
  auto c = llm::mpi_world_communicator();
  if (c->size() == 1) GTEST_SKIP() << "needs 2 ranks";
  const int P = c->size(), me = c->rank();
  Tensor got = Tensor::empty({4});
  // even ranks send first, odd ranks receive first: no deadlock with blocking calls
  const int next = (me + 1) % P, prev = (me + P - 1) % P;
  if (me % 2 == 0) {
    c->send(filled(me, 4), next, 7);
    c->recv(got, prev, 7);
  } else {
    c->recv(got, prev, 7);
    c->send(filled(me, 4), next, 7);
  }
  for (int i = 0; i < 4; ++i) EXPECT_EQ(got.data<float>()[i], value(prev, i));
}

TEST(MpiCommunicator, AsyncAllReduceOverlapsAndCompletes) {
  auto c = llm::mpi_world_communicator();
  const int P = c->size();
  Tensor a = filled(c->rank(), 1000), b = filled(c->rank(), 10);
  auto ra = c->all_reduce_sum_async(a);
  auto rb = c->all_reduce_sum_async(b);
  rb->wait();
  ra->wait();
  for (int64_t i : {0, 9, 999}) {
    if (i >= a.numel()) continue;
    double want = 0;
    for (int r = 0; r < P; ++r) want += value(r, i);
    EXPECT_EQ(a.data<float>()[i], want);
    if (i < 10) {
      EXPECT_EQ(b.data<float>()[i], want);
    }
  }
}

// Every non-blocking form gives the blocking form's result, with several operations in flight at
// once (started in one order, completed in another) and test() polled before wait().
TEST(MpiCommunicator, NonBlockingFormsMatchTheBlockingOnes) {
  auto c = llm::mpi_world_communicator();
  if (c->size() == 1) GTEST_SKIP() << "needs 2 ranks (point to point)";
  const int P = c->size(), me = c->rank();
  std::vector<int64_t> off{0};
  for (int r = 0; r < P; ++r) off.push_back(off.back() + 2 + r);
  const int64_t n = off.back();
  // blocking references
  Tensor ag_ref = filled(me, n), rs_ref = filled(me, n), g_ref = Tensor::empty({P * 3}), a2a_ref = Tensor::empty({P * 2});
  c->all_gather_ranges(ag_ref, off);
  c->reduce_scatter_ranges(rs_ref, off);
  c->all_gather(g_ref, filled(me, 3));
  c->all_to_all(a2a_ref, filled(me, P * 2));
  // the same, all in flight together
  Tensor ag = filled(me, n), rs = filled(me, n), g = Tensor::empty({P * 3}), a2a = Tensor::empty({P * 2});
  Tensor g_in = filled(me, 3), a2a_in = filled(me, P * 2), sent = filled(me, 6), got = Tensor::empty({6});
  const int next = (me + 1) % P, prev = (me + P - 1) % P;
  auto r_recv = c->recv_async(got, prev, 11);  // posted before the matching send anywhere
  auto r_ag = c->all_gather_ranges_async(ag, off);
  auto r_rs = c->reduce_scatter_ranges_async(rs, off);
  auto r_g = c->all_gather_async(g, g_in);
  auto r_a2a = c->all_to_all_async(a2a, a2a_in);
  auto r_send = c->send_async(sent, next, 11);
  // Progresses by polling alone (a test() that never reports completion hangs here, and ctest's
  // timeout fails it).
  while (!r_a2a->test()) {
  }
  r_send->wait();
  r_recv->wait();
  r_g->wait();
  r_rs->wait();
  r_ag->wait();
  auto same = [](const Tensor& a, const Tensor& b, int64_t lo, int64_t hi) {
    for (int64_t i = lo; i < hi; ++i)
      if (a.data<float>()[i] != b.data<float>()[i]) return false;
    return true;
  };
  EXPECT_TRUE(same(ag, ag_ref, 0, n)) << "all_gather_ranges_async";
  EXPECT_TRUE(same(rs, rs_ref, off[me], off[me + 1])) << "reduce_scatter_ranges_async (this rank's range)";
  EXPECT_TRUE(same(g, g_ref, 0, P * 3)) << "all_gather_async";
  EXPECT_TRUE(same(a2a, a2a_ref, 0, P * 2)) << "all_to_all_async";
  for (int i = 0; i < 6; ++i) EXPECT_EQ(got.data<float>()[i], value(prev, i)) << "recv_async";
  // a request dropped unfinished completes in its destructor
  Tensor late = filled(me, n);
  { auto r = c->all_gather_ranges_async(late, off); }
  EXPECT_TRUE(same(late, ag_ref, 0, n));
}

TEST(MpiCommunicator, SplitGroupsAreIndependent) {
  auto world = llm::mpi_world_communicator();
  const int me = world->rank();
  auto pair = llm::mpi_split_communicator(me / 2, me % 2);  // {0,1}, {2,3}, ...
  Tensor x = Tensor::empty({1});
  x.data<float>()[0] = static_cast<float>(me);
  pair->all_reduce_sum(x);
  const int first = me / 2 * 2, second = std::min(first + 1, world->size() - 1);
  EXPECT_EQ(x.data<float>()[0], first == second ? first : first + second);
}

TEST(MpiCommunicator, RejectsMismatchedSizes) {
  auto c = llm::mpi_world_communicator();
  if (c->size() == 1) GTEST_SKIP() << "needs 2 ranks";
  Tensor out = Tensor::empty({3});
  EXPECT_THROW(c->all_gather(out, Tensor::empty({3})), llm::Error);
  EXPECT_THROW(c->reduce_scatter(out, Tensor::empty({4})), llm::Error);
}

}  // namespace
