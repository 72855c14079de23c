// llm-ckpt: inspect, verify, convert, and exchange checkpoints with Hugging Face GPT-2.
#include <CLI/CLI.hpp>
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>

#include "comm/mpi_session.h"
#include "core/error.h"
#include "data/tokenizer_factory.h"
#include "io/checkpoint_compare.h"
#include "io/checkpoint_convert.h"
#include "io/hf_gpt2.h"
#include "model/gpt.h"
#include "train/checkpointing.h"

using namespace llm;
namespace fs = std::filesystem;

namespace {

int inspect(const std::string& path, bool norms) {
  CheckpointReader ckpt = CheckpointReader::open(path);
  const json::Value& m = ckpt.metadata();
  const GPTConfig c = checkpoint_model_config(ckpt);
  std::printf("checkpoint %s (iteration %lld)\n", ckpt.dir().c_str(), static_cast<long long>(ckpt.iteration()));
  std::printf("  model: %lld layers, hidden %lld, %lld heads, ffn %lld, vocab %lld (padded %lld), positions %lld\n",
              static_cast<long long>(c.num_layers), static_cast<long long>(c.hidden_size),
              static_cast<long long>(c.num_heads), static_cast<long long>(c.ffn()),
              static_cast<long long>(c.vocab_size), static_cast<long long>(c.padded_vocab_size()),
              static_cast<long long>(c.max_position_embeddings));
  for (const char* key : {"tokenizer", "layout", "lr_schedule", "optimizer", "rng", "conversion"})
    if (const json::Value* v = m.find(key)) std::printf("  %s: %s\n", key, to_json(*v).c_str());
  if (const json::Value* v = m.find("consumed_samples"))
    std::printf("  consumed samples: %lld\n", static_cast<long long>(v->as_int()));
  std::map<std::string, int64_t> pieces_per_file;
  size_t bytes = 0;
  for (const PieceInfo& p : ckpt.pieces()) {
    ++pieces_per_file[p.file];
    bytes += static_cast<size_t>(numel(p.box.extent)) * dtype_size(p.dtype);
  }
  std::printf("  %zu pieces in %zu file(s), %.1f MB of tensor data\n", ckpt.pieces().size(), pieces_per_file.size(),
              static_cast<double>(bytes) / 1e6);
  std::printf("  %-40s %-18s %-6s %6s %s\n", "tensor (model)", "shape", "dtype", "pieces", norms ? "L2 norm" : "");
  for (const std::string& name : ckpt.names("model")) {
    int pieces = 0;
    std::string dtype;
    for (const PieceInfo& p : ckpt.pieces())
      if (p.category == "model" && p.name == name) {
        ++pieces;
        dtype = std::string(dtype_name(p.dtype));
      }
    std::string norm;
    if (norms) {
      Tensor t = ckpt.read_whole("model", name);
      double s = 0;
      for (float x : t.span<float>()) s += static_cast<double>(x) * x;
      char buf[32];
      std::snprintf(buf, sizeof buf, "%.6g", std::sqrt(s));
      norm = buf;
    }
    std::printf("  %-40s %-18s %-6s %6d %s\n", name.c_str(), shape_str(ckpt.global_shape("model", name)).c_str(),
                dtype.c_str(), pieces, norm.c_str());
  }
  for (const char* cat : {"optimizer/exp_avg", "optimizer/exp_avg_sq"})
    std::printf("  %s: %zu tensors\n", cat, ckpt.names(cat).size());
  return 0;
}

HFTokenizerFiles hf_tokenizer_of(const CheckpointReader& ckpt) {
  const TokenizerOptions o = tokenizer_options(checkpoint_tokenizer(ckpt));
  HFTokenizerFiles t;
  if (o.type == "GPT2BPETokenizer" && !o.vocab_file.empty() && !o.merge_file.empty()) {
    t.kind = HFTokenizerFiles::Kind::gpt2_bpe;
    t.vocab_file = o.vocab_file;
    t.merge_file = o.merge_file;
    t.eod_id = make_tokenizer(o)->eod_id();
  } else if ((o.type == "SentencePieceTokenizer" || o.type == "GPTSentencePieceTokenizer") && !o.model.empty()) {
    t.kind = HFTokenizerFiles::Kind::sentencepiece;
    t.model_file = o.model;
    t.eod_id = make_tokenizer(o)->eod_id();
  }
  return t;
}

int run(int argc, char** argv) {
  require_single_process("llm-ckpt");  // under mpirun every copy would write the same output
  CLI::App app{"llm-ckpt: inspect, verify, convert and exchange libllm checkpoints"};
  app.footer(
      "Examples:\n"
      "  llm-ckpt inspect runs/ckpt                        # config, layout, tensors (--norms adds L2 norms)\n"
      "  llm-ckpt verify runs/ckpt                         # checksums + every element stored exactly once\n"
      "  llm-ckpt diff runs/a runs/b --rtol 1e-5           # same global tensors? (any two layouts)\n"
      "  llm-ckpt convert runs/ckpt --output runs/ckpt-bf16 --dtype bf16 --shards 4\n"
      "  llm-ckpt export runs/ckpt --format hf-gpt2 --output hf/\n"
      "  llm-ckpt import hf/ --format hf-gpt2 --output runs/imported");
  app.require_subcommand(1);
  std::string path, output, format = "hf-gpt2", dtype = "f32";
  bool norms = false, no_optimizer = false, overwrite = false;
  int shards = 1;
  auto* ins = app.add_subcommand("inspect", "print the config, layout and tensors of a checkpoint");
  ins->add_option("checkpoint", path, "iteration directory or save directory")->required();
  ins->add_flag("--norms", norms, "also print each parameter's L2 norm (reads all data)");
  auto* ver = app.add_subcommand("verify", "check every checksum, that every tensor is covered exactly once, and that the model its config describes has every tensor it needs");
  ver->add_option("checkpoint", path, "iteration directory or save directory")->required();
  auto* conv = app.add_subcommand("convert", "rewrite with another dtype / number of shards, optionally without optimizer");
  conv->add_option("checkpoint", path, "source")->required();
  conv->add_option("--output", output, "destination save directory")->required();
  conv->add_option("--dtype", dtype, "f32 | bf16 | f16")->capture_default_str();
  conv->add_option("--shards", shards, "pieces per tensor, one file each (1 = merge into one file)")->capture_default_str();
  conv->add_flag("--no-optimizer", no_optimizer, "drop the optimizer state");
  conv->add_flag("--overwrite", overwrite, "write into a save directory that already holds checkpoints (this one becomes 'latest')");
  auto* exp = app.add_subcommand("export", "write a Hugging Face model directory");
  exp->add_option("checkpoint", path, "source")->required();
  exp->add_option("--format", format, "hf-gpt2")->capture_default_str();
  exp->add_option("--output", output, "directory to create")->required();
  exp->add_flag("--overwrite", overwrite, "replace an existing output directory");
  std::string other;
  double rtol = 1e-5;
  bool with_optimizer = false;
  auto* dif = app.add_subcommand("diff", "compare every tensor of two checkpoints (saved under any layouts)");
  dif->add_option("checkpoint", path, "first checkpoint (the reference)")->required();
  dif->add_option("other", other, "second checkpoint")->required();
  dif->add_option("--rtol", rtol, "largest |a - b| / max |a| allowed per tensor")->capture_default_str();
  dif->add_flag("--optimizer", with_optimizer, "also compare the AdamW moments");
  auto* imp = app.add_subcommand("import", "read a Hugging Face model directory into a checkpoint (iteration 0)");
  imp->add_option("directory", path, "Hugging Face model directory")->required();
  imp->add_option("--format", format, "hf-gpt2")->capture_default_str();
  imp->add_option("--output", output, "save directory to write the checkpoint into")->required();
  imp->add_flag("--overwrite", overwrite, "write into a save directory that already holds checkpoints (this one becomes 'latest')");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  // convert and import add a checkpoint to the save directory --output: not beside others unasked
  auto refuse_unless_overwrite = [&] {
    if (!overwrite)
      refuse_save_root_with_checkpoints(output, "--output " + output,
                                        "Pass --overwrite to write this one beside them, or choose another directory.");
  };
  if (*ins) return inspect(path, norms);
  if (*ver) {
    CheckpointReader ckpt = CheckpointReader::open(path);
    const int64_t n = ckpt.verify();
    const std::vector<std::string> problems = checkpoint_completeness_problems(ckpt);
    if (!problems.empty()) {
      std::string list;
      for (size_t i = 0; i < problems.size() && i < 10; ++i) list += "\n  " + problems[i];
      if (problems.size() > 10) list += detail::concat("\n  ... and ", problems.size() - 10, " more");
      throw ConfigError(detail::concat(ckpt.dir(), ": the stored data is intact, but it does not load into the model its "
                                       "metadata describes (", problems.size(), " problem(s)):", list));
    }
    std::printf("OK %s: %lld tensors in %zu pieces, checksums match, every element stored exactly once\n",
                ckpt.dir().c_str(), static_cast<long long>(n), ckpt.pieces().size());
    return 0;
  }
  if (*dif) {
    if (!(rtol >= 0)) throw ConfigError(detail::concat("--rtol must be >= 0, got ", rtol));
    const CheckpointDifference d = compare_checkpoints(path, other, with_optimizer);
    for (const std::string& p : d.problems) std::printf("  %s\n", p.c_str());
    std::vector<TensorDifference> sorted = d.tensors;
    std::sort(sorted.begin(), sorted.end(), [](const auto& x, const auto& y) { return x.relative() > y.relative(); });
    std::printf("%zu tensors compared; largest relative differences:\n", d.tensors.size());
    for (size_t i = 0; i < sorted.size() && i < 5; ++i)
      std::printf("  %-22s %-36s %.3e (|a - b| %.3e of max |a| %.3e%s)\n", sorted[i].category.c_str(),
                  sorted[i].name.c_str(), sorted[i].relative(), sorted[i].max_abs, sorted[i].max_ref,
                  sorted[i].nonfinite ? detail::concat("; ", sorted[i].nonfinite, " differing by a NaN or an infinity").c_str() : "");
    bool ok = d.problems.empty() && !d.tensors.empty();
    for (const char* cat : {"model", "optimizer/exp_avg", "optimizer/exp_avg_sq"}) {
      if (!with_optimizer && std::string(cat) != "model") continue;
      const double w = d.worst(cat);
      std::printf("%s: worst %.3e %s rtol %.1e\n", cat, w, w <= rtol ? "<=" : ">", rtol);
      ok = ok && w <= rtol;
    }
    std::printf("%s\n", ok ? "SAME (within rtol)" : "DIFFERENT");
    return ok ? 0 : 1;
  }
  if (*conv) {
    ConvertOptions o;
    o.dtype = dtype == "bf16" ? DType::bf16 : dtype == "f16" ? DType::f16 : DType::f32;
    if (dtype != "f32" && dtype != "bf16" && dtype != "f16") throw ConfigError("--dtype must be f32, bf16 or f16");
    o.shards = shards;
    o.keep_optimizer = !no_optimizer;
    refuse_unless_overwrite();
    std::printf("wrote %s\n", convert_checkpoint(path, output, o).c_str());
    return 0;
  }
  if (format != "hf-gpt2") throw ConfigError("--format: only hf-gpt2 is supported, got '" + format + "'");
  if (*exp) {
    CheckpointReader ckpt = CheckpointReader::open(path);
    const GPTConfig c = checkpoint_model_config(ckpt);
    refuse_output_inside(output, ckpt.dir());
    export_hf_gpt2(output, c, [&](const std::string& name) { return ckpt.read_whole("model", name); },
                   hf_tokenizer_of(ckpt), overwrite);
    std::printf("exported %s -> %s (model.safetensors, config.json%s)\n", ckpt.dir().c_str(), output.c_str(),
                hf_tokenizer_of(ckpt).kind == HFTokenizerFiles::Kind::none ? "" : ", tokenizer files");
    return 0;
  }
  // import
  refuse_unless_overwrite();
  HFGpt2Import hf = import_hf_gpt2(path);
  GPT model(hf.config, cpu_backend(), 0, hf.config.max_position_embeddings);
  for (const ParamSpec& s : model.parameters().specs()) {
    auto it = hf.params.find(s.name);
    if (it == hf.params.end()) throw ConfigError(path + ": no tensor for '" + s.name + "'");
    model.parameters().param(s.name).copy_from(it->second);
  }
  TokenizerRecord tok;
  if (hf.tokenizer.kind == HFTokenizerFiles::Kind::gpt2_bpe) {
    auto t = make_tokenizer({"GPT2BPETokenizer", "", hf.tokenizer.vocab_file, hf.tokenizer.merge_file, 0});
    tok = {t->identity(), {{"vocab", hf.tokenizer.vocab_file}, {"merges", hf.tokenizer.merge_file}}};
  } else if (hf.tokenizer.kind == HFTokenizerFiles::Kind::sentencepiece) {
    // HF's view of the model's pieces: </s> its end of text, no ids after the model's.
    auto t = make_tokenizer({"GPTSentencePieceTokenizer", hf.tokenizer.model_file, "", "", 0});
    tok = {t->identity(), {{"model", hf.tokenizer.model_file}}};
  } else {
    tok = {{"None", ""}, {}};  // no tokenizer files in the directory: llm-generate then needs --tokenizer-type
  }
  const std::string dir = save_model_checkpoint(output, 0, hf.config, model.parameters(), tok,
                                                "\"imported_from\": " + json::quote(fs::absolute(path).string()));
  std::printf("imported %s -> %s (load it with --finetune or --no-load-optim)\n", path.c_str(), dir.c_str());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const ConfigError& e) {
    std::fprintf(stderr, "llm-ckpt: error: %s\n", e.what());
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "llm-ckpt: error: %s\n", e.what());
    return 1;
  }
}
