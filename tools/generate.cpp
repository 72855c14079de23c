// llm-generate: text generation from a checkpoint in the terminal (interactive), for one
// prompt, or for a file of prompts (JSON lines out). Sampling options follow llama.cpp.
#include <omp.h>
#include <signal.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <optional>

#include "comm/mpi_session.h"
#include "core/error.h"
#include "core/fsync.h"
#include "core/threads.h"
#include "data/json.h"
#include "data/tokenizer_factory.h"
#include "data/utf8.h"
#include "infer/generator.h"
#include "infer/text_stream.h"
#include "train/checkpointing.h"

using namespace llm;

namespace {

std::atomic<bool> g_interrupt{false};
extern "C" void on_sigint(int) { g_interrupt.store(true); }

// The descriptor a path names (/dev/stdout, /dev/fd/N, /proc/self/fd/N, or a link to one), else
// -1: such a path is the open file itself, which a rename would only replace the name of.
int descriptor_named(const std::string& path) {
  namespace fs = std::filesystem;
  for (const fs::path& q : link_chain(path)) {
    std::error_code ec;
    const fs::path dir = fs::weakly_canonical(q.parent_path(), ec);
    const std::string d = dir.string(), name = q.filename().string();
    if (!ec && d.rfind("/proc/", 0) == 0 && dir.filename() == "fd" && !name.empty() &&
        name.find_first_not_of("0123456789") == std::string::npos)
      return std::atoi(name.c_str());
  }
  return -1;
}

std::unique_ptr<Tokenizer> checkpoint_tokenizer_or_flags(const CheckpointReader& ckpt, TokenizerOptions flags,
                                                         int64_t model_vocab) {
  const TokenizerRecord rec = checkpoint_tokenizer(ckpt);
  TokenizerOptions o = flags;
  if (o.type.empty()) {
    o = tokenizer_options(rec);
    // files given here stand in for (or replace) the recorded ones; the identity check below
    // still holds them to the checkpoint's tokenizer
    if (!flags.model.empty()) o.model = flags.model;
    if (!flags.vocab_file.empty()) o.vocab_file = flags.vocab_file;
    if (!flags.merge_file.empty()) o.merge_file = flags.merge_file;
    if (o.type == "NullTokenizer") o.vocab_size = model_vocab - 1;
    if (o.type == "MockData" || o.type == "None")
      throw ConfigError(ckpt.dir() + " records no tokenizer (" +
                        (o.type == "MockData" ? "trained on --mock-data" : "imported without tokenizer files") +
                        "); pass --tokenizer-type (e.g. NullTokenizer --vocab-size " + std::to_string(model_vocab - 1) +
                        ": ids in, ids out, the model's last id its end of document)");
    if (((o.type == "SentencePieceTokenizer" || o.type == "GPTSentencePieceTokenizer") && o.model.empty()) ||
        (o.type == "GPT2BPETokenizer" && (o.vocab_file.empty() || o.merge_file.empty())))
      throw ConfigError(ckpt.dir() + ": the checkpoint records a " + o.type +
                        " but not its files (train with --tokenizer-model / --vocab-file / --merge-file, or pass them here)");
  }
  // Named by where each side came from: the metadata's record, and the flags or the files.
  const std::string meta = ckpt.dir() + "/metadata.json";
  const bool recorded = flags.type.empty();
  if (recorded && !is_tokenizer_type(o.type))
    throw ConfigError(meta + ": tokenizer kind '" + o.type + "' is none this build reads (" + tokenizer_types_phrase() +
                      "); pass --tokenizer-type and its files");
  auto tok = make_tokenizer(o);
  const bool unknown = rec.identity.kind == "MockData" || rec.identity.kind == "None";
  if (!unknown && !(tok->identity() == rec.identity)) {
    // the files this kind reads, and whether a flag named them
    const bool sp = o.type == "SentencePieceTokenizer" || o.type == "GPTSentencePieceTokenizer";
    const bool bpe = o.type == "GPT2BPETokenizer";
    std::string files = sp ? o.model : bpe ? o.vocab_file + ", " + o.merge_file : "";
    const bool flag_files = !flags.model.empty() || !flags.vocab_file.empty() || !flags.merge_file.empty();
    std::string source = recorded ? files : "--tokenizer-type " + o.type + (files.empty() ? "" : ", " + files);
    if (source.empty()) source = "its kind as recorded";
    throw ConfigError("the tokenizer " + tok->identity().str() + " (" + source + ") differs from " + meta + "'s " +
                      rec.identity.str() +
                      (recorded && !flag_files && !files.empty()
                           ? ": the checkpoint's tokenizer file changed since it was saved?"
                           : ""));
  }
  return tok;
}

void report(const GenerateStats& s) {
  std::fprintf(stderr, "[llm-generate] prefill: %lld tokens in %.3f s (%.1f tokens/s); decode: %lld tokens in %.3f s "
               "(%.2f tokens/s); stop: %s\n",
               static_cast<long long>(s.prompt_tokens), s.prefill_seconds,
               s.prefill_seconds > 0 ? s.prompt_tokens / s.prefill_seconds : 0.0, static_cast<long long>(s.new_tokens),
               s.decode_seconds, s.decode_seconds > 0 ? s.new_tokens / s.decode_seconds : 0.0, s.stop_reason.c_str());
}

int run(int argc, char** argv) {
  // one process: under mpirun every copy would generate and write the same output
  require_single_process("llm-generate");
  CLI::App app{"llm-generate: generate text from a libllm checkpoint"};
  app.footer(
      "Examples:\n"
      "  llm-generate --load runs/quickstart/ckpt --prompt 'In the beginning' --max-new-tokens 60\n"
      "  llm-generate --load ckpt                    # interactive on a terminal: /reset, /quit, Ctrl-C stops a reply\n"
      "  llm-generate --load ckpt --prompt-file prompts.txt --output out.jsonl --temperature 0\n"
      "  llm-generate --load ckpt --backend cuda --bf16 --prompt 'In the beginning'   # on a GPU");
  std::string load, prompt, prompt_file, output;
  GenerateOptions go;
  TokenizerOptions tflags;
  bool interactive = false, ignore_eod = false, bf16 = false, fp16 = false;
  std::string backend_name = "cpu";
  int threads = 0;
  int64_t context = 0;
  app.add_option("--load", load, "checkpoint directory, or a --save directory with 'latest'")->required();
  app.add_option("--prompt", prompt, "generate for this prompt and exit");
  app.add_option("--prompt-file", prompt_file, "one prompt per line; results as JSON lines (--output)");
  app.add_option("--output", output, "JSON-lines output for --prompt-file (default stdout)");
  app.add_flag("--interactive,-i", interactive, "prompt loop (the default when stdin is a terminal)");
  app.add_option("--max-new-tokens,-n,--n-predict", go.max_new_tokens,
                 "tokens to generate at most; -1 = no limit, until the context is full (llama.cpp's default)")
      ->capture_default_str();
  app.add_option("--temperature,--temp", go.sampler.temperature, "0 = greedy")->capture_default_str();
  app.add_option("--top-k", go.sampler.top_k, "0 = off")->capture_default_str();
  app.add_option("--top-p", go.sampler.top_p, "1 = off")->capture_default_str();
  app.add_option("--min-p", go.sampler.min_p, "0 = off")->capture_default_str();
  app.add_option("--repeat-penalty", go.sampler.repeat_penalty, "1 = off")->capture_default_str();
  app.add_option("--frequency-penalty", go.sampler.frequency_penalty,
                 "logit -= this * the token's count in the penalty window; 0 = off")
      ->capture_default_str();
  app.add_option("--presence-penalty", go.sampler.presence_penalty,
                 "logit -= this for a token in the penalty window; 0 = off")
      ->capture_default_str();
  app.add_option("--repeat-last-n", go.sampler.repeat_last_n,
                 "the penalties' window: the last n tokens of this turn's prompt and reply (0 = off, -1 = all of them)")
      ->capture_default_str();
  std::string seed_text = "-1";
  app.add_option("--seed,-s", seed_text,
                 "sampling seed; -1 = a random one, printed on stderr (--seed N repeats a run; the draws are not "
                 "llama.cpp's: Philox, not mt19937)")
      ->capture_default_str();
  app.add_option("--stop", go.stop, "stop string (repeatable); not printed");
  app.add_flag("--ignore-eod,--ignore-eos", ignore_eod,
               "never sample the end-of-document token (banned: logit -inf, as llama.cpp's --ignore-eos)");
  app.add_flag("--truncate-prompt", go.truncate_prompt, "keep the end of a prompt that does not fit (else an error)");
  app.add_option("--ctx-size,-c", context, "context positions (0 = the model's position table)")->capture_default_str();
  app.add_option("--threads", threads, "CPU threads (0 = OMP_NUM_THREADS or all cores)");
  app.add_option("--backend", backend_name, "cpu | cuda (the GPU of the launcher's local rank, else the first)")
      ->capture_default_str();
  auto* bf16_flag = app.add_flag("--bf16", bf16, "bf16 weights and activations (the sampler's logits in fp32)");
  app.add_flag("--fp16", fp16, "fp16 weights and activations (the sampler's logits in fp32)")->excludes(bf16_flag);
  app.add_option("--tokenizer-type", tflags.type, "override the checkpoint's tokenizer");
  app.add_option("--tokenizer-model", tflags.model, "SentencePiece model file");
  app.add_option("--vocab-file", tflags.vocab_file, "GPT-2 vocabulary file");
  app.add_option("--merge-file", tflags.merge_file, "GPT-2 merges file");
  app.add_option("--vocab-size", tflags.vocab_size, "NullTokenizer vocabulary size");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  set_cpu_threads(threads, "--threads");
  if (context < 0) throw ConfigError(detail::concat("--ctx-size must be >= 0 (0: the model's position table), got ", context));
  go.stop_at_eod = !ignore_eod;
  go.sampler.seed = parse_seed(seed_text);  // one seed for the whole run, printed below
  go.validate();
  (void)TextStream(go.stop);  // a bad --stop is refused before the weights load
  if (interactive && !prompt.empty()) throw ConfigError("--prompt and --interactive exclude each other");
  if (interactive && !prompt_file.empty()) throw ConfigError("--prompt-file and --interactive exclude each other");
  if (!prompt.empty() && !prompt_file.empty()) throw ConfigError("--prompt and --prompt-file exclude each other");

  CheckpointReader ckpt = CheckpointReader::open(load);
  const GPTConfig config = checkpoint_model_config(ckpt);
  auto tok = checkpoint_tokenizer_or_flags(ckpt, tflags, config.vocab_size);  // before the weights: its errors come first
  Backend& backend = backend_by_name(backend_name);
  const DType precision = bf16 ? DType::bf16 : fp16 ? DType::f16 : DType::f32;
  // An inference model: the checkpoint's fp32 weights rounded once, tensor by tensor, into the
  // compute precision; no gradients and no f32 masters (but the LayerNorms').
  GPT model(config, backend, InferenceOptions{precision});
  load_model_parameters(ckpt, model.parameters(), backend);
  if (context > config.max_position_embeddings)
    throw ConfigError(detail::concat("--ctx-size ", context, " exceeds the model's ", config.max_position_embeddings,
                                     " positions (0 takes them all)"));
  if (context <= 0) context = config.max_position_embeddings;
  Generator gen(model, *tok, context);
  const double weights_mib = static_cast<double>(model.parameter_bytes()) / (1 << 20),
               cache_mib = static_cast<double>(gen.cache_bytes()) / (1 << 20);
  std::fprintf(stderr,
               "[llm-generate] %s: %lld layers, hidden %lld, %lld heads, context %lld, tokenizer %s, %s %s, "
               "weights %.*f MiB, KV cache %.*f MiB\n",
               ckpt.dir().c_str(), static_cast<long long>(config.num_layers),
               static_cast<long long>(config.hidden_size), static_cast<long long>(config.num_heads),
               static_cast<long long>(context), tok->identity().str().c_str(), backend.name().c_str(),
               std::string(dtype_name(precision)).c_str(), weights_mib < 10 ? 3 : 1, weights_mib,
               cache_mib < 10 ? 3 : 1, cache_mib);
  // The seed once, so that any run can be repeated (llama.cpp prints its sampler seed too).
  std::fprintf(stderr, "[llm-generate] seed: %llu%s\n", static_cast<unsigned long long>(go.sampler.seed),
               go.sampler.greedy() ? " (unused: --temperature 0 is greedy)" : "");
  auto print = [](const std::string& s) {
    std::fwrite(s.data(), 1, s.size(), stdout);
    std::fflush(stdout);
  };
  auto warn = [](const std::string& w) { std::fprintf(stderr, "[llm-generate] warning: %s\n", w.c_str()); };

  if (!prompt_file.empty()) {
    std::ifstream in(prompt_file);
    if (std::error_code ec; !in || std::filesystem::is_directory(prompt_file, ec))
      throw ConfigError(prompt_file + ": cannot read (--prompt-file takes a file of prompts, one per line)");
    // --output replaces a file only when every prompt has its result: a bad prompt leaves it as it
    // was. An open descriptor (/dev/stdout, /dev/fd/N, /proc/self/fd/N, links to them), a device
    // or a pipe is written as it goes, a record at a time: stdout through std::cout (its offset and
    // mode, so `>> f` appends), the others appended to.
    std::optional<AtomicFile> file_out;
    std::ofstream stream_out;
    const int fd = output.empty() ? -1 : descriptor_named(output);
    std::error_code ec;
    const bool streamed = fd >= 0 || (!output.empty() && std::filesystem::exists(output, ec) &&
                                      !std::filesystem::is_regular_file(output, ec) &&
                                      !std::filesystem::is_directory(output, ec));
    if (streamed && fd != 1) {
      stream_out.open(output, std::ios::app);
      if (!stream_out) throw ConfigError(output + ": cannot write");
    } else if (!streamed && !output.empty()) {
      file_out.emplace(output);
    }
    std::ostream& out = file_out ? file_out->stream() : stream_out.is_open() ? static_cast<std::ostream&>(stream_out) : std::cout;
    std::string line;
    int64_t n = 0, line_no = 0;
    GenerateStats total;
    while (std::getline(in, line)) {
      ++line_no;
      if (!line.empty() && line.back() == '\r') line.pop_back();  // CRLF files
      if (line.empty()) continue;
      gen.reset();  // prompts are independent
      GenerateStats s;
      try {
        s = gen.generate(line, go, {}, nullptr, warn);
      } catch (const ConfigError& e) {
        throw ConfigError(detail::concat(prompt_file, ":", line_no, ": ", e.what()));
      }
      std::string shown = line;  // the record stays valid JSON whatever bytes the line held
      replace_invalid_utf8(shown);
      out << "{\"prompt\": " << json::quote(shown) << ", \"completion\": " << json::quote(s.text)
          << ", \"prompt_tokens\": " << s.prompt_tokens << ", \"new_tokens\": " << s.new_tokens
          << ", \"stop_reason\": " << json::quote(s.stop_reason) << "}\n";
      if (!file_out) out.flush();  // a record at a time to a reader on the other end
      if (!out) throw ConfigError((output.empty() ? std::string("stdout") : output) + ": writing failed after " +
                                  std::to_string(n) + " records");
      ++n;
      total.prompt_tokens += s.prompt_tokens;
      total.new_tokens += s.new_tokens;
      total.prefill_seconds += s.prefill_seconds;
      total.decode_seconds += s.decode_seconds;
    }
    if (in.bad()) throw ConfigError(prompt_file + ": reading failed after line " + std::to_string(line_no));
    if (file_out) file_out->commit();
    total.stop_reason = std::to_string(n) + " prompts";
    report(total);
    return 0;
  }
  if (!prompt.empty() && !interactive) {
    const GenerateStats s = gen.generate(prompt, go, print, nullptr, warn);
    print("\n");
    report(s);
    return 0;
  }
  if (!interactive && !::isatty(STDIN_FILENO)) {
    // piped stdin without --prompt: the whole input is one prompt
    std::string all((std::istreambuf_iterator<char>(std::cin)), {});
    const GenerateStats s = gen.generate(all, go, print, nullptr, warn);
    print("\n");
    report(s);
    return 0;
  }
  // Interactive: Ctrl-C stops the current reply; at the prompt it ends the program.
  struct sigaction sa {};
  sa.sa_handler = on_sigint;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = 0;  // no SA_RESTART: a Ctrl-C at the prompt interrupts the read
  sigaction(SIGINT, &sa, nullptr);
  std::fprintf(stderr, "[llm-generate] type a prompt; /reset starts over, /quit (or Ctrl-D) exits, Ctrl-C stops a reply\n");
  GenerateStats total;
  int64_t replies = 0;
  while (true) {
    std::fprintf(stderr, "\n> ");
    std::fflush(stderr);
    std::string line;
    g_interrupt.store(false);
    if (!std::getline(std::cin, line)) break;
    if (line == "/quit" || line == "/exit") break;
    if (line == "/reset") {
      gen.reset();
      std::fprintf(stderr, "[llm-generate] conversation reset\n");
      continue;
    }
    if (line.empty()) continue;
    try {
      const GenerateStats s = gen.generate(line, go, print, &g_interrupt, warn);
      print("\n");
      if (s.stop_reason == "cancelled") std::fprintf(stderr, "[llm-generate] stopped\n");
      total.prompt_tokens += s.prompt_tokens;
      total.new_tokens += s.new_tokens;
      total.prefill_seconds += s.prefill_seconds;
      total.decode_seconds += s.decode_seconds;
      ++replies;
    } catch (const ConfigError& e) {
      std::fprintf(stderr, "[llm-generate] %s\n", e.what());
    }
  }
  total.stop_reason = std::to_string(replies) + (replies == 1 ? " reply" : " replies");
  report(total);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  int rc = 0;
  try {
    rc = run(argc, argv);
  } catch (const ConfigError& e) {
    std::fprintf(stderr, "llm-generate: error: %s\n", e.what());
    rc = 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "llm-generate: error: %s\n", e.what());
    rc = 1;
  }
  return rc;
}
