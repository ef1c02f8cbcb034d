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
#   LOG_DIR         optional: folder for the jobs' logs (default: sbatch's, the submit folder); made
#                   absolute, as the jobs may start elsewhere (--chdir).
#   JOB_NAME        optional: job name (default sfbd-denoise; the finalize job adds -finalize).
#   WAIT_POLL       optional: seconds between queue checks with --wait (default 10).
#   SFBD_ROOT       optional: the repository (default: this script's parent folder).
#   PYTHON          optional: Python interpreter for the jobs (default `python`, else `python3`).
#   NGPUS, SFBD_REQUEUE  optional: read by the tasks (scripts/denoise.sh); checked here first.
# The jobs inherit this environment (sbatch's default --export=ALL); do not pass --export=NONE. The
# SLURM_* variables that would leak from an salloc shell or another job (SLURM_GPUS_ON_NODE,
# SLURM_ARRAY_*, SLURM_RESTART_COUNT) are left out.
#
# Options:
#   --wait          wait until the array and the finalize job are over; exit 0 if the set is complete
#                   (the finalize job succeeded), 1 if not (see the finalize job's log).
#   --ids           print "ARRAY_ID FINALIZE_ID" instead of just ARRAY_ID.
#   -h, --help      print this and exit.
#   anything else   passed to sbatch for both jobs (e.g. --partition=gpu --gres=gpu:1 --time=2:00:00
#                   --dependency=afterok:123 --output=logs/%x-%A_%a.out), but not --array (in any
#                   spelling). The finalize job denoises nothing; it gets the same options so that it
#                   runs where the tasks run.
#
# Before anything is made or submitted, every setting is checked, and `sbatch --test-only` is asked
# whether it takes the options and the array; a refusal is one line naming the setting. Should the
# finalize job still be refused, the array submitted just before is cancelled.
#
# Output: the array's job id on stdout (with --ids also the finalize job's); messages on stderr.
set -euo pipefail
SFBD_LOG_NAME=denoise_submit.sh

# --- locate the repository: this script's folder's parent (through a link to the script, too) -------
if [[ -n "${SFBD_ROOT:-}" ]]; then
    [[ -f "$SFBD_ROOT/denoise.py" ]] || { echo "denoise_submit.sh: error: SFBD_ROOT=$SFBD_ROOT holds no denoise.py" >&2; exit 1; }
else
    SFBD_ROOT="$(cd "$(dirname "$(readlink -f -- "${BASH_SOURCE[0]}")")/.." && pwd)"
    [[ -f "$SFBD_ROOT/denoise.py" ]] || {
        echo "denoise_submit.sh: error: the repository (denoise.py) was not found at $SFBD_ROOT, this script's folder's parent; set SFBD_ROOT" >&2
        exit 1
    }
fi
export SFBD_ROOT
# shellcheck source=scripts/common.sh
source "$SFBD_ROOT/scripts/common.sh"

wait_for_it=0
print_ids=0
sbatch_opts=()
for arg in "$@"; do
    case "$arg" in
        -h | --help) sfbd_usage "${BASH_SOURCE[0]}" ;;
        --wait) wait_for_it=1 ;;
        --ids) print_ids=1 ;;
        *) sbatch_opts+=("$arg") ;;
    esac
done
sfbd_check_sbatch_opts "the sbatch options" 0 "${sbatch_opts[@]}"

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
sfbd_gpu_count NGPUS
sfbd_flag SFBD_REQUEUE
sfbd_check_python
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

# Absolute paths: the jobs may start in another folder (--chdir) or after this one moved.
NETWORK="$(sfbd_abspath "$NETWORK")"
NOISY_DATA="$(sfbd_abspath "$NOISY_DATA")"
OUTDIR="$(sfbd_abspath "$OUTDIR")"
[[ -n "${RECORD:-}" ]] && RECORD="$(sfbd_abspath "$RECORD")"
[[ -n "${LOG_DIR:-}" ]] && LOG_DIR="$(sfbd_abspath "$LOG_DIR")"
array_log=()
final_log=(--output="slurm-%x-%j.out")
if [[ -n "${LOG_DIR:-}" ]]; then
    array_log=(--output="$(sfbd_log_pattern "$LOG_DIR")/%x-%A_%a.out")
    final_log=(--output="$(sfbd_log_pattern "$LOG_DIR")/%x-%j.out")
fi

# sbatch's own verdict on the options and the array, before anything is made or submitted.
sfbd_check_denoise_sbatch "the sbatch options given to denoise_submit.sh" "${sbatch_opts[@]}"

[[ -n "${LOG_DIR:-}" ]] && mkdir -p -- "$LOG_DIR"
mkdir -p -- "$OUTDIR"
export NETWORK NOISY_DATA OUTDIR NUM_TASKS STEPS DENOISE_ARGS RECORD RECORD_TAG PYTHON

# Should the finalize job be refused after all, the array would denoise with no one to finish the
# set: it is cancelled again.
array_id=""
# shellcheck disable=SC2317 # run by the EXIT trap
cancel_array() {
    local rc=$?
    if ((rc != 0)) && [[ -n "$array_id" ]]; then
        scancel "$array_id" 2>/dev/null || true
        sfbd_log "cancelled the array $array_id, submitted before the failure"
    fi
}
trap cancel_array EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

submitted_at="$(date +%s)"
submitted="$(sfbd_job_env -u FINALIZE -u TASK_ID sbatch --parsable --job-name="$name" --array="$array" \
    "${array_log[@]}" --kill-on-invalid-dep=yes "${sbatch_opts[@]}" "$SFBD_ROOT/scripts/denoise.sh")" \
    || sfbd_die "sbatch refused the array (its message is above)"
submitted="${submitted%%;*}"
[[ "$submitted" =~ ^[0-9]+$ ]] || sfbd_die "sbatch gave no job id for the array: '$submitted'"
array_id="$submitted"
final_id="$(FINALIZE=1 sfbd_job_env -u TASK_ID sbatch --parsable --job-name="$name-finalize" "${final_log[@]}" \
    --kill-on-invalid-dep=yes "${sbatch_opts[@]}" --dependency="afterany:$array_id" \
    "$SFBD_ROOT/scripts/denoise.sh")" || sfbd_die "sbatch refused the finalize job (its message is above)"
final_id="${final_id%%;*}"
[[ "$final_id" =~ ^[0-9]+$ ]] || sfbd_die "sbatch gave no job id for the finalize job: '$final_id'"
trap - EXIT INT TERM
sfbd_log "submitted array $array_id ($NUM_TASKS task(s): $NOISY_DATA -> $OUTDIR) and finalize job $final_id"
if ((print_ids)); then
    echo "$array_id $final_id"
else
    echo "$array_id"
fi

((wait_for_it)) || exit 0

# --wait: the finalize job runs after every task, so its end is the end. Its state says whether the
# set is complete. Where SLURM has forgotten the job (MinJobAge) or does not answer, a dataset.json
# written since this submission says it (the task or finalize job that completes the set writes it).
# shellcheck disable=SC2317 # run by sfbd_wait_job
set_completed_since_submission() {
    [[ -f "$OUTDIR/dataset.json" ]] && (($(stat -c %Y -- "$OUTDIR/dataset.json") >= submitted_at - 1))
}
sfbd_wait_job "$final_id" "${WAIT_POLL:-10}" set_completed_since_submission
case "$SFBD_JOB_STATE" in
    COMPLETED)
        sfbd_log "complete: every image of $NOISY_DATA is in $OUTDIR"
        exit 0
        ;;
    GONE)
        sfbd_log "finalize job $final_id is gone from SLURM's records, and $OUTDIR has no dataset.json written since this submission: the set is incomplete; see the jobs' logs"
        ;;
    UNKNOWN)
        sfbd_log "SLURM did not answer about the finalize job $final_id; the jobs may still run (squeue -j $array_id,$final_id): do not submit again before they are over"
        ;;
    *)
        sfbd_log "finalize job $final_id ended $SFBD_JOB_STATE: the set is incomplete; see its log, then submit again"
        ;;
esac
exit 1
