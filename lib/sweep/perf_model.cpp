#include "sweep/perf_model.h"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <map>
#include <vector>

#include "core/error.h"
#include "core/fsync.h"
#include "train/flops.h"

namespace llm::sweep {

int64_t ClusterSpec::bytes_per_element() const { return dtype == "fp32" ? 4 : 2; }

ClusterSpec load_cluster(const std::string& path) {
  YAML::Node root;
  const std::string content = read_whole_file(path, "cluster file (--cluster)");
  try {
    root = YAML::Load(content);
  } catch (const YAML::Exception& e) {
    throw ConfigError(path + ":" + std::to_string(e.mark.line + 1) + ": " + e.msg);
  }
  if (!root.IsMap()) throw ConfigError(path + ": a cluster file is a mapping of keys to values");
  ClusterSpec c;
  using Setter = std::function<void(const YAML::Node&)>;
  auto num = [](double& f) { return Setter([&f](const YAML::Node& n) { f = n.as<double>(); }); };
  auto integer = [](int64_t& f) { return Setter([&f](const YAML::Node& n) { f = n.as<int64_t>(); }); };
  auto text = [](std::string& f) { return Setter([&f](const YAML::Node& n) { f = n.as<std::string>(); }); };
  const std::map<std::string, Setter> keys = {
      {"name", text(c.name)},
      {"device", text(c.device)},
      {"devices-per-node", integer(c.devices_per_node)},
      {"max-nodes", integer(c.max_nodes)},
      {"dtype", text(c.dtype)},
      {"peak-tflops", num(c.peak_tflops)},
      {"matmul-efficiency", num(c.matmul_efficiency)},
      {"matmul-half-tokens", num(c.matmul_half_tokens)},
      {"attention-efficiency", num(c.attention_efficiency)},
      {"memory-gib", num(c.memory_gib)},
      {"memory-bandwidth-gbs", num(c.memory_bandwidth_gbs)},
      {"memory-overhead-gib", num(c.memory_overhead_gib)},
      {"intra-node-bandwidth-gbs", num(c.intra_node_bandwidth_gbs)},
      {"intra-node-latency-us", num(c.intra_node_latency_us)},
      {"inter-node-bandwidth-gbs", num(c.inter_node_bandwidth_gbs)},
      {"inter-node-latency-us", num(c.inter_node_latency_us)},
      {"activation-bytes-per-hidden", num(c.activation_bytes_per_hidden)},
      {"flash-attention", Setter([&c](const YAML::Node& n) { c.flash_attention = n.as<bool>(); })},
  };
  for (const auto& kv : root) {
    const std::string key = kv.first.as<std::string>();
    const std::string where = path + ":" + std::to_string(kv.first.Mark().line + 1) + ": ";
    auto it = keys.find(key);
    if (it == keys.end()) throw ConfigError(where + "unknown key '" + key + "'");
    try {
      it->second(kv.second);
    } catch (const YAML::Exception&) {
      throw ConfigError(where + "bad value for '" + key + "'");
    }
  }
  auto need = [&](bool ok, const char* what) {
    if (!ok) throw ConfigError(path + ": " + what);
  };
  need(c.dtype == "fp32" || c.dtype == "bf16" || c.dtype == "fp16", "dtype must be fp32, bf16 or fp16");
  need(c.devices_per_node >= 1, "devices-per-node must be >= 1");
  need(c.peak_tflops >= 0, "peak-tflops must be >= 0 (0 = measure)");
  need(c.matmul_efficiency > 0 && c.matmul_efficiency <= 1, "matmul-efficiency must be in (0, 1]");
  need(c.attention_efficiency > 0 && c.attention_efficiency <= 1, "attention-efficiency must be in (0, 1]");
  need(c.memory_gib > 0, "memory-gib must be > 0");
  need(c.memory_bandwidth_gbs > 0, "memory-bandwidth-gbs must be > 0");
  need(c.intra_node_bandwidth_gbs > 0, "intra-node-bandwidth-gbs must be > 0");
  need(c.inter_node_bandwidth_gbs > 0, "inter-node-bandwidth-gbs must be > 0");
  return c;
}

StateBytes state_bytes_per_parameter(const std::string& dtype) {
  if (dtype == "fp32") return {4, 4, 8};
  return {6, 4, 8};
}

ModelStateMemory model_state_memory(double params, const std::string& dtype, int64_t zero_stage, int64_t group,
                                    double resident, double layer, int grad_areas, int param_areas, double f32_op) {
  const StateBytes b = state_bytes_per_parameter(dtype);
  const double g = static_cast<double>(std::max<int64_t>(group, 1)), shard = params / g;
  ModelStateMemory m{b.param * params, b.grad * params, b.optimizer * params};
  if (zero_stage >= 1) m.optimizer = b.optimizer * shard;
  // sharded masters: the 16-bit copy whole, the f32 masters of the shard and of the LayerNorms
  if ((zero_stage == 1 || zero_stage == 2) && group > 1 && dtype != "fp32")
    m.params = (b.param - 4.0) * params + 4.0 * shard + 4.0 * f32_op;
  if (zero_stage >= 2) m.grads = b.grad * (resident + grad_areas * layer + shard);
  if (zero_stage >= 3) m.params = b.param * (resident + param_areas * layer) + 4.0 * shard;  // the shard: f32
  return m;
}

double layer_activation_bytes(const GPTConfig& m, int64_t b, int64_t s, int64_t tp, int64_t ulysses, bool megatron_sp,
                              const ClusterSpec& c) {
  // Korthikanti et al. 2022: s b h (10 + 24/t) without sequence parallelism, 34 s b h / t with it;
  // the 10 (LayerNorm inputs, dropout masks) are the part TP alone leaves replicated. Scaled to
  // this implementation's bytes per token and hidden unit. Ulysses shards the sequence.
  const double h = static_cast<double>(m.hidden_size), t = static_cast<double>(tp);
  const double tokens = static_cast<double>(b) * static_cast<double>(s) / static_cast<double>(ulysses);
  const double k = c.activation_bytes_per_hidden;
  const double replicated = k * 10.0 / 34.0, sharded = k * 24.0 / 34.0;
  double bytes = tokens * h * (megatron_sp ? (replicated + sharded) / t : replicated + sharded / t);
  if (!c.flash_attention)  // scores, softmax and its dropout mask: 5 a s^2 b bytes (bf16), heads over t and sp
    bytes += 5.0 * static_cast<double>(m.num_heads) * static_cast<double>(s) * static_cast<double>(s) *
             static_cast<double>(b) / (t * static_cast<double>(ulysses)) * (c.bytes_per_element() / 2.0);
  return bytes;
}

double layer_checkpoint_bytes(const GPTConfig& m, int64_t b, int64_t s, int64_t tp, int64_t ulysses, bool megatron_sp,
                              const ClusterSpec& c) {
  const double tokens = static_cast<double>(b) * static_cast<double>(s) / static_cast<double>(ulysses);
  return tokens * static_cast<double>(m.hidden_size) * static_cast<double>(c.bytes_per_element()) /
         (megatron_sp ? static_cast<double>(tp) : 1.0);
}

double megatron_tp_elements_per_layer(double tokens, double hidden, int64_t tp) {
  const double t = static_cast<double>(tp);
  return 4.0 * tokens * hidden * (t - 1.0) / t;
}

double ulysses_elements_per_layer(double tokens, double hidden, int64_t sp) {
  const double p = static_cast<double>(sp);
  return 4.0 * tokens * hidden * (p - 1.0) / (p * p);
}

double pipeline_bubble_fraction(int64_t p, int64_t m) {
  return static_cast<double>(p - 1) / static_cast<double>(m + p - 1);
}

double all_reduce_seconds(double bytes, int64_t n, double bw_gbs, double lat_us) {
  if (n <= 1) return 0;
  const double r = static_cast<double>(n);
  return 2.0 * (r - 1.0) / r * bytes / (bw_gbs * 1e9) + 2.0 * (r - 1.0) * lat_us * 1e-6;
}

double all_gather_seconds(double bytes, int64_t n, double bw_gbs, double lat_us) {
  if (n <= 1) return 0;
  const double r = static_cast<double>(n);
  return (r - 1.0) / r * bytes / (bw_gbs * 1e9) + (r - 1.0) * lat_us * 1e-6;
}

double owner_ranges_seconds(double begin, double end, double total, int64_t ranks, double bytes_per_element,
                            double bw_gbs, double lat_us) {
  if (ranks <= 1 || end <= begin) return 0;
  const double r = static_cast<double>(ranks), shard = total / r;
  double least = end - begin;  // the smallest part of [begin, end) any rank owns
  for (int64_t k = 0; k < ranks; ++k) {
    const double lo = std::max(begin, static_cast<double>(k) * shard), hi = std::min(end, static_cast<double>(k + 1) * shard);
    least = std::min(least, std::max(0.0, hi - lo));
  }
  return (end - begin - least) * bytes_per_element / (bw_gbs * 1e9) + (r - 1.0) * lat_us * 1e-6;
}

namespace {

// Two streams: compute, and communication in issue order. A collective starts when both the
// communication stream is free and the compute it follows has been issued (the compute clock).
struct Streams {
  double compute = 0, comm = 0, busy = 0, collectives = 0;
  void run(double s) {
    compute += s;
    busy += s;
  }
  double start(double s) {  // non-blocking: returns when it ends
    comm = std::max(comm, compute) + s;
    collectives += s;
    return comm;
  }
  void wait(double end) { compute = std::max(compute, end); }
  void blocking(double s) { wait(start(s)); }
};

}  // namespace

DataParallelTime data_parallel_time(const DataParallelPlan& q) {
  DataParallelTime t;
  const int64_t G = q.ranks, n = q.layers, m = q.micro_batches;
  if (G <= 1 || n < 1 || m < 1) return t;
  constexpr double kElem = 4.0;  // f32 gradients (and ZeRO-3's resident master weights)
  const double bw = q.bandwidth_gbs, lat = q.latency_us, g = static_cast<double>(G), share = (g - 1.0) / g;
  const double total = q.resident + static_cast<double>(n) * q.per_layer;
  auto layer_begin = [&](int64_t l) { return q.resident + static_cast<double>(l) * q.per_layer; };
  auto layer_s = [&](int64_t l) { return owner_ranges_seconds(layer_begin(l), layer_begin(l + 1), total, G, kElem, bw, lat); };
  auto gather_s = [&](int64_t l) {  // ZeRO-3's, and ZeRO-1/2's overlapped post-step gather
    return owner_ranges_seconds(layer_begin(l), layer_begin(l + 1), total, G, q.gather_bytes, bw, lat);
  };
  const double pg = q.gather_bytes;  // ZeRO-1/2's post-step gather too
  const double resident_ar = all_reduce_seconds(kElem * q.resident, G, bw, lat);
  const double resident_ranges = owner_ranges_seconds(0, q.resident, total, G, kElem, bw, lat);
  const double layers_bytes = kElem * static_cast<double>(n) * q.per_layer;

  Streams st;
  const bool sharded_gather = q.zero_stage == 1 || q.zero_stage == 2;
  // ZeRO-1/2 overlapped: the previous step's gathers, queued at its end (this iteration's start).
  std::vector<double> gathered(static_cast<size_t>(n), 0.0);
  if (sharded_gather && q.overlap) {
    st.wait(st.start(owner_ranges_seconds(0, q.resident, total, G, pg, bw, lat)));
    for (int64_t l = 0; l < n; ++l) gathered[static_cast<size_t>(l)] = st.start(gather_s(l));
  }
  // ZeRO 0/1 buckets: whole layers from the last, closed at `bucket` elements or the first layer;
  // the elements [begin, end) started after layer l's backward (empty: none).
  std::vector<std::pair<double, double>> bucket_at(static_cast<size_t>(n), {0.0, 0.0});
  {
    double acc = 0;
    for (int64_t l = n - 1; l >= 0; --l) {
      acc += q.per_layer;
      if (acc >= q.bucket || l == 0) bucket_at[static_cast<size_t>(l)] = {layer_begin(l), layer_begin(l) + acc}, acc = 0;
    }
  }
  // ZeRO-0 all-reduces a range; ZeRO-1 reduce-scatters it onto its owners.
  auto reduce_s = [&](double b, double e) {
    return q.zero_stage == 1 ? owner_ranges_seconds(b, e, total, G, kElem, bw, lat)
                             : all_reduce_seconds(kElem * (e - b), G, bw, lat);
  };
  double slot[2] = {0, 0};  // ZeRO-2/3 overlapped: when each gradient area's reduction ends
  double prefetch = 0;      // ZeRO-3 overlapped: when the prefetched gather ends
  for (int64_t k = 0; k < m; ++k) {
    for (int64_t l = 0; l < n; ++l) {
      if (q.zero_stage == 3) {
        if (q.overlap && l > 0) st.wait(prefetch); else st.blocking(gather_s(l));
        if (q.overlap && l + 1 < n) prefetch = st.start(gather_s(l + 1));
      } else if (sharded_gather && q.overlap && k == 0) {
        st.wait(gathered[static_cast<size_t>(l)]);
      }
      st.run(q.forward_layer_s);
    }
    st.run(q.forward_rest_s);
    st.run(q.backward_rest_s);
    for (int64_t l = n - 1; l >= 0; --l) {
      double& area = slot[l % 2];
      if (q.zero_stage == 3) {
        if (q.overlap && l < n - 1) st.wait(prefetch); else st.blocking(gather_s(l));
        if (q.overlap && l > 0) prefetch = st.start(gather_s(l - 1));
      }
      if (q.zero_stage >= 2 && q.overlap) st.wait(area);
      st.run(q.backward_layer_s);
      if (q.zero_stage >= 2) {
        if (q.overlap) area = st.start(layer_s(l)); else st.blocking(layer_s(l));
      } else if (q.overlap && k == m - 1) {
        const auto [b, e] = bucket_at[static_cast<size_t>(l)];
        if (e > b) st.start(reduce_s(b, e));
      }
    }
  }
  if (q.zero_stage >= 2) {
    st.wait(std::max(slot[0], slot[1]));
    st.blocking(resident_ar);
    if (q.zero_stage == 3) st.blocking(resident_ranges);  // the updated resident tensors
    else if (!q.overlap) st.blocking(all_gather_seconds(pg * total, G, bw, lat));
  } else {
    st.blocking(q.overlap ? reduce_s(0, q.resident) : reduce_s(0, total));
    if (q.zero_stage == 1 && !q.overlap) st.blocking(all_gather_seconds(pg * total, G, bw, lat));
  }
  t.collectives_s = st.collectives;
  t.exposed_s = st.compute - st.busy;
  // Bytes each device sends: all-reduce 2 (r-1)/r, reduce-scatter or gather (r-1)/r of the buffer.
  const double mb = static_cast<double>(m);
  switch (q.zero_stage) {
    case 0: t.bytes = 2.0 * share * kElem * total; break;
    case 1: t.bytes = share * (kElem + pg) * total; break;
    case 2: t.bytes = share * (mb * layers_bytes + 2.0 * kElem * q.resident + pg * total); break;
    default:
      t.bytes = share * (mb * (1.0 + 2.0 * pg / kElem) * layers_bytes + 3.0 * kElem * q.resident);
      break;
  }
  return t;
}

double layer_matmul_flops(const GPTConfig& m, int64_t b, int64_t s) {
  const double h = static_cast<double>(m.hidden_size), F = static_cast<double>(m.ffn());
  return 2.0 * static_cast<double>(b) * static_cast<double>(s) * (4.0 * h * h + 2.0 * h * F);
}

double layer_causal_attention_flops(const GPTConfig& m, int64_t b, int64_t s) {
  return 2.0 * static_cast<double>(b) * static_cast<double>(s) * static_cast<double>(s) *
         static_cast<double>(m.hidden_size);
}

namespace {

struct Link {
  double bandwidth_gbs, latency_us;
};
// The link a group of `size` ranks `stride` apart uses (ranks fill nodes in order).
Link group_link(const ClusterSpec& c, int64_t stride, int64_t size) {
  if (stride * size <= c.devices_per_node) return {c.intra_node_bandwidth_gbs, c.intra_node_latency_us};
  return {c.inter_node_bandwidth_gbs / static_cast<double>(c.devices_per_node), c.inter_node_latency_us};
}

}  // namespace

Prediction predict(const SweepPoint& p, const GPTConfig& model_in, const ClusterSpec& c, double peak_override) {
  Prediction r;
  GPTConfig m = model_in;
  m.tensor_parallel = p.tp;
  if (m.max_position_embeddings < p.seq_length) m.max_position_embeddings = p.seq_length;
  const std::string problem = layout_problem(p, m);
  if (!problem.empty()) {
    r.problem = "impossible layout: " + problem;
    return r;
  }
  if (c.max_nodes > 0 && p.world() > c.max_nodes * c.devices_per_node) {
    r.problem = detail::concat(p.world(), " devices needed, the cluster has ", c.max_nodes * c.devices_per_node);
    return r;
  }
  if (p.dtype != c.dtype) {
    r.problem = "the point's dtype " + p.dtype + " differs from the cluster's " + c.dtype;
    return r;
  }
  const double peak = (peak_override > 0 ? peak_override : c.peak_tflops) * 1e12;
  if (peak <= 0) {
    r.problem = "no peak: the cluster file says peak-tflops 0 (measure) and nothing was measured";
    return r;
  }
  const int64_t tp = p.tp, pp = p.pp, sp = p.ulysses(), b = p.micro_batch, s = p.seq_length;
  const bool msp = p.sp_type == "megatron" && p.sp > 1;
  const int64_t micro = p.grad_accum;  // micro-batches per pipeline per iteration
  r.micro_batches = micro;
  r.bubble_fraction = pipeline_bubble_fraction(pp, micro);
  const double L = static_cast<double>(m.num_layers), h = static_cast<double>(m.hidden_size);
  const double V = static_cast<double>(m.padded_vocab_size());
  const double layers_per_stage = L / static_cast<double>(pp);
  const double shard = static_cast<double>(tp * sp);  // devices sharing one micro-batch's work
  const double eb = static_cast<double>(c.bytes_per_element());
  const double tokens = static_cast<double>(b) * static_cast<double>(s);

  // Compute: passes over the slowest (last) stage's layers and the vocabulary projection.
  const double passes = p.recompute ? 4.0 : 3.0;
  const double n = tokens / static_cast<double>(sp);  // GEMM rows per device
  const double eff = c.matmul_efficiency * (c.matmul_half_tokens > 0 ? n / (n + c.matmul_half_tokens) : 1.0);
  const double mm = (layers_per_stage * layer_matmul_flops(m, b, s) + 2.0 * tokens * V * h) / shard;
  const double attn = layers_per_stage * layer_causal_attention_flops(m, b, s) / shard;
  r.stage_compute_s = passes * (mm / (peak * eff) + attn / (peak * c.attention_efficiency));
  // --logits-chunk-tokens: one chunk of the head's n rows (gathered over TP under Megatron SP)
  // resident at a time; training runs each chunk's backward in forward, so the time is the same.
  const double logits_rows = p.logits_chunk > 0 ? std::min(static_cast<double>(p.logits_chunk), n) : n;
  // Element-wise traffic: every stored activation written, read back and its gradient passed.
  const double act_layer = layer_activation_bytes(m, b, s, tp, sp, msp, c);
  // the logits are in the compute type (cross-entropy turns them into their gradient in place)
  const double logits_traffic = n * V / static_cast<double>(tp) * eb;
  const double logits_bytes = logits_rows * V / static_cast<double>(tp) * eb;  // resident
  r.stage_memory_s = passes * (layers_per_stage * act_layer + logits_traffic) / (c.memory_bandwidth_gbs * 1e9);
  // Tensor / sequence parallel collectives, forward and backward (+ the recomputed forward).
  const double comm_passes = p.recompute ? 3.0 : 2.0;
  const Link tp_link = group_link(c, 1, tp), sp_link = group_link(c, tp, sp);
  const double tp_layer_bytes = megatron_tp_elements_per_layer(tokens / static_cast<double>(sp), h, tp) * eb;
  // each rank's q, k, v and output are h / tp wide: the all-to-alls move that much
  const double sp_layer_bytes = ulysses_elements_per_layer(tokens, h / static_cast<double>(tp), sp) * eb;
  if (tp > 1) {
    // 2 all-reduces (or all-gather + reduce-scatter pairs: the same volume and steps) per pass
    const double per_collective = tokens / static_cast<double>(sp) * h * eb;
    r.stage_tp_s = comm_passes * layers_per_stage * 2.0 * all_reduce_seconds(per_collective, tp, tp_link.bandwidth_gbs, tp_link.latency_us);
  }
  if (sp > 1)
    r.stage_sp_s = comm_passes * layers_per_stage *
                   (sp_layer_bytes / (sp_link.bandwidth_gbs * 1e9) + 4.0 * static_cast<double>(sp - 1) * sp_link.latency_us * 1e-6);
  const double pp_msg = tokens / shard * h * eb;  // scatter-gather over TP, sharded sequence
  const Link pp_link = group_link(c, tp * sp * p.dp, pp);
  if (pp > 1) r.stage_pp_s = 2.0 * (pp_msg / (pp_link.bandwidth_gbs * 1e9) + pp_link.latency_us * 1e-6);
  const double stage = r.stage_compute_s + r.stage_memory_s + r.stage_tp_s + r.stage_sp_s + r.stage_pp_s;

  // Parameters on the most loaded stage (the first: embeddings and, for p = 1, the final LayerNorm),
  // sharded by TP.
  const double F = static_cast<double>(m.ffn());
  const double per_layer = 4.0 * h * h + 2.0 * h * F + 9.0 * h + F;  // GPTConfig::num_parameters' layer
  const double embed = V * h / static_cast<double>(tp) + static_cast<double>(m.max_position_embeddings) * h + 2.0 * h;
  const double stage_params = layers_per_stage * per_layer / static_cast<double>(tp) + embed;
  const int64_t zero_group = p.dp * sp;
  // (ZeRO-2/3's working areas: a second of each with the overlaps, as llm-pretrain sets them up)
  r.states = model_state_memory(stage_params, c.dtype, p.zero_stage, zero_group, embed, per_layer / static_cast<double>(tp),
                                p.overlap && p.zero_stage >= 2 ? 2 : 1, p.overlap && p.zero_stage == 3 ? 2 : 1,
                                layers_per_stage * 4.0 * h + 2.0 * h);  // the LayerNorms, replicated
  const StateBytes sb = state_bytes_per_parameter(c.dtype);
  const Link dp_link = group_link(c, tp, zero_group);
  {
    // The stage's compute split between its layers and the rest (embedding, head) by their
    // compute terms; memory traffic and the TP/SP/PP collectives follow the same split.
    const double layers_c = layers_per_stage * (layer_matmul_flops(m, b, s) / shard / (peak * eff) +
                                                layer_causal_attention_flops(m, b, s) / shard / (peak * c.attention_efficiency));
    const double rest_c = 2.0 * tokens * V * h / shard / (peak * eff);
    const double layers_share = layers_c / (layers_c + rest_c);
    const double forward = stage / passes, backward = stage * (passes - 1.0) / passes;
    DataParallelPlan q;
    q.zero_stage = p.zero_stage, q.ranks = zero_group, q.micro_batches = micro, q.layers = m.num_layers / pp;
    q.overlap = p.overlap;
    q.resident = embed, q.per_layer = per_layer / static_cast<double>(tp);
    q.bucket = static_cast<double>(std::max<int64_t>(40'000'000, 1'000'000 * zero_group));  // llm-pretrain's default
    q.gather_bytes = c.dtype == "fp32" ? 4.0 : 2.0;
    q.forward_layer_s = forward * layers_share / layers_per_stage, q.forward_rest_s = forward * (1.0 - layers_share);
    q.backward_layer_s = backward * layers_share / layers_per_stage, q.backward_rest_s = backward * (1.0 - layers_share);
    q.bandwidth_gbs = dp_link.bandwidth_gbs, q.latency_us = dp_link.latency_us;
    const DataParallelTime d = data_parallel_time(q);
    r.dp_s = d.collectives_s, r.dp_exposed_s = d.exposed_s, r.dp_bytes = d.bytes;
  }
  // AdamW reads and writes weights, gradients and moments of its shard once: memory bound.
  const double opt_params = p.zero_stage >= 1 ? stage_params / static_cast<double>(zero_group) : stage_params;
  r.optimizer_s = 2.0 * opt_params * (sb.param + sb.grad + sb.optimizer) / (c.memory_bandwidth_gbs * 1e9);

  r.iteration_s = static_cast<double>(micro + pp - 1) * stage + r.dp_exposed_s + r.optimizer_s;
  const double mlayers = static_cast<double>(micro);
  r.tp_bytes = tp > 1 ? comm_passes * L / static_cast<double>(pp) * tp_layer_bytes * mlayers : 0;
  r.sp_bytes = sp > 1 ? comm_passes * L / static_cast<double>(pp) * sp_layer_bytes * mlayers : 0;
  r.pp_bytes = pp > 1 ? 2.0 * pp_msg * mlayers : 0;

  // Memory: the first stage keeps min(p, m) micro-batches in flight (1F1B); the logits live on
  // the last stage (the first when p = 1).
  const double in_flight = static_cast<double>(std::min<int64_t>(pp, micro));
  const double stored_layer = p.recompute ? layer_checkpoint_bytes(m, b, s, tp, sp, msp, c) : act_layer;
  r.activations = in_flight * layers_per_stage * stored_layer;
  // Backward buffers: one layer's activations; recompute adds the recomputed layer's own.
  r.workspace = (p.recompute ? 2.0 : 1.0) * act_layer;
  r.logits = pp == 1 ? logits_bytes : 0;
  r.overhead = c.memory_overhead_gib * 1073741824.0;
  r.total_memory = r.states.total() + r.activations + r.workspace + r.logits + r.overhead;
  if (pp > 1)  // the last stage: one micro-batch in flight, but the logits
    r.total_memory = std::max(r.total_memory, r.states.total() + layers_per_stage * stored_layer + r.workspace +
                                                  logits_bytes + r.overhead);
  r.fits = r.total_memory <= c.memory_gib * 1073741824.0;

  const double world = static_cast<double>(p.world());
  r.tflops_megatron = megatron_flops_per_iteration(m, p.global_batch(), s, p.recompute) / r.iteration_s / world / 1e12;
  r.tflops_model = model_flops_per_iteration(m, p.global_batch(), s) / r.iteration_s / world / 1e12;
  r.mfu = r.tflops_model * 1e12 / peak;
  r.samples_per_second = static_cast<double>(p.global_batch()) / r.iteration_s;
  r.tokens_per_device_per_second = r.samples_per_second * static_cast<double>(s) / world;
  return r;
}

}  // namespace llm::sweep
