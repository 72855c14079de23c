#!/usr/bin/env bash
# pipelines/launch/train.sh: the ALCF environment contract, layout derivation, run naming,
# scheduler detection, errors before launch, and a real 2-rank run with its log files.
# usage: launch_test.sh <build dir with tools/>
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
export LLM_BIN="$1/tools"
source "$(dirname "${BASH_SOURCE[0]}")/checks.sh"
cd "$work"
launch="$root/pipelines/launch/train.sh"

printf 'x3001\nx3001\nx3002\nx3002\n' > nodes
DRY_RUN=1 PBS_NODEFILE=nodes NGPU_PER_HOST=4 MODEL_SIZE_KEY=GPT13B SEQ_LEN=1024 MPSIZE=8 \
  USE_ACTIVATION_CHECKPOINTING=1 MOCK_DATA=1 "$launch" > dry.txt 2>&1
check "dry run exits 0" "[ $? -eq 0 ]"
check "PBS node file: 2 hosts x 4 = 8 ranks" "grep -q 'scheduler PBS: 2 host(s) x 4 .* = 8 ranks' dry.txt"
check "run name follows ALCF's pattern" "grep -q 'run: gpt_megatron_actCkpt_GPT13B_z0_seqlen1024_mp8_pp1_sp1_nl40_hs5120_gb1_mb1$' dry.txt"
check "command launches 8 ranks with the host file" "grep -q 'command: mpiexec -n 8 .*nodes.*llm-pretrain --model GPT13B --seq-length 1024' dry.txt && grep -q -- '--recompute-granularity full' dry.txt"
check "Open MPI: ranks are not pinned to one core each (--bind-to none)" "grep -q 'command: mpiexec -n 8 --map-by ppr:4:node --bind-to none ' dry.txt"
DRY_RUN=1 NGPU_PER_HOST=8 MODEL_SIZE_KEY=GPT125M MICRO_BATCH=2 GAS=4 MPSIZE=2 MOCK_DATA=1 "$launch" > dry2.txt 2>&1
check "global batch = micro x gas x dp" "grep -q 'dp 4 x tp 2 x pp 1 x sp 1 (megatron); global batch 32 = micro 2 x gas 4 x dp 4' dry2.txt"
DRY_RUN=1 NGPU_PER_HOST=8 MODEL_SIZE_KEY=GPT125M MICRO_BATCH=abc MOCK_DATA=1 "$launch" > bad1.txt 2>&1
check "a size that is not a positive integer is named (not bash's unbound variable)" "[ $? -eq 2 ] && grep -q \"MICRO_BATCH must be a positive integer, got 'abc'\" bad1.txt"
DRY_RUN=1 NGPU_PER_HOST=8 MODEL_SIZE_KEY=GPT125M GAS=0 MOCK_DATA=1 "$launch" > bad2.txt 2>&1
check "GAS=0 is refused (it made a global batch of 0)" "[ $? -eq 2 ] && grep -q \"GAS must be a positive integer, got '0'\" bad2.txt"
DRY_RUN=1 NGPU_PER_HOST=4 DEVICE_KIND=rank MODEL_SIZE_KEY=GPT125M SPSIZE=2 SP_TYPE=ds MOCK_DATA=1 "$launch" > dry3.txt 2>&1
check "SP_TYPE=ds passes Ulysses' flag" "grep -q -- '--ds-sequence-parallel-size 2' dry3.txt"
check "ranks that are not GPUs run the CPU backend" "grep -q -- '--backend cpu' dry3.txt"
DRY_RUN=1 NGPU_PER_HOST=4 DEVICE_KIND=GPU MODEL_SIZE_KEY=GPT125M MOCK_DATA=1 "$launch" > dry4.txt 2>&1
check "GPU ranks run the CUDA backend (BACKEND overrides)" "grep -q -- '--backend cuda' dry4.txt && BACKEND=cpu DRY_RUN=1 NGPU_PER_HOST=4 DEVICE_KIND=GPU MODEL_SIZE_KEY=GPT125M MOCK_DATA=1 '$launch' 2>&1 | grep -q -- '--backend cpu'"
check "GPU ranks train in bf16 by default, CPU ranks in fp32; DTYPE=fp16 passes --fp16" "grep -q -- '--backend cuda --bf16' dry4.txt && ! grep -q -- '--bf16\\|--fp16' dry3.txt && DTYPE=fp16 DRY_RUN=1 NGPU_PER_HOST=4 MODEL_SIZE_KEY=GPT125M MOCK_DATA=1 '$launch' 2>&1 | grep -q -- '--backend cpu --fp16'"
USE_FLASH_ATTN=0 DRY_RUN=1 NGPU_PER_HOST=4 MODEL_SIZE_KEY=GPT125M MOCK_DATA=1 "$launch" > dry5.txt 2>&1
rc=$?  # (a failing launcher must not pass as "no flag": the command is checked to be there)
check "USE_FLASH_ATTN=1 (the default) passes --use-flash-attn-v2, 0 does not" "grep -q -- '--use-flash-attn-v2' dry3.txt && [ $rc -eq 0 ] && grep -q 'command: ' dry5.txt && ! grep -q -- '--use-flash-attn' dry5.txt"
# A GPU node (a stand-in nvidia-smi listing 4 A100s; a PALS-style mpiexec): the GPUs are found
# whether or not NGPU_PER_HOST is given (ALCF's helpers export it), and the ranks run CUDA in bf16.
# a machine of cores: one rank per core, whatever OMP_NUM_THREADS (which GNU nproc obeys) says
if ! command -v nvidia-smi > /dev/null; then
  cores=$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)
  env -u PBS_NODEFILE OMP_NUM_THREADS=1 DRY_RUN=1 MODEL_SIZE_KEY=GPT125M MOCK_DATA=1 "$launch" > cores.txt 2>&1
  check "a machine of cores: a rank per core with OMP_NUM_THREADS=1 set ($cores)" "grep -q 'scheduler local: 1 host(s) x $cores core(s) = $cores ranks' cores.txt"
fi
mkdir -p fakebin
printf '#!/bin/sh\nfor i in 0 1 2 3; do echo "GPU $i: NVIDIA A100-SXM4-40GB (UUID: GPU-$i)"; done\n' > fakebin/nvidia-smi
printf '#!/bin/sh\necho "HYDRA build details: (a stand-in)"\n' > fakebin/mpiexec
chmod +x fakebin/*
gpu_node() { PATH="$work/fakebin:$PATH" DRY_RUN=1 PBS_NODEFILE=nodes MODEL_SIZE_KEY=GPT125M MOCK_DATA=1 "$@"; }
gpu_node env "$launch" > g1.txt 2>&1
gpu_node env NGPU_PER_HOST=4 "$launch" > g2.txt 2>&1
check "a GPU node: 4 GPUs per host found, CUDA in bf16, with or without NGPU_PER_HOST" "grep -q 'scheduler PBS: 2 host(s) x 4 GPU(s) = 8 ranks' g1.txt && grep -q -- '--backend cuda --bf16' g1.txt && grep -q -- '--backend cuda --bf16' g2.txt"
check "MPICH/PALS: -ppn and --envall (the environment, OMP_NUM_THREADS included)" "grep -q 'command: mpiexec -n 8 -ppn 4 --envall --hostfile nodes ' g1.txt"
# Megatron's sequence parallelism shards over the tensor-parallel group: no ranks of its own.
gpu_node env MPSIZE=2 SPSIZE=2 GAS=2 "$launch" > sp1.txt 2>&1
check "SP_TYPE=megatron SPSIZE=MPSIZE: dp from tp x pp alone, --sequence-parallel" "grep -q 'dp 4 x tp 2 x pp 1 x sp 2 (megatron, over the tp group); global batch 8 = micro 1 x gas 2 x dp 4' sp1.txt && grep -q -- '--sequence-parallel' sp1.txt"
gpu_node env MPSIZE=2 USE_SEQUENCE_PARALLEL=1 "$launch" > sp2.txt 2>&1
check "USE_SEQUENCE_PARALLEL=1 (ALCF's switch) is Megatron SP over the tp group" "grep -q 'sp 2 (megatron, over the tp group)' sp2.txt && grep -q -- '--sequence-parallel' sp2.txt"
gpu_node env MPSIZE=2 SPSIZE=4 "$launch" > sp3.txt 2>&1
check "SP_TYPE=megatron with SPSIZE other than MPSIZE fails before launch" "[ $? -eq 2 ] && grep -q 'SPSIZE must be 1 or MPSIZE (2), got 4' sp3.txt"
gpu_node env SPSIZE=2 "$launch" > sp4.txt 2>&1
check "Megatron SP without tensor parallelism fails before launch" "[ $? -eq 2 ] && grep -q 'needs tensor parallelism' sp4.txt"
DRY_RUN=1 PBS_NODEFILE=nodes NGPU_PER_HOST=4 MODEL_SIZE_KEY=GPT125M MOCK_DATA=1 PATH="/usr/bin:/bin:$(dirname "$(command -v mpiexec)")" \
  "$launch" > nogpu.txt 2>&1
check "an allocation without a GPU seen warns that the ranks run the CPU backend" "grep -q 'warning: no GPU seen on this node' nogpu.txt && grep -q -- '--backend cpu' nogpu.txt"
LD_LIBRARY_PATH=/opt/lib NCCL_DEBUG=WARN DRY_RUN=1 NGPU_PER_HOST=2 MODEL_SIZE_KEY=GPT125M MOCK_DATA=1 "$launch" > ompi.txt 2>&1
check "Open MPI: the paths and the NCCL settings reach remote ranks (-x)" "! grep -q HYDRA ompi.txt && grep -q -- '-x OMP_NUM_THREADS -x PATH -x LD_LIBRARY_PATH.* -x NCCL_DEBUG' ompi.txt"
env -u LD_LIBRARY_PATH DRY_RUN=1 NGPU_PER_HOST=2 MODEL_SIZE_KEY=GPT125M MOCK_DATA=1 "$launch" > ompi2.txt 2>&1
check "Open MPI: an unset LD_LIBRARY_PATH is not passed with -x (Open MPI warns about it)" "grep -q 'command: mpiexec' ompi2.txt && ! grep -q -- '-x LD_LIBRARY_PATH' ompi2.txt"
# Node files as schedulers and people write them: comments, blank or blank-looking lines, Open
# MPI's slots and MPICH's host:N count as the launchers count them (a comment line made one host
# more, so mpiexec was asked for more ranks than the nodes hold); Windows line endings, which Open
# MPI's parser cannot read, are named.
printf '# two nodes\nx3001 slots=4\n\n   \nx3002 # the second\nx3001\nx3002:4\n' > odd_nodes
DRY_RUN=1 PBS_NODEFILE=odd_nodes NGPU_PER_HOST=4 MODEL_SIZE_KEY=GPT125M MOCK_DATA=1 "$launch" > odd.txt 2>&1
check "a node file with comments, blank lines, slots= and host:N counts its hosts (2)" "[ \$? -eq 0 ] && grep -q 'scheduler PBS: 2 host(s) x 4 .* = 8 ranks' odd.txt"
printf 'x3001\r\nx3002\r\n' > crlf_nodes
DRY_RUN=1 PBS_NODEFILE=crlf_nodes NGPU_PER_HOST=4 MODEL_SIZE_KEY=GPT125M MOCK_DATA=1 "$launch" > crlf.txt 2>&1
check "a node file with Windows line endings is named before launch" "[ \$? -eq 2 ] && grep -q \"host file 'crlf_nodes' has Windows line endings\" crlf.txt"
DRY_RUN=1 HOSTFILE=. NGPU_PER_HOST=4 MODEL_SIZE_KEY=GPT125M MOCK_DATA=1 "$launch" > dirnodes.txt 2>&1
check "a directory as the host file is named" "[ \$? -eq 2 ] && grep -q \"cannot read host file '.'\" dirnodes.txt && ! grep -q 'sort:' dirnodes.txt"
: > empty_nodes
DRY_RUN=1 PBS_NODEFILE=empty_nodes MODEL_SIZE_KEY=GPT125M MOCK_DATA=1 "$launch" > empty.txt 2>&1
check "an empty host file is named" "[ $? -eq 2 ] && grep -q \"host file 'empty_nodes' lists no host\" empty.txt"
DRY_RUN=1 DTYPE=fp8 MODEL_SIZE_KEY=GPT125M MOCK_DATA=1 "$launch" > bad0.txt 2>&1
check "an unknown DTYPE fails before launch" "[ $? -eq 2 ] && grep -q \"DTYPE must be fp32, bf16 or fp16, got 'fp8'\" bad0.txt"
DRY_RUN=1 MODEL_SIZE_KEY=GPT7B MOCK_DATA=1 "$launch" > bad1.txt 2>&1
check "unknown model key fails before launch" "[ $? -eq 2 ] && grep -q \"unknown MODEL_SIZE_KEY 'GPT7B'\" bad1.txt"
DRY_RUN=1 NGPU_PER_HOST=6 MODEL_SIZE_KEY=GPT125M MPSIZE=3 MOCK_DATA=1 "$launch" > bad2.txt 2>&1
check "impossible layout fails before launch" "[ $? -eq 2 ] && grep -q 'GPT125M has 16 heads, not divisible by MPSIZE 3' bad2.txt"
DRY_RUN=1 MODEL_SIZE_KEY=GPT125M "$launch" > bad3.txt 2>&1
check "missing DATA_PATH is named" "[ $? -eq 2 ] && grep -q 'DATA_PATH is not set' bad3.txt"

OMPI_MCA_rmaps_base_oversubscribe=1 MODEL_SIZE_KEY=tiny SEQ_LEN=32 MICRO_BATCH=2 GAS=2 TRAIN_ITERS=3 NGPU_PER_HOST=2 \
  MOCK_DATA=1 VOCAB_SIZE=128 "$launch" > run.txt 2>&1
check "a 2-rank run through the launcher trains" "[ $? -eq 0 ] && grep -q 'iteration        3/       3 | consumed samples:           24' run.txt"
log=$(tail -1 logfiles 2>/dev/null)
check "the log is under outputs/<run>/logs and indexed in logfiles" "[ -f '$log' ] && [[ '$log' == outputs/gpt_megatron_tiny_z0_seqlen32_mp1_pp1_sp1_nl2_hs128_gb8_mb2/logs/*-nhosts1-ngpu2-*.log ]] && grep -q 'lm loss' '$log'"

finish "launcher"
