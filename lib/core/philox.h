// Counter-based random numbers (Philox4x32-10, Salmon et al. 2011).
//
// A draw is a pure function of (seed, stream, index): no state is carried from one element to
// the next. Parameters are initialised with stream = hash of the parameter's global name and
// index = the element's global flat index, so any rank can generate exactly its slice and every
// parallel layout gets the same global weights from the same seed.
#pragma once
#include <array>
#include <cstdint>
#include <string_view>

namespace llm {

using PhiloxBlock = std::array<uint32_t, 4>;

// One Philox4x32-10 block: 4 independent uniform 32-bit words.
PhiloxBlock philox4x32(uint64_t seed, uint64_t stream, uint64_t index);

// 64-bit FNV-1a, used to turn parameter names into RNG streams.
uint64_t hash_name(std::string_view name);

// Uniform in (0, 1), never exactly 0 or 1.
float philox_uniform(uint64_t seed, uint64_t stream, uint64_t index);
// The 32-bit word -> (0, 1) map philox_uniform uses.
float open_unit_float(uint32_t u);
// Standard normal (Box-Muller on the block's first two words).
float philox_normal(uint64_t seed, uint64_t stream, uint64_t index);
// Uniform integer in [0, n).
uint64_t philox_below(uint64_t seed, uint64_t stream, uint64_t index, uint64_t n);

}  // namespace llm
