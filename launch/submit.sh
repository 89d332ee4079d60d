#!/usr/bin/env bash
# Submit a job to SLURM (or submitit's local executor): the same as `fashiontune submit`, which it calls.
#
#   launch/submit.sh smoke  --cluster configs/cluster/slurm-cpu.yaml                 # check a cluster: ranks, requeue
#   launch/submit.sh shards --cluster configs/cluster/slurm-cpu.yaml source=kagl input=data/kagl out=shards/kagl num_jobs=8
#   launch/submit.sh train  --cluster configs/cluster/a100-4nodes.yaml --config configs/kagl-subcategory-softmax.yaml
#   launch/submit.sh eval   --cluster configs/cluster/a100-1node.yaml model.checkpoint=runs/kagl/export data.shards=shards/kagl
#   launch/submit.sh train  --cluster configs/cluster/a100-1node.yaml --config ... --dry-run   # print the sbatch script
#
# key=value goes to the job's config, cluster.key=value to the cluster config (cluster.nodes=2).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PY="${PYTHON:-$ROOT/.venv/bin/python}"; [[ -x "$PY" ]] || PY=python3
exec "$PY" -m fashiontune submit "$@"
