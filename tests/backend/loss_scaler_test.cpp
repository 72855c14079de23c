// Dynamic loss scaling policy (Megatron's DynamicGradScaler with the issue's defaults).
#include "backend/loss_scaler.h"

#include <gtest/gtest.h>

#include "core/error.h"

namespace {

TEST(LossScaler, DefaultsAreTheIssuePolicy) {
  llm::LossScaler s;
  EXPECT_EQ(s.scale(), 4096.0);
  EXPECT_EQ(s.config().window, 1000);
  EXPECT_EQ(s.config().hysteresis, 2);
  EXPECT_EQ(s.config().min_scale, 1.0);
  EXPECT_TRUE(s.dynamic());
}

TEST(LossScaler, GrowsAfterAWindowOfGoodSteps) {
  llm::LossScalerConfig c;
  c.window = 3;
  llm::LossScaler s(c);
  EXPECT_TRUE(s.update(false));
  EXPECT_TRUE(s.update(false));
  EXPECT_EQ(s.scale(), 4096.0);
  EXPECT_TRUE(s.update(false));
  EXPECT_EQ(s.scale(), 8192.0);
  for (int i = 0; i < 3; ++i) s.update(false);
  EXPECT_EQ(s.scale(), 16384.0);
  EXPECT_EQ(s.skipped(), 0);
}

TEST(LossScaler, HysteresisDelaysTheBackoffAndEverySkipIsCounted) {
  llm::LossScalerConfig c;
  c.window = 4;
  llm::LossScaler s(c);
  EXPECT_FALSE(s.update(true));  // first overflow: skipped, scale kept (hysteresis 2)
  EXPECT_EQ(s.scale(), 4096.0);
  EXPECT_FALSE(s.update(true));  // second: halves
  EXPECT_EQ(s.scale(), 2048.0);
  EXPECT_FALSE(s.update(true));  // budget spent: every further overflow halves
  EXPECT_EQ(s.scale(), 1024.0);
  EXPECT_EQ(s.skipped(), 3);
  // an overflow restarts the growth window
  s.update(false), s.update(false), s.update(false);
  EXPECT_FALSE(s.update(true));
  EXPECT_EQ(s.scale(), 512.0);
  for (int i = 0; i < 3; ++i) s.update(false);
  EXPECT_EQ(s.scale(), 512.0);
  s.update(false);  // 4th consecutive good step: grows and restores the hysteresis budget
  EXPECT_EQ(s.scale(), 1024.0);
  EXPECT_FALSE(s.update(true));
  EXPECT_EQ(s.scale(), 1024.0);
  EXPECT_EQ(s.skipped(), 5);
}

TEST(LossScaler, NeverBelowTheMinimum) {
  llm::LossScalerConfig c;
  c.initial_scale = 4;
  c.min_scale = 1;
  c.hysteresis = 1;
  llm::LossScaler s(c);
  for (int i = 0; i < 10; ++i) EXPECT_FALSE(s.update(true));
  EXPECT_EQ(s.scale(), 1.0);
  EXPECT_EQ(s.skipped(), 10);
}

TEST(LossScaler, ConstantScalerNeverChangesButStillSkipsNonFiniteSteps) {
  llm::LossScaler s = llm::LossScaler::constant(1.0);
  EXPECT_FALSE(s.dynamic());
  for (int i = 0; i < 2500; ++i) EXPECT_TRUE(s.update(false));
  EXPECT_FALSE(s.update(true));
  EXPECT_EQ(s.scale(), 1.0);
  EXPECT_EQ(s.skipped(), 1);
}

TEST(LossScaler, StateRoundTripsForCheckpoints) {
  llm::LossScalerConfig c;
  c.window = 2;
  llm::LossScaler a(c), b(c);
  a.update(true), a.update(false);
  b.restore(a.state());
  for (bool f : {false, true, true, false, false}) EXPECT_EQ(a.update(f), b.update(f));
  EXPECT_EQ(a.scale(), b.scale());
  EXPECT_EQ(a.skipped(), b.skipped());
}

TEST(LossScaler, ResumedWithASmallerWindowStillGrows) {
  llm::LossScalerConfig c;
  c.window = 500;
  llm::LossScaler s(c);
  llm::LossScalerState saved;  // a checkpoint of a run with --loss-scale-window 1000
  saved.scale = 1024.0;
  saved.good_steps = 700;
  saved.hysteresis_left = 2;
  s.restore(saved);
  EXPECT_TRUE(s.update(false));
  EXPECT_EQ(s.scale(), 2048.0);
  EXPECT_EQ(s.state().good_steps, 0);
}

TEST(LossScaler, RejectsBadConfigurations) {
  llm::LossScalerConfig c;
  c.min_scale = 8192;
  EXPECT_THROW(llm::LossScaler{c}, llm::Error);
  c = {};
  c.window = 0;
  EXPECT_THROW(llm::LossScaler{c}, llm::Error);
  c = {};
  c.backoff = 1.0;
  EXPECT_THROW(llm::LossScaler{c}, llm::Error);
}

}  // namespace
