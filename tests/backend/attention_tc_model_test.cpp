// Host model of the tensor-core flash attention kernels (kernels/attention_tc.cu,
// attention_tc_backward.cu; and kernels/sm90a, whose forward tiles are 128 x 128): the same
// forward tiles (64 queries x 64 keys, 32 keys for head dim 160), the same exp2-domain online
// softmax with the "-inf row max -> base 0" guard, and the same roundings to the 16-bit type (P
// and dS rounded before their products, fp32 accumulation, outputs rounded once; the backward's
// result does not depend on its tiles). Checked against the
// float64 reference with the tolerances the GPU test (LowPrecision.AttentionForwardBackward/cuda_*)
// uses, so CI validates the algorithm and the tolerances; a GPU failure then points at the port.
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <utility>
#include <vector>

#include "backend/reference.h"
#include "backend/test_util.h"
#include "core/dtype.h"

namespace {

using bt::Tol;
using bt::Vec;
using llm::DType;

float round_to(float x, DType t) {
  return t == DType::bf16 ? llm::bf16_to_f32(llm::f32_to_bf16(x)) : llm::f16_to_f32(llm::f32_to_f16(x));
}
using bt::unit;
constexpr float kLog2e = 1.4426950408889634f;

struct Dims {
  int B, T, NH, hd;
  int C() const { return NH * hd; }
};

// Forward: per query row, key tiles of BC up to the diagonal, online softmax in exp2 units.
// Tiles: BR queries per block, BC keys per tile (mma.sync: 64 x 64, 64 x 32 for hd 160; wgmma:
// 128 x 128).
void model_forward(std::vector<float>& out, std::vector<float>& lse, const std::vector<float>& qkv, Dims d, DType t,
                   int BR, int BC) {
  const int C = d.C(), ld = 3 * C;
  const float scale_log2 = kLog2e / std::sqrt(float(d.hd));
  out.assign(size_t(d.B) * d.T * C, 0.0f);
  lse.assign(size_t(d.B) * d.NH * d.T, 0.0f);
  std::vector<float> o(static_cast<size_t>(d.hd)), s(static_cast<size_t>(BC));
  for (int b = 0; b < d.B; ++b)
    for (int h = 0; h < d.NH; ++h)
      for (int i0 = 0; i0 < d.T; i0 += BR)
        for (int i = i0; i < std::min(i0 + BR, d.T); ++i) {
          const float* q = &qkv[(size_t(b) * d.T + i) * ld + size_t(h) * d.hd];
          float m = -INFINITY, l = 0.0f;
          std::fill(o.begin(), o.end(), 0.0f);
          const int key_end = std::min(i0 + BR, d.T);  // the block's last query + 1
          for (int j0 = 0; j0 < key_end; j0 += BC) {
            float mx = -INFINITY;
            for (int c = 0; c < BC; ++c) {
              const int j = j0 + c;
              float x = -INFINITY;
              if (j <= i && j < d.T) {
                const float* k = &qkv[(size_t(b) * d.T + j) * ld + C + size_t(h) * d.hd];
                float acc = 0.0f;
                for (int e = 0; e < d.hd; ++e) acc += q[e] * k[e];
                x = acc;  // raw: the scale goes into the exponent's FMA, as in the kernels
              }
              s[size_t(c)] = x;
              mx = std::max(mx, x);
            }
            const float mn = std::max(m, mx * scale_log2), base = mn == -INFINITY ? 0.0f : mn;
            const float corr = std::exp2(m - base);
            m = mn;
            float sum = 0.0f;
            for (int e = 0; e < d.hd; ++e) o[size_t(e)] *= corr;
            for (int c = 0; c < BC; ++c) {
              const float p = std::exp2(std::fma(s[size_t(c)], scale_log2, -base));
              sum += p;
              if (p == 0.0f) continue;
              const float pr = round_to(p, t);  // P enters P V as a 16-bit A fragment
              const float* v = &qkv[(size_t(b) * d.T + j0 + c) * ld + 2 * C + size_t(h) * d.hd];
              for (int e = 0; e < d.hd; ++e) o[size_t(e)] += pr * v[e];
            }
            l = l * corr + sum;
          }
          for (int e = 0; e < d.hd; ++e)
            out[(size_t(b) * d.T + i) * C + size_t(h) * d.hd + e] = round_to(o[size_t(e)] / l, t);
          lse[(size_t(b) * d.NH + h) * d.T + i] = (m + std::log2(l)) / kLog2e;
        }
}

// Backward: P and dS recomputed from lse; dV += round(P)^T dO, dK += round(dS)^T Q, dQ += round(dS) K.
void model_backward(std::vector<float>& dqkv, const std::vector<float>& dout, const std::vector<float>& qkv,
                    const std::vector<float>& out, const std::vector<float>& lse, Dims d, DType t) {
  const int C = d.C(), ld = 3 * C;
  const float scale = 1.0f / std::sqrt(float(d.hd)), scale_log2 = scale * kLog2e;
  dqkv.assign(qkv.size(), 0.0f);
  std::vector<float> acc(qkv.size(), 0.0f);
  for (int b = 0; b < d.B; ++b)
    for (int h = 0; h < d.NH; ++h) {
      std::vector<float> D(static_cast<size_t>(d.T));
      for (int i = 0; i < d.T; ++i) {
        float s = 0.0f;
        for (int e = 0; e < d.hd; ++e) {
          const size_t at = (size_t(b) * d.T + i) * C + size_t(h) * d.hd + e;
          s += dout[at] * out[at];
        }
        D[size_t(i)] = s;
      }
      auto row = [&](int tok, int part) { return (size_t(b) * d.T + tok) * ld + size_t(part) * C + size_t(h) * d.hd; };
      for (int i = 0; i < d.T; ++i)
        for (int j = 0; j <= i; ++j) {
          float s = 0.0f, dp = 0.0f;
          for (int e = 0; e < d.hd; ++e) {
            s += qkv[row(i, 0) + e] * qkv[row(j, 1) + e];
            dp += dout[(size_t(b) * d.T + i) * C + size_t(h) * d.hd + e] * qkv[row(j, 2) + e];
          }
          const float p = std::exp2(std::fma(s, scale_log2, -lse[(size_t(b) * d.NH + h) * d.T + i] * kLog2e));
          const float ds = p * (dp - D[size_t(i)]);
          const float pr = round_to(p, t), dsr = round_to(ds, t);
          for (int e = 0; e < d.hd; ++e) {
            acc[row(j, 2) + e] += pr * dout[(size_t(b) * d.T + i) * C + size_t(h) * d.hd + e];
            acc[row(j, 1) + e] += dsr * qkv[row(i, 0) + e];
            acc[row(i, 0) + e] += dsr * qkv[row(j, 1) + e];
          }
        }
    }
  for (size_t k = 0; k < acc.size(); ++k) {
    const size_t part = (k % size_t(ld)) / size_t(C);
    dqkv[k] = round_to(part == 2 ? acc[k] : acc[k] * scale, t);
  }
}

std::vector<float> to_float(const Vec& v) { return std::vector<float>(v.begin(), v.end()); }
Vec to_vec(const std::vector<float>& v) { return Vec(v.begin(), v.end()); }

class AttentionTensorCoreModel : public ::testing::TestWithParam<DType> {};

TEST_P(AttentionTensorCoreModel, MatchesTheReferenceWithinTheGpuTestTolerances) {
  const DType t = GetParam();
  for (int hd : {48, 64, 128, 160}) {
    SCOPED_TRACE("hd=" + std::to_string(hd));
    const Dims d{2, 200, 2, hd};
    const int C = d.C();
    bt::Rng rng(303 + hd);
    Vec qkv = rng.normal(size_t(d.B) * d.T * 3 * C), dout = rng.normal(size_t(d.B) * d.T * C);
    for (double& x : qkv) x = round_to(float(x), t);
    for (double& x : dout) x = round_to(float(x), t);
    Vec rout, rlse, rdqkv(qkv.size(), 0.0);
    ref::attention_forward(rout, rlse, qkv, d.B, d.T, C, d.NH);
    ref::attention_backward(rdqkv, dout, qkv, d.B, d.T, C, d.NH);

    // The mma.sync kernels' tiles, and the sm_90a wgmma kernels' (head dims 64 and 128).
    std::vector<std::pair<int, int>> tiles = {{64, hd <= 128 ? 64 : 32}};
    if (hd == 64 || hd == 128) tiles.emplace_back(128, 128);
    for (auto [BR, BC] : tiles) {
      SCOPED_TRACE("tiles " + std::to_string(BR) + " x " + std::to_string(BC));
      std::vector<float> out, lse, dqkv;
      model_forward(out, lse, to_float(qkv), d, t, BR, BC);
      EXPECT_TRUE(bt::all_close("model out", to_vec(out), rout, Tol{2 * unit(t), 4 * unit(t)}));
      EXPECT_TRUE(bt::all_close("model lse", to_vec(lse), rlse, Tol{1e-3, 1e-3}));
      model_backward(dqkv, to_float(dout), to_float(qkv), out, lse, d, t);
      EXPECT_TRUE(bt::all_close("model dqkv", to_vec(dqkv), rdqkv, Tol{4 * unit(t), 8 * unit(t) * bt::max_abs(rdqkv)}));
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Types, AttentionTensorCoreModel, ::testing::Values(DType::bf16, DType::f16),
                         [](const auto& info) { return std::string(llm::dtype_name(info.param)); });

}  // namespace
