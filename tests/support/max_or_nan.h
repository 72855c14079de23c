// The larger of a running error and a new one, where a NaN wins and stays: std::max(err, NaN)
// returns err, so an error measure built on it passes a tensor full of NaN.
#pragma once
#include <cmath>

namespace llm::testing {

template <class T>
T max_or_nan(T worst, T x) {
  return std::isnan(worst) || x <= worst ? worst : x;
}

}  // namespace llm::testing
