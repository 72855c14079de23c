// ProfilingBackend: every op reaches the inner backend with the same result; it is timed only
// while enabled (the benches build one model on it and profile a single step).
#include <gtest/gtest.h>

#include "backend/profiling_backend.h"
#include "backend/test_util.h"

namespace {

TEST(ProfilingBackend, TimesOpsOnlyWhileEnabled) {
  llm::ProfilingBackend prof(llm::cpu_backend());
  bt::Rng rng(41);
  const bt::Vec x = rng.normal(64);
  llm::Tensor in = bt::host_f32({64}, x), a = llm::Tensor::empty({64}), b = llm::Tensor::empty({64});
  llm::cpu_backend().gelu_forward(a, in);

  prof.set_enabled(false);
  prof.gelu_forward(b, in);
  EXPECT_TRUE(prof.profile().empty()) << "disabled: nothing recorded";
  EXPECT_TRUE(bt::all_equal("gelu through the disabled decorator", bt::to_vec(b), bt::to_vec(a)));

  prof.set_enabled(true);
  prof.gelu_forward(b, in);
  prof.gelu_forward(b, in);
  ASSERT_EQ(prof.profile().count("gelu_forward"), 1u);
  EXPECT_EQ(prof.profile().at("gelu_forward").calls, 2);
  EXPECT_GE(prof.profile().at("gelu_forward").seconds, 0.0);
  EXPECT_NE(prof.report().find("gelu_forward"), std::string::npos);
  EXPECT_TRUE(bt::all_equal("gelu through the enabled decorator", bt::to_vec(b), bt::to_vec(a)));
}

}  // namespace
