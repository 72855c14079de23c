// Validates the float64 reference itself:
//   * forward passes against a few hand-computed values;
//   * every backward pass against central finite differences of its forward pass, through a
//     random scalar projection loss = sum(out * R).
#include <gtest/gtest.h>

#include <cmath>
#include <functional>

#include "backend/reference.h"
#include "backend/test_util.h"

namespace {

using bt::IVec;
using bt::Tol;
using bt::Vec;

constexpr double kFdEps = 1e-6;
// Central differences at eps 1e-6 in double: truncation ~eps^2 f''' ~ 1e-12, cancellation
// ~1e-16 |loss| / eps ~ 1e-9 for the O(10) losses used here.
constexpr Tol kFdTol{1e-6, 1e-7};

// d loss / d x by central differences, perturbing x in place (restored afterwards), compared
// with `analytic`.
::testing::AssertionResult fd_check(const std::string& what, Vec& x, const Vec& analytic,
                                    const std::function<double()>& loss) {
  Vec numeric(x.size());
  for (size_t i = 0; i < x.size(); ++i) {
    const double x0 = x[i];
    x[i] = x0 + kFdEps;
    const double lp = loss();
    x[i] = x0 - kFdEps;
    const double lm = loss();
    x[i] = x0;
    numeric[i] = (lp - lm) / (2.0 * kFdEps);
  }
  return bt::all_close("d loss / d " + what + " (analytic vs finite differences)", analytic,
                       numeric, kFdTol);
}

// ---- hand-checked forward values ------------------------------------------------------------

TEST(ReferenceForward, KnownValues) {
  // GELU (tanh form): gelu(0) = 0, gelu(1) = 0.5 (1 + tanh(sqrt(2/pi) * 1.044715)).
  EXPECT_EQ(ref::gelu(0.0), 0.0);
  EXPECT_NEAR(ref::gelu(1.0), 0.8411919906082768, 1e-15);
  EXPECT_NEAR(ref::gelu(-1.0), -0.15880800939172324, 1e-15);
  EXPECT_NEAR(ref::gelu_grad(0.0), 0.5, 1e-15);

  // LayerNorm of [1, 2, 3] with eps 0: mean 2, var 2/3.
  Vec out, mean, rstd;
  ref::layernorm_forward(out, mean, rstd, {1, 2, 3}, {1, 2, 1}, {0, 0, 5}, 1, 3, 0.0);
  const double r = 1.0 / std::sqrt(2.0 / 3.0);
  EXPECT_NEAR(mean[0], 2.0, 1e-15);
  EXPECT_NEAR(rstd[0], r, 1e-14);
  EXPECT_NEAR(out[0], -r, 1e-14);
  EXPECT_NEAR(out[1], 0.0, 1e-14);
  EXPECT_NEAR(out[2], r + 5.0, 1e-14);

  // Linear: [1,2] @ [[1,0],[3,4]]^T + [10, 20] = [11, 31].
  Vec bias{10, 20};
  ref::linear_forward(out, {1, 2}, {1, 0, 3, 4}, &bias, 1, 2, 2);
  EXPECT_EQ(out, (Vec{11, 31}));

  // Attention at T=1: out = v, lse = q.k / sqrt(hd). At T=2 with q = 0 the second query averages.
  // qkv for C=2, NH=1: q=(1,2) k=(3,4) v=(5,6).
  Vec lse;
  ref::attention_forward(out, lse, {1, 2, 3, 4, 5, 6}, 1, 1, 2, 1);
  EXPECT_EQ(out, (Vec{5, 6}));
  EXPECT_NEAR(lse[0], 11.0 / std::sqrt(2.0), 1e-14);
  ref::attention_forward(out, lse, {0, 0, 1, 1, 2, 4, /**/ 0, 0, 7, 9, 4, 8}, 1, 2, 2, 1);
  EXPECT_EQ(out[0], 2.0);
  EXPECT_EQ(out[1], 4.0);
  EXPECT_NEAR(out[2], 3.0, 1e-15);
  EXPECT_NEAR(out[3], 6.0, 1e-15);
  EXPECT_NEAR(lse[1], std::log(2.0), 1e-15);

  // Cross-entropy of uniform logits over V=4 (Vp=6 padding ignored) is log 4.
  Vec losses;
  ref::cross_entropy_forward(losses, lse, {1, 1, 1, 1, 99, -99, /**/ 0, 0, 0, 0, 0, 0}, {2, -1},
                             2, 6, 4);
  EXPECT_NEAR(losses[0], std::log(4.0), 1e-14);
  EXPECT_NEAR(lse[0], 1.0 + std::log(4.0), 1e-14);
  EXPECT_EQ(losses[1], 0.0);

  // AdamW first step with bias correction: update = lr * sign(g) (up to eps) + lr*wd*p.
  Vec p{1.0, -2.0}, m{0, 0}, v{0, 0};
  llm::AdamWParams ap;
  ap.lr = 0.5f;
  ap.weight_decay = 0.25f;
  ap.eps = 0.0f;
  ref::adamw_update(p, {3.0, -0.1}, m, v, ap);
  EXPECT_NEAR(p[0], 1.0 - 0.5 * (1.0 + 0.25), 1e-12);
  EXPECT_NEAR(p[1], -2.0 - 0.5 * (-1.0 + 0.25 * -2.0), 1e-12);

  EXPECT_EQ(ref::sum_squares({1, -2, 3}), 14.0);
}

// ---- finite-difference validation of every reference backward --------------------------------

TEST(ReferenceGrad, Embedding) {
  bt::Rng rng(101);
  const int B = 2, T = 3, C = 4, V = 3, Vp = 5, maxT = 4;
  IVec tokens{0, 2, 2, 1, 2, 0};  // repeated tokens accumulate
  Vec wte = rng.normal(size_t(Vp) * C), wpe = rng.normal(size_t(maxT) * C);
  Vec R = rng.normal(size_t(B) * T * C);
  Vec dwte(wte.size(), 0.0), dwpe(wpe.size(), 0.0);
  ref::embedding_backward(dwte, dwpe, R, tokens, B, T, C);
  auto loss = [&] {
    Vec out;
    ref::embedding_forward(out, tokens, wte, wpe, B, T, C);
    return bt::dot(out, R);
  };
  EXPECT_TRUE(fd_check("wte", wte, dwte, loss));
  EXPECT_TRUE(fd_check("wpe", wpe, dwpe, loss));
  (void)V;
}

TEST(ReferenceGrad, LayerNorm) {
  bt::Rng rng(102);
  for (auto [N, C] : {std::pair{3, 5}, std::pair{2, 1}, std::pair{1, 8}}) {
    SCOPED_TRACE("N=" + std::to_string(N) + " C=" + std::to_string(C));
    const double eps = 1e-5;
    Vec inp = rng.normal(size_t(N) * C, 1.5, 0.3), w = rng.normal(C), b = rng.normal(C);
    Vec R = rng.normal(size_t(N) * C);
    Vec out, mean, rstd;
    ref::layernorm_forward(out, mean, rstd, inp, w, b, N, C, eps);
    Vec dinp(inp.size(), 0.0), dw(C, 0.0), db(C, 0.0);
    ref::layernorm_backward(dinp, dw, db, R, inp, w, mean, rstd, N, C);
    auto loss = [&] {
      Vec o, m, r;
      ref::layernorm_forward(o, m, r, inp, w, b, N, C, eps);
      return bt::dot(o, R);
    };
    EXPECT_TRUE(fd_check("inp", inp, dinp, loss));
    EXPECT_TRUE(fd_check("weight", w, dw, loss));
    EXPECT_TRUE(fd_check("bias", b, db, loss));
  }
}

TEST(ReferenceGrad, Linear) {
  bt::Rng rng(103);
  const int N = 3, C = 4, OC = 5;
  Vec inp = rng.normal(size_t(N) * C), w = rng.normal(size_t(OC) * C), b = rng.normal(OC);
  Vec R = rng.normal(size_t(N) * OC);
  for (bool with_bias : {true, false}) {
    SCOPED_TRACE(with_bias ? "with bias" : "without bias");
    Vec dinp(inp.size(), 0.0), dw(w.size(), 0.0), db(OC, 0.0);
    ref::linear_backward(&dinp, dw, with_bias ? &db : nullptr, R, inp, w, N, C, OC);
    auto loss = [&] {
      Vec o;
      ref::linear_forward(o, inp, w, with_bias ? &b : nullptr, N, C, OC);
      return bt::dot(o, R);
    };
    EXPECT_TRUE(fd_check("inp", inp, dinp, loss));
    EXPECT_TRUE(fd_check("weight", w, dw, loss));
    if (with_bias) {
      EXPECT_TRUE(fd_check("bias", b, db, loss));
    }
  }
}

TEST(ReferenceGrad, Gelu) {
  bt::Rng rng(104);
  Vec x = rng.normal(64, 2.5);
  x[0] = 0.0;
  x[1] = -6.0;
  x[2] = 6.0;
  Vec R = rng.normal(x.size());
  Vec dx(x.size(), 0.0);
  ref::gelu_backward(dx, x, R);
  auto loss = [&] {
    Vec o;
    ref::gelu_forward(o, x);
    return bt::dot(o, R);
  };
  EXPECT_TRUE(fd_check("inp", x, dx, loss));
}

TEST(ReferenceGrad, Residual) {
  bt::Rng rng(105);
  Vec a = rng.normal(17), b = rng.normal(17), R = rng.normal(17);
  Vec da(17, 0.0), db(17, 0.0);
  ref::residual_backward(da, db, R);
  auto loss = [&] {
    Vec o;
    ref::residual_forward(o, a, b);
    return bt::dot(o, R);
  };
  EXPECT_TRUE(fd_check("a", a, da, loss));
  EXPECT_TRUE(fd_check("b", b, db, loss));
}

TEST(ReferenceGrad, Attention) {
  bt::Rng rng(106);
  struct Case { int B, T, NH, hd; };
  for (Case c : {Case{1, 1, 1, 2}, Case{2, 5, 2, 3}, Case{1, 7, 3, 4}}) {
    SCOPED_TRACE("B=" + std::to_string(c.B) + " T=" + std::to_string(c.T) +
                 " NH=" + std::to_string(c.NH) + " hd=" + std::to_string(c.hd));
    const int C = c.NH * c.hd;
    Vec qkv = rng.normal(size_t(c.B) * c.T * 3 * C);
    Vec R = rng.normal(size_t(c.B) * c.T * C);
    Vec dqkv(qkv.size(), 0.0);
    ref::attention_backward(dqkv, R, qkv, c.B, c.T, C, c.NH);
    auto loss = [&] {
      Vec o, l;
      ref::attention_forward(o, l, qkv, c.B, c.T, C, c.NH);
      return bt::dot(o, R);
    };
    EXPECT_TRUE(fd_check("qkv", qkv, dqkv, loss));
  }
}

TEST(ReferenceGrad, AttentionLseIsLogSumExpOfScores) {
  // The lse output is the log-normaliser: d lse / d q = scale * sum_s P k_s, checked by FD of lse.
  bt::Rng rng(107);
  const int B = 1, T = 4, NH = 1, hd = 3, C = 3;
  Vec qkv = rng.normal(size_t(B) * T * 3 * C);
  Vec o, lse;
  ref::attention_forward(o, lse, qkv, B, T, C, NH);
  for (int t = 0; t < T; ++t) {
    double mx = -1e300;
    std::vector<double> s(t + 1);
    for (int j = 0; j <= t; ++j) {
      double d = 0;
      for (int k = 0; k < hd; ++k) d += qkv[t * 3 * C + k] * qkv[j * 3 * C + C + k];
      s[j] = d / std::sqrt(double(hd));
      mx = std::max(mx, s[j]);
    }
    double sum = 0;
    for (double v : s) sum += std::exp(v - mx);
    EXPECT_NEAR(lse[t], mx + std::log(sum), 1e-13);
  }
}

TEST(ReferenceGrad, CrossEntropy) {
  bt::Rng rng(108);
  const int N = 5, V = 6, Vp = 8;
  Vec logits = rng.normal(size_t(N) * Vp, 2.0);
  IVec targets{3, -1, 0, 5, 2};
  const double dloss = 0.37;
  Vec dlogits(logits.size(), 0.0);
  ref::cross_entropy_backward(dlogits, logits, targets, dloss, N, Vp, V);
  auto loss = [&] {
    Vec losses, lse;
    ref::cross_entropy_forward(losses, lse, logits, targets, N, Vp, V);
    double s = 0;
    for (double l : losses) s += l;
    return dloss * s;
  };
  EXPECT_TRUE(fd_check("logits", logits, dlogits, loss));
  // Padding columns and the ignored row carry exactly zero gradient.
  for (int n = 0; n < N; ++n)
    for (int j = 0; j < Vp; ++j)
      if (j >= V || targets[n] < 0) {
        EXPECT_EQ(dlogits[size_t(n) * Vp + j], 0.0);
      }
}

TEST(ReferenceGrad, AdamWMatchesClosedFormOverSteps) {
  // Two steps with constant gradient g and no decay: m_t/(1-b1^t) = g, v_t/(1-b2^t) = g^2, so
  // each step moves p by lr * g / (|g| + eps).
  Vec p{0.5}, m{0}, v{0};
  llm::AdamWParams ap;
  ap.lr = 0.1f;
  ap.eps = 1e-3f;
  for (int64_t s = 1; s <= 2; ++s) {
    ap.step = s;
    ref::adamw_update(p, {2.0}, m, v, ap);
  }
  const double lr = 0.1f, eps = 1e-3f;
  EXPECT_NEAR(p[0], 0.5 - 2 * lr * 2.0 / (2.0 + eps), 1e-12);
}

}  // namespace
