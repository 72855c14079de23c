#include <gtest/gtest.h>

#include <cmath>
#include <set>

#include "core/philox.h"

using namespace llm;

// Known-answer test: Random123's published Philox4x32-10 vector for counter = key = 0.
TEST(Philox, KnownAnswerZero) {
  PhiloxBlock b = philox4x32(0, 0, 0);
  EXPECT_EQ(b[0], 0x6627e8d5u);
  EXPECT_EQ(b[1], 0xe169c58du);
  EXPECT_EQ(b[2], 0xbc57ac4cu);
  EXPECT_EQ(b[3], 0x9b00dbd8u);
}

// Random123 vector for counter = key = all ones.
TEST(Philox, KnownAnswerOnes) {
  PhiloxBlock b = philox4x32(~0ull, ~0ull, ~0ull);
  EXPECT_EQ(b[0], 0x408f276du);
  EXPECT_EQ(b[1], 0x41c83b0eu);
  EXPECT_EQ(b[2], 0xa20bc7c6u);
  EXPECT_EQ(b[3], 0x6d5451fdu);
}

TEST(Philox, NormalMoments) {
  const int n = 200000;
  double s = 0, s2 = 0, s4 = 0;
  for (int i = 0; i < n; ++i) {
    double x = philox_normal(42, hash_name("w"), i);
    s += x;
    s2 += x * x;
    s4 += x * x * x * x;
  }
  EXPECT_NEAR(s / n, 0.0, 0.01);
  EXPECT_NEAR(s2 / n, 1.0, 0.01);
  EXPECT_NEAR(s4 / n, 3.0, 0.06);
}

TEST(Philox, UniformRangeAndStreamsDiffer) {
  std::set<float> seen;
  for (int i = 0; i < 1000; ++i) {
    float u = philox_uniform(1, 2, i);
    EXPECT_GT(u, 0.0f);
    EXPECT_LT(u, 1.0f);
    seen.insert(u);
  }
  EXPECT_GT(seen.size(), 990u);
  EXPECT_NE(philox_uniform(1, hash_name("a"), 7), philox_uniform(1, hash_name("b"), 7));
  EXPECT_NE(philox_uniform(1, 5, 7), philox_uniform(2, 5, 7));
  for (int i = 0; i < 1000; ++i) EXPECT_LT(philox_below(3, 4, i, 10), 10u);
  // the extreme words stay strictly inside (0, 1) (24 bits put the top one at exactly 1)
  EXPECT_GT(open_unit_float(0u), 0.0f);
  EXPECT_LT(open_unit_float(0xFFFFFFFFu), 1.0f);
  EXPECT_LT(open_unit_float(0xFFFFFF00u), 1.0f);
}
