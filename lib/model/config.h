// GPT model hyper-parameters, validated before anything is allocated.
#pragma once
#include <cstdint>
#include <string>

namespace llm {

struct GPTConfig {
  std::string name = "custom";
  int64_t num_layers = 2;
  int64_t hidden_size = 64;
  int64_t num_heads = 4;
  int64_t ffn_hidden_size = 0;          // 0 = 4 * hidden_size
  int64_t max_position_embeddings = 0;  // 0 = seq_length
  int64_t vocab_size = 256;             // real vocabulary (tokenizer size)
  int64_t vocab_divisible_by = 128;     // Megatron's --make-vocab-size-divisible-by
  int64_t tensor_parallel = 1;          // padding is to divisible_by * tp
  float layernorm_eps = 1e-5f;
  float init_std = 0.02f;               // Megatron's --init-method-std (output projections / sqrt(2L))
  bool flash_attention = true;          // the CPU attention is always flash-style

  int64_t ffn() const { return ffn_hidden_size ? ffn_hidden_size : 4 * hidden_size; }
  int64_t head_dim() const { return hidden_size / num_heads; }
  int64_t padded_vocab_size() const {
    const int64_t m = vocab_divisible_by * tensor_parallel;
    return (vocab_size + m - 1) / m * m;
  }
  // Throws ConfigError naming the offending flag. seq_length is checked against the position
  // table when given (> 0).
  void validate(int64_t seq_length = 0) const;
  // Parameter count (with the padded vocabulary; embeddings tied). The position table has
  // seq_length rows when max_position_embeddings is 0, as the model builds it.
  int64_t num_parameters(int64_t seq_length = 0) const;
};

}  // namespace llm
