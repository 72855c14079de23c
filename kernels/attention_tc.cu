// Tensor-core flash attention forward (bf16/f16): placeholder until the mma.sync kernel lands.
#include "common.cuh"
#include "kernels.h"

namespace llm::kernels {

bool attention_forward_tensor_cores(DType, const AttentionForwardArgs&, cudaStream_t) { return false; }

}  // namespace llm::kernels
