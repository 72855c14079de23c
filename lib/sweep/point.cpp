#include "sweep/point.h"

#include <algorithm>

#include "core/error.h"
#include "parallel/process_grid.h"
#include "train/args.h"

namespace llm::sweep {

std::string SweepPoint::label_without(const std::string& v) const {
  std::string s = model;
  auto add = [&](const char* var, const std::string& text) {
    if (v != var) s += " " + text;
  };
  add("seq", detail::concat("s", seq_length));
  add("mb", detail::concat("mb", micro_batch));
  if (grad_accum != 1 || v == "gas") add("gas", detail::concat("gas", grad_accum));
  add("dp", detail::concat("dp", dp));
  add("tp", detail::concat("tp", tp));
  add("pp", detail::concat("pp", pp));
  add("sp", detail::concat("sp", sp, "(", sp_type, ")"));
  add("zero", detail::concat("z", zero_stage));
  s += " " + dtype + " " + backend;
  if (recompute) s += " +rc";
  if (overlap) s += " +ov";
  if (logits_chunk > 0) s += detail::concat(" lc", logits_chunk);
  return s;
}

int64_t SweepPoint::swept_value(const std::string& v) const {
  if (v == "seq") return seq_length;
  if (v == "mb") return micro_batch;
  if (v == "gas") return grad_accum;
  if (v == "dp") return dp;
  if (v == "tp") return tp;
  if (v == "pp") return pp;
  if (v == "sp") return sp;
  if (v == "zero") return zero_stage;
  throw Error("unknown swept variable '" + v + "'");
}

std::string swept_variable(const SweepGrid& g) {
  const std::pair<const char*, size_t> sizes[] = {{"seq", g.seq_lengths.size()}, {"mb", g.micro_batches.size()},
                                                  {"gas", g.grad_accums.size()}, {"dp", g.dps.size()},
                                                  {"tp", g.tps.size()},          {"pp", g.pps.size()},
                                                  {"sp", g.sps.size()},          {"zero", g.zero_stages.size()}};
  for (const auto& [name, n] : sizes)
    if (n > 1) return name;
  return "seq";
}

std::vector<SweepPoint> expand(const SweepGrid& g) {
  std::vector<SweepPoint> out;
  for (const auto& model : g.models)
    for (const auto& backend : g.backends)
      for (const auto& dtype : g.dtypes)
        for (int64_t dp : g.dps)
          for (int64_t tp : g.tps)
            for (int64_t pp : g.pps)
              for (const auto& sp_type : g.sp_types)
                for (int64_t sp : g.sps)
                  for (int64_t zero : g.zero_stages)
                    for (bool rc : g.recomputes)
                      for (bool ov : g.overlaps)
                        for (int64_t mb : g.micro_batches)
                          for (int64_t gas : g.grad_accums)
                            for (int64_t seq : g.seq_lengths) {
                              SweepPoint p;
                              p.model = model, p.backend = backend, p.dtype = dtype;
                              p.dp = dp, p.tp = tp, p.pp = pp, p.sp = sp, p.sp_type = sp_type;
                              p.zero_stage = zero, p.recompute = rc, p.overlap = ov;
                              p.micro_batch = mb, p.grad_accum = gas, p.seq_length = seq;
                              p.vocab_size = g.vocab_size;
                              p.logits_chunk = g.logits_chunk;
                              out.push_back(p);
                            }
  return out;
}

GPTConfig point_model(const SweepPoint& p, const std::string& exe_dir) {
  TrainArgs a;
  apply_yaml_file(a, resolve_model_file(p.model, exe_dir));
  if (p.vocab_size > 0) a.vocab_size = p.vocab_size;
  a.seq_length = p.seq_length;
  a.model = p.model;
  GPTConfig c = a.model_config();
  if (c.max_position_embeddings == 0 || c.max_position_embeddings < p.seq_length)
    c.max_position_embeddings = p.seq_length;
  c.tensor_parallel = p.tp;
  return c;
}

std::string layout_problem(const SweepPoint& p, const GPTConfig& m) {
  if (p.sp_type != "ds" && p.sp_type != "megatron") return "sp type '" + p.sp_type + "' is not ds or megatron";
  if (p.sp_type == "megatron" && p.sp > 1 && p.sp != p.tp)
    return detail::concat("Megatron sequence parallelism runs over the tensor-parallel group: sp ", p.sp,
                          " must equal tp ", p.tp);
  if (p.zero_stage < 0 || p.zero_stage > 3) return detail::concat("ZeRO stage ", p.zero_stage, " is not 0, 1, 2 or 3");
  if (p.dp < 1 || p.micro_batch < 1 || p.grad_accum < 1 || p.seq_length < 1) return "sizes must be >= 1";
  try {
    m.validate(p.seq_length);
    ParallelLayout l{p.world(), p.tp, p.pp, p.ulysses()};
    validate_layout(l, {m.num_layers, m.num_heads, p.seq_length, p.micro_batch, p.global_batch(),
                        p.sp_type == "megatron" && p.sp > 1});
  } catch (const ConfigError& e) {
    return e.what();
  }
  return "";
}

int64_t threads_per_rank(const SweepPoint& p, int64_t total) {
  if (total <= 0) return 0;
  return std::max<int64_t>(1, total / p.world());
}

std::vector<std::string> pretrain_command(const SweepPoint& p, const LaunchOptions& o) {
  std::vector<std::string> cmd;
  auto num = [](int64_t v) { return std::to_string(v); };
  if (p.world() > 1 && o.open_mpi) {
    // --bind-to none: Open MPI pins each rank to one core by default (at 2 ranks or fewer), where
    // its OpenMP threads would share that core
    cmd = {o.mpiexec, "-np", num(p.world()), "--oversubscribe", "--bind-to", "none"};
    if (o.as_root) cmd.push_back("--allow-run-as-root");
    if (o.threads > 0) {
      cmd.push_back("-x");
      cmd.push_back("OMP_NUM_THREADS=" + num(threads_per_rank(p, o.threads)));
    }
  } else if (p.world() > 1) {  // MPICH / Hydra passes the environment (OMP_NUM_THREADS) by default
    cmd = {o.mpiexec, "-n", num(p.world())};
  }
  const int64_t iters = o.warmup_iters + o.timed_iters;
  for (const std::string& s :
       {o.pretrain, std::string("--model"), p.model, std::string("--mock-data"), std::string("--seq-length"),
        num(p.seq_length), std::string("--micro-batch-size"), num(p.micro_batch), std::string("--global-batch-size"),
        num(p.global_batch()), std::string("--train-iters"), num(iters), std::string("--log-interval"), num(1),
        std::string("--lr-warmup-iters"), num(0), std::string("--tensor-model-parallel-size"), num(p.tp),
        std::string("--pipeline-model-parallel-size"), num(p.pp), std::string("--zero-stage"), num(p.zero_stage),
        std::string("--output-dir"), o.output_dir})
    cmd.push_back(s);
  if (p.vocab_size > 0) cmd.insert(cmd.end(), {"--vocab-size", num(p.vocab_size)});
  if (p.sp > 1) {
    if (p.sp_type == "ds")
      cmd.insert(cmd.end(), {"--ds-sequence-parallel-size", num(p.sp)});
    else
      cmd.push_back("--sequence-parallel");
  }
  if (p.recompute) cmd.insert(cmd.end(), {"--recompute-granularity", "full"});
  if (p.overlap) {
    cmd.push_back("--overlap-grad-reduce");
    if (p.zero_stage >= 1) cmd.push_back("--overlap-param-gather");
  }
  if (p.logits_chunk > 0) cmd.insert(cmd.end(), {"--logits-chunk-tokens", num(p.logits_chunk)});
  // Non-default precisions and backends are passed under Megatron's / our names; a build that
  // lacks them refuses, and the refusal becomes the point's error row.
  if (p.dtype == "bf16") cmd.push_back("--bf16");
  if (p.dtype == "fp16") cmd.push_back("--fp16");
  if (p.backend != "cpu") cmd.insert(cmd.end(), {"--backend", p.backend});
  if (o.threads > 0) cmd.insert(cmd.end(), {"--threads", num(threads_per_rank(p, o.threads))});
  return cmd;
}

}  // namespace llm::sweep
