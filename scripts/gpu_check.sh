#!/usr/bin/env bash
# gpu_check.sh -- the prepared GPU check of docs/performance.md (issue 17), one call within a time budget.
#
#   bash scripts/gpu_check.sh [OUTDIR] [--budget=SEC] [--levers] [--smoke]
#
# Ends within --budget seconds (default 540: nine minutes, inside a ten-minute call): each step's own time
# limit is cut to what is left of the budget (less 30 s for the summary), and a step for which less than a
# minute is left is skipped and noted. Steps run in order of importance, so a short budget loses the last.
# Compiling the DDPM++ training step took 135 s on a fresh H200 (2026-12-04); each distinct graph (a batch
# size, a setting) compiles once per machine, and later processes reuse inductor's on-disk cache. The check
# has not yet completed on a GPU (docs/performance.md). Needs one CUDA GPU and no network (the FID stage
# falls back to bench.py's stand-in detector offline, and says so).
#
# The check (DDPM++ CIFAR-10, both paths, random data):
#   1. bench.py --what=train --compare at batch 256, with a torch.profiler breakdown of both steps;
#   2. train.py --fast to its second tick on a zip of 512 PNGs with train.py's defaults (augmentation 0.12)
#      at batch 256, and its img/s against step 1's fast figure (issue 17 asks for 90%);
#   3. bench.py --what=train --compare at batch 512;
#   4. bench.py --compare of the sampling and scoring stages (denoise, generate, fid);
#   5. denoise.py --fast of 256 observations (sigma 0.59) with step 2's snapshot;
#   6. the CUDA tests (tests/test_cuda.py).
# --levers: instead of the check, the fast training step at batch 256 with one setting changed at a time:
#   cuDNN's benchmark timing every algorithm (not 10), each block compiled on its own (a shorter cold
#   compile), the [1, 1] resampling as convolutions, compile mode max-autotune-no-cudagraphs. Run it as a
#   second call on the same machine, with what is left.
# --smoke: the same steps at toy sizes on any device, the CPU included: checks this script (the tests run
#   it), measures nothing worth reporting.
#
# Writes, as it goes: OUTDIR/check.log (every step's output), OUTDIR/check.jsonl (bench.py's records,
# each stage as it ends), OUTDIR/summary.md (each step's outcome, then the tables, the profiles and
# train.py's tick lines). OUTDIR defaults to $OUT when set (the device tool's folder), else ./gpu-check;
# a relative OUTDIR is taken from the current folder.
#
# Ctrl-C or SIGTERM stops the running step (every process of it), skips the rest, writes the summary of
# what ran, and exits 130 or 143.
set -uo pipefail

outdir="${OUT:-gpu-check}"
levers=0; smoke=0; budget=540
for arg in "$@"; do
    case "$arg" in
        --levers) levers=1 ;;
        --smoke) smoke=1 ;;
        --budget=*) budget="${arg#--budget=}" ;;
        -h|--help) sed -n '2,/^set -uo/p' "$0" | sed '$d'; exit 0 ;;
        -*) echo "gpu_check: unknown option $arg (see --help)" >&2; exit 2 ;;
        *) outdir="$arg" ;;
    esac
done
if ! [[ "$budget" =~ ^[0-9]+$ ]] || [ "$budget" -lt 60 ]; then
    echo "gpu_check: --budget=$budget: a whole number of seconds, at least 60" >&2; exit 2
fi
# Paths given relative to the caller's folder stay so after the cd into the repository.
case "$outdir" in /*) ;; *) outdir="$PWD/$outdir" ;; esac
py="${PYTHON:-python3}"
case "$py" in /* | "") ;; */*) py="$PWD/$py" ;; esac
cd "$(dirname "$0")/.." || exit 1
mkdir -p "$outdir" || exit 1
log="$outdir/check.log"; records="$outdir/check.jsonl"; summary="$outdir/summary.md"
work="$(mktemp -d)"; trap 'rm -rf "$work"' EXIT
export PYTHONUNBUFFERED=1

# A step runs as `timeout ... &`: timeout leads a process group of its own, out of reach of the
# terminal's Ctrl-C, so the signal comes here and is passed on to that whole group; the script then
# skips the remaining steps and writes the summary.
stop_signal=""; step_pid=""; trapped=0
on_signal() {
    stop_signal="$1"; trapped=1
    [ -n "$step_pid" ] && kill -TERM -- "-$step_pid" 2>/dev/null
}
trap 'on_signal INT' INT
trap 'on_signal TERM' TERM

# in_group LIMIT COMMAND...: run COMMAND under `timeout -k 10 LIMIT` in the background and wait for it
# (through any signal that arrives meanwhile); its exit status.
in_group() {
    local limit="$1" status; shift
    timeout -k 10 "$limit" "$@" &
    step_pid=$!
    while :; do
        trapped=0
        wait "$step_pid"; status=$?
        [ "$trapped" = 1 ] || break
    done
    step_pid=""
    return "$status"
}

# Sizes: the check's, or the smoke run's (the tiny network, 8x8 images for train.py, a fraction of a second per path).
if [ "$smoke" = 1 ]; then
    config=tiny; seconds=0.2; batch=16; big_batch=32; images=64; resolution=8; min_step=5
    train_size=(--cbase=16 --cres=1 --duration=0.002 --tick=1)
else
    config=cifar10; seconds=8; batch=256; big_batch=512; images=512; resolution=32; min_step=60
    train_size=(--duration=0.0302 --tick=15)
fi
deadline=$((SECONDS + budget)); reserve=30

# limit_for LIMIT: LIMIT cut to what the budget has left (less the summary's reserve); 0 = too little left.
limit_for() {
    local left=$((deadline - SECONDS - reserve))
    if [ "$left" -lt "$min_step" ]; then echo 0; elif [ "$1" -lt "$left" ]; then echo "$1"; else echo "$left"; fi
}

# step NAME LIMIT COMMAND...: run within the limit, everything into the log, one outcome line in the summary.
step() {
    local name="$1" limit="$2"; shift 2
    if [ -n "$stop_signal" ]; then
        echo "- $name: skipped, stopped by SIG$stop_signal" >>"$summary"
        return 125
    fi
    if [ "$limit" = 0 ]; then
        echo "- $name: skipped, $((deadline - SECONDS)) s of the budget left (${reserve} s kept for the summary)" >>"$summary"
        return 125
    fi
    local start=$SECONDS
    echo "=== $name ($(date '+%F %T'), limit ${limit}s): $*" >>"$log"
    in_group "$limit" "$@" >>"$log" 2>&1
    local status=$?
    local note="exit $status"
    { [ "$status" = 124 ] || [ "$status" = 137 ]; } && note="stopped at its ${limit}s limit"
    [ -n "$stop_signal" ] && note="stopped by SIG$stop_signal"
    echo "- $name: $note, $((SECONDS - start)) s" >>"$summary"
    return "$status"
}

# bench_step NAME LIMIT ARGS...: bench.py as a step, its own --timeout inside the step's limit, so that a
# warm-up that runs too long ends with bench.py's line naming the stage and path (and a stack file).
bench_step() {
    local name="$1" limit; limit="$(limit_for "$2")"; shift 2
    local inner=$((limit - (limit / 4 < 30 ? limit / 4 : 30)))
    step "$name" "$limit" "$py" bench.py --config="$config" --json="$records" --seconds="$seconds" \
        --timeout="$((inner > 0 ? inner : 1))" "$@"
}

{
    echo "# GPU check, $(date '+%F %T %Z')$([ "$smoke" = 1 ] && echo ' (smoke run: toy sizes, not a measurement)')"
    echo
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | sed 's/^/GPU: /'
    "$py" -c 'import sys, torch; print(f"python {sys.version.split()[0]}, torch {torch.__version__}, CUDA {torch.version.cuda}")'
    echo "budget ${budget} s; command: bash scripts/gpu_check.sh $*"
    echo
    echo "## Steps"
} >"$summary" 2>&1

if [ "$levers" = 1 ]; then
    # The fast training step with one setting changed at a time; the first changes no graph, so it reuses
    # the check's compiled code from the on-disk cache.
    bench_step "lever: cuDNN times every algorithm" 150 --what=train --path=fast --batch="$batch" \
        --set=cudnn_benchmark_limit=0
    bench_step "lever: each block compiled on its own" 240 --what=train --path=fast --batch="$batch" \
        --set=compile_regions=true
    bench_step "lever: [1, 1] resampling as convolutions" 240 --what=train --path=fast --batch="$batch" \
        --set=pool_resample=false
    bench_step "lever: compile mode max-autotune-no-cudagraphs" 300 --what=train --path=fast --batch="$batch" \
        --set=compile_mode=max-autotune-no-cudagraphs
else
    # 1. The training step, both paths, profiled.
    bench_step "bench: training, both paths, batch $batch, profile" 240 --what=train --compare --batch="$batch" --profile

    # 2. train.py --fast to its second tick, on a zip of random PNGs (the same kind of data as bench.py's).
    [ -z "$stop_signal" ] && in_group 60 "$py" -c \
        "from tools.bench import write_image_zip; write_image_zip('$work/images.zip', $images, $resolution)" >>"$log" 2>&1
    [ -z "$stop_signal" ] && in_group 60 "$py" dataset_tool.py split --source="$work/images.zip" --clean="$work/clean.zip" \
        --noisy="$work/noisy.zip" --clean-count=$((images / 2)) --sigma=0.59 --seed=0 >>"$log" 2>&1
    step "train.py --fast, batch $batch, to the second tick" "$(limit_for 180)" "$py" train.py --outdir="$work/run" \
        --nosubdir --data="$work/images.zip" --batch="$batch" "${train_size[@]}" --seed=0 --fast

    # 3. The training step at the larger batch.
    bench_step "bench: training, both paths, batch $big_batch" 200 --what=train --compare --batch="$big_batch"

    # 4. Sampling and scoring, both paths.
    bench_step "bench: denoise, generate, fid, both paths" 240 --what=denoise,generate,fid --compare

    # 5. denoise.py --fast with step 2's snapshot.
    snapshot="$(ls "$work"/run/network-snapshot-*.pkl 2>/dev/null | tail -n 1)"
    if [ -n "$snapshot" ]; then
        step "denoise.py --fast, $((images / 2)) observations" "$(limit_for 90)" "$py" denoise.py \
            --network="$snapshot" --data="$work/noisy.zip" --outdir="$work/denoised" --fast
    else
        echo "- denoise.py --fast: skipped (train.py wrote no snapshot)" >>"$summary"
    fi

    # 6. The CUDA tests.
    step "pytest tests/test_cuda.py" "$(limit_for 120)" "$py" -m pytest -q -p no:cacheprovider tests/test_cuda.py
fi

echo >>"$summary"
train_log="$work/run/log.txt"; [ "$levers" = 1 ] && train_log=''
"$py" -c 'import sys; from tools.gpu_check import check_summary; print(check_summary(*sys.argv[1:3], int(sys.argv[3])))' \
    "$records" "$train_log" "$batch" >>"$summary" 2>&1
echo "gpu_check: wrote $summary, $records and $log"
case "$stop_signal" in
    INT) echo "gpu_check: stopped by SIGINT" >&2; exit 130 ;;
    TERM) echo "gpu_check: stopped by SIGTERM" >&2; exit 143 ;;
esac
