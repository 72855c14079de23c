// Where a tensor's bytes live. The CPU backend owns DeviceType::cpu; the CUDA backend owns cuda:N.
#pragma once
#include <string>

namespace llm {

enum class DeviceType { cpu, cuda };

struct Device {
  DeviceType type = DeviceType::cpu;
  int index = 0;
  bool operator==(const Device&) const = default;
  bool is_cpu() const { return type == DeviceType::cpu; }
  std::string str() const { return type == DeviceType::cpu ? "cpu" : "cuda:" + std::to_string(index); }
};

inline constexpr Device kCPU{};

}  // namespace llm
