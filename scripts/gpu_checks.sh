#!/usr/bin/env bash
# The CUDA checks and benchmarks in one command, on a GPU machine, from the repository root:
#     OUT=gpu-out [QUICK=1] bash scripts/gpu_checks.sh
# 1. the CUDA tests (tests/test_cuda.py, marker gpu): the probe's hooks on every test model and on HF GPT-2 (strict),
#    micro-batch draws, the tracker's sources under AdamW (pairs, B_simple, B_pre) and `measure`, CUDA against CPU;
# 2. the tracker under FSDP2 on CUDA/NCCL (tests/assets/track_fsdp_worker.py): 2 ranks on the GPUs there are
#    (sharing one GPU if NCCL allows it), else 1 rank;
# 3. tracker overhead with accumulation on GPT-2 small (bf16 autocast, and TF32), scripts/bench_tracker.py;
# 4. per-example norms: GPT-2 small, nn.TransformerEncoderLayer LM, HF GPT-2 tiny (scripts/bench_per_example.py),
#    and where their time goes (scripts/profile_per_example.py);
# 5. `bsprof measure` on a bundled example with --device cuda.
# QUICK=1 (about 5 minutes) leaves out the TF32 tracker benchmark and step 5.
# Writes JSON files and the profiles (profile_cuda.tgz) into $OUT (default gpu-out/); tee the log there too.
set -uo pipefail
OUT=${OUT:-gpu-out}
WORK=$(mktemp -d)
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$(pwd)
py=${PYTHON:-python3}
run() { echo "\$ $*"; local t0=$SECONDS; timeout "${STEP_TIMEOUT:-240}" "$@"; echo "[exit $? after $((SECONDS - t0)) s]"; }

$py -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"
run $py -m pytest -q -p no:cacheprovider -m gpu tests/test_cuda.py --junitxml "$OUT/test_cuda.xml"
for n in $([ -n "${QUICK:-}" ] && echo 1 || echo 2 1); do  # 2 ranks need 2 GPUs (NCCL shared none here, 2026-11-30)
    [ -f "$OUT/fsdp_cuda.json" ] || BSPROF_WORKER_DEVICE=cuda STEP_TIMEOUT=90 run $py -m torch.distributed.run \
        --standalone --nproc-per-node $n tests/assets/track_fsdp_worker.py "$OUT/fsdp_cuda.json"
done
[ -f "$OUT/fsdp_cuda.json" ] && cat "$OUT/fsdp_cuda.json"
for amp in "--amp bf16" ${QUICK:+"skip"} ""; do
    [ "$amp" = skip ] && break  # about 1 minute each
    run $py scripts/bench_tracker.py --device cuda $amp --micro-batches gpt2:4 --per-example "" --quick --rounds 6 \
        --block 2 --methods "plain,plain (A/A),tracker" --json "$OUT/bench_tracker_cuda_gpt2${amp:+_bf16}.json"
done
run $py scripts/bench_per_example.py --device cuda --gpt2 --quick --models gpt2 torch-encoder hf-gpt2-tiny \
    --json "$OUT/bench_per_example_cuda.json"
run $py scripts/profile_per_example.py --device cuda --models gpt2 torch-encoder hf-gpt2-tiny --out "$WORK/profile"
tar czf "$OUT/profile_cuda.tgz" -C "$WORK" profile
[ -n "${QUICK:-}" ] && exit 0
run $py -m bsprof measure configs/digits_mlp.py --config configs/digits_mlp.yaml --device cuda --out "$WORK/digits"
cp "$WORK/digits/report.json" "$OUT/report_digits_cuda.json" 2>/dev/null
exit 0
