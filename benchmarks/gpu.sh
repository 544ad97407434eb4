#!/usr/bin/env bash
# Train-step figures on one NVIDIA GPU (H100/H200), about 6 minutes in all:
#   resnet50 at batch 256 in bfloat16 and float32, resnet50 bfloat16 with scanned blocks (does
#   scanning slow the steady-state step?), resnet50 bfloat16 with LARS and with the batch in 2
#   accumulated micro-batches (what the large-batch options cost per step), resnet152 at batch
#   128 in bfloat16 (scanned, so it compiles quickly). Prints images/second and MFU per run,
#   then a summary table.
# Runs from the repository as copied (PYTHONPATH, no `pip install -e .`); uses the installed
# CUDA jax, and only without one pip-installs jax[cuda13]. Figures go to $OUT (default /tmp).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-1}"
OUT="${OUT:-/tmp}"

has_gpu() {
  python3 -c 'import jax, sys; sys.exit(0 if jax.devices()[0].platform == "gpu" else 1)' \
    >/dev/null 2>&1
}
if ! has_gpu; then
  echo "no CUDA jax found: pip install jax[cuda13]"
  python3 -m pip install -q "jax[cuda13]"
fi
python3 -c 'import jax; print("jax", jax.__version__, jax.devices())'
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader || true

run() {  # name, then benchmark flags
  local name=$1; shift
  echo "=== $name"
  python3 benchmarks/step_speed.py --warmup=3 --rounds=5 --steps=10 --json="$OUT/$name.json" "$@"
}
run resnet50_bf16 --model=resnet50 --batch_size=256 --image_size=224 --dtype=bfloat16
run resnet50_fp32 --model=resnet50 --batch_size=256 --image_size=224 --dtype=float32
run resnet50_bf16_scan --model=resnet50 --batch_size=256 --image_size=224 --dtype=bfloat16 \
  --scan_blocks
run resnet50_bf16_lars --model=resnet50 --batch_size=256 --image_size=224 --dtype=bfloat16 \
  --optimizer=lars
run resnet50_bf16_accum2 --model=resnet50 --batch_size=256 --image_size=224 --dtype=bfloat16 \
  --grad_accum_steps=2
run resnet152_bf16_scan --model=resnet152 --batch_size=128 --image_size=224 --dtype=bfloat16 \
  --scan_blocks --rounds=3 --steps=5

python3 - "$OUT" <<'PY'
import json, sys
print(f"{'run':<22}{'images/s':>10}{'MFU':>8}{'compile s':>11}{'step FLOPs / 3x fwd':>21}")
for name in ("resnet50_bf16", "resnet50_fp32", "resnet50_bf16_scan", "resnet50_bf16_lars",
             "resnet50_bf16_accum2", "resnet152_bf16_scan"):
  f = json.load(open(f"{sys.argv[1]}/{name}.json"))
  mfu = f"{f['utilization']:.1%}" if "utilization" in f else "?"
  print(f"{name:<22}{f['images_per_second']:>10.0f}{mfu:>8}{f['compile_seconds']:>11.1f}"
        f"{f['flops_vs_3x_forward']:>21.3f}")
PY
