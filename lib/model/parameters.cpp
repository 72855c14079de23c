#include "model/parameters.h"

#include "core/philox.h"

namespace llm {

void ParameterSet::add(std::string name, Shape shape, Init init, float std, bool decay) {
  LLM_CHECK(!index_.count(name), "parameter '", name, "' registered twice");
  LLM_CHECK(!params_.defined(), "parameter '", name, "' added after allocate()");
  index_[name] = specs_.size();
  specs_.push_back(ParamSpec{std::move(name), std::move(shape), init, std, decay, 0});
}

void ParameterSet::allocate(Backend& backend, uint64_t seed) {
  total_ = 0;
  for (int pass = 0; pass < 2; ++pass) {
    for (ParamSpec& s : specs_) {
      if (s.decay != (pass == 0)) continue;
      s.offset = total_;
      total_ += llm::numel(s.shape);
    }
    if (pass == 0) decay_total_ = total_;
  }
  Tensor host = Tensor::empty({total_});
  float* h = host.data<float>();
  for (const ParamSpec& s : specs_) init_parameter_range(h + s.offset, s, seed, 0, llm::numel(s.shape));
  params_ = backend.upload(host);
  grads_ = backend.zeros({total_});
}

const ParamSpec& ParameterSet::spec(const std::string& name) const {
  auto it = index_.find(name);
  LLM_CHECK(it != index_.end(), "no parameter named '", name, "'");
  return specs_[it->second];
}

Tensor ParameterSet::param(const std::string& name) const {
  const ParamSpec& s = spec(name);
  return params_.flat(s.offset, llm::numel(s.shape)).view(s.shape);
}

Tensor ParameterSet::grad(const std::string& name) const {
  const ParamSpec& s = spec(name);
  return grads_.flat(s.offset, llm::numel(s.shape)).view(s.shape);
}

void init_parameter_range(float* dst, const ParamSpec& spec, uint64_t seed, int64_t begin, int64_t n) {
  switch (spec.init) {
    case Init::zeros:
      for (int64_t i = 0; i < n; ++i) dst[i] = 0.0f;
      return;
    case Init::ones:
      for (int64_t i = 0; i < n; ++i) dst[i] = 1.0f;
      return;
    case Init::normal: {
      const uint64_t stream = hash_name(spec.name);
#pragma omp parallel for schedule(static)
      for (int64_t i = 0; i < n; ++i)
        dst[i] = spec.std * philox_normal(seed, stream, static_cast<uint64_t>(begin + i));
      return;
    }
  }
}

}  // namespace llm
