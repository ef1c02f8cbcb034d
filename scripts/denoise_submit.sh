#!/usr/bin/env bash
# denoise_submit.sh -- denoise a whole observation set on SLURM: one job array of NUM_TASKS tasks,
# task I running scripts/denoise.sh -> denoise.py --shard=I/NUM_TASKS, plus a small "finalize" job
# that starts when the array is over, checks that every image is there and writes dataset.json.
#
#   NETWORK=runs/pretrain NOISY_DATA=noisy.zip OUTDIR=runs/round-01/denoised NUM_TASKS=8 STEPS=40 \
#       scripts/denoise_submit.sh [--wait] [--ids] [sbatch options...]
#
# Every image is denoised exactly once whatever NUM_TASKS is (the shards are I*n//N .. (I+1)*n//N).
# Submitting again with the same variables completes what is missing: tasks skip the images already
# written (also after a requeue or a crash), and finished tasks cost only a start-up.
#
# Environment variables:
#   NETWORK         required. Network pickle or URL, or a training run directory (its newest
#                   network-snapshot-*.pkl, looked up when each task starts).
#   NOISY_DATA      required. The observation set to denoise (denoise.py --data).
#   OUTDIR          required. Where the denoised images go (one directory for all tasks).
#   NUM_TASKS       number of array tasks (default 1).
#   MAX_PARALLEL    optional: at most this many tasks run at once (--array=0-N-1%MAX_PARALLEL).
#   PRESET          optional: celeba64 | cifar10 | none, the denoise.py options of that preset
#                   (scripts/denoise.sh; celeba64 denoises with the release's 40 steps).
#   STEPS           optional: denoise.py --steps (after the preset's; wins).
#   DENOISE_ARGS    optional: more denoise.py options, whitespace-separated.
#   RECORD          optional: JSON-lines file the finalize job appends its record to (see denoise.sh).
#   RECORD_TAG      optional: JSON object merged into that record.
#   LOG_DIR         optional: folder for the jobs' logs (default: sbatch's, the submit folder).
#   JOB_NAME        optional: job name (default sfbd-denoise; the finalize job adds -finalize).
#   WAIT_POLL       optional: seconds between queue checks with --wait (default 10).
#   SFBD_ROOT       optional: the repository (default: this script's parent folder).
#   PYTHON          optional: Python interpreter for the jobs (default `python`, else `python3`).
# The jobs inherit this environment (sbatch's default --export=ALL); do not pass --export=NONE.
#
# Options:
#   --wait          wait until the array and the finalize job are over; exit 0 if the set is complete
#                   (the finalize job succeeded), 1 if not (see the finalize job's log).
#   --ids           print "ARRAY_ID FINALIZE_ID" instead of just ARRAY_ID.
#   anything else   passed to sbatch for both jobs (e.g. --partition=gpu --gres=gpu:1 --time=2:00:00
#                   --dependency=afterok:123 --output=logs/%x-%A_%a.out). The finalize job denoises
#                   nothing; it gets the same options so that it runs where the tasks run.
#
# Output: the array's job id on stdout (with --ids also the finalize job's); messages on stderr.
set -euo pipefail
SFBD_LOG_NAME=denoise_submit.sh

SFBD_ROOT="${SFBD_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}"
[[ -f "$SFBD_ROOT/denoise.py" ]] || { echo "denoise_submit.sh: error: SFBD_ROOT=$SFBD_ROOT holds no denoise.py" >&2; exit 1; }
export SFBD_ROOT
# shellcheck source=scripts/common.sh
source "$SFBD_ROOT/scripts/common.sh"

wait_for_it=0
print_ids=0
sbatch_opts=()
for arg in "$@"; do
    case "$arg" in
        --wait) wait_for_it=1 ;;
        --ids) print_ids=1 ;;
        --array | --array=* | -a | -a?*) sfbd_die "do not pass --array: NUM_TASKS decides the array" ;;
        *) sbatch_opts+=("$arg") ;;
    esac
done

command -v sbatch >/dev/null || sfbd_die "sbatch not found: run this on a SLURM login node (or scripts/local_slurm.sh start)"
[[ -n "${NETWORK:-}" ]] || sfbd_die "set NETWORK to a network snapshot or a training run directory"
[[ -n "${NOISY_DATA:-}" ]] || sfbd_die "set NOISY_DATA to the observation set"
[[ -n "${OUTDIR:-}" ]] || sfbd_die "set OUTDIR to the output directory"
[[ -e "$NOISY_DATA" ]] || sfbd_die "NOISY_DATA=$NOISY_DATA does not exist"
# NETWORK may not exist yet (a run directory of a training job still queued), unless it is a .pkl.
if [[ "$NETWORK" == *.pkl && "$NETWORK" != *://* && ! -f "$NETWORK" ]]; then
    sfbd_die "NETWORK=$NETWORK does not exist"
fi
NUM_TASKS="${NUM_TASKS:-1}"
sfbd_positive_int NUM_TASKS
sfbd_positive_int STEPS
sfbd_positive_int MAX_PARALLEL
sfbd_check_record
sfbd_positive_seconds WAIT_POLL
sfbd_words _checked "${DENOISE_ARGS:-}" DENOISE_ARGS  # Before any task is submitted.
sfbd_check_args denoise DENOISE_ARGS "${_checked[@]}"
sfbd_preset _preset denoise "${PRESET:-none}"  # Checks the name.
# OUTDIR apart from the inputs, outside any set of images, and no broken link on the way (dnnlib/outputs.py).
sfbd_check_args output OUTDIR "$OUTDIR" NOISY_DATA "$NOISY_DATA" NETWORK "$NETWORK"
array="0-$((NUM_TASKS - 1))"
if [[ -n "${MAX_PARALLEL:-}" ]]; then
    array+="%$MAX_PARALLEL"
fi
name="${JOB_NAME:-sfbd-denoise}"
array_log=()
final_log=(--output="slurm-%x-%j.out")
if [[ -n "${LOG_DIR:-}" ]]; then
    mkdir -p "$LOG_DIR"
    array_log=(--output="$LOG_DIR/%x-%A_%a.out")
    final_log=(--output="$LOG_DIR/%x-%j.out")
fi

# Absolute paths: the jobs may start in another folder (--chdir) or after this one moved.
NETWORK="$(sfbd_abspath "$NETWORK")"
NOISY_DATA="$(sfbd_abspath "$NOISY_DATA")"
OUTDIR="$(sfbd_abspath "$OUTDIR")"
[[ -n "${RECORD:-}" ]] && RECORD="$(sfbd_abspath "$RECORD")"
mkdir -p "$OUTDIR"
export NETWORK NOISY_DATA OUTDIR NUM_TASKS STEPS DENOISE_ARGS RECORD RECORD_TAG PYTHON

array_id="$(env -u FINALIZE -u TASK_ID sbatch --parsable --job-name="$name" --array="$array" \
    "${array_log[@]}" --kill-on-invalid-dep=yes "${sbatch_opts[@]}" "$SFBD_ROOT/scripts/denoise.sh")"
array_id="${array_id%%;*}"
[[ "$array_id" =~ ^[0-9]+$ ]] || sfbd_die "sbatch gave no job id for the array: '$array_id'"
final_id="$(FINALIZE=1 sbatch --parsable --job-name="$name-finalize" "${final_log[@]}" \
    --kill-on-invalid-dep=yes "${sbatch_opts[@]}" --dependency="afterany:$array_id" \
    "$SFBD_ROOT/scripts/denoise.sh")"
final_id="${final_id%%;*}"
[[ "$final_id" =~ ^[0-9]+$ ]] || sfbd_die "sbatch gave no job id for the finalize job: '$final_id'"
sfbd_log "submitted array $array_id ($NUM_TASKS task(s): $NOISY_DATA -> $OUTDIR) and finalize job $final_id"
if ((print_ids)); then
    echo "$array_id $final_id"
else
    echo "$array_id"
fi

((wait_for_it)) || exit 0

# --wait: the finalize job runs after every task, so its end is the end. Its state says whether the
# set is complete; once SLURM forgets the job (MinJobAge), dataset.json says it.
poll="${WAIT_POLL:-10}"
while :; do
    if info="$(scontrol -o show job "$final_id" 2>/dev/null)"; then
        state="$(sed -nE 's/.*JobState=([A-Z_]+).*/\1/p' <<<"$info")"
        case "$state" in
            PENDING | RUNNING | CONFIGURING | COMPLETING | REQUEUED | RESIZING | SUSPENDED | "") ;;
            COMPLETED)
                sfbd_log "complete: every image of $NOISY_DATA is in $OUTDIR"
                exit 0
                ;;
            *)
                sfbd_log "finalize job $final_id ended $state: the set is incomplete; see its log, then submit again"
                exit 1
                ;;
        esac
    else
        if [[ -f "$OUTDIR/dataset.json" ]]; then
            sfbd_log "complete: every image of $NOISY_DATA is in $OUTDIR"
            exit 0
        fi
        sfbd_log "finalize job $final_id is gone and $OUTDIR has no dataset.json: incomplete; submit again"
        exit 1
    fi
    sleep "$poll"
done
