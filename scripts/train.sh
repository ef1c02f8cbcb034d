#!/usr/bin/env bash
#SBATCH --job-name=sfbd-train
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --signal=B:USR1@120
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=slurm-%x-%j.out
#
# train.sh -- run train.py on whatever this is: a laptop, a GPU box, one SLURM node or several.
#
#   sbatch [sbatch options] scripts/train.sh [train.py options]     # a SLURM batch job
#   bash scripts/train.sh [train.py options]                        # here, or inside salloc/srun
#   bash scripts/train.sh --help                                    # this text
#
# Configured by environment variables (sbatch passes the submitting shell's environment on, SLURM_*
# variables too: a job submitted from an salloc shell or from another job keeps SLURM_GPUS_ON_NODE, which
# this script would count GPUs by, and SLURM_ARRAY_*, where SLURM sets none; submit from there with
# `env -u SLURM_GPUS_ON_NODE -u SLURM_ARRAY_JOB_ID -u SLURM_ARRAY_TASK_ID sbatch ...`, or set NGPUS):
#   CLEAN_DATA     required. The clean, copyright-free dataset (directory or zip); --data=CLEAN_DATA.
#   DENOISED_DATA  optional. A denoised set added as a second --data (the SFBD update step trains on
#                  clean + denoised; train.py reads both, nothing is merged or copied).
#   NOISY_DATA     optional. An observation set for Online SFBD, --noisy=NOISY_DATA: train.py keeps a
#                  denoised copy of it and refreshes it as it trains (docs/sfbd.md).
#   TRANSFER       optional. Network to fine-tune from, passed as --transfer: a snapshot .pkl, a URL,
#                  or a training run directory, meaning its newest network-snapshot-*.pkl (looked up
#                  when the job starts, so it may name a run that has not finished at submit time).
#                  A rerun into an OUTDIR holding a training state resumes from it; train.py refuses
#                  the state if it began from another snapshot than TRANSFER resolves to now.
#   OUTDIR         required. The run directory, used as it is (--outdir=OUTDIR --nosubdir), so a
#                  rerun or a requeued job finds its own training-state-*.pt and resumes from it. Give
#                  every run its own OUTDIR; a new run must not reuse an old one.
#   PRESET         none (default) | celeba64 | cifar10: hyperparameters put before your options (yours
#                  win where both are given), from sfbd/presets.py (`python -m sfbd.presets` prints
#                  them with their sources):
#                    celeba64  the SFBD release's CelebA 64x64 recipe (its scripts/train.sh; EDM's
#                              FFHQ-64 hyperparameters with NCSN++): --cond=0 --arch=ncsnpp --batch=256
#                              --cres=1,2,2,2 --lr=2e-4 --dropout=0.05 --augment=0.15
#                    cifar10   EDM's CIFAR-10 DDPM++ recipe (its README and train.py defaults), without
#                              labels: --cond=0 --arch=ddpmpp --batch=512 --cres=2,2,2 --lr=1e-3
#                              --dropout=0.13 --augment=0.12
#                    none      only what you pass
#   NGPUS          optional. GPUs per node to use (0 to 9999). Default: SLURM_GPUS_ON_NODE, else the
#                  entries of CUDA_VISIBLE_DEVICES, else `nvidia-smi -L`, else 0. With 0 (no GPU) one CPU
#                  process runs `python train.py` directly; with 1 too; with more, torchrun (in a
#                  session of its own: a Ctrl-C reaches this script, which passes it on as SIGTERM).
#   RDZV_HOST      optional, several nodes only: rendezvous host. Default: the first host of
#                  `scontrol show hostnames $SLURM_JOB_NODELIST` (set it where node names do not
#                  resolve to the network the nodes should use, e.g. an "-ib" name).
#   RDZV_PORT      optional, several nodes only: rendezvous port. Default 20000 + SLURM_JOB_ID % 20000
#                  (derived from the job id, so two jobs sharing a first node do not collide).
#   SRUN_ARGS      optional, several nodes only: extra options for the `srun` that starts one torchrun
#                  per node (whitespace-separated).
#   RECORD         optional. A JSON-lines file: a finished run appends one line with its OUTDIR, final
#                  snapshot, the snapshot it was transferred from and the datasets.
#   RECORD_TAG     optional. A JSON object merged into that line (e.g. {"round": 2}).
#   SFBD_REQUEUE   1 (default): when train.py stops on the warning signal with exit code 75 (state
#                  saved), an sbatch job requeues itself with `scontrol requeue`. 0: just exit 75.
#                  Anything else is refused when the script starts.
#                  SIGTERM (scancel) saves and exits 75 without requeueing.
#   SFBD_ROOT      optional. The repository (holding train.py). Default: this script's parent folder;
#                  under sbatch (which runs a copy of this file) the parent of the submitted file as
#                  `scontrol show job` reports it, else SLURM_SUBMIT_DIR, else the current folder.
#   PYTHON         optional. Python interpreter (default `python`, else `python3`); torchrun is run as
#                  `PYTHON -m torch.distributed.run`, so both come from the same environment. A relative
#                  path is taken from the current folder.
#
# How it launches:
#   * one node (or no SLURM): NGPUS <= 1: `python train.py ...`; NGPUS > 1:
#     `torchrun --standalone --nproc_per_node=NGPUS train.py ...`.
#   * several SLURM nodes (SLURM_JOB_NUM_NODES > 1): `srun` starts this script once per node, and each
#     runs `torchrun --nnodes=N --nproc_per_node=NGPUS --rdzv-backend=c10d --rdzv-id=SLURM_JOB_ID
#     --rdzv-endpoint=FIRST_HOST:RDZV_PORT`, FIRST_HOST being the first of
#     `scontrol show hostnames $SLURM_JOB_NODELIST`.
#
# Preemption and time limits: the #SBATCH header asks SLURM for SIGUSR1 120 s before the time limit
# and lets the job be requeued. The signal reaches this shell, which forwards it to train.py (to every
# node's workers when several nodes run). train.py finishes its step, saves a training state and a
# snapshot, and exits 75; this script then runs `scontrol requeue $SLURM_JOB_ID`. The requeued job
# starts with the same environment and OUTDIR and resumes from the newest training state. Logs are
# appended (--open-mode=append), so one file holds every restart.
#
# Exit code: train.py's (0 done; 75 stopped and saved, to be rerun), 1 for a configuration error.
set -euo pipefail
SFBD_LOG_NAME=train.sh

# --- locate the repository (sbatch runs a copy of this file from SLURM's spool folder) -------------
# This script's folder's parent, through a link to the script too.
_here="$(cd "$(dirname "$(readlink -f -- "${BASH_SOURCE[0]}")")/.." 2>/dev/null && pwd || true)"
if [[ -n "${SFBD_ROOT:-}" ]]; then
    [[ -f "$SFBD_ROOT/train.py" ]] || { echo "train.sh: error: SFBD_ROOT=$SFBD_ROOT holds no train.py" >&2; exit 1; }
else
    # Under sbatch this file is a copy in SLURM's spool; the job record names the submitted file:
    # Command=PATH ARGS..., PATH up to the last .../scripts/train.sh (it may hold spaces), else (a
    # link of another name) the first word.
    _submitted=""
    if [[ -n "${SLURM_JOB_ID:-}" ]] && command -v scontrol >/dev/null 2>&1; then
        _submitted="$({ scontrol show job "$SLURM_JOB_ID" 2>/dev/null || true; } | sed -n 's/^ *Command=//p' | head -n 1)"
        if [[ "$_submitted" =~ ^(.*/scripts/train\.sh)( |$) ]]; then
            _submitted="${BASH_REMATCH[1]}"
        else
            _submitted="${_submitted%% *}"
        fi
        if [[ -n "$_submitted" ]]; then
            _submitted="$(cd "$(dirname "$(readlink -f -- "$_submitted")")/.." 2>/dev/null && pwd || true)"
        fi
    fi
    for _d in "$_here" "$_submitted" "${SLURM_SUBMIT_DIR:-}" "$PWD"; do
        if [[ -n "$_d" && -f "$_d/train.py" && -f "$_d/scripts/common.sh" ]]; then
            SFBD_ROOT="$_d"
            break
        fi
    done
    [[ -n "${SFBD_ROOT:-}" ]] || {
        echo "train.sh: error: cannot find the repository (train.py); submit from its root or set SFBD_ROOT" >&2
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

# --- GPUs on this node ------------------------------------------------------------------------------
GPUS="$(sfbd_count_gpus)"
[[ "$GPUS" =~ ^[0-9]+$ ]] || sfbd_die "GPU count '$GPUS' is not a number (NGPUS / SLURM_GPUS_ON_NODE)"
NPROC=$((GPUS > 1 ? GPUS : 1))

NNODES=1
if [[ -n "${SLURM_JOB_ID:-}" ]]; then
    NNODES="${SLURM_JOB_NUM_NODES:-${SLURM_NNODES:-1}}"
fi

# --- role "node": one per node under srun, started by the batch role below ---------------------------
node_pidfile() { echo "${TMPDIR:-/tmp}/sfbd-train-$SLURM_JOB_ID-node$1.pid"; }
first_host_of() {  # the first host of a SLURM node list ("gpu[03-05,07],cpu1" -> gpu03)
    local h
    h="$(scontrol show hostnames "$1" 2>/dev/null | head -n 1 || true)"
    if [[ -z "$h" ]]; then  # scontrol needs SLURM's configuration; a plain reading of the list
        if [[ "$1" =~ ^([^,\[]*)\[([0-9]+) ]]; then
            h="${BASH_REMATCH[1]}${BASH_REMATCH[2]}"
        else
            h="${1%%,*}"
        fi
    fi
    echo "$h"
}
if [[ "${_SFBD_TRAIN_ROLE:-}" == node ]]; then
    [[ -n "${SLURM_JOB_NODELIST:-}" ]] || sfbd_die "node role needs SLURM_JOB_NODELIST"
    first_host="${RDZV_HOST:-$(first_host_of "$SLURM_JOB_NODELIST")}"
    [[ -n "$first_host" ]] || sfbd_die "no host in SLURM_JOB_NODELIST='$SLURM_JOB_NODELIST'"
    port="${RDZV_PORT:-$((20000 + SLURM_JOB_ID % 20000))}"
    sfbd_log "node $(hostname -s) (${SLURM_NODEID:-?}/$NNODES): $NPROC process(es), rendezvous $first_host:$port id $SLURM_JOB_ID"
    # Where the batch shell finds this launcher to pass the warning signal on (see below).
    pidfile="$(node_pidfile "${SLURM_NODEID:-0}")"
    echo "$$" >"$pidfile"
    trap 'rm -f "$pidfile"' EXIT
    sfbd_run_forwarding torchrun "$PY" -m torch.distributed.run \
        --nnodes="$NNODES" --nproc_per_node="$NPROC" --max-restarts=0 \
        --rdzv-backend=c10d --rdzv-endpoint="$first_host:$port" --rdzv-id="$SLURM_JOB_ID" \
        "$SFBD_ROOT/train.py" "$@"
    exit "$SFBD_RC"
fi

# --- the run's options ------------------------------------------------------------------------------
[[ -n "${OUTDIR:-}" ]] || sfbd_die "set OUTDIR to the run directory (one per run; reruns resume from it)"
[[ -n "${CLEAN_DATA:-}" ]] || sfbd_die "set CLEAN_DATA to the clean dataset (directory or zip)"
[[ -e "$CLEAN_DATA" ]] || sfbd_die "CLEAN_DATA=$CLEAN_DATA does not exist"
sfbd_check_record
if [[ -n "${DENOISED_DATA:-}" && ! -e "$DENOISED_DATA" ]]; then
    sfbd_die "DENOISED_DATA=$DENOISED_DATA does not exist"
fi
if [[ -n "${NOISY_DATA:-}" && ! -e "$NOISY_DATA" ]]; then
    sfbd_die "NOISY_DATA=$NOISY_DATA does not exist"
fi

sfbd_preset preset train "${PRESET:-none}"

args=(--outdir="$OUTDIR" --nosubdir --data="$CLEAN_DATA")
[[ -n "${DENOISED_DATA:-}" ]] && args+=(--data="$DENOISED_DATA")
[[ -n "${NOISY_DATA:-}" ]] && args+=(--noisy="$NOISY_DATA")
args+=("${preset[@]}")

# --transfer is passed on reruns too: train.py resumes from the newest state in OUTDIR and refuses a
# state that began from another snapshot (a run directory can only be continued by its own run).
transfer=""
if [[ -n "${TRANSFER:-}" ]]; then
    transfer="$(sfbd_resolve_network "$TRANSFER" TRANSFER)"
    sfbd_log "transfer from $transfer"
    args+=(--transfer="$transfer")
fi
if [[ -n "$(sfbd_newest_state "$OUTDIR" || true)" ]]; then
    sfbd_log "OUTDIR holds a training state: train.py resumes from the newest one"
fi
args+=("$@")

sfbd_log "job ${SLURM_JOB_ID:-none} restart ${SLURM_RESTART_COUNT:-0} on $(hostname -s): $NNODES node(s) x $NPROC process(es) ($GPUS GPU(s) per node)"
sfbd_log "train.py ${args[*]}"

# --- launch -----------------------------------------------------------------------------------------
if ((NNODES > 1)); then
    srun_args=(--nodes="$NNODES" --ntasks="$NNODES" --ntasks-per-node=1 --kill-on-bad-exit=0)
    [[ -n "${SLURM_CPUS_ON_NODE:-}" ]] && srun_args+=(--cpus-per-task="$SLURM_CPUS_ON_NODE")
    ((GPUS > 0)) && srun_args+=(--gres="gpu:$GPUS")
    sfbd_words extra "${SRUN_ARGS:-}" SRUN_ARGS
    srun_args+=("${extra[@]}")
    # SLURM's B: signal reaches only this shell. It passes it to each node's launcher (whose pid
    # that launcher wrote to a file on its node) with a short overlapping step; the launchers pass
    # it to their workers. Only if that fails, `scancel --signal` signals every process of the
    # training step, helper processes included (which may then die noisily).
    _sfbd_forward_step() {
        SFBD_SIGNALLED=1
        if [[ "$1" == USR1 ]]; then SFBD_WARNED=1; fi
        _SFBD_TRAPPED=1
        sfbd_log "got a signal: sending SIG$1 to the training launcher on every node"
        # shellcheck disable=SC2016 # expanded on each node
        if ! timeout 60 srun --overlap --nodes="$NNODES" --ntasks="$NNODES" --ntasks-per-node=1 \
            --kill-on-bad-exit=0 bash -c 'f="${TMPDIR:-/tmp}/sfbd-train-$SLURM_JOB_ID-node$SLURM_NODEID.pid"
                [[ -s "$f" ]] && kill -s "$1" "$(cat "$f")"' _ "$1"; then
            sfbd_log "could not reach every launcher; signalling the whole step with scancel"
            scancel --signal="$1" "$SLURM_JOB_ID" 2>/dev/null || true
        fi
    }
    SFBD_SIGNALLED=0
    SFBD_WARNED=0
    _SFBD_TRAIN_ROLE=node srun "${srun_args[@]}" bash "$SFBD_ROOT/scripts/train.sh" "${args[@]}" &
    child=$!
    trap '_sfbd_forward_step USR1' USR1
    trap '_sfbd_forward_step TERM' TERM INT
    while :; do
        _SFBD_TRAPPED=0
        wait "$child" && rc=0 || rc=$?
        ((_SFBD_TRAPPED)) || break
        kill -0 "$child" 2>/dev/null && continue
        wait "$child" 2>/dev/null && rc=0 || { r=$?; ((r == 127)) || rc=$r; }
        break
    done
    trap - USR1 TERM INT
    # srun reports the highest task exit code; a launcher stopped by the signal exits 75.
    if ((SFBD_SIGNALLED && rc != 0 && rc != SFBD_EX_PREEMPTED)); then
        sfbd_log "srun exited with $rc after a forwarded signal: treating it as preempted"
        rc=$SFBD_EX_PREEMPTED
    fi
elif ((NPROC > 1)); then
    sfbd_run_forwarding torchrun "$PY" -m torch.distributed.run --standalone \
        --nproc_per_node="$NPROC" --max-restarts=0 "$SFBD_ROOT/train.py" "${args[@]}"
    rc=$SFBD_RC
else
    sfbd_run_forwarding direct "$PY" "$SFBD_ROOT/train.py" "${args[@]}"
    rc=$SFBD_RC
fi

if ((rc == 0)); then
    final="$(sfbd_newest_snapshot "$OUTDIR" || true)"
    sfbd_log "training finished: ${final:-no snapshot in $OUTDIR}"
    if [[ -n "${RECORD:-}" ]]; then
        sfbd_append_record "$RECORD" train outdir="$(sfbd_abspath "$OUTDIR")" \
            snapshot="${final:+$(sfbd_abspath "$final")}" transfer="${transfer:+$(sfbd_abspath "$transfer")}" \
            clean_data="$(sfbd_abspath "$CLEAN_DATA")" denoised_data="${DENOISED_DATA:+$(sfbd_abspath "$DENOISED_DATA")}" \
            noisy_data="${NOISY_DATA:+$(sfbd_abspath "$NOISY_DATA")}"
    fi
fi
sfbd_requeue_or_exit "$rc"
