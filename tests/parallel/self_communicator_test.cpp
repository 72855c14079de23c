// A process not started by an MPI launcher runs without MPI: its communicators are groups of one
// (self_communicator), with the collectives' single-rank results and the same type checks.
#include <gtest/gtest.h>

#include <cstdlib>

#include "comm/communicator.h"
#include "comm/mpi_session.h"
#include "core/dtype.h"

namespace {

using llm::Tensor;

TEST(SelfCommunicator, IsWhatAPlainProcessGets) {
  // ctest does not start this binary under mpirun: no launcher environment, no MPI.
  if (llm::launched_by_mpi()) GTEST_SKIP() << "started by an MPI launcher";
  int argc = 0;
  char** argv = nullptr;
  llm::MpiSession session(&argc, &argv);
  EXPECT_FALSE(session.uses_mpi());
  EXPECT_EQ(session.rank(), 0);
  EXPECT_EQ(session.size(), 1);
  EXPECT_TRUE(session.all_ok(true));
  EXPECT_FALSE(session.all_ok(false));
  EXPECT_EQ(session.broadcast("x"), "x");
  EXPECT_EQ(session.gather("a"), std::vector<std::string>{"a"});
  EXPECT_EQ(session.sum(7), 7);
  auto world = llm::mpi_world_communicator();
  auto sub = llm::mpi_split_communicator(3, 0);
  EXPECT_EQ(world->size(), 1);
  EXPECT_EQ(sub->rank(), 0);
}

TEST(SelfCommunicator, CollectivesOfOneRank) {
  auto c = llm::self_communicator();
  Tensor x = Tensor::empty({4});
  for (int i = 0; i < 4; ++i) x.data<float>()[i] = float(i + 1);
  c->all_reduce_sum(x);
  EXPECT_EQ(x.data<float>()[3], 4.0f);
  EXPECT_EQ(c->all_reduce_sum(2.5), 2.5);
  c->all_reduce_sum_async(x)->wait();
  c->all_gather_ranges(x, {0, 4});
  c->reduce_scatter_ranges(x, {0, 4});
  Tensor out = Tensor::zeros({4});
  c->all_gather(out, x);
  EXPECT_EQ(out.data<float>()[2], 3.0f);
  out.zero();
  c->all_to_all(out, x);
  EXPECT_EQ(out.data<float>()[1], 2.0f);
  Tensor low = Tensor::zeros({4}, llm::DType::bf16), low_out = Tensor::empty({4}, llm::DType::bf16);
  static_cast<uint16_t*>(low.raw())[0] = llm::f32_to_bf16(1.5f);
  c->all_gather(low_out, low);
  EXPECT_EQ(llm::bf16_to_f32(static_cast<uint16_t*>(low_out.raw())[0]), 1.5f);
  c->send_recv(x, -1, 0, x, -1, 0);  // both halves skipped
  EXPECT_THROW(c->send(x, 1, 0), llm::Error);
  EXPECT_THROW(c->all_gather(Tensor::empty({3}), x), llm::Error);
  EXPECT_THROW(c->all_gather(low_out, x), llm::Error);  // bf16 <- f32
  EXPECT_THROW(c->all_gather_ranges(x, {0, 2, 4}), llm::Error);  // offsets for 2 ranks
}

}  // namespace

// The volume counters' arithmetic, which the NCCL communicator uses to count what it routes over
// MPI (host tensors) in its own volume: every kind moves by its own difference.
TEST(SelfCommunicator, VolumeDifferencesAddPerKind) {
  using V = llm::Communicator::Volume;
  const V before{1, 2, 3, 4, 5, 6}, after{11, 22, 33, 44, 55, 66};
  V total{100, 200, 300, 400, 500, 600};
  total += after - before;
  EXPECT_EQ(total.all_reduce, 110);
  EXPECT_EQ(total.all_gather, 220);
  EXPECT_EQ(total.reduce_scatter, 330);
  EXPECT_EQ(total.all_to_all, 440);
  EXPECT_EQ(total.send_recv, 550);
  EXPECT_EQ(total.broadcast, 660);
}
