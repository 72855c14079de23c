#include "backend/reference.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <stdexcept>
#include <string>

namespace ref {

namespace {
void require(bool cond, const char* what) {
  if (!cond) throw std::invalid_argument(std::string("reference: ") + what);
}
constexpr double kSqrt2OverPi = 0.79788456080286535587989211986876;  // sqrt(2/pi)
constexpr double kGeluC = 0.044715;
}  // namespace

// ---- embedding ------------------------------------------------------------------------------

void embedding_forward(Vec& out, const IVec& tokens, const Vec& wte, const Vec& wpe, int B, int T,
                       int C) {
  require(tokens.size() == size_t(B) * T, "embedding tokens size");
  out.assign(size_t(B) * T * C, 0.0);
  for (int b = 0; b < B; ++b)
    for (int t = 0; t < T; ++t) {
      const int tok = tokens[size_t(b) * T + t];
      require(tok >= 0 && size_t(tok + 1) * C <= wte.size(), "token out of range");
      require(size_t(t + 1) * C <= wpe.size(), "wpe too short");
      for (int c = 0; c < C; ++c)
        out[(size_t(b) * T + t) * C + c] = wte[size_t(tok) * C + c] + wpe[size_t(t) * C + c];
    }
}

void embedding_backward(Vec& dwte, Vec& dwpe, const Vec& dout, const IVec& tokens, int B, int T,
                        int C) {
  for (int b = 0; b < B; ++b)
    for (int t = 0; t < T; ++t) {
      const int tok = tokens[size_t(b) * T + t];
      for (int c = 0; c < C; ++c) {
        const double d = dout[(size_t(b) * T + t) * C + c];
        dwte[size_t(tok) * C + c] += d;
        dwpe[size_t(t) * C + c] += d;
      }
    }
}

// ---- layernorm ------------------------------------------------------------------------------

void layernorm_forward(Vec& out, Vec& mean, Vec& rstd, const Vec& inp, const Vec& weight,
                       const Vec& bias, int N, int C, double eps) {
  require(inp.size() == size_t(N) * C && weight.size() == size_t(C) && bias.size() == size_t(C),
          "layernorm sizes");
  out.assign(size_t(N) * C, 0.0);
  mean.assign(N, 0.0);
  rstd.assign(N, 0.0);
  for (int n = 0; n < N; ++n) {
    const double* x = &inp[size_t(n) * C];
    double m = 0.0;
    for (int c = 0; c < C; ++c) m += x[c];
    m /= C;
    double var = 0.0;
    for (int c = 0; c < C; ++c) var += (x[c] - m) * (x[c] - m);
    var /= C;
    const double r = 1.0 / std::sqrt(var + eps);
    for (int c = 0; c < C; ++c) out[size_t(n) * C + c] = (x[c] - m) * r * weight[c] + bias[c];
    mean[n] = m;
    rstd[n] = r;
  }
}

void layernorm_backward(Vec& dinp, Vec& dweight, Vec& dbias, const Vec& dout, const Vec& inp,
                        const Vec& weight, const Vec& mean, const Vec& rstd, int N, int C) {
  std::vector<double> xhat(C), dxhat(C);
  for (int n = 0; n < N; ++n) {
    double mean_dxhat = 0.0, mean_dxhat_xhat = 0.0;
    for (int c = 0; c < C; ++c) {
      const size_t i = size_t(n) * C + c;
      xhat[c] = (inp[i] - mean[n]) * rstd[n];
      dxhat[c] = dout[i] * weight[c];
      mean_dxhat += dxhat[c];
      mean_dxhat_xhat += dxhat[c] * xhat[c];
      dweight[c] += dout[i] * xhat[c];
      dbias[c] += dout[i];
    }
    mean_dxhat /= C;
    mean_dxhat_xhat /= C;
    for (int c = 0; c < C; ++c)
      dinp[size_t(n) * C + c] += rstd[n] * (dxhat[c] - mean_dxhat - xhat[c] * mean_dxhat_xhat);
  }
}

// ---- linear ---------------------------------------------------------------------------------

void linear_forward(Vec& out, const Vec& inp, const Vec& weight, const Vec* bias, int N, int C,
                    int OC) {
  require(inp.size() == size_t(N) * C && weight.size() == size_t(OC) * C, "linear sizes");
  out.assign(size_t(N) * OC, 0.0);
  for (int n = 0; n < N; ++n)
    for (int o = 0; o < OC; ++o) {
      double s = bias ? (*bias)[o] : 0.0;
      for (int c = 0; c < C; ++c) s += inp[size_t(n) * C + c] * weight[size_t(o) * C + c];
      out[size_t(n) * OC + o] = s;
    }
}

void linear_backward(Vec* dinp, Vec& dweight, Vec* dbias, const Vec& dout, const Vec& inp,
                     const Vec& weight, int N, int C, int OC) {
  for (int n = 0; n < N; ++n)
    for (int o = 0; o < OC; ++o) {
      const double d = dout[size_t(n) * OC + o];
      if (dbias) (*dbias)[o] += d;
      for (int c = 0; c < C; ++c) {
        if (dinp) (*dinp)[size_t(n) * C + c] += d * weight[size_t(o) * C + c];
        dweight[size_t(o) * C + c] += d * inp[size_t(n) * C + c];
      }
    }
}

// ---- gelu -----------------------------------------------------------------------------------

double gelu(double x) {
  const double u = kSqrt2OverPi * (x + kGeluC * x * x * x);
  return 0.5 * x * (1.0 + std::tanh(u));
}

double gelu_grad(double x) {
  const double u = kSqrt2OverPi * (x + kGeluC * x * x * x);
  const double th = std::tanh(u);
  const double du_dx = kSqrt2OverPi * (1.0 + 3.0 * kGeluC * x * x);
  return 0.5 * (1.0 + th) + 0.5 * x * (1.0 - th * th) * du_dx;
}

void gelu_forward(Vec& out, const Vec& inp) {
  out.resize(inp.size());
  for (size_t i = 0; i < inp.size(); ++i) out[i] = gelu(inp[i]);
}

void gelu_backward(Vec& dinp, const Vec& inp, const Vec& dout) {
  for (size_t i = 0; i < inp.size(); ++i) dinp[i] += gelu_grad(inp[i]) * dout[i];
}

// ---- residual -------------------------------------------------------------------------------

void residual_forward(Vec& out, const Vec& a, const Vec& b) {
  require(a.size() == b.size(), "residual sizes");
  out.resize(a.size());
  for (size_t i = 0; i < a.size(); ++i) out[i] = a[i] + b[i];
}

void residual_backward(Vec& da, Vec& db, const Vec& dout) {
  for (size_t i = 0; i < dout.size(); ++i) {
    da[i] += dout[i];
    db[i] += dout[i];
  }
}

// ---- attention ------------------------------------------------------------------------------

namespace {
// Element accessors for the GPT-2 qkv layout: qkv[b, t, which*C + h*hd + d].
struct QKV {
  int T, C, hd;
  size_t idx(int b, int t, int which, int h, int d) const {
    return (size_t(b) * T + t) * 3 * C + size_t(which) * C + size_t(h) * hd + d;
  }
};

// P[t][s] for s <= t (rows of length T; entries s > t are 0) and lse[t], for one (b, h).
void attention_probs(std::vector<double>& P, std::vector<double>& lse, const Vec& qkv,
                     const QKV& L, int b, int h) {
  const int T = L.T, hd = L.hd;
  const double scale = 1.0 / std::sqrt(double(hd));
  P.assign(size_t(T) * T, 0.0);
  lse.assign(T, 0.0);
  for (int t = 0; t < T; ++t) {
    double mx = -std::numeric_limits<double>::infinity();
    for (int s = 0; s <= t; ++s) {
      double dot = 0.0;
      for (int d = 0; d < hd; ++d) dot += qkv[L.idx(b, t, 0, h, d)] * qkv[L.idx(b, s, 1, h, d)];
      P[size_t(t) * T + s] = dot * scale;
      mx = std::max(mx, dot * scale);
    }
    double sum = 0.0;
    for (int s = 0; s <= t; ++s) sum += std::exp(P[size_t(t) * T + s] - mx);
    const double l = mx + std::log(sum);
    for (int s = 0; s <= t; ++s) P[size_t(t) * T + s] = std::exp(P[size_t(t) * T + s] - l);
    lse[t] = l;
  }
}
}  // namespace

void attention_forward(Vec& out, Vec& lse, const Vec& qkv, int B, int T, int C, int NH) {
  require(C % NH == 0 && qkv.size() == size_t(B) * T * 3 * C, "attention sizes");
  const QKV L{T, C, C / NH};
  out.assign(size_t(B) * T * C, 0.0);
  lse.assign(size_t(B) * NH * T, 0.0);
  std::vector<double> P, l;
  for (int b = 0; b < B; ++b)
    for (int h = 0; h < NH; ++h) {
      attention_probs(P, l, qkv, L, b, h);
      for (int t = 0; t < T; ++t) {
        lse[(size_t(b) * NH + h) * T + t] = l[t];
        for (int d = 0; d < L.hd; ++d) {
          double acc = 0.0;
          for (int s = 0; s <= t; ++s) acc += P[size_t(t) * T + s] * qkv[L.idx(b, s, 2, h, d)];
          out[(size_t(b) * T + t) * C + size_t(h) * L.hd + d] = acc;
        }
      }
    }
}

void attention_backward(Vec& dqkv, const Vec& dout, const Vec& qkv, int B, int T, int C, int NH) {
  require(C % NH == 0 && dqkv.size() == qkv.size() && dout.size() == size_t(B) * T * C,
          "attention backward sizes");
  const QKV L{T, C, C / NH};
  const int hd = L.hd;
  const double scale = 1.0 / std::sqrt(double(hd));
  std::vector<double> P, l, dP(size_t(T) * T);
  auto dO = [&](int b, int t, int h, int d) { return dout[(size_t(b) * T + t) * C + size_t(h) * hd + d]; };
  for (int b = 0; b < B; ++b)
    for (int h = 0; h < NH; ++h) {
      attention_probs(P, l, qkv, L, b, h);
      for (int t = 0; t < T; ++t) {
        // dP[t][s] = dout_t . v_s ;  dS = P * (dP - sum_s P dP)
        double rowdot = 0.0;
        for (int s = 0; s <= t; ++s) {
          double acc = 0.0;
          for (int d = 0; d < hd; ++d) acc += dO(b, t, h, d) * qkv[L.idx(b, s, 2, h, d)];
          dP[size_t(t) * T + s] = acc;
          rowdot += P[size_t(t) * T + s] * acc;
        }
        for (int s = 0; s <= t; ++s) {
          const double p = P[size_t(t) * T + s];
          const double dS = p * (dP[size_t(t) * T + s] - rowdot);
          for (int d = 0; d < hd; ++d) {
            dqkv[L.idx(b, t, 0, h, d)] += scale * dS * qkv[L.idx(b, s, 1, h, d)];  // dq
            dqkv[L.idx(b, s, 1, h, d)] += scale * dS * qkv[L.idx(b, t, 0, h, d)];  // dk
            dqkv[L.idx(b, s, 2, h, d)] += p * dO(b, t, h, d);                      // dv
          }
        }
      }
    }
}

// ---- cross-entropy --------------------------------------------------------------------------

namespace {
double row_lse(const double* x, int V) {
  double mx = -std::numeric_limits<double>::infinity();
  for (int j = 0; j < V; ++j) mx = std::max(mx, x[j]);
  double s = 0.0;
  for (int j = 0; j < V; ++j) s += std::exp(x[j] - mx);
  return mx + std::log(s);
}
}  // namespace

void cross_entropy_forward(Vec& losses, Vec& lse, const Vec& logits, const IVec& targets, int N,
                           int Vp, int V) {
  require(V >= 1 && V <= Vp && logits.size() == size_t(N) * Vp && targets.size() == size_t(N),
          "cross-entropy sizes");
  losses.assign(N, 0.0);
  lse.assign(N, 0.0);
  for (int n = 0; n < N; ++n) {
    const double* x = &logits[size_t(n) * Vp];
    lse[n] = row_lse(x, V);
    const int tgt = targets[n];
    require(tgt < V, "target out of range");
    losses[n] = tgt < 0 ? 0.0 : lse[n] - x[tgt];
  }
}

void cross_entropy_backward(Vec& dlogits, const Vec& logits, const IVec& targets, double dloss,
                            int N, int Vp, int V) {
  for (int n = 0; n < N; ++n) {
    const int tgt = targets[n];
    if (tgt < 0) continue;
    const double* x = &logits[size_t(n) * Vp];
    const double l = row_lse(x, V);
    for (int j = 0; j < V; ++j)
      dlogits[size_t(n) * Vp + j] += (std::exp(x[j] - l) - (j == tgt ? 1.0 : 0.0)) * dloss;
  }
}

// ---- optimizer and reductions ---------------------------------------------------------------

void adamw_update(Vec& param, const Vec& grad, Vec& m, Vec& v, const llm::AdamWParams& p) {
  const double b1 = p.beta1, b2 = p.beta2, lr = p.lr, eps = p.eps, wd = p.weight_decay;
  const double bc1 = 1.0 - std::pow(b1, double(p.step));
  const double bc2 = 1.0 - std::pow(b2, double(p.step));
  for (size_t i = 0; i < param.size(); ++i) {
    const double g = grad[i] * double(p.grad_scale);
    m[i] = b1 * m[i] + (1.0 - b1) * g;
    v[i] = b2 * v[i] + (1.0 - b2) * g * g;
    const double mhat = m[i] / bc1;
    const double vhat = v[i] / bc2;
    param[i] -= lr * (mhat / (std::sqrt(vhat) + eps) + wd * param[i]);
  }
}

double sum_squares(const Vec& x) {
  double s = 0.0;
  for (double v : x) s += v * v;
  return s;
}

void scale(Vec& x, double s) {
  for (double& v : x) v *= s;
}

}  // namespace ref
