#include "io/hf_gpt2.h"

#include <unistd.h>

#include <atomic>
#include <charconv>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <optional>
#include <set>
#include <vector>

#include "core/error.h"
#include "core/fsync.h"
#include "data/json.h"
#include "io/safetensors.h"

namespace llm {

namespace fs = std::filesystem;

namespace {

// One GPT-2 tensor: Hugging Face name (without "transformer."), ours, HF shape, and whether it
// is a Conv1D weight (HF [in, out] = our [out, in] transposed).
struct TensorMap {
  std::string hf, ours;
  Shape hf_shape;
  bool conv1d = false;
};

// Every tensor of GPT2Model in state-dict order. wte has the real vocabulary's rows.
std::vector<TensorMap> gpt2_tensors(const GPTConfig& c) {
  const int64_t C = c.hidden_size, F = c.ffn(), V = c.vocab_size, P = c.max_position_embeddings;
  std::vector<TensorMap> t;
  t.push_back({"wte.weight", "wte", {V, C}, false});
  t.push_back({"wpe.weight", "wpe", {P, C}, false});
  for (int64_t l = 0; l < c.num_layers; ++l) {
    const std::string p = "h." + std::to_string(l) + ".";
    t.push_back({p + "ln_1.weight", p + "ln_1.weight", {C}, false});
    t.push_back({p + "ln_1.bias", p + "ln_1.bias", {C}, false});
    t.push_back({p + "attn.c_attn.weight", p + "attn.c_attn.weight", {C, 3 * C}, true});
    t.push_back({p + "attn.c_attn.bias", p + "attn.c_attn.bias", {3 * C}, false});
    t.push_back({p + "attn.c_proj.weight", p + "attn.c_proj.weight", {C, C}, true});
    t.push_back({p + "attn.c_proj.bias", p + "attn.c_proj.bias", {C}, false});
    t.push_back({p + "ln_2.weight", p + "ln_2.weight", {C}, false});
    t.push_back({p + "ln_2.bias", p + "ln_2.bias", {C}, false});
    t.push_back({p + "mlp.c_fc.weight", p + "mlp.c_fc.weight", {C, F}, true});
    t.push_back({p + "mlp.c_fc.bias", p + "mlp.c_fc.bias", {F}, false});
    t.push_back({p + "mlp.c_proj.weight", p + "mlp.c_proj.weight", {F, C}, true});
    t.push_back({p + "mlp.c_proj.bias", p + "mlp.c_proj.bias", {C}, false});
  }
  t.push_back({"ln_f.weight", "ln_f.weight", {C}, false});
  t.push_back({"ln_f.bias", "ln_f.bias", {C}, false});
  return t;
}

// [rows, cols] -> [cols, rows], in cache-sized tiles.
Tensor transpose2d(const Tensor& src) {
  LLM_CHECK(src.dim() == 2 && src.is_contiguous() && src.dtype() == DType::f32, "transpose2d: bad input ",
            shape_str(src.shape()));
  const int64_t R = src.size(0), C = src.size(1);
  Tensor dst = Tensor::empty({C, R});
  const float* s = src.data<float>();
  float* d = dst.data<float>();
  constexpr int64_t kTile = 32;
  for (int64_t r0 = 0; r0 < R; r0 += kTile)
    for (int64_t c0 = 0; c0 < C; c0 += kTile)
      for (int64_t r = r0; r < std::min(R, r0 + kTile); ++r)
        for (int64_t c = c0; c < std::min(C, c0 + kTile); ++c) d[c * R + r] = s[r * C + c];
  return dst;
}

std::string unique_tag() {
  static std::atomic<uint64_t> counter{0};
  return std::to_string(::getpid()) + "-" + std::to_string(counter++);
}

// Shortest decimal that reads back as the same float (1e-5f -> "1e-05"), as JSON.
std::string json_float(float f, const std::string& what) {
  if (!std::isfinite(f)) throw ConfigError(what + " is not finite");
  char buf[64];
  auto r = std::to_chars(buf, buf + sizeof buf, f);
  LLM_CHECK(r.ec == std::errc(), "cannot format ", f);
  std::string s(buf, r.ptr);
  if (s.find_first_of(".e") == std::string::npos) s += ".0";
  return s;
}

void copy_into(const std::string& source, const fs::path& dest, const char* role) {
  std::error_code ec;
  if (!fs::is_regular_file(source, ec)) throw ConfigError(source + ": " + role + " not found (or not a file)");
  fs::copy_file(source, dest, fs::copy_options::overwrite_existing, ec);
  if (ec) throw ConfigError(source + ": cannot copy " + role + " to " + dest.string() + ": " + ec.message());
  fsync_path(dest);
}

std::string config_json(const GPTConfig& c, int64_t eod_id) {
  const std::string eod = eod_id >= 0 ? std::to_string(eod_id) : "null";
  const std::string n_inner = c.ffn() == 4 * c.hidden_size ? "null" : std::to_string(c.ffn());
  const std::string P = std::to_string(c.max_position_embeddings);
  // Keys sorted, two-space indent: the way transformers' save_pretrained writes config.json.
  std::string s = "{\n";
  s += "  \"activation_function\": \"gelu_new\",\n";
  s += "  \"architectures\": [\n    \"GPT2LMHeadModel\"\n  ],\n";
  s += "  \"attn_pdrop\": 0.0,\n";
  s += "  \"bos_token_id\": " + eod + ",\n";
  s += "  \"embd_pdrop\": 0.0,\n";
  s += "  \"eos_token_id\": " + eod + ",\n";
  s += "  \"initializer_range\": 0.02,\n";
  s += "  \"layer_norm_epsilon\": " + json_float(c.layernorm_eps, "layernorm epsilon") + ",\n";
  s += "  \"model_type\": \"gpt2\",\n";
  s += "  \"n_ctx\": " + P + ",\n";
  s += "  \"n_embd\": " + std::to_string(c.hidden_size) + ",\n";
  s += "  \"n_head\": " + std::to_string(c.num_heads) + ",\n";
  s += "  \"n_inner\": " + n_inner + ",\n";
  s += "  \"n_layer\": " + std::to_string(c.num_layers) + ",\n";
  s += "  \"n_positions\": " + P + ",\n";
  s += "  \"reorder_and_upcast_attn\": false,\n";
  s += "  \"resid_pdrop\": 0.0,\n";
  s += "  \"scale_attn_by_inverse_layer_idx\": false,\n";
  s += "  \"scale_attn_weights\": true,\n";
  s += "  \"tie_word_embeddings\": true,\n";
  s += "  \"torch_dtype\": \"float32\",\n";
  s += "  \"use_cache\": true,\n";
  s += "  \"vocab_size\": " + std::to_string(c.vocab_size) + "\n";
  s += "}\n";
  return s;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Export

void export_hf_gpt2(const std::string& dir, const GPTConfig& config,
                    const std::function<Tensor(const std::string& name)>& param, const HFTokenizerFiles& tokenizer,
                    bool overwrite) {
  config.validate();
  const int64_t V = config.vocab_size, C = config.hidden_size;
  if (tokenizer.eod_id < -1 || tokenizer.eod_id >= V)
    throw ConfigError(detail::concat("export to ", dir, ": end-of-document id ", tokenizer.eod_id,
                                     " is outside the vocabulary [0, ", V, ")"));
  switch (tokenizer.kind) {
    case HFTokenizerFiles::Kind::gpt2_bpe:
      if (tokenizer.vocab_file.empty() || tokenizer.merge_file.empty())
        throw ConfigError("export to " + dir + ": a GPT-2 BPE tokenizer needs both a vocab file and a merge file");
      break;
    case HFTokenizerFiles::Kind::sentencepiece:
      if (tokenizer.model_file.empty())
        throw ConfigError("export to " + dir + ": a SentencePiece tokenizer needs its model file");
      break;
    case HFTokenizerFiles::Kind::none: break;
  }

  fs::path out(dir);
  if (!out.has_filename()) out = out.parent_path();  // "dir/" -> "dir"
  if (out.empty()) throw ConfigError("export_hf_gpt2: empty output directory name");
  std::error_code ec;
  const bool exists = fs::exists(out, ec);
  if (exists) {
    if (!fs::is_directory(out, ec)) throw ConfigError(dir + ": exists and is not a directory");
    if (!fs::is_empty(out, ec) && !overwrite)
      throw ConfigError(dir + ": exists and is not empty (refusing to overwrite it)");
  } else if (out.has_parent_path()) {
    fs::create_directories(out.parent_path(), ec);
    if (ec) throw ConfigError(out.parent_path().string() + ": cannot create directory: " + ec.message());
  }

  const fs::path staging = out.string() + ".tmp-" + unique_tag();
  fs::create_directory(staging, ec);
  if (ec) throw ConfigError(staging.string() + ": cannot create directory: " + ec.message());
  try {
    // model.safetensors: one tensor materialised at a time (transposes are copies).
    const std::vector<TensorMap> map = gpt2_tensors(config);
    std::vector<SafetensorsEntry> entries;
    for (const TensorMap& m : map) entries.push_back({"transformer." + m.hf, DType::f32, m.hf_shape});
    write_safetensors_streamed(
        (staging / "model.safetensors").string(), entries,
        [&](size_t i) -> Tensor {
          const TensorMap& m = map[i];
          const Tensor t = param(m.ours);
          if (m.ours == "wte") {
            // Padded to a multiple of make_vocab_size_divisible_by x the saving run's tensor-
            // parallel size (Vp at TP 1): any padding of at least V rows is dropped.
            if (t.shape().size() != 2 || t.shape()[1] != C || t.shape()[0] < V || t.dtype() != DType::f32)
              throw ConfigError(detail::concat("wte: expected f32 [>= ", V, ", ", C, "] (the vocabulary padded), got ",
                                               dtype_name(t.dtype()), " ", shape_str(t.shape())));
            return t.slice(0, 0, V);  // drop the padding rows
          }
          if (m.conv1d) {
            expect_shape(t, {m.hf_shape[1], m.hf_shape[0]}, m.ours.c_str());
            return transpose2d(t);
          }
          expect_shape(t, m.hf_shape, m.ours.c_str());
          return t;
        },
        {{"format", "pt"}});

    const fs::path cfg = staging / "config.json";
    {
      std::ofstream f(cfg, std::ios::binary);
      f << config_json(config, tokenizer.eod_id);
      f.close();
      if (!f) throw ConfigError(cfg.string() + ": cannot write");
    }
    fsync_path(cfg);

    switch (tokenizer.kind) {
      case HFTokenizerFiles::Kind::gpt2_bpe:
        copy_into(tokenizer.vocab_file, staging / "vocab.json", "GPT-2 vocab file");
        copy_into(tokenizer.merge_file, staging / "merges.txt", "GPT-2 merge file");
        break;
      case HFTokenizerFiles::Kind::sentencepiece:
        copy_into(tokenizer.model_file, staging / "tokenizer.model", "SentencePiece model");
        break;
      case HFTokenizerFiles::Kind::none: break;
    }
    fsync_path(staging);

    // Publish. An empty existing directory is replaced by rename itself; a non-empty one
    // (overwrite) is moved aside first and removed once the new one is in place.
    fs::path old;
    if (fs::exists(out) && !fs::is_empty(out)) {
      old = out.string() + ".old-" + unique_tag();
      fs::rename(out, old, ec);
      if (ec) throw ConfigError(dir + ": cannot move the existing directory aside: " + ec.message());
    }
    fs::rename(staging, out, ec);
    if (ec) {
      if (!old.empty()) fs::rename(old, out);  // put the previous export back
      throw ConfigError(dir + ": cannot move the export into place: " + ec.message());
    }
    fsync_path(out.has_parent_path() ? out.parent_path() : fs::path("."));
    if (!old.empty()) fs::remove_all(old, ec);
  } catch (...) {
    fs::remove_all(staging, ec);
    throw;
  }
}

// ---------------------------------------------------------------------------------------------
// Import

namespace {

// h.{digits}.attn.bias / h.{digits}.attn.masked_bias: causal-mask buffers older transformers
// saved with the weights.
bool is_mask_buffer(const std::string& n) {
  if (n.rfind("h.", 0) != 0) return false;
  size_t i = 2;
  while (i < n.size() && n[i] >= '0' && n[i] <= '9') ++i;
  if (i == 2) return false;
  const std::string rest = n.substr(i);
  return rest == ".attn.bias" || rest == ".attn.masked_bias";
}

struct ConfigReader {
  const std::string& path;
  const json::Value& root;

  const json::Value* get(const char* key) const { return root.find(key); }
  [[noreturn]] void fail(const char* key, const std::string& why) const {
    throw ConfigError(path + ": '" + key + "' " + why);
  }
  int64_t positive_int(const char* key) const {
    const json::Value* v = get(key);
    if (!v) fail(key, "is missing");
    if (!v->is_integer() || v->as_int() < 1) fail(key, "must be a positive integer");
    return v->as_int();
  }
  bool boolean(const char* key, bool dflt) const {
    const json::Value* v = get(key);
    if (!v || v->is_null()) return dflt;
    if (!v->is_bool()) fail(key, "must be true or false");
    return v->as_bool();
  }
};

}  // namespace

HFGpt2Import import_hf_gpt2(const std::string& dir, int64_t vocab_divisible_by) {
  const fs::path d(dir);
  std::error_code ec;
  if (!fs::is_directory(d, ec)) throw ConfigError(dir + ": not a directory (expected a Hugging Face model directory)");

  // config.json
  const std::string cfg_path = (d / "config.json").string();
  if (!fs::exists(cfg_path, ec)) throw ConfigError(cfg_path + ": missing (not a Hugging Face model directory?)");
  const json::Value cfg = json::parse_file(cfg_path);
  if (!cfg.is_object()) throw ConfigError(cfg_path + ": expected a JSON object");
  const ConfigReader r{cfg_path, cfg};
  {
    const json::Value* mt = r.get("model_type");
    if (!mt) r.fail("model_type", "is missing");
    if (!mt->is_string() || mt->as_string() != "gpt2")
      r.fail("model_type", "is " + (mt->is_string() ? "\"" + mt->as_string() + "\"" : std::string("not a string")) +
                               "; only \"gpt2\" models can be imported");
    const json::Value* act = r.get("activation_function");
    if (act && !(act->is_string() && (act->as_string() == "gelu_new" || act->as_string() == "gelu_pytorch_tanh")))
      r.fail("activation_function",
             "is " + (act->is_string() ? "\"" + act->as_string() + "\"" : std::string("not a string")) +
                 "; only the tanh GELU (\"gelu_new\", \"gelu_pytorch_tanh\") is supported");
    if (!r.boolean("scale_attn_weights", true))
      r.fail("scale_attn_weights", "is false; attention without 1/sqrt(head_dim) scaling is not supported");
    if (r.boolean("scale_attn_by_inverse_layer_idx", false))
      r.fail("scale_attn_by_inverse_layer_idx", "is true; per-layer attention scaling is not supported");
    if (r.boolean("add_cross_attention", false))
      r.fail("add_cross_attention", "is true; cross-attention layers are not supported");
  }
  GPTConfig c;
  {
    fs::path named = d;
    if (!named.has_filename()) named = named.parent_path();
    c.name = named.filename().string();
    if (c.name.empty() || c.name == "." || c.name == "..") c.name = "hf-gpt2";
  }
  c.vocab_size = r.positive_int("vocab_size");
  c.max_position_embeddings = r.positive_int("n_positions");
  c.hidden_size = r.positive_int("n_embd");
  c.num_layers = r.positive_int("n_layer");
  c.num_heads = r.positive_int("n_head");
  if (const json::Value* v = r.get("n_inner"); v && !v->is_null()) c.ffn_hidden_size = r.positive_int("n_inner");
  if (const json::Value* v = r.get("layer_norm_epsilon")) {
    if (!v->is_number() || !(v->as_double() > 0)) r.fail("layer_norm_epsilon", "must be a positive number");
    c.layernorm_eps = static_cast<float>(v->as_double());
  }
  if (c.hidden_size % c.num_heads)
    r.fail("n_head", detail::concat("= ", c.num_heads, " does not divide n_embd = ", c.hidden_size));
  c.vocab_divisible_by = vocab_divisible_by;
  const bool tied = r.boolean("tie_word_embeddings", true);
  try {
    c.validate(c.max_position_embeddings);
  } catch (const ConfigError& e) {
    throw ConfigError(cfg_path + ": " + e.what());
  }

  // Weights: model.safetensors, or the shards of model.safetensors.index.json.
  std::vector<SafetensorsFile> files;
  std::string weights_what;  // names the weights in errors
  struct Where {
    size_t file;
    std::string stored;  // name as stored
  };
  std::map<std::string, Where> found;  // name without "transformer." -> where
  auto add_file_tensors = [&](size_t fi, const std::set<std::string>* only) {
    for (const std::string& n : files[fi].names()) {
      if (only && !only->count(n)) continue;
      const std::string bare = n.rfind("transformer.", 0) == 0 ? n.substr(12) : n;
      if (auto it = found.find(bare); it != found.end())
        throw ConfigError(files[fi].path() + ": tensor '" + n + "' is stored twice (also as '" + it->second.stored +
                          "' in " + files[it->second.file].path() + ")");
      found.emplace(bare, Where{fi, n});
    }
  };
  const std::string single = (d / "model.safetensors").string();
  const std::string index = (d / "model.safetensors.index.json").string();
  if (fs::exists(single, ec)) {
    weights_what = single;
    files.emplace_back(single);
    add_file_tensors(0, nullptr);
  } else if (fs::exists(index, ec)) {
    weights_what = index;
    const json::Value idx = json::parse_file(index);
    const json::Value* wm = idx.is_object() ? idx.find("weight_map") : nullptr;
    if (!wm || !wm->is_object()) throw ConfigError(index + ": no \"weight_map\" object");
    std::map<std::string, std::set<std::string>> by_file;
    for (const auto& [name, f] : wm->as_object()) {
      if (!f.is_string() || f.as_string().empty() || f.as_string().find('/') != std::string::npos ||
          f.as_string() == "." || f.as_string() == "..")
        throw ConfigError(index + ": weight_map entry '" + name + "' must name a file in the directory");
      by_file[f.as_string()].insert(name);
    }
    for (const auto& [f, names] : by_file) {
      files.emplace_back((d / f).string());
      for (const std::string& n : names)
        if (!files.back().contains(n))
          throw ConfigError(index + ": tensor '" + n + "' is listed in " + f + ", which does not hold it");
      add_file_tensors(files.size() - 1, &names);
    }
  } else if (fs::exists(d / "pytorch_model.bin", ec)) {
    throw ConfigError(dir + ": only safetensors weights can be imported; found pytorch_model.bin but no "
                            "model.safetensors (convert it with transformers' save_pretrained(safe_serialization=True))");
  } else {
    throw ConfigError(dir + ": no model.safetensors (nor model.safetensors.index.json)");
  }
  auto stored_at = [&](const Where& w) { return files[w.file].path() + ": tensor '" + w.stored + "'"; };

  // Classify every stored tensor.
  const std::vector<TensorMap> map = gpt2_tensors(c);
  std::set<std::string> expected;
  for (const TensorMap& m : map) expected.insert(m.hf);
  for (const auto& [bare, w] : found) {
    if (expected.count(bare) || bare == "lm_head.weight" || is_mask_buffer(bare)) continue;
    throw ConfigError(stored_at(w) + " is not part of a GPT-2 model with " + cfg_path + "'s n_layer = " +
                      std::to_string(c.num_layers));
  }

  auto load = [&](const Where& w, const Shape& shape) {
    const SafetensorsInfo& in = files[w.file].info(w.stored);
    if (in.shape != shape)
      throw ConfigError(stored_at(w) + " has shape " + shape_str(in.shape) + ", expected " + shape_str(shape) +
                        " from " + cfg_path);
    if (in.dtype != "F32" && in.dtype != "F16" && in.dtype != "BF16" && in.dtype != "F64")
      throw ConfigError(stored_at(w) + " has dtype " + in.dtype + "; expected F32, F16 or BF16");
    return files[w.file].read_f32(w.stored);
  };

  HFGpt2Import out;
  const int64_t V = c.vocab_size, Vp = c.padded_vocab_size(), C = c.hidden_size;
  Tensor wte_real;
  for (const TensorMap& m : map) {
    auto it = found.find(m.hf);
    if (it == found.end())
      throw ConfigError(weights_what + ": missing tensor 'transformer." + m.hf + "' (or '" + m.hf + "')");
    if (m.ours == "wte") {
      const SafetensorsInfo& in = files[it->second.file].info(it->second.stored);
      if (in.shape.size() == 2 && in.shape[1] == C && in.shape[0] != V)
        throw ConfigError(stored_at(it->second) + " has " + std::to_string(in.shape[0]) + " rows, but " + cfg_path +
                          " says vocab_size " + std::to_string(V));
      wte_real = load(it->second, m.hf_shape);
      Tensor wte = Tensor::zeros({Vp, C});
      std::memcpy(wte.raw(), wte_real.raw(), wte_real.nbytes());
      out.params.emplace("wte", wte);
    } else if (m.ours == "wpe") {
      const SafetensorsInfo& in = files[it->second.file].info(it->second.stored);
      if (in.shape.size() == 2 && in.shape[1] == C && in.shape[0] != c.max_position_embeddings)
        throw ConfigError(stored_at(it->second) + " has " + std::to_string(in.shape[0]) + " rows, but " + cfg_path +
                          " says n_positions " + std::to_string(c.max_position_embeddings));
      out.params.emplace("wpe", load(it->second, m.hf_shape));
    } else {
      Tensor t = load(it->second, m.hf_shape);
      out.params.emplace(m.ours, m.conv1d ? transpose2d(t) : t);
    }
  }
  if (auto it = found.find("lm_head.weight"); it != found.end()) {
    const Tensor head = load(it->second, {V, C});
    if (std::memcmp(head.raw(), wte_real.raw(), head.nbytes()) != 0)
      throw ConfigError(stored_at(it->second) + " differs from the token embedding (wte): untied output heads "
                        "are not supported");
  } else if (!tied) {
    throw ConfigError(cfg_path + ": 'tie_word_embeddings' is false but there is no lm_head.weight; untied output "
                      "heads are not supported");
  }

  // Tokenizer files.
  HFTokenizerFiles& tok = out.tokenizer;
  if (fs::is_regular_file(d / "vocab.json", ec) && fs::is_regular_file(d / "merges.txt", ec)) {
    tok.kind = HFTokenizerFiles::Kind::gpt2_bpe;
    tok.vocab_file = (d / "vocab.json").string();
    tok.merge_file = (d / "merges.txt").string();
  } else if (fs::is_regular_file(d / "tokenizer.model", ec)) {
    tok.kind = HFTokenizerFiles::Kind::sentencepiece;
    tok.model_file = (d / "tokenizer.model").string();
  }
  if (const json::Value* e = r.get("eos_token_id"); e && e->is_integer()) {
    if (e->as_int() < 0 || e->as_int() >= V) r.fail("eos_token_id", "is outside the vocabulary");
    tok.eod_id = e->as_int();
  }

  out.config = c;
  return out;
}

}  // namespace llm
