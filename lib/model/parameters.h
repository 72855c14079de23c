// The parameter registry: every parameter's global name, shape, initialiser and weight-decay
// class, laid out in one flat buffer (with a twin flat gradient buffer).
//
// The buffer is ordered by group (the embeddings and head, then layer by layer), so each layer's
// tensors are one contiguous range (gradient buckets, per-layer collectives), and within a group
// by class (decayed/no-decay x sharded/replicated/partial-gradient), so each class of a group is
// contiguous too. ZeRO shards the flat buffers by range.
#pragma once
#include <algorithm>
#include <map>
#include <string>
#include <vector>

#include "backend/backend.h"

namespace llm {

enum class Init { normal, zeros, ones };

// A run of the global tensor held locally: indices [global_begin, global_begin + length) along
// the shard dimension sit at [local_begin, local_begin + length) of the local tensor.
struct ShardChunk {
  int64_t global_begin = 0, local_begin = 0, length = 0;
};

struct ParamSpec {
  std::string name;
  Shape shape;  // the local tensor
  Init init = Init::normal;
  float std = 0.02f;  // for Init::normal
  bool decay = true;
  int64_t offset = 0;  // element offset in the flat buffer, set by ParameterSet
  // Tensor parallelism: the local tensor is `chunks` of the global tensor along `shard_dim`
  // (-1: replicated, the local tensor is the global one).
  Shape global_shape;
  int shard_dim = -1;
  std::vector<ShardChunk> chunks;
  // Replicated, but each tensor-parallel rank's gradient is a partial sum (LayerNorms under
  // Megatron sequence parallelism): the group sums them before the optimizer.
  bool partial_grad = false;
  // Pipeline parallelism: the last stage's copy of the tied word embedding (the first stage owns
  // it). Its gradient is exchanged with the owner's and it is left out of the gradient norm and
  // of checkpoints, which count the owner's.
  bool tied_copy = false;
  int group = -1;  // the transformer layer it belongs to; -1: embeddings, final LayerNorm
  bool sharded() const { return shard_dim >= 0; }
};

class ParameterSet {
 public:
  void add(std::string name, Shape shape, Init init, float std, bool decay);
  // A tensor-parallel shard of a global tensor (see ParamSpec).
  void add_sharded(std::string name, Shape local_shape, Shape global_shape, int shard_dim,
                   std::vector<ShardChunk> chunks, Init init, float std, bool decay);
  // Tensors added from now on belong to `group` (a layer index, or -1).
  void begin_group(int group) { group_ = group; }
  void set_partial_grad(const std::string& name);
  void set_tied_copy(const std::string& name);
  // Assigns flat offsets without allocating: group by group (-1 first, then ascending), and
  // within a group decayed before no-decay, sharded before replicated before partial-gradient
  // (so each class of a group is one contiguous range).
  void plan();
  // plan(), then lays out the flat buffers on `backend` and fills the parameters from `seed`
  // (by global index: every layout gets the single-process values); grads zeroed.
  void allocate(Backend& backend, uint64_t seed);
  // The flat ranges [begin, end) of the parameters satisfying `pred`, merged where adjacent.
  std::vector<std::pair<int64_t, int64_t>> ranges(bool (*pred)(const ParamSpec&)) const;
  template <class Pred>
  std::vector<std::pair<int64_t, int64_t>> ranges_if(Pred pred) const {
    std::vector<const ParamSpec*> sorted;
    for (const ParamSpec& s : specs_) sorted.push_back(&s);
    std::sort(sorted.begin(), sorted.end(), [](const ParamSpec* a, const ParamSpec* b) { return a->offset < b->offset; });
    std::vector<std::pair<int64_t, int64_t>> r;
    for (const ParamSpec* sp : sorted) {
      const ParamSpec& s = *sp;
      if (!pred(s)) continue;
      const int64_t b = s.offset, e = s.offset + llm::numel(s.shape);
      if (!r.empty() && r.back().second == b)
        r.back().second = e;
      else
        r.emplace_back(b, e);
    }
    return r;
  }

  const std::vector<ParamSpec>& specs() const { return specs_; }
  const ParamSpec& spec(const std::string& name) const;
  Tensor param(const std::string& name) const;
  Tensor grad(const std::string& name) const;
  const Tensor& flat_params() const { return params_; }
  const Tensor& flat_grads() const { return grads_; }
  int64_t numel() const { return total_; }

 private:
  std::vector<ParamSpec> specs_;
  std::map<std::string, size_t> index_;
  Tensor params_, grads_;
  int64_t total_ = 0;
  int group_ = -1;
};

// Writes the values of parameter `spec` for the global flat element range [begin, begin+n)
// into dst. Values depend only on (seed, name, global index): any shard of any layout gets
// the same numbers as the single-process model.
void init_parameter_range(float* dst, const ParamSpec& spec, uint64_t seed, int64_t begin, int64_t n);
// Fills a parameter's whole local tensor (all its chunks) with its values.
void init_parameter(float* dst, const ParamSpec& spec, uint64_t seed);

// The boxes of the global tensor a spec's local tensor holds: for each chunk, its offset and
// extent in global coordinates and its offset in the local tensor (same extent). One whole box
// for a replicated tensor.
struct LocalBox {
  Shape global_offset, local_offset, extent;
};
std::vector<LocalBox> local_boxes(const ParamSpec& spec);

}  // namespace llm
