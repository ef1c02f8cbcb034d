#!/usr/bin/env bash
#SBATCH --job-name=sfbd-denoise
#SBATCH --nodes=1
#SBATCH --ntasks=1
#SBATCH --signal=B:USR1@60
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=slurm-%x-%A_%a.out
#
# denoise.sh -- one task of the SFBD backward step: denoise.py on shard I of N of an observation set.
# Normally started by scripts/denoise_submit.sh (a SLURM job array, task I = SLURM_ARRAY_TASK_ID) or
# scripts/sfbd_rounds.sh; also runs by hand: `NETWORK=... NOISY_DATA=... OUTDIR=... bash scripts/denoise.sh`.
#
#   [sbatch --array=0-N-1] scripts/denoise.sh [denoise.py options]
#   bash scripts/denoise.sh --help      # this text
#
# Environment variables:
#   NETWORK       required. Network pickle or URL, or a training run directory meaning its newest
#                 network-snapshot-*.pkl, looked up when the task starts (so it may name a run that is
#                 still training at submit time).
#   NOISY_DATA    required. The observation set (docs/observations.md): denoise.py --data.
#   OUTDIR        required. Output directory shared by all tasks; each image is written once,
#                 atomically, under its observation's name. denoise.py refuses an OUTDIR holding
#                 images made with other options (its denoise_options.json records network and options).
#   NUM_TASKS     number of shards N (default 1). Task I takes shard I/N (denoise.py --shard=I/N): a
#                 fixed 1/N of the set, every image in exactly one shard whatever N is.
#   TASK_ID       shard index I (default SLURM_ARRAY_TASK_ID, else 0).
#   PRESET        optional: none (default) | celeba64 | cifar10, the denoise.py options of that preset
#                 (sfbd/presets.py): celeba64 --steps=40 (the SFBD release's CelebA scripts/denoise.sh),
#                 cifar10 --steps=18 (EDM's CIFAR-10 grid). STEPS and DENOISE_ARGS come after and win.
#   STEPS         optional: denoise.py --steps (grid size; the release used 40 for CelebA at 1.3824).
#   DENOISE_ARGS  optional: more denoise.py options, whitespace-separated (e.g. "--batch=256 --mode=ode").
#                 Options given as arguments to this script are added after them.
#   FINALIZE      1: denoise nothing; check that every image is present and write dataset.json
#                 (denoise.py --finalize, with the same options). Fails if images are missing.
#   RECORD        optional: a JSON-lines file; a successful FINALIZE appends one line saying which
#                 snapshot (path and sha256) denoised which observation set into which OUTDIR.
#   RECORD_TAG    optional: a JSON object merged into that line (e.g. {"round": 2}).
#   NGPUS         optional: GPUs to use, 0 to 9999 (default as scripts/train.sh counts them); more than one runs
#                 `torchrun --standalone --nproc_per_node=NGPUS denoise.py`.
#   SFBD_REQUEUE  1 (default): on the warning signal stop denoise.py and requeue this task; a rerun
#                 skips the images already written. 0: exit 75 instead. SIGTERM (scancel) stops
#                 denoise.py and exits 75 without requeueing. Anything else is refused at the start.
#   SFBD_ROOT     optional: the repository (default: this script's parent folder, or under sbatch
#                 the submitted file's, else SLURM_SUBMIT_DIR, else the current folder).
#   PYTHON        optional: Python interpreter (default `python`, else `python3`).
#
# Exit code: denoise.py's (0 done), 75 stopped by a signal (resume by rerunning), 1 configuration error.
set -euo pipefail
SFBD_LOG_NAME=denoise.sh

# This script's folder's parent, through a link to the script too.
_here="$(cd "$(dirname "$(readlink -f -- "${BASH_SOURCE[0]}")")/.." 2>/dev/null && pwd || true)"
if [[ -n "${SFBD_ROOT:-}" ]]; then
    [[ -f "$SFBD_ROOT/denoise.py" ]] || { echo "denoise.sh: error: SFBD_ROOT=$SFBD_ROOT holds no denoise.py" >&2; exit 1; }
else
    # Under sbatch this file is a copy in SLURM's spool; the job record names the submitted file:
    # Command=PATH ARGS..., PATH up to the last .../scripts/denoise.sh (it may hold spaces), else (a
    # link of another name) the first word.
    _submitted=""
    if [[ -n "${SLURM_JOB_ID:-}" ]] && command -v scontrol >/dev/null 2>&1; then
        _submitted="$({ scontrol show job "$SLURM_JOB_ID" 2>/dev/null || true; } | sed -n 's/^ *Command=//p' | head -n 1)"
        if [[ "$_submitted" =~ ^(.*/scripts/denoise\.sh)( |$) ]]; then
            _submitted="${BASH_REMATCH[1]}"
        else
            _submitted="${_submitted%% *}"
        fi
        if [[ -n "$_submitted" ]]; then
            _submitted="$(cd "$(dirname "$(readlink -f -- "$_submitted")")/.." 2>/dev/null && pwd || true)"
        fi
    fi
    for _d in "$_here" "$_submitted" "${SLURM_SUBMIT_DIR:-}" "$PWD"; do
        if [[ -n "$_d" && -f "$_d/denoise.py" && -f "$_d/scripts/common.sh" ]]; then
            SFBD_ROOT="$_d"
            break
        fi
    done
    [[ -n "${SFBD_ROOT:-}" ]] || {
        echo "denoise.sh: error: cannot find the repository (denoise.py); submit from its root or set SFBD_ROOT" >&2
        exit 1
    }
fi
export SFBD_ROOT
# shellcheck source=scripts/common.sh
source "$SFBD_ROOT/scripts/common.sh"
[[ "${1:-}" == -h || "${1:-}" == --help ]] && sfbd_usage "${BASH_SOURCE[0]}"
sfbd_check_python
sfbd_flag SFBD_REQUEUE
PY="$(sfbd_python)"

[[ -n "${NETWORK:-}" ]] || sfbd_die "set NETWORK to a network snapshot or a training run directory"
[[ -n "${NOISY_DATA:-}" ]] || sfbd_die "set NOISY_DATA to the observation set"
[[ -e "$NOISY_DATA" ]] || sfbd_die "NOISY_DATA=$NOISY_DATA does not exist"
[[ -n "${OUTDIR:-}" ]] || sfbd_die "set OUTDIR to the output directory of the denoised images"
NUM_TASKS="${NUM_TASKS:-1}"
TASK_ID="${TASK_ID:-${SLURM_ARRAY_TASK_ID:-0}}"
sfbd_positive_int NUM_TASKS
sfbd_positive_int STEPS
sfbd_gpu_count NGPUS
sfbd_check_record
[[ "${FINALIZE:-0}" =~ ^[01]$ ]] || sfbd_die "FINALIZE=$FINALIZE: 1 to finalize, 0 (or unset) to denoise"
[[ "$TASK_ID" =~ ^[0-9]{1,7}$ ]] && ((10#$TASK_ID < NUM_TASKS)) \
    || sfbd_die "task $TASK_ID is outside 0..$((NUM_TASKS - 1)) (NUM_TASKS=$NUM_TASKS): submit --array=0-$((NUM_TASKS - 1))"

sfbd_words extra "${DENOISE_ARGS:-}" DENOISE_ARGS
sfbd_check_args denoise "DENOISE_ARGS and the script's arguments" "${extra[@]}" "$@"  # Not the paths or the shard.

network="$(sfbd_resolve_network "$NETWORK" NETWORK)"
sfbd_preset preset denoise "${PRESET:-none}"
args=(--network="$network" --data="$NOISY_DATA" --outdir="$OUTDIR" "${preset[@]}")
[[ -n "${STEPS:-}" ]] && args+=(--steps="$STEPS")
args+=("${extra[@]}")
args+=("$@")

if [[ "${FINALIZE:-0}" == 1 ]]; then
    sfbd_log "finalize $OUTDIR (network $network)"
    "$PY" "$SFBD_ROOT/denoise.py" "${args[@]}" --finalize
    if [[ -n "${RECORD:-}" ]]; then
        # The record pins down the snapshot that made the set: no record without its sha256.
        sha256="$(sfbd_sha256 "$network")" || sfbd_die "NETWORK: cannot read $network for its sha256 (RECORD=$RECORD)"
        sfbd_append_record "$RECORD" denoise network="$(sfbd_abspath "$network")" \
            network_sha256="$sha256" noisy_data="$(sfbd_abspath "$NOISY_DATA")" \
            denoised="$(sfbd_abspath "$OUTDIR")"
    fi
    exit 0
fi

GPUS="$(sfbd_count_gpus)"
[[ "$GPUS" =~ ^[0-9]+$ ]] || sfbd_die "GPU count '$GPUS' is not a number"
shard="$TASK_ID/$NUM_TASKS"
sfbd_log "job ${SLURM_JOB_ID:-none} restart ${SLURM_RESTART_COUNT:-0} on $(hostname -s): shard $shard, network $network"
if ((GPUS > 1)); then
    sfbd_run_forwarding kill "$PY" -m torch.distributed.run --standalone --nproc_per_node="$GPUS" \
        "$SFBD_ROOT/denoise.py" "${args[@]}" --shard="$shard"
else
    sfbd_run_forwarding kill "$PY" "$SFBD_ROOT/denoise.py" "${args[@]}" --shard="$shard"
fi
if ((SFBD_RC == SFBD_EX_PREEMPTED)); then
    sfbd_log "stopped on a signal; the images written so far are kept, a rerun does the rest"
fi
sfbd_requeue_or_exit "$SFBD_RC"
