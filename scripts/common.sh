# shellcheck shell=bash
# common.sh -- helpers shared by scripts/train.sh, scripts/denoise.sh, scripts/denoise_submit.sh and
# scripts/sfbd_rounds.sh. Sourced, not run. Defines only functions and the constant below; reads:
#   PYTHON   Python interpreter for train.py/denoise.py (default: `python` if on PATH, else `python3`);
#            sfbd_check_python makes a relative path absolute, so that it still names the same file
#            after a `cd` and in the jobs

# Exit code of train.py / denoise.py meaning "stopped on a signal, state saved, run me again".
SFBD_EX_PREEMPTED=75

sfbd_log() { echo "[$(date '+%F %T')] ${SFBD_LOG_NAME:-sfbd}: $*" >&2; }
sfbd_die() { echo "${SFBD_LOG_NAME:-sfbd}: error: $*" >&2; exit 1; }

# sfbd_usage FILE: print FILE's header comment (the script's documentation) and exit 0; for --help.
sfbd_usage() {
    sed -n '2,/^set -euo/{/^#SBATCH/d;p}' "$1" | sed '$d' | sed 's/^# \{0,1\}//' | sed '/./,$!d'
    exit 0
}

# sfbd_flag NAME: the variable NAME, if set, is 0 or 1 (else exit 1).
sfbd_flag() {
    local value="${!1:-}"
    [[ -z "$value" || "$value" =~ ^[01]$ ]] || sfbd_die "$1=$value: expected 0 or 1"
}

# sfbd_gpu_count NAME: the variable NAME, if set, is a number of GPUs: a whole number from 0 to 9999
# without leading zeros (bash reads 08 as octal) (else exit 1).
sfbd_gpu_count() {
    local value="${!1:-}"
    [[ -z "$value" || "$value" =~ ^(0|[1-9][0-9]{0,3})$ ]] || sfbd_die "$1=$value is not a number of GPUs (0 to 9999)"
}

# sfbd_positive_int NAME: the variable NAME, if set, is a whole number from 1 to 9999999 (else exit 1).
sfbd_positive_int() {
    local value="${!1:-}"
    [[ -z "$value" || "$value" =~ ^[1-9][0-9]{0,6}$ ]] || sfbd_die "$1=$value is not a positive integer (at most 9999999)"
}

# sfbd_positive_seconds VAR: VAR, if set, is a positive number of seconds (0 would poll the queue nonstop).
sfbd_positive_seconds() {
    local value="${!1:-}"
    [[ -z "$value" || ("$value" =~ ^[0-9]+([.][0-9]+)?$ && "$value" =~ [1-9]) ]] \
        || sfbd_die "$1=$value is not a positive number of seconds"
}

# sfbd_check_record: RECORD, if set, names a file (not a folder) whose folder exists or can be made
# (the nearest existing folder above it is a writable folder), and RECORD_TAG, if set, is a JSON
# object. Checked when a script starts, so that a bad value does not fail a job after its work.
sfbd_check_record() {
    local dir
    if [[ -n "${RECORD:-}" ]]; then
        [[ -d "$RECORD" ]] && sfbd_die "RECORD=$RECORD is a directory; expected a JSON-lines file"
        dir="$(dirname -- "$RECORD")"
        while [[ ! -e "$dir" && ! -L "$dir" ]]; do dir="$(dirname -- "$dir")"; done
        [[ -d "$dir" ]] || sfbd_die "RECORD=$RECORD: $dir is not a directory, so the record cannot be written there"
        [[ -w "$dir" ]] || sfbd_die "RECORD=$RECORD: $dir is not writable"
    fi
    [[ -z "${RECORD_TAG:-}" ]] && return 0
    RECORD_TAG="$RECORD_TAG" "$(sfbd_python)" -c '
import json, os, sys
try:
    tag = json.loads(os.environ["RECORD_TAG"])
except ValueError:
    tag = None
sys.exit(0 if isinstance(tag, dict) else 1)' || sfbd_die "RECORD_TAG=$RECORD_TAG is not a JSON object (e.g. {\"round\": 2})"
}

# sfbd_check_args KIND VARIABLE [ARG ...] [-- KIND VARIABLE [ARG ...]] ...: the options that each VARIABLE
# passes on to train.py (KIND train) or denoise.py (KIND denoise), checked as the tool will parse them;
# with KIND output or data, an output folder or the data of the rounds (tools/job_args.py says how).
# All before any job is submitted, in one Python process; nothing to check costs nothing.
sfbd_check_args() {
    local message group=0 arg
    for arg in "$@"; do
        case "$arg" in --) group=0 ;; *) ((++group > 2)) && break ;; esac
    done
    ((group > 2)) || return 0  # Each group names only its kind and variable: no options given.
    message="$(cd "$SFBD_ROOT" && "$(sfbd_python)" -m tools.job_args "$@" 2>&1)" || sfbd_die "$message"
}

# sfbd_check_python: PYTHON, if set, names an interpreter that exists (else exit 1); a relative path
# (./venv/bin/python) is made absolute and exported, so that it names the same file after the `cd`
# into the repository and in the jobs, which may start in another folder.
sfbd_check_python() {
    [[ -n "${PYTHON:-}" ]] || return 0
    [[ "$PYTHON" == */* ]] && PYTHON="$(sfbd_abspath "$PYTHON")"
    command -v -- "$PYTHON" >/dev/null 2>&1 || sfbd_die "PYTHON=$PYTHON: no such interpreter (not found, or not executable)"
    export PYTHON
}

# sfbd_python -> the interpreter: PYTHON, else `python` if on PATH, else `python3`.
sfbd_python() {
    if [[ -n "${PYTHON:-}" ]]; then
        echo "$PYTHON"
    elif command -v python >/dev/null 2>&1; then
        echo python
    else
        echo python3
    fi
}

# sfbd_abspath PATH -> absolute path (the file need not exist); URLs are left as they are.
sfbd_abspath() {
    case "$1" in
        *://*) echo "$1" ;;
        /*) echo "$1" ;;
        *) echo "$PWD/$1" ;;
    esac
}

# sfbd_position_key NAME -> a number that orders train.py's snapshot and state names by training
# position, or fails for other names. train.py names a file by its kimg (network-snapshot-000200.pkl),
# or, when that name was taken by an earlier position, by its exact kimg (network-snapshot-000200.520.pkl);
# see training/run_files.py.
sfbd_position_key() {
    local name="${1##*/}"
    name="${name#network-snapshot-}"
    name="${name#training-state-}"
    name="${name%.pkl}"
    name="${name%.pt}"
    [[ "$name" =~ ^([0-9]+)(\.([0-9]{3}))?$ ]] || return 1
    if [[ -n "${BASH_REMATCH[3]}" ]]; then
        echo $(( (10#${BASH_REMATCH[1]} * 1000 + 10#${BASH_REMATCH[3]}) * 2 + 1 ))
    else
        echo $(( 10#${BASH_REMATCH[1]} * 1000 * 2 ))
    fi
}

# sfbd_newest_file DIR PREFIX EXT -> path of the PREFIX-*EXT in DIR furthest in training, or fails.
sfbd_newest_file() {
    local dir="$1" prefix="$2" ext="$3" best="" best_key=-1 f k
    shopt -s nullglob
    for f in "$dir/$prefix"-*"$ext"; do
        k="$(sfbd_position_key "$f")" || continue
        if ((k > best_key)); then
            best_key=$k
            best="$f"
        fi
    done
    shopt -u nullglob
    [[ -n "$best" ]] || return 1
    echo "$best"
}

# sfbd_newest_snapshot DIR -> path of the newest network-snapshot-*.pkl in DIR (by position), or fails.
sfbd_newest_snapshot() {
    sfbd_newest_file "$1" network-snapshot .pkl
}

# sfbd_newest_state DIR -> path of the newest training-state-*.pt in DIR (by position), or fails.
sfbd_newest_state() {
    sfbd_newest_file "$1" training-state .pt
}

# sfbd_resolve_network WHAT NAME -> a snapshot file: WHAT itself if it is a file or URL, the newest
# snapshot inside it if it is a run directory. Fails with a message naming NAME otherwise.
sfbd_resolve_network() {
    local what="$1" name="$2" snap
    if [[ "$what" == *://* || -f "$what" ]]; then
        echo "$what"
    elif [[ -d "$what" ]]; then
        snap="$(sfbd_newest_snapshot "$what")" \
            || sfbd_die "$name=$what is a directory without network-snapshot-*.pkl (did that training finish?)"
        echo "$snap"
    else
        sfbd_die "$name=$what: no such file or directory"
    fi
}

# sfbd_preset VAR KIND NAME : the options of preset NAME for KIND (train, denoise or online) into the array
# named VAR, from the table in sfbd/presets.py (`python -m sfbd.presets` lists it); empty for none.
# Fails naming PRESET for an unknown NAME; any other failure (an interpreter without the packages, say)
# is shown as Python's own last line.
sfbd_preset() {
    local -n _preset_out="$1"
    local text errors rc=0
    _preset_out=()
    [[ -z "${3:-}" || "$3" == none ]] && return 0
    errors="$(mktemp)"
    text="$(cd "$SFBD_ROOT" && "$(sfbd_python)" -m sfbd.presets "$3" --for="$2" 2>"$errors")" || rc=$?
    if ((rc != 0)); then
        if grep -q 'unknown preset' "$errors"; then
            rm -f "$errors"
            sfbd_die "PRESET=$3: unknown preset (python -m sfbd.presets lists them)"
        fi
        text="$(grep . "$errors" | tail -n 1)"
        rm -f "$errors"
        sfbd_die "PRESET=$3: $(sfbd_python) -m sfbd.presets failed (exit $rc): ${text:-no message}"
    fi
    rm -f "$errors"
    [[ -n "$text" ]] && mapfile -t _preset_out <<<"$text"
    return 0
}

# sfbd_words VAR STRING NAME : split STRING at whitespace into the array named VAR (no globbing), for the
# *_ARGS variables that carry several options (NAME is the variable, for messages); spaces, tabs and
# newlines all separate words, so a value written over several lines is used whole. Quotes and
# backslashes are not interpreted, so a STRING holding any is refused rather than passed on half-split.
sfbd_words() {
    local -n _out="$1"
    _out=()
    if [[ "${2:-}" == *[\'\"\\]* ]]; then
        sfbd_die "${3:-options}=${2}: quotes and backslashes are not interpreted here (options are split at whitespace); give each option as one word, e.g. --desc=my-run"
    fi
    # `read -d ''` reads to the end of the input (not only its first line), and then returns 1.
    [[ -n "${2:-}" ]] && { IFS=$' \t\n' read -r -d '' -a _out <<<"$2" || true; }
    return 0
}

# sfbd_count_gpus -> GPUs this process may use on this node: NGPUS if set, else SLURM_GPUS_ON_NODE,
# else the entries of CUDA_VISIBLE_DEVICES, else the GPUs `nvidia-smi -L` lists, else 0. Fails naming
# NGPUS or SLURM_GPUS_ON_NODE when the one used is not a number of GPUs.
sfbd_count_gpus() {
    local v
    if [[ -n "${NGPUS:-}" ]]; then
        sfbd_gpu_count NGPUS
        echo "$NGPUS"
    elif [[ -n "${SLURM_GPUS_ON_NODE:-}" ]]; then
        sfbd_gpu_count SLURM_GPUS_ON_NODE
        echo "$SLURM_GPUS_ON_NODE"
    elif [[ -n "${CUDA_VISIBLE_DEVICES+set}" ]]; then
        v="${CUDA_VISIBLE_DEVICES// /}"
        if [[ -z "$v" || "$v" == NoDevFiles || "$v" == -1* ]]; then
            echo 0
        else
            echo "$v" | tr ',' '\n' | grep -c .
        fi
    elif command -v nvidia-smi >/dev/null 2>&1; then
        nvidia-smi -L 2>/dev/null | grep -c '^GPU ' || true
    else
        echo 0
    fi
}

# sfbd_children PID -> the pids whose parent is PID (without pgrep, which minimal images lack).
sfbd_children() {
    local p ppid
    for p in /proc/[0-9]*; do
        ppid="$(awk '/^PPid:/ {print $2; exit}' "$p/status" 2>/dev/null)" || continue
        [[ "$ppid" == "$1" ]] && echo "${p#/proc/}"
    done
    return 0
}

# sfbd_run_forwarding MODE CMD... : run CMD in the background and wait for it, forwarding signals.
#   MODE=direct    CMD is train.py itself: SIGUSR1/SIGTERM go to it, SIGINT becomes SIGTERM.
#   MODE=kill      CMD keeps no state worth saving (denoise.py: every finished image is on disk): any
#                  of the signals stops it with SIGTERM, and a non-zero exit after that becomes 75.
#   MODE=torchrun  CMD is a torchrun launcher: the launcher is started with SIGUSR1 ignored (its
#                  default action would kill it and orphan the workers), in a session of its own (out
#                  of reach of the terminal's Ctrl-C), and the signals go to its worker processes
#                  instead. torchrun reports a failed worker as exit code 1, so a non-zero exit
#                  after a forwarded signal is turned back into 75 ("state saved").
# Sets SFBD_RC to CMD's exit code (75 after a signal-triggered save), SFBD_SIGNALLED to 0/1, and
# SFBD_WARNED to 1 once the warning signal (USR1) came, which sfbd_requeue_or_exit requeues on.
# SLURM delivers `--signal=B:USR1@T` to the batch shell only, hence the forwarding.
sfbd_run_forwarding() {
    local mode="$1"
    shift
    SFBD_SIGNALLED=0
    SFBD_WARNED=0
    _SFBD_MODE="$mode"
    if [[ "$mode" == torchrun ]]; then
        # In a session of its own (setsid), so that a Ctrl-C at the terminal reaches only this shell,
        # which passes it on to the workers, and not the launcher, which would die noisily of it.
        if command -v setsid >/dev/null 2>&1; then
            (trap '' USR1 && exec setsid -w "$@") &
        else
            (trap '' USR1 && exec "$@") &
        fi
    else
        "$@" &
    fi
    _SFBD_CHILD=$!
    trap '_sfbd_forward USR1' USR1
    trap '_sfbd_forward TERM' TERM
    trap '_sfbd_forward TERM' INT
    local rc r
    while :; do
        _SFBD_TRAPPED=0
        wait "$_SFBD_CHILD" && rc=0 || rc=$?
        ((_SFBD_TRAPPED)) || break
        # `wait` returns early (status > 128) when a trapped signal arrives: wait again while the
        # child lives; if it has just exited, collect its real status (127: already collected).
        if kill -0 "$_SFBD_CHILD" 2>/dev/null; then
            continue
        fi
        wait "$_SFBD_CHILD" 2>/dev/null && rc=0 || {
            r=$?
            ((r == 127)) || rc=$r
        }
        break
    done
    trap - USR1 TERM INT
    if [[ "$mode" != direct ]] && ((SFBD_SIGNALLED && rc != 0)); then
        sfbd_log "launcher exited with $rc after a forwarded signal: treating it as preempted ($SFBD_EX_PREEMPTED)"
        rc=$SFBD_EX_PREEMPTED
    fi
    # shellcheck disable=SC2034 # read by the caller
    SFBD_RC=$rc
}

_sfbd_forward() {
    local sig="$1" targets
    SFBD_SIGNALLED=1
    if [[ "$1" == USR1 ]]; then SFBD_WARNED=1; fi
    _SFBD_TRAPPED=1
    if [[ "$_SFBD_MODE" == torchrun ]]; then
        targets="$(sfbd_children "$_SFBD_CHILD" | tr '\n' ' ')"
        if [[ -z "${targets// /}" ]]; then
            # No worker yet (still in the rendezvous): nothing to save, stop the launcher itself.
            sig=TERM
            targets="$_SFBD_CHILD"
        fi
    elif [[ "$_SFBD_MODE" == kill ]]; then
        sig=TERM
        targets="$_SFBD_CHILD"
    else
        targets="$_SFBD_CHILD"
    fi
    sfbd_log "got a signal: sending SIG$sig to ${targets:-nothing (no worker yet)}"
    # shellcheck disable=SC2086
    [[ -n "${targets// /}" ]] && kill -s "$sig" $targets 2>/dev/null
    return 0
}

# sfbd_requeue_or_exit RC : after a preempted run (RC 75) inside an sbatch job, ask SLURM to requeue
# this job (same job id, same environment, same OUTDIR, so the next start resumes); then exit RC.
# Only a job that got the warning signal (USR1, before the time limit) requeues itself: a stop by
# SIGTERM alone comes from `scancel`, whose user wants the job to stop, or from a preemption, which
# SLURM requeues itself where it is set to.
sfbd_requeue_or_exit() {
    local rc="$1"
    local job
    if ((rc == SFBD_EX_PREEMPTED)) && [[ "${SFBD_WARNED:-0}" != 1 ]]; then
        sfbd_log "state saved; stopped without the warning signal (scancel, or a preemption that SLURM requeues itself): not requeueing; resubmit to resume"
    elif ((rc == SFBD_EX_PREEMPTED)) && [[ -n "${SLURM_JOB_ID:-}" && "${ENVIRONMENT:-}" == BATCH ]]; then
        # An array task is named ARRAYID_TASK: its SLURM_JOB_ID may equal the array's own id, and
        # `scontrol requeue ARRAYID` would requeue every task of the array.
        job="$SLURM_JOB_ID"
        if [[ -n "${SLURM_ARRAY_JOB_ID:-}" && -n "${SLURM_ARRAY_TASK_ID:-}" ]]; then
            job="${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}"
        fi
        if [[ "${SFBD_REQUEUE:-1}" == 1 ]]; then
            sfbd_log "state saved; requeueing job $job (restart count so far ${SLURM_RESTART_COUNT:-0})"
            # On success SLURM ends this script at once and queues the job again.
            if scontrol requeue "$job"; then
                sleep 60 # normally killed by SLURM before this ends
            else
                sfbd_log "scontrol requeue $job failed (job not requeueable?); resubmit it by hand"
            fi
        else
            sfbd_log "state saved; SFBD_REQUEUE=0, so not requeueing; resubmit to resume"
        fi
    fi
    exit "$rc"
}

# sfbd_append_record FILE STAGE KEY=VALUE... : append one JSON line {"stage": STAGE, "time": ...,
# "job": SLURM_JOB_ID, KEY: VALUE...} to FILE (values are strings; an empty one is null), merged with
# the JSON object in RECORD_TAG if set. Written by Python, so any path is escaped properly.
sfbd_append_record() {
    local file="$1"
    mkdir -p -- "$(dirname -- "$file")"
    RECORD_TAG="${RECORD_TAG:-}" "$(sfbd_python)" - "$@" <<'PYEOF'
import json, os, sys, time
path, stage, *pairs = sys.argv[1:]
line = dict(stage=stage, time=time.strftime('%Y-%m-%dT%H:%M:%S'), job=os.environ.get('SLURM_JOB_ID'))
for pair in pairs:
    key, _, value = pair.partition('=')
    line[key] = value or None
if os.environ.get('RECORD_TAG'):
    line.update(json.loads(os.environ['RECORD_TAG']))
with open(path, 'a', encoding='utf-8') as f:
    f.write(json.dumps(line) + '\n')
PYEOF
}

# sfbd_sha256 PATH -> sha256 of a local file, empty for a URL; fails if the file cannot be read.
# (Read from stdin: sha256sum would take a name starting with - as an option, and escape odd names.)
sfbd_sha256() {
    local sum
    [[ "$1" == *://* ]] && return 0
    sum="$(sha256sum <"$1")" || return 1
    echo "${sum%% *}"
}

#----------------------------------------------------------------------------------------------------
# Submitting jobs (denoise_submit.sh, sfbd_rounds.sh).

# sfbd_job_env [env arguments] COMMAND... : run COMMAND (sbatch) under `env`, without the SLURM_*
# variables that sbatch would copy from the submitting shell (an salloc shell, or another job) into the
# job and that SLURM does not overwrite in a job without GPUs or outside an array: train.sh would count
# GPUs the job does not have, and requeue another job's array task.
sfbd_job_env() {
    env -u SLURM_GPUS_ON_NODE -u SLURM_ARRAY_JOB_ID -u SLURM_ARRAY_TASK_ID -u SLURM_RESTART_COUNT "$@"
}

# sfbd_check_sbatch_opts WHAT CHAIN WORD... : refuse (exit 1, naming WHAT) the options among WORD that
# the script sets itself: --array (NUM_TASKS decides the array), and with CHAIN 1 also the dependency
# (a chain of jobs). Any spelling sbatch takes: -a, -aN, --array, and abbreviations such
# as --arr= and --dep= (getopt takes any unambiguous prefix; --de alone is ambiguous, sbatch refuses it).
sfbd_check_sbatch_opts() {
    local what="$1" chain="$2" word reason="NUM_TASKS decides the array"
    shift 2
    ((chain)) && reason="the chain sets arrays and dependencies itself"
    for word in "$@"; do
        case "$word" in
            -a | -a?* | --ar | --ar[=r]*) sfbd_die "$what: $word: $reason" ;;
            -d | -d?* | --dep | --dep[=e]*) ((chain)) && sfbd_die "$what: $word: $reason" ;;
        esac
    done
    return 0
}

# sfbd_sbatch_refuses SCRIPT OPTION... : ask `sbatch --test-only` (which queues nothing) whether it
# would take these options for SCRIPT; if it would not, print its message on one line and succeed.
sfbd_sbatch_refuses() {
    local script="$1" out
    shift
    out="$(sfbd_job_env sbatch --test-only "$@" "$script" 2>&1)" && return 1
    out="$(grep -v '^Try "sbatch --help"' <<<"$out" | sed -E 's/^(sbatch: (error: )?|allocation failure: )//' | grep . | paste -sd ';' -)"
    echo "${out//;/; }"
}

# sfbd_check_denoise_sbatch WHAT OPTION... : the sbatch options of the denoise array (named WHAT in the
# message), and its array of NUM_TASKS tasks (MAX_PARALLEL at once), tested with sbatch --test-only
# before anything is submitted; exit 1 with one line naming what sbatch refuses.
sfbd_check_denoise_sbatch() {
    local what="$1" array="0-$((NUM_TASKS - 1))${MAX_PARALLEL:+%$MAX_PARALLEL}" message limit
    shift
    message="$(sfbd_sbatch_refuses "$SFBD_ROOT/scripts/denoise.sh" --array="$array" "$@")" || return 0
    if ! sfbd_sbatch_refuses "$SFBD_ROOT/scripts/denoise.sh" "$@" >/dev/null; then
        limit="$(scontrol show config 2>/dev/null | sed -nE 's/^MaxArraySize *= *([0-9]+).*/\1/p' || true)"
        [[ -n "$limit" ]] && limit=" (this cluster's MaxArraySize is $limit: at most $limit tasks)"
        sfbd_die "NUM_TASKS=$NUM_TASKS${MAX_PARALLEL:+ MAX_PARALLEL=$MAX_PARALLEL}: sbatch refuses --array=$array: $message$limit"
    fi
    sfbd_die "$what: sbatch refuses them: $message"
}

# sfbd_log_pattern DIR -> DIR for the start of an sbatch --output pattern: sbatch expands %x, %j, %u...
# in the whole path, so a % of the folder's own name is doubled.
sfbd_log_pattern() {
    echo "${1//%/%%}"
}

# sfbd_job_state JOB -> the job's state (PENDING, RUNNING, COMPLETED, FAILED, ...) as SLURM has it;
# accounting's (sacct) or GONE once slurmctld has forgotten the job (MinJobAge after its end). Fails if
# SLURM did not answer (slurmctld busy or down): ask again later. A job still queued or running is found
# by squeue too, should scontrol alone fail.
sfbd_job_state() {
    local out state
    if out="$(scontrol -o show job "$1" 2>&1)"; then
        state="$(sed -nE 's/.*JobState=([A-Z_]+).*/\1/p' <<<"$out" | head -n 1)"
        [[ -n "$state" ]] && { echo "$state"; return 0; }
    elif [[ "$out" == *"Invalid job id"* ]]; then
        state="$(sacct -n -X -P -j "$1" -o State 2>/dev/null | head -n 1 || true)"
        state="${state%% *}"  # "CANCELLED by 0"
        echo "${state:-GONE}"
        return 0
    fi
    state="$(squeue -h -j "$1" -o %T 2>/dev/null | head -n 1 || true)"
    [[ -n "$state" ]] && { echo "$state"; return 0; }
    return 1
}

# sfbd_wait_job JOB POLL DONE_CHECK... : wait, asking every POLL seconds, until JOB has ended; then
# SFBD_JOB_STATE is its end state. Where SLURM no longer knows the job (GONE) or does not answer, the
# command DONE_CHECK... decides: if it succeeds (the job's own output says it finished), the state is
# COMPLETED. SLURM not answering 10 times in a row ends the wait with UNKNOWN.
sfbd_wait_job() {
    local job="$1" poll="$2" tries=0
    shift 2
    while :; do
        if SFBD_JOB_STATE="$(sfbd_job_state "$job")"; then
            tries=0
            case "$SFBD_JOB_STATE" in
                PENDING | RUNNING | CONFIGURING | COMPLETING | REQUEUED | REQUEUE_FED | REQUEUE_HOLD | RESIZING \
                    | SUSPENDED | SIGNALING | STAGE_OUT | STOPPED | RESV_DEL_HOLD) ;;
                GONE)
                    if "$@"; then SFBD_JOB_STATE=COMPLETED; fi
                    return 0
                    ;;
                *) return 0 ;;
            esac
        else
            if "$@"; then
                SFBD_JOB_STATE=COMPLETED
                return 0
            fi
            if ((++tries >= 10)); then
                SFBD_JOB_STATE=UNKNOWN
                return 0
            fi
            sfbd_log "SLURM did not answer about job $job ($tries of 10 tries); asking again"
        fi
        sleep "$poll"
    done
}

# sfbd_record_has_job FILE JOB STAGE : FILE (record.jsonl) holds a line of STAGE written by job JOB,
# i.e. that job finished its work. Read as JSON (paths there are escaped), matched by the job id.
sfbd_record_has_job() {
    [[ -f "$1" ]] || return 1
    "$(sfbd_python)" - "$@" <<'PYEOF'
import json, sys
path, job, stage = sys.argv[1:]
found = False
with open(path, encoding='utf-8', errors='replace') as f:
    for line in f:
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        found = found or (isinstance(entry, dict) and str(entry.get('job')) == job and entry.get('stage') == stage)
sys.exit(0 if found else 1)
PYEOF
}
