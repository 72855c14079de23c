// Benchmark: generation and checkpoint I/O for GPT125M (fp32, CPU), against ceilings measured
// in the same run: decode tokens/s vs the memory-bandwidth bound (weight bytes per token /
// STREAM-style copy bandwidth), prefill tokens/s vs the sgemm ceiling, and checkpoint save/load
// GB/s vs this disk's sequential write(+fsync)/read speed for the same number of bytes.
//
// The model is llm-generate's (an inference model: weights only, one block's activations);
// --training-model runs the same weights in a training model (gradients, every block's activations
// and backward scratch) for comparison; --bf16 the inference model in bf16 (llm-generate --bf16:
// the bound counts 2 bytes a weight; no checkpoint part).
//
//   bench-generate-ckpt [--dir /tmp/llm-bench] [--decode 64] [--prefill 512] [--no-ckpt] [--training-model | --bf16]
#include <cblas.h>
#include <fcntl.h>
#include <omp.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "core/philox.h"
#include "core/timer.h"
#include "io/checkpoint.h"
#include "model/gpt.h"

using namespace llm;
namespace fs = std::filesystem;

namespace {

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.size() % 2 ? v[v.size() / 2] : 0.5 * (v[v.size() / 2 - 1] + v[v.size() / 2]);
}

// STREAM copy: bytes read + bytes written per second, all threads, 3 x 256 MiB.
double copy_gbs() {
  const size_t n = size_t{64} << 20;
  std::vector<float> a(n, 1.0f), b(n, 0.0f);
  std::vector<double> t;
  for (int r = 0; r < 6; ++r) {
    Timer tm;
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; ++i) b[i] = a[i];
    if (r) t.push_back(tm.seconds());
  }
  return 2.0 * n * sizeof(float) / median(t) / 1e9;
}

double sgemm_gflops(int M, int N, int K) {
  std::vector<float> A(size_t(M) * K, 0.5f), B(size_t(N) * K, 0.25f), C(size_t(M) * N);
  std::vector<double> t;
  for (int r = 0; r < 6; ++r) {
    Timer tm;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, N, K, 1.0f, A.data(), K, B.data(), K, 0.0f, C.data(), N);
    if (r) t.push_back(tm.seconds());
  }
  return 2.0 * M * N * K / median(t) / 1e9;
}

// Sequential write of `bytes` in 8 MiB blocks then fsync; then read back (page cache warm, as a
// checkpoint load right after a save would be).
std::pair<double, double> disk_gbs(const std::string& path, size_t bytes) {
  std::vector<char> block(size_t{8} << 20, 'x');
  Timer w;
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  for (size_t done = 0; done < bytes; done += block.size())
    if (::write(fd, block.data(), std::min(block.size(), bytes - done)) < 0) std::perror("write");
  ::fsync(fd);
  ::close(fd);
  const double write_s = w.seconds();
  Timer r;
  fd = ::open(path.c_str(), O_RDONLY);
  while (::read(fd, block.data(), block.size()) > 0) {
  }
  ::close(fd);
  const double read_s = r.seconds();
  fs::remove(path);
  return {bytes / write_s / 1e9, bytes / read_s / 1e9};
}

}  // namespace

int main(int argc, char** argv) {
  std::string dir = "/tmp/llm-bench";
  int decode_tokens = 64, prefill_tokens = 512;
  bool do_ckpt = true, training_model = false, bf16 = false;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--dir") dir = argv[++i];
    else if (a == "--decode") decode_tokens = std::atoi(argv[++i]);
    else if (a == "--prefill") prefill_tokens = std::atoi(argv[++i]);
    else if (a == "--no-ckpt") do_ckpt = false;
    else if (a == "--training-model") training_model = true;
    else if (a == "--bf16") bf16 = true;
    else {
      std::fprintf(stderr, "usage: %s [--dir D] [--decode N] [--prefill N] [--no-ckpt] [--training-model | --bf16]\n",
                   argv[0]);
      return 2;
    }
  }
  const char* coretype = std::getenv("OPENBLAS_CORETYPE");
  std::printf("threads %d, OPENBLAS_CORETYPE=%s\n", omp_get_max_threads(), coretype ? coretype : "(unset)");
  GPTConfig c;  // GPT125M (ALCF table): 12 layers, hidden 768, 16 heads; GPT-2 vocabulary
  c.name = "GPT125M";
  c.num_layers = 12;
  c.hidden_size = 768;
  c.num_heads = 16;
  c.vocab_size = 50257;
  c.max_position_embeddings = 1024;
  if (training_model && bf16) {
    std::fprintf(stderr, "--training-model and --bf16 exclude each other\n");
    return 2;
  }
  if (bf16) do_ckpt = false;
  const DType dtype = bf16 ? DType::bf16 : DType::f32;
  GPT model = training_model ? GPT(c, cpu_backend(), 1, 1024) : GPT(c, cpu_backend(), InferenceOptions{dtype});
  if (!training_model) {  // GPT-2's initial values, as the training model has them (rounded in bf16)
    ParameterSet& ps = model.parameters();
    for (const ParamSpec& s : ps.specs()) {
      Tensor v = Tensor::empty(s.shape);
      init_parameter(v.data<float>(), s, 1);
      if (ps.has_master(s.name)) ps.param(s.name).copy_from(v);
      if (bf16) cpu_backend().convert(ps.compute_param(s.name), v);
    }
  }
  const double wbytes = static_cast<double>(dtype_size(dtype));
  const double param_bytes = static_cast<double>(model.parameters().numel()) * 4;
  // Bytes a decode step must read: every weight matrix and bias once, the full tied embedding
  // for the logits (the wpe row read is negligible and not counted).
  const double wpe_bytes = 1024.0 * 768 * wbytes;
  const double bytes_per_token = static_cast<double>(model.parameters().numel()) * wbytes - wpe_bytes;
  std::printf("model GPT125M (%s model, %s): %.1fM parameters (%.0f MB fp32), %.0f MB read per decoded token\n",
              training_model ? "training" : "inference", bf16 ? "bf16" : "fp32", model.parameters().numel() / 1e6,
              param_bytes / 1e6, bytes_per_token / 1e6);

  // decode
  std::vector<int32_t> prompt(16);
  for (size_t i = 0; i < prompt.size(); ++i) prompt[i] = static_cast<int32_t>(philox_below(1, 1, i, 50257));
  KVCache cache = model.make_kv_cache(1, 1024);
  Tensor in = Tensor::empty({1, 16}, DType::i32);
  std::copy(prompt.begin(), prompt.end(), in.data<int32_t>());
  model.forward_cached(in, cache);
  Tensor one = Tensor::empty({1, 1}, DType::i32);
  std::vector<double> step;
  for (int i = 0; i < decode_tokens; ++i) {
    one.data<int32_t>()[0] = static_cast<int32_t>(philox_below(2, 1, i, 50257));
    Timer t;
    model.forward_cached(one, cache);
    step.push_back(t.seconds());
  }
  const double copy = copy_gbs();
  const double decode_tps = 1.0 / median(step);
  const double bound_tps = copy * 1e9 / bytes_per_token;
  std::printf("decode: median %.2f ms/token -> %.2f tokens/s; copy bandwidth %.1f GB/s -> bound %.2f tokens/s; "
              "ratio %.1f%%\n",
              median(step) * 1e3, decode_tps, copy, bound_tps, 100.0 * decode_tps / bound_tps);

  // prefill
  std::vector<double> pre;
  Tensor long_prompt = Tensor::empty({1, prefill_tokens}, DType::i32);
  for (int i = 0; i < prefill_tokens; ++i) long_prompt.data<int32_t>()[i] = static_cast<int32_t>(philox_below(3, 1, i, 50257));
  for (int r = 0; r < 4; ++r) {
    KVCache pc = model.make_kv_cache(1, prefill_tokens);
    Timer t;
    model.forward_cached(long_prompt, pc);
    if (r) pre.push_back(t.seconds());
  }
  const double L = 12, h = 768, T = prefill_tokens;
  // forward FLOPs: block matmuls for every token, dense-causal attention (T^2/2 per layer
  // counted as the kernel does it: 2 * 2 * T^2/2 * h), logits for the last token only
  const double flops = 2.0 * T * L * 12 * h * h + 2.0 * T * T * h * L + 2.0 * h * 50304;
  const double gemm = std::max(sgemm_gflops(prefill_tokens, 3072, 768), sgemm_gflops(prefill_tokens, 768, 3072));
  const double pre_s = median(pre);
  std::printf("prefill %d tokens: median %.1f ms -> %.0f tokens/s, %.1f GFLOP/s; sgemm ceiling %.1f GFLOP/s "
              "(%dx3072x768 / %dx768x3072); ratio %.1f%%\n",
              prefill_tokens, pre_s * 1e3, T / pre_s, flops / pre_s / 1e9, gemm, prefill_tokens, prefill_tokens,
              100.0 * flops / pre_s / 1e9 / gemm);

  if (!do_ckpt) return 0;
  // checkpoint: parameters + two AdamW moments (as a training checkpoint holds)
  fs::create_directories(dir);
  const std::string root = (fs::path(dir) / "ckpt").string();
  fs::remove_all(root);
  const ParameterSet& ps = model.parameters();
  Tensor moment = Tensor::zeros({ps.numel()});
  for (int64_t i = 0; i < moment.numel(); i += 7) moment.data<float>()[i] = 1e-3f * static_cast<float>(i % 13);
  const double ckpt_bytes = 3.0 * param_bytes;
  std::vector<double> save_t, load_t;
  for (int r = 0; r < 3; ++r) {
    Timer t;
    CheckpointWriter w(root, 100 + r);
    for (const ParamSpec& s : ps.specs()) {
      const int64_t n = numel(s.shape);
      w.add("model", s.name, s.shape, Box::whole(s.shape), ps.flat_params().flat(s.offset, n).view(s.shape));
      w.add("optimizer/exp_avg", s.name, s.shape, Box::whole(s.shape), moment.flat(s.offset, n).view(s.shape));
      w.add("optimizer/exp_avg_sq", s.name, s.shape, Box::whole(s.shape), moment.flat(s.offset, n).view(s.shape));
    }
    w.commit("", 1);
    save_t.push_back(t.seconds());
    Timer l;
    CheckpointReader rd = CheckpointReader::open(root);
    for (const ParamSpec& s : ps.specs())
      for (const char* cat : {"model", "optimizer/exp_avg", "optimizer/exp_avg_sq"}) rd.read_whole(cat, s.name);
    load_t.push_back(l.seconds());
  }
  auto [disk_w, disk_r] = disk_gbs((fs::path(dir) / "disk-probe.bin").string(), static_cast<size_t>(ckpt_bytes));
  const double save_gbs = ckpt_bytes / median(save_t) / 1e9, load_gbs = ckpt_bytes / median(load_t) / 1e9;
  std::printf("checkpoint (%.0f MB: params + 2 moments): save %.2f GB/s (median %.2f s, incl. checksums, fsync, "
              "rename) vs disk write+fsync %.2f GB/s -> %.0f%%; load %.2f GB/s (verified) vs sequential read %.2f GB/s "
              "-> %.0f%%\n",
              ckpt_bytes / 1e6, save_gbs, median(save_t), disk_w, 100.0 * save_gbs / disk_w, load_gbs, disk_r,
              100.0 * load_gbs / disk_r);
  fs::remove_all(root);
  return 0;
}
