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
  // The ops read it in f32 whatever the compute precision (LayerNorm parameters): an inference
  // model keeps an f32 copy of it next to the 16-bit one (ParameterSet::allocate_inference).
  bool f32_op = false;
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
  void set_f32_op(const std::string& name);
  // Assigns flat offsets without allocating: group by group (-1 first, then ascending), and
  // within a group decayed before no-decay, sharded before replicated before partial-gradient
  // (so each class of a group is one contiguous range).
  void plan();
  // plan(), then lays out the flat buffers on `backend` and fills the parameters from `seed`
  // (by global index: every layout gets the single-process values); grads zeroed.
  void allocate(Backend& backend, uint64_t seed);
  // Instead of allocate(), for a model that only runs forward (generation): no gradient buffer,
  // nothing initialised (zeros: the caller loads every tensor), and with a 16-bit `compute` no f32
  // masters but those of the f32_op tensors. Then the copy (flat_compute(), the logical layout)
  // holds every tensor, flat_params() only the f32_op ones (packed), and
  // param() of any other tensor fails. 4 bytes per parameter in f32, about 2 in bf16/f16,
  // against 10-12 for a training model (masters, gradients, copy).
  void allocate_inference(Backend& backend, DType compute);
  bool inference() const { return inference_; }
  bool has_grads() const { return grads_.defined(); }
  // Whether param(name) has an f32 tensor (always, but in a 16-bit inference set).
  bool has_master(const std::string& name) const;
  // ZeRO-2/3 storage, chosen before allocate(): the transformer layers' tensors (groups >= 0) of
  // the parameter and/or gradient buffer share one working area (or two, below) after the resident group -1
  // tensors: storage = [resident | the largest layer], a layer tensor sits at its offset within
  // its layer, so every layer's views alias the same memory and whoever fills the area decides
  // which layer is there. Logical offsets (ParamSpec::offset, numel(), ranges()) are unchanged;
  // storage_offset() maps them. Compact parameters are not initialised (init_range() gives the
  // values of any logical range). grad_areas 2: two gradient working areas, layer l in area
  // l mod 2, so one layer's gradients can be reduced while the next layer's backward fills the
  // other (ZeRO with --overlap-grad-reduce); param_areas 2 likewise for the parameters (and
  // their compute copy), so the next layer can be gathered while this one computes (ZeRO-3 with
  // --overlap-param-gather).
  void set_compact(bool params, bool grads, int grad_areas = 1, int param_areas = 1);
  bool compact_params() const { return compact_params_; }
  bool compact_grads() const { return compact_grads_; }
  int grad_areas() const { return grad_areas_; }
  int param_areas() const { return param_areas_; }
  int64_t resident_numel() const { return resident_; }  // logical [0, resident) is group -1
  int64_t layer_area() const { return layer_area_; }     // elements of the largest layer
  // Where layer group `group`'s tensors start in the storage of the parameters or the gradients:
  // its working area when that buffer is compact, else its logical offset.
  int64_t area_begin(int group, bool grads) const;
  std::pair<int64_t, int64_t> group_range(int group) const;
  // The groups this set has, ascending (-1, the resident tensors, first where there are any).
  std::vector<int> groups() const {
    std::vector<int> g;
    for (const auto& kv : group_ranges_) g.push_back(kv.first);
    return g;
  }
  int64_t storage_offset(const ParamSpec& s, bool grads) const;
  // The initial values of the logical flat range [begin, end) (the seed given to allocate()).
  void init_range(float* dst, int64_t begin, int64_t end) const;
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

  // Mixed precision, after allocate() (an inference set gets its copy from allocate_inference()):
  // a bf16/f16 copy of the parameter storage (same layout,
  // compact or not) holding the weights the ops compute with. LayerNorm parameters are read from
  // the f32 masters (the ops take them in f32), so their copies are never used.
  void set_compute_copy(Backend& backend, DType dtype);
  DType compute_dtype() const { return compute_.defined() ? compute_.dtype() : DType::f32; }
  // The copy's view of a parameter, or param() itself without a copy.
  Tensor compute_param(const std::string& name) const;
  // Rounds the masters of storage elements [begin, begin + n) into the copy (n < 0: to the end).
  // No-op without a copy.
  void refresh_compute(Backend& backend, int64_t storage_begin = 0, int64_t n = -1) const;
  const Tensor& flat_compute() const { return compute_; }
  // Mixed-precision training with sharded masters (ZeRO-1/2's distributed optimizer: each rank's
  // f32 masters live in its optimizer shard, outside this set). After set_compute_copy(), on a set
  // whose parameters are not compact: the f32 buffer shrinks to the f32_op tensors (the
  // LayerNorms', which the ops read in f32), packed in logical order, their values kept. From then
  // on the copy holds every parameter and is written by the masters' owners (the update and its
  // gather), never refreshed from here; param() of a tensor that is not f32_op fails. A model
  // packs through GPT::pack_masters (its layers hold views of the LayerNorms).
  void pack_masters(Backend& backend);
  // Instead of allocate(), for the same end state without the whole f32 buffer ever existing:
  // plan(), the packed f32_op masters and a `compute` (bf16/f16) copy of every parameter from
  // `seed` (the copy filled a chunk at a time), gradients zeroed. Not with compact parameters.
  void allocate_packed(Backend& backend, uint64_t seed, DType compute);
  bool packed_masters() const { return packed_masters_; }
  // Packed masters: a trainer took the f32 masters into its shard (from the seed, or from the
  // buffer it packed); no other trainer may start them again from the seed.
  void claim_masters() {
    LLM_CHECK(packed_masters_ && !masters_claimed_, "claim_masters(): ", packed_masters_ ? "already claimed" : "not packed");
    masters_claimed_ = true;
  }
  bool masters_claimed() const { return masters_claimed_; }
  // Packed masters: where logical flat offset `logical` falls in the packed f32 buffer (the f32_op
  // elements before it). Monotone, so the logical range [b, e) of f32_op elements is the packed
  // range [packed_index(b), packed_index(e)), and a rank's contiguous shard stays contiguous.
  int64_t packed_index(int64_t logical) const;

  const std::vector<ParamSpec>& specs() const { return specs_; }
  const ParamSpec& spec(const std::string& name) const;
  Tensor param(const std::string& name) const;
  Tensor grad(const std::string& name) const;
  // The storage buffers (logical layout unless compact).
  const Tensor& flat_params() const { return params_; }
  const Tensor& flat_grads() const { return grads_; }
  int64_t numel() const { return total_; }

 private:
  // The groups' flat ranges, the resident size and the largest layer (after plan()).
  void plan_groups();
  // Where `s` (a spec of this set) sits in the f32 buffer: storage_offset(), or in a 16-bit
  // inference set its packed offset (-1: no f32 copy).
  int64_t master_offset(const ParamSpec& s) const;
  std::vector<ParamSpec> specs_;
  std::map<std::string, size_t> index_;
  Tensor params_, grads_, compute_;
  int64_t total_ = 0;
  int group_ = -1;
  bool compact_params_ = false, compact_grads_ = false;
  int grad_areas_ = 1, param_areas_ = 1;
  bool inference_ = false, packed_masters_ = false, masters_claimed_ = false;
  // The f32_op tensors' offsets in a packed f32 buffer, in logical order (master_offset_ filled);
  // returns their total.
  int64_t pack_f32_op();
  // Packed masters: each f32_op tensor's logical range, ascending, and its packed start.
  std::vector<std::pair<int64_t, int64_t>> f32_op_ranges_;
  std::vector<int64_t> f32_op_packed_;
  // 16-bit inference set: each spec's offset in the packed f32 buffer (-1: none)
  std::vector<int64_t> master_offset_;
  int64_t resident_ = 0, layer_area_ = 0;
  std::map<int, std::pair<int64_t, int64_t>> group_ranges_;
  uint64_t seed_ = 0;
};

// Writes the values of parameter `spec` for the global flat element range [begin, begin+n)
// into dst. Values depend only on (seed, name, global index): any shard of any layout gets
// the same numbers as the single-process model.
void init_parameter_range(float* dst, const ParamSpec& spec, uint64_t seed, int64_t begin, int64_t n);
// Fills a parameter's whole local tensor (all its chunks) with its values.
void init_parameter(float* dst, const ParamSpec& spec, uint64_t seed);
// The local tensor's flat elements [lo, hi) of the same values, computed for those alone (no
// whole-tensor temporary: what ParameterSet::init_range uses for a range that cuts a tensor).
void init_parameter_local(float* dst, const ParamSpec& spec, uint64_t seed, int64_t lo, int64_t hi);

// The boxes of the global tensor a spec's local tensor holds: for each chunk, its offset and
// extent in global coordinates and its offset in the local tensor (same extent). One whole box
// for a replicated tensor.
struct LocalBox {
  Shape global_offset, local_offset, extent;
};
std::vector<LocalBox> local_boxes(const ParamSpec& spec);

}  // namespace llm
