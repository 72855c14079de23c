// The communicator watchdog's policy (comm/watchdog.h) with stand-in query/abort/fail actions:
// healthy rounds do nothing; the first error aborts every handle once and fails naming the one
// that failed; remove() returns only when no query of the handle runs; the thread polls by itself.
// The collective timeout's bookkeeping (PendingOps) with stand-in markers and a made-up clock:
// finished operations are dropped and their markers recycled whatever their order, the oldest
// unfinished one past the timeout (queued, or still in its call) is named with its age, and
// through a handle's check it fails the watchdog like an asynchronous error.
#include "comm/watchdog.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <map>
#include <mutex>
#include <set>
#include <thread>

#include "core/error.h"

namespace {

TEST(Watchdog, PeriodSetting) {
  EXPECT_EQ(llm::watchdog_period_ms(nullptr), 1000);
  EXPECT_EQ(llm::watchdog_period_ms(""), 1000);
  EXPECT_EQ(llm::watchdog_period_ms("0"), 0);
  EXPECT_EQ(llm::watchdog_period_ms("250"), 250);
  for (const char* bad : {"-1", "1s", "x", " 5", "99999999999"}) {
    try {
      llm::watchdog_period_ms(bad);
      ADD_FAILURE() << "'" << bad << "' accepted";
    } catch (const llm::ConfigError& e) {
      EXPECT_NE(std::string(e.what()).find("LLM_NCCL_WATCHDOG_MS='" + std::string(bad) + "'"), std::string::npos)
          << e.what();
    }
  }
}

struct Fake {
  std::mutex mu;
  std::map<void*, std::string> errors;  // what query answers per handle
  std::multiset<void*> aborted;
  std::vector<std::string> failures;
  std::atomic<int> queries{0};
};

TEST(Watchdog, TheFirstErrorAbortsEveryHandleOnceAndNamesTheFailedOne) {
  Fake f;
  int a = 0, b = 0, c = 0;
  llm::Watchdog w(
      0, [&](void* h) { return f.errors.count(h) ? f.errors[h] : std::string(); },
      [&](void* h) {
        // after the failure is reported (an abort first would free the owner's thread first)
        EXPECT_EQ(f.failures.size(), 1u) << "aborted before fail";
        f.aborted.insert(h);
      },
      [&](const std::string& m) { f.failures.push_back(m); });
  w.add(&a, "tp group");
  w.add(&b, "dp group");
  w.add(&c, "pp group");
  EXPECT_TRUE(w.poll());
  EXPECT_TRUE(w.poll());
  EXPECT_TRUE(f.aborted.empty());
  EXPECT_TRUE(f.failures.empty());
  f.errors[&b] = "remote process exited or there was a network error";
  EXPECT_FALSE(w.poll());
  ASSERT_EQ(f.failures.size(), 1u);
  EXPECT_EQ(f.failures[0], "dp group: remote process exited or there was a network error");
  EXPECT_EQ(f.aborted, (std::multiset<void*>{&a, &b, &c}));
  EXPECT_TRUE(w.failed());
  // Later rounds neither abort again nor fail again.
  EXPECT_FALSE(w.poll());
  EXPECT_EQ(f.failures.size(), 1u);
  EXPECT_EQ(f.aborted.size(), 3u);
}

TEST(Watchdog, RemovedHandlesAreNotQueried) {
  Fake f;
  int a = 0, b = 0;
  llm::Watchdog w(0, [&](void* h) { return h == &a ? std::string("gone") : std::string(); },
                  [&](void* h) { f.aborted.insert(h); }, [&](const std::string& m) { f.failures.push_back(m); });
  w.add(&a, "first");
  w.add(&b, "second");
  w.remove(&a);
  EXPECT_TRUE(w.poll());
  EXPECT_TRUE(f.failures.empty());
}

// A communicator's set-up (WatchedPhase): checked while it lives, never queried or aborted as a
// communicator; past its timeout it fails the watchdog naming the phase and its age, and the
// communicators are aborted after the failure as for any error. Gone once destroyed.
TEST(Watchdog, AWatchedPhaseFailsPastItsTimeoutAndIsNoCommunicator) {
  Fake f;
  int comm = 0;
  std::set<void*> queried;
  llm::Watchdog w(
      0,
      [&](void* h) {
        queried.insert(h);
        return std::string();
      },
      [&](void* h) { f.aborted.insert(h); }, [&](const std::string& m) { f.failures.push_back(m); });
  w.add(&comm, "dp group");
  const auto now = llm::WatchedPhase::Clock::now();
  {
    llm::WatchedPhase young(w, "rank 0: the NCCL communicator's set-up", 3.0, now);
    llm::WatchedPhase off(w, "never watched", 0.0, now - std::chrono::seconds(100));
    EXPECT_TRUE(w.poll());
  }
  EXPECT_EQ(queried, std::set<void*>{&comm});  // only the communicator was queried
  EXPECT_TRUE(w.poll());                        // the phases are gone
  {
    llm::WatchedPhase old(w, "rank 0: the NCCL communicator's set-up", 3.0, now - std::chrono::seconds(5));
    EXPECT_FALSE(w.poll());
  }
  ASSERT_EQ(f.failures.size(), 1u);
  EXPECT_EQ(f.failures[0].rfind("rank 0: the NCCL communicator's set-up: not finished 5.0 s after it began", 0), 0u)
      << f.failures[0];
  EXPECT_NE(f.failures[0].find("the timeout is 3.0 s: --distributed-timeout-minutes"), std::string::npos) << f.failures[0];
  EXPECT_EQ(f.aborted, std::multiset<void*>{&comm});  // the communicator, not the phase
  EXPECT_EQ(llm::WatchedPhase::overdue(2.9, 3.0), "");
}

// The thread: polls on its own, notices an error set later, and a remove() racing its rounds
// never sees a query of the removed handle after it returns.
TEST(Watchdog, TheThreadPollsAndRemoveWaitsForARound) {
  Fake f;
  std::atomic<void*> removed{nullptr};
  std::atomic<bool> queried_after_remove{false};
  int a = 0, b = 0;
  std::unique_ptr<llm::Watchdog> w = std::make_unique<llm::Watchdog>(
      1,
      [&](void* h) {
        if (h == removed.load()) queried_after_remove = true;
        ++f.queries;
        std::this_thread::sleep_for(std::chrono::microseconds(200));
        // still running once remove() has returned: remove did not wait for the round
        if (h == removed.load()) queried_after_remove = true;
        std::lock_guard<std::mutex> lock(f.mu);
        return f.errors.count(h) ? f.errors[h] : std::string();
      },
      [&](void* h) {
        std::lock_guard<std::mutex> lock(f.mu);
        f.aborted.insert(h);
      },
      [&](const std::string& m) {
        std::lock_guard<std::mutex> lock(f.mu);
        f.failures.push_back(m);
      });
  for (int round = 0; round < 50; ++round) {
    w->add(&a, "a");
    std::this_thread::sleep_for(std::chrono::microseconds(300));
    w->remove(&a);
    removed = &a;
    std::this_thread::sleep_for(std::chrono::microseconds(300));
    removed = nullptr;
  }
  EXPECT_FALSE(queried_after_remove.load());
  EXPECT_GT(f.queries.load(), 0) << "the thread never polled";
  w->add(&b, "dp group");
  {
    std::lock_guard<std::mutex> lock(f.mu);
    f.errors[&b] = "unhandled system error";
  }
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (!w->failed() && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  ASSERT_TRUE(w->failed());
  w.reset();  // joins
  ASSERT_EQ(f.failures.size(), 1u);
  EXPECT_EQ(f.failures[0], "dp group: unhandled system error");
  EXPECT_EQ(f.aborted, (std::multiset<void*>{&b}));
}

// Markers are ints here; `done` holds the finished ones. `held`: markers the owner has taken
// back (reuse) and not yet pushed again, which no check may query (the owner records them).
struct FakeMarkers {
  std::mutex mu;
  std::set<void*> done, held;
  int held_queries = 0;
  llm::PendingOps::Done query() {
    return [this](void* m) {
      std::lock_guard<std::mutex> lock(mu);
      if (held.count(m)) ++held_queries;
      return done.count(m) > 0;
    };
  }
  void finish(void* m) {
    std::lock_guard<std::mutex> lock(mu);
    done.insert(m);
  }
  void take(void* m) {  // reused: recorded again, so unfinished until its new operation is
    std::lock_guard<std::mutex> lock(mu);
    held.insert(m);
    done.erase(m);
  }
  void give(void* m) {
    std::lock_guard<std::mutex> lock(mu);
    held.erase(m);
  }
};

using Clock = llm::PendingOps::Clock;
Clock::time_point at(Clock::time_point t0, double s) {
  return t0 + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(s));
}

TEST(PendingOps, TheOldestUnfinishedPastTheTimeoutIsNamedAndFinishedMarkersAreReused) {
  FakeMarkers f;
  llm::PendingOps ops(f.query());
  int a = 0, b = 0, c = 0;
  const Clock::time_point t0 = Clock::now();
  EXPECT_EQ(ops.reuse(), nullptr);
  ops.push(&a, "all_reduce_sum", 4096, -1, t0);
  ops.push(&b, "send", 512, 3, at(t0, 1));
  ops.push(&c, "all_gather", 100, -1, at(t0, 2));
  EXPECT_EQ(ops.check(at(t0, 5), 10), "");
  EXPECT_EQ(ops.pending(), 3u);
  EXPECT_EQ(ops.reuse(), nullptr) << "nothing finished yet";
  f.finish(&a);
  EXPECT_EQ(ops.check(at(t0, 10.5), 10), "") << "a (10.5 s old) finished; b is 9.5 s old";
  EXPECT_EQ(ops.pending(), 2u);
  EXPECT_EQ(ops.reuse(), &a);
  EXPECT_EQ(ops.reuse(), nullptr);
  std::string m = ops.check(at(t0, 12.5), 10);
  EXPECT_NE(m.find("send of 512 bytes with rank 3 queued 11.5 s ago has not finished (the timeout is 10.0 s"),
            std::string::npos)
      << m;
  EXPECT_NE(m.find("--distributed-timeout-minutes"), std::string::npos) << m;
  EXPECT_EQ(ops.check(at(t0, 1e6), 0), "") << "timeout 0: none";
  f.finish(&b);
  m = ops.check(at(t0, 12.5), 10);
  EXPECT_NE(m.find("all_gather of 100 bytes queued 10.5 s ago"), std::string::npos) << m;
  EXPECT_EQ(m.find("with rank"), std::string::npos) << m;
  f.finish(&c);
  EXPECT_EQ(ops.check(at(t0, 100), 10), "");
  EXPECT_EQ(ops.pending(), 0u);
}

// Two streams' operations interleave: a later one may finish first, and an earlier one still
// pending is the one timed.
TEST(PendingOps, LaterOperationsMayFinishFirst) {
  FakeMarkers f;
  llm::PendingOps ops(f.query());
  int slow = 0, fast = 0, last = 0;
  const Clock::time_point t0 = Clock::now();
  ops.push(&slow, "all_reduce_sum", 8, -1, t0);           // the communication stream
  ops.push(&fast, "receive", 8, 1, at(t0, 1));             // the compute stream
  ops.push(&last, "reduce_scatter", 8, -1, at(t0, 2));
  f.finish(&fast);
  f.finish(&last);
  const std::string m = ops.check(at(t0, 20), 15);
  EXPECT_NE(m.find("all_reduce_sum of 8 bytes queued 20.0 s ago"), std::string::npos) << m;
  EXPECT_EQ(ops.pending(), 1u);
  std::set<void*> reused{ops.reuse(), ops.reuse()};
  EXPECT_EQ(reused, (std::set<void*>{&fast, &last}));
  // release_all: every marker the set has seen, pending or free, once.
  ops.push(&fast, "send", 8, 2, at(t0, 21));
  std::vector<void*> all = ops.release_all();
  std::multiset<void*> got(all.begin(), all.end());
  EXPECT_EQ(got, (std::multiset<void*>{&slow, &fast}));
  EXPECT_EQ(ops.pending(), 0u);
  EXPECT_EQ(ops.reuse(), nullptr);
}

// Through a handle's check the timeout fails the watchdog as an asynchronous error does: every
// handle aborted, the message naming the communicator and the operation.
TEST(PendingOps, APastTimeoutFailsTheWatchdogThroughTheHandlesCheck) {
  FakeMarkers f;
  Fake w_fake;
  llm::PendingOps ops(f.query());
  int comm_a = 0, comm_b = 0, m1 = 0;
  const Clock::time_point t0 = Clock::now();
  double now = 0;
  llm::Watchdog w(0, [](void*) { return std::string(); }, [&](void* h) { w_fake.aborted.insert(h); },
                  [&](const std::string& m) { w_fake.failures.push_back(m); });
  w.add(&comm_a, "rank 0: the tp group");
  w.add(&comm_b, "rank 0: the dp group", [&] { return ops.check(at(t0, now), 600); });
  ops.push(&m1, "all_gather_ranges (broadcasts)", 1 << 20, -1, t0);
  now = 599;
  EXPECT_TRUE(w.poll());
  now = 601;
  EXPECT_FALSE(w.poll());
  ASSERT_EQ(w_fake.failures.size(), 1u);
  EXPECT_EQ(w_fake.failures[0].rfind("rank 0: the dp group: all_gather_ranges (broadcasts) of 1048576 bytes queued 601.0 s ago", 0),
            0u)
      << w_fake.failures[0];
  EXPECT_EQ(w_fake.aborted, (std::multiset<void*>{&comm_a, &comm_b}));
}

// The owner pushes while the watchdog's thread checks: every marker finished is recycled once,
// none lost, handed out twice, or queried while the owner records it again; the unfinished ones
// stay pending.
TEST(PendingOps, PushAndCheckFromTwoThreads) {
  FakeMarkers f;
  llm::PendingOps ops(f.query());
  std::vector<int> fresh(3000);
  size_t made = 0, unfinished = 0;
  std::atomic<bool> stop{false};
  std::thread checker([&] {
    while (!stop) EXPECT_EQ(ops.check(Clock::now(), 3600), "");
  });
  std::set<void*> seen;
  int reused = 0;
  for (int i = 0; i < 3000; ++i) {
    void* m = ops.reuse();
    if (m) {
      ++reused;
      EXPECT_TRUE(seen.count(m)) << "a marker never pushed came back";
      f.take(m);
    } else {
      m = &fresh[made++];
    }
    if (i % 7 == 3)
      ++unfinished;  // its peer never joins
    else
      f.finish(m);
    if (i % 5 == 0) ops.enter("all_reduce_sum", 4, -1, Clock::now());
    f.give(m);  // recorded: from push() on the checker may query it
    ops.push(m, "all_reduce_sum", 4, -1, Clock::now());
    if (i % 5 == 0) ops.leave();
    seen.insert(m);
    if (i % 300 == 299) {  // now and then the checker catches up, so markers come back
      const auto deadline = Clock::now() + std::chrono::seconds(10);
      while (ops.pending() > unfinished && Clock::now() < deadline) std::this_thread::yield();
    }
  }
  stop = true;
  checker.join();
  EXPECT_EQ(f.held_queries, 0) << "a marker queried between reuse() and push()";
  EXPECT_GT(reused, 0);
  EXPECT_EQ(ops.check(Clock::now(), 3600), "");
  EXPECT_EQ(ops.pending(), unfinished);
  const std::string m = ops.check(Clock::now() + std::chrono::hours(2), 3600);
  EXPECT_NE(m.find("all_reduce_sum of 4 bytes queued"), std::string::npos) << m;
  std::vector<void*> all = ops.release_all();
  EXPECT_EQ(all.size(), made) << "every marker made, pending or free, once";
  EXPECT_EQ(std::set<void*>(all.begin(), all.end()).size(), all.size()) << "a marker freed twice";
}

// The MPI communicators' form: no markers, only the owner's blocking call or wait, named as the
// MPI call it waits in; and their watchdog's period, a tenth of the timeout within [50, 1000] ms.
TEST(PendingOps, AnMpiCallIsNamedAsOne) {
  llm::PendingOps ops([](void*) { return true; }, "MPI");
  const Clock::time_point t0 = Clock::now();
  ops.enter("recv", 64, 1, t0);
  const std::string m = ops.check(at(t0, 3), 2);
  EXPECT_EQ(m.rfind("recv of 64 bytes with rank 1 called 3.0 s ago has not returned (its MPI call waits for the "
                    "peers) (the timeout is 2.0 s",
                    0),
            0u)
      << m;
  ops.leave();
  EXPECT_EQ(ops.check(at(t0, 3), 2), "");
  EXPECT_EQ(llm::watchdog_period_for(2.0), 200);
  EXPECT_EQ(llm::watchdog_period_for(0.1), 50);
  EXPECT_EQ(llm::watchdog_period_for(600.0), 1000);
}

// NCCL may wait inside the call itself (a pair's first operation connects them): the operation
// is timed from its call until leave(), named as still in its call; the older of it and the
// queued ones is the one named. After release_all() nothing is checked and push() refuses.
TEST(PendingOps, AnOperationStillInItsCallIsTimedFromTheCall) {
  FakeMarkers f;
  llm::PendingOps ops(f.query());
  int a = 0;
  const Clock::time_point t0 = Clock::now();
  ops.push(&a, "send", 8, 1, at(t0, 5));
  ops.enter("all_reduce_sum", 4096, -1, at(t0, 1));
  std::string m = ops.check(at(t0, 12), 10);
  EXPECT_EQ(m.rfind("all_reduce_sum of 4096 bytes called 11.0 s ago has not returned (its NCCL call waits for the "
                    "peers) (the timeout is 10.0 s",
                    0),
            0u)
      << m;
  EXPECT_EQ(ops.check(at(t0, 10.5), 10), "") << "9.5 s in the call";
  ops.leave();
  EXPECT_EQ(ops.check(at(t0, 12), 10), "") << "the send is 7 s old";
  ops.enter("broadcast", 8, 0, at(t0, 9));
  m = ops.check(at(t0, 20), 10);
  EXPECT_EQ(m.rfind("send of 8 bytes with rank 1 queued 15.0 s ago has not finished", 0), 0u) << m;
  ops.leave();
  f.finish(&a);
  EXPECT_EQ(ops.check(at(t0, 100), 10), "");
  EXPECT_EQ(ops.pending(), 0u);
  ops.enter("all_gather", 8, -1, t0);
  EXPECT_EQ(ops.release_all(), std::vector<void*>{&a});
  EXPECT_EQ(ops.check(at(t0, 100), 10), "") << "closed";
  int b = 0;
  EXPECT_THROW(ops.push(&b, "send", 8, 1, t0), llm::Error);
}

}  // namespace
