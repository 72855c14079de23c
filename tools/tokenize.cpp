// llm-tokenize: train tokenizers and turn raw text into sharded HDF5 token datasets
// (Megatron preprocess_data.py flags), in parallel with threads and MPI ranks.
#include <omp.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <memory>

#include "comm/mpi_session.h"
#include "core/error.h"
#include "core/threads.h"
#include "core/fsync.h"
#include "data/dataset.h"
#include "data/megatron_import.h"
#include "data/sentencepiece_tokenizer.h"
#include "data/tokenize_job.h"
#include "data/tokenizer_factory.h"

using namespace llm;

namespace {

struct TokenizerFlags {
  TokenizerOptions o;
  void add(CLI::App& app, bool required) {
    app.add_option("--tokenizer-type", o.type,
                   "SentencePieceTokenizer (Megatron's: <EOD> after the model's pieces) | GPTSentencePieceTokenizer (</s> as EOD) | "
                   "GPT2BPETokenizer | NullTokenizer | ByteTokenizer")
        ->required(required);
    app.add_option("--tokenizer-model", o.model, "SentencePiece .model file");
    app.add_option("--vocab-file", o.vocab_file, "GPT-2 vocabulary (encoder.json / vocab.json)");
    app.add_option("--merge-file", o.merge_file, "GPT-2 merges (vocab.bpe / merges.txt)");
    app.add_option("--vocab-size", o.vocab_size, "NullTokenizer vocabulary size");
  }
};

struct InputFlags {
  std::vector<std::string> inputs;
  std::string format = "auto", boundary = "blank-line", invalid_utf8 = "replace", bad_json = "skip";
  std::vector<std::string> json_keys{"text"};
  CLI::Option* json_keys_flag = nullptr;
  void add(CLI::App& app, bool required) {
    app.add_option("--input", inputs, "input files (text or JSON lines); - for stdin")->required(required);
    app.add_option("--input-format", format, "auto (by extension: .jsonl/.json = jsonl) | text | jsonl")
        ->capture_default_str();
    app.add_option("--document-boundary", boundary, "text inputs: blank-line | line | file")->capture_default_str();
    json_keys_flag = app.add_option("--json-keys", json_keys, "JSON-lines keys whose text are documents")->capture_default_str();
    app.add_option("--invalid-utf8", invalid_utf8, "replace (with U+FFFD, counted) | fail")->capture_default_str();
    app.add_option("--bad-json", bad_json, "skip (counted) | fail")->capture_default_str();
  }
  InputOptions options() const {
    InputOptions o;
    auto is_json = [](const std::string& f) { return f.ends_with(".jsonl") || f.ends_with(".json"); };
    const bool jsonl_ext = !inputs.empty() && is_json(inputs[0]);
    if (format == "auto")  // one format for every file: a mix would read some files in the wrong one
      for (const std::string& f : inputs)
        if (is_json(f) != jsonl_ext)
          throw ConfigError("--input: " + inputs[0] + " is " + (jsonl_ext ? "JSON lines" : "text") + " by its extension but " +
                            f + " is " + (jsonl_ext ? "text" : "JSON lines") +
                            "; tokenize them in separate runs, or name one format with --input-format");
    if (format == "jsonl" || (format == "auto" && jsonl_ext)) o.format = InputFormat::jsonl;
    else if (format != "text" && format != "auto") throw ConfigError("--input-format must be auto, text or jsonl");
    if (boundary == "blank-line") o.boundary = DocumentBoundary::blank_line;
    else if (boundary == "line") o.boundary = DocumentBoundary::line;
    else if (boundary == "file") o.boundary = DocumentBoundary::file;
    else throw ConfigError("--document-boundary must be blank-line, line or file, got '" + boundary + "'");
    if (invalid_utf8 != "replace" && invalid_utf8 != "fail") throw ConfigError("--invalid-utf8 must be replace or fail");
    if (bad_json != "skip" && bad_json != "fail") throw ConfigError("--bad-json must be skip or fail");
    o.fail_on_invalid_utf8 = invalid_utf8 == "fail";
    o.fail_on_bad_json = bad_json == "fail";
    o.json_keys = json_keys;
    if (o.format != InputFormat::jsonl && json_keys_flag && json_keys_flag->count() > 0)
      throw ConfigError("--json-keys: " + (inputs.empty() ? std::string("stdin") : inputs[0]) +
                        " is read as text (" + (format == "text" ? "--input-format text" : "by its extension") +
                        "), which has no keys; pass --input-format jsonl to read it as JSON lines");
    return o;
  }
};

// The ranks' errors agreed (collective): the first failed rank's, "[rank N] "-prefixed past rank
// 0, on every rank; empty when none failed.
std::string first_error(const MpiSession& mpi, const std::string& error) {
  if (mpi.size() == 1) return error;
  const std::vector<std::string> all = mpi.gather(error);
  std::string first;
  for (size_t r = 0; r < all.size() && first.empty(); ++r)
    if (!all[r].empty()) first = r == 0 ? all[r] : "[rank " + std::to_string(r) + "] " + all[r];
  return mpi.broadcast(first);
}

std::string human_count(double v) {
  char buf[32];
  if (v >= 1e9) std::snprintf(buf, sizeof buf, "%.2fG", v / 1e9);
  else if (v >= 1e6) std::snprintf(buf, sizeof buf, "%.2fM", v / 1e6);
  else if (v >= 1e3) std::snprintf(buf, sizeof buf, "%.1fk", v / 1e3);
  else std::snprintf(buf, sizeof buf, "%.0f", v);
  return buf;
}

// What a rank sees of an input: its size and a hash of its first and last 64 KiB ("" when it
// cannot be read: the reader names that). Ranks read byte ranges of the inputs' concatenation,
// computed from the sizes each sees, so an input that differs by node (a node-local copy of
// another version) would duplicate or drop documents silently.
std::string input_fingerprint(const std::string& path) {
  std::error_code ec;
  const auto size = std::filesystem::file_size(path, ec);
  if (ec) return "";
  std::ifstream f(path, std::ios::binary);
  if (!f) return "";
  constexpr std::streamoff kEdge = 65536;
  std::string head(static_cast<size_t>(std::min<std::streamoff>(kEdge, static_cast<std::streamoff>(size))), '\0');
  f.read(head.data(), static_cast<std::streamsize>(head.size()));
  std::string tail;
  if (static_cast<std::streamoff>(size) > kEdge) {
    tail.resize(static_cast<size_t>(std::min<std::streamoff>(kEdge, static_cast<std::streamoff>(size) - kEdge)));
    f.seekg(static_cast<std::streamoff>(size) - static_cast<std::streamoff>(tail.size()));
    f.read(tail.data(), static_cast<std::streamsize>(tail.size()));
  }
  if (!f) return "";
  return detail::concat(size, " bytes, ", hash_bytes(head + tail));
}

// The first input that some rank sees otherwise than rank 0 (collective): the message, or "".
std::string differing_input(const MpiSession& mpi, const std::vector<std::string>& inputs) {
  if (mpi.size() == 1) return "";
  std::string mine;
  for (const std::string& in : inputs) mine += input_fingerprint(in) + '\n';
  const std::vector<std::string> all = mpi.gather(mine);
  std::string verdict;
  if (mpi.rank() == 0) {
    auto split = [](const std::string& t) {
      std::vector<std::string> v;
      for (size_t at = 0; at < t.size();) {
        const size_t end = t.find('\n', at);
        v.push_back(t.substr(at, end - at));
        at = end + 1;
      }
      return v;
    };
    const std::vector<std::string> ours = split(mine);
    for (size_t r = 1; r < all.size() && verdict.empty(); ++r) {
      const std::vector<std::string> theirs = split(all[r]);
      for (size_t i = 0; i < inputs.size() && i < theirs.size() && i < ours.size(); ++i)
        if (!ours[i].empty() && !theirs[i].empty() && ours[i] != theirs[i]) {
          verdict = detail::concat(inputs[i], ": rank ", r, " sees another file than rank 0 (", theirs[i],
                                   " against ", ours[i], "); every rank must read the same inputs (a copy on "
                                   "node-local disk that differs?)");
          break;
        }
    }
  }
  return mpi.broadcast(verdict);
}

int preprocess(const MpiSession& mpi, const InputFlags& in, const TokenizerFlags& tf, const std::string& out_dir,
               bool append_eod, int64_t shard_tokens, bool overwrite) {
  if (out_dir.empty()) throw ConfigError("--output-prefix is required");
  auto tokenizer = make_tokenizer(tf.o);
  if (shard_tokens < 1) throw ConfigError(detail::concat("--shard-tokens must be >= 1, got ", shard_tokens));
  const DatasetInfo info{tokenizer->identity(), tokenizer->vocab_size(), tokenizer->eod_id()};
  // Refuse an existing output before the work, not after it (rank 0 decides for everyone).
  std::string refused;
  if (mpi.rank() == 0) {
    try {
      check_dataset_output(out_dir, overwrite);
    } catch (const ConfigError& e) {
      refused = e.what();
    }
  }
  refused = mpi.broadcast(refused);
  if (!refused.empty()) throw AllRanksError(refused);
  // Every rank writes its part into rank 0's staging directory beside the output: an output on
  // disk that only some nodes see would fail only after all the work.
  if (const std::vector<int> blind = mpi.ranks_not_seeing(std::filesystem::path(out_dir).parent_path().string());
      !blind.empty()) {
    throw AllRanksError("--output-prefix " + out_dir + ": " + ranks_phrase(blind) + " of this job cannot see the files rank 0 writes beside it (a directory on node-local disk?); "
                        "every rank writes its part of the dataset there, so the output must be on a file system "
                        "all nodes share");
  }
  // An input another node cannot see fails that rank's reader alone: every rank learns of it.
  std::unique_ptr<DocumentReader> reader_ptr;
  std::string open_error;
  try {
    reader_ptr = std::make_unique<DocumentReader>(in.inputs, in.options(), mpi.rank(), mpi.size());
  } catch (const std::exception& e) {
    open_error = e.what();
  }
  if (const std::string e = first_error(mpi, open_error); !e.empty()) throw AllRanksError(e);
  if (const std::string e = differing_input(mpi, in.inputs); !e.empty()) throw AllRanksError(e);
  DocumentReader& reader = *reader_ptr;
  if (mpi.rank() == 0) remove_dead_staging(out_dir);  // what killed runs of this dataset left
  const std::string tag = mpi.broadcast(mpi.rank() == 0 ? staging_tag() : "");
  const std::string staging = staging_dir_path(out_dir, tag);
  const bool progress_bar = mpi.rank() == 0 && ::isatty(STDERR_FILENO);
  const double expected = static_cast<double>(reader.bytes_to_read());
  TokenizeStats st;
  std::string error;
  try {
    DatasetPartWriter writer(staging, mpi.rank(), info, shard_tokens);
    TokenizeOptions opt;
    opt.append_eod = append_eod;
    if (progress_bar)
      opt.progress = [&](const TokenizeStats& s) {
        const double mb = static_cast<double>(s.input.bytes) / 1e6;
        std::fprintf(stderr, "\r[llm-tokenize] %7.1f MB", mb);
        if (expected > 0 && expected < 1e17) std::fprintf(stderr, " %3.0f%%", 100.0 * s.input.bytes / expected);
        std::fprintf(stderr, " | %6.1f MB/s | %s tokens/s | %s docs   ", mb / std::max(s.seconds, 1e-9),
                     human_count(static_cast<double>(s.tokens) / std::max(s.seconds, 1e-9)).c_str(),
                     human_count(static_cast<double>(s.input.documents)).c_str());
      };
    st = tokenize_documents(reader, *tokenizer, writer, opt);
    writer.finish();
  } catch (const std::exception& e) {
    error = e.what();
  }
  if (progress_bar) std::fprintf(stderr, "\n");
  if (const std::string e = first_error(mpi, error); !e.empty()) {
    // every rank is past its writes (first_error is collective): rank 0 removes the staging area
    if (mpi.rank() == 0) discard_staging_dir(staging);
    throw AllRanksError(e + "; nothing was written");
  }
  // A dataset without a document (empty inputs, or every line skipped) is refused, not published:
  // it would only fail later, in llm-pretrain's split.
  const int64_t docs = mpi.sum(st.input.documents);
  const int64_t empty = mpi.sum(st.input.empty_skipped), bad = mpi.sum(st.input.bad_json_skipped);
  if (docs == 0) {
    if (mpi.rank() == 0) discard_staging_dir(staging);
    throw AllRanksError(detail::concat(
        in.inputs.empty() ? std::string("stdin") : in.inputs[0], in.inputs.size() > 1 ? " (and the other inputs)" : "",
        ": no documents to write (", empty, " empty documents and ", bad,
        " bad JSON lines skipped", bad > 0 ? "; do the --json-keys name a field of the records?" : "",
        "); nothing was written"));
  }
  // Rank 0 publishes; the others wait for its verdict (a failed publish must not leave them in a
  // barrier that rank 0 never reaches).
  std::string publish_error;
  if (mpi.rank() == 0) {
    try {
      publish_dataset(staging, out_dir, info, mpi.size(), overwrite);
    } catch (const std::exception& e) {
      discard_staging_dir(staging);
      publish_error = e.what();
    }
  }
  if (const std::string e = first_error(mpi, publish_error); !e.empty()) throw AllRanksError(e);
  // Input size: each rank's byte range (ranks past the first also scan text before their range
  // to find document starts, which st.input.bytes would count twice); stdin has no range.
  const bool ranged = reader.bytes_to_read() > 0 && reader.bytes_to_read() < (int64_t{1} << 60);
  const int64_t tokens = mpi.sum(st.tokens);
  const int64_t bytes = mpi.sum(ranged ? reader.bytes_to_read() : st.input.bytes);
  const int64_t fixed = mpi.sum(st.input.utf8_replaced);
  const double seconds = mpi.max(st.seconds);
  if (mpi.rank() == 0) {
    std::printf("[llm-tokenize] wrote %s: %lld documents, %lld tokens (%s) from %.1f MB in %.2f s "
                "(%.2f MB/s, %s tokens/s; %d rank(s) x %d threads)\n",
                out_dir.c_str(), static_cast<long long>(docs), static_cast<long long>(tokens),
                info.tokenizer.str().c_str(), bytes / 1e6, seconds, bytes / 1e6 / std::max(seconds, 1e-9),
                human_count(tokens / std::max(seconds, 1e-9)).c_str(), mpi.size(), omp_get_max_threads());
    std::printf("[llm-tokenize] skipped: %lld empty documents, %lld bad JSON lines; %lld documents had "
                "invalid UTF-8 replaced\n",
                static_cast<long long>(empty), static_cast<long long>(bad), static_cast<long long>(fixed));
  }
  return 0;
}

int run(int argc, char** argv, const MpiSession& mpi) {
  CLI::App app{"llm-tokenize: tokenizers and sharded HDF5 token datasets (Megatron preprocess_data.py flags)"};
  app.footer(
      "Examples:\n"
      "  llm-tokenize train-tokenizer --input kjv.txt --model-prefix kjv --vocab-size 8000\n"
      "  llm-tokenize --input kjv.txt --output-prefix data/kjv --tokenizer-type SentencePieceTokenizer \\\n"
      "      --tokenizer-model kjv.model --append-eod --workers 2\n"
      "  mpirun -np 4 llm-tokenize --input corpus.jsonl --json-keys text --output-prefix data/corpus \\\n"
      "      --tokenizer-type GPT2BPETokenizer --vocab-file encoder.json --merge-file vocab.bpe --append-eod\n"
      "  llm-tokenize encode --tokenizer-type GPT2BPETokenizer --vocab-file encoder.json \\\n"
      "      --merge-file vocab.bpe --text 'Hello world'\n"
      "  llm-tokenize info data/kjv");
  app.require_subcommand(0, 1);
  int workers = 0;
  app.add_option("--workers", workers, "threads per process (0 = OMP_NUM_THREADS or all cores)");

  // preprocess (the default command)
  InputFlags in;
  TokenizerFlags tf;
  std::string out_dir, from_megatron;
  bool append_eod = false, overwrite = false;
  int64_t shard_tokens = kDefaultShardTokens;
  // (not required here: the subcommands do not need them)
  in.add(app, false);
  tf.add(app, false);
  app.add_option("--output-prefix", out_dir, "dataset directory to create");
  app.add_flag("--append-eod", append_eod, "append the end-of-document token to every document");
  app.add_option("--shard-tokens", shard_tokens, "tokens per shard file")->capture_default_str();
  app.add_flag("--overwrite", overwrite, "replace an existing dataset at --output-prefix (only once the new one is complete)");
  app.add_option("--from-megatron", from_megatron, "import a Megatron .bin/.idx dataset PREFIX instead of reading text");
  // preprocess_data.py flags of copied scripts: accepted where they change nothing here, refused
  // with the reason where they would.
  std::string dataset_impl = "mmap", lang = "english";
  int64_t log_interval = 0, partitions = 1, vocab_extra_ids = 0;
  bool split_sentences = false, keep_newlines = false, keep_sequential = false;
  app.add_option("--dataset-impl", dataset_impl, "accepted at mmap (preprocess_data.py's; the output is HDF5 here)");
  app.add_option("--log-interval", log_interval, "accepted (preprocess_data.py's; progress shows on a terminal here)");
  app.add_option("--partitions", partitions, "accepted (preprocess_data.py's; ranks under mpirun split the input here)");
  app.add_flag("--keep-sequential-samples", keep_sequential, "accepted (preprocess_data.py's; documents keep their order here)");
  app.add_option("--lang", lang, "accepted (preprocess_data.py's, for --split-sentences)");
  app.add_flag("--split-sentences", split_sentences, "refused: documents are not split into sentences here");
  app.add_flag("--keep-newlines", keep_newlines, "refused (preprocess_data.py's, with --split-sentences)");
  app.add_option("--vocab-extra-ids", vocab_extra_ids, "accepted at 0 (T5's <extra_id_N> tokens are not added here)");

  // train-tokenizer
  auto* train = app.add_subcommand("train-tokenizer", "train a SentencePiece model (BPE or unigram)");
  InputFlags tin;
  tin.add(*train, true);
  SentencePieceTrainOptions spm;
  train->add_option("--model-prefix", spm.model_prefix, "writes PREFIX.model and PREFIX.vocab")->required();
  train->add_option("--vocab-size", spm.vocab_size, "vocabulary size")->capture_default_str();
  train->add_option("--model-type", spm.model_type, "bpe | unigram")->capture_default_str();
  train->add_option("--byte-fallback", spm.byte_fallback, "unknown characters become UTF-8 byte pieces")->capture_default_str();
  train->add_option("--user-defined-symbols", spm.user_defined_symbols, "pieces kept whole (e.g. <|user|>)");
  train->add_option("--character-coverage", spm.character_coverage, "share of characters covered by pieces")->capture_default_str();
  train->add_option("--input-sentence-size", spm.input_sentence_size, "sample this many lines (0 = all)")->capture_default_str();

  // encode / decode / info
  auto* encode = app.add_subcommand("encode", "print the ids of --text (or of stdin)");
  TokenizerFlags etf;
  etf.add(*encode, true);
  std::string text;
  encode->add_option("--text", text, "text to encode (default: read stdin)");
  auto* decode = app.add_subcommand("decode", "print the text of --ids");
  TokenizerFlags dtf;
  dtf.add(*decode, true);
  std::vector<int32_t> ids;
  decode->add_option("--ids", ids, "token ids")->required()->delimiter(',');
  auto* info = app.add_subcommand("info", "describe a dataset (and the hash of its content)");
  std::string info_dir;
  info->add_option("dataset", info_dir, "dataset directory")->required();

  for (CLI::App* sub : {train, encode, decode, info}) sub->fallthrough();  // --workers anywhere
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    if (mpi.size() == 1 || e.get_exit_code() == 0) return mpi.rank() == 0 ? app.exit(e) : 0;
    // A rank may be given other arguments (a wrapper): said by that rank, unless rank 0 failed
    // alike and its abort ends the job first.
    if (mpi.rank() != 0) throw ConfigError(e.what());
    const int code = app.exit(e);
    std::fflush(stdout);
    std::fflush(stderr);
    mpi.abort(code);
  }
  set_cpu_threads(workers, "--workers");

  if (*train) {
    if (mpi.size() > 1) throw ConfigError("train-tokenizer runs on one process (use --workers for threads)");
    train_sentencepiece_on_documents(tin.inputs, tin.options(), spm);
    SentencePieceTokenizer check(spm.model_prefix + ".model");
    std::printf("[llm-tokenize] trained %s.model: %s, %lld pieces; as SentencePieceTokenizer a vocabulary of %lld, "
                "EOD id %d (<EOD>); as GPTSentencePieceTokenizer EOD id %d (</s>)\n",
                spm.model_prefix.c_str(), spm.model_type.c_str(), static_cast<long long>(check.model_pieces()),
                static_cast<long long>(check.vocab_size()), check.eod_id(),
                SentencePieceTokenizer(spm.model_prefix + ".model", SentencePieceTokenizer::Variant::gpt).eod_id());
    return 0;
  }
  if (*encode) {
    auto tok = make_tokenizer(etf.o);
    if (encode->count("--text") == 0) text.assign(std::istreambuf_iterator<char>(std::cin), {});
    std::string line;
    for (int32_t id : tok->encode(text)) line += (line.empty() ? "" : " ") + std::to_string(id);
    std::printf("%s\n", line.c_str());
    return 0;
  }
  if (*decode) {
    auto tok = make_tokenizer(dtf.o);
    for (int32_t id : ids)
      if (id < 0 || id >= tok->vocab_size())
        throw ConfigError("--ids: " + std::to_string(id) + " is outside the vocabulary of " +
                          std::to_string(tok->vocab_size()));
    std::printf("%s\n", tok->decode(ids).c_str());
    return 0;
  }
  if (*info) {
    Dataset ds = Dataset::open(info_dir);
    std::printf("%s\n  tokenizer %s, vocab %lld, EOD %d, %s, %lld shards\n  content hash %s\n",
                ds.describe().c_str(), ds.info().tokenizer.str().c_str(),
                static_cast<long long>(ds.info().vocab_size), ds.info().eod_id, ds.info().dtype().c_str(),
                static_cast<long long>(ds.num_shards()), dataset_content_hash(ds).c_str());
    return 0;
  }
  if (!from_megatron.empty()) {
    if (tf.o.type.empty()) throw ConfigError("--from-megatron needs --tokenizer-type (and its files): the .idx does not record one");
    auto tok = make_tokenizer(tf.o);
    if (out_dir.empty()) throw ConfigError("--output-prefix is required");
    if (mpi.rank() == 0) {
      const DatasetInfo di{tok->identity(), tok->vocab_size(), tok->eod_id()};
      MegatronImportStats s = import_megatron(from_megatron, out_dir, di, shard_tokens, overwrite);
      if (s.documents_from_sequences)
        std::printf("[llm-tokenize] note: %s.idx has no document index (doc_idx = [0], as older Megatron's merge tool "
                    "wrote it): each sequence is taken as a document, as Megatron's GPT training reads it\n",
                    from_megatron.c_str());
      std::printf("[llm-tokenize] imported %s: %lld documents, %lld tokens -> %s\n", from_megatron.c_str(),
                  static_cast<long long>(s.documents), static_cast<long long>(s.tokens), out_dir.c_str());
    }
    return 0;
  }
  if (split_sentences || keep_newlines)
    throw ConfigError(std::string(split_sentences ? "--split-sentences" : "--keep-newlines") +
                      ": documents are not split into sentences here (NLTK's punkt splitter is Python's; Megatron's GPT "
                      "dataset would then shuffle the sentences as documents); drop the flag");
  if (dataset_impl != "mmap")
    throw ConfigError("--dataset-impl " + dataset_impl + ": the output is libllm's HDF5 dataset (mmap is accepted)");
  if (vocab_extra_ids != 0) throw ConfigError("--vocab-extra-ids: T5's <extra_id_N> tokens are not added here (0 is accepted)");
  if (in.inputs.empty()) throw ConfigError("--input is required (or a subcommand: train-tokenizer, encode, decode, info)");
  if (tf.o.type.empty()) throw ConfigError("--tokenizer-type is required");
  if (in.options().format == InputFormat::jsonl && in.json_keys.size() > 1) {
    std::string keys, runs;
    for (const std::string& k : in.json_keys) {
      keys += " " + k;
      runs += (runs.empty() ? "" : ", ") + std::string("--json-keys ") + k + " --output-prefix " + out_dir + "_" + k;
    }
    throw ConfigError("--json-keys" + keys + ": Megatron's preprocess_data.py writes one dataset per key, where one "
                      "dataset would interleave the keys' texts as documents; run once per key (" + runs + ")");
  }
  return preprocess(mpi, in, tf, out_dir, append_eod, shard_tokens, overwrite);
}

}  // namespace

int main(int argc, char** argv) {
  MpiSession mpi(&argc, &argv);
  // One message: an error the ranks agreed on is rank 0's to say. One that a rank met alone (not
  // through a collective) aborts the job, since the others may be waiting in a collective; rank
  // 0 says its own at once, another rank its own, "[rank N]", unless rank 0's abort (every rank
  // usually meets the same error) has ended it within the grace first.
  auto fail = [&](const std::exception& e, int code, bool all_ranks) {
    if (all_ranks) {
      if (mpi.rank() == 0) std::fprintf(stderr, "llm-tokenize: error: %s\n", e.what());
      return code;
    }
    mpi.yield_to_lead();
    const std::string rank = mpi.rank() != 0 ? "[rank " + std::to_string(mpi.rank()) + "] " : "";
    std::fprintf(stderr, "llm-tokenize: error: %s%s\n", rank.c_str(), e.what());
    std::fflush(stderr);
    if (mpi.size() > 1) mpi.abort(code);
    return code;
  };
  try {
    return run(argc, argv, mpi);
  } catch (const AllRanksError& e) {
    return fail(e, 2, true);
  } catch (const ConfigError& e) {
    return fail(e, 2, false);
  } catch (const std::exception& e) {
    return fail(e, 1, false);
  }
}
