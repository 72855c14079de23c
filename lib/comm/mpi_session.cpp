#include "comm/mpi_session.h"

#include <mpi.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <initializer_list>
#include <optional>
#include <string>

#include "core/fsync.h"

namespace llm {

std::string ranks_phrase(const std::vector<int>& ranks) {
  std::string s = ranks.size() == 1 ? "rank " : "ranks ";
  const size_t shown = std::min<size_t>(ranks.size(), 6);
  for (size_t i = 0; i < shown; ++i)
    s += (i == 0 ? "" : i + 1 == ranks.size() ? " and " : ", ") + std::to_string(ranks[i]);
  if (shown < ranks.size()) s += " ... (" + std::to_string(ranks.size()) + " ranks)";
  return s;
}

bool launched_by_mpi() {
  if (const char* force = std::getenv("LLM_MPI"); force && *force) return std::string(force) != "0";
  for (const char* v : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMI_RANK", "PMIX_RANK", "PALS_RANKID",
                        "MPI_LOCALNRANKS", "MV2_COMM_WORLD_SIZE"})
    if (const char* x = std::getenv(v); x && *x) return true;
  return false;
}

LauncherWorld launcher_world() {
  const auto read = [](std::initializer_list<const char*> vars) -> std::optional<int> {
    for (const char* v : vars)
      if (const char* x = std::getenv(v); x && *x) {
        char* end = nullptr;
        const long n = std::strtol(x, &end, 10);
        if (*end == '\0' && n >= 0 && n < (1L << 30)) return static_cast<int>(n);
      }
    return std::nullopt;
  };
  LauncherWorld w;
  if (auto r = read({"OMPI_COMM_WORLD_RANK", "PMI_RANK", "PALS_RANKID", "MV2_COMM_WORLD_RANK", "PMIX_RANK"})) w.rank = *r;
  if (auto n = read({"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "MV2_COMM_WORLD_SIZE"})) w.size = std::max(*n, 1);
  w.size = std::max(w.size, w.rank + 1);  // a rank past 0 means several processes, size or not
  return w;
}

void require_single_process(const std::string& tool) {
  if (const LauncherWorld w = launcher_world(); w.size > 1)
    throw ConfigError(tool + " is a single-process tool, but it was started as rank " + std::to_string(w.rank) + " of " +
                      std::to_string(w.size) + " by an MPI launcher: run it without mpirun/mpiexec");
}

MpiSession::MpiSession(int* argc, char*** argv) {
  if (!launched_by_mpi()) return;
  MPI_Init(argc, argv);
  mpi_ = true;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank_);
  MPI_Comm_size(MPI_COMM_WORLD, &size_);
}

MpiSession::~MpiSession() {
  if (mpi_) MPI_Finalize();
}

bool MpiSession::all_ok(bool ok) const {
  if (!mpi_) return ok;
  int mine = ok ? 1 : 0, all = 0;
  MPI_Allreduce(&mine, &all, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
  return all == 1;
}

std::string MpiSession::broadcast(std::string s) const {
  if (!mpi_) return s;
  int n = static_cast<int>(s.size());
  MPI_Bcast(&n, 1, MPI_INT, 0, MPI_COMM_WORLD);
  s.resize(static_cast<size_t>(n));
  MPI_Bcast(s.data(), n, MPI_CHAR, 0, MPI_COMM_WORLD);
  return s;
}

std::vector<std::string> MpiSession::gather(const std::string& s) const {
  if (!mpi_) return {s};
  int n = static_cast<int>(s.size());
  std::vector<int> sizes(static_cast<size_t>(size_)), displs(static_cast<size_t>(size_));
  MPI_Gather(&n, 1, MPI_INT, sizes.data(), 1, MPI_INT, 0, MPI_COMM_WORLD);
  std::string all;
  if (rank_ == 0) {
    int64_t total = 0;
    for (int r = 0; r < size_; ++r) {
      displs[static_cast<size_t>(r)] = static_cast<int>(total);
      total += sizes[static_cast<size_t>(r)];
    }
    all.resize(static_cast<size_t>(total));
  }
  MPI_Gatherv(s.data(), n, MPI_CHAR, all.data(), sizes.data(), displs.data(), MPI_CHAR, 0, MPI_COMM_WORLD);
  std::vector<std::string> out;
  if (rank_ == 0)
    for (int r = 0; r < size_; ++r)
      out.push_back(all.substr(static_cast<size_t>(displs[static_cast<size_t>(r)]), static_cast<size_t>(sizes[static_cast<size_t>(r)])));
  return out;
}

int64_t MpiSession::sum(int64_t v) const {
  if (!mpi_) return v;
  int64_t out = 0;
  MPI_Allreduce(&v, &out, 1, MPI_INT64_T, MPI_SUM, MPI_COMM_WORLD);
  return out;
}

double MpiSession::max(double v) const {
  if (!mpi_) return v;
  double out = 0;
  MPI_Allreduce(&v, &out, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
  return out;
}

int MpiSession::node_size() const {
  if (!mpi_) return 1;
  MPI_Comm node = MPI_COMM_NULL;
  MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, rank_, MPI_INFO_NULL, &node);
  int n = 1;
  MPI_Comm_size(node, &n);
  MPI_Comm_free(&node);
  return n;
}

void MpiSession::barrier() const {
  if (mpi_) MPI_Barrier(MPI_COMM_WORLD);
}

std::vector<int> MpiSession::ranks_not_seeing(const std::string& path) const {
  if (!mpi_ || size_ == 1) return {};
  namespace fs = std::filesystem;
  std::error_code ec;
  std::string probe;
  if (rank_ == 0) {
    fs::path p = fs::absolute(path, ec);
    if (!ec) {
      while (!fs::exists(p, ec) && p.has_parent_path() && p.parent_path() != p) p = p.parent_path();
      if (fs::is_directory(p, ec)) {
        const fs::path f = p / (".llm-shared-probe.tmp-" + staging_tag());
        if (std::ofstream(f) << "a file every rank should see\n") probe = f.string();
      }
    }
  }
  probe = broadcast(probe);
  if (probe.empty()) return {};
  const bool sees = fs::exists(probe, ec);
  const std::vector<std::string> all = gather(sees ? "1" : "0");
  std::vector<int> missing;
  if (rank_ == 0) {
    fs::remove(probe, ec);
    for (int r = 0; r < size_; ++r)
      if (all[static_cast<size_t>(r)] != "1") missing.push_back(r);
  }
  std::string flat;
  for (int r : missing) flat += std::to_string(r) + " ";
  flat = broadcast(flat);
  missing.clear();
  for (size_t at = 0; at < flat.size();) {
    const size_t end = flat.find(' ', at);
    missing.push_back(std::stoi(flat.substr(at, end - at)));
    at = end + 1;
  }
  return missing;
}

void MpiSession::yield_to_lead() const {
  if (!mpi_ || rank_ == 0) return;
  // The whole grace, whatever signals come: the launcher ends a job by SIGTERM first, which a
  // tool may catch (llm-pretrain saves on it), and a sleep it cut short would print anyway.
  timespec left{2, 0};
  while (::nanosleep(&left, &left) != 0 && errno == EINTR) {
  }
}

void MpiSession::abort(int code) const {
  if (mpi_) MPI_Abort(MPI_COMM_WORLD, code);
  std::_Exit(code);  // MPI_Abort does not return; this keeps [[noreturn]] honest
}

}  // namespace llm
