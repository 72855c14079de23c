// The shared memory a kernel may opt in to: the device's maximum, or LLM_CUDA_SMEM_LIMIT's lower
// cap, so that an H100 (232448 bytes per block) can run the kernel set of a smaller card under
// that card's limit (an A100: 166912) and show that every launch fits it. allow_smem (common.cuh)
// checks each opt-in against it.
#include <string>

#include "common.cuh"
#include "kernels.h"

namespace llm::kernels {

namespace {
// The per-block opt-in maxima (CUDA C Programming Guide, "Technical Specifications per Compute
// Capability": 163 KiB on 8.0, 99 KiB on 8.6 and 8.9, 227 KiB on 9.0).
constexpr struct {
  const char* name;
  int bytes;
} kNamed[] = {{"sm80", 166912}, {"sm86", 101376}, {"sm89", 101376}, {"sm90", 232448}};

int parse_smem_limit(const std::string& s) {
  if (s.empty()) return 0;
  for (const auto& n : kNamed)
    if (s == n.name) return n.bytes;
  // Decimal digits only (no sign, no suffix), at most 9 of them: an int.
  bool digits = s.size() <= 9;
  for (const char c : s) digits = digits && c >= '0' && c <= '9';
  if (digits) {
    const int v = std::stoi(s);
    if (v >= 48 * 1024) return v;
  }
  LLM_FAIL("LLM_CUDA_SMEM_LIMIT='", s,
           "': expected a byte count of at least 49152, sm80 (166912: A100), sm86 or sm89 (101376) or sm90 (232448)");
}

// 0 without a usable device (auto's pick asks before any launch; nothing launches then).
int device_smem_optin() {
  static const int v = [] {
    int dev = 0, optin = 0;
    if (cudaGetDevice(&dev) != cudaSuccess ||
        cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev) != cudaSuccess) {
      (void)cudaGetLastError();
      return 0;
    }
    return optin;
  }();
  return v;
}
}  // namespace

int smem_limit_setting() {
  static const int v = [] {
    const char* e = std::getenv("LLM_CUDA_SMEM_LIMIT");
    return parse_smem_limit(e ? e : "");
  }();
  return v;
}

size_t smem_optin_limit() { return static_cast<size_t>(smem_capped() ? smem_limit_setting() : device_smem_optin()); }

bool smem_capped() { return smem_limit_setting() > 0 && smem_limit_setting() < device_smem_optin(); }

}  // namespace llm::kernels
