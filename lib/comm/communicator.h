// Collectives over tensors within a group of ranks. MpiCommunicator carries host tensors over
// MPI; a NCCL communicator will carry device tensors behind the same interface.
#pragma once
#include <memory>
#include <vector>

#include "core/tensor.h"

namespace llm {

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  // In place: x = sum over the group (f32, contiguous).
  virtual void all_reduce_sum(const Tensor& x) = 0;
  // Sum / min / max of a scalar over the group.
  virtual double all_reduce_sum(double v) = 0;
  virtual double all_reduce_min(double v) = 0;
  virtual double all_reduce_max(double v) = 0;
  // In place over a flat f32 tensor: rank r contributes elements [offsets[r], offsets[r+1]) and
  // afterwards every rank holds every range (ZeRO's parameter all-gather).
  virtual void all_gather_ranges(const Tensor& x, const std::vector<int64_t>& offsets) = 0;
  // In place: x = root's x.
  virtual void broadcast(const Tensor& x, int root) = 0;
  virtual void barrier() = 0;
};

// A communicator over all of MPI_COMM_WORLD (MPI must be initialised, e.g. by MpiSession), or
// over the ranks with the same `color` (MPI_Comm_split) for sub-groups.
std::unique_ptr<Communicator> mpi_world_communicator();
std::unique_ptr<Communicator> mpi_split_communicator(int color, int key);

}  // namespace llm
