// The parameter registry: every parameter's global name, shape, initialiser and weight-decay
// class, laid out in one flat buffer (with a twin flat gradient buffer).
//
// Decayed tensors (matrices and embeddings) come first and the no-decay tensors (biases,
// LayerNorm gains) after them, so the optimizer runs over two contiguous regions and ZeRO can
// later shard the flat buffers by range.
#pragma once
#include <map>
#include <string>
#include <vector>

#include "backend/backend.h"

namespace llm {

enum class Init { normal, zeros, ones };

struct ParamSpec {
  std::string name;
  Shape shape;
  Init init = Init::normal;
  float std = 0.02f;  // for Init::normal
  bool decay = true;
  int64_t offset = 0;  // element offset in the flat buffer, set by ParameterSet
};

class ParameterSet {
 public:
  void add(std::string name, Shape shape, Init init, float std, bool decay);
  // Lays out the flat buffers on `backend` and fills the parameters from `seed`; grads zeroed.
  void allocate(Backend& backend, uint64_t seed);

  const std::vector<ParamSpec>& specs() const { return specs_; }
  const ParamSpec& spec(const std::string& name) const;
  Tensor param(const std::string& name) const;
  Tensor grad(const std::string& name) const;
  const Tensor& flat_params() const { return params_; }
  const Tensor& flat_grads() const { return grads_; }
  int64_t numel() const { return total_; }
  int64_t decay_numel() const { return decay_total_; }  // [0, decay_numel) decays

 private:
  std::vector<ParamSpec> specs_;
  std::map<std::string, size_t> index_;
  Tensor params_, grads_;
  int64_t total_ = 0, decay_total_ = 0;
};

// Writes the values of parameter `spec` for the global flat element range [begin, begin+n)
// into dst. Values depend only on (seed, name, global index): any shard of any layout gets
// the same numbers as the single-process model.
void init_parameter_range(float* dst, const ParamSpec& spec, uint64_t seed, int64_t begin, int64_t n);

}  // namespace llm
