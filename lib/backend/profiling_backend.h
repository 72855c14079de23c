// A Backend decorator that times every op (synchronising around each), for benchmarks and
// performance work: wrap the real backend, run, then read the per-op table.
#pragma once
#include <map>
#include <string>

#include "backend/backend.h"

namespace llm {

struct OpProfile {
  int64_t calls = 0;
  double seconds = 0;
};

class ProfilingBackend final : public Backend {
 public:
  explicit ProfilingBackend(Backend& inner) : inner_(inner) {}
  const std::map<std::string, OpProfile>& profile() const { return profile_; }
  void reset() { profile_.clear(); }
  // Off: every op goes straight to the inner backend, unsynchronised and untimed (a model built
  // on the decorator runs at full speed until one profiled step).
  void set_enabled(bool on) { enabled_ = on; }
  // "op  calls  ms  %" lines, most expensive first.
  std::string report() const;

  std::string name() const override { return inner_.name(); }
  Device device() const override { return inner_.device(); }
  Tensor empty(const Shape& s, DType d) override { return inner_.empty(s, d); }
  void copy(const Tensor& dst, const Tensor& src) override { inner_.copy(dst, src); }
  void zero(const Tensor& t) override { timed("zero", [&] { inner_.zero(t); }); }
  void copy_rows(const Tensor& d, int64_t dp, const Tensor& s, int64_t sp, int64_t rows, int64_t width) override {
    timed("copy_rows", [&] { inner_.copy_rows(d, dp, s, sp, rows, width); });
  }
  void synchronize() override { inner_.synchronize(); }
  bool device_memory(DeviceMemoryStats& out) const override { return inner_.device_memory(out); }
  void embedding_forward(const Tensor& o, const Tensor& t, const Tensor& a, const Tensor& b, int64_t vb,
                         int64_t vt) override {
    timed("embedding_forward", [&] { inner_.embedding_forward(o, t, a, b, vb, vt); });
  }
  void embedding_backward(const Tensor& a, const Tensor& b, const Tensor& d, const Tensor& t, int64_t vb) override {
    timed("embedding_backward", [&] { inner_.embedding_backward(a, b, d, t, vb); });
  }
  void layernorm_forward(const Tensor& o, const Tensor& m, const Tensor& r, const Tensor& i, const Tensor& w,
                         const Tensor& b, float eps) override {
    timed("layernorm_forward", [&] { inner_.layernorm_forward(o, m, r, i, w, b, eps); });
  }
  void layernorm_backward(const Tensor& di, const Tensor& dw, const Tensor& db, const Tensor& d, const Tensor& i,
                          const Tensor& w, const Tensor& m, const Tensor& r) override {
    timed("layernorm_backward", [&] { inner_.layernorm_backward(di, dw, db, d, i, w, m, r); });
  }
  void linear_forward(const Tensor& o, const Tensor& i, const Tensor& w, const Tensor& b) override {
    timed("linear_forward", [&] { inner_.linear_forward(o, i, w, b); });
  }
  void linear_backward(const Tensor& di, const Tensor& dw, const Tensor& db, const Tensor& d, const Tensor& i,
                       const Tensor& w) override {
    timed("linear_backward", [&] { inner_.linear_backward(di, dw, db, d, i, w); });
  }
  void linear_backward_gelu(const Tensor& di, const Tensor& dw, const Tensor& db, const Tensor& d, const Tensor& i,
                            const Tensor& w, const Tensor& pre) override {
    timed("linear_backward_gelu", [&] { inner_.linear_backward_gelu(di, dw, db, d, i, w, pre); });
  }
  void linear_gelu_forward(const Tensor& o, const Tensor& pre, const Tensor& i, const Tensor& w,
                           const Tensor& b) override {
    timed("linear_gelu_forward", [&] { inner_.linear_gelu_forward(o, pre, i, w, b); });
  }
  void gelu_forward(const Tensor& o, const Tensor& i) override {
    timed("gelu_forward", [&] { inner_.gelu_forward(o, i); });
  }
  void gelu_backward(const Tensor& di, const Tensor& i, const Tensor& d) override {
    timed("gelu_backward", [&] { inner_.gelu_backward(di, i, d); });
  }
  void residual_forward(const Tensor& o, const Tensor& a, const Tensor& b) override {
    timed("residual_forward", [&] { inner_.residual_forward(o, a, b); });
  }
  void residual_backward(const Tensor& da, const Tensor& db, const Tensor& d) override {
    timed("residual_backward", [&] { inner_.residual_backward(da, db, d); });
  }
  void attention_forward(const Tensor& o, const Tensor& l, const Tensor& q, int nh) override {
    timed("attention_forward", [&] { inner_.attention_forward(o, l, q, nh); });
  }
  void attention_backward(const Tensor& dq, const Tensor& d, const Tensor& q, const Tensor& o, const Tensor& l,
                          int nh) override {
    timed("attention_backward", [&] { inner_.attention_backward(dq, d, q, o, l, nh); });
  }
  void attention_kv_forward(const Tensor& o, const Tensor& q, const Tensor& kc, const Tensor& vc, int64_t past,
                            int nh) override {
    timed("attention_kv_forward", [&] { inner_.attention_kv_forward(o, q, kc, vc, past, nh); });
  }
  void cross_entropy_forward(const Tensor& ls, const Tensor& l, const Tensor& x, const Tensor& t,
                             int64_t V, int64_t vb) override {
    timed("cross_entropy_forward", [&] { inner_.cross_entropy_forward(ls, l, x, t, V, vb); });
  }
  void cross_entropy_combine(const Tensor& ls, const Tensor& l, const Tensor& sl, const Tensor& sls, const Tensor& t,
                             int64_t vl) override {
    timed("cross_entropy_combine", [&] { inner_.cross_entropy_combine(ls, l, sl, sls, t, vl); });
  }
  void cross_entropy_backward(const Tensor& d, const Tensor& x, const Tensor& l, const Tensor& t, float s,
                              int64_t V, int64_t vb) override {
    timed("cross_entropy_backward", [&] { inner_.cross_entropy_backward(d, x, l, t, s, V, vb); });
  }
  void adamw_update(const Tensor& p, const Tensor& g, const Tensor& m, const Tensor& v,
                    const AdamWParams& a) override {
    timed("adamw_update", [&] { inner_.adamw_update(p, g, m, v, a); });
  }
  double sum_squares(const Tensor& x) override {
    double r = 0;
    timed("sum_squares", [&] { r = inner_.sum_squares(x); });
    return r;
  }
  void scale(const Tensor& x, float s) override { timed("scale", [&] { inner_.scale(x, s); }); }
  void convert(const Tensor& d, const Tensor& s) override { timed("convert", [&] { inner_.convert(d, s); }); }
  int64_t count_nonfinite(const Tensor& x) override {
    int64_t r = 0;
    timed("count_nonfinite", [&] { r = inner_.count_nonfinite(x); });
    return r;
  }
  void adamw_update_mixed(const Tensor& p, const Tensor& g, const Tensor& m, const Tensor& v, const AdamWParams& a,
                          const Tensor& low) override {
    timed("adamw_update_mixed", [&] { inner_.adamw_update_mixed(p, g, m, v, a, low); });
  }

 private:
  template <typename F>
  void timed(const char* op, F&& f);
  Backend& inner_;
  std::map<std::string, OpProfile> profile_;
  bool enabled_ = true;
};

}  // namespace llm

#include "core/timer.h"

template <typename F>
void llm::ProfilingBackend::timed(const char* op, F&& f) {
  if (!enabled_) return f();
  inner_.synchronize();
  Timer t;
  f();
  inner_.synchronize();
  OpProfile& p = profile_[op];
  ++p.calls;
  p.seconds += t.seconds();
}
