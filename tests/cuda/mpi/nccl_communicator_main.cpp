// NCCL communicator check, run by ctest under `mpirun -np 2` (one GPU per rank): every
// collective on device tensors against its closed form, and the host-tensor/scalar paths that
// go through MPI. Exits 77 (ctest: skipped) with the reason when there are fewer GPUs than
// ranks (unless LLM_NCCL_SHARED_GPU=1 lets ranks share them), or when the build has no
// CUDA/NCCL. gpu_validation.sh also runs it as one process on a single GPU (an MPI singleton:
// OMPI_MCA_ess_singleton_isolated=1 needs no mpirun or orted), which checks the bootstrap and
// every collective's call on a communicator of one rank. With --timeout-check,
// --timeout-check-first, --timeout-check-init or --timeout-check-host (2 ranks or more) it checks
// the collective timeout instead: see there.
#include <mpi.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "core/tensor.h"

#if defined(LLM_HAVE_CUDA) && defined(LLM_HAVE_NCCL)
#include <cuda_runtime_api.h>

#include "backend/cuda/cuda_backend.h"
#include "comm/nccl_communicator.h"
#include "comm/nccl_shared_gpu.h"
#endif

#if defined(LLM_HAVE_CUDA) && defined(LLM_HAVE_NCCL)
namespace {
int failures = 0;
void check(bool ok, const std::string& what, int rank) {
  if (!ok) {
    ++failures;
    std::fprintf(stderr, "rank %d: FAILED %s\n", rank, what.c_str());
  }
}
}  // namespace
#endif

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  int rank = 0, size = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  int code = 0;
#if !defined(LLM_HAVE_CUDA) || !defined(LLM_HAVE_NCCL)
  if (rank == 0) std::printf("skipped: built without CUDA or NCCL\n");
  code = 77;
#else
  llm::cuda::CudaBackend* be = llm::cuda::cuda_backend();
  int count = 0;
  bool shared = false;  // ranks may share a GPU (the communicator reads the same setting)
  try {
    shared = llm::nccl_shared_gpu_setting(std::getenv("LLM_NCCL_SHARED_GPU"));
  } catch (const std::exception& e) {
    if (rank == 0) std::fprintf(stderr, "%s\n", e.what());
    MPI_Abort(MPI_COMM_WORLD, 2);
  }
  // Whether node-local ranks would share a GPU (by PCI bus id, as the communicator checks it: each
  // rank may see only its own GPU, as cuda:0, under a per-rank CUDA_VISIBLE_DEVICES), and whether
  // every rank has a device. (Every rank takes part in both collectives.)
  const bool device = be && cudaGetDeviceCount(&count) == cudaSuccess && count > 0;
  const bool sharing = llm::node_ranks_share_a_gpu(device ? be : nullptr);
  int ready = device ? 1 : 0;
  MPI_Allreduce(MPI_IN_PLACE, &ready, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
  if (!ready || (sharing && !shared)) {
    if (rank == 0)
      std::printf("skipped: %d ranks need %d GPUs, one each (%s)\n", size, size, llm::cuda::device_status().c_str());
    code = 77;
  } else if (argc > 1 && std::string(argv[1]) == "--timeout-check-init") {
    // The set-up under the timeout: rank 1 never sets up the communicator, so rank 0 waits in its
    // set-up (MPI's collectives, ncclCommInitRank) until the watchdog ends it (exit 1, naming the
    // set-up) within the 3 s timeout and a few periods. Reaching either exit below is the failure.
    llm::set_nccl_timeout_seconds(3);
    if (rank != 1) {
      try {
        auto comm = llm::nccl_world_communicator(*be);
        std::this_thread::sleep_for(std::chrono::seconds(10));
        std::fprintf(stderr, "rank %d: FAILED the set-up finished without rank 1\n", rank);
      } catch (const std::exception& e) {
        std::this_thread::sleep_for(std::chrono::seconds(10));
        std::fprintf(stderr, "rank %d: FAILED %s\n", rank, e.what());
      }
    } else {
      std::this_thread::sleep_for(std::chrono::seconds(20));
      std::fprintf(stderr, "rank 1: FAILED rank 0 was not ended by the timeout in 20 s\n");
    }
    std::fflush(stderr);
    std::_Exit(3);
  } else if (argc > 1 && std::string(argv[1]) == "--timeout-check-host") {
    // MPI's scalar reductions beside NCCL under the timeout: the communicator set up and one
    // NCCL all-reduce finished on both ranks, rank 1 never joins the scalar all-reduce (the
    // trainer's loss and gradient-norm sums), so the watchdog must end rank 0 within the 3 s
    // timeout and a few periods. Reaching either exit below is the failure.
    try {
      llm::set_nccl_timeout_seconds(3);
      auto comm = llm::nccl_world_communicator(*be);
      llm::Tensor d = be->upload(llm::Tensor::zeros({1 << 10}));
      comm->all_reduce_sum(d);
      be->synchronize();
      if (rank != 1) {
        (void)comm->all_reduce_sum(1.0);
        std::this_thread::sleep_for(std::chrono::seconds(10));
        std::fprintf(stderr, "rank %d: FAILED the scalar all-reduce rank 1 never joined returned\n", rank);
      } else {
        std::this_thread::sleep_for(std::chrono::seconds(20));
        std::fprintf(stderr, "rank 1: FAILED rank 0 was not ended by the timeout in 20 s\n");
      }
    } catch (const std::exception& e) {
      std::this_thread::sleep_for(std::chrono::seconds(10));
      std::fprintf(stderr, "rank %d: FAILED %s\n", rank, e.what());
    }
    std::fflush(stderr);
    std::_Exit(3);
  } else if (argc > 1 && (std::string(argv[1]) == "--timeout-check" || std::string(argv[1]) == "--timeout-check-first")) {
    // The collective timeout (comm/watchdog.h): rank 1 never joins an all-reduce, so the
    // watchdog must end rank 0 (exit 1, naming the operation) within the 3 s timeout and a few
    // watchdog periods. --timeout-check: after one all-reduce every rank joined (the ranks'
    // connections set up), so rank 0's second is queued on the stream and never finishes;
    // --timeout-check-first: the first one, whose call itself may wait for rank 1 (NCCL connects
    // a pair inside their first operation). gpu_validation.sh runs both with
    // LLM_NCCL_WATCHDOG_MS=200 and expects rank 0's message and a non-zero exit well before rank
    // 1's 20 s. Reaching either exit below is the failure.
    const bool warm = std::string(argv[1]) == "--timeout-check";
    try {
      llm::set_nccl_timeout_seconds(3);
      auto comm = llm::nccl_world_communicator(*be);
      llm::Tensor d = be->upload(llm::Tensor::zeros({1 << 20}));
      if (warm) {
        comm->all_reduce_sum(d);
        be->synchronize();
      }
      if (rank != 1) {
        comm->all_reduce_sum(d);
        be->synchronize();
        // (a wait, in case something ended the kernel: the watchdog's exit should come first)
        std::this_thread::sleep_for(std::chrono::seconds(10));
        std::fprintf(stderr, "rank %d: FAILED the all-reduce rank 1 never joined finished\n", rank);
      } else {
        // far past rank 0's timeout, whose exit ends the job for the launcher
        std::this_thread::sleep_for(std::chrono::seconds(20));
        std::fprintf(stderr, "rank 1: FAILED rank 0 was not ended by the timeout in 20 s\n");
      }
    } catch (const std::exception& e) {
      std::this_thread::sleep_for(std::chrono::seconds(10));  // as above
      std::fprintf(stderr, "rank %d: FAILED %s\n", rank, e.what());
    }
    std::fflush(stderr);
    std::_Exit(3);
  } else {
    try {
      auto comm = llm::nccl_world_communicator(*be);
      check(comm->rank() == rank && comm->size() == size, "rank/size", rank);
      const int64_t n = 1000003;
      llm::Tensor h = llm::Tensor::empty({n});
      for (int64_t i = 0; i < n; ++i) h.data<float>()[i] = float(rank + 1) * float(i % 7);
      llm::Tensor d = be->upload(h);
      comm->all_reduce_sum(d);
      llm::Tensor r = be->download(d);
      const float tri = float(size * (size + 1) / 2);
      bool ok = true;
      for (int64_t i = 0; i < n; ++i) ok = ok && r.data<float>()[i] == tri * float(i % 7);
      check(ok, "all_reduce_sum (device f32)", rank);
      // all_gather_ranges, uneven and even ranges
      for (bool even : {false, true}) {
        std::vector<int64_t> off{0};
        for (int q = 0; q < size; ++q) off.push_back(off.back() + (even ? 1000 : 1000 + 17 * q));
        llm::Tensor x = llm::Tensor::zeros({off.back()});
        for (int64_t i = off[size_t(rank)]; i < off[size_t(rank) + 1]; ++i) x.data<float>()[i] = float(rank) + 0.5f;
        llm::Tensor dx = be->upload(x);
        comm->all_gather_ranges(dx, off);
        llm::Tensor g = be->download(dx);
        bool gk = true;
        for (int q = 0; q < size; ++q)
          for (int64_t i = off[size_t(q)]; i < off[size_t(q) + 1]; ++i) gk = gk && g.data<float>()[i] == float(q) + 0.5f;
        check(gk, even ? "all_gather_ranges (even)" : "all_gather_ranges (uneven)", rank);
      }
      // reduce_scatter_ranges (ZeRO's gradients; uneven ranges: one grouped reduce per owner; even
      // ones: an in-place ncclReduceScatter) and both range forms non-blocking, against the
      // blocking results
      int64_t scattered = 0;  // elements reduce-scattered by each call below
      for (bool even : {false, true}) {
        std::vector<int64_t> off{0};
        for (int q = 0; q < size; ++q) off.push_back(off.back() + 500 + (even ? 0 : 13 * q));
        scattered += off.back();
        llm::Tensor x = llm::Tensor::empty({off.back()});
        for (int64_t i = 0; i < off.back(); ++i) x.data<float>()[i] = float(rank + 1) * float(i % 5);
        llm::Tensor dx = be->upload(x), dx2 = be->upload(x);
        comm->reduce_scatter_ranges(dx, off);
        comm->reduce_scatter_ranges_async(dx2, off)->wait();
        const llm::Tensor r1 = be->download(dx), r2 = be->download(dx2);
        const float sum = float(size * (size + 1) / 2);
        bool rk = true, same = true;
        for (int64_t i = off[size_t(rank)]; i < off[size_t(rank) + 1]; ++i) {
          rk = rk && r1.data<float>()[i] == sum * float(i % 5);
          same = same && r2.data<float>()[i] == r1.data<float>()[i];
        }
        check(rk, even ? "reduce_scatter_ranges (even)" : "reduce_scatter_ranges (uneven)", rank);
        // then every range gathered back, non-blocking: each rank's reduced range everywhere
        comm->all_gather_ranges_async(dx2, off)->wait();
        const llm::Tensor g = be->download(dx2);
        for (int64_t i = 0; i < off.back(); ++i) same = same && g.data<float>()[i] == sum * float(i % 5);
        check(same, even ? "reduce_scatter_ranges_async / all_gather_ranges_async (even)"
                         : "reduce_scatter_ranges_async / all_gather_ranges_async (uneven)", rank);
      }
      // empty ranges (every offset 0) are no operation, blocking or not, and move no bytes
      {
        const llm::Communicator::Volume before = comm->volume();
        llm::Tensor e = be->upload(llm::Tensor::empty({0}));
        const std::vector<int64_t> none(size_t(size) + 1, 0);
        comm->reduce_scatter_ranges(e, none);
        comm->all_gather_ranges(e, none);
        comm->reduce_scatter_ranges_async(e, none)->wait();
        comm->all_gather_ranges_async(e, none)->wait();
        const llm::Communicator::Volume moved = comm->volume() - before;
        check(moved.reduce_scatter == 0 && moved.all_gather == 0, "empty reduce_scatter_ranges / all_gather_ranges",
              rank);
      }
      // a barrier finishes this rank's non-blocking operations on the communication stream too
      {
        llm::Tensor big = be->upload(llm::Tensor::zeros({int64_t(1) << 24}));
        auto pending = comm->all_reduce_sum_async(big);
        comm->barrier();
        check(pending->test(), "barrier after a non-blocking all-reduce: the operation is finished", rank);
        pending->wait();
      }
      // bf16 sums (mixed-precision activations): small integers, exact in bf16
      {
        llm::Tensor y = llm::Tensor::empty({1000}, llm::DType::bf16);
        for (int i = 0; i < 1000; ++i) static_cast<uint16_t*>(y.raw())[i] = llm::f32_to_bf16(float((rank + 1) * (i % 3)));
        llm::Tensor dy = be->upload(y);
        comm->all_reduce_sum(dy);
        const llm::Tensor ry = be->download(dy);
        bool ok = true;
        for (int i = 0; i < 1000; ++i)
          ok = ok && llm::bf16_to_f32(static_cast<const uint16_t*>(ry.raw())[i]) == float(size * (size + 1) / 2 * (i % 3));
        check(ok, "all_reduce_sum (device bf16)", rank);
      }
      // all_gather / reduce_scatter / all_to_all / send-recv / async all-reduce on device tensors
      {
        const int64_t m = 257;
        llm::Tensor in = llm::Tensor::empty({m});
        for (int64_t i = 0; i < m; ++i) in.data<float>()[i] = float(rank * 1000 + i);
        llm::Tensor out = be->upload(llm::Tensor::zeros({m * size}));
        comm->all_gather(out, be->upload(in));
        llm::Tensor g = be->download(out);
        bool gk = true;
        for (int q = 0; q < size; ++q)
          for (int64_t i = 0; i < m; ++i) gk = gk && g.data<float>()[q * m + i] == float(q * 1000 + i);
        check(gk, "all_gather (device f32)", rank);

        llm::Tensor rs_in = llm::Tensor::empty({m * size});
        for (int64_t i = 0; i < m * size; ++i) rs_in.data<float>()[i] = float(rank + 1) * float(i);
        llm::Tensor rs_out = be->upload(llm::Tensor::zeros({m}));
        comm->reduce_scatter(rs_out, be->upload(rs_in));
        llm::Tensor rs = be->download(rs_out);
        bool rk = true;
        for (int64_t i = 0; i < m; ++i) rk = rk && rs.data<float>()[i] == tri * float(rank * m + i);
        check(rk, "reduce_scatter (device f32)", rank);

        llm::Tensor a_in = llm::Tensor::empty({m * size});
        for (int q = 0; q < size; ++q)
          for (int64_t i = 0; i < m; ++i) a_in.data<float>()[q * m + i] = float(rank * 100000 + q * 1000 + i);
        llm::Tensor a_out = be->upload(llm::Tensor::zeros({m * size}));
        comm->all_to_all(a_out, be->upload(a_in));
        llm::Tensor a = be->download(a_out);
        bool ak = true;  // chunk q arrives from rank q and is that rank's chunk `rank`
        for (int q = 0; q < size; ++q)
          for (int64_t i = 0; i < m; ++i) ak = ak && a.data<float>()[q * m + i] == float(q * 100000 + rank * 1000 + i);
        check(ak, "all_to_all (device f32)", rank);

        // ring: send to the next rank, receive from the previous one (even ranks send first). On
        // one rank the ring is a blocking send to itself, which no ordering completes: skipped
        // there (the single-GPU run checks the collectives, the async forms and the bootstrap).
        const bool ring = size > 1;
        const int next = (rank + 1) % size, prev = (rank + size - 1) % size;
        llm::Tensor sx = llm::Tensor::empty({m});
        sx.fill(float(rank) + 0.25f);
        llm::Tensor dsx = be->upload(sx), drx = be->upload(llm::Tensor::zeros({m}));
        if (ring && rank % 2 == 0) {
          comm->send(dsx, next);
          comm->recv(drx, prev);
        } else if (ring) {
          comm->recv(drx, prev);
          comm->send(dsx, next);
        }
        llm::Tensor rx = be->download(drx);
        if (ring)
          check(rx.data<float>()[0] == float(prev) + 0.25f && rx.data<float>()[m - 1] == float(prev) + 0.25f,
                "send/recv (device f32)", rank);
        if (ring) {  // the pipeline's paired exchange: both directions in one NCCL group
          llm::Tensor drx3 = be->upload(llm::Tensor::zeros({m}));
          comm->send_recv(dsx, next, 0, drx3, prev, 0);
          const llm::Tensor rx3 = be->download(drx3);
          check(rx3.data<float>()[0] == float(prev) + 0.25f && rx3.data<float>()[m - 1] == float(prev) + 0.25f,
                "send_recv (device f32)", rank);
        }

        llm::Tensor y = llm::Tensor::empty({m});
        y.fill(float(rank + 1));
        llm::Tensor dy = be->upload(y);
        auto req = comm->all_reduce_sum_async(dy);
        req->wait();
        llm::Tensor ry = be->download(dy);
        check(ry.data<float>()[0] == tri && ry.data<float>()[m - 1] == tri, "all_reduce_sum_async (device f32)", rank);
        const auto& v = comm->volume();
        // Bytes counted per call: the two all_gather_ranges (uneven, even), the reduce_scatter_ranges
        // (blocking and not, uneven and even) and the all_gather_ranges_async after them,
        // all_gather, reduce_scatter and all_to_all above; nothing moves between ranks on one, so
        // nothing is counted there.
        const int64_t ranges = 1000 * size + 17 * size * (size - 1) / 2 + 1000 * size;
        const int64_t gathered = size > 1 ? (ranges + scattered + m * size) * 4 : 0;
        const int64_t reduced = size > 1 ? (2 * scattered + m * size) * 4 : 0, moved = size > 1 ? m * size * 4 : 0;
        check(v.all_gather == gathered && v.reduce_scatter == reduced && v.all_to_all == moved, "volume counters", rank);

        // The other non-blocking forms on the communication stream, several in flight at once,
        // against the blocking results above (the ring in the same even/odd order).
        llm::Tensor g2 = be->upload(llm::Tensor::zeros({m * size})), a2 = be->upload(llm::Tensor::zeros({m * size}));
        llm::Tensor din = be->upload(in), dain = be->upload(a_in), drx2 = be->upload(llm::Tensor::zeros({m}));
        std::vector<std::unique_ptr<llm::Communicator::Request>> reqs;
        reqs.push_back(comm->all_gather_async(g2, din));
        reqs.push_back(comm->all_to_all_async(a2, dain));
        if (ring && rank % 2 == 0) {
          reqs.push_back(comm->send_async(dsx, next));
          reqs.push_back(comm->recv_async(drx2, prev));
        } else if (ring) {
          reqs.push_back(comm->recv_async(drx2, prev));
          reqs.push_back(comm->send_async(dsx, next));
        }
        while (!reqs.back()->test()) {
        }
        // Polling leaves no error behind (a "not ready" would otherwise fail the next kernel
        // launch's check: the trainer polls its gradient buckets between backward's kernels).
        check(cudaGetLastError() == cudaSuccess, "test() leaves no error behind", rank);
        for (auto& q : reqs) q->wait();
        const llm::Tensor hg2 = be->download(g2), ha2 = be->download(a2), hrx2 = be->download(drx2);
        bool nb = true;
        for (int64_t i = 0; i < m * size; ++i)
          nb = nb && hg2.data<float>()[i] == g.data<float>()[i] && ha2.data<float>()[i] == a.data<float>()[i];
        if (ring)
          for (int64_t i = 0; i < m; ++i) nb = nb && hrx2.data<float>()[i] == rx.data<float>()[i];
        check(nb, ring ? "non-blocking all_gather / all_to_all / send / recv (device f32)"
                       : "non-blocking all_gather / all_to_all (device f32)",
              rank);
      }
      // broadcast of a bf16 tensor (bytes) from the last rank
      llm::Tensor b = llm::Tensor::empty({33}, llm::DType::bf16);
      for (int i = 0; i < 33; ++i) static_cast<uint16_t*>(b.raw())[i] = uint16_t(rank * 100 + i);
      llm::Tensor db = be->upload(b);
      comm->broadcast(db, size - 1);
      llm::Tensor bb = be->download(db);
      bool bk = true;
      for (int i = 0; i < 33; ++i) bk = bk && static_cast<uint16_t*>(bb.raw())[i] == uint16_t((size - 1) * 100 + i);
      check(bk, "broadcast (device bf16)", rank);
      // scalars and host tensors go through MPI
      check(comm->all_reduce_sum(double(rank)) == size * (size - 1) / 2.0, "all_reduce_sum (scalar)", rank);
      check(comm->all_reduce_max(double(rank)) == size - 1, "all_reduce_max (scalar)", rank);
      llm::Tensor hostx = llm::Tensor::empty({5});
      hostx.fill(1.0f);
      const int64_t reduced_before = comm->volume().all_reduce;
      comm->all_reduce_sum(hostx);
      check(hostx.data<float>()[4] == float(size), "all_reduce_sum (host tensor)", rank);
      // ... and its bytes count in this communicator's volume (the communication report reads it)
      check(comm->volume().all_reduce - reduced_before == (size > 1 ? 20 : 0), "volume of a host tensor's all-reduce",
            rank);
      comm->barrier();
    } catch (const std::exception& e) {
      std::fprintf(stderr, "rank %d: %s\n", rank, e.what());
      ++failures;
    }
    code = failures ? 1 : 0;
    if (rank == 0 && !failures)
      std::printf("NCCL communicator: all collectives correct on %d ranks (%d GPUs%s)\n", size, count,
                  shared ? ", LLM_NCCL_SHARED_GPU=1" : "");
  }
#endif
  int worst = code;
  MPI_Allreduce(&code, &worst, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  MPI_Finalize();
  return worst;
}
