// Float64 reference implementations of the backend op set (lib/backend/backend.h).
//
// These are deliberately naive: plain loops over std::vector<double>, no tiling, no fusion, no
// online softmax. They are the ground truth the conformance suite compares every backend with,
// and their backward passes are themselves validated against central finite differences of the
// forward passes (reference_test.cpp).
//
// Conventions (differ from the backend on purpose, so the tests spell out the +=/= rules):
//   * every reference BACKWARD function ACCUMULATES (+=) into all of its gradient outputs; pass
//     zero-filled vectors to get the plain gradient;
//   * every reference FORWARD function overwrites (=) its outputs and resizes them.
// Layouts are exactly the backend's (row-major, GPT-2 qkv layout, lse[B,NH,T]).
#pragma once
#include <cstdint>
#include <vector>

#include "backend/backend.h"

namespace ref {

using Vec = std::vector<double>;
using IVec = std::vector<int32_t>;

// out[B,T,C] = wte[tokens[b,t]] + wpe[t]
void embedding_forward(Vec& out, const IVec& tokens, const Vec& wte, const Vec& wpe, int B, int T,
                       int C);
// dwte[tokens[b,t]] += dout[b,t];  dwpe[t] += dout[b,t]
void embedding_backward(Vec& dwte, Vec& dwpe, const Vec& dout, const IVec& tokens, int B, int T,
                        int C);

// Biased variance, rstd = 1/sqrt(var + eps).
void layernorm_forward(Vec& out, Vec& mean, Vec& rstd, const Vec& inp, const Vec& weight,
                       const Vec& bias, int N, int C, double eps);
void layernorm_backward(Vec& dinp, Vec& dweight, Vec& dbias, const Vec& dout, const Vec& inp,
                        const Vec& weight, const Vec& mean, const Vec& rstd, int N, int C);

// out[N,OC] = inp[N,C] @ weight[OC,C]^T + bias (bias == nullptr: none)
void linear_forward(Vec& out, const Vec& inp, const Vec& weight, const Vec* bias, int N, int C,
                    int OC);
// dinp/dbias may be nullptr.
void linear_backward(Vec* dinp, Vec& dweight, Vec* dbias, const Vec& dout, const Vec& inp,
                     const Vec& weight, int N, int C, int OC);

double gelu(double x);
double gelu_grad(double x);
void gelu_forward(Vec& out, const Vec& inp);
void gelu_backward(Vec& dinp, const Vec& inp, const Vec& dout);

void residual_forward(Vec& out, const Vec& a, const Vec& b);
void residual_backward(Vec& da, Vec& db, const Vec& dout);

// Naive causal attention with a full softmax per query. qkv[B,T,3C], out[B,T,C], lse[B,NH,T].
void attention_forward(Vec& out, Vec& lse, const Vec& qkv, int B, int T, int C, int NH);
// dqkv[B,T,3C] += J^T dout (recomputes the probabilities from qkv).
void attention_backward(Vec& dqkv, const Vec& dout, const Vec& qkv, int B, int T, int C, int NH);

// losses[N] = lse - logits[target] (0 for target < 0), lse over the first V of Vp columns.
void cross_entropy_forward(Vec& losses, Vec& lse, const Vec& logits, const IVec& targets, int N,
                           int Vp, int V);
// dlogits += (softmax - onehot) * dloss on the first V columns of rows with target >= 0.
void cross_entropy_backward(Vec& dlogits, const Vec& logits, const IVec& targets, double dloss,
                            int N, int Vp, int V);

// Decoupled AdamW with bias correction, in double.
void adamw_update(Vec& param, const Vec& grad, Vec& m, Vec& v, const llm::AdamWParams& p);
double sum_squares(const Vec& x);
void scale(Vec& x, double s);

}  // namespace ref
