#!/usr/bin/env bash
# sfbd_rounds.sh -- the whole SFBD method as one chain of SLURM jobs, submitted at once:
#
#   pretrain (train.sh on CLEAN_DATA)
#   round k = 1..ROUNDS:
#     denoise  (job array, scripts/denoise.sh)  NOISY_DATA -> round-k/denoised, with the network of the
#                                               previous stage (pretrain, or round k-1's update)
#     finalize (scripts/denoise.sh FINALIZE=1)  checks every image is there, writes dataset.json and
#                                               records which snapshot made this denoised set
#     update   (train.sh)                       --transfer from that same previous snapshot, trained on
#                                               CLEAN_DATA plus round-k/denoised (two --data, no merge)
#
# With ONLINE=1 the chain is Online SFBD instead (docs/sfbd.md): pretrain, then one training job
# (train.sh with NOISY_DATA, --transfer from the pretraining) that denoises the observations as it trains.
#
# Each job waits for the one before with --dependency=afterok (a failed stage cancels the rest,
# --kill-on-invalid-dep=yes). Snapshots are looked up when a job starts, not at submit time: a stage
# given a run directory uses that run's newest (final) network-snapshot-*.pkl.
#
#   CLEAN_DATA=clean.zip NOISY_DATA=noisy.zip WORKDIR=runs/sfbd-cifar ROUNDS=4 PRESET=cifar10 \
#   PRETRAIN_ARGS="--duration=200" UPDATE_ARGS="--duration=20" NUM_TASKS=16 STEPS=18 \
#   TRAIN_SBATCH_ARGS="--gres=gpu:8 --time=24:00:00" DENOISE_SBATCH_ARGS="--gres=gpu:1 --time=4:00:00" \
#       scripts/sfbd_rounds.sh [--wait] [sbatch options for every job, e.g. --partition=gpu --account=me]
#
# Environment variables:
#   CLEAN_DATA           required. Clean dataset (directory or zip).
#   NOISY_DATA           required. Observation set (docs/observations.md).
#   WORKDIR              required. Everything goes under it:
#                          pretrain/              pretraining run (train.py --nosubdir)
#                          round-01/denoised/     round 1's denoised set (denoise.py --outdir)
#                          round-01/train/        round 1's update run
#                          round-02/...
#                          online/                the Online SFBD run instead of the rounds (ONLINE=1)
#                          record.jsonl           one line per finished stage: which snapshot denoised
#                                                 which set (path, sha256), which snapshot each update
#                                                 started from, its final snapshot
#                          jobs.tsv               stage, job id and directory of every submitted job
#                          logs/                  the jobs' output (appended across requeues)
#   ROUNDS               number of denoise+update rounds K (default 1; not with ONLINE=1).
#   ONLINE               1: Online SFBD instead of the rounds: after pretraining, one job training into
#                          online/ on CLEAN_DATA with --noisy=NOISY_DATA. Default 0.
#   ONLINE_ARGS          train.py options for the online job (e.g. "--duration=80 --refresh-every=20").
#   PRESET               celeba64 | cifar10 | none (default none): the preset of every training job
#                        (train.sh) and every denoising task (denoise.sh; celeba64: the release's 40
#                        steps; with ONLINE=1 the online job's refreshes too, before ONLINE_ARGS).
#                        Presets and their sources: `python -m sfbd.presets`.
#   PRETRAIN_ARGS        train.py options for pretraining, whitespace-separated (e.g. "--duration=200").
#   UPDATE_ARGS          train.py options for every update (e.g. "--duration=20"). As in the SFBD release,
#                        each update is a --transfer that restarts EDM's 10 Mimg learning-rate warm-up;
#                        "--lr-rampup=0" here would deviate from it (see docs/sfbd.md).
#   PRETRAINED           optional: skip pretraining and start round 1 from this snapshot or run directory.
#   NUM_TASKS            denoise array size per round (default 1).
#   MAX_PARALLEL         optional: at most this many denoise tasks at once.
#   STEPS                optional: denoise.py --steps (wins over the preset's).
#   DENOISE_ARGS         optional: more denoise.py options, whitespace-separated.
#   TRAIN_SBATCH_ARGS    optional: sbatch options for the training jobs only (GPUs, nodes, time).
#   DENOISE_SBATCH_ARGS  optional: sbatch options for the denoise jobs only.
#   JOB_PREFIX           optional: job name prefix (default sfbd).
#   WAIT_POLL            optional: seconds between queue checks with --wait (default 30).
#   SFBD_ROOT            optional: the repository (default: this script's parent folder).
#   PYTHON               optional: Python interpreter for the jobs (default `python`, else `python3`).
# Training jobs also read NGPUS, RDZV_PORT, SRUN_ARGS (see scripts/train.sh), and every job SFBD_REQUEUE;
# NGPUS and SFBD_REQUEUE are checked here first.
#
# Options: --wait: wait for the last job, exit 0 if it completed, 1 if a stage failed. -h, --help: print
# this and exit. Anything else goes to sbatch for every job, but not --array or --dependency (in any
# spelling; nor in TRAIN_SBATCH_ARGS or DENOISE_SBATCH_ARGS): the chain sets those itself. Jobs inherit
# this environment (sbatch --export=ALL), less the SLURM_* variables that would leak from an salloc
# shell or another job (SLURM_GPUS_ON_NODE, SLURM_ARRAY_*, SLURM_RESTART_COUNT).
#
# Before anything is made or submitted, every setting is checked, and `sbatch --test-only` is asked
# whether it takes the training jobs' options and the denoise arrays' (with their --array); a refusal
# is one line naming the setting. Should a submission still fail halfway, the jobs submitted before it
# are cancelled again, and jobs.tsv keeps the earlier chain's list: it is replaced only once every job
# of the chain is submitted.
#
# Submitting again with the same variables continues: finished stages find their work done (training
# resumes from its state or has nothing left to do; denoising skips written images) and end quickly.
# It refuses to submit while jobs of the previous submission (jobs.tsv) are still queued or running.
set -euo pipefail
SFBD_LOG_NAME=sfbd_rounds.sh

# --- locate the repository: this script's folder's parent (through a link to the script, too) -------
if [[ -n "${SFBD_ROOT:-}" ]]; then
    [[ -f "$SFBD_ROOT/train.py" ]] || { echo "sfbd_rounds.sh: error: SFBD_ROOT=$SFBD_ROOT holds no train.py" >&2; exit 1; }
else
    SFBD_ROOT="$(cd "$(dirname "$(readlink -f -- "${BASH_SOURCE[0]}")")/.." && pwd)"
    [[ -f "$SFBD_ROOT/train.py" ]] || {
        echo "sfbd_rounds.sh: error: the repository (train.py) was not found at $SFBD_ROOT, this script's folder's parent; set SFBD_ROOT" >&2
        exit 1
    }
fi
export SFBD_ROOT
# shellcheck source=scripts/common.sh
source "$SFBD_ROOT/scripts/common.sh"

wait_for_it=0
common_opts=()
for arg in "$@"; do
    case "$arg" in
        -h | --help) sfbd_usage "${BASH_SOURCE[0]}" ;;
        --wait) wait_for_it=1 ;;
        *) common_opts+=("$arg") ;;
    esac
done
sfbd_check_sbatch_opts "the sbatch options given to sfbd_rounds.sh" 1 "${common_opts[@]}"
sfbd_words train_sbatch "${TRAIN_SBATCH_ARGS:-}" TRAIN_SBATCH_ARGS
sfbd_check_sbatch_opts TRAIN_SBATCH_ARGS 1 "${train_sbatch[@]}"
train_opts=("${common_opts[@]}" "${train_sbatch[@]}")
sfbd_words denoise_sbatch "${DENOISE_SBATCH_ARGS:-}" DENOISE_SBATCH_ARGS
sfbd_check_sbatch_opts DENOISE_SBATCH_ARGS 1 "${denoise_sbatch[@]}"
denoise_opts=("${common_opts[@]}" "${denoise_sbatch[@]}")
# The options passed on to the jobs, checked (below) before any job is submitted.
sfbd_words pretrain_args "${PRETRAIN_ARGS:-}" PRETRAIN_ARGS
sfbd_words update_args "${UPDATE_ARGS:-}" UPDATE_ARGS
sfbd_words online_args "${ONLINE_ARGS:-}" ONLINE_ARGS
sfbd_words denoise_args "${DENOISE_ARGS:-}" DENOISE_ARGS

command -v sbatch >/dev/null || sfbd_die "sbatch not found: run this on a SLURM login node (or scripts/local_slurm.sh start)"
[[ -n "${CLEAN_DATA:-}" ]] || sfbd_die "set CLEAN_DATA to the clean dataset"
[[ -n "${NOISY_DATA:-}" ]] || sfbd_die "set NOISY_DATA to the observation set"
[[ -n "${WORKDIR:-}" ]] || sfbd_die "set WORKDIR to the folder for all runs of this chain"
[[ -e "$CLEAN_DATA" ]] || sfbd_die "CLEAN_DATA=$CLEAN_DATA does not exist"
[[ -e "$NOISY_DATA" ]] || sfbd_die "NOISY_DATA=$NOISY_DATA does not exist"
case "${ONLINE:-0}" in 0 | 1) ;; *) sfbd_die "ONLINE=$ONLINE: expected 0 or 1" ;; esac
if [[ "${ONLINE:-0}" == 1 ]]; then
    for var in ROUNDS UPDATE_ARGS NUM_TASKS STEPS DENOISE_ARGS; do
        [[ -z "${!var:-}" ]] || sfbd_die "$var: a setting of the rounds; ONLINE=1 runs none (use ONLINE_ARGS)"
    done
elif [[ -n "${ONLINE_ARGS:-}" ]]; then
    sfbd_die "ONLINE_ARGS: a setting of ONLINE=1"
fi
ROUNDS="${ROUNDS:-1}"
for var in ROUNDS NUM_TASKS MAX_PARALLEL STEPS; do
    sfbd_positive_int "$var"
done
sfbd_positive_seconds WAIT_POLL
sfbd_gpu_count NGPUS
sfbd_flag SFBD_REQUEUE
sfbd_check_python
sfbd_preset _preset train "${PRESET:-none}"  # Checks the name.
sfbd_check_args train PRETRAIN_ARGS "${pretrain_args[@]}" -- train UPDATE_ARGS "${update_args[@]}" \
    -- train ONLINE_ARGS "${online_args[@]}" -- denoise DENOISE_ARGS "${denoise_args[@]}"
if [[ -n "${PRETRAINED:-}" && "$PRETRAINED" != *://* && ! -e "$PRETRAINED" ]]; then
    sfbd_die "PRETRAINED=$PRETRAINED does not exist"
fi

CLEAN_DATA="$(sfbd_abspath "$CLEAN_DATA")"
NOISY_DATA="$(sfbd_abspath "$NOISY_DATA")"
WORKDIR="$(sfbd_abspath "$WORKDIR")"
[[ -n "${PRETRAINED:-}" ]] && PRETRAINED="$(sfbd_abspath "$PRETRAINED")"
# WORKDIR apart from the data: the chain writes under it, and the data are its inputs.
[[ "$(realpath -m "$CLEAN_DATA")" != "$(realpath -m "$NOISY_DATA")" ]] \
    || sfbd_die "CLEAN_DATA and NOISY_DATA are the same ($CLEAN_DATA)"
workdir_real="$(realpath -m "$WORKDIR")"
for var in CLEAN_DATA NOISY_DATA; do
    data_real="$(realpath -m "${!var}")"
    [[ "$workdir_real" != "$data_real" && "$workdir_real" != "$data_real"/* ]] \
        || sfbd_die "WORKDIR=$WORKDIR is or lies inside the input $var=${!var}; choose a folder apart from the data"
done
[[ ! -e "$WORKDIR" || -d "$WORKDIR" ]] || sfbd_die "WORKDIR=$WORKDIR is a file, not a directory"
# dnnlib/outputs.py's rules for WORKDIR (no set of images around it, no broken link on the way), and the
# data as sfbd.rounds checks them: clean images, and observations of the same size.
sfbd_check_args output WORKDIR "$WORKDIR" CLEAN_DATA "$CLEAN_DATA" NOISY_DATA "$NOISY_DATA" \
    -- data CLEAN_DATA "$CLEAN_DATA" NOISY_DATA "$NOISY_DATA"
prefix="${JOB_PREFIX:-sfbd}"
record="$WORKDIR/record.jsonl"
jobs_file="$WORKDIR/jobs.tsv"
logs="$WORKDIR/logs"

# One chain at a time per WORKDIR: two would train into the same run directories. The list of a
# submission that was killed before it finished (.jobs.tsv.*) counts too.
alive=()
shopt -s nullglob
for listing in "$jobs_file" "$WORKDIR"/.jobs.tsv.*; do
    [[ -f "$listing" ]] || continue
    while IFS=$'\t' read -r _stage job _dir; do
        [[ "$job" =~ ^[0-9]+$ ]] || continue
        if [[ -n "$(squeue -h -j "$job" -o %i 2>/dev/null || true)" ]]; then
            alive+=("$job")
        fi
    done <"$listing"
done
shopt -u nullglob
((${#alive[@]} == 0)) || sfbd_die "jobs ${alive[*]} of an earlier submission into $WORKDIR are still queued or running; wait or scancel them"

# sbatch's own verdict on the options of the training jobs and of the denoise arrays, before anything
# is made or submitted (sbatch --test-only queues nothing).
if message="$(sfbd_sbatch_refuses "$SFBD_ROOT/scripts/train.sh" "${train_opts[@]}")"; then
    if ((${#train_sbatch[@]} == 0)) || common="$(sfbd_sbatch_refuses "$SFBD_ROOT/scripts/train.sh" "${common_opts[@]}")"; then
        sfbd_die "the sbatch options given to sfbd_rounds.sh (${common_opts[*]}): sbatch refuses them: ${common:-$message}"
    fi
    sfbd_die "TRAIN_SBATCH_ARGS: sbatch refuses them: $message"
fi
if [[ "${ONLINE:-0}" != 1 ]]; then
    NUM_TASKS="${NUM_TASKS:-1}" sfbd_check_denoise_sbatch \
        "$( ((${#denoise_sbatch[@]})) && echo DENOISE_SBATCH_ARGS || echo "the sbatch options given to sfbd_rounds.sh")" \
        "${denoise_opts[@]}"
fi

mkdir -p -- "$WORKDIR" "$logs"
rm -f -- "$WORKDIR"/.jobs.tsv.*  # Lists of killed submissions whose jobs are all over (see above).
# The jobs of this submission are listed here as they are submitted, and the list becomes jobs.tsv once
# all are. Should a submission fail halfway, the jobs submitted before it are cancelled again.
new_jobs_file="$(mktemp "$WORKDIR/.jobs.tsv.XXXXXX")"
printf 'stage\tjob\tdirectory\n' >"$new_jobs_file"
# shellcheck disable=SC2317 # run by the EXIT trap
take_back_submission() {
    local rc=$? ids
    if ((rc != 0)) && [[ -n "$new_jobs_file" ]]; then
        ids="$(tail -n +2 "$new_jobs_file" | cut -f 2 | paste -sd ' ' -)"
        if [[ -n "$ids" ]]; then
            # shellcheck disable=SC2086 # job ids
            scancel $ids 2>/dev/null || true
            sfbd_log "cancelled jobs $ids, submitted before the failure; $jobs_file is unchanged"
        fi
        rm -f -- "$new_jobs_file"
    fi
}
trap take_back_submission EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Variables that would leak from this shell into a job that must not see them (and the SLURM_* ones
# that sfbd_job_env leaves out).
clear_env=(-u CLEAN_DATA -u DENOISED_DATA -u NOISY_DATA -u TRANSFER -u OUTDIR -u NETWORK -u FINALIZE -u TASK_ID -u RECORD
           -u RECORD_TAG)

submit_train() {  # submit_train NAME OUTDIR DEPENDENCY_JOB TRANSFER DENOISED ARGS_STRING TAG [NOISY] -> job id
    local name="$1" outdir="$2" dep="$3" transfer="$4" denoised="$5" tag="$7" noisy="${8:-}" id train_args
    sfbd_words train_args "$6" "train.py options"
    local vars=(CLEAN_DATA="$CLEAN_DATA" OUTDIR="$outdir" PRESET="${PRESET:-none}" RECORD="$record" RECORD_TAG="$tag")
    [[ -n "$transfer" ]] && vars+=(TRANSFER="$transfer")
    [[ -n "$denoised" ]] && vars+=(DENOISED_DATA="$denoised")
    [[ -n "$noisy" ]] && vars+=(NOISY_DATA="$noisy")
    local dep_opt=()
    [[ -n "$dep" ]] && dep_opt=(--dependency="afterok:$dep")
    id="$(sfbd_job_env "${clear_env[@]}" "${vars[@]}" \
        sbatch --parsable --job-name="$name" --output="$(sfbd_log_pattern "$logs")/%x-%j.out" --kill-on-invalid-dep=yes \
        "${train_opts[@]}" "${dep_opt[@]}" "$SFBD_ROOT/scripts/train.sh" "${train_args[@]}")" \
        || sfbd_die "sbatch refused the job $name (its message is above)"
    id="${id%%;*}"
    [[ "$id" =~ ^[0-9]+$ ]] || sfbd_die "sbatch gave no job id for $name: '$id'"
    printf '%s\t%s\t%s\n' "$name" "$id" "$outdir" >>"$new_jobs_file"
    echo "$id"
}

# --- pretraining ------------------------------------------------------------------------------------
prev_job=""
if [[ -n "${PRETRAINED:-}" ]]; then
    prev_net="$PRETRAINED"
    sfbd_log "no pretraining: round 1 starts from $PRETRAINED"
else
    prev_net="$WORKDIR/pretrain"
    prev_job="$(submit_train "$prefix-pretrain" "$prev_net" "" "" "" "${PRETRAIN_ARGS:-}" '{"round": 0}')"
    sfbd_log "pretrain: job $prev_job -> $prev_net"
fi

# --- Online SFBD: one run instead of the rounds -----------------------------------------------------
if [[ "${ONLINE:-0}" == 1 ]]; then
    sfbd_preset _online online "${PRESET:-none}"  # The preset's denoising options (--steps) for the refreshes.
    prev_job="$(submit_train "$prefix-online" "$WORKDIR/online" "$prev_job" "$prev_net" "" "${_online[*]} ${ONLINE_ARGS:-}" \
        '{"online": true}' "$NOISY_DATA")"
    sfbd_log "online: job $prev_job (from $prev_net) -> $WORKDIR/online"
    prev_net="$WORKDIR/online"
    ROUNDS=0
fi

# --- rounds -----------------------------------------------------------------------------------------
width=$((${#ROUNDS} > 2 ? ${#ROUNDS} : 2))
for ((k = 1; k <= ROUNDS; k++)); do
    round_dir="$WORKDIR/round-$(printf "%0${width}d" "$k")"
    tag="{\"round\": $k}"
    mkdir -p "$round_dir"
    dep_opt=()
    [[ -n "$prev_job" ]] && dep_opt=(--dependency="afterok:$prev_job")
    ids="$(env "${clear_env[@]}" NETWORK="$prev_net" NOISY_DATA="$NOISY_DATA" OUTDIR="$round_dir/denoised" PRESET="${PRESET:-none}" \
        NUM_TASKS="${NUM_TASKS:-1}" RECORD="$record" RECORD_TAG="$tag" LOG_DIR="$logs" \
        JOB_NAME="$prefix-r$k-denoise" \
        bash "$SFBD_ROOT/scripts/denoise_submit.sh" --ids "${denoise_opts[@]}" "${dep_opt[@]}")"
    read -r array_job final_job <<<"$ids"
    printf '%s\t%s\t%s\n' "$prefix-r$k-denoise" "$array_job" "$round_dir/denoised" >>"$new_jobs_file"
    printf '%s\t%s\t%s\n' "$prefix-r$k-denoise-finalize" "$final_job" "$round_dir/denoised" >>"$new_jobs_file"
    update_job="$(submit_train "$prefix-r$k-update" "$round_dir/train" "$final_job" "$prev_net" \
        "$round_dir/denoised" "${UPDATE_ARGS:-}" "$tag")"
    sfbd_log "round $k: denoise array $array_job (network $prev_net), finalize $final_job, update $update_job -> $round_dir/train"
    prev_job="$update_job"
    prev_net="$round_dir/train"
done

mv -f -- "$new_jobs_file" "$jobs_file"
new_jobs_file=""
trap - EXIT INT TERM
sfbd_log "submitted; jobs in $jobs_file, logs in $logs, records in $record"
sfbd_log "final network: newest network-snapshot-*.pkl in $prev_net once job $prev_job completes"
echo "$prev_job"

((wait_for_it)) || exit 0
# Where SLURM has forgotten the last job (MinJobAge) or does not answer, its line in record.jsonl (a
# training job writes it when it has finished) says that it completed.
sfbd_wait_job "$prev_job" "${WAIT_POLL:-30}" sfbd_record_has_job "$record" "$prev_job" train
case "$SFBD_JOB_STATE" in
    COMPLETED)
        sfbd_log "done: $(sfbd_newest_snapshot "$prev_net" || echo "no snapshot in $prev_net?")"
        exit 0
        ;;
    GONE) sfbd_log "the last job $prev_job is gone from SLURM's records without a record of its end in $record; see $logs" ;;
    UNKNOWN) sfbd_log "SLURM did not answer about the last job $prev_job; the chain may still run (squeue): see $jobs_file" ;;
    *) sfbd_log "the last job $prev_job ended $SFBD_JOB_STATE: a stage failed; see $logs and $jobs_file" ;;
esac
exit 1
