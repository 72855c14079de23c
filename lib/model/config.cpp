#include "model/config.h"

#include "core/error.h"

namespace llm {

void GPTConfig::validate(int64_t seq_length) const {
  auto fail = [&](auto&&... parts) {
    throw ConfigError(detail::concat("model '", name, "': ", parts...));
  };
  if (num_layers < 1) fail("--num-layers must be >= 1, got ", num_layers);
  if (hidden_size < 1) fail("--hidden-size must be >= 1, got ", hidden_size);
  if (num_heads < 1) fail("--num-attention-heads must be >= 1, got ", num_heads);
  if (hidden_size % num_heads)
    fail("--hidden-size ", hidden_size, " is not divisible by --num-attention-heads ", num_heads);
  if (flash_attention && head_dim() % 8)
    fail("head dim ", head_dim(), " (hidden-size / num-attention-heads) must be a multiple of 8 for flash attention");
  if (ffn_hidden_size < 0) fail("--ffn-hidden-size must be >= 0, got ", ffn_hidden_size);
  if (vocab_size < 1) fail("--vocab-size must be >= 1, got ", vocab_size);
  if (vocab_divisible_by < 1) fail("--make-vocab-size-divisible-by must be >= 1, got ", vocab_divisible_by);
  if (tensor_parallel < 1) fail("--tensor-model-parallel-size must be >= 1, got ", tensor_parallel);
  if (num_heads % tensor_parallel)
    fail("--num-attention-heads ", num_heads, " is not divisible by --tensor-model-parallel-size ", tensor_parallel);
  if (ffn() % tensor_parallel)
    fail("FFN hidden size ", ffn(), " is not divisible by --tensor-model-parallel-size ", tensor_parallel);
  if (tensor_parallel > 1 && vocab_size <= padded_vocab_size() - padded_vocab_size() / tensor_parallel)
    fail("--vocab-size ", vocab_size, " leaves the last of ", tensor_parallel, " vocabulary shards of ",
         padded_vocab_size() / tensor_parallel, " rows without a real token (padded to ", padded_vocab_size(),
         "): lower --make-vocab-size-divisible-by");
  const int64_t maxpos = max_position_embeddings ? max_position_embeddings : seq_length;
  if (maxpos < 1) fail("--max-position-embeddings (or --seq-length) must be >= 1");
  if (seq_length > maxpos)
    fail("--seq-length ", seq_length, " exceeds --max-position-embeddings ", maxpos);
  if (!(layernorm_eps > 0)) fail("--layernorm-epsilon must be > 0");
}

int64_t GPTConfig::num_parameters(int64_t seq_length) const {
  const int64_t C = hidden_size, F = ffn(), L = num_layers;
  const int64_t per_layer = 2 * C + (3 * C * C + 3 * C) + (C * C + C) + 2 * C + (F * C + F) + (C * F + C);
  const int64_t positions = max_position_embeddings ? max_position_embeddings : seq_length;
  return padded_vocab_size() * C + positions * C + L * per_layer + 2 * C;
}

}  // namespace llm
