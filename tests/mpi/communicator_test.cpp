// The MPI communicator's collectives against values every rank can compute locally.
#include <gtest/gtest.h>

#include <numeric>

#include "comm/communicator.h"

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
  EXPECT_EQ(c->volume().all_gather, int64_t(P * n * 4));
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
  EXPECT_EQ(c->volume().reduce_scatter, off.back() * 4);
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
