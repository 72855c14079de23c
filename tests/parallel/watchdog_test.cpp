// The communicator watchdog's policy (comm/watchdog.h) with stand-in query/abort/fail actions:
// healthy rounds do nothing; the first error aborts every handle once and fails naming the one
// that failed; remove() returns only when no query of the handle runs; the thread polls by itself.
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
  llm::Watchdog w(0, [&](void* h) { return f.errors.count(h) ? f.errors[h] : std::string(); },
                  [&](void* h) { f.aborted.insert(h); }, [&](const std::string& m) { f.failures.push_back(m); });
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

}  // namespace
