#include "model/parameters.h"

#include <algorithm>

#include "core/philox.h"

namespace llm {

void ParameterSet::add(std::string name, Shape shape, Init init, float std, bool decay) {
  LLM_CHECK(!index_.count(name), "parameter '", name, "' registered twice");
  LLM_CHECK(!params_.defined(), "parameter '", name, "' added after allocate()");
  index_[name] = specs_.size();
  ParamSpec s;
  s.name = std::move(name);
  s.global_shape = shape;
  s.shape = std::move(shape);
  s.init = init;
  s.std = std;
  s.decay = decay;
  s.group = group_;
  specs_.push_back(std::move(s));
}

void ParameterSet::add_sharded(std::string name, Shape local_shape, Shape global_shape, int shard_dim,
                               std::vector<ShardChunk> chunks, Init init, float std, bool decay) {
  LLM_CHECK(shard_dim >= 0 && shard_dim < static_cast<int>(local_shape.size()) &&
                local_shape.size() == global_shape.size() && local_shape.size() <= 2,
            "parameter '", name, "': shard dimension ", shard_dim, " of ", shape_str(local_shape));
  int64_t covered = 0;
  for (const ShardChunk& c : chunks) {
    LLM_CHECK(c.global_begin >= 0 && c.global_begin + c.length <= global_shape[shard_dim] && c.local_begin == covered,
              "parameter '", name, "': chunk [", c.global_begin, ", +", c.length, ") does not fit ",
              shape_str(global_shape));
    covered += c.length;
  }
  LLM_CHECK(covered == local_shape[shard_dim], "parameter '", name, "': chunks cover ", covered, " of ",
            local_shape[shard_dim]);
  add(name, local_shape, init, std, decay);
  ParamSpec& s = specs_.back();
  s.global_shape = std::move(global_shape);
  s.shard_dim = shard_dim;
  s.chunks = std::move(chunks);
}

void ParameterSet::set_partial_grad(const std::string& name) {
  auto it = index_.find(name);
  LLM_CHECK(it != index_.end(), "no parameter named '", name, "'");
  specs_[it->second].partial_grad = true;
}

void ParameterSet::set_tied_copy(const std::string& name) {
  auto it = index_.find(name);
  LLM_CHECK(it != index_.end(), "no parameter named '", name, "'");
  specs_[it->second].tied_copy = true;
}

void ParameterSet::set_f32_op(const std::string& name) {
  auto it = index_.find(name);
  LLM_CHECK(it != index_.end(), "no parameter named '", name, "'");
  specs_[it->second].f32_op = true;
}

void ParameterSet::plan() {
  total_ = 0;
  // Group by group; within one, decayed sharded, decayed replicated, decayed partial, then the
  // same no-decay.
  auto cls = [](const ParamSpec& s) { return (s.decay ? 0 : 3) + (s.sharded() ? 0 : s.partial_grad ? 2 : 1); };
  std::vector<int> groups;
  for (const ParamSpec& s : specs_) groups.push_back(s.group);
  std::sort(groups.begin(), groups.end());
  groups.erase(std::unique(groups.begin(), groups.end()), groups.end());
  for (int g : groups)
    for (int pass = 0; pass < 6; ++pass)
      for (ParamSpec& s : specs_) {
        if (s.group != g || cls(s) != pass) continue;
        s.offset = total_;
        total_ += llm::numel(s.shape);
      }
}

void ParameterSet::set_compact(bool params, bool grads, int grad_areas, int param_areas) {
  LLM_CHECK(!params_.defined(), "set_compact() after allocate()");
  LLM_CHECK(grad_areas == 1 || (grad_areas == 2 && grads), "set_compact(): ", grad_areas,
            " gradient working areas (1, or 2 with compact gradients)");
  LLM_CHECK(param_areas == 1 || (param_areas == 2 && params), "set_compact(): ", param_areas,
            " parameter working areas (1, or 2 with compact parameters)");
  compact_params_ = params;
  compact_grads_ = grads;
  grad_areas_ = grad_areas;
  param_areas_ = param_areas;
}

void ParameterSet::plan_groups() {
  group_ranges_.clear();
  for (const ParamSpec& s : specs_) {
    auto [it, fresh] = group_ranges_.try_emplace(s.group, s.offset, s.offset + llm::numel(s.shape));
    if (!fresh) {
      it->second.first = std::min(it->second.first, s.offset);
      it->second.second = std::max(it->second.second, s.offset + llm::numel(s.shape));
    }
  }
  resident_ = group_ranges_.count(-1) ? group_ranges_[-1].second : 0;
  layer_area_ = 0;
  for (const auto& [g, r] : group_ranges_) {
    if (g < 0) continue;
    LLM_CHECK(r.first >= resident_, "parameter group ", g, " precedes the resident tensors");
    layer_area_ = std::max(layer_area_, r.second - r.first);
  }
}

void ParameterSet::allocate(Backend& backend, uint64_t seed) {
  LLM_CHECK(!params_.defined() && !compute_.defined(), "ParameterSet::allocate(): already allocated");
  plan();
  plan_groups();
  seed_ = seed;
  Tensor host = Tensor::zeros({compact_params_ ? resident_ + param_areas_ * layer_area_ : total_});
  float* h = host.data<float>();
  for (const ParamSpec& s : specs_)
    if (!compact_params_ || s.group < 0) init_parameter(h + s.offset, s, seed);
  params_ = backend.upload(host);
  grads_ = backend.zeros({compact_grads_ ? resident_ + grad_areas_ * layer_area_ : total_});
}

void ParameterSet::allocate_inference(Backend& backend, DType compute) {
  LLM_CHECK(!params_.defined() && !compute_.defined(), "ParameterSet::allocate_inference(): already allocated");
  LLM_CHECK(!compact_params_ && !compact_grads_, "an inference parameter set is not compact (ZeRO-2/3 storage)");
  LLM_CHECK(is_float(compute), "inference parameters: f32, bf16 or f16, not ", dtype_name(compute));
  plan();
  plan_groups();
  inference_ = true;
  if (compute == DType::f32) {
    params_ = backend.zeros({total_});
    return;
  }
  params_ = backend.zeros({pack_f32_op()});
  compute_ = backend.zeros({total_}, compute);
}

int64_t ParameterSet::pack_f32_op() {
  std::vector<size_t> order;
  for (size_t i = 0; i < specs_.size(); ++i)
    if (specs_[i].f32_op) order.push_back(i);
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) { return specs_[a].offset < specs_[b].offset; });
  master_offset_.assign(specs_.size(), -1);
  f32_op_ranges_.clear();
  f32_op_packed_.clear();
  int64_t packed = 0;
  for (size_t i : order) {
    const int64_t n = llm::numel(specs_[i].shape);
    master_offset_[i] = packed;
    f32_op_ranges_.emplace_back(specs_[i].offset, specs_[i].offset + n);
    f32_op_packed_.push_back(packed);
    packed += n;
  }
  return packed;
}

void ParameterSet::pack_masters(Backend& backend) {
  LLM_CHECK(!inference_ && params_.defined() && compute_.defined(),
            "pack_masters(): a training set with its 16-bit compute copy (set_compute_copy) first");
  LLM_CHECK(!compact_params_, "pack_masters(): compact parameters (ZeRO-3) keep no full masters to pack");
  if (packed_masters_) return;
  const int64_t n = pack_f32_op();
  Tensor packed = backend.empty({n});
  for (size_t k = 0; k < f32_op_ranges_.size(); ++k) {
    const auto [b, e] = f32_op_ranges_[k];
    backend.copy(packed.flat(f32_op_packed_[k], e - b), params_.flat(b, e - b));
  }
  params_ = packed;  // the full f32 buffer is released
  packed_masters_ = true;
}

void ParameterSet::allocate_packed(Backend& backend, uint64_t seed, DType compute) {
  LLM_CHECK(!params_.defined() && !compute_.defined(), "ParameterSet::allocate_packed(): already allocated");
  LLM_CHECK(!compact_params_, "allocate_packed(): compact parameters (ZeRO-3) keep no full copy");
  LLM_CHECK(compute == DType::bf16 || compute == DType::f16, "allocate_packed(): a bf16 or f16 copy, not ",
            dtype_name(compute));
  plan();
  plan_groups();
  seed_ = seed;
  const int64_t packed = pack_f32_op();
  Tensor host = Tensor::empty({packed});
  for (size_t k = 0; k < f32_op_ranges_.size(); ++k)
    init_range(host.data<float>() + f32_op_packed_[k], f32_op_ranges_[k].first, f32_op_ranges_[k].second);
  params_ = backend.upload(host);
  compute_ = backend.empty({total_}, compute);
  // The copy a chunk at a time: each chunk's f32 values on the host, then rounded on the backend
  // (the same bits as rounding the masters: convert is the one rounding either way).
  constexpr int64_t kChunk = int64_t{1} << 24;
  Tensor chunk = Tensor::empty({std::min(kChunk, std::max<int64_t>(total_, 1))});
  for (int64_t b = 0; b < total_; b += kChunk) {
    const int64_t n = std::min(kChunk, total_ - b);
    const Tensor part = chunk.flat(0, n);
    init_range(part.data<float>(), b, b + n);
    backend.convert(compute_.flat(b, n), compute_.device().is_cpu() ? part : backend.upload(part));
  }
  grads_ = backend.zeros({compact_grads_ ? resident_ + grad_areas_ * layer_area_ : total_});
  packed_masters_ = true;
}

int64_t ParameterSet::packed_index(int64_t logical) const {
  LLM_CHECK(packed_masters_, "packed_index(): the masters are not packed");
  // the first f32_op range ending after `logical`
  auto it = std::upper_bound(f32_op_ranges_.begin(), f32_op_ranges_.end(), logical,
                             [](int64_t x, const std::pair<int64_t, int64_t>& r) { return x < r.second; });
  if (it == f32_op_ranges_.end()) return params_.numel();
  const size_t k = static_cast<size_t>(it - f32_op_ranges_.begin());
  return f32_op_packed_[k] + std::max<int64_t>(0, logical - it->first);
}

int64_t ParameterSet::master_offset(const ParamSpec& s) const {
  return master_offset_.empty() ? storage_offset(s, false) : master_offset_[static_cast<size_t>(&s - specs_.data())];
}

bool ParameterSet::has_master(const std::string& name) const { return master_offset(spec(name)) >= 0; }

std::pair<int64_t, int64_t> ParameterSet::group_range(int group) const {
  auto it = group_ranges_.find(group);
  LLM_CHECK(it != group_ranges_.end(), "no parameter group ", group);
  return it->second;
}

int64_t ParameterSet::area_begin(int group, bool grads) const {
  const int64_t first = group_range(group).first;
  if (group < 0 || !(grads ? compact_grads_ : compact_params_)) return first;
  const int slot = group % (grads ? grad_areas_ : param_areas_);
  return resident_ + static_cast<int64_t>(slot) * layer_area_;
}

int64_t ParameterSet::storage_offset(const ParamSpec& s, bool grads) const {
  if (s.group < 0 || !(grads ? compact_grads_ : compact_params_)) return s.offset;
  return area_begin(s.group, grads) + s.offset - group_ranges_.at(s.group).first;
}

void ParameterSet::init_range(float* dst, int64_t begin, int64_t end) const {
  for (const ParamSpec& s : specs_) {
    const int64_t b = s.offset, e = s.offset + llm::numel(s.shape), lo = std::max(b, begin), hi = std::min(e, end);
    if (hi > lo) init_parameter_local(dst + (lo - begin), s, seed_, lo - b, hi - b);
  }
}

std::vector<std::pair<int64_t, int64_t>> ParameterSet::ranges(bool (*pred)(const ParamSpec&)) const {
  return ranges_if(pred);
}

const ParamSpec& ParameterSet::spec(const std::string& name) const {
  auto it = index_.find(name);
  LLM_CHECK(it != index_.end(), "no parameter named '", name, "'");
  return specs_[it->second];
}

Tensor ParameterSet::param(const std::string& name) const {
  const ParamSpec& s = spec(name);
  const int64_t off = master_offset(s);
  LLM_CHECK(off >= 0, "parameter '", name, "': ",
            inference_ ? "an inference model" : "a training model with sharded masters (ZeRO-1/2 in mixed precision)",
            " in ", dtype_name(compute_dtype()), " holds it only in that type (compute_param())",
            inference_ ? "" : "; its f32 master is in the optimizer's shard of its owner");
  return params_.flat(off, llm::numel(s.shape)).view(s.shape);
}

void ParameterSet::set_compute_copy(Backend& backend, DType dtype) {
  LLM_CHECK(params_.defined(), "set_compute_copy(): allocate() first");
  LLM_CHECK(!inference_ || dtype == compute_dtype(), "an inference model computes in the precision it was made with (",
            dtype_name(compute_dtype()), "), not ", dtype_name(dtype));
  if (inference_) return;
  LLM_CHECK(!packed_masters_ || dtype == compute_dtype(), "a training model with sharded masters computes in ",
            dtype_name(compute_dtype()), " (its copy holds the only full parameters), not ", dtype_name(dtype));
  if (packed_masters_) return;
  if (dtype == DType::f32) {
    compute_ = Tensor{};
    return;
  }
  LLM_CHECK(dtype == DType::bf16 || dtype == DType::f16, "compute copy of the parameters: bf16 or f16, not ",
            dtype_name(dtype));
  compute_ = backend.empty(params_.shape(), dtype);
  refresh_compute(backend);
}

Tensor ParameterSet::compute_param(const std::string& name) const {
  if (!compute_.defined()) return param(name);
  const ParamSpec& s = spec(name);
  return compute_.flat(storage_offset(s, false), llm::numel(s.shape)).view(s.shape);
}

void ParameterSet::refresh_compute(Backend& backend, int64_t storage_begin, int64_t n) const {
  if (!compute_.defined()) return;
  LLM_CHECK(!inference_ && !packed_masters_, "refresh_compute(): ",
            inference_ ? "an inference model" : "a training model with sharded masters", " in ",
            dtype_name(compute_.dtype()), " has no f32 masters",
            inference_ ? "" : " here (each rank's range is in its optimizer shard)", " to refresh from");
  if (n < 0) n = params_.numel() - storage_begin;
  if (n == 0) return;
  backend.convert(compute_.flat(storage_begin, n), params_.flat(storage_begin, n));
}

Tensor ParameterSet::grad(const std::string& name) const {
  const ParamSpec& s = spec(name);
  LLM_CHECK(grads_.defined(), "parameter '", name, "': an inference model has no gradients");
  return grads_.flat(storage_offset(s, true), llm::numel(s.shape)).view(s.shape);
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

void init_parameter_local(float* dst, const ParamSpec& spec, uint64_t seed, int64_t lo, int64_t hi) {
  if (hi <= lo) return;
  if (!spec.sharded()) {  // the local tensor is the global one
    init_parameter_range(dst, spec, seed, lo, hi - lo);
    return;
  }
  // Runs of local elements contiguous in the global tensor, clipped to [lo, hi): whole rows of a
  // chunk (shard dimension 0), or one row's part of a chunk (dimension 1).
  auto run = [&](int64_t local, int64_t global, int64_t n) {
    const int64_t a = std::max(local, lo), z = std::min(local + n, hi);
    if (z > a) init_parameter_range(dst + (a - lo), spec, seed, global + (a - local), z - a);
  };
  if (spec.shard_dim == 0) {
    const int64_t inner = llm::numel(spec.shape) / spec.shape[0];
    for (const ShardChunk& c : spec.chunks) run(c.local_begin * inner, c.global_begin * inner, c.length * inner);
    return;
  }
  const int64_t lcols = spec.shape[1], gcols = spec.global_shape[1];
  for (int64_t r = lo / lcols; r <= (hi - 1) / lcols; ++r)
    for (const ShardChunk& c : spec.chunks) run(r * lcols + c.local_begin, r * gcols + c.global_begin, c.length);
}

void init_parameter(float* dst, const ParamSpec& spec, uint64_t seed) {
  init_parameter_local(dst, spec, seed, 0, llm::numel(spec.shape));
}

std::vector<LocalBox> local_boxes(const ParamSpec& spec) {
  const size_t nd = spec.shape.size();
  if (!spec.sharded()) return {LocalBox{Shape(nd, 0), Shape(nd, 0), spec.shape}};
  std::vector<LocalBox> out;
  for (const ShardChunk& c : spec.chunks) {
    LocalBox b{Shape(nd, 0), Shape(nd, 0), spec.shape};
    b.global_offset[spec.shard_dim] = c.global_begin;
    b.local_offset[spec.shard_dim] = c.local_begin;
    b.extent[spec.shard_dim] = c.length;
    out.push_back(std::move(b));
  }
  return out;
}

}  // namespace llm
