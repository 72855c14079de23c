// Element types a Tensor can hold. Host compute is f32; bf16/f16 are storage and device
// compute types; the integer types hold token ids and dataset arrays.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string_view>

namespace llm {

enum class DType : uint8_t { f32, bf16, f16, i32, i64, u16, u8 };

constexpr size_t dtype_size(DType t) {
  switch (t) {
    case DType::f32: return 4;
    case DType::bf16: return 2;
    case DType::f16: return 2;
    case DType::i32: return 4;
    case DType::i64: return 8;
    case DType::u16: return 2;
    case DType::u8: return 1;
  }
  return 0;
}

constexpr std::string_view dtype_name(DType t) {
  switch (t) {
    case DType::f32: return "f32";
    case DType::bf16: return "bf16";
    case DType::f16: return "f16";
    case DType::i32: return "i32";
    case DType::i64: return "i64";
    case DType::u16: return "u16";
    case DType::u8: return "u8";
  }
  return "?";
}

// The floating-point types a tensor of values may hold (f32; bf16/f16 under mixed precision).
constexpr bool is_float(DType t) { return t == DType::f32 || t == DType::bf16 || t == DType::f16; }

// The DType that stores C++ type T (compile-time mapping used by Tensor::data<T>()).
template <typename T> constexpr DType dtype_of();
template <> constexpr DType dtype_of<float>() { return DType::f32; }
template <> constexpr DType dtype_of<int32_t>() { return DType::i32; }
template <> constexpr DType dtype_of<int64_t>() { return DType::i64; }
template <> constexpr DType dtype_of<uint16_t>() { return DType::u16; }
template <> constexpr DType dtype_of<uint8_t>() { return DType::u8; }

// bf16 <-> f32 with round-to-nearest-even (NaN stays NaN).
inline uint16_t f32_to_bf16(float f) {
  uint32_t u;
  __builtin_memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40);
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}
inline float bf16_to_f32(uint16_t h) {
  uint32_t u = static_cast<uint32_t>(h) << 16;
  float f;
  __builtin_memcpy(&f, &u, 4);
  return f;
}
// IEEE half <-> f32 through the compiler's _Float16 (GCC >= 12 on x86-64).
inline uint16_t f32_to_f16(float f) {
  _Float16 h = static_cast<_Float16>(f);
  uint16_t u;
  __builtin_memcpy(&u, &h, 2);
  return u;
}
inline float f16_to_f32(uint16_t u) {
  _Float16 h;
  __builtin_memcpy(&h, &u, 2);
  return static_cast<float>(h);
}

}  // namespace llm
