#include "core/philox.h"

#include <cmath>

namespace llm {

PhiloxBlock philox4x32(uint64_t seed, uint64_t stream, uint64_t index) {
  constexpr uint32_t M0 = 0xD2511F53u, M1 = 0xCD9E8D57u;
  constexpr uint32_t W0 = 0x9E3779B9u, W1 = 0xBB67AE85u;
  uint32_t c0 = static_cast<uint32_t>(index), c1 = static_cast<uint32_t>(index >> 32);
  uint32_t c2 = static_cast<uint32_t>(stream), c3 = static_cast<uint32_t>(stream >> 32);
  uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
  for (int round = 0; round < 10; ++round) {
    uint64_t p0 = static_cast<uint64_t>(M0) * c0;
    uint64_t p1 = static_cast<uint64_t>(M1) * c2;
    uint32_t n0 = static_cast<uint32_t>(p1 >> 32) ^ c1 ^ k0;
    uint32_t n1 = static_cast<uint32_t>(p1);
    uint32_t n2 = static_cast<uint32_t>(p0 >> 32) ^ c3 ^ k1;
    uint32_t n3 = static_cast<uint32_t>(p0);
    c0 = n0; c1 = n1; c2 = n2; c3 = n3;
    k0 += W0;
    k1 += W1;
  }
  return {c0, c1, c2, c3};
}

uint64_t hash_name(std::string_view name) {
  uint64_t h = 1469598103934665603ull;
  for (unsigned char c : name) {
    h ^= c;
    h *= 1099511628211ull;
  }
  return h;
}

float open_unit_float(uint32_t u) {
  // 23 random bits, centred in their bucket: (k + 0.5) / 2^23 is exact in a float and in (0, 1).
  // (24 bits would not be: k + 0.5 then needs 25, and the top bucket rounds to exactly 1.)
  return (static_cast<float>(u >> 9) + 0.5f) * (1.0f / 8388608.0f);
}

float philox_uniform(uint64_t seed, uint64_t stream, uint64_t index) {
  return open_unit_float(philox4x32(seed, stream, index)[0]);
}

float philox_normal(uint64_t seed, uint64_t stream, uint64_t index) {
  PhiloxBlock b = philox4x32(seed, stream, index);
  // Box-Muller in double so the tails are right; 32-bit uniforms for the radius.
  double u1 = (static_cast<double>(b[0]) + 0.5) / 4294967296.0;
  double u2 = static_cast<double>(b[1]) / 4294967296.0;
  return static_cast<float>(std::sqrt(-2.0 * std::log(u1)) * std::cos(2.0 * M_PI * u2));
}

uint64_t philox_below(uint64_t seed, uint64_t stream, uint64_t index, uint64_t n) {
  PhiloxBlock b = philox4x32(seed, stream, index);
  uint64_t r = (static_cast<uint64_t>(b[0]) << 32) | b[1];
  __extension__ using u128 = unsigned __int128;  // multiply-shift: unbiased enough, no modulo
  return static_cast<uint64_t>((static_cast<u128>(r) * n) >> 64);
}

}  // namespace llm
