#!/usr/bin/env bash
# The GPU benchmark, one script, at most ~8 minutes on one H100/H200 (CUDA torch is the installed build):
#   1. ViT-B/32 bf16 contrastive training, batch 256, loader workers = the machine's cores: samples/s and model
#      FLOPs utilisation of `fashiontune train` and of `open_clip_train.main` on the same synthetic shards
#      (bench/train.py), and loader-only samples/s against that consumption;
#   2. `fashiontune eval` exact scoring (metrics.topk.chunked_rank: top-50 + every query's first-relevant rank)
#      at N = 1,000,000, d = 512: seconds and peak GPU memory (bench/eval.py);
#   3. eval embedding throughput of ViT-B/32 bf16, images/s (bench/eval.py --embed).
# and prints them in one table (the three benches' JSON lines stay in $OUT).
#
#   bash bench/gpu.sh                  # on the GPU machine
#   bash bench/gpu.sh --dry-run        # the same code paths on the CPU with tiny sizes (CI: tests/test_bench_gpu.py)
# Env: PY (python, default .venv/bin/python), OUT (results dir, default a temp dir), FT_PEAK_TFLOPS (peak for MFU
# on a device not in bench/train.py's table).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-$(mktemp -d -t ft-bench-gpu-XXXX)}
mkdir -p "$OUT"
cores=$(nproc)
if [[ "${1:-}" == "--dry-run" ]]; then
  device=cpu model=ft-tiny-vit train_n=48 batch=8 workers=1 image=64 eval_n=3000 embed_n=24 chunk_mb=64
  train_extra=(--precision fp32)
else
  [[ -z "${1:-}" ]] || { echo "usage: bench/gpu.sh [--dry-run]" >&2; exit 2; }
  "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'bench/gpu.sh: no CUDA device (use --dry-run on a CPU)')"
  # workers: every core but the one the training process itself needs
  device=cuda model=ViT-B-32 train_n=12000 batch=256 workers=$(( cores > 1 ? cores - 1 : 1 )) image=256
  eval_n=1000000 embed_n=4000 chunk_mb=16384
  train_extra=(--precision bf16)
fi
echo "bench/gpu.sh: device=$device model=$model cores=$cores workers=$workers results in $OUT"
set -x
"$PY" bench/train.py --model "$model" --n "$train_n" --batch "$batch" --workers "$workers" --image-size "$image" \
  --repeats 1 --out "$OUT/train-work" "${train_extra[@]}" | tee "$OUT/train.log"
"$PY" bench/eval.py --device "$device" --sizes "$eval_n" --max-queries 0 --no-faiss --budget-gb 0 \
  --chunk-mb "$chunk_mb" | tee "$OUT/eval.log"
"$PY" bench/eval.py --embed "$embed_n" --model "$model" --device "$device" --out "$OUT/embed-work" | tee "$OUT/embed.log"
set +x
"$PY" - "$OUT" <<'PYEOF'
import json, sys
from pathlib import Path

out = Path(sys.argv[1])
last = {name: json.loads((out / f"{name}.log").read_text().strip().splitlines()[-1]) for name in ("train", "eval", "embed")}
t, e, m = last["train"], last["eval"]["rows"][0], last["embed"]
mfu = lambda r: f"{100 * r['mfu']:.1f}%" if r.get("mfu") is not None else "n/a"
rows = [
    (f"train {t['model']} batch {t['batch']}, fashiontune train", f"{t['ours']['samples_per_s']:.1f} samples/s", f"MFU {mfu(t['ours'])}"),
    (f"train {t['model']} batch {t['batch']}, open_clip_train.main", f"{t['openclip']['samples_per_s']:.1f} samples/s", f"MFU {mfu(t['openclip'])}"),
    (f"loader only, {t['workers']} workers", f"{t['loader']['samples_per_s']:.1f} samples/s",
     f"{t['loader']['samples_per_s'] / t['ours']['samples_per_s']:.1f}x training's consumption"),
    (f"eval scoring N={e['n']:,} d={last['eval']['dim']} (top-50 + ranks)", f"{e['ours']['seconds']:.1f} s",
     f"peak {e['ours']['peak_bytes'] / 2**30:.2f} GiB"),
    *((f"eval embedding {m['model']} {m['precision']}, {r['setting'].split(':')[0]}", f"{r['images_per_s']:.1f} images/s", "")
      for r in m["rows"]),
]
print(f"\n{'what':<62} {'value':>20}  note")
for what, value, note in rows:
    print(f"{what:<62} {value:>20}  {note}")
print(json.dumps({"bench": "gpu", "train": t, "eval": last["eval"], "embed": m}))
PYEOF
