#include "sweep/child.h"

#include <fcntl.h>
#include <signal.h>
#include <dirent.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <deque>
#include <fstream>
#include <thread>

#include "core/error.h"

extern char** environ;

namespace llm::sweep {

namespace {

// The processes of session `sid` (the child and everything it started: mpiexec gives each rank
// its own process group, but they stay in the session).
std::vector<pid_t> session_processes(pid_t sid) {
  std::vector<pid_t> out;
  DIR* d = ::opendir("/proc");
  if (!d) return out;
  while (const dirent* e = ::readdir(d)) {
    if (e->d_name[0] < '0' || e->d_name[0] > '9') continue;
    const pid_t pid = static_cast<pid_t>(std::atoi(e->d_name));
    if (::getsid(pid) == sid) out.push_back(pid);
  }
  ::closedir(d);
  return out;
}

// Largest current and peak resident set (bytes) among the processes of session `sid`.
std::pair<int64_t, int64_t> session_rss(pid_t sid) {
  int64_t cur = 0, peak = 0;
  for (pid_t pid : session_processes(sid)) {
    std::ifstream st("/proc/" + std::to_string(pid) + "/status");
    std::string key;
    int64_t kb = 0;
    while (st >> key) {
      if (key == "VmRSS:" && st >> kb) cur = std::max(cur, kb * 1024);
      else if (key == "VmHWM:" && st >> kb) peak = std::max(peak, kb * 1024);
    }
  }
  return {cur, peak};
}

void kill_session(pid_t sid) {
  for (int pass = 0; pass < 3; ++pass) {
    const std::vector<pid_t> pids = session_processes(sid);
    if (pids.empty()) return;
    for (pid_t pid : pids) ::kill(pid, SIGKILL);
  }
}

}  // namespace

ChildResult run_child(const std::vector<std::string>& argv, const ChildOptions& o) {
  LLM_CHECK(!argv.empty(), "run_child: empty command");
  // Everything the child needs is prepared before fork (only async-signal-safe calls after).
  std::vector<char*> args;
  for (const std::string& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  std::vector<std::string> env_store;
  for (char** e = environ; *e; ++e) {
    const std::string kv = *e;
    const std::string name = kv.substr(0, kv.find('='));
    bool overridden = false;
    for (const std::string& x : o.env) overridden |= x.substr(0, x.find('=')) == name;
    if (!overridden) env_store.push_back(kv);
  }
  for (const std::string& x : o.env) env_store.push_back(x);
  std::vector<char*> envp;
  for (std::string& e : env_store) envp.push_back(e.data());
  envp.push_back(nullptr);
  const int out_fd = o.stdout_path.empty() ? -1 : ::open(o.stdout_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  const int err_fd = o.stderr_path.empty() ? -1 : ::open(o.stderr_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if ((!o.stdout_path.empty() && out_fd < 0) || (!o.stderr_path.empty() && err_fd < 0))
    throw Error("cannot open the output files of a sweep point (" + o.stdout_path + "): " + std::strerror(errno));

  const auto start = std::chrono::steady_clock::now();
  const pid_t pid = ::fork();
  if (pid < 0) throw Error(std::string("fork failed: ") + std::strerror(errno));
  if (pid == 0) {
    ::setsid();  // its own session: ranks mpiexec starts stay in it, whatever their process group
    if (out_fd >= 0) ::dup2(out_fd, 1);
    if (err_fd >= 0) ::dup2(err_fd, 2);
    ::execvpe(args[0], args.data(), envp.data());
    const char msg[] = "sweep: cannot execute the command\n";
    (void)!::write(2, msg, sizeof msg - 1);
    ::_exit(127);
  }
  if (out_fd >= 0) ::close(out_fd);
  if (err_fd >= 0) ::close(err_fd);

  ChildResult r;
  int status = 0;
  struct rusage ru{};
  for (;;) {
    const pid_t w = ::wait4(pid, &status, WNOHANG, &ru);
    if (w == pid) break;
    if (w < 0 && errno != EINTR) throw Error(std::string("wait4 failed: ") + std::strerror(errno));
    const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if (o.timeout_seconds > 0 && elapsed > o.timeout_seconds && !r.timed_out && !r.over_memory) {
      r.timed_out = true;
      kill_session(pid);
    }
    const auto [rss, hwm] = session_rss(pid);
    r.max_rss_bytes = std::max({r.max_rss_bytes, rss, hwm});
    if (o.mem_limit_bytes > 0 && rss > o.mem_limit_bytes && !r.over_memory && !r.timed_out) {
      r.over_memory = true;
      kill_session(pid);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  r.wall_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  r.max_rss_bytes = std::max(r.max_rss_bytes, static_cast<int64_t>(ru.ru_maxrss) * 1024);
  if (WIFEXITED(status)) {
    r.exit_code = WEXITSTATUS(status);
    r.exec_failed = r.exit_code == 127;
  } else if (WIFSIGNALED(status)) {
    r.signal = WTERMSIG(status);
  }
  kill_session(pid);  // no stray ranks outlive their point (the child itself is reaped: not in the session)
  return r;
}

std::string tail_lines(const std::string& path, int max_lines) {
  std::ifstream in(path);
  std::deque<std::string> lines;
  std::string line;
  while (std::getline(in, line)) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    lines.push_back(line);
    if (static_cast<int>(lines.size()) > max_lines) lines.pop_front();
  }
  std::string out;
  for (const std::string& l : lines) out += (out.empty() ? "" : "\n") + l;
  return out;
}

}  // namespace llm::sweep
