#!/usr/bin/env bash
# gpu_check.sh -- the prepared GPU check of docs/performance.md, in one call.
#
#   bash scripts/gpu_check.sh [OUTDIR] [--levers]
#
# Planned at about 9 minutes on one H200 without --levers (each lever adds about 3): compiling the DDPM++
# training step took 135 s on a fresh H200 (2026-12-04), and each distinct graph (training at one batch size,
# sampling) compiles once per machine; later processes reuse inductor's on-disk cache. The whole check has not
# yet completed on a GPU (docs/performance.md), so these times are plans. Every step has its own time limit.
# Needs one CUDA GPU and no network (the FID stage falls back to bench.py's stand-in detector offline, and says
# so). Writes, as it goes:
#   OUTDIR/check.log     every step's output
#   OUTDIR/check.jsonl   bench.py's records (the profile of the training step inside the train records)
#   OUTDIR/summary.md    the tables of docs/performance.md, train.py's tick lines and denoise.py's time
# OUTDIR defaults to $OUT when set (the device tool's folder), else ./gpu-check.
#
# Steps, in order of importance (a step that fails or runs out of time is noted and the next runs):
#   1. bench.py --compare of every stage on DDPM++ CIFAR-10 (batch 256), with a torch.profiler breakdown
#      of both training steps;
#   2. train.py --fast on a zip of 512 PNGs with train.py's defaults (augmentation 0.12) at batch 256,
#      to its second tick (its img/s from its own tick lines, against step 1's fast figure);
#   3. denoise.py --fast of 256 observations (sigma 0.59) with step 2's snapshot;
#   4. the CUDA tests (tests/test_cuda.py);
#   5. with --levers: the training step at batch 512 (both paths), and the fast step with one setting changed
#      at a time (each block of the network compiled on its own, for a shorter cold compile; the [1, 1]
#      resampling as convolutions again; compile mode max-autotune-no-cudagraphs).
set -uo pipefail
cd "$(dirname "$0")/.."

outdir="${OUT:-gpu-check}"
levers=0
for arg in "$@"; do
    case "$arg" in
        --levers) levers=1 ;;
        -h|--help) sed -n '2,26p' "$0"; exit 0 ;;
        *) outdir="$arg" ;;
    esac
done
mkdir -p "$outdir" || exit 1
log="$outdir/check.log"; records="$outdir/check.jsonl"; summary="$outdir/summary.md"
work="$(mktemp -d)"; trap 'rm -rf "$work"' EXIT
py="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1

# step NAME LIMIT COMMAND...: run with a time limit, everything into the log, one status line in the summary.
step() {
    local name="$1" limit="$2"; shift 2
    local start=$SECONDS
    echo "=== $name ($(date '+%F %T'), limit ${limit}s): $*" >>"$log"
    timeout -k 10 "$limit" "$@" >>"$log" 2>&1
    local status=$?
    local note="exit $status"
    [ "$status" = 124 ] || [ "$status" = 137 ] && note="stopped at its ${limit}s limit"
    echo "- $name: $note, $((SECONDS - start)) s" >>"$summary"
    return "$status"
}

{
    echo "# GPU check, $(date '+%F %T %Z')"
    echo
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | sed 's/^/GPU: /'
    "$py" -c 'import sys, torch; print(f"python {sys.version.split()[0]}, torch {torch.__version__}, CUDA {torch.version.cuda}")'
    echo
    echo "## Steps"
} >"$summary" 2>&1

bench=("$py" bench.py --config=cifar10 --json="$records")  # An array: `timeout` runs programs, not functions.

# 1. Every stage, both paths; the training step profiled.
step "bench: every stage, both paths, profile" 330 "${bench[@]}" --compare --seconds=8 --profile --timeout=240

# 2. train.py --fast to its second tick, on a zip of 512 random PNGs (the same kind of data as bench.py's).
"$py" -c "from tools.bench import write_image_zip; write_image_zip('$work/images.zip', 512, 32)" >>"$log" 2>&1
"$py" dataset_tool.py split --source="$work/images.zip" --clean="$work/clean.zip" --noisy="$work/noisy.zip" \
    --clean-count=256 --sigma=0.59 --seed=0 >>"$log" 2>&1
step "train.py --fast, batch 256, to the second tick" 120 "$py" train.py --outdir="$work/run" --nosubdir \
    --data="$work/images.zip" --batch=256 --duration=0.0604 --tick=30 --seed=0 --fast
{
    echo
    echo "## train.py --fast tick lines"
    echo '```'
    grep -E '^(tick |The first step|Compiling)' "$work/run/log.txt" 2>/dev/null
    echo '```'
} >>"$summary"

# 3. denoise.py --fast of 256 observations with that snapshot.
snapshot="$(ls "$work"/run/network-snapshot-*.pkl 2>/dev/null | tail -n 1)"
if [ -n "$snapshot" ]; then
    step "denoise.py --fast, 256 observations" 90 "$py" denoise.py --network="$snapshot" --data="$work/noisy.zip" \
        --outdir="$work/denoised" --fast
else
    echo "- denoise.py --fast: skipped (train.py wrote no snapshot)" >>"$summary"
fi

# 4. The CUDA tests.
step "pytest tests/test_cuda.py" 90 "$py" -m pytest -q -p no:cacheprovider tests/test_cuda.py

# 5. Levers, one setting at a time, on the training step.
if [ "$levers" = 1 ]; then
    step "lever: batch 512, both paths" 240 "${bench[@]}" --what=train --compare --batch=512 --seconds=8 --timeout=200
    step "lever: regional compilation (the blocks one by one)" 240 "${bench[@]}" --what=train --path=fast --seconds=6 \
        --timeout=200 --set=compile_regions=true
    step "lever: [1, 1] resampling as convolutions" 240 "${bench[@]}" --what=train --path=fast --seconds=6 \
        --timeout=200 --set=pool_resample=false
    step "lever: compile mode max-autotune-no-cudagraphs" 300 "${bench[@]}" --what=train --path=fast --seconds=6 \
        --timeout=270 --set=compile_mode=max-autotune-no-cudagraphs
fi

{
    echo
    echo "## bench.py records"
    "$py" bench.py --markdown="$records" 2>&1
    "$py" -c "
import json, sys
from tools.bench import format_profile
for line in open(sys.argv[1]):
    r = json.loads(line)
    if 'profile' in r:
        print('\`\`\`'); print(format_profile(r)); print('\`\`\`')
" "$records" 2>&1
} >>"$summary"
echo "gpu_check: wrote $summary, $records and $log"
