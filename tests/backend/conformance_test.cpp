// Backend conformance: every op of every available backend against the float64 reference
// (reference.h), on odd shapes, with the documented +=/= gradient convention, aliasing rules and
// undefined optional tensors.
//
// Tolerances are for fp32 arithmetic. Where an output is a reduction, the tolerance scales with
// the magnitude of the reduced terms (Tol::mtol * mag, mag = the same reduction over |terms|) or
// with the largest reference value of the tensor (normwise), not with the element itself: fp32
// rounding error is proportional to those, while any real bug is O(|value|).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "backend/reference.h"
#include "backend/test_util.h"

namespace {

using bt::IVec;
using bt::Tol;
using bt::Vec;
using llm::Shape;
using llm::Tensor;

std::string str(std::initializer_list<std::pair<const char*, long long>> kv) {
  std::string s;
  for (auto& [k, v] : kv) s += std::string(s.empty() ? "" : " ") + k + "=" + std::to_string(v);
  return s;
}

Vec rounded(const Vec& v) {  // what a float tensor holding v contains
  Vec r(v.size());
  for (size_t i = 0; i < v.size(); ++i) r[i] = double(float(v[i]));
  return r;
}

class BackendConformance : public ::testing::TestWithParam<llm::Backend*> {
 protected:
  llm::Backend& be() { return *GetParam(); }
  Tensor up(const Shape& s, const Vec& v) { return be().upload(bt::host_f32(s, v)); }
  Tensor up_i32(const Shape& s, const IVec& v) { return be().upload(bt::host_i32(s, v)); }
  Tensor nan_tensor(const Shape& s) { return up(s, bt::constant(size_t(llm::numel(s)), bt::kNaN)); }
  Vec down(const Tensor& t) {
    be().synchronize();
    return bt::to_vec(be().download(t));
  }
};

// ---- memory ---------------------------------------------------------------------------------

TEST_P(BackendConformance, UploadDownloadZero) {
  bt::Rng rng(1);
  for (int64_t n : {1, 7, 1003}) {
    SCOPED_TRACE(str({{"n", n}}));
    Vec x = rng.normal(size_t(n));
    Tensor d = up({n}, x);
    EXPECT_EQ(d.device(), be().device());
    EXPECT_TRUE(bt::all_equal("roundtrip", down(d), x));
    be().zero(d);
    EXPECT_TRUE(bt::all_equal("zero()", down(d), bt::constant(size_t(n), 0.0)));
    Tensor z = be().zeros({n});
    EXPECT_TRUE(bt::all_equal("zeros()", down(z), bt::constant(size_t(n), 0.0)));
    IVec ix = rng.below(size_t(n), 1000);
    Tensor di = up_i32({n}, ix);
    Tensor hi = be().download(di);
    be().synchronize();
    ASSERT_EQ(hi.dtype(), llm::DType::i32);
    for (int64_t i = 0; i < n; ++i) EXPECT_EQ(hi.data<int32_t>()[i], ix[size_t(i)]);
  }
}

// Strided row copies (the Ulysses layout changes): each row lands at its pitch, everything between
// the rows is left alone, and a copy that would overrun either tensor is refused.
TEST_P(BackendConformance, CopyRows) {
  bt::Rng rng(3);
  struct Case { int64_t rows, width, dst_pitch, src_pitch; };
  for (Case c : {Case{1, 1, 1, 1}, Case{5, 3, 3, 7}, Case{7, 16, 40, 16}, Case{4, 24, 24, 24}, Case{0, 5, 5, 5}}) {
    SCOPED_TRACE(str({{"rows", c.rows}, {"width", c.width}, {"dst_pitch", c.dst_pitch}, {"src_pitch", c.src_pitch}}));
    const int64_t nd = std::max<int64_t>(1, c.rows * c.dst_pitch), ns = std::max<int64_t>(1, c.rows * c.src_pitch);
    const Vec src = rng.normal(size_t(ns)), dst0 = rng.normal(size_t(nd));
    Tensor d = up({nd}, dst0);
    be().copy_rows(d, c.dst_pitch, up({ns}, src), c.src_pitch, c.rows, c.width);
    Vec want = dst0;
    for (int64_t r = 0; r < c.rows; ++r)
      for (int64_t k = 0; k < c.width; ++k) want[size_t(r * c.dst_pitch + k)] = src[size_t(r * c.src_pitch + k)];
    EXPECT_TRUE(bt::all_equal("copy_rows", down(d), want));
  }
  // 2-byte elements move as they are: distinct bf16 values into a destination of sentinels
  {
    Tensor hs = Tensor::empty({6}, llm::DType::bf16), hd = Tensor::empty({6}, llm::DType::bf16);
    for (int i = 0; i < 6; ++i) {
      static_cast<uint16_t*>(hs.raw())[i] = static_cast<uint16_t>(0x3F80 + 0x20 * i);  // 1, 1.25, 1.5, ...
      static_cast<uint16_t*>(hd.raw())[i] = 0xBF80;                                      // -1
    }
    Tensor lo = be().upload(hd);
    be().copy_rows(lo, 3, be().upload(hs), 3, 2, 2);
    be().synchronize();
    const Tensor got = be().download(lo);
    const uint16_t want[6] = {0x3F80, 0x3FA0, 0xBF80, 0x3FE0, 0x4000, 0xBF80};
    for (int i = 0; i < 6; ++i)
      EXPECT_EQ(static_cast<const uint16_t*>(got.raw())[i], want[i]) << "bf16 copy_rows element " << i;
  }
  Tensor small = be().zeros({4});
  EXPECT_THROW(be().copy_rows(small, 3, up({8}, Vec(8, 1.0)), 4, 2, 2), llm::Error);  // dst: row 1 ends at 5 > 4
  EXPECT_THROW(be().copy_rows(up({8}, Vec(8, 1.0)), 2, up({8}, Vec(8, 1.0)), 4, 2, 3), llm::Error);  // pitch < width
  EXPECT_THROW(be().copy_rows(be().zeros({6}, llm::DType::bf16), 3, up({6}, Vec(6, 1.0)), 3, 2, 2), llm::Error);  // bf16 <- f32
}

// ---- embedding ------------------------------------------------------------------------------

TEST_P(BackendConformance, Embedding) {
  struct Case { int B, T, C, V, Vp, maxT; };
  bt::Rng rng(2);
  for (Case c : {Case{1, 1, 1, 1, 1, 1}, Case{2, 7, 3, 5, 8, 9}, Case{3, 17, 17, 11, 16, 20},
                 Case{2, 65, 64, 50, 64, 65}, Case{4, 33, 96, 37, 40, 64}}) {
    SCOPED_TRACE(str({{"B", c.B}, {"T", c.T}, {"C", c.C}, {"V", c.V}, {"Vp", c.Vp}, {"maxT", c.maxT}}));
    const size_t NC = size_t(c.B) * c.T * c.C;
    IVec tokens = rng.below(size_t(c.B) * c.T, c.V);
    tokens[0] = c.V - 1;
    Vec wte = rng.normal(size_t(c.Vp) * c.C), wpe = rng.normal(size_t(c.maxT) * c.C);

    // forward (=): garbage in out must be overwritten
    Tensor tok = up_i32({c.B, c.T}, tokens);
    Tensor out = nan_tensor({c.B, c.T, c.C});
    be().embedding_forward(out, tok, up({c.Vp, c.C}, wte), up({c.maxT, c.C}, wpe));
    Vec ref_out;
    ref::embedding_forward(ref_out, tokens, wte, wpe, c.B, c.T, c.C);
    EXPECT_TRUE(bt::all_close("embedding out", down(out), ref_out, Tol{1e-6, 1e-7}));

    // backward (+= on both, repeated tokens accumulate)
    Vec dout = rng.normal(NC);
    Vec dwte0 = rng.normal(wte.size()), dwpe0 = rng.normal(wpe.size());
    Tensor dwte = up({c.Vp, c.C}, dwte0), dwpe = up({c.maxT, c.C}, dwpe0);
    be().embedding_backward(dwte, dwpe, up({c.B, c.T, c.C}, dout), tok);
    Vec rdwte = dwte0, rdwpe = dwpe0;
    ref::embedding_backward(rdwte, rdwpe, dout, tokens, c.B, c.T, c.C);
    // mag: prefill plus the sum of |dout| scattered into each element
    Vec mwte = bt::abs_of(dwte0), mwpe = bt::abs_of(dwpe0);
    ref::embedding_backward(mwte, mwpe, bt::abs_of(dout), tokens, c.B, c.T, c.C);
    const Vec gdwte = down(dwte), gdwpe = down(dwpe);
    EXPECT_TRUE(bt::all_close("embedding dwte (+=)", gdwte, rdwte, Tol{1e-6, 1e-7, 1e-6}, &mwte));
    EXPECT_TRUE(bt::all_close("embedding dwpe (+=)", gdwpe, rdwpe, Tol{1e-6, 1e-7, 1e-6}, &mwpe));
    // padding rows of wte (>= V) and positions >= T must be untouched
    const size_t vrows = size_t(c.V) * c.C, trows = size_t(c.T) * c.C;
    EXPECT_TRUE(bt::all_equal("dwte padding rows untouched", Vec(gdwte.begin() + vrows, gdwte.end()),
                              Vec(dwte0.begin() + vrows, dwte0.end())));
    EXPECT_TRUE(bt::all_equal("dwpe rows >= T untouched", Vec(gdwpe.begin() + trows, gdwpe.end()),
                              Vec(dwpe0.begin() + trows, dwpe0.end())));
  }
}

// Vocab-parallel embedding: each shard looks up only its rows (wpe on one shard only); the
// shards' outputs sum to the unsharded embedding and their dwte rows are the unsharded dwte.
TEST_P(BackendConformance, EmbeddingVocabShards) {
  const int B = 3, T = 11, C = 24, Vp = 40, maxT = 16;
  bt::Rng rng(21);
  IVec tokens = rng.below(size_t(B) * T, Vp);
  tokens[0] = 0, tokens[1] = Vp - 1, tokens[2] = 19, tokens[3] = 20;  // shard edges
  Vec wte = rng.normal(size_t(Vp) * C), wpe = rng.normal(size_t(maxT) * C), dout = rng.normal(size_t(B) * T * C);
  Vec ref_out;
  ref::embedding_forward(ref_out, tokens, wte, wpe, B, T, C);
  Vec rdwte(wte.size(), 0.0), rdwpe(wpe.size(), 0.0);
  ref::embedding_backward(rdwte, rdwpe, dout, tokens, B, T, C);
  for (int shards : {2, 4, 5}) {
    SCOPED_TRACE(str({{"shards", shards}}));
    const int Vl = Vp / shards;
    Vec sum(ref_out.size(), 0.0), gdwte;
    Tensor tok = up_i32({B, T}, tokens);
    for (int r = 0; r < shards; ++r) {
      Vec part(wte.begin() + size_t(r) * Vl * C, wte.begin() + size_t(r + 1) * Vl * C);
      Tensor out = nan_tensor({B, T, C});
      be().embedding_forward(out, tok, up({Vl, C}, part), r == 0 ? up({maxT, C}, wpe) : Tensor{}, int64_t(r) * Vl, Vp);
      const Vec o = down(out);
      for (size_t i = 0; i < o.size(); ++i) sum[i] += o[i];
      Tensor dwte = up({Vl, C}, Vec(size_t(Vl) * C, 0.0));
      Tensor dwpe = up({maxT, C}, Vec(wpe.size(), 0.0));
      be().embedding_backward(dwte, r == 0 ? dwpe : Tensor{}, up({B, T, C}, dout), tok, int64_t(r) * Vl);
      const Vec g = down(dwte);
      gdwte.insert(gdwte.end(), g.begin(), g.end());
      if (r == 0) {
        EXPECT_TRUE(bt::all_close("shard 0 dwpe", down(dwpe), rdwpe, Tol{1e-6, 1e-6}));
      }
    }
    EXPECT_TRUE(bt::all_close("sum of shard embeddings", sum, ref_out, Tol{1e-6, 1e-7}));
    EXPECT_TRUE(bt::all_close("concatenated shard dwte", gdwte, rdwte, Tol{1e-6, 1e-6}));
  }
  // A token outside the whole vocabulary is still an error on every shard.
  IVec bad = tokens;
  bad[5] = Vp;
  Tensor out = be().empty({B, T, C});
  EXPECT_THROW(be().embedding_forward(out, up_i32({B, T}, bad), up({Vp / 2, C}, Vec(size_t(Vp / 2) * C, 0.0)),
                                      Tensor{}, Vp / 2, Vp),
               llm::Error);
}

// ---- layernorm ------------------------------------------------------------------------------

TEST_P(BackendConformance, LayerNorm) {
  struct Case { int N, C; double sd, offset; };
  bt::Rng rng(3);
  const float eps = 1e-5f;
  for (Case c : {Case{1, 1, 1, 0}, Case{7, 3, 1, 0}, Case{5, 17, 2, 0.5}, Case{33, 64, 1, 0},
                 Case{9, 96, 0.5, 0}, Case{4, 768, 1, 0}, Case{6, 64, 1, 10}, Case{3, 5, 1e-3, 0},
                 // more than one block of 32 channels, the last partial: its idle channels must
                 // not touch the dbias partials of the first (a race on the GPU)
                 Case{40, 50, 1, 0}, Case{12, 1030, 1, 0}}) {
    SCOPED_TRACE(str({{"N", c.N}, {"C", c.C}}) + " sd=" + std::to_string(c.sd) +
                 " offset=" + std::to_string(c.offset));
    const size_t NC = size_t(c.N) * c.C;
    Vec inp = rng.normal(NC, c.sd, c.offset);
    Vec w = rng.normal(size_t(c.C), 0.5, 1.0), b = rng.normal(size_t(c.C), 0.5);

    Tensor inp_t = up({c.N, c.C}, inp), w_t = up({c.C}, w), b_t = up({c.C}, b);
    Tensor out = nan_tensor({c.N, c.C}), mean = nan_tensor({c.N}), rstd = nan_tensor({c.N});
    be().layernorm_forward(out, mean, rstd, inp_t, w_t, b_t, eps);
    Vec rout, rmean, rrstd;
    ref::layernorm_forward(rout, rmean, rrstd, inp, w, b, c.N, c.C, double(eps));
    EXPECT_TRUE(bt::all_close("layernorm mean", down(mean), rmean,
                              Tol{1e-6, 1e-6 * (c.sd + std::fabs(c.offset))}));
    EXPECT_TRUE(bt::all_close("layernorm rstd", down(rstd), rrstd, Tol{1e-4, 0}));
    // |out - b| = |xhat w| is at most a few |w|
    EXPECT_TRUE(bt::all_close("layernorm out", down(out), rout,
                              Tol{1e-4, 1e-5 * (1 + bt::max_abs(w))}));

    // backward: dinp, dweight, dbias all +=. Stats are the reference's, rounded to float, so the
    // backend and the reference differentiate the same inputs.
    Vec mean_f = rounded(rmean), rstd_f = rounded(rrstd);
    Vec dout = rng.normal(NC);
    Vec dinp0 = rng.normal(NC), dw0 = rng.normal(size_t(c.C)), db0 = rng.normal(size_t(c.C));
    Tensor dinp = up({c.N, c.C}, dinp0), dw = up({c.C}, dw0), db = up({c.C}, db0);
    be().layernorm_backward(dinp, dw, db, up({c.N, c.C}, dout), inp_t, w_t, up({c.N}, mean_f),
                            up({c.N}, rstd_f));
    Vec ddinp(NC, 0.0), ddw(size_t(c.C), 0.0), ddb(size_t(c.C), 0.0);
    ref::layernorm_backward(ddinp, ddw, ddb, dout, inp, w, mean_f, rstd_f, c.N, c.C);
    // dweight/dbias: sums over N of |dout xhat| / |dout|.
    Vec mdw = bt::abs_of(dw0), mdb = bt::abs_of(db0);
    for (int n = 0; n < c.N; ++n)
      for (int k = 0; k < c.C; ++k) {
        const size_t i = size_t(n) * c.C + k;
        mdw[size_t(k)] += std::fabs(dout[i] * (inp[i] - mean_f[size_t(n)]) * rstd_f[size_t(n)]);
        mdb[size_t(k)] += std::fabs(dout[i]);
      }
    // dinp: normwise over the delta, plus the magnitude of the terms rstd * (|dxhat| +
    // mean|dxhat| + |xhat| mean|dxhat xhat|) that cancel in it (C=1 is all cancellation: the
    // exact gradient is 0 while rstd = 1/sqrt(eps) amplifies each rounding ~300x).
    Vec mdinp = bt::abs_of(dinp0);
    for (int n = 0; n < c.N; ++n) {
      double s1 = 0, s2 = 0;
      for (int k = 0; k < c.C; ++k) {
        const size_t i = size_t(n) * c.C + k;
        const double xh = (inp[i] - mean_f[size_t(n)]) * rstd_f[size_t(n)];
        s1 += std::fabs(dout[i] * w[size_t(k)]);
        s2 += std::fabs(dout[i] * w[size_t(k)] * xh);
      }
      for (int k = 0; k < c.C; ++k) {
        const size_t i = size_t(n) * c.C + k;
        const double xh = (inp[i] - mean_f[size_t(n)]) * rstd_f[size_t(n)];
        mdinp[i] += rstd_f[size_t(n)] *
                    (std::fabs(dout[i] * w[size_t(k)]) + s1 / c.C + std::fabs(xh) * s2 / c.C);
      }
    }
    EXPECT_TRUE(bt::all_close("layernorm dinp (+=)", down(dinp), bt::add(dinp0, ddinp),
                              Tol{1e-5, 1e-5 * bt::max_abs(ddinp) + 1e-7, 1e-6}, &mdinp));
    EXPECT_TRUE(bt::all_close("layernorm dweight (+=)", down(dw), bt::add(dw0, ddw),
                              Tol{1e-6, 1e-7, 1e-5}, &mdw));
    EXPECT_TRUE(bt::all_close("layernorm dbias (+=)", down(db), bt::add(db0, ddb),
                              Tol{1e-6, 1e-7, 1e-5}, &mdb));
  }
}

// ---- linear ---------------------------------------------------------------------------------

TEST_P(BackendConformance, Linear) {
  struct Case { int N, C, OC; bool bias; };
  bt::Rng rng(4);
  for (Case c : {Case{1, 1, 1, true}, Case{7, 3, 5, false}, Case{13, 17, 67, true},
                 Case{33, 64, 96, true}, Case{5, 96, 288, false}, Case{16, 768, 101, true},
                 Case{65, 3, 1, true}}) {
    SCOPED_TRACE(str({{"N", c.N}, {"C", c.C}, {"OC", c.OC}, {"bias", c.bias}}));
    Vec inp = rng.normal(size_t(c.N) * c.C), w = rng.normal(size_t(c.OC) * c.C, 0.2);
    Vec bias = rng.normal(size_t(c.OC));
    Tensor inp_t = up({c.N, c.C}, inp), w_t = up({c.OC, c.C}, w);
    Tensor bias_t = c.bias ? up({c.OC}, bias) : Tensor{};

    Tensor out = nan_tensor({c.N, c.OC});
    be().linear_forward(out, inp_t, w_t, bias_t);
    Vec rout, mout;
    ref::linear_forward(rout, inp, w, c.bias ? &bias : nullptr, c.N, c.C, c.OC);
    const Vec abias = bt::abs_of(bias);
    ref::linear_forward(mout, bt::abs_of(inp), bt::abs_of(w), c.bias ? &abias : nullptr, c.N, c.C, c.OC);
    EXPECT_TRUE(bt::all_close("linear out", down(out), rout, Tol{1e-6, 1e-7, 1e-5}, &mout));

    // backward: dinp =, dweight +=, dbias +=
    Vec dout = rng.normal(size_t(c.N) * c.OC);
    Vec dw0 = rng.normal(w.size()), db0 = rng.normal(size_t(c.OC));
    Tensor dinp = nan_tensor({c.N, c.C}), dw = up({c.OC, c.C}, dw0), db = up({c.OC}, db0);
    Tensor dout_t = up({c.N, c.OC}, dout);
    be().linear_backward(dinp, dw, db, dout_t, inp_t, w_t);
    Vec rdinp(inp.size(), 0.0), rdw = dw0, rdb = db0;
    ref::linear_backward(&rdinp, rdw, &rdb, dout, inp, w, c.N, c.C, c.OC);
    Vec mdinp(inp.size(), 0.0), mdw = bt::abs_of(dw0), mdb = bt::abs_of(db0);
    ref::linear_backward(&mdinp, mdw, &mdb, bt::abs_of(dout), bt::abs_of(inp), bt::abs_of(w), c.N,
                         c.C, c.OC);
    EXPECT_TRUE(bt::all_close("linear dinp (=)", down(dinp), rdinp, Tol{1e-6, 1e-7, 1e-5}, &mdinp));
    EXPECT_TRUE(bt::all_close("linear dweight (+=)", down(dw), rdw, Tol{1e-6, 1e-7, 1e-5}, &mdw));
    const Vec gdb1 = down(db);
    EXPECT_TRUE(bt::all_close("linear dbias (+=)", gdb1, rdb, Tol{1e-6, 1e-7, 1e-5}, &mdb));

    // undefined dinp and dbias: only dweight is produced (accumulating a second time)
    be().linear_backward(Tensor{}, dw, Tensor{}, dout_t, inp_t, w_t);
    Vec rdw2 = rdw, mdw2 = mdw;
    ref::linear_backward(nullptr, rdw2, nullptr, dout, inp, w, c.N, c.C, c.OC);
    ref::linear_backward(nullptr, mdw2, nullptr, bt::abs_of(dout), bt::abs_of(inp), bt::abs_of(w),
                         c.N, c.C, c.OC);
    EXPECT_TRUE(bt::all_close("linear dweight (+=, dinp/dbias undefined)", down(dw), rdw2,
                              Tol{1e-6, 1e-7, 1e-5}, &mdw2));
    EXPECT_TRUE(bt::all_equal("linear dbias untouched by the call without it", down(db), gdb1));
  }
}

// ---- gelu -----------------------------------------------------------------------------------

TEST_P(BackendConformance, Gelu) {
  bt::Rng rng(5);
  for (int64_t n : {1, 7, 1003, 40000}) {
    SCOPED_TRACE(str({{"n", n}}));
    Vec x = rng.normal(size_t(n), 2.5);
    const double special[] = {0.0, 1e-3, -1e-3, 3, -3, 5, -5, 10, -10, 20, -20, 0.5, -0.5};
    for (size_t i = 0; i < std::size(special) && i < x.size(); ++i) x[i] = special[i];
    Tensor xt = up({n}, x);

    Tensor out = nan_tensor({n});
    be().gelu_forward(out, xt);
    Vec rout;
    ref::gelu_forward(rout, x);
    // fp32 tanh near +-1 carries ~1e-7 absolute error, times 0.5|x|
    const Vec mx = bt::abs_of(x);
    EXPECT_TRUE(bt::all_close("gelu out", down(out), rout, Tol{1e-5, 1e-7, 1e-6}, &mx));

    // backward (=) into a separate buffer, then with dinp aliasing dout.
    // Conditioning: gelu' = 0.5(1+th) + 0.5 x (1-th^2) u'(x); 1-th^2 in fp32 carries ~1e-7
    // absolute error, amplified by 0.5|x| u'(x).
    Vec dout = rng.normal(size_t(n));
    Vec rd(static_cast<size_t>(n), 0.0), md(static_cast<size_t>(n));
    ref::gelu_backward(rd, x, dout);
    for (size_t i = 0; i < size_t(n); ++i)
      md[i] = std::fabs(dout[i]) * (1.0 + 0.5 * std::fabs(x[i]) * 0.7978845608 * (1.0 + 0.134145 * x[i] * x[i]));
    Tensor dinp = nan_tensor({n});
    Tensor dout_t = up({n}, dout);
    be().gelu_backward(dinp, xt, dout_t);
    EXPECT_TRUE(bt::all_close("gelu dinp (=)", down(dinp), rd, Tol{1e-5, 1e-7, 1e-6}, &md));
    be().gelu_backward(dout_t, xt, dout_t);
    EXPECT_TRUE(bt::all_close("gelu dinp aliasing dout", down(dout_t), rd, Tol{1e-5, 1e-7, 1e-6}, &md));
  }
}

// ---- residual -------------------------------------------------------------------------------

TEST_P(BackendConformance, Residual) {
  bt::Rng rng(6);
  for (Shape s : {Shape{1}, Shape{7}, Shape{3, 7, 17}, Shape{1003}, Shape{40000}}) {
    SCOPED_TRACE("shape " + llm::shape_str(s));
    const size_t n = size_t(llm::numel(s));
    Vec a = rng.normal(n), b = rng.normal(n);
    Vec r;
    ref::residual_forward(r, a, b);
    const Tol tol{1e-7, 1e-30};  // a + b is one correctly rounded fp32 add

    Tensor out = nan_tensor(s);
    be().residual_forward(out, up(s, a), up(s, b));
    EXPECT_TRUE(bt::all_close("residual out", down(out), r, tol));
    Tensor at = up(s, a), bt_ = up(s, b);
    be().residual_forward(at, at, bt_);
    EXPECT_TRUE(bt::all_close("residual out aliasing a", down(at), r, tol));
    at = up(s, a);
    be().residual_forward(bt_, at, bt_);
    EXPECT_TRUE(bt::all_close("residual out aliasing b", down(bt_), r, tol));

    // backward: da += dout, db += dout
    Vec dout = rng.normal(n), da0 = rng.normal(n), db0 = rng.normal(n);
    Tensor da = up(s, da0), db = up(s, db0);
    be().residual_backward(da, db, up(s, dout));
    Vec rda = da0, rdb = db0;
    ref::residual_backward(rda, rdb, dout);
    EXPECT_TRUE(bt::all_close("residual da (+=)", down(da), rda, tol));
    EXPECT_TRUE(bt::all_close("residual db (+=)", down(db), rdb, tol));
  }
  // One buffer as both da and db would take dout once or twice by the path (the CUDA packs read
  // both before writing, the scalar loop and the CPU add twice): refused, nothing written.
  Tensor d = up({8, 5}, Vec(40, 1.0));
  try {
    be().residual_backward(d, d, up({8, 5}, Vec(40, 2.0)));
    ADD_FAILURE() << "residual_backward accepted da and db in one buffer";
  } catch (const llm::Error& e) {
    EXPECT_NE(std::string(e.what()).find("residual_backward da/db: the two outputs overlap"), std::string::npos)
        << e.what();
  }
  EXPECT_TRUE(bt::all_close("da/db untouched", down(d), Vec(40, 1.0), Tol{0, 0}));
  Tensor whole = up({2, 40}, Vec(80, 1.0));
  EXPECT_THROW(be().residual_backward(whole.flat(0, 40).view({8, 5}), whole.flat(20, 40).view({8, 5}),
                                      up({8, 5}, Vec(40, 2.0))),
               llm::Error)
      << "half-overlapping views";
  be().residual_backward(whole.flat(0, 40).view({8, 5}), whole.flat(40, 40).view({8, 5}), up({8, 5}, Vec(40, 2.0)));
  EXPECT_TRUE(bt::all_close("adjacent views", down(whole), Vec(80, 3.0), Tol{0, 0}));
}

// An empty last dimension has no rows to count: every op that divides by it refuses it by name
// (before, a division by zero ended the process with SIGFPE).
TEST_P(BackendConformance, EmptyLastDimensionIsRefused) {
  auto refused = [](const char* what, const std::function<void()>& f, const char* expect) {
    try {
      f();
      ADD_FAILURE() << what << ": accepted";
    } catch (const llm::Error& e) {
      EXPECT_NE(std::string(e.what()).find(expect), std::string::npos) << what << ": " << e.what();
    }
  };
  Tensor x = up({4, 0}, {}), w0 = up({0}, {}), mean = up({4}, Vec(4, 0)), rstd = up({4}, Vec(4, 0));
  refused("layernorm_forward", [&] { be().layernorm_forward(x, mean, rstd, x, w0, w0, 1e-5f); },
          "layernorm_forward inp: the last dimension must not be empty");
  refused("layernorm_backward", [&] { be().layernorm_backward(x, w0, w0, x, x, w0, mean, rstd); },
          "layernorm_backward inp: the last dimension must not be empty");
  Tensor wt = up({3, 0}, {}), out3 = up({4, 3}, Vec(12, 0));
  refused("linear_forward C = 0", [&] { be().linear_forward(out3, x, wt, Tensor()); }, "the last dimension must not be empty");
  refused("linear_backward C = 0", [&] { be().linear_backward(x, up({3, 0}, {}), Tensor(), out3, x, wt); },
          "the last dimension must not be empty");
  Tensor in5 = up({4, 5}, Vec(20, 1.0)), wo = up({0, 5}, {});
  refused("linear_forward OC = 0", [&] { be().linear_forward(x, in5, wo, Tensor()); }, "no output features");
  refused("linear_backward OC = 0", [&] { be().linear_backward(in5, up({0, 5}, {}), Tensor(), x, in5, wo); },
          "no output features");
  Tensor targets = up_i32({4}, IVec(4, 0)), losses = up({4}, Vec(4, 0));
  refused("cross_entropy_forward", [&] { be().cross_entropy_forward(losses, mean, x, targets, 8, 0); },
          "cross_entropy_forward: the last dimension must not be empty");
  refused("cross_entropy_backward", [&] { be().cross_entropy_backward(x, x, mean, targets, 1.0f, 8, 0); },
          "cross_entropy_backward: the last dimension must not be empty");
}

// ---- attention ------------------------------------------------------------------------------

struct AttnCase {
  int B, T, NH, hd;
  double qk_sd;  // std of q and k; scores have std qk_sd^2
};

void check_attention(llm::Backend& be, const AttnCase& c, uint64_t seed) {
  SCOPED_TRACE(str({{"B", c.B}, {"T", c.T}, {"NH", c.NH}, {"hd", c.hd}}) +
               " qk_sd=" + std::to_string(c.qk_sd));
  bt::Rng rng(seed);
  const int C = c.NH * c.hd;
  const size_t rows = size_t(c.B) * c.T;
  // q and k drawn with std qk_sd, v standard normal
  Vec qkv(rows * 3 * C);
  {
    Vec q = rng.normal(rows * C, c.qk_sd), k = rng.normal(rows * C, c.qk_sd), v = rng.normal(rows * C);
    for (size_t r = 0; r < rows; ++r)
      for (int j = 0; j < C; ++j) {
        qkv[r * 3 * C + j] = q[r * C + j];
        qkv[r * 3 * C + C + j] = k[r * C + j];
        qkv[r * 3 * C + 2 * C + j] = v[r * C + j];
      }
  }
  const bool peaky = c.qk_sd > 2;  // scores far beyond exp's fp32 range: tests max subtraction
  auto up = [&](const Shape& s, const Vec& v) { return be.upload(bt::host_f32(s, v)); };
  auto down = [&](const Tensor& t) {
    be.synchronize();
    return bt::to_vec(be.download(t));
  };
  auto nan_t = [&](const Shape& s) { return up(s, bt::constant(size_t(llm::numel(s)), bt::kNaN)); };

  Tensor qkv_t = up({c.B, c.T, 3 * C}, qkv);
  Tensor out = nan_t({c.B, c.T, C}), lse = nan_t({c.B, c.NH, c.T});
  be.attention_forward(out, lse, qkv_t, c.NH);
  Vec rout, rlse;
  ref::attention_forward(rout, rlse, qkv, c.B, c.T, C, c.NH);
  // out is a convex combination of v (|v| <~ 5): absolute error ~ u * |scores| * |v|.
  const double score_max = [&] {
    double m = 0;
    for (double l : rlse) m = std::max(m, std::fabs(l));
    return m;
  }();
  EXPECT_TRUE(bt::all_close("attention out", down(out), rout,
                            peaky ? Tol{1e-4, 2e-6 * score_max} : Tol{1e-4, 2e-5}));
  EXPECT_TRUE(bt::all_close("attention lse", down(lse), rlse, Tol{1e-5, 1e-5}));

  // backward (=): fed the reference's out and lse rounded to float
  Vec dout = rng.normal(rows * C);
  Tensor dqkv = nan_t({c.B, c.T, 3 * C});
  be.attention_backward(dqkv, up({c.B, c.T, C}, dout), qkv_t, up({c.B, c.T, C}, rout),
                        up({c.B, c.NH, c.T}, rlse), c.NH);
  Vec rdqkv(qkv.size(), 0.0);
  ref::attention_backward(rdqkv, dout, qkv, c.B, c.T, C, c.NH);
  const Vec got = down(dqkv);
  const char* names[3] = {"attention dq", "attention dk", "attention dv"};
  for (int part = 0; part < 3; ++part) {
    Vec g = bt::columns(got, rows, 3 * size_t(C), size_t(part) * C, C);
    Vec r = bt::columns(rdqkv, rows, 3 * size_t(C), size_t(part) * C, C);
    // normwise per part: each element is a sum over up to T terms of similar size
    const Tol tol = peaky ? Tol{1e-3, 2e-6 * score_max * bt::max_abs(r)}
                          : Tol{1e-4, 2e-5 * bt::max_abs(r) + 1e-7};
    EXPECT_TRUE(bt::all_close(names[part], g, r, tol));
  }
}

TEST_P(BackendConformance, Attention) {
  uint64_t seed = 70;
  for (AttnCase c : {AttnCase{1, 1, 1, 8, 1}, AttnCase{2, 7, 2, 8, 1}, AttnCase{1, 65, 3, 16, 1},
                     AttnCase{2, 130, 4, 16, 1}, AttnCase{1, 33, 2, 64, 1},
                     AttnCase{1, 130, 1, 64, 1}, AttnCase{3, 17, 4, 8, 1.5},
                     AttnCase{1, 65, 2, 16, 7}})
    check_attention(be(), c, seed++);
}

TEST_P(BackendConformance, AttentionLongSequence) {
  check_attention(be(), AttnCase{1, 300, 2, 64, 1}, 90);
}

// lse must be the log-sum-exp of the scaled, causally masked scores, computed directly here
// (not through the reference's softmax).
TEST_P(BackendConformance, AttentionLseIsMaskedLogSumExp) {
  const int B = 2, T = 300, NH = 2, hd = 64, C = NH * hd;
  bt::Rng rng(91);
  Vec qkv = rng.normal(size_t(B) * T * 3 * C);
  Tensor out = nan_tensor({B, T, C}), lse = nan_tensor({B, NH, T});
  be().attention_forward(out, lse, up({B, T, 3 * C}, qkv), NH);
  const Vec got = down(lse);
  Vec expect(got.size());
  for (int b = 0; b < B; ++b)
    for (int h = 0; h < NH; ++h)
      for (int t = 0; t < T; ++t) {
        std::vector<double> s;
        for (int j = 0; j <= t; ++j) {
          double d = 0;
          for (int k = 0; k < hd; ++k)
            d += qkv[(size_t(b) * T + t) * 3 * C + h * hd + k] *
                 qkv[(size_t(b) * T + j) * 3 * C + C + h * hd + k];
          s.push_back(d / std::sqrt(double(hd)));
        }
        const double mx = *std::max_element(s.begin(), s.end());
        double sum = 0;
        for (double v : s) sum += std::exp(v - mx);
        expect[(size_t(b) * NH + h) * T + t] = mx + std::log(sum);
      }
  EXPECT_TRUE(bt::all_close("attention lse vs direct masked log-sum-exp", got, expect, Tol{1e-5, 1e-5}));
}

// ---- cross-entropy --------------------------------------------------------------------------

TEST_P(BackendConformance, CrossEntropy) {
  struct Case { int N, V, Vp; double sd, offset; };
  bt::Rng rng(8);
  for (Case c : {Case{1, 1, 1, 1, 0}, Case{3, 5, 8, 1, 0}, Case{7, 50, 64, 2, 0},
                 Case{9, 37, 37, 1, 0}, Case{33, 1000, 1024, 3, 0}, Case{5, 50257, 50304, 1, 0},
                 Case{8, 300, 320, 3, 100}, Case{6, 301, 320, 1, -100}}) {
    SCOPED_TRACE(str({{"N", c.N}, {"V", c.V}, {"Vp", c.Vp}}) + " sd=" + std::to_string(c.sd) +
                 " offset=" + std::to_string(c.offset));
    const size_t NV = size_t(c.N) * c.Vp;
    Vec logits = rng.normal(NV, c.sd, c.offset);
    // padding columns hold large values that would dominate the softmax if not ignored
    Vec pad = rng.normal(NV, 1.0, 30.0 + std::fabs(c.offset));
    for (int n = 0; n < c.N; ++n)
      for (int j = c.V; j < c.Vp; ++j) logits[size_t(n) * c.Vp + j] = pad[size_t(n) * c.Vp + j];
    IVec targets = rng.below(size_t(c.N), c.V);
    targets[0] = c.V - 1;
    for (int n = 1; n < c.N; n += 3) targets[size_t(n)] = -1;  // ignored rows
    if (c.N > 2) targets[2] = 0;
    double max_logit = 0;
    for (int n = 0; n < c.N; ++n)
      for (int j = 0; j < c.V; ++j) max_logit = std::max(max_logit, std::fabs(logits[size_t(n) * c.Vp + j]));

    Tensor lg = up({c.N, c.Vp}, logits), tg = up_i32({c.N}, targets);
    Tensor losses = nan_tensor({c.N}), lse = nan_tensor({c.N});
    be().cross_entropy_forward(losses, lse, lg, tg, c.V);
    Vec rloss, rlse;
    ref::cross_entropy_forward(rloss, rlse, logits, targets, c.N, c.Vp, c.V);
    // loss = lse - x[t]: fp32 error ~ u (|lse| + |x|) plus the V-term sum's relative error
    const Tol ltol{1e-5, 2e-5 + 1e-6 * max_logit};
    const Vec gl = down(losses), glse = down(lse);
    EXPECT_TRUE(bt::all_close("cross-entropy losses", gl, rloss, ltol));
    Vec glse_valid, rlse_valid;
    for (int n = 0; n < c.N; ++n) {
      if (targets[size_t(n)] < 0) {
        EXPECT_EQ(gl[size_t(n)], 0.0) << "ignored row " << n << " must have loss exactly 0";
      } else {
        glse_valid.push_back(glse[size_t(n)]);
        rlse_valid.push_back(rlse[size_t(n)]);
      }
    }
    EXPECT_TRUE(bt::all_close("cross-entropy lse (rows with a target)", glse_valid, rlse_valid, ltol));

    // backward (=), separate buffer and in place over the logits
    const float dloss = 0.731f;
    Vec rd(NV, 0.0);
    ref::cross_entropy_backward(rd, logits, targets, double(dloss), c.N, c.Vp, c.V);
    // softmax = exp(x - lse): relative error ~ u (|x| + |lse|)
    const Tol dtol{2e-5 + 1e-6 * max_logit, 1e-9};
    const Vec rlse_f = rounded(rlse);
    auto check_grad = [&](const std::string& what, const Vec& g) {
      EXPECT_TRUE(bt::all_close(what, g, rd, dtol));
      for (int n = 0; n < c.N; ++n)
        for (int j = 0; j < c.Vp; ++j)
          if (j >= c.V || targets[size_t(n)] < 0) {
            const double v = g[size_t(n) * c.Vp + j];
            if (v != 0.0) {
              ADD_FAILURE() << what << ": dlogits[" << n << ", " << j << "] = " << v
                            << ", expected exactly 0 (" << (j >= c.V ? "padding column" : "ignored row")
                            << ")";
              return;
            }
          }
    };
    Tensor dl = nan_tensor({c.N, c.Vp});
    be().cross_entropy_backward(dl, lg, up({c.N}, rlse_f), tg, dloss, c.V);
    check_grad("cross-entropy dlogits (=)", down(dl));
    Tensor inplace = up({c.N, c.Vp}, logits);
    be().cross_entropy_backward(inplace, inplace, up({c.N}, rlse_f), tg, dloss, c.V);
    check_grad("cross-entropy dlogits in place (aliasing logits)", down(inplace));
  }
}

// A NaN or +inf among a row's real columns makes its lse NaN (and its loss, unless the row is
// ignored), wherever it sits: the first column, one a thread meets first or last, the last real
// one; a non-finite value in the padding columns changes nothing. Training relies on it: a
// finite loss means finite logits (the CUDA kernel once lost a NaN its thread met first).
TEST_P(BackendConformance, CrossEntropyNonFiniteLogits) {
  bt::Rng rng(10);
  for (auto [V, Vp] : {std::pair{300, 320}, std::pair{5000, 5120}}) {
    SCOPED_TRACE("V=" + std::to_string(V) + " Vp=" + std::to_string(Vp));
    struct Row { int col; double value; int target; };  // col < 0: a clean row
    const std::vector<Row> rows = {
        {-1, 0, 3},         {0, NAN, 7},        {1, NAN, 2},           {V / 2, NAN, V - 1}, {V - 1, NAN, 0},
        {513, NAN, 1},      {V - 1, INFINITY, 4}, {0, INFINITY, 0},    {5, NAN, -1},        {-1, 0, -1},
        {Vp - 1, NAN, 9},   {V, INFINITY, 11}};  // the last two: padding columns, ignored
    const int N = static_cast<int>(rows.size());
    Vec logits = rng.normal(size_t(N) * Vp, 2.0);
    IVec targets(static_cast<size_t>(N), 0);
    for (int n = 0; n < N; ++n) {
      const Row& r = rows[size_t(n)];
      targets[size_t(n)] = r.target;
      if (r.col >= 0 && r.col < Vp) logits[size_t(n) * Vp + size_t(r.col)] = r.value;
    }
    Tensor losses = nan_tensor({N}), lse = nan_tensor({N});
    be().cross_entropy_forward(losses, lse, up({N, Vp}, logits), up_i32({N}, targets), V);
    const Vec gl = down(losses), glse = down(lse);
    Vec rloss, rlse;
    ref::cross_entropy_forward(rloss, rlse, logits, targets, N, Vp, V);
    for (int n = 0; n < N; ++n) {
      const Row& r = rows[size_t(n)];
      SCOPED_TRACE("row " + std::to_string(n) + ": column " + std::to_string(r.col) + " = " + std::to_string(r.value));
      const bool bad = r.col >= 0 && r.col < V;
      if (bad) {
        EXPECT_TRUE(std::isnan(glse[size_t(n)])) << "lse " << glse[size_t(n)];
        if (r.target >= 0) {
          EXPECT_TRUE(std::isnan(gl[size_t(n)])) << "loss " << gl[size_t(n)];
        }
      } else {
        EXPECT_NEAR(glse[size_t(n)], rlse[size_t(n)], 1e-5 * (1 + std::fabs(rlse[size_t(n)])));
      }
      if (r.target < 0) {
        EXPECT_EQ(gl[size_t(n)], 0.0) << "an ignored row's loss is exactly 0";
      } else if (!bad) {
        EXPECT_NEAR(gl[size_t(n)], rloss[size_t(n)], 1e-5 * (1 + std::fabs(rloss[size_t(n)])));
      }
    }
  }
}

// Forward then backward with the backend's own lse, in place: the training path.
TEST_P(BackendConformance, CrossEntropyFusedTrainingPath) {
  const int N = 17, V = 501, Vp = 512;
  bt::Rng rng(9);
  Vec logits = rng.normal(size_t(N) * Vp, 2.0);
  IVec targets = rng.below(size_t(N), V);
  targets[5] = -1;
  Tensor lg = up({N, Vp}, logits), tg = up_i32({N}, targets);
  Tensor losses = nan_tensor({N}), lse = nan_tensor({N});
  be().cross_entropy_forward(losses, lse, lg, tg, V);
  const float dloss = 1.0f / N;
  be().cross_entropy_backward(lg, lg, lse, tg, dloss, V);
  Vec rd(logits.size(), 0.0);
  ref::cross_entropy_backward(rd, logits, targets, double(dloss), N, Vp, V);
  EXPECT_TRUE(bt::all_close("cross-entropy fused dlogits", down(lg), rd, Tol{3e-5, 1e-10}));
}

// Vocab-parallel cross-entropy: the shards' lse combine (log-sum-exp) into the full lse, lse -
// losses is the target logit on its owner and exactly 0 elsewhere, and backward with the global
// lse gives each shard its columns of the unsharded dlogits (the last shard holds padding).
TEST_P(BackendConformance, CrossEntropyVocabShards) {
  const int N = 13, V = 170, Vp = 192;
  bt::Rng rng(22);
  Vec logits = rng.normal(size_t(N) * Vp, 2.0);
  for (int n = 0; n < N; ++n)
    for (int j = V; j < Vp; ++j) logits[size_t(n) * Vp + j] = 40.0;  // padding must be ignored
  IVec targets = rng.below(size_t(N), V);
  targets[0] = V - 1, targets[1] = 0, targets[2] = 63, targets[3] = 64, targets[4] = -1;
  Vec rloss, rlse;
  ref::cross_entropy_forward(rloss, rlse, logits, targets, N, Vp, V);
  const float dloss = 0.37f;
  Vec rd(logits.size(), 0.0);
  ref::cross_entropy_backward(rd, logits, targets, double(dloss), N, Vp, V);
  Tensor tg = up_i32({N}, targets);
  for (int shards : {2, 3}) {
    SCOPED_TRACE(str({{"shards", shards}}));
    const int Vl = Vp / shards;
    std::vector<Vec> lses, tlogit, shard_losses;
    std::vector<Tensor> parts;
    for (int r = 0; r < shards; ++r) {
      Vec part;
      for (int n = 0; n < N; ++n)
        part.insert(part.end(), logits.begin() + size_t(n) * Vp + size_t(r) * Vl,
                    logits.begin() + size_t(n) * Vp + size_t(r + 1) * Vl);
      parts.push_back(up({N, Vl}, part));
      Tensor losses = nan_tensor({N}), lse = nan_tensor({N});
      be().cross_entropy_forward(losses, lse, parts.back(), tg, V, int64_t(r) * Vl);
      const Vec l = down(losses), s = down(lse);
      Vec t(static_cast<size_t>(N));
      for (int n = 0; n < N; ++n) {
        t[size_t(n)] = targets[size_t(n)] < 0 ? 0.0 : s[size_t(n)] - l[size_t(n)];
        const bool owner = targets[size_t(n)] >= r * Vl && targets[size_t(n)] < (r + 1) * Vl;
        if (!owner) {
          EXPECT_EQ(t[size_t(n)], 0.0) << "row " << n << " on shard " << r;
        }
      }
      lses.push_back(s);
      tlogit.push_back(t);
      shard_losses.push_back(l);
    }
    Vec lse(static_cast<size_t>(N)), loss(static_cast<size_t>(N));
    for (int n = 0; n < N; ++n) {
      double m = -INFINITY, acc = 0, x = 0;
      for (int r = 0; r < shards; ++r) m = std::max(m, lses[size_t(r)][size_t(n)]);
      for (int r = 0; r < shards; ++r) acc += std::exp(lses[size_t(r)][size_t(n)] - m), x += tlogit[size_t(r)][size_t(n)];
      lse[size_t(n)] = m + std::log(acc);
      loss[size_t(n)] = targets[size_t(n)] < 0 ? 0.0 : lse[size_t(n)] - x;
    }
    EXPECT_TRUE(bt::all_close("combined losses", loss, rloss, Tol{1e-5, 5e-5}));
    // ... and the backend's own combine of the shards' outputs ([P, N] each), written into row
    // slices of larger buffers as the model's chunks are
    Vec all_lse, all_loss;
    for (int r = 0; r < shards; ++r) {
      all_lse.insert(all_lse.end(), lses[size_t(r)].begin(), lses[size_t(r)].end());
      all_loss.insert(all_loss.end(), shard_losses[size_t(r)].begin(), shard_losses[size_t(r)].end());
    }
    Tensor closs = nan_tensor({N + 5}), clse = nan_tensor({N + 5});
    be().cross_entropy_combine(closs.slice(0, 3, N), clse.slice(0, 3, N), up({shards, N}, all_lse),
                               up({shards, N}, all_loss), tg, Vl);
    const Vec got_lse = down(clse), got_loss = down(closs);
    EXPECT_TRUE(bt::all_close("cross_entropy_combine lse", Vec(got_lse.begin() + 3, got_lse.begin() + 3 + N), rlse,
                              Tol{1e-5, 5e-5}));
    EXPECT_TRUE(bt::all_close("cross_entropy_combine losses", Vec(got_loss.begin() + 3, got_loss.begin() + 3 + N),
                              rloss, Tol{1e-5, 5e-5}));
    EXPECT_EQ(got_loss[3 + 4], 0.0) << "an ignored row's loss";
    for (int i : {0, 1, 2, N + 3, N + 4}) EXPECT_TRUE(std::isnan(got_loss[size_t(i)])) << "outside the slice: " << i;
    const Tensor glob = up({N}, rounded(rlse));
    for (int r = 0; r < shards; ++r) {
      be().cross_entropy_backward(parts[size_t(r)], parts[size_t(r)], glob, tg, dloss, V, int64_t(r) * Vl);
      Vec want;
      for (int n = 0; n < N; ++n)
        want.insert(want.end(), rd.begin() + size_t(n) * Vp + size_t(r) * Vl, rd.begin() + size_t(n) * Vp + size_t(r + 1) * Vl);
      EXPECT_TRUE(bt::all_close("shard dlogits", down(parts[size_t(r)]), want, Tol{3e-5, 1e-10}));
    }
  }
}

// ---- optimizer and reductions ---------------------------------------------------------------

TEST_P(BackendConformance, AdamW) {
  struct Case { llm::AdamWParams p; int64_t n; bool warm_state; };
  auto make = [](float lr, float b1, float b2, float eps, float wd, int64_t step, float gs) {
    llm::AdamWParams p;
    p.lr = lr; p.beta1 = b1; p.beta2 = b2; p.eps = eps; p.weight_decay = wd; p.step = step;
    p.grad_scale = gs;
    return p;
  };
  bt::Rng rng(10);
  const int steps = 5;
  for (Case c : {Case{make(1e-2f, 0.9f, 0.95f, 1e-8f, 0.1f, 1, 0.5f), 1003, false},
                 Case{make(3e-4f, 0.9f, 0.999f, 1e-8f, 0.0f, 1, 1.0f), 1, false},
                 Case{make(1e-3f, 0.8f, 0.95f, 1e-6f, 0.01f, 1, 2.0f), 7, false},
                 Case{make(5e-3f, 0.9f, 0.95f, 1e-8f, 0.1f, 1000, 0.25f), 40009, true}}) {
    SCOPED_TRACE(str({{"n", c.n}, {"step0", c.p.step}}) + " lr=" + std::to_string(c.p.lr) +
                 " wd=" + std::to_string(c.p.weight_decay) + " grad_scale=" + std::to_string(c.p.grad_scale));
    const size_t n = size_t(c.n);
    Vec p = rng.normal(n), m = c.warm_state ? rng.normal(n, 0.01) : Vec(n, 0.0);
    Vec v = c.warm_state ? rng.uniform(n, 1e-6, 1e-3) : Vec(n, 0.0);
    Tensor pt = up({c.n}, p), mt = up({c.n}, m), vt = up({c.n}, v);
    llm::AdamWParams ap = c.p;
    for (int s = 0; s < steps; ++s, ++ap.step) {
      SCOPED_TRACE("step " + std::to_string(ap.step));
      Vec g = rng.normal(n, s % 2 ? 3.0 : 0.1);
      Tensor gt = up({c.n}, g);
      be().adamw_update(pt, gt, mt, vt, ap);
      ref::adamw_update(p, g, m, v, ap);
      EXPECT_TRUE(bt::all_equal("adamw leaves grad untouched", down(gt), g));
      // m and v are running sums; m can cancel to ~0, so its error is relative to max |m|
      EXPECT_TRUE(bt::all_close("adamw m", down(mt), m, Tol{1e-5, 2e-6 * bt::max_abs(m)}));
      EXPECT_TRUE(bt::all_close("adamw v", down(vt), v, Tol{1e-5, 1e-12}));
      // each step moves p by ~lr; p carries one fp32 rounding per step
      EXPECT_TRUE(bt::all_close("adamw param", down(pt), p, Tol{1e-6, 1e-4 * double(ap.lr)}));
    }
  }
}

TEST_P(BackendConformance, SumSquaresAndScale) {
  bt::Rng rng(11);
  for (int64_t n : {1, 3, 17, 1003, 100003}) {
    SCOPED_TRACE(str({{"n", n}}));
    Vec x = rng.normal(size_t(n), 2.0, 0.5);
    Tensor xt = up({n}, x);
    const double got = be().sum_squares(xt);
    const double expect = ref::sum_squares(x);
    // fp32 products/partials inside: relative error well below 1e-5 for positive terms
    EXPECT_LE(std::fabs(got - expect), 1e-5 * expect)
        << "sum_squares got " << got << ", reference " << expect;
    const float s = -0.37f;
    be().scale(xt, s);
    Vec r = x;
    ref::scale(r, double(s));
    EXPECT_TRUE(bt::all_close("scale", down(xt), r, Tol{1e-7, 1e-30}));
  }
  // A 2-D tensor and an all-zero tensor
  Vec x = rng.normal(6 * 7);
  EXPECT_NEAR(be().sum_squares(up({6, 7}, x)), ref::sum_squares(x), 1e-5 * ref::sum_squares(x));
  EXPECT_EQ(be().sum_squares(be().zeros({5})), 0.0);
}

// Ops on windows of one flat buffer (how parameters and gradients are laid out), at offsets that
// are not multiples of any vector width: results land in the window and nothing outside moves.
TEST_P(BackendConformance, OpsOnFlatBufferWindows) {
  bt::Rng rng(12);
  const int64_t total = 5000, off = 3, n = 1003;
  auto window_check = [&](const std::string& what, const Vec& got_all, const Vec& before_all,
                          const Vec& ref_window, Tol tol) {
    EXPECT_TRUE(bt::all_close(what + " (window)", Vec(got_all.begin() + off, got_all.begin() + off + n),
                              ref_window, tol));
    Vec outside_got(got_all.begin(), got_all.begin() + off), outside_ref(before_all.begin(), before_all.begin() + off);
    outside_got.insert(outside_got.end(), got_all.begin() + off + n, got_all.end());
    outside_ref.insert(outside_ref.end(), before_all.begin() + off + n, before_all.end());
    EXPECT_TRUE(bt::all_equal(what + " (outside the window untouched)", outside_got, outside_ref));
  };
  auto win = [&](const Vec& all) { return Vec(all.begin() + off, all.begin() + off + n); };

  // adamw on windows of four separate buffers
  Vec P = rng.normal(total), G = rng.normal(total), M(total, 0.0), V(total, 0.0);
  Tensor pb = up({total}, P), gb = up({total}, G), mb = up({total}, M), vb = up({total}, V);
  llm::AdamWParams ap;
  ap.lr = 1e-2f;
  ap.weight_decay = 0.1f;
  be().adamw_update(pb.flat(off, n), gb.flat(off, n), mb.flat(off, n), vb.flat(off, n), ap);
  Vec p = win(P), m = win(M), v = win(V);
  ref::adamw_update(p, win(G), m, v, ap);
  window_check("adamw param", down(pb), P, p, Tol{1e-6, 1e-6});
  window_check("adamw m", down(mb), M, m, Tol{1e-5, 2e-6 * bt::max_abs(m)});
  window_check("adamw v", down(vb), V, v, Tol{1e-5, 1e-12});

  // sum_squares and scale on a window
  Vec X = rng.normal(total);
  Tensor xb = up({total}, X);
  const double ss = be().sum_squares(xb.flat(off, n));
  EXPECT_NEAR(ss, ref::sum_squares(win(X)), 1e-5 * ref::sum_squares(win(X)));
  be().scale(xb.flat(off, n), 0.5f);
  Vec xs = win(X);
  ref::scale(xs, 0.5);
  window_check("scale", down(xb), X, xs, Tol{1e-7, 1e-30});

  // gelu and residual writing into a window
  Vec Y = rng.normal(total);
  Tensor yb = up({total}, Y);
  Vec xin = rng.normal(size_t(n));
  be().gelu_forward(yb.flat(off, n), up({n}, xin));
  Vec rg;
  ref::gelu_forward(rg, xin);
  window_check("gelu out", down(yb), Y, rg, Tol{1e-5, 2e-6});
  Vec Z = rng.normal(total);
  Tensor zb = up({total}, Z);
  Vec a = rng.normal(size_t(n));
  be().residual_forward(zb.flat(off, n), zb.flat(off, n), up({n}, a));
  Vec rr;
  ref::residual_forward(rr, win(Z), a);
  window_check("residual out aliasing a", down(zb), Z, rr, Tol{1e-7, 1e-30});

  // linear_backward accumulating dweight/dbias into views of one gradient buffer
  const int N = 9, C = 17, OC = 13;
  Vec Gbuf = rng.normal(total);
  Tensor gbuf = up({total}, Gbuf);
  const int64_t woff = 5, boff = woff + int64_t(OC) * C + 1;
  Vec inp = rng.normal(size_t(N) * C), w = rng.normal(size_t(OC) * C), dout = rng.normal(size_t(N) * OC);
  be().linear_backward(Tensor{}, gbuf.flat(woff, int64_t(OC) * C).view({OC, C}),
                       gbuf.flat(boff, OC), up({N, OC}, dout), up({N, C}, inp), up({OC, C}, w));
  Vec expect = Gbuf;
  {
    Vec dw(Gbuf.begin() + woff, Gbuf.begin() + woff + OC * C), db(Gbuf.begin() + boff, Gbuf.begin() + boff + OC);
    ref::linear_backward(nullptr, dw, &db, dout, inp, w, N, C, OC);
    std::copy(dw.begin(), dw.end(), expect.begin() + woff);
    std::copy(db.begin(), db.end(), expect.begin() + boff);
  }
  const Vec got = down(gbuf);
  EXPECT_TRUE(bt::all_close("linear dweight/dbias in buffer views", got, expect, Tol{1e-5, 1e-5}));
  EXPECT_EQ(got[size_t(boff - 1)], Gbuf[size_t(boff - 1)]) << "element between the views moved";
}

std::string backend_name(const ::testing::TestParamInfo<llm::Backend*>& info) {
  std::string s = info.param->name();
  for (char& ch : s)
    if (!std::isalnum(static_cast<unsigned char>(ch))) ch = '_';
  return s;
}

INSTANTIATE_TEST_SUITE_P(Backends, BackendConformance, ::testing::ValuesIn(llm::available_backends()),
                         backend_name);

}  // namespace

// ---- attention with a KV cache (generation) -------------------------------------------------

namespace {

// Feeding a sequence in chunks through the KV cache must give the rows of full causal attention
// over the whole sequence, and leave the keys and values in the cache.
void check_attention_kv(llm::Backend& be, int B, int T, int NH, int hd, const std::vector<int>& chunks, uint64_t seed) {
  SCOPED_TRACE(str({{"B", B}, {"T", T}, {"NH", NH}, {"hd", hd}, {"chunks", (long long)chunks.size()}}));
  bt::Rng rng(seed);
  const int C = NH * hd, maxT = T + 3;
  Vec qkv = rng.normal(size_t(B) * T * 3 * C);
  Vec rout, rlse;
  ref::attention_forward(rout, rlse, qkv, B, T, C, NH);
  Tensor kc = be.upload(bt::host_f32({B, maxT, C}, bt::constant(size_t(B) * maxT * C, bt::kNaN)));
  Tensor vc = be.upload(bt::host_f32({B, maxT, C}, bt::constant(size_t(B) * maxT * C, bt::kNaN)));
  int past = 0;
  for (int n : chunks) {
    Vec part, want;
    for (int b = 0; b < B; ++b)
      for (int t = past; t < past + n; ++t) {
        part.insert(part.end(), qkv.begin() + (size_t(b) * T + t) * 3 * C, qkv.begin() + (size_t(b) * T + t + 1) * 3 * C);
        want.insert(want.end(), rout.begin() + (size_t(b) * T + t) * C, rout.begin() + (size_t(b) * T + t + 1) * C);
      }
    Tensor out = be.upload(bt::host_f32({B, n, C}, bt::constant(size_t(B) * n * C, bt::kNaN)));
    be.attention_kv_forward(out, be.upload(bt::host_f32({B, n, 3 * C}, part)), kc, vc, past, NH);
    be.synchronize();
    EXPECT_TRUE(bt::all_close("attention_kv out", bt::to_vec(be.download(out)), want, Tol{1e-4, 2e-5}))
        << "chunk at " << past;
    past += n;
  }
  const Vec k = bt::to_vec(be.download(kc)), v = bt::to_vec(be.download(vc));
  for (int b = 0; b < B; ++b)
    for (int t = 0; t < T; ++t)
      for (int j = 0; j < C; ++j) {
        ASSERT_EQ(k[(size_t(b) * maxT + t) * C + j], float(qkv[(size_t(b) * T + t) * 3 * C + C + j]));
        ASSERT_EQ(v[(size_t(b) * maxT + t) * C + j], float(qkv[(size_t(b) * T + t) * 3 * C + 2 * C + j]));
      }
}

}  // namespace

TEST_P(BackendConformance, AttentionWithKVCache) {
  check_attention_kv(be(), 1, 9, 2, 8, {9}, 200);                // prefill only
  check_attention_kv(be(), 1, 12, 3, 16, {5, 1, 1, 1, 4}, 201);  // prefill, decode, continued prompt
  check_attention_kv(be(), 2, 70, 2, 64, {64, 1, 1, 4}, 202);
  check_attention_kv(be(), 3, 7, 1, 8, {1, 1, 1, 1, 1, 1, 1}, 203);
}

TEST_P(BackendConformance, AttentionWithKVCacheRejectsOverflow) {
  Tensor kc = be().zeros({1, 4, 8}), vc = be().zeros({1, 4, 8});
  Tensor out = be().zeros({1, 2, 8}), qkv = be().zeros({1, 2, 24});
  EXPECT_THROW(be().attention_kv_forward(out, qkv, kc, vc, 3, 1), llm::Error);
}
