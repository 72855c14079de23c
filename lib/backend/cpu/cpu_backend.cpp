// The CPU backend: host memory, no streams, ops from cpu_ops.h. Always registered first.
#include <algorithm>
#include <cstring>
#include <mutex>
#include <vector>

#include "backend/cpu/cpu_ops.h"

namespace llm {

namespace {

// Mixed precision on the host: the bf16/f16 operands of one op call are widened to f32 copies,
// the f32 op runs on those, and the ones it writes are rounded back once: what the device
// kernels do (load the low type, compute in fp32, store the low type). All operands that may be
// low must have the op's type `t`; an f32 op passes every tensor through untouched. Operands
// that alias (in-place forms) share one copy.
class Mixed {
 public:
  Mixed(const char* op, DType t) : op_(op), t_(t) {
    LLM_CHECK(is_float(t), op, ": element type must be f32, bf16 or f16, got ",
              dtype_name(t));
  }
  // An operand of the op's type that is only read.
  const Tensor& in(const Tensor& x, const char* what) { return widen(x, what, false, false); }
  // An operand of the op's type that is written (= or +=); `or_f32`: f32 is allowed too.
  const Tensor& out(const Tensor& x, const char* what, bool or_f32 = false) { return widen(x, what, true, or_f32); }
  // An operand of the op's type that the op reads at its own width (checked, not widened).
  const Tensor& as_is(const Tensor& x, const char* what) {
    LLM_CHECK(!x.defined() || x.dtype() == t_, op_, " ", what, ": ", dtype_name(x.dtype()), ", but the op's type is ",
              dtype_name(t_), " (they must match)");
    return x;
  }
  // Rounds the written operands back into their low-precision tensors.
  void done() {
    for (const Copy& c : copies_)
      if (c.written) cpu::convert(c.low, c.wide);
  }

 private:
  struct Copy {
    Tensor low, wide;
    bool written = false;
  };
  const Tensor& widen(const Tensor& x, const char* what, bool written, bool or_f32) {
    if (!x.defined() || x.dtype() == DType::f32) {
      LLM_CHECK(!x.defined() || t_ == DType::f32 || or_f32, op_, " ", what, ": f32, but the op's type is ",
                dtype_name(t_), " (they must match)");
      return x;
    }
    LLM_CHECK(x.dtype() == t_, op_, " ", what, ": ", dtype_name(x.dtype()), ", but the op's type is ", dtype_name(t_),
              " (they must match)");
    for (Copy& c : copies_)
      if (c.low.raw() == x.raw() && c.low.shape() == x.shape()) {
        c.written = c.written || written;
        return c.wide;
      }
    // Reserved once, so the references handed out stay valid (ops have at most 5 such operands);
    // f32 calls never get here and allocate nothing.
    if (copies_.empty()) copies_.reserve(kMaxOperands);
    LLM_CHECK(copies_.size() < kMaxOperands, op_, ": more than ", kMaxOperands, " low-precision operands");
    Copy& c = copies_.emplace_back();
    c.low = x;
    c.wide = Tensor::empty(x.shape());
    c.written = written;
    cpu::convert(c.wide, x);
    return c.wide;
  }
  static constexpr size_t kMaxOperands = 8;
  const char* op_;
  DType t_;
  std::vector<Copy> copies_;
};

class CpuBackend final : public Backend {
  static constexpr int64_t kFewRows = 16;  // linear_forward's rows up to which a 16-bit weight is not widened whole

 public:
  std::string name() const override { return "cpu"; }
  Device device() const override { return kCPU; }
  Tensor empty(const Shape& shape, DType dtype) override { return Tensor::empty(shape, dtype); }
  void copy(const Tensor& dst, const Tensor& src) override { dst.copy_from(src); }
  void zero(const Tensor& t) override { t.zero(); }
  void copy_rows(const Tensor& dst, int64_t dst_pitch, const Tensor& src, int64_t src_pitch, int64_t rows,
                 int64_t width) override {
    const size_t es = copy_rows_check(dst, dst_pitch, src, src_pitch, rows, width);
    char* d = static_cast<char*>(dst.raw());
    const char* s = static_cast<const char*>(src.raw());
    for (int64_t r = 0; r < rows; ++r)
      std::memcpy(d + static_cast<size_t>(r * dst_pitch) * es, s + static_cast<size_t>(r * src_pitch) * es,
                  static_cast<size_t>(width) * es);
  }
  void synchronize() override {}

  void embedding_forward(const Tensor& o, const Tensor& tok, const Tensor& wte, const Tensor& wpe,
                         int64_t vocab_begin, int64_t vocab_total) override {
    Mixed m("embedding_forward", wte.dtype());
    // The table is read at its own width, a looked-up row at a time (never widened whole).
    cpu::embedding_forward(m.out(o, "out"), tok, m.as_is(wte, "wte"), m.in(wpe, "wpe"), vocab_begin, vocab_total);
    m.done();
  }
  void embedding_backward(const Tensor& dwte, const Tensor& dwpe, const Tensor& dout, const Tensor& tok,
                          int64_t vocab_begin) override {
    Mixed m("embedding_backward", dout.dtype());
    cpu::embedding_backward(dwte, dwpe, m.in(dout, "dout"), tok, vocab_begin);
  }
  void layernorm_forward(const Tensor& o, const Tensor& mean, const Tensor& rstd, const Tensor& inp,
                         const Tensor& w, const Tensor& b, float eps) override {
    Mixed m("layernorm_forward", inp.dtype());
    cpu::layernorm_forward(m.out(o, "out"), mean, rstd, m.in(inp, "inp"), w, b, eps);
    m.done();
  }
  void layernorm_backward(const Tensor& dinp, const Tensor& dw, const Tensor& db, const Tensor& dout,
                          const Tensor& inp, const Tensor& w, const Tensor& mean, const Tensor& rstd) override {
    Mixed m("layernorm_backward", inp.dtype());
    cpu::layernorm_backward(m.out(dinp, "dinp"), dw, db, m.in(dout, "dout"), m.in(inp, "inp"), w, mean, rstd);
    m.done();
  }
  void linear_forward(const Tensor& o, const Tensor& inp, const Tensor& w, const Tensor& b) override {
    Mixed m("linear_forward", inp.dtype());
    const Tensor& wo = m.out(o, "out", true);
    // the bias has the output's type
    Mixed mb("linear_forward bias", o.dtype());
    // Few rows (a decode step) against a 16-bit weight: read the weight at its width, a block at
    // a time, instead of widening all of it for one matrix-vector product.
    const int64_t rows = inp.dim() >= 1 && inp.size(-1) > 0 ? inp.numel() / inp.size(-1) : 0;
    if (w.dtype() != DType::f32 && rows > 0 && rows <= kFewRows)
      cpu::linear_forward_low_weight(wo, m.in(inp, "inp"), m.as_is(w, "weight"), mb.in(b, "bias"));
    else
      cpu::linear_forward(wo, m.in(inp, "inp"), m.in(w, "weight"), mb.in(b, "bias"));
    m.done();
  }
  void linear_backward(const Tensor& dinp, const Tensor& dw, const Tensor& db, const Tensor& dout,
                       const Tensor& inp, const Tensor& w) override {
    Mixed m("linear_backward", inp.dtype());
    cpu::linear_backward(m.out(dinp, "dinp"), dw, db, m.in(dout, "dout"), m.in(inp, "inp"), m.in(w, "weight"));
    m.done();
  }
  void gelu_forward(const Tensor& o, const Tensor& inp) override {
    Mixed m("gelu_forward", inp.dtype());
    cpu::gelu_forward(m.out(o, "out"), m.in(inp, "inp"));
    m.done();
  }
  void gelu_backward(const Tensor& dinp, const Tensor& inp, const Tensor& dout) override {
    Mixed m("gelu_backward", inp.dtype());
    cpu::gelu_backward(m.out(dinp, "dinp"), m.in(inp, "inp"), m.in(dout, "dout"));
    m.done();
  }
  void residual_forward(const Tensor& o, const Tensor& a, const Tensor& b) override {
    Mixed m("residual_forward", a.dtype());
    cpu::residual_forward(m.out(o, "out"), m.in(a, "a"), m.in(b, "b"));
    m.done();
  }
  void residual_backward(const Tensor& da, const Tensor& db, const Tensor& dout) override {
    check_disjoint(da, db, "residual_backward da/db");
    Mixed m("residual_backward", dout.dtype());
    cpu::residual_backward(m.out(da, "da"), m.out(db, "db"), m.in(dout, "dout"));
    m.done();
  }
  void attention_forward(const Tensor& o, const Tensor& lse, const Tensor& qkv, int nh) override {
    Mixed m("attention_forward", qkv.dtype());
    cpu::attention_forward(m.out(o, "out"), lse, m.in(qkv, "qkv"), nh);
    m.done();
  }
  void attention_backward(const Tensor& dqkv, const Tensor& dout, const Tensor& qkv, const Tensor& o,
                          const Tensor& lse, int nh) override {
    Mixed m("attention_backward", qkv.dtype());
    cpu::attention_backward(m.out(dqkv, "dqkv"), m.in(dout, "dout"), m.in(qkv, "qkv"), m.in(o, "out"), lse, nh);
    m.done();
  }
  void attention_kv_forward(const Tensor& o, const Tensor& qkv, const Tensor& kc, const Tensor& vc, int64_t past,
                            int nh) override {
    if (qkv.dtype() != DType::f32 && qkv.dim() == 3 && kc.dim() == 3 && vc.shape() == kc.shape() &&
        kc.is_contiguous() && vc.is_contiguous() && qkv.size(0) == kc.size(0) && o.dim() == 3 && past >= 0 &&
        past + qkv.size(1) <= kc.size(1)) {
      // 16 bits: widen (and round back) only the positions this call attends to, [0, past + Tn)
      // of each sequence, not the whole cache: the same values, O(context) instead of O(max_len).
      const int64_t B = qkv.size(0), L = past + qkv.size(1), maxT = kc.size(1), C = kc.size(2);
      for (int64_t b = 0; b < B; ++b) {
        Mixed m("attention_kv_forward", qkv.dtype());
        const Tensor kb = kc.flat(b * maxT * C, L * C).view({1, L, C}), vb = vc.flat(b * maxT * C, L * C).view({1, L, C});
        cpu::attention_kv_forward(m.out(o.slice(0, b, 1), "out"), m.in(qkv.slice(0, b, 1), "qkv"), m.out(kb, "k_cache"),
                                  m.out(vb, "v_cache"), past, nh);
        m.done();
      }
      return;
    }
    Mixed m("attention_kv_forward", qkv.dtype());
    cpu::attention_kv_forward(m.out(o, "out"), m.in(qkv, "qkv"), m.out(kc, "k_cache"), m.out(vc, "v_cache"), past, nh);
    m.done();
  }
  void cross_entropy_forward(const Tensor& losses, const Tensor& lse, const Tensor& logits,
                             const Tensor& targets, int64_t V, int64_t vocab_begin) override {
    Mixed m("cross_entropy_forward", logits.dtype());
    cpu::cross_entropy_forward(losses, lse, m.in(logits, "logits"), targets, V, vocab_begin);
  }
  void cross_entropy_combine(const Tensor& losses, const Tensor& lse, const Tensor& shard_lse,
                             const Tensor& shard_losses, const Tensor& targets, int64_t shard_vocab) override {
    cpu::cross_entropy_combine(losses, lse, shard_lse, shard_losses, targets, shard_vocab);
  }
  void cross_entropy_backward(const Tensor& dlogits, const Tensor& logits, const Tensor& lse,
                              const Tensor& targets, float dloss, int64_t V, int64_t vocab_begin) override {
    Mixed m("cross_entropy_backward", logits.dtype());
    cpu::cross_entropy_backward(m.out(dlogits, "dlogits"), m.in(logits, "logits"), lse, targets, dloss, V, vocab_begin);
    m.done();
  }
  void adamw_update(const Tensor& p, const Tensor& g, const Tensor& m, const Tensor& v, const AdamWParams& a) override {
    cpu::adamw_update(p, g, m, v, a);
  }
  double sum_squares(const Tensor& x) override {
    Mixed m("sum_squares", x.dtype());
    return cpu::sum_squares(m.in(x, "x"));
  }
  void scale(const Tensor& x, float s) override {
    Mixed m("scale", x.dtype());
    cpu::scale(m.out(x, "x"), s);
    m.done();
  }
  void convert(const Tensor& dst, const Tensor& src) override { cpu::convert(dst, src); }
  int64_t count_nonfinite(const Tensor& x) override { return cpu::count_nonfinite(x); }
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

int64_t rows_of(const Tensor& t, const char* what) {
  LLM_CHECK(t.defined() && t.dim() >= 1 && t.size(-1) > 0, what, ": the last dimension must not be empty, got ",
            t.defined() ? shape_str(t.shape()) : std::string("no tensor"));
  return t.numel() / t.size(-1);
}

LinearShape linear_shape(const Tensor& inp, const Tensor& weight, const char* op) {
  LinearShape d;
  d.C = inp.defined() && inp.dim() >= 1 ? inp.size(-1) : 0;
  d.N = rows_of(inp, (std::string(op) + " inp").c_str());
  d.OC = weight.defined() && weight.dim() >= 1 ? weight.size(0) : 0;
  LLM_CHECK(d.OC > 0, op, " weight: no output features, got ",
            weight.defined() ? shape_str(weight.shape()) : std::string("no tensor"));
  return d;
}

void check_disjoint(const Tensor& a, const Tensor& b, const char* what) {
  if (!a.defined() || !b.defined() || a.numel() == 0 || b.numel() == 0) return;
  const char* pa = static_cast<const char*>(a.raw());
  const char* pb = static_cast<const char*>(b.raw());
  LLM_CHECK(pa + a.nbytes() <= pb || pb + b.nbytes() <= pa, what, ": the two outputs overlap in memory (",
            shape_str(a.shape()), " and ", shape_str(b.shape()), "); each must be a buffer of its own");
}

size_t copy_rows_check(const Tensor& dst, int64_t dst_pitch, const Tensor& src, int64_t src_pitch, int64_t rows,
                       int64_t width) {
  LLM_CHECK(dst.defined() && src.defined() && dst.dtype() == src.dtype() && dst.is_contiguous() && src.is_contiguous(),
            "copy_rows: contiguous tensors of one type, got ", dtype_name(dst.dtype()), " ", shape_str(dst.shape()),
            " and ", dtype_name(src.dtype()), " ", shape_str(src.shape()));
  LLM_CHECK(rows >= 0 && width >= 0 && dst_pitch >= width && src_pitch >= width, "copy_rows: ", rows, " rows of ",
            width, " with pitches ", dst_pitch, " and ", src_pitch, " (a pitch below the width)");
  LLM_CHECK(rows == 0 || ((rows - 1) * dst_pitch + width <= dst.numel() && (rows - 1) * src_pitch + width <= src.numel()),
            "copy_rows: ", rows, " rows of ", width, " (pitches ", dst_pitch, ", ", src_pitch, ") overrun ",
            dst.numel(), " / ", src.numel(), " elements");
  return dtype_size(dst.dtype());
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
