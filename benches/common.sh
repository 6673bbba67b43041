# shellcheck shell=bash
# What the benchmark scripts in this folder (bench.sh, resume.sh) do alike;
# each sources it right after `set -euo pipefail`, and it does nothing when
# run on its own. It holds their common options (--quick, --no-build,
# --help), the release build, the scratch folder and its removal on exit,
# the simulator on 127.0.0.1 (start, stop, its URL and API key), timing a
# command under a timeout and /usr/bin/time -v, the printed table rows, and
# the `check: ... ok` / `FAILED` count behind the final verdict and exit
# status. What each script measures, and how it prints that, stays there.
#
# A script may set, after sourcing: SIM_LIFETIME (seconds, the simulator's
# cap), SIM_RUST_LOG (the simulator's log filter), ROW_LABEL_WIDTH and
# ROW_VALUE_WIDTH (the columns of `row`), and ON_EXIT (functions the exit
# trap runs first, e.g. to end a background job of its own).

export LC_ALL=C # a decimal point, not a comma, in EPOCHREALTIME and printf

SCRIPT=${BASH_SOURCE[1]:-$0} # the script that sources this file; its top comment is --help
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=${BENCH_BIN:-$ROOT/target/release/identifai-fetch}

QUICK=0
BUILD=1
WORK=
SIM_PID=
SIM_URL=
SIM_LOG=
SIM_LIFETIME=3600 # a backstop: the trap stops the simulator long before
SIM_RUST_LOG=warn
ROW_LABEL_WIDTH=44
ROW_VALUE_WIDTH=14
ON_EXIT=()
FAILURES=0

usage() {
    sed -n '2,/^$/{s/^# \{0,1\}//;p}' "$SCRIPT"
}

die() {
    echo "${SCRIPT##*/}: $*" >&2
    exit 1
}

# --- options, set-up and the end -------------------------------------------

# Takes one of the options every script has, or stops at an unknown one.
common_option() { # option
    case $1 in
        --quick) QUICK=1 ;;
        --no-build) BUILD=0 ;;
        -h | --help)
            usage
            exit 0
            ;;
        *) die "unknown option $1 (try --help)" ;;
    esac
}

need() { # command-or-path [how to install it]
    command -v "$1" >/dev/null || die "$1 is needed${2:+ ($2)}"
}

# Builds the release binary (not with --no-build or BENCH_BIN), checks that
# it is there, and makes the scratch folder WORK.
build_and_make_scratch() { # scratch-name-prefix
    if ((BUILD)) && [[ -z ${BENCH_BIN:-} ]]; then
        (cd "$ROOT" && cargo build --release --quiet) || die "cargo build --release failed"
    fi
    [[ -x $BIN ]] || die "$BIN is missing; build it with cargo build --release"
    WORK=$(mktemp -d "${BENCH_TMPDIR:-/var/tmp}/$1.XXXXXX")
}

# On any exit, and on INT or TERM, stops what still runs and removes WORK.
set_traps() {
    trap cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
}

cleanup() {
    local hook
    for hook in "${ON_EXIT[@]}"; do
        "$hook"
    done
    stop_sim
    if [[ -n $WORK && -d $WORK ]]; then
        if [[ ${BENCH_KEEP:-0} == 1 ]]; then
            echo "kept the scratch folder $WORK (BENCH_KEEP=1)" >&2
        else
            wipe "$WORK"
        fi
    fi
}

# The report's first two lines: which benchmark, quick or full, when, and on
# what commit and machine, with more about the machine when given.
print_title() { # what [more]
    local commit dirty=
    commit=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
    [[ -n $(git -C "$ROOT" status --porcelain -- src Cargo.toml Cargo.lock 2>/dev/null) ]] &&
        dirty=" (with uncommitted changes in src/)"
    echo "identifai-fetch $1, $( ((QUICK)) && echo quick || echo full)," \
        "$(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "commit $commit$dirty; $(nproc) cores; Linux $(uname -r)${2:+; $2}"
}

# The last line, and the exit status: 1 when any run or check failed.
finish() {
    echo
    if ((FAILURES)); then
        echo "$FAILURES check(s) or run(s) failed; see above."
        exit 1
    fi
    echo "all runs succeeded and all checks passed."
}

# --- the simulator ---------------------------------------------------------

# Starts the simulator on a free loopback port with the given extra flags and
# sets SIM_PID, SIM_URL, SIM_LOG (its stderr, logged at SIM_RUST_LOG) and
# IDENTIFAI_API_KEY from what it prints.
start_sim() {
    local log=$WORK/simulator
    : >"$log.out" # exists before the first read below
    SIM_LOG=$log.err
    RUST_LOG=$SIM_RUST_LOG \
        timeout "$SIM_LIFETIME" "$BIN" simulate --port 0 "$@" >"$log.out" 2>"$SIM_LOG" &
    SIM_PID=$!
    local key=
    for _ in $(seq 100); do
        SIM_URL=$(sed -n 's/^.*listening on \(http[^ ]*\).*$/\1/p' "$log.out")
        key=$(sed -n 's/^API key: //p' "$log.out")
        if [[ -n $SIM_URL && -n $key ]]; then
            export IDENTIFAI_API_KEY=$key
            return 0
        fi
        kill -0 "$SIM_PID" 2>/dev/null || break
        sleep 0.1
    done
    die "the simulator did not start: $(head -c 2000 "$SIM_LOG")"
}

stop_sim() {
    end_job "$SIM_PID"
    SIM_PID=
}

# Ends a background job, if there is one, and reaps it.
end_job() { # pid-or-nothing
    [[ -n $1 ]] || return 0
    kill "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
}

# --- measuring and checking ------------------------------------------------

# Runs a command under a timeout and /usr/bin/time -v, with stdout and stderr
# kept in $WORK/NAME.{out,err}. Sets RC, WALL (seconds, from the shell's
# microsecond clock) and RSS_KIB ("Maximum resident set size": the largest
# process in the command's tree, so for our tool, our tool).
timed() { # name seconds command...
    local name=$1 limit=$2
    shift 2
    local start=$EPOCHREALTIME
    RC=0
    /usr/bin/time -v -o "$WORK/$name.time" timeout --kill-after=10 "$limit" "$@" \
        >"$WORK/$name.out" 2>"$WORK/$name.err" || RC=$?
    WALL=$(seconds_since "$start")
    # shellcheck disable=SC2034 # read by the scripts
    RSS_KIB=$(awk '/Maximum resident set size/ { print $NF }' "$WORK/$name.time")
}

# Seconds from a reading of EPOCHREALTIME to now.
seconds_since() { # start [format]
    awk -v a="$1" -v b="$EPOCHREALTIME" -v f="${2:-%.3f}" 'BEGIN { printf f, b - a }'
}

# Prints why a measured command failed: its exit code and the end of stderr.
report_failure() { # label name
    count_failure
    local why="exit $RC"
    [[ $RC == 124 || $RC == 137 ]] && why="timed out (exit $RC)"
    echo "  FAILED: $1, $why after ${WALL}s; last lines of stderr:"
    tail -n 15 "$WORK/$2.err" | quoted
}

# Indents standard input under a FAILED line.
quoted() {
    sed 's/^/    | /'
}

# A failed run or check: the script will exit 1.
count_failure() {
    FAILURES=$((FAILURES + 1))
}

check_ok() { # what
    echo "  check: $1: ok"
}

check_failed() { # what
    echo "  check: FAILED: $1"
    count_failure
}

# Counts one check: prints "check: WHAT: ok" or "check: FAILED: WHAT (WHY)".
check() { # condition-status what [why]
    if [[ $1 == 0 ]]; then
        check_ok "$2"
    else
        check_failed "$2${3:+ ($3)}"
    fi
}

# A printed table row: figure, value, what it should be.
row() { # figure value [expected]
    printf "  %-${ROW_LABEL_WIDTH}s %${ROW_VALUE_WIDTH}s   %s\n" "$1" "$2" "${3:-}"
}

# Evaluates an awk expression and prints it with the given printf format.
calc() { # format expression
    awk "BEGIN { printf \"$1\", $2 }"
}

# Our tool's run folder, from the `report: PATH` line it prints.
run_dir_of() { # name
    local report
    report=$(sed -n 's/^report: //p' "$WORK/$1.out")
    [[ -n $report ]] || return 1
    dirname "$report"
}

# Free bytes where the scratch folder is.
free_bytes() {
    df --output=avail -B1 "$WORK" | tail -n 1 | tr -d ' '
}

wipe() {
    chmod -R u+w "$1" 2>/dev/null || true
    rm -rf "$1"
}
