#!/usr/bin/env bash
# The CUDA checks and benchmarks in one command, on a GPU machine, from the repository root:
#     OUT=gpu-out bash scripts/gpu_checks.sh
# Measures the bundled examples on CUDA (both probes, 1-process torchrun/NCCL), runs `schedule --max-batch auto`,
# and the two benchmarks with --device cuda. Writes a log and JSON files into $OUT (default gpu-out/).
set -uo pipefail
OUT=${OUT:-gpu-out}
WORK=$(mktemp -d)
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
run() { echo "\$ $*"; timeout "${STEP_TIMEOUT:-300}" "$@"; echo "[exit $?]"; }

$py -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"
run $py -m bsprof measure configs/least_squares.py --steps 0 --rel-error 0.05 --device cuda --out "$WORK/ls"
run $py -m bsprof measure configs/digits_mlp.py --config configs/digits_mlp.yaml --device cuda --out "$WORK/digits"
run $py -m bsprof measure configs/digits_cnn.py --method microbatch --micro-batch 8 --steps 0 --device cuda \
    --out "$WORK/cnn_microbatch"
run torchrun --standalone --nproc_per_node=1 -m bsprof measure configs/least_squares.py --steps 0 --device cuda \
    --out "$WORK/torchrun"
run $py -m bsprof schedule configs/digits_mlp.py --target-loss 0.5 --max-batch auto --format json \
    > "$OUT/schedule_max_batch_auto.json"
for name in ls digits cnn_microbatch torchrun; do
    cp "$WORK/$name/report.json" "$OUT/report_$name.json" 2>/dev/null
done
run $py scripts/bench_microbatch.py --device cuda --json "$OUT/bench_microbatch_cuda.json"
run $py scripts/bench_per_example.py --device cuda --gpt2 --json "$OUT/bench_per_example_cuda.json"
