// Hugging Face GPT-2 (transformers' GPT2LMHeadModel) export and import.
//
// A Hugging Face model directory holds:
//   config.json         GPT2Config: model_type "gpt2", n_embd, n_layer, n_head, n_positions,
//                       n_inner (null = 4 * n_embd), vocab_size, layer_norm_epsilon, ...
//   model.safetensors   the state dict. GPT2LMHeadModel names its tensors "transformer.wte.weight",
//                       "transformer.h.0.attn.c_attn.weight", ..., "transformer.ln_f.bias"; the
//                       tied "lm_head.weight" is left out (save_pretrained drops tied copies).
//                       Linear layers are Conv1D, stored [in, out] (ours are [out, in]); wte has
//                       exactly vocab_size rows (ours is padded to a multiple of 128).
//   tokenizer files     vocab.json + merges.txt (GPT-2 byte-level BPE; the same files as GPT-2's
//                       encoder.json + vocab.bpe) or tokenizer.model (SentencePiece).
//
// No tokenizer_config.json is written: with model_type "gpt2", transformers' AutoTokenizer loads
// vocab.json + merges.txt as GPT2Tokenizer(Fast) by itself; a SentencePiece tokenizer.model needs
// the loading side to name its tokenizer class.
//
// Our parameter names are GPT-2's without the "transformer." prefix ("wte", "wpe",
// "h.{i}.ln_1.weight", ...; see model/gpt.h), so conversion is a rename, a transpose of the four
// Conv1D weights per layer, and cutting/padding wte's vocabulary rows. Values are copied as f32
// bit for bit both ways.
#pragma once
#include <cstdint>
#include <functional>
#include <map>
#include <string>

#include "core/tensor.h"
#include "model/config.h"

namespace llm {

// The tokenizer that goes with a model directory.
//   kind gpt2_bpe:      vocab_file (encoder.json / vocab.json) and merge_file (vocab.bpe /
//                       merges.txt); exported as vocab.json and merges.txt.
//   kind sentencepiece: model_file (a SentencePiece .model); exported as tokenizer.model.
//   kind none:          no tokenizer files.
// eod_id is the end-of-document token (bos_token_id and eos_token_id in config.json, as for
// GPT-2's <|endoftext|> = 50256); -1 = unknown (written as null).
struct HFTokenizerFiles {
  enum class Kind { none, gpt2_bpe, sentencepiece };
  Kind kind = Kind::none;
  std::string vocab_file;
  std::string merge_file;
  std::string model_file;
  int64_t eod_id = -1;
};

// Writes a Hugging Face GPT-2 directory `dir`: model.safetensors (F32, metadata {"format": "pt"}
// as transformers requires), config.json and the tokenizer files. param(name) returns our host
// f32 parameter `name` in our layout (wte [padded vocab, C], linear weights [out, in]); shapes
// are checked. The directory is assembled under "<dir>.tmp-<pid>-<n>" next to it and renamed into
// place, so `dir` is either absent/unchanged or complete. An existing non-empty `dir` is refused
// (ConfigError) unless `overwrite`, in which case it is replaced only once the new one is
// complete. Parent directories are created.
void export_hf_gpt2(const std::string& dir, const GPTConfig& config,
                    const std::function<Tensor(const std::string& name)>& param, const HFTokenizerFiles& tokenizer,
                    bool overwrite = false);

struct HFGpt2Import {
  GPTConfig config;                      // max_position_embeddings = n_positions; name = dir's name
  std::map<std::string, Tensor> params;  // our names and layout, host f32; wte zero-padded
  HFTokenizerFiles tokenizer;            // files found in the directory; eod_id = eos_token_id
};

// Reads a Hugging Face GPT-2 directory: config.json plus model.safetensors (or the shards listed
// in model.safetensors.index.json). Tensor names may carry the "transformer." prefix or not;
// "attn.bias"/"attn.masked_bias" buffers are ignored, "lm_head.weight" is accepted only when it
// equals wte (untied output heads are not supported). F32, F16, BF16 (and F64) storage is
// converted to f32. The vocabulary is padded to a multiple of vocab_divisible_by with zero rows.
// Tokenizer files: vocab.json + merges.txt (gpt2_bpe) are preferred over tokenizer.model
// (sentencepiece). Every problem is a ConfigError naming the file and the key or tensor: missing
// files/keys/tensors, unexpected tensors, wrong shapes, unsupported model_type or
// activation_function (gelu_new / gelu_pytorch_tanh only) or GPT-2 options our model lacks
// (scale_attn_weights false, scale_attn_by_inverse_layer_idx, add_cross_attention), and
// config.json values the tensors disagree with.
HFGpt2Import import_hf_gpt2(const std::string& dir, int64_t vocab_divisible_by = 128);

}  // namespace llm
