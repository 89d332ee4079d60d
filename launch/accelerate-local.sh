#!/usr/bin/env bash
# Run a job with `accelerate launch` on this machine: one process per GPU, or NPROC gloo processes on CPU.
#
#   launch/accelerate-local.sh train --config configs/tiny-kagl-softmax.yaml loop.max_steps=50
#   NPROC=4 launch/accelerate-local.sh eval --config configs/eval/default.yaml model.checkpoint=runs/x/export
#   launch/accelerate-local.sh train --config configs/kagl-subcategory-softmax.yaml dist.strategy=deepspeed
#
# JOB is train or eval (jobs/<JOB>.py); the rest goes to it. The same jobs run on SLURM with
# `fashiontune submit JOB --cluster configs/cluster/<name>.yaml` (launch/submit.sh) or slurm/*.sbatch.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
JOB="${1:?usage: launch/accelerate-local.sh train|eval [job args...]}"; shift
[[ -f "$ROOT/jobs/$JOB.py" ]] || { echo "no job $JOB: choose train or eval (jobs/*.py)" >&2; exit 2; }
PY="${PYTHON:-$ROOT/.venv/bin/python}"; [[ -x "$PY" ]] || PY=python3

gpus=$("$PY" -c 'import torch; print(torch.cuda.device_count())' 2>/dev/null || echo 0)
if (( gpus > 0 )); then nproc="${NPROC:-$gpus}"
else nproc="${NPROC:-2}"; export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"; fi
if (( nproc == 1 )); then exec "$PY" "$ROOT/jobs/$JOB.py" "$@"; fi
port="${MASTER_PORT:-$(( 29500 + RANDOM % 1000 ))}"
echo "accelerate launch: $nproc processes ($([[ $gpus -gt 0 ]] && echo "$gpus GPU(s)" || echo CPU, gloo)), port $port" >&2
# No --cpu: accelerate's --cpu runs ONE process; the torchrun launcher of the multi-GPU type starts N, and the
# jobs pick gloo themselves when there is no GPU.
exec "$PY" -m accelerate.commands.launch --config_file "$ROOT/launch/accelerate/local.yaml" \
  --num_processes "$nproc" --main_process_port "$port" "$ROOT/jobs/$JOB.py" "$@"
