// llm-pretrain: GPT pretraining. Megatron's flags, a YAML config holding the same keys (flags
// override it), Megatron's log line, and a JSON-lines metrics file in --output-dir.
#include <omp.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <atomic>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <exception>
#include <filesystem>
#include <map>
#include <set>

#include "backend/backend.h"
#if defined(LLM_HAVE_CUDA) && defined(LLM_HAVE_NCCL)
#include "backend/cuda/cuda_backend.h"
#include "comm/nccl_communicator.h"
#endif
#include "comm/communicator.h"
#include "comm/mpi_session.h"
#include "core/error.h"
#include "core/threads.h"
#include "model/gpt.h"
#include "core/timer.h"
#include "parallel/comm_volume.h"
#include "parallel/process_grid.h"
#include "train/args.h"
#include "train/checkpointing.h"
#include "train/memory_check.h"
#include "train/deepspeed_config.h"
#include "train/data_setup.h"
#include "train/flops.h"
#include "train/metrics.h"
#include "train/trainer.h"

using namespace llm;

namespace {

// SIGTERM/SIGINT ask for a save at the next iteration boundary and a clean exit, said at once
// (by rank 0: an iteration may take minutes); a second one ends the process as the signal would.
std::atomic<int> g_stop_signal{0};
bool g_signal_lead = false;
timespec g_first_signal{};
extern "C" void on_stop_signal(int sig) {
  timespec now{};
  (void)clock_gettime(CLOCK_MONOTONIC, &now);  // async-signal-safe
  if (g_stop_signal.load() != 0) {
    // Only a user's second Ctrl-C ends the run at once: SIGTERM, or a copy of the first signal
    // (a launcher forwarding what the terminal also delivered), waits for the save.
    const double since = static_cast<double>(now.tv_sec - g_first_signal.tv_sec) +
                         1e-9 * static_cast<double>(now.tv_nsec - g_first_signal.tv_nsec);
    if (sig == SIGINT && g_stop_signal.load() == SIGINT && since >= 1.0) {
      std::signal(sig, SIG_DFL);
      std::raise(sig);
    }
    return;
  }
  g_first_signal = now;
  g_stop_signal.store(sig);
  if (g_signal_lead) {
    // (only a second Ctrl-C stops at once: a SIGTERM, a scheduler's, always waits for the save)
    static const char on_int[] = "\n> stopping at the end of this iteration (saving first with --save); Ctrl-C again to stop now\n";
    static const char on_term[] = "\n> SIGTERM: stopping at the end of this iteration (saving first with --save)\n";
    if (sig == SIGINT)
      (void)!::write(STDERR_FILENO, on_int, sizeof on_int - 1);
    else
      (void)!::write(STDERR_FILENO, on_term, sizeof on_term - 1);
  }
}

// Every rank must run the same configuration: ranks given different options (a wrapper, a
// --config file or a data directory that differs by node) would train different models
// silently, or wait in collectives the others never reach. Rank 0 compares every rank's options
// with its own and names the first difference. Collective. (A rank that sees other data under
// the same path finds no sample index after rank 0 has built it, and says so.)
// `loading` is the checkpoint this rank found to load ("" for none): a --load directory that
// only some nodes see would have those ranks load it and the others start from scratch.
void check_same_configuration(const MpiSession& mpi, const TrainArgs& args, const std::string& loading) {
  if (mpi.size() == 1) return;
  // --threads and --output-dir (rank 0's metrics alone) may differ by node without harm.
  std::vector<std::pair<std::string, std::string>> mine;
  const std::string kLoading = "the checkpoint to load";
  if (!args.load.empty()) mine.emplace_back(kLoading, loading.empty() ? "none" : loading);
  for (const OptionSpec& o : train_options())
    if (!o.no_op && o.name != "threads" && o.name != "output-dir") mine.emplace_back("--" + o.name, o.get(args));
  std::string flat;
  for (const auto& [name, value] : mine) flat += name + '\0' + value + '\0';
  const std::vector<std::string> all = mpi.gather(flat);
  std::string verdict;
  if (mpi.rank() == 0) {
    int ranks = 0;
    for (size_t r = 1; r < all.size(); ++r) {
      if (all[r] == flat) continue;
      if (++ranks > 1) continue;
      std::vector<std::string> theirs;
      for (size_t at = 0; at < all[r].size();) {
        const size_t end = all[r].find('\0', at);
        theirs.push_back(all[r].substr(at, end - at));
        at = end == std::string::npos ? all[r].size() : end + 1;
      }
      // The differing options, those rank 0 was given first (a derived default follows them).
      std::vector<size_t> differ;
      for (size_t i = 0; i < mine.size(); ++i)
        if (2 * i + 1 >= theirs.size() || theirs[2 * i] != mine[i].first || theirs[2 * i + 1] != mine[i].second)
          differ.push_back(i);
      std::stable_partition(differ.begin(), differ.end(), [&](size_t i) {
        return mine[i].first == kLoading || args.option_sources.count(mine[i].first.substr(2)) > 0;
      });
      if (differ.empty()) continue;
      const size_t i = differ[0];
      const std::string v = 2 * i + 1 < theirs.size() ? theirs[2 * i + 1] : "?";
      if (mine[i].first == kLoading) {
        // (a checkpoint's seed then differs too, said by no other option)
        verdict = detail::concat("--load ", args.load, ": rank ", r, " finds ",
                                 v == "none" ? std::string("no checkpoint") : v, " but rank 0 ",
                                 mine[i].second == "none" ? std::string("none") : mine[i].second,
                                 "; every rank reads its part of the checkpoint, so --load must be on a file system "
                                 "all nodes share (a directory on node-local disk?)");
        break;
      }
      verdict = detail::concat("ranks run with different options: ", mine[i].first, " is '", v, "' on rank ", r,
                               " but '", mine[i].second, "' on rank 0");
      if (differ.size() > 1) {
        verdict += " (also";
        for (size_t k = 1; k < differ.size() && k < 4; ++k) verdict += " " + mine[differ[k]].first;
        verdict += differ.size() > 4 ? " ...)" : ")";
      }
    }
    if (ranks > 1) verdict += detail::concat(" (", ranks, " ranks differ from rank 0)");
    if (!verdict.empty() && verdict.rfind("--load ", 0) != 0)
      verdict += "; every rank must be given the same options (a wrapper script or --config file that differs by "
                 "node?)";
  }
  verdict = mpi.broadcast(verdict);
  if (!verdict.empty()) throw AllRanksError(verdict);
}

std::string exe_dir(const char* argv0) {
  std::error_code ec;
  auto p = std::filesystem::canonical("/proc/self/exe", ec);
  if (ec) p = std::filesystem::absolute(argv0);
  return p.parent_path().string();
}

int run(int argc, char** argv, const MpiSession& mpi) {
  // --exit-duration-in-mins counts from here, as Megatron's from its process start: the set-up
  // (the sample index, the checkpoint load) is part of the job's wall time.
  const Timer run_timer;
  CLI::App app{"llm-pretrain: GPT pretraining (Megatron flag names)"};
  app.footer(
      "Options may also come from a YAML file (--config) under the same names without '--';\n"
      "flags given on the command line override it, and --model files sit below both.\n\n"
      "Example:\n"
      "  llm-pretrain --mock-data --vocab-size 512 --num-layers 4 --hidden-size 128 \\\n"
      "      --num-attention-heads 4 --seq-length 128 --micro-batch-size 8 \\\n"
      "      --global-batch-size 16 --train-iters 200 --lr 1e-3 --lr-warmup-iters 20");
  std::string config_file;
  app.add_option("--config", config_file, "YAML file of options");
  const TrainArgs defaults;
  std::map<std::string, std::string> values;
  std::map<std::string, std::vector<std::string>> lists;
  std::map<std::string, CLI::Option*> given;
  for (const OptionSpec& o : train_options()) {
    const std::string names = "--" + o.name + (o.alias.empty() ? "" : ",--" + o.alias);
    if (o.is_flag)
      given[o.name] = app.add_flag(names, o.help);
    else if (o.multi)
      given[o.name] = app.add_option(names, lists[o.name], o.help)->type_name(o.type);
    else
      given[o.name] = app.add_option(names, values[o.name], o.help)->default_str(o.get(defaults))->type_name(o.type);
  }
  // Megatron's reading of a command line: the last of a repeated option counts (an appended
  // override); an unknown option is named with the closest known one.
  std::vector<std::string> repeated;
  std::vector<std::string> cl = last_occurrences(std::vector<std::string>(argv + 1, argv + argc), {"config", "help"}, &repeated);
  cl.insert(cl.begin(), argv[0]);
  std::vector<char*> cargv;
  for (std::string& a : cl) cargv.push_back(a.data());
  // Under MPI the ranks agree on the outcome (a rank given other arguments by a wrapper may fail
  // alone): rank 0's message when it failed, else the failed rank's, and every rank exits.
  std::exception_ptr parse_failure;
  try {
    app.parse(static_cast<int>(cargv.size()), cargv.data());
  } catch (const CLI::ParseError&) {
    parse_failure = std::current_exception();
  }
  if (mpi.size() > 1 ? !mpi.all_ok(!parse_failure) : static_cast<bool>(parse_failure)) {
    const bool lead_failed = mpi.broadcast(parse_failure ? "1" : "") == "1";
    int code = 2;  // (a rank that parsed its arguments stops with the others)
    try {
      if (parse_failure) std::rethrow_exception(parse_failure);
    } catch (const CLI::ParseError& e) {
      code = e.get_exit_code() != 0 ? 2 : 0;
      if (mpi.rank() == 0) code = app.exit(e);
      else if (!lead_failed && code != 0) std::fprintf(stderr, "llm-pretrain: error: [rank %d] %s\n", mpi.rank(), e.what());
    }
    return code;
  }

  TrainArgs args;
  std::string model_name = given["model"]->count() ? values["model"] : "";
  if (!config_file.empty() && model_name.empty()) {
    TrainArgs probe;
    apply_yaml_file(probe, config_file);
    model_name = probe.model;
  }
  if (!model_name.empty()) {
    apply_yaml_file(args, resolve_model_file(model_name, exe_dir(argv[0])));
  }
  std::set<std::string> chosen;  // options the run sets itself (flags, --config): DeepSpeed's JSON must agree
  if (!config_file.empty())
    for (const std::string& k : apply_yaml_file(args, config_file)) chosen.insert(find_option(k) ? find_option(k)->name : k);
  for (const OptionSpec& o : train_options())
    if (given[o.name]->count()) {
      std::string v = o.is_flag ? "true" : values[o.name];
      if (o.multi)
        for (const std::string& w : lists[o.name]) v += (v.empty() ? "" : " ") + w;
      apply_option(args, o.name, v, "--" + o.name);
      chosen.insert(o.name);
    }
  args.model = model_name;
  std::vector<std::string> ds_ignored;
  if (!args.deepspeed_config.empty()) ds_ignored = apply_deepspeed_config(args, args.deepspeed_config, chosen);
  // As Megatron: Megatron sequence parallelism shards within the tensor-parallel group, so at
  // tensor-parallel size 1 it is off (ALCF's scripts pass it by default, with Ulysses too).
  const bool sp_dropped = args.sequence_parallel && args.tensor_model_parallel_size == 1;
  if (sp_dropped) args.sequence_parallel = false;

  // Layout: validated as a whole before anything is allocated (data, tensor, pipeline, Megatron
  // and Ulysses sequence parallelism, ZeRO 0-3).
  ParallelLayout layout{mpi.size(), args.tensor_model_parallel_size, args.pipeline_model_parallel_size,
                        args.ds_sequence_parallel_size};
  if (layout.tp < 1 || layout.pp < 1 || layout.sp < 1 || mpi.size() % (layout.tp * layout.pp * layout.sp))
    validate_layout(layout, {});  // throws the precise message
  args.data_parallel_size = layout.dp();
  args.resolve_defaults();
  validate_layout(layout, {args.num_layers, args.num_attention_heads, args.seq_length, args.micro_batch_size,
                           args.global_batch_size, args.sequence_parallel});
  args.validate();
  const bool lead = mpi.rank() == 0;
  auto say = [&](const char* fmt, auto... a) {
    if (lead) std::printf(fmt, a...);
  };
  if (sp_dropped) say("> --sequence-parallel: off at --tensor-model-parallel-size 1 (it shards within the tensor-parallel group)\n");
  for (const std::string& r : repeated) say("> --%s given more than once: the last counts\n", r.c_str());
  if (args.eval_interval > 0 && args.eval_iters == 0)
    say("> --eval-interval %lld without --eval-iters: no validation runs (--eval-iters gives its batches)\n",
        static_cast<long long>(args.eval_interval));
  {
    std::string ignored;
    for (const OptionSpec& o : train_options())
      if (o.no_op && given[o.name]->count()) ignored += " --" + o.name;
    if (!ignored.empty()) say("> accepted for Megatron scripts, without effect here:%s\n", ignored.c_str());
    if (!args.deepspeed_config.empty()) {
      std::string keys;
      for (const std::string& k : ds_ignored) keys += " " + k;
      say("> %s: ZeRO stage %lld, %s, clip %g, micro-batch %lld, global batch %lld%s%s\n", args.deepspeed_config.c_str(),
          static_cast<long long>(args.zero_stage), args.bf16 ? "bf16" : args.fp16 ? "fp16" : "fp32", args.clip_grad,
          static_cast<long long>(args.micro_batch_size), static_cast<long long>(args.global_batch_size),
          keys.empty() ? "" : "; without effect here:", keys.c_str());
    }
  }
  set_cpu_threads(args.threads, "--threads");

  // The data order is a function of the seed: resuming restores the checkpoint's seed unless
  // --no-load-rng (or --finetune) asks for this run's.
  std::string load_dir;
  TokenizerRecord loaded_tokenizer;  // the --load checkpoint's
  if (!args.load.empty()) refuse_foreign_checkpoints(args.load, "--load " + args.load);
  // As Megatron: a --load directory without a checkpoint in it (no 'latest', no metadata.json)
  // starts from scratch with a note, unless --exit-on-missing-checkpoint; a --finetune has to
  // have its weights. A checkpoint that is there but broken is always an error.
  const bool no_checkpoint = !args.load.empty() && !std::filesystem::exists(std::filesystem::path(args.load) / "latest") &&
                             !std::filesystem::exists(std::filesystem::path(args.load) / "metadata.json");
  if (no_checkpoint) {
    // Complete iterations without `latest` (a first save killed between publishing its directory
    // and `latest`): starting from scratch would overwrite them; name them instead.
    const std::string found = newest_complete_iteration(args.load);
    if (!found.empty())
      throw ConfigError("--load " + args.load + ": no 'latest' file, but " + found +
                        " is a complete checkpoint (a save that died before publishing 'latest'); pass it as --load");
    if (args.exit_on_missing_checkpoint || args.finetune)
      throw ConfigError("--load " + args.load + ": no checkpoint here (neither 'latest' nor metadata.json)" +
                        (args.finetune ? " to finetune from" : " (--exit-on-missing-checkpoint)"));
    say("> --load %s: no checkpoint found, starting from scratch%s\n", args.load.c_str(),
        save_root_is_empty(args.load) ? "" : " (the directory holds other files, but no 'latest' or metadata.json)");
  } else if (!args.load.empty()) {
    CheckpointReader probe = CheckpointReader::open(args.load);
    load_dir = probe.dir();
    loaded_tokenizer = checkpoint_tokenizer(probe);
    const json::Value* rng = probe.metadata().find("rng");
    if (!args.finetune && !args.no_load_rng && rng && rng->find("seed")) {
      if (!rng->find("seed")->is_integer())
        throw ConfigError(probe.dir() + "/metadata.json: 'rng.seed' must be an integer");
      const int64_t saved = rng->find("seed")->as_int();
      if (args.option_sources.count("seed") && saved != args.seed)  // (a seed the run was given)
        say("> --seed %lld: resuming with the checkpoint's seed %lld (its data order); --no-load-rng takes this run's\n",
            static_cast<long long>(args.seed), static_cast<long long>(saved));
      args.seed = saved;
    }
  }

  // Checkpoints in the save root that this run does not continue are not its to supersede (its
  // saves would move 'latest' away from them, --keep-last count them): refused before any work.
  // A --finetune continues none, even from that root: its iterations start again at 0.
  if (!args.save.empty() && (load_dir.empty() || args.finetune || !checkpoint_is_under(load_dir, args.save)))
    refuse_save_root_with_checkpoints(
        args.save, "--save " + args.save,
        args.finetune ? "This run finetunes (its iterations start again at 0): to continue the run saved there, pass --load " +
                            args.save + " without --finetune; else save into another directory."
                      : (load_dir.empty() ? std::string("This run loads none of them")
                                          : "This run loads " + load_dir + ", not one of them") +
                            ": pass --load " + args.save + " to continue from them, or save into another directory.");

  check_same_configuration(mpi, args, load_dir);
  // One rank builds a missing sample index; the others wait for it and read it.
  IndexCacheOptions cache;
  cache.is_builder = lead;
  cache.barrier = [&] { mpi.barrier(); };
  TrainingData data = build_training_data(args, cache);  // sets the vocabulary from the data
  // A resume continues on the ids the checkpoint learned: data of another tokenizer (of the same
  // vocabulary size, or the model check would name it) is another run. (Mock data has none; a
  // checkpoint trained on mock data or imported without a tokenizer records none.)
  if (const TokenizerIdentity& saved = loaded_tokenizer.identity;
      !load_dir.empty() && !args.finetune && !data.tokenizer.kind.empty() && !saved.kind.empty() &&
      saved.kind != "MockData" && saved.kind != "None" && !(saved == data.tokenizer))
    throw ConfigError("--load " + load_dir + ": the checkpoint was trained with the tokenizer " + saved.str() +
                      " (its metadata.json), but the --data-path data is tokenized with " + data.tokenizer.str() +
                      ": resuming would continue on other ids (--finetune starts a new run from its weights)");
  args.validate();
  if (args.backend == "cpu") {
    // Before anything large is allocated. Collective: every rank takes the smallest share of any
    // node, so all decide alike.
    const double share = -mpi.max(-available_host_bytes() / mpi.node_size());
    const HostMemoryVerdict mv = check_host_memory(args, layout, share);
    if (!mv.warning.empty()) say("> warning: %s\n", mv.warning.c_str());
  }
  const GPTConfig mc = args.model_config();
  const SampleSource& train = *data.train;
  Backend& backend = backend_by_name(args.backend);
  const bool on_gpu = args.backend == "cuda";
  // Groups (Megatron order, tp fastest): the tensor-parallel group shares (sp, dp, pp) ranks, the
  // Ulysses group (tp, dp, pp), the gradient group (data parallel x Ulysses) (tp, pp) and the
  // pipeline (tp, sp, dp).
  const GridCoordinates grid = grid_coordinates(layout, mpi.rank());
  // The collective timeout: over MPI here (the CPU's groups, and every group's host-side calls),
  // over NCCL below on GPUs.
  set_mpi_timeout_seconds(args.distributed_timeout_minutes * 60.0);
  std::unique_ptr<Communicator> world = mpi_world_communicator();
  const int64_t dps = layout.dp();
  // On GPUs the groups are NCCL communicators (device tensors over NCCL, host ones over MPI).
#if defined(LLM_HAVE_CUDA) && defined(LLM_HAVE_NCCL)
  if (on_gpu) set_nccl_timeout_seconds(args.distributed_timeout_minutes * 60.0);
#endif
  auto group = [&](int color, int key) -> std::unique_ptr<Communicator> {
    if (!on_gpu || mpi.size() == 1) return mpi_split_communicator(color, key);
#if defined(LLM_HAVE_CUDA) && defined(LLM_HAVE_NCCL)
    return nccl_split_communicator(*cuda::cuda_backend(), color, key);
#else
    throw ConfigError("--backend cuda on several ranks needs NCCL, which this build did not find (LLM_NCCL_ROOT)");
#endif
  };
  std::unique_ptr<Communicator> tp = group(
      static_cast<int>(grid.sp_rank + layout.sp * (grid.dp_rank + dps * grid.pp_rank)), static_cast<int>(grid.tp_rank));
  std::unique_ptr<Communicator> sp = group(
      static_cast<int>(grid.tp_rank + layout.tp * (grid.dp_rank + dps * grid.pp_rank)), static_cast<int>(grid.sp_rank));
  std::unique_ptr<Communicator> dp = group(static_cast<int>(grid.tp_rank + layout.tp * grid.pp_rank),
                                                            static_cast<int>(grid.dp_rank * layout.sp + grid.sp_rank));
  std::unique_ptr<Communicator> pp = group(
      static_cast<int>(grid.tp_rank + layout.tp * (grid.sp_rank + layout.sp * grid.dp_rank)), static_cast<int>(grid.pp_rank));
  ModelParallel parallel{tp.get(), args.sequence_parallel, sp.get()};
  parallel.pipeline = pp.get();
  parallel.zero_stage = args.zero_stage >= 2 ? static_cast<int>(args.zero_stage) : 0;
  parallel.zero_grad_areas = args.zero_stage >= 2 && args.overlap_grad_reduce ? 2 : 1;
  parallel.zero_param_areas = args.zero_stage == 3 && args.overlap_param_gather ? 2 : 1;
  // ZeRO-1/2 in mixed precision shard the f32 masters: the model is built without the whole f32
  // buffer (the gradient group, NCCL or MPI, takes the model's tensors).
  if (args.shard_masters && (args.zero_stage == 1 || args.zero_stage == 2) && args.compute_dtype() != DType::f32 &&
      layout.dp() * layout.sp > 1)
    parallel.sharded_masters = args.compute_dtype();
  GPT model(mc, backend, static_cast<uint64_t>(args.seed), args.seq_length, parallel);
  Trainer trainer(args, model, train, dp.get());
  MetricsWriter metrics = lead ? MetricsWriter(args.output_dir) : MetricsWriter();
  // A metrics record that could not be written (a full disk) did not stop the training; the
  // run's exit status says it (rank 0's: it alone writes them).
  auto metrics_status = [&] {
    if (metrics.error().empty()) return 0;
    std::fprintf(stderr, "llm-pretrain: error: %s\n", metrics.error().c_str());
    return 1;
  };
  if (!load_dir.empty()) {
    LoadOptions lo;
    lo.finetune = args.finetune;
    lo.load_optimizer = !args.no_load_optim;
    lo.scheduler = args.use_checkpoint_opt_param_scheduler ? SchedulerSource::checkpoint
                   : args.override_opt_param_scheduler     ? SchedulerSource::this_run
                                                           : SchedulerSource::must_match;
    LoadResult r = load_training_checkpoint(load_dir, trainer, lo);
    say("> loaded %s%s: continuing after iteration %lld (%lld samples consumed)\n", r.dir.c_str(),
                args.finetune ? " (weights only: --finetune)" : args.no_load_optim ? " (without optimizer state)" : "",
                static_cast<long long>(r.iteration), static_cast<long long>(r.consumed_samples));
  }
  TokenizerRecord tokenizer{data.tokenizer, {}};
  if (!args.tokenizer_model.empty()) tokenizer.files["model"] = args.tokenizer_model;
  if (!args.vocab_file.empty()) tokenizer.files["vocab"] = args.vocab_file;
  if (!args.merge_file.empty()) tokenizer.files["merges"] = args.merge_file;
  // Without tokenizer flags the checkpoint's own tokenizer files (the same tokenizer) travel on
  // into this run's checkpoints: they were dropped, and llm-generate could not load the resumed
  // checkpoint (after --keep-last, no copy of them was left).
  if (tokenizer.files.empty() && !load_dir.empty() && loaded_tokenizer.identity == tokenizer.identity)
    for (const auto& [role, path] : loaded_tokenizer.files)
      if (std::error_code ec; std::filesystem::is_regular_file(path, ec)) tokenizer.files[role] = path;
  if (tokenizer.identity.kind.empty()) tokenizer.identity = {"MockData", std::to_string(args.vocab_size)};
  // What a save needs is checked now, not after the training it would save: the tokenizer files
  // it copies, and a save root that can be made.
  if (!args.save.empty()) {
    for (const auto& [role, path] : tokenizer.files)  // (rank 0 copies them; its error aborts the job)
      if (lead)
      if (std::error_code ec; !std::filesystem::is_regular_file(path, ec))
        throw ConfigError(detail::concat("--", role == "model" ? "tokenizer-model" : role == "vocab" ? "vocab-file" : "merge-file",
                                         " ", path, ": not found (or not a file); a checkpoint carries its tokenizer"));
    check_save_root(args.save);
    // Every rank writes its shard into rank 0's staging directory: a save root on disk that only
    // some nodes see would fail the first save, after the training it was to keep.
    if (const std::vector<int> blind = mpi.ranks_not_seeing(args.save); !blind.empty())
      throw AllRanksError("--save " + args.save + ": " + ranks_phrase(blind) +
                          " of this job cannot see the files rank 0 writes there (a directory on node-local "
                          "disk?); every rank writes its part of a checkpoint into one directory, so --save must be "
                          "on a file system all nodes share");
  }
  // Fault injection for the failure tests: LLM_FAULT_INJECT=<rank>:<iteration> makes that rank
  // raise an error at the start of that iteration, <rank>:save:<iteration> at the start of that
  // iteration's checkpoint save (the others already writing theirs); no rank may hang, and no
  // half-written checkpoint may be published.
  int64_t fault_rank = -1, fault_iteration = -1;
  bool fault_in_save = false;
  if (const char* f = std::getenv("LLM_FAULT_INJECT")) {
    long long r = -1, i = -1;
    if (std::sscanf(f, "%lld:save:%lld", &r, &i) == 2)
      fault_in_save = true;
    else if (std::sscanf(f, "%lld:%lld", &r, &i) != 2)
      throw ConfigError(std::string("LLM_FAULT_INJECT='") + f + "': expected <rank>:<iteration> or <rank>:save:<iteration>");
    fault_rank = r, fault_iteration = i;
  }
  auto save = [&] {
    if (args.save.empty()) return;
    if (fault_in_save && mpi.rank() == fault_rank && trainer.iteration() == fault_iteration)
      throw Error(detail::concat("injected fault while saving iteration ", fault_iteration, " (LLM_FAULT_INJECT)"));
    // Every rank writes the part of the state it owns (its ZeRO shard, its stage's and TP rank's
    // tensors) to its own shard file; rank 0 indexes them and publishes (a collective).
    Timer t;
    const std::string dir = save_training_checkpoint_parallel(args.save, args, trainer, tokenizer,
                                                              static_cast<int>(args.keep_last), mpi);
    // Rank 0 publishes after the others have returned (fsyncs, removing old checkpoints: minutes
    // on a slow file system): they wait here, outside the communicators' collective timeout, not
    // in the next watched collective.
    mpi.barrier();
    if (lead) {
      std::printf("> saved checkpoint %s in %.2f s\n", dir.c_str(), t.seconds());
      std::fflush(stdout);
    }
  };
  g_signal_lead = lead;
  std::signal(SIGTERM, on_stop_signal);
  std::signal(SIGINT, on_stop_signal);

  say("> model %s: %lld layers, hidden %lld, %lld heads, ffn %lld, vocab %lld (padded %lld), "
              "%.2fM parameters\n",
              mc.name.c_str(), static_cast<long long>(mc.num_layers), static_cast<long long>(mc.hidden_size),
              static_cast<long long>(mc.num_heads), static_cast<long long>(mc.ffn()),
              static_cast<long long>(mc.vocab_size), static_cast<long long>(mc.padded_vocab_size()),
              static_cast<double>(mc.num_parameters(args.seq_length)) / 1e6);
  say("> %s\n", data.summary.c_str());
  say("> global batch %lld = micro-batch %lld x %lld accumulation steps x %lld data-parallel ranks; seq %lld; "
              "%s backend, %d threads\n",
              static_cast<long long>(args.global_batch_size), static_cast<long long>(args.micro_batch_size),
              static_cast<long long>(args.micro_batches()), static_cast<long long>(args.data_parallel_size),
              static_cast<long long>(args.seq_length), backend.name().c_str(), omp_get_max_threads());
  say("> layout: world %d = data %lld x tensor %lld%s x pipeline %lld x Ulysses sequence %lld; %.2fM parameters per rank\n",
      mpi.size(), static_cast<long long>(layout.dp()), static_cast<long long>(layout.tp),
      args.sequence_parallel ? " (Megatron sequence parallel)" : "", static_cast<long long>(layout.pp),
      static_cast<long long>(layout.sp), static_cast<double>(model.parameters().numel()) / 1e6);
  if (args.bf16 || args.fp16)
    say("> precision: %s activations and compute weights; fp32 master weights, gradients and optimizer state%s\n",
        args.bf16 ? "bf16" : "fp16",
        !args.fp16 ? "" : args.loss_scale > 0 ? detail::concat("; fixed loss scale ", args.loss_scale).c_str()
                                              : detail::concat("; dynamic loss scale from ", args.initial_loss_scale,
                                                               " (window ", args.loss_scale_window, ", hysteresis ",
                                                               args.hysteresis, ", min ", args.min_loss_scale, ")").c_str());
  const Trainer::StateBytes sb = trainer.state_bytes();
  say("> optimizer state: %.1f MB per rank (ZeRO stage %lld over %lld data-parallel ranks)\n",
      static_cast<double>(sb.optimizer) / 1e6, static_cast<long long>(args.zero_stage),
      static_cast<long long>(args.data_parallel_size));
  if (args.overlap_grad_reduce && layout.dp() * layout.sp > 1) {
    if (trainer.num_buckets() > 0)
      say("> gradient reduction: %lld buckets started during the last micro-batch's backward\n",
          static_cast<long long>(trainer.num_buckets()));
    else if (args.zero_stage >= 2)
      say("> gradient reduction: each layer's reduce-scatter runs while the next layer's backward goes on "
          "(two gradient working areas)\n");
    else
      say("> --overlap-grad-reduce has no effect here (the gradient group cannot take device tensors: one "
          "reduction through the host)\n");
  }
  if (args.overlap_param_gather) {
    if (args.zero_stage == 3)
      say("> parameter gathers: each layer's next one runs while it computes (two parameter working areas)\n");
    else if (trainer.overlaps_param_gather())
      say("> parameter all-gather after the step: started layer by layer, each finished just before the layer's "
          "forward\n");
    else
      say("> --overlap-param-gather has no effect here (%s)\n",
          args.zero_stage == 0 ? "no sharded optimizer: --zero-stage 1-3"
          : layout.dp() * layout.sp == 1 ? "one rank in the gradient group"
                                         : "the gradient group cannot take device tensors: one gather through the host");
  }
  if (trainer.shards_masters())
    say("> f32 master weights sharded over the %lld ranks of the gradient group with the optimizer state; the %s "
        "copy is all-gathered after each step (Megatron's distributed optimizer)\n",
        static_cast<long long>(layout.dp() * layout.sp), std::string(dtype_name(args.compute_dtype())).c_str());
  say("> model states per rank: parameters %.2f MB, gradients %.2f MB, optimizer %.2f MB\n",
      static_cast<double>(sb.parameters) / 1e6, static_cast<double>(sb.gradients) / 1e6,
      static_cast<double>(sb.optimizer) / 1e6);
  say("> TFLOPs column: %s formula; metrics in %s\n",
              args.tflops_formula == "model" ? "model-FLOPs" : "Megatron (Narayanan et al. 2021)",
              metrics.path().c_str());
  std::fflush(stdout);

  const double flops_meg = megatron_flops_per_iteration(mc, args.global_batch_size, args.seq_length,
                                                        args.full_recompute());
  const double flops_model = model_flops_per_iteration(mc, args.global_batch_size, args.seq_length);
  LogAccumulator acc;
  LogRecord rec;
  rec.train_iters = args.train_iters;
  rec.tflops_formula = args.tflops_formula;
  auto do_eval = [&](const std::string& where) {
    // Every replica evaluates its slice of each global batch, as in training (Megatron's), and
    // the losses are summed over the gradient group.
    if (args.eval_iters <= 0) return;
    const double loss = trainer.evaluate(*data.valid, args.eval_iters);
    if (lead) std::printf("%s\n", validation_report(where, loss).c_str());
    metrics.write_validation(trainer.iteration(), loss);  // (a no-op off rank 0)
    std::fflush(stdout);
  };
  // The loaded checkpoint (or nothing, at iteration 0) needs no save: a run that steps no
  // further must not rewrite it (with --no-load-optim that would replace its optimizer state).
  int64_t last_saved = trainer.iteration();
  // Phase times since the last log line, for the timer block.
  double t_fb = 0, t_ar = 0, t_ag = 0, t_opt = 0, t_pp = 0;
  int64_t timed_iters = 0;
  bool memory_reported = false;
  const int64_t first_iteration = trainer.iteration() + 1;
  for (int64_t it = first_iteration; it <= args.train_iters; ++it) {
    if (!fault_in_save && mpi.rank() == fault_rank && it == fault_iteration)
      throw Error(detail::concat("injected fault at iteration ", it, " (LLM_FAULT_INJECT)"));
    for (Communicator* c : {tp.get(), sp.get(), dp.get(), pp.get()}) c->reset_volume();
    IterationStats st = trainer.train_step();
    if (it == first_iteration) {  // collective: the largest rank's figures
      const double mb = 1.0 / 1e6;
      const double act = world->all_reduce_max(static_cast<double>(model.activation_bytes()) * mb);
      const double logits = world->all_reduce_max(static_cast<double>(model.logits_bytes()) * mb);
      say("> %s\n", activation_report(act, logits, args.logits_chunk_tokens).c_str());
    }
    if (it == first_iteration && mpi.size() > 1) {
      // The first iteration's traffic, against the analysis of the layout.
      CommVolumeInputs cv;
      cv.model = model.config();
      cv.micro_batch = args.micro_batch_size;
      cv.seq_length = args.seq_length;
      cv.micro_batches = args.micro_batches();
      cv.tp = layout.tp, cv.sp = layout.sp, cv.dp = layout.dp(), cv.pp = layout.pp;
      cv.stage = grid.pp_rank;
      cv.megatron_sp = args.sequence_parallel;
      cv.recompute = args.full_recompute();
      cv.zero_stage = args.zero_stage;
      cv.params_per_rank = model.parameters().numel();
      cv.resident_params = model.parameters().resident_numel();
      cv.layer_params = model.parameters().layer_area();
      for (const ParamSpec& s : model.parameters().specs()) {
        if (s.f32_op && s.group == model.first_layer()) cv.layer_f32_op_params += numel(s.shape);
        if (s.f32_op) cv.f32_op_params += numel(s.shape);
      }
      cv.sharded_masters = trainer.shards_masters();
      cv.activation_bytes = static_cast<int64_t>(dtype_size(args.compute_dtype()));
      say("> %s\n",
          comm_volume_report({tp->volume(), sp->volume(), dp->volume(), pp->volume()}, analytic_comm_volume(cv)).c_str());
    }
    acc.add(st.loss, st.finite, !st.skipped, st.seconds, st.grad_norm, st.lr, st.data_seconds);
    t_fb += st.forward_backward_seconds, t_ar += st.grads_all_reduce_seconds;
    t_ag += st.params_all_gather_seconds, t_opt += st.optimizer_seconds, t_pp += st.pipeline_seconds;
    ++timed_iters;
    if (!st.finite) {
      if (lead)
        std::fprintf(stderr, "[warning] iteration %lld: non-finite %s (loss %g, grad norm %g); update skipped\n",
                   static_cast<long long>(it), std::isfinite(st.loss) ? "gradient" : "loss", st.loss,
                   st.grad_norm);
      if (trainer.nan_iterations() > args.max_nan_iterations)
        throw Error(detail::concat("stopping at iteration ", it, ": ", trainer.nan_iterations(),
                                   " non-finite iteration(s), more than --max-nan-iterations ",
                                   args.max_nan_iterations));
    }
    if (it % args.log_interval == 0 || it == args.train_iters) {
      rec.iteration = it;
      rec.consumed_samples = trainer.consumed_samples();
      rec.consumed_tokens = trainer.consumed_tokens();
      acc.flush_into(rec, args.global_batch_size, args.seq_length, mpi.size(), flops_meg, flops_model);
      rec.loss_scale = trainer.loss_scaler().scale();
      DeviceMemoryStats mem;
      const bool device_mem = backend.device_memory(mem);  // the same answer on every rank
      if (device_mem) {  // the metrics carry the largest rank's figures (collective)
        const double mib = 1.0 / 1048576.0;
        rec.memory_allocated_mib = world->all_reduce_max(static_cast<double>(mem.allocated) * mib);
        rec.memory_max_allocated_mib = world->all_reduce_max(static_cast<double>(mem.max_allocated) * mib);
        rec.memory_reserved_mib = world->all_reduce_max(static_cast<double>(mem.reserved) * mib);
      }
      say("%s\n", megatron_log_line(rec).c_str());
      if (device_mem && !memory_reported) {  // once, as Megatron does
        say("%s\n", memory_report_line(0, it, static_cast<double>(mem.allocated) / 1048576.0,
                                        static_cast<double>(mem.max_allocated) / 1048576.0,
                                        static_cast<double>(mem.reserved) / 1048576.0).c_str());
        memory_reported = true;
      }
      if (args.timing_log_level >= 1) {
        std::vector<TimerRow> rows;
        auto row = [&](const char* name, double total) {
          const double ms = 1e3 * total / static_cast<double>(timed_iters);
          rows.push_back({name, world->all_reduce_min(ms), world->all_reduce_max(ms)});  // collective
        };
        row("forward-backward", t_fb);
        if (layout.dp() > 1) row("grads-all-reduce", t_ar);
        if (args.zero_stage >= 1 && layout.dp() > 1) row("params-all-gather", t_ag);
        if (layout.pp > 1) row("pipeline-send-recv", t_pp);
        row("optimizer", t_opt);
        say("%s\n", timers_block(rows).c_str());
      }
      t_fb = t_ar = t_ag = t_opt = t_pp = 0;
      timed_iters = 0;
      std::fflush(stdout);
      metrics.write(rec);
    }
    if (args.eval_interval > 0 && it % args.eval_interval == 0 && it != args.train_iters)
      do_eval(detail::concat("iteration ", it));
    if (args.save_interval > 0 && it % args.save_interval == 0) {
      save();
      last_saved = it;
    }
    // Every rank must stop at the same iteration: a signal seen by any rank, or rank 0's
    // clock, decides for all (one scalar all-reduce per iteration: the ranks with a signal count
    // in ones, rank 0's clock as 2^30, beyond any number of ranks).
    constexpr double kClock = 1073741824.0;
    const double flags = world->all_reduce_sum(
        (g_stop_signal.load() ? 1.0 : 0.0) +
        (lead && args.exit_duration_in_mins > 0 && run_timer.seconds() / 60.0 > args.exit_duration_in_mins ? kClock : 0.0));
    std::string stop;
    if (flags >= kClock) stop = "--exit-duration-in-mins";
    if (std::fmod(flags, kClock) >= 1.0) stop = g_stop_signal.load() == SIGINT ? "SIGINT" : "SIGTERM";
    if (stop.empty() && args.exit_interval > 0 && it % args.exit_interval == 0) stop = "--exit-interval";
    if (!stop.empty()) {
      if (last_saved != it) save();
      say("> exiting at iteration %lld (%s)\n", static_cast<long long>(it), stop.c_str());
      return metrics_status();
    }
  }
  if (last_saved != trainer.iteration()) save();
  do_eval("the end of training for val data");
  return metrics_status();
}

}  // namespace

int main(int argc, char** argv) {
  MpiSession mpi(&argc, &argv);
  try {
    return run(argc, argv, mpi);
  } catch (const AllRanksError& e) {
    if (mpi.rank() == 0) std::fprintf(stderr, "llm-pretrain: error: %s\n", e.what());
    return 2;
  } catch (const ConfigError& e) {
    // Usually every rank meets the same configuration error: rank 0 says it and aborts the job
    // (so no rank is left waiting in a collective). Another rank may meet one alone, though (a
    // config or data file only some nodes see, flags that differ by rank): it says its own,
    // named by rank, unless rank 0's abort has ended it within a grace period first.
    mpi.yield_to_lead();
    if (mpi.rank() == 0) std::fprintf(stderr, "llm-pretrain: error: %s\n", e.what());
    else std::fprintf(stderr, "llm-pretrain: error: [rank %d] %s\n", mpi.rank(), e.what());
    std::fflush(stderr);
    if (mpi.size() > 1) mpi.abort(2);
    return 2;
  } catch (const std::exception& e) {
    if (mpi.size() > 1) {  // (the same grace: a stop every rank decides, e.g. too many NaN iterations, said once)
      mpi.yield_to_lead();
      std::fprintf(stderr, "llm-pretrain: error: [rank %d] %s\n", mpi.rank(), e.what());
      std::fflush(stderr);
      mpi.abort(1);
    }
    std::fprintf(stderr, "llm-pretrain: error: %s\n", e.what());
    return 1;
  }
}
