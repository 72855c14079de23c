// llm-tokenize: train tokenizers and turn raw text into sharded HDF5 token datasets
// (Megatron preprocess_data.py flags), in parallel with threads and MPI ranks.
#include <omp.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <memory>

#include "comm/mpi_session.h"
#include "core/error.h"
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
                   "SentencePieceTokenizer | GPT2BPETokenizer | NullTokenizer | ByteTokenizer")
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
  void add(CLI::App& app, bool required) {
    app.add_option("--input", inputs, "input files (text or JSON lines); - for stdin")->required(required);
    app.add_option("--input-format", format, "auto (by extension: .jsonl/.json = jsonl) | text | jsonl")
        ->capture_default_str();
    app.add_option("--document-boundary", boundary, "text inputs: blank-line | line | file")->capture_default_str();
    app.add_option("--json-keys", json_keys, "JSON-lines keys whose text are documents")->capture_default_str();
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
    return o;
  }
};

// An error every rank has reached together (through a collective): each reports it and exits.
// Any other error under MPI aborts the job, so no rank is left waiting in a collective.
struct AllRanksError : ConfigError {
  using ConfigError::ConfigError;
};

std::string human_count(double v) {
  char buf[32];
  if (v >= 1e9) std::snprintf(buf, sizeof buf, "%.2fG", v / 1e9);
  else if (v >= 1e6) std::snprintf(buf, sizeof buf, "%.2fM", v / 1e6);
  else if (v >= 1e3) std::snprintf(buf, sizeof buf, "%.1fk", v / 1e3);
  else std::snprintf(buf, sizeof buf, "%.0f", v);
  return buf;
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
  // An input another node cannot see fails that rank's reader alone: every rank learns of it.
  std::unique_ptr<DocumentReader> reader_ptr;
  std::string open_error;
  try {
    reader_ptr = std::make_unique<DocumentReader>(in.inputs, in.options(), mpi.rank(), mpi.size());
  } catch (const std::exception& e) {
    open_error = e.what();
  }
  if (!mpi.all_ok(open_error.empty()))
    throw AllRanksError(open_error.empty() ? "another rank could not open its input; nothing was written" : open_error);
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
  if (!mpi.all_ok(error.empty())) {
    // every rank is past its writes (all_ok is collective): rank 0 removes the staging area
    if (mpi.rank() == 0) discard_staging_dir(staging);
    throw AllRanksError(error.empty() ? "another rank failed; nothing was written" : error);
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
  if (!mpi.all_ok(publish_error.empty()))
    throw AllRanksError(publish_error.empty() ? "rank 0 could not publish the dataset; nothing was written"
                                              : publish_error);
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
    return mpi.rank() == 0 ? app.exit(e) : (e.get_exit_code() ? 2 : 0);
  }
  if (workers > 0) omp_set_num_threads(workers);

  if (*train) {
    if (mpi.size() > 1) throw ConfigError("train-tokenizer runs on one process (use --workers for threads)");
    train_sentencepiece_on_documents(tin.inputs, tin.options(), spm);
    SentencePieceTokenizer check(spm.model_prefix + ".model");
    std::printf("[llm-tokenize] trained %s.model: %s, %lld pieces, EOD id %d\n", spm.model_prefix.c_str(),
                spm.model_type.c_str(), static_cast<long long>(check.vocab_size()), check.eod_id());
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
      std::printf("[llm-tokenize] imported %s: %lld documents, %lld tokens -> %s\n", from_megatron.c_str(),
                  static_cast<long long>(s.documents), static_cast<long long>(s.tokens), out_dir.c_str());
    }
    return 0;
  }
  if (in.inputs.empty()) throw ConfigError("--input is required (or a subcommand: train-tokenizer, encode, decode, info)");
  if (tf.o.type.empty()) throw ConfigError("--tokenizer-type is required");
  return preprocess(mpi, in, tf, out_dir, append_eod, shard_tokens, overwrite);
}

}  // namespace

int main(int argc, char** argv) {
  MpiSession mpi(&argc, &argv);
  // One line per failing rank; an error of this rank alone (not reached through a collective)
  // aborts the job, since the other ranks may be waiting in a collective.
  auto fail = [&](const std::exception& e, int code, bool all_ranks) {
    const std::string rank = mpi.size() > 1 ? "[rank " + std::to_string(mpi.rank()) + "] " : "";
    std::fprintf(stderr, "llm-tokenize: error: %s%s\n", rank.c_str(), e.what());
    std::fflush(stderr);
    if (mpi.size() > 1 && !all_ranks) mpi.abort(code);
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
