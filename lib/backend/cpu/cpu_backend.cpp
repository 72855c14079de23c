// The CPU backend: host memory, no streams, ops from cpu_ops.h. Always registered first.
#include <algorithm>
#include <cstring>
#include <mutex>

#include "backend/cpu/cpu_ops.h"

namespace llm {

namespace {

class CpuBackend final : public Backend {
 public:
  std::string name() const override { return "cpu"; }
  Device device() const override { return kCPU; }
  Tensor empty(const Shape& shape, DType dtype) override { return Tensor::empty(shape, dtype); }
  void copy(const Tensor& dst, const Tensor& src) override { dst.copy_from(src); }
  void zero(const Tensor& t) override { t.zero(); }
  void synchronize() override {}

  void embedding_forward(const Tensor& o, const Tensor& tok, const Tensor& wte, const Tensor& wpe,
                         int64_t vocab_begin, int64_t vocab_total) override {
    cpu::embedding_forward(o, tok, wte, wpe, vocab_begin, vocab_total);
  }
  void embedding_backward(const Tensor& dwte, const Tensor& dwpe, const Tensor& dout, const Tensor& tok,
                          int64_t vocab_begin) override {
    cpu::embedding_backward(dwte, dwpe, dout, tok, vocab_begin);
  }
  void layernorm_forward(const Tensor& o, const Tensor& mean, const Tensor& rstd, const Tensor& inp,
                         const Tensor& w, const Tensor& b, float eps) override {
    cpu::layernorm_forward(o, mean, rstd, inp, w, b, eps);
  }
  void layernorm_backward(const Tensor& dinp, const Tensor& dw, const Tensor& db, const Tensor& dout,
                          const Tensor& inp, const Tensor& w, const Tensor& mean, const Tensor& rstd) override {
    cpu::layernorm_backward(dinp, dw, db, dout, inp, w, mean, rstd);
  }
  void linear_forward(const Tensor& o, const Tensor& inp, const Tensor& w, const Tensor& b) override {
    cpu::linear_forward(o, inp, w, b);
  }
  void linear_backward(const Tensor& dinp, const Tensor& dw, const Tensor& db, const Tensor& dout,
                       const Tensor& inp, const Tensor& w) override {
    cpu::linear_backward(dinp, dw, db, dout, inp, w);
  }
  void gelu_forward(const Tensor& o, const Tensor& inp) override { cpu::gelu_forward(o, inp); }
  void gelu_backward(const Tensor& dinp, const Tensor& inp, const Tensor& dout) override {
    cpu::gelu_backward(dinp, inp, dout);
  }
  void residual_forward(const Tensor& o, const Tensor& a, const Tensor& b) override { cpu::residual_forward(o, a, b); }
  void residual_backward(const Tensor& da, const Tensor& db, const Tensor& dout) override {
    cpu::residual_backward(da, db, dout);
  }
  void attention_forward(const Tensor& o, const Tensor& lse, const Tensor& qkv, int nh) override {
    cpu::attention_forward(o, lse, qkv, nh);
  }
  void attention_backward(const Tensor& dqkv, const Tensor& dout, const Tensor& qkv, const Tensor& o,
                          const Tensor& lse, int nh) override {
    cpu::attention_backward(dqkv, dout, qkv, o, lse, nh);
  }
  void attention_kv_forward(const Tensor& o, const Tensor& qkv, const Tensor& kc, const Tensor& vc, int64_t past,
                            int nh) override {
    cpu::attention_kv_forward(o, qkv, kc, vc, past, nh);
  }
  void cross_entropy_forward(const Tensor& losses, const Tensor& lse, const Tensor& logits,
                             const Tensor& targets, int64_t V, int64_t vocab_begin) override {
    cpu::cross_entropy_forward(losses, lse, logits, targets, V, vocab_begin);
  }
  void cross_entropy_backward(const Tensor& dlogits, const Tensor& logits, const Tensor& lse,
                              const Tensor& targets, float dloss, int64_t V, int64_t vocab_begin) override {
    cpu::cross_entropy_backward(dlogits, logits, lse, targets, dloss, V, vocab_begin);
  }
  void adamw_update(const Tensor& p, const Tensor& g, const Tensor& m, const Tensor& v, const AdamWParams& a) override {
    cpu::adamw_update(p, g, m, v, a);
  }
  double sum_squares(const Tensor& x) override { return cpu::sum_squares(x); }
  void scale(const Tensor& x, float s) override { cpu::scale(x, s); }
};

std::vector<Backend*>& registry() {
  static std::vector<Backend*> r;
  return r;
}

}  // namespace

Backend& cpu_backend() {
  static CpuBackend b;
  return b;
}

void register_backend(Backend* b) { registry().push_back(b); }

#ifdef LLM_HAVE_CUDA
namespace cuda {
void register_backend_if_present();  // backend/cuda/cuda_backend.cpp
std::string device_status();
}
#endif

std::vector<Backend*> available_backends() {
#ifdef LLM_HAVE_CUDA
  // Explicit, on first use: no static-initialisation order to rely on, nothing for the linker to
  // drop, and processes that never ask for backends never initialise CUDA.
  static std::once_flag cuda_once;
  std::call_once(cuda_once, [] { cuda::register_backend_if_present(); });
#endif
  std::vector<Backend*> all{&cpu_backend()};
  for (Backend* b : registry())
    if (std::find(all.begin(), all.end(), b) == all.end()) all.push_back(b);
  return all;
}

AttentionKvShape attention_kv_shape(const Tensor& qkv, const Tensor& k_cache, int64_t past, int n_head) {
  LLM_CHECK(qkv.dim() == 3 && qkv.size(2) % 3 == 0, "attention_kv_forward: qkv must be [B,Tn,3C], got ",
            shape_str(qkv.shape()));
  AttentionKvShape k{qkv.size(0), qkv.size(1), qkv.size(2) / 3, 0};
  LLM_CHECK(n_head > 0 && k.C % n_head == 0, "attention_kv_forward: C=", k.C, " not divisible by n_head=", n_head);
  LLM_CHECK(k_cache.dim() == 3 && k_cache.size(0) == k.B && k_cache.size(2) == k.C,
            "attention_kv_forward: cache must be [B,maxT,C], got ", shape_str(k_cache.shape()));
  k.maxT = k_cache.size(1);
  LLM_CHECK(past >= 0 && past + k.Tn <= k.maxT, "attention_kv_forward: positions [", past, ", ", past + k.Tn,
            ") exceed the cache length ", k.maxT);
  return k;
}

Backend& backend_by_name(const std::string& name, const std::string& flag) {
  for (Backend* b : available_backends())
    if (b->name() == name) return *b;
  if (name == "cuda") {
#ifdef LLM_HAVE_CUDA
    throw ConfigError(flag + " cuda: " + cuda::device_status());
#else
    throw ConfigError(flag + " cuda: this build has no CUDA backend (configure with the CUDA toolkit present)");
#endif
  }
  std::string known;
  for (Backend* b : available_backends()) known += (known.empty() ? "" : ", ") + b->name();
  throw ConfigError(flag + " '" + name + "': unknown backend (cpu or cuda; usable here: " + known + ")");
}

namespace cpu {
void check_f32(const Tensor& t, const Shape& shape, const char* what) {
  expect_shape(t, shape, what, DType::f32);
  LLM_CHECK(t.device().is_cpu() && t.is_contiguous(), what, ": needs a contiguous host tensor");
}
}  // namespace cpu

}  // namespace llm
