#include "train/checkpointing.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <set>
#include <sstream>

#include "core/error.h"

namespace llm {

namespace fs = std::filesystem;

namespace {

// Shortest decimal that reads back as the same double. JSON has no inf or nan: a non-finite
// value refuses the save, naming its key, before anything is published.
std::string num(double v, const char* key) {
  LLM_CHECK(std::isfinite(v), "checkpoint metadata: \"", key, "\" is ", v, ", which JSON cannot hold");
  char buf[40];
  for (int digits = 15; digits <= 17; ++digits) {
    std::snprintf(buf, sizeof buf, "%.*g", digits, v);
    if (std::strtod(buf, nullptr) == v) break;
  }
  return buf;
}

std::string model_json(const GPTConfig& c) {
  std::ostringstream o;
  o << "{\"num_layers\": " << c.num_layers << ", \"hidden_size\": " << c.hidden_size
    << ", \"num_attention_heads\": " << c.num_heads << ", \"ffn_hidden_size\": " << c.ffn()
    << ", \"max_position_embeddings\": " << c.max_position_embeddings << ", \"vocab_size\": " << c.vocab_size
    << ", \"make_vocab_size_divisible_by\": " << c.vocab_divisible_by << ", \"padded_vocab_size\": "
    << c.padded_vocab_size() << ", \"layernorm_epsilon\": " << num(c.layernorm_eps, "layernorm_epsilon") << ", \"name\": " << json::quote(c.name)
    << "}";
  return o.str();
}

const json::Value& member(const json::Value& obj, const char* key, const std::string& where) {
  const json::Value* v = obj.is_object() ? obj.find(key) : nullptr;
  if (!v) throw ConfigError(where + ": metadata has no '" + key + "'");
  return *v;
}

int64_t member_int(const json::Value& obj, const char* key, const std::string& where) {
  const json::Value& v = member(obj, key, where);
  if (!v.is_integer()) throw ConfigError(where + ": metadata '" + key + "' is not an integer");
  return v.as_int();
}

// A count (a step, samples, skipped iterations): an integer >= 0; `path` names it in the message.
int64_t member_count(const json::Value& obj, const char* key, const std::string& where, const std::string& path) {
  const json::Value& v = member(obj, key, where);
  if (!v.is_integer() || v.as_int() < 0)
    throw ConfigError(where + ": metadata '" + path + "' must be a non-negative integer, got " +
                      (v.is_integer() ? std::to_string(v.as_int()) : std::string("another type")));
  return v.as_int();
}

double member_number(const json::Value& obj, const char* key, const std::string& where) {
  const json::Value& v = member(obj, key, where);
  if (!v.is_number()) throw ConfigError(where + ": metadata '" + key + "' is not a number");
  return v.as_double();
}

const std::string& member_string(const json::Value& obj, const char* key, const std::string& where) {
  const json::Value& v = member(obj, key, where);
  if (!v.is_string()) throw ConfigError(where + ": metadata '" + key + "' is not a string");
  return v.as_string();
}

// Reads category/name into dst (shape `want`). The padded vocabulary may differ between
// layouts (it is padded to a multiple of 128 x TP): rows present in both are read, the rest zeroed.
void read_into(const CheckpointReader& ckpt, const std::string& category, const std::string& name, const Tensor& dst) {
  const Shape stored = ckpt.global_shape(category, name);
  const Shape& want = dst.shape();
  if (stored == want) {
    ckpt.read(category, name, Box::whole(want), dst);
    return;
  }
  const bool rows_only = stored.size() == want.size() && !stored.empty() &&
                         std::equal(stored.begin() + 1, stored.end(), want.begin() + 1);
  if (name != "wte" || !rows_only)
    throw ConfigError(ckpt.dir() + ": tensor '" + name + "' (" + category + ") is " + shape_str(stored) +
                      " in the checkpoint but " + shape_str(want) + " in the model");
  const int64_t rows = std::min(stored[0], want[0]);
  dst.zero();
  Box b = Box::whole(want);
  b.extent[0] = rows;
  ckpt.read(category, name, b, dst.slice(0, 0, rows));
}

// Reads the local tensor of `spec` (host, spec.shape) box by box from the global tensor. Rows of
// the padded vocabulary beyond the stored table are zeroed (it is padded per layout).
void read_local(const CheckpointReader& ckpt, const std::string& category, const ParamSpec& spec, const Tensor& dst) {
  if (!spec.sharded()) return read_into(ckpt, category, spec.name, dst);
  const Shape stored = ckpt.global_shape(category, spec.name);
  const bool rows_only = stored.size() == spec.global_shape.size() &&
                         std::equal(stored.begin() + 1, stored.end(), spec.global_shape.begin() + 1);
  if (stored != spec.global_shape && !(spec.name == "wte" && rows_only))
    throw ConfigError(ckpt.dir() + ": tensor '" + spec.name + "' (" + category + ") is " + shape_str(stored) +
                      " in the checkpoint but " + shape_str(spec.global_shape) + " in the model");
  for (const LocalBox& lb : local_boxes(spec)) {
    Box b{lb.global_offset, lb.extent};
    Tensor local = dst;
    for (size_t d = 0; d < lb.extent.size(); ++d) local = local.slice(static_cast<int>(d), lb.local_offset[d], lb.extent[d]);
    // clamp to the stored rows (dimension 0)
    const int64_t avail = std::max<int64_t>(0, std::min(b.extent[0], stored[0] - b.offset[0]));
    if (avail < b.extent[0]) {
      Tensor tmp = Tensor::zeros(lb.extent);
      if (avail > 0) {
        Box part = b;
        part.extent[0] = avail;
        ckpt.read(category, spec.name, part, tmp.slice(0, 0, avail));
      }
      local.copy_from(tmp);
      continue;
    }
    if (local.is_contiguous()) {
      ckpt.read(category, spec.name, b, local);
    } else {
      Tensor tmp = Tensor::empty(lb.extent);
      ckpt.read(category, spec.name, b, tmp);
      local.copy_from(tmp);
    }
  }
}

// "tokenizer": {...} with the files copied into the checkpoint.
std::string tokenizer_fields(CheckpointWriter& w, const TokenizerRecord& tokenizer) {
  std::ostringstream f;
  f << "\"tokenizer\": {\"kind\": " << json::quote(tokenizer.identity.kind)
    << ", \"hash\": " << json::quote(tokenizer.identity.hash) << ", \"files\": {";
  bool first = true;
  for (const auto& [role, path] : tokenizer.files) {
    const std::string rel = w.add_file(path, "tokenizer/" + fs::path(path).filename().string());
    f << (first ? "" : ", ") << json::quote(role) << ": " << json::quote(rel);
    first = false;
  }
  f << "}}";
  return f.str();
}

// A weights-only checkpoint written by one process (an import).
const char* kSingleProcessLayout =
    "\"layout\": {\"world_size\": 1, \"data_parallel\": 1, \"tensor_parallel\": 1, \"pipeline_parallel\": 1, "
    "\"sequence_parallel\": 1, \"zero_stage\": 0}";

}  // namespace

std::string save_model_checkpoint(const std::string& save_root, int64_t iteration, const GPTConfig& config,
                                  const ParameterSet& params, const TokenizerRecord& tokenizer,
                                  const std::string& extra_fields) {
  const Tensor& flat = params.flat_params();
  LLM_CHECK(flat.device().is_cpu(), "save_model_checkpoint: host parameters expected");
  LLM_CHECK(!params.inference() || params.compute_dtype() == DType::f32, "save_model_checkpoint: an inference model in ",
            dtype_name(params.compute_dtype()), " holds no f32 weights to save");
  LLM_CHECK(!params.packed_masters(), "save_model_checkpoint: a training model with sharded masters holds its f32 "
            "weights in the trainer's shards (save_training_checkpoint_parallel saves them)");
  CheckpointWriter w(save_root, iteration);
  for (const ParamSpec& s : params.specs())
    w.add("model", s.name, s.shape, Box::whole(s.shape), flat.flat(s.offset, numel(s.shape)).view(s.shape));
  std::string f = "\"model\": " + model_json(config) + ",\n  " + tokenizer_fields(w, tokenizer) + ",\n  " +
                  kSingleProcessLayout + ",\n  \"consumed_samples\": 0, \"consumed_tokens\": 0, \"nan_iterations\": 0";
  if (!extra_fields.empty()) f += ",\n  " + extra_fields;
  return w.commit(f);
}

std::vector<std::string> checkpoint_completeness_problems(const CheckpointReader& ckpt) {
  const GPTConfig c = checkpoint_model_config(ckpt);
  const ParameterSet expected = gpt_parameters(c, c.max_position_embeddings, 0, 1, false);
  std::vector<std::string> problems;
  const std::vector<std::string> categories = {"model", "optimizer/exp_avg", "optimizer/exp_avg_sq"};
  const bool moments = !ckpt.names(categories[1]).empty() || !ckpt.names(categories[2]).empty();
  for (const std::string& cat : categories) {
    if (cat != "model" && !moments) continue;
    std::set<std::string> names;
    for (const ParamSpec& s : expected.specs()) {
      names.insert(s.name);
      if (!ckpt.has(cat, s.name))
        problems.push_back(cat + "/" + s.name + ": missing (the model has it, " + shape_str(s.global_shape) + ")");
      else if (ckpt.global_shape(cat, s.name) != s.global_shape)
        problems.push_back(cat + "/" + s.name + ": stored as " + shape_str(ckpt.global_shape(cat, s.name)) +
                           ", the model's is " + shape_str(s.global_shape));
    }
    for (const std::string& n : ckpt.names(cat))
      if (!names.count(n)) problems.push_back(cat + "/" + n + ": no parameter of the model has this name");
  }
  return problems;
}

GPTConfig checkpoint_model_config(const CheckpointReader& ckpt) {
  const std::string where = ckpt.dir() + "/metadata.json";
  const json::Value& m = member(ckpt.metadata(), "model", where);
  GPTConfig c;
  c.name = member(m, "name", where).is_string() ? member(m, "name", where).as_string() : "checkpoint";
  c.num_layers = member_int(m, "num_layers", where);
  c.hidden_size = member_int(m, "hidden_size", where);
  c.num_heads = member_int(m, "num_attention_heads", where);
  c.ffn_hidden_size = member_int(m, "ffn_hidden_size", where);
  c.max_position_embeddings = member_int(m, "max_position_embeddings", where);
  c.vocab_size = member_int(m, "vocab_size", where);
  c.vocab_divisible_by = member_int(m, "make_vocab_size_divisible_by", where);
  c.layernorm_eps = static_cast<float>(member_number(m, "layernorm_epsilon", where));
  c.validate();
  return c;
}

TokenizerRecord checkpoint_tokenizer(const CheckpointReader& ckpt) {
  const std::string where = ckpt.dir() + "/metadata.json";
  const json::Value& t = member(ckpt.metadata(), "tokenizer", where);
  TokenizerRecord r;
  r.identity = {member_string(t, "kind", where), member_string(t, "hash", where)};
  const json::Value& files = member(t, "files", where);
  if (!files.is_object()) throw ConfigError(where + ": metadata 'files' is not an object");
  for (const auto& [role, path] : files.as_object()) {
    if (!path.is_string()) throw ConfigError(where + ": metadata 'files." + role + "' is not a string");
    // (a file copied into the checkpoint: a path out of it reads some other file as its tokenizer)
    const fs::path rel(path.as_string());
    bool inside = !rel.empty() && rel.is_relative();
    for (const fs::path& part : rel) inside = inside && part != "..";
    if (!inside)
      throw ConfigError(where + ": metadata 'files." + role + "' must be a path inside the checkpoint, not '" +
                        path.as_string() + "'");
    r.files[role] = (fs::path(ckpt.dir()) / path.as_string()).string();
  }
  return r;
}

TokenizerOptions tokenizer_options(const TokenizerRecord& record) {
  auto file = [&](const char* role) { return record.files.count(role) ? record.files.at(role) : std::string(); };
  return TokenizerOptions{record.identity.kind, file("model"), file("vocab"), file("merges"), 0};
}

namespace {
// The stored model tensors against the model of the checkpoint's own metadata: a tensor no
// parameter has (metadata.json's num_layers below the layers stored) was skipped, and a wte with
// fewer rows than the vocabulary left the missing rows zeros.
void check_stored_model(const CheckpointReader& ckpt) {
  const GPTConfig c = checkpoint_model_config(ckpt);
  const ParameterSet expected = gpt_parameters(c, c.max_position_embeddings, 0, 1, false);
  std::set<std::string> names;
  for (const ParamSpec& s : expected.specs()) names.insert(s.name);
  for (const std::string& n : ckpt.names("model"))
    if (!names.count(n))
      throw ConfigError(detail::concat(ckpt.dir(), ": the checkpoint stores tensor '", n,
                                       "' (model), which the model of its metadata.json (", c.num_layers,
                                       " layers) has no parameter for: the metadata and the tensors disagree "
                                       "(llm-ckpt verify lists the differences)"));
  if (names.count("wte") && ckpt.has("model", "wte")) {
    const Shape stored = ckpt.global_shape("model", "wte");
    if (!stored.empty() && stored[0] < c.vocab_size)
      throw ConfigError(detail::concat(ckpt.dir(), ": tensor 'wte' (model) has ", stored[0],
                                       " rows but its metadata.json's vocab_size is ", c.vocab_size,
                                       ": the embedding does not cover the vocabulary"));
  }
}
}  // namespace

void load_model_parameters(const CheckpointReader& ckpt, ParameterSet& params) {
  LLM_CHECK(params.flat_params().device().is_cpu(), "load_model_parameters: host parameters expected");
  if (params.inference() && params.compute_dtype() != DType::f32)
    return load_model_parameters(ckpt, params, cpu_backend());  // rounded into the 16-bit weights (checked there)
  check_stored_model(ckpt);
  for (const ParamSpec& s : params.specs()) read_into(ckpt, "model", s.name, params.param(s.name));
}

void load_model_parameters(const CheckpointReader& ckpt, ParameterSet& params, Backend& backend) {
  const bool rounded = params.inference() && params.compute_dtype() != DType::f32;
  if (params.flat_params().device().is_cpu() && !rounded) return load_model_parameters(ckpt, params);
  check_stored_model(ckpt);
  auto put = [&](const Tensor& dst, const Tensor& host) {
    if (dst.device().is_cpu()) return dst.copy_from(host);
    backend.copy(dst, host);
    backend.synchronize();  // before the staging buffer is reused (a copy from pageable memory may still read it)
  };
  // One staging buffer (and one for the rounded values) the size of the largest tensor, reused:
  // a pair per tensor raised the peak by 478 MiB for a 350M-parameter model in bf16.
  int64_t largest = 0;
  for (const ParamSpec& s : params.specs()) largest = std::max(largest, numel(s.shape));
  const Tensor stage = Tensor::empty({largest});
  const Tensor stage_low = rounded ? Tensor::empty({largest}, params.compute_dtype()) : Tensor{};
  for (const ParamSpec& s : params.specs()) {
    const Tensor host = stage.flat(0, numel(s.shape)).view(s.shape);
    read_into(ckpt, "model", s.name, host);
    if (params.has_master(s.name)) put(params.param(s.name), host);
    if (!rounded) continue;
    const Tensor low = stage_low.flat(0, numel(s.shape)).view(s.shape);
    cpu_backend().convert(low, host);  // round to nearest even, as the backends' convert
    put(params.compute_param(s.name), low);
  }
}

ShardedState gather_training_state(Trainer& trainer) {
  GPT& model = trainer.model();
  const ParameterSet& ps = model.parameters();
  const ModelParallel& mp = model.model_parallel();
  const int P = mp.size(), S = mp.pp_size();
  const int64_t n = ps.numel();
  auto [m, v] = trainer.full_optimizer_state();
  const Tensor params = trainer.full_parameters();  // collective under ZeRO-3 and with sharded masters
  const int64_t max_pos = model.config().max_position_embeddings;
  // This stage's parts: [P, n] gathered over the tensor-parallel group.
  Tensor all_p = params.view({1, n}), all_m = m.view({1, n}), all_v = v.view({1, n});
  if (P > 1) {
    all_p = Tensor::empty({P, n});
    all_m = Tensor::empty({P, n});
    all_v = Tensor::empty({P, n});
    mp.group->all_gather(all_p, params);
    mp.group->all_gather(all_m, m);
    mp.group->all_gather(all_v, v);
  }
  ShardedState st;
  auto add_stage = [&](int stage, const Tensor& p, const Tensor& mm, const Tensor& vv) {
    for (int r = 0; r < P; ++r) {
      ShardedState::Part part;
      part.tp_rank = r;
      part.specs = gpt_parameters(model.config(), max_pos, r, P, mp.sequence_parallel, stage, S).specs();
      const int64_t len = p.size(1);
      auto row = [&](const Tensor& t) { return t.slice(0, r, 1).view({len}); };
      part.params = row(p), part.m = row(mm), part.v = row(vv);
      int64_t need = 0;
      for (const ParamSpec& sp : part.specs) need = std::max(need, sp.offset + numel(sp.shape));
      LLM_CHECK(need == len, "pipeline stage ", stage, ", tensor-parallel rank ", r, ": ", len,
                " parameters received, the layout has ", need);
      st.parts.push_back(std::move(part));
    }
  };
  add_stage(mp.pp_rank(), all_p, all_m, all_v);
  if (S > 1 && mp.rank() == 0) {
    // The other stages' first tensor-parallel ranks send their [P, n_s] buffers to the first stage.
    if (mp.first_stage()) {
      for (int s = 1; s < S; ++s) {
        const int64_t ns = gpt_parameters(model.config(), max_pos, 0, P, mp.sequence_parallel, s, S).numel();
        Tensor p = Tensor::empty({P, ns}), mm = Tensor::empty({P, ns}), vv = Tensor::empty({P, ns});
        mp.pipeline->recv(p, s, 10);
        mp.pipeline->recv(mm, s, 11);
        mp.pipeline->recv(vv, s, 12);
        add_stage(s, p, mm, vv);
      }
    } else {
      mp.pipeline->send(all_p, 0, 10);
      mp.pipeline->send(all_m, 0, 11);
      mp.pipeline->send(all_v, 0, 12);
    }
  }
  return st;
}

namespace {
// metadata.json's fields besides the pieces: model, tokenizer (its files copied in), layout,
// data position, schedule, optimizer, seed and every argument.
std::string metadata_fields(CheckpointWriter& w, const TrainArgs& args, const Trainer& trainer,
                            const TokenizerRecord& tokenizer) {
  const GPT& model = trainer.model();
  const AdamW& opt = trainer.optimizer();
  std::ostringstream f;
  f << "\"model\": " << model_json(model.config());
  // The layout the run used (the stored pieces are whole tensors either way).
  const int64_t world = args.data_parallel_size * args.tensor_model_parallel_size *
                        args.pipeline_model_parallel_size * args.ds_sequence_parallel_size;
  f << ",\n  " << tokenizer_fields(w, tokenizer) << ",\n  \"layout\": {\"world_size\": " << world
    << ", \"data_parallel\": " << args.data_parallel_size << ", \"tensor_parallel\": " << args.tensor_model_parallel_size
    << ", \"pipeline_parallel\": " << args.pipeline_model_parallel_size << ", \"sequence_parallel\": "
    << args.ds_sequence_parallel_size << ", \"zero_stage\": " << args.zero_stage << "}";
  f << ",\n  \"consumed_samples\": " << trainer.consumed_samples()
    << ", \"consumed_tokens\": " << trainer.consumed_tokens()
    << ", \"nan_iterations\": " << trainer.nan_iterations();
  const LRSchedule& lr = trainer.schedule();
  f << ",\n  \"lr_schedule\": {\"lr\": " << num(lr.lr, "lr_schedule.lr") << ", \"min_lr\": " << num(lr.min_lr, "lr_schedule.min_lr") << ", \"warmup_iters\": " << num(lr.warmup_iters, "lr_schedule.warmup_iters")
    << ", \"decay_iters\": " << lr.decay_iters << ", \"style\": " << json::quote(lr.style)
    << ", \"global_batch_size\": " << lr.samples_per_update << ", \"origin\": " << trainer.schedule_origin() << "}";
  const OptimizerConfig& oc = opt.config();
  f << ",\n  \"optimizer\": {\"type\": \"adamw\", \"step\": " << opt.steps() << ", \"beta1\": " << num(oc.beta1, "optimizer.beta1")
    << ", \"beta2\": " << num(oc.beta2, "optimizer.beta2") << ", \"eps\": " << num(oc.eps, "optimizer.eps") << ", \"weight_decay\": "
    << num(oc.weight_decay, "optimizer.weight_decay") << ", \"clip_grad\": " << num(oc.clip_grad, "optimizer.clip_grad") << "}";
  const LossScalerState& ls = trainer.loss_scaler().state();
  f << ",\n  \"loss_scaler\": {\"precision\": " << json::quote(std::string(dtype_name(args.compute_dtype())))
    << ", \"scale\": " << num(ls.scale, "loss_scaler.scale") << ", \"good_steps\": " << ls.good_steps << ", \"hysteresis_left\": "
    << ls.hysteresis_left << ", \"skipped\": " << ls.skipped << "}";
  f << ",\n  \"rng\": {\"seed\": " << args.seed << "}";
  f << ",\n  \"args\": {";
  bool first = true;
  for (const OptionSpec& o : train_options()) {
    f << (first ? "" : ", ") << json::quote(o.name) << ": " << json::quote(o.get(args));
    first = false;
  }
  f << "}";
  return f.str();
}

// Stores the logical range [begin, end) of one (stage, tensor-parallel rank)'s flat buffers —
// parameters and AdamW moments, whose element 0 is `begin` — as boxes of the global tensors:
// tied copies never (the first stage's is stored), replicated tensors only when asked (one
// tensor-parallel rank stores them).
void add_state_pieces(CheckpointWriter& w, const std::vector<ParamSpec>& specs, int64_t begin, int64_t end,
                      const Tensor& params, const Tensor& m, const Tensor& v, bool replicated, int shard) {
  for (const ParamSpec& s : specs) {
    if (s.tied_copy || (!s.sharded() && !replicated)) continue;
    for (const RangePiece& p : range_pieces(s, begin - s.offset, end - s.offset)) {
      const int64_t at = s.offset + p.flat_begin - begin;
      w.add("model", s.name, s.global_shape, p.box, params.flat(at, p.length), DType::f32, shard);
      w.add("optimizer/exp_avg", s.name, s.global_shape, p.box, m.flat(at, p.length), DType::f32, shard);
      w.add("optimizer/exp_avg_sq", s.name, s.global_shape, p.box, v.flat(at, p.length), DType::f32, shard);
    }
  }
}
}  // namespace

std::string save_training_checkpoint(const std::string& save_root, const TrainArgs& args, const Trainer& trainer,
                                     const ShardedState& state, const TokenizerRecord& tokenizer, int keep_last) {
  CheckpointWriter w(save_root, trainer.iteration());
  LLM_CHECK(!state.parts.empty(), "save_training_checkpoint: no state");
  for (const ShardedState::Part& part : state.parts) {
    const int64_t n = part.params.numel();
    LLM_CHECK(part.params.dim() == 1 && part.m.numel() == n && part.v.numel() == n && part.m.device().is_cpu(),
              "save_training_checkpoint: host state expected");
    add_state_pieces(w, part.specs, 0, n, part.params, part.m, part.v, part.tp_rank == 0, 0);
  }
  return w.commit(metadata_fields(w, args, trainer, tokenizer), keep_last);
}

std::vector<RangePiece> range_pieces(const ParamSpec& s, int64_t begin, int64_t end) {
  std::vector<RangePiece> out;
  const int64_t len = numel(s.shape), lo = std::max<int64_t>(begin, 0), hi = std::min(end, len);
  if (hi <= lo) return out;
  const bool matrix = s.shape.size() == 2;
  LLM_CHECK(s.shape.size() == 1 || matrix, "parameter '", s.name, "': ", s.shape.size(), "-d tensors are not stored by range");
  const int64_t cols = matrix ? s.shape[1] : 1;
  // Local boxes (rows [r0, r1), columns [c0, c1)) covering [lo, hi): a partial first row, whole
  // rows, a partial last row; each is contiguous in the flat buffer.
  struct Local {
    int64_t r0, r1, c0, c1;
  };
  std::vector<Local> locals;
  int64_t at = lo;
  if (at % cols) {
    const int64_t r = at / cols, c0 = at % cols, c1 = std::min(cols, c0 + (hi - at));
    locals.push_back({r, r + 1, c0, c1});
    at += c1 - c0;
  }
  if (hi - at >= cols) {
    const int64_t rows = (hi - at) / cols;
    locals.push_back({at / cols, at / cols + rows, 0, cols});
    at += rows * cols;
  }
  if (at < hi) locals.push_back({at / cols, at / cols + 1, 0, hi - at});
  // Map to global coordinates: split at the shard's chunks along its dimension.
  for (const Local& l : locals) {
    std::vector<ShardChunk> chunks = s.chunks;
    if (!s.sharded()) chunks = {ShardChunk{0, 0, s.shape[0]}};
    const int dim = s.sharded() ? s.shard_dim : 0;
    const int64_t a0 = dim == 0 ? l.r0 : l.c0, a1 = dim == 0 ? l.r1 : l.c1;
    for (const ShardChunk& ch : chunks) {
      const int64_t x0 = std::max(a0, ch.local_begin), x1 = std::min(a1, ch.local_begin + ch.length);
      if (x1 <= x0) continue;
      const int64_t r0 = dim == 0 ? x0 : l.r0, r1 = dim == 0 ? x1 : l.r1;
      const int64_t c0 = dim == 0 ? l.c0 : x0, c1 = dim == 0 ? l.c1 : x1;
      const int64_t g = ch.global_begin + (x0 - ch.local_begin);  // global index along `dim`
      RangePiece p;
      p.flat_begin = r0 * cols + c0;
      p.length = (r1 - r0) * (c1 - c0);
      if (matrix) {
        p.box = dim == 0 ? Box{{g, c0}, {r1 - r0, c1 - c0}} : Box{{r0, g}, {r1 - r0, c1 - c0}};
      } else {
        p.box = Box{{g}, {r1 - r0}};
      }
      out.push_back(p);
    }
  }
  return out;
}

std::string save_training_checkpoint_parallel(const std::string& save_root, const TrainArgs& args, Trainer& trainer,
                                              const TokenizerRecord& tokenizer, int keep_last, const MpiSession& mpi) {
  GPT& model = trainer.model();
  const ParameterSet& ps = model.parameters();
  const ModelParallel& mp = model.model_parallel();
  Communicator* group = trainer.gradient_group();
  const int D = group ? group->size() : 1, d = group ? group->rank() : 0;
  const int64_t n = ps.numel(), b = n * d / D, e = n * (d + 1) / D;
  // This rank's range of its (stage, tensor-parallel rank) buffers: under ZeRO the shard it owns.
  const auto [params, m, v] = trainer.state_range(b, e);
  std::unique_ptr<CheckpointWriter> w;
  std::string staging;
  if (mpi.rank() == 0) {
    w = std::make_unique<CheckpointWriter>(save_root, trainer.iteration());
    staging = w->staging_dir();
  }
  staging = mpi.broadcast(staging);
  if (mpi.rank() != 0) w = std::make_unique<CheckpointWriter>(save_root, trainer.iteration(), staging);
  add_state_pieces(*w, ps.specs(), b, e, params, m, v, mp.rank() == 0, mpi.rank());
  const std::vector<std::string> indexes = mpi.gather(mpi.rank() == 0 ? std::string() : pieces_to_json(w->finish()));
  if (mpi.rank() != 0) return {};
  for (size_t r = 1; r < indexes.size(); ++r)
    w->add_pieces(pieces_from_json(indexes[r], detail::concat("rank ", r, "'s checkpoint index")));
  return w->commit(metadata_fields(*w, args, trainer, tokenizer), keep_last);
}

LoadResult load_training_checkpoint(const std::string& path, Trainer& trainer, const LoadOptions& options) {
  trainer.finish_param_gathers();  // (overlapped ZeRO-1/2: a gather in flight would overwrite what is loaded)
  CheckpointReader ckpt = CheckpointReader::open(path);
  const std::string where = ckpt.dir() + "/metadata.json";
  const GPTConfig saved = checkpoint_model_config(ckpt);
  const GPTConfig& now = trainer.model().config();
  auto same = [&](const char* key, int64_t a, int64_t b) {
    if (a != b)
      throw ConfigError(detail::concat(ckpt.dir(), ": the checkpoint's ", key, " is ", a, " but the model's is ", b));
  };
  same("num_layers", saved.num_layers, now.num_layers);
  same("hidden_size", saved.hidden_size, now.hidden_size);
  same("num_attention_heads", saved.num_heads, now.num_heads);
  same("ffn_hidden_size", saved.ffn(), now.ffn());
  if (saved.max_position_embeddings != now.max_position_embeddings)
    throw ConfigError(detail::concat(ckpt.dir(), ": the checkpoint's max_position_embeddings is ",
                                     saved.max_position_embeddings, " but the model's is ", now.max_position_embeddings,
                                     " (--max-position-embeddings ", saved.max_position_embeddings,
                                     " keeps the checkpoint's position table at any --seq-length up to it)"));
  same("vocab_size", saved.vocab_size, now.vocab_size);
  check_stored_model(ckpt);
  if (saved.layernorm_eps != now.layernorm_eps)
    throw ConfigError(detail::concat(ckpt.dir(), ": the checkpoint's layernorm_epsilon is ", saved.layernorm_eps,
                                     " but the model's is ", now.layernorm_eps, " (--layernorm-epsilon)"));

  ParameterSet& ps = trainer.model().parameters();
  Backend& be = trainer.model().backend();
  // Tensor by tensor, into whatever storage the run keeps it in (ZeRO-3: only the shard and the
  // resident tensors), never a whole flat buffer on the host.
  const bool direct = ps.flat_params().device().is_cpu() && !ps.compact_params() && !ps.packed_masters();
  for (const ParamSpec& s : ps.specs()) {
    if (direct) {
      read_local(ckpt, "model", s, ps.param(s.name));
      trainer.mark_parameters_changed();
    } else if (trainer.keeps_parameter(s)) {
      Tensor t = Tensor::empty(s.shape);
      read_local(ckpt, "model", s, t);
      trainer.set_parameter(s, t);
    }
  }

  LoadResult r{ckpt.dir(), 0, 0};
  if (options.finetune) return r;
  const json::Value* saved_schedule = ckpt.metadata().find("lr_schedule");
  if (!options.load_optimizer) {
    // As Megatron's --no-load-optim: the scheduler (loaded with the optimizer there) starts again
    // at the resumed iteration, its warmup included, on the fresh moments.
    trainer.set_schedule_origin(ckpt.iteration());
  } else if (saved_schedule && saved_schedule->find("origin")) {
    trainer.set_schedule_origin(member_count(*saved_schedule, "origin", where, "lr_schedule.origin"));
  }
  // The learning-rate schedule continues as saved, as Megatron's OptimizerParamScheduler checks
  // it: a difference is an error unless the run says whose values to use. Megatron loads (and
  // checks) the scheduler with the optimizer: --no-load-optim starts both from this run's flags.
  if (const json::Value* ls = ckpt.metadata().find("lr_schedule");
      ls && options.load_optimizer && options.scheduler != SchedulerSource::this_run) {
    const std::string at = where + ": lr_schedule";
    LRSchedule saved_lr;
    saved_lr.lr = member_number(*ls, "lr", at);
    saved_lr.min_lr = member_number(*ls, "min_lr", at);
    saved_lr.warmup_iters = member_number(*ls, "warmup_iters", at);
    saved_lr.decay_iters = member_count(*ls, "decay_iters", where, "lr_schedule.decay_iters");
    saved_lr.style = member_string(*ls, "style", at);
    const LRSchedule& run = trainer.schedule();
    saved_lr.samples_per_update = run.samples_per_update;  // (the global batch is this run's)
    // Megatron's scheduler counts samples, so another global batch is another schedule there (its
    // check refuses it); this one counts iterations and cannot continue that one's across the
    // change: only this run's flags (--override-opt_param-scheduler) schedule it.
    if (const json::Value* gb = ls->find("global_batch_size"); gb && gb->is_integer() &&
                                                              gb->as_int() != run.samples_per_update)
      throw ConfigError(detail::concat(
          where, ": the checkpoint's learning-rate schedule ran at global batch ", gb->as_int(), ", this run's is ",
          run.samples_per_update, " (--global-batch-size); Megatron's schedule counts samples and refuses the change "
          "as another schedule: give --override-opt_param-scheduler to schedule this run by its flags"));
    if (options.scheduler == SchedulerSource::checkpoint) {
      trainer.set_schedule(saved_lr);
    } else {
      auto differs = [&](bool same, const char* key, const char* flag, const auto& a, const auto& b) {
        if (!same)
          throw ConfigError(detail::concat(
              where, ": the checkpoint's learning-rate schedule has ", key, " ", a, " but this run's is ", b, " (", flag,
              "); give --use-checkpoint-opt_param-scheduler to continue the checkpoint's schedule, or "
              "--override-opt_param-scheduler to use this run's"));
      };
      differs(saved_lr.lr == run.lr, "lr", "--lr", saved_lr.lr, run.lr);
      differs(saved_lr.min_lr == run.min_lr, "min_lr", "--min-lr", saved_lr.min_lr, run.min_lr);
      differs(saved_lr.warmup_iters == run.warmup_iters, "warmup_iters", "--lr-warmup-iters or --lr-warmup-fraction",
              saved_lr.warmup_iters, run.warmup_iters);
      differs(saved_lr.decay_iters == run.decay_iters, "decay_iters", "--lr-decay-iters, or --train-iters when that is 0",
              saved_lr.decay_iters, run.decay_iters);
      differs(saved_lr.style == run.style, "style", "--lr-decay-style", saved_lr.style, run.style);
    }
  }
  if (options.load_optimizer) {
    // A checkpoint of weights alone (an import, a conversion without the optimizer): said with
    // the two ways to start from it, before any tensor is read.
    if (ckpt.names("optimizer/exp_avg").empty() && !ps.specs().empty())
      throw ConfigError(ckpt.dir() + ": the checkpoint holds the weights without the optimizer's state (an import, or "
                                     "llm-ckpt convert --no-optimizer): load it with --no-load-optim (fresh moments, "
                                     "the schedule started again at its iteration as Megatron's) or --finetune (a new run from its weights)");
    AdamW& opt = trainer.optimizer();
    const int64_t b = opt.shard_begin(), e = opt.shard_end();
    for (const char* cat : {"optimizer/exp_avg", "optimizer/exp_avg_sq"}) {
      // This rank's range of the moments (all of it without ZeRO), from the tensors overlapping it.
      const Tensor& state = std::string(cat) == "optimizer/exp_avg" ? opt.m() : opt.v();
      Tensor host = state.device().is_cpu() ? state : Tensor::empty(state.shape());
      for (const ParamSpec& s : ps.specs()) {
        const int64_t lo = std::max(b, s.offset), hi = std::min(e, s.offset + numel(s.shape));
        if (hi <= lo) continue;
        Tensor t = Tensor::empty(s.shape);
        read_local(ckpt, cat, s, t);
        host.flat(lo - b, hi - lo).copy_from(t.view({numel(s.shape)}).flat(lo - s.offset, hi - lo));
      }
      if (!state.device().is_cpu()) be.copy(state, host);
    }
    opt.set_steps(member_count(member(ckpt.metadata(), "optimizer", where), "step", where, "optimizer.step"));
  }
  if (options.restore_position) {
    r.iteration = ckpt.iteration();
    r.consumed_samples = member_count(ckpt.metadata(), "consumed_samples", where, "consumed_samples");
    trainer.restore(r.iteration, r.consumed_samples,
                    member_count(ckpt.metadata(), "nan_iterations", where, "nan_iterations"));
    if (ckpt.metadata().find("consumed_tokens"))
      trainer.restore_consumed_tokens(member_count(ckpt.metadata(), "consumed_tokens", where, "consumed_tokens"));
    // An fp16 run continues the fp16 run's loss scaler: the skipped iterations (which hold the
    // schedule back), and under dynamic scaling the scale and its counters. Checkpoints from
    // before the scaler have none; a run that was not fp16 has nothing to continue.
    const json::Value* ls = ckpt.metadata().find("loss_scaler");
    const json::Value* prec = ls && ls->is_object() ? ls->find("precision") : nullptr;
    // (Megatron keeps the scaler in the optimizer's state: --no-load-optim starts it afresh too.)
    if (options.load_optimizer && trainer.args().fp16 && prec && prec->is_string() && prec->as_string() == "f16") {
      LossScalerState st = trainer.loss_scaler().state();
      st.skipped = member_count(*ls, "skipped", where, "loss_scaler.skipped");
      if (trainer.loss_scaler().dynamic()) {
        const json::Value& scale = member(*ls, "scale", where);
        if (!scale.is_number() || !(scale.as_double() > 0))
          throw ConfigError(where + ": metadata 'loss_scaler.scale' is not a positive number");
        st.scale = scale.as_double();
        st.good_steps = member_count(*ls, "good_steps", where, "loss_scaler.good_steps");
        st.hysteresis_left = static_cast<int>(member_count(*ls, "hysteresis_left", where, "loss_scaler.hysteresis_left"));
      }
      trainer.loss_scaler().restore(st);
    }
  }
  return r;
}

}  // namespace llm
