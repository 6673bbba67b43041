#!/usr/bin/env bash
# Measures how identifai-fetch picks up where it left off, against the built-in
# simulator on 127.0.0.1 only. Both parts read the runs' summary.json and the
# simulator's own log of every request it answered, so each figure has a
# client-side and a server-side witness.
#
#   1. Kill -9 halfway, then rerun: 2,000 distinct rows (200 with --quick),
#      nine images of 20-300 KiB to one video of 200 KiB-1 MiB, of which four
#      videos just before the halfway row are made 256 MiB with --size so that
#      the kill lands while they download. The run goes at --rate 100000/s and
#      --concurrency 8; the script polls the journal until half the rows have
#      finished and sends SIGKILL. It records what the store held at that
#      moment: finished rows, objects the journal does not name yet, and each
#      partial file's size, `durable` bytes and the bytes a rerun keeps: the
#      whole file when its record names this boot (a kill leaves the page
#      cache whole), else `durable` capped at the file's size, and none of
#      a file longer than its download.
#      Then it reruns to the end and compares: API calls against the rows
#      still to fetch (not finished, not whole on disk), bytes downloaded
#      against the bytes still missing (all rows' bytes - finished rows'
#      bytes - kept partial bytes - objects not yet journaled),
#      already_stored against the rows finished, and the rows taken up with
#      no request against those whole on disk but not journaled (a complete
#      partial file, or an object renamed before its journal line), which
#      are listed. Every object's name must be its sha256sum, every object
#      one the journal names, and tmp/ must end empty.
#   2. No-op rerun: 100,000 rows of 1 KiB files (10,000 with --quick), run
#      once to the end (its wall time is reported: that many API calls at
#      --rate 100000/s), then run again under /usr/bin/time -v: wall time,
#      peak RSS, and proof that it made no API call and no request at all
#      (summary, the simulator's log, and connect() calls seen by strace in
#      one more rerun when strace works here).
#      Files are made small with `simulate --every-size`. A simulator without
#      that flag gets one `--size ID=BYTES` per row instead, which fits the
#      kernel's argument limit (ARG_MAX, usually 2 MiB) up to about 70,000
#      rows; beyond that the part measures 10,000 rows and says so.
#
# Usage, from anywhere:
#   benches/resume.sh [--quick] [--no-build]
#
#   --quick      200 rows killed at 100, and a 10,000-row no-op rerun
#   --no-build   use target/release/identifai-fetch as it is
#
# Environment:
#   BENCH_TMPDIR=DIR where the scratch folder goes (default /var/tmp); it is
#                    removed on exit, whatever happens, unless BENCH_KEEP=1
#   BENCH_KEEP=1     keep the scratch folder, to look at what a run left
#   BENCH_BIN=PATH   measure this identifai-fetch binary instead (no build)
#
# Needs jq, /usr/bin/time and sha256sum; strace is optional. Every command
# runs under a timeout and the simulator under a lifetime cap, so the script
# always ends. It exits 0 when every run succeeded and every check passed,
# 1 otherwise; the figures are printed either way.

set -euo pipefail
# shellcheck source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

MIB=$((1024 * 1024))
KILL_ROWS=2000
BIG_VIDEOS=4 # at rows half-80, half-60, half-40 and half-20
BIG_BYTES=$((256 * MIB))
NOOP_ROWS=100000
NOOP_FALLBACK_ROWS=10000 # when the simulator cannot make that many rows small
NOOP_FILE_BYTES=1024
CONCURRENCY=8

KILL_RUN_TIMEOUT=300 # the run we kill; it should reach half way in seconds
RERUN_TIMEOUT=600
NOOP_FIRST_TIMEOUT=3600 # 100,000 rows, each an API call, a download and an fsync
NOOP_RERUN_TIMEOUT=600
POLL_SECONDS=0.01
POLL_LIMIT=12000 # polls of the journal before giving up on the kill (2 minutes or more)
SIM_LIFETIME=7200 # a backstop: the trap stops the simulator long before
# The simulator's debug log (SIM_LOG) has one "simulator answered" line per
# request, written before the answer.
SIM_RUST_LOG=warn,identifai_fetch::simulator=debug

KILL_RUN_PID= # `timeout` around the run part 1 kills
NOOP_SIM_ARGS=()
NOOP_HOW=
NOOP_NOTE=
BIG_IDS=()

# On exit, before the simulator: the run part 1 kills, if it still runs.
end_kill_run() {
    end_job "$KILL_RUN_PID"
}
ON_EXIT=(end_kill_run)

# --- the simulator's log ---------------------------------------------------

# The simulator's log so far, in lines: a mark to count requests from.
sim_mark() {
    wc -l <"$SIM_LOG"
}

# Requests the simulator answered since a mark, optionally only those whose
# log line also matches a pattern, e.g. 'endpoint=Api' or 'status=Some[(]206[)]'.
sim_requests_since() { # mark [extended-regex]
    awk -v from="$1" -v pattern="${2:-.}" \
        'NR > from && /simulator answered/ && $0 ~ pattern { n++ } END { print n + 0 }' "$SIM_LOG"
}

# --- the runs' own figures -------------------------------------------------

# One value from a run's summary.json, by jq path, e.g. .api_calls.
summary_of() { # name jq-path
    jq -r "$2" "$(run_dir_of "$1")/summary.json"
}

# Rows the journal holds as stored, each (type, id) once, and their bytes:
# prints "ROWS BYTES". A line torn by the kill does not parse and is skipped,
# as the tool itself skips it.
journal_stored() { # journal-file
    jq -Rrn '[inputs | fromjson? | select(.status == "ok")] | unique_by([.type, .id])
        | "\(length) \(map(.bytes) | add // 0)"' "$1"
}

# Free inodes where the scratch folder is.
free_inodes() { df --output=iavail "$WORK" | tail -n 1 | tr -d ' '; }

# --- 1. kill -9 halfway, then rerun ----------------------------------------

bench_kill() {
    local half=$((KILL_ROWS / 2)) videos=$((KILL_ROWS / 10))
    echo
    echo "1. Kill -9 at 50%: $KILL_ROWS rows ($((KILL_ROWS - videos)) images of 20-300 KiB," \
        "$videos videos of 200 KiB-1 MiB, $BIG_VIDEOS of them $((BIG_BYTES / MIB)) MiB)," \
        "$CONCURRENCY at a time"
    local need=$((BIG_VIDEOS * BIG_BYTES * 2 + KILL_ROWS * MIB))
    if (($(free_bytes) < need)); then
        echo "  SKIPPED: $(($(free_bytes) / MIB)) MiB free in $WORK, $((need / MIB)) MiB needed"
        return
    fi
    local manifest=$WORK/kill.csv out=$WORK/kill-out
    local -a sizes=()
    local id
    write_kill_manifest "$manifest"
    echo "  big videos (--size $((BIG_BYTES / MIB)) MiB): ${BIG_IDS[*]};" \
        "kill when the journal has $half lines"
    for id in "${BIG_IDS[@]}"; do
        sizes+=(--size "$id=$BIG_BYTES")
    done
    start_sim --limits 100000/s "${sizes[@]}"

    if ! kill_at "$half" "$manifest" "$out"; then
        stop_sim
        wipe "$out"
        return
    fi
    survey_at_kill "$out"
    print_at_kill

    local mark
    mark=$(sim_mark)
    timed kill-rerun "$RERUN_TIMEOUT" env RUST_LOG=warn "$BIN" run "$manifest" --out "$out" \
        --api-url "$SIM_URL" --rate 100000/s --concurrency "$CONCURRENCY"
    local api_seen storage_seen resumed_seen
    api_seen=$(sim_requests_since "$mark" 'endpoint=Api')
    storage_seen=$(sim_requests_since "$mark" 'endpoint=Storage')
    resumed_seen=$(sim_requests_since "$mark" 'endpoint=Storage.*status=Some[(]206[)]')
    stop_sim
    if ((RC != 0)) || ! run_dir_of kill-rerun >/dev/null; then
        report_failure "the rerun" kill-rerun
        wipe "$out"
        return
    fi
    compare_rerun "$out/journal.jsonl" "$api_seen" "$storage_seen" "$resumed_seen"
    check_store "$out" "$KILL_ROWS"
    wipe "$out"
}

# Writes the manifest: every tenth row a video, the rest images. The big
# videos (BIG_IDS) sit just before the halfway row, so they are still
# downloading when the journal reaches it.
write_kill_manifest() { # file
    local half=$((KILL_ROWS / 2)) i k
    BIG_IDS=()
    for ((k = BIG_VIDEOS; k >= 1; k--)); do
        BIG_IDS+=("$(printf 'vid-%05d' $((half - 20 * k)))")
    done
    {
        echo 'type,identifier'
        for ((i = 1; i <= KILL_ROWS; i++)); do
            if ((i % 10 == 0)); then
                printf 'video,vid-%05d\n' "$i"
            else
                printf 'image,img-%05d\n' "$i"
            fi
        done
    } >"$1"
}

# Starts the run, polls its journal until it has `lines` lines, and sends
# SIGKILL. Sets KILLED_AFTER (seconds after the start).
kill_at() { # lines manifest out
    local want=$1 journal=$3/journal.jsonl
    local start=$EPOCHREALTIME
    RUST_LOG=warn timeout --kill-after=10 "$KILL_RUN_TIMEOUT" "$BIN" run "$2" --out "$3" \
        --api-url "$SIM_URL" --rate 100000/s --concurrency "$CONCURRENCY" \
        >"$WORK/kill-first.out" 2>"$WORK/kill-first.err" &
    KILL_RUN_PID=$!

    # The run is timeout's child; that is the process to kill, not timeout.
    local run_pid='' lines=0 polls killed=0
    for ((polls = 0; polls < POLL_LIMIT; polls++)); do
        [[ -n $run_pid ]] || run_pid=$(pgrep -P "$KILL_RUN_PID" || true)
        [[ -f $journal ]] && lines=$(wc -l <"$journal")
        ((lines >= want)) && break
        kill -0 "$KILL_RUN_PID" 2>/dev/null || break
        sleep "$POLL_SECONDS"
    done
    if [[ -n $run_pid ]] && ((lines >= want)) && kill -9 "$run_pid" 2>/dev/null; then
        killed=1
        KILLED_AFTER=$(seconds_since "$start" %.2f)
    fi
    local rc=0
    # Quietly: bash would report the job's death by SIGKILL on stderr.
    { wait "$KILL_RUN_PID"; } 2>/dev/null || rc=$?
    KILL_RUN_PID=
    if ((killed)); then
        echo "  killed with SIGKILL ${KILLED_AFTER}s after the start; the last poll saw $lines" \
            "journal lines (timeout's exit $rc)"
        return 0
    fi
    echo "  FAILED: the run was not killed: exit $rc with $lines journal lines after $polls polls"
    tail -n 15 "$WORK/kill-first.err" | quoted
    count_failure
    return 1
}

# What the store held when the run died; nothing writes to it now. Sets the
# AT_* figures, copies the journal to $WORK/kill.journal, lists the partial
# files in $WORK/kill.partials and the objects the journal does not name in
# $WORK/kill.unjournaled.
survey_at_kill() { # out
    local out=$1
    cp "$out/journal.jsonl" "$WORK/kill.journal"
    read -r AT_FINISHED AT_FINISHED_BYTES <<<"$(journal_stored "$WORK/kill.journal")"
    AT_TORN=$(($(wc -l <"$WORK/kill.journal") -
        $(jq -Rn '[inputs | fromjson?] | length' "$WORK/kill.journal")))

    # An object renamed into place whose journal line was not yet written:
    # the rerun learns its row from the partial record left beside it.
    local objects=$WORK/kill.objects named=$WORK/kill.named
    find "$out/objects" -type f -printf '%f %s\n' | sort >"$objects"
    jq -Rrn 'inputs | fromjson? | select(.status == "ok") | .sha256' "$WORK/kill.journal" |
        sort -u >"$named"
    join -v 1 "$objects" "$named" >"$WORK/kill.unjournaled"
    AT_OBJECTS=$(wc -l <"$objects")
    read -r AT_UNJOURNALED AT_UNJOURNALED_BYTES < <(awk '{ n++; b += $2 }
        END { print n + 0, b + 0 }' "$WORK/kill.unjournaled")

    # Each partial file, classed by where a rerun can take it up. Under the
    # boot its record names, every byte in the file is kept: a kill leaves
    # what the process wrote in the page cache. After a reboot only the
    # record's `durable`, capped at the file's size, is safely on disk. A
    # file longer than its download keeps nothing. The tool resumes from
    # the kept bytes when they are inside the file, and takes the file up
    # whole, with no request, when they are all of it.
    AT_PARTS=0 AT_PART_BYTES=0 AT_DURABLE=0 AT_KEPT=0 AT_THIS_BOOT=0
    AT_RESUMABLE=0 AT_RESUMABLE_FILES=0 AT_COMPLETE=0 AT_COMPLETE_FILES=0 AT_RECORD_ONLY=0
    local details=$WORK/kill.partials record data size d length written durable kept class sha
    local boot
    boot=$(cat /proc/sys/kernel/random/boot_id 2>/dev/null || true)
    : >"$details"
    : >"$WORK/kill.complete"
    for record in "$out"/tmp/*.part.json; do
        [[ -e $record ]] || continue
        data=${record%.json}
        read -r d length written < <(jq -r '"\(.durable // 0) \(.length // 0) \(.boot_id // "-")"' \
            "$record" 2>/dev/null || echo 0 0 -)
        sha=-
        if [[ ! -f $data ]]; then
            AT_RECORD_ONLY=$((AT_RECORD_ONLY + 1))
            printf '%s %11s %11s %11s %11s  %s  %s\n' "$(basename "$data")" - "$d" - "$length" - \
                "record only: its file has gone (renamed into objects/?)" >>"$details"
            continue
        fi
        size=$(stat -c %s "$data")
        AT_PARTS=$((AT_PARTS + 1))
        AT_PART_BYTES=$((AT_PART_BYTES + size))
        durable=$((size < d ? size : d))
        AT_DURABLE=$((AT_DURABLE + durable))
        if ((size > length)); then
            kept=0
        elif [[ -n $boot && $written == "$boot" ]]; then
            kept=$size
            AT_THIS_BOOT=$((AT_THIS_BOOT + 1))
        else
            kept=$durable
        fi
        AT_KEPT=$((AT_KEPT + kept))
        class="nothing kept"
        if ((kept > 0 && kept < length)); then
            AT_RESUMABLE=$((AT_RESUMABLE + kept))
            AT_RESUMABLE_FILES=$((AT_RESUMABLE_FILES + 1))
            class=resumable
        elif ((kept > 0 && kept == length)); then
            AT_COMPLETE=$((AT_COMPLETE + kept))
            AT_COMPLETE_FILES=$((AT_COMPLETE_FILES + 1))
            class="complete, not yet renamed into objects/"
            sha=$(sha256sum "$data" | cut -d ' ' -f 1)
        fi
        printf '%s %11s %11s %11s %11s  %s  %s\n' "$(basename "$data")" "$size" "$d" "$kept" \
            "$length" "${sha:0:12}" "$class" >>"$details"
        [[ $sha == - ]] || echo "$sha $size" >>"$WORK/kill.complete"
    done
    AT_OTHER=$(find "$out/tmp" -type f ! -name '*.part' ! -name '*.part.json' | wc -l)
}

print_at_kill() {
    row "at the kill" value
    row "rows finished (journal, status ok)" "$AT_FINISHED"
    row "bytes of those rows" "$AT_FINISHED_BYTES"
    row "torn journal lines" "$AT_TORN"
    row "objects in objects/" "$AT_OBJECTS"
    row "  of which not yet in the journal" "$AT_UNJOURNALED" "$AT_UNJOURNALED_BYTES bytes"
    row "partial files in tmp/" "$AT_PARTS"
    row "bytes in partial files (file sizes)" "$AT_PART_BYTES"
    row "bytes durable (record, capped at file size)" "$AT_DURABLE"
    row "bytes kept (this boot: file size; else durable)" "$AT_KEPT" \
        "$AT_THIS_BOOT of $AT_PARTS file(s) recorded under this boot"
    row "  of which resumable (0 < kept < length)" "$AT_RESUMABLE" \
        "in $AT_RESUMABLE_FILES file(s)"
    row "  of which complete (kept = length)" "$AT_COMPLETE" "in $AT_COMPLETE_FILES file(s)"
    row "bytes on disk but not kept" "$((AT_PART_BYTES - AT_KEPT))" \
        "fetched again: a resume starts at the kept bytes"
    row "records whose partial file has gone" "$AT_RECORD_ONLY"
    row "other files in tmp/" "$AT_OTHER"
    echo "  partial files (name, size, durable, kept, length, sha256 when complete, class):"
    sed 's/^/    /' "$WORK/kill.partials"
}

# The rerun's figures against what the survey says it still had to do.
compare_rerun() { # journal api-seen storage-seen resumed-seen
    local api_seen=$2 storage_seen=$3 resumed_seen=$4
    local total total_bytes
    read -r total total_bytes <<<"$(journal_stored "$1")"
    local whole_rows=$((AT_COMPLETE_FILES + AT_UNJOURNALED))
    local needed=$((KILL_ROWS - AT_FINISHED - whole_rows))
    local missing=$((total_bytes - AT_FINISHED_BYTES - AT_KEPT - AT_UNJOURNALED_BYTES))
    local ok calls stored downloaded limited retries elapsed no_request recovered
    ok=$(summary_of kill-rerun .by_status.ok)
    no_request=$(jq -s '[.[] | select(.status == "ok" and .api_calls == 0)] | length' \
        "$(run_dir_of kill-rerun)/report.jsonl")
    recovered=$((no_request - $(summary_of kill-rerun .already_stored)))
    calls=$(summary_of kill-rerun .api_calls)
    stored=$(summary_of kill-rerun .already_stored)
    downloaded=$(summary_of kill-rerun .bytes_downloaded)
    limited=$(summary_of kill-rerun .rate_limited)
    retries=$(summary_of kill-rerun '.retries // 0')
    elapsed=$(summary_of kill-rerun .elapsed_seconds)
    local wasted=$((calls - needed)) excess=$((downloaded - missing))

    echo
    row "the rerun (summary.json; simulator log)" value expected
    row "exit code" "$RC" 0
    row "rows ok" "$ok" "$KILL_ROWS"
    row "already_stored" "$stored" "$AT_FINISHED (rows finished before the kill)"
    row "rows taken up whole, with no request" "$recovered" \
        "$whole_rows (whole on disk, not journaled)"
    row "api_calls" "$calls" "$needed (rows that still needed one)"
    row "API calls wasted" "$wasted" 0
    row "API requests the simulator answered" "$api_seen" "$calls (api_calls)"
    row "bytes_downloaded" "$downloaded" "$missing (bytes still missing)"
    row "bytes re-downloaded" "$excess" 0
    row "storage requests answered" "$storage_seen" "$needed"
    row "  of which 206 (resumed with Range)" "$resumed_seen" \
        "$AT_RESUMABLE_FILES (files with kept bytes, not whole)"
    row "rate_limited, retries" "$limited, $retries" "0, 0"
    row "wall s (summary elapsed_seconds)" "$WALL" "($(calc '%.2f' "$elapsed"))"
    echo "  bytes still missing = $total_bytes (all $total rows, from the journal)" \
        "- $AT_FINISHED_BYTES (finished) - $AT_KEPT (kept in partial files)" \
        "- $AT_UNJOURNALED_BYTES (objects not yet journaled)"
    list_whole_rows "$1"

    check "$((ok == KILL_ROWS && total == KILL_ROWS ? 0 : 1))" "every row stored" \
        "summary ok=$ok, journal $total"
    check "$((stored == AT_FINISHED ? 0 : 1))" "already_stored = rows finished before the kill" \
        "$stored vs $AT_FINISHED"
    check "$((recovered == whole_rows ? 0 : 1))" \
        "every row whole on disk was taken up with no request" \
        "$recovered of $whole_rows"
    check "$((wasted == 0 && api_seen == calls ? 0 : 1))" "no API call wasted" \
        "$wasted wasted; the simulator answered $api_seen"
    check "$((excess == 0 ? 0 : 1))" "no byte downloaded twice" \
        "$downloaded downloaded, $missing missing: $excess extra"
}

# Lists the rows whose bytes the kill left whole on disk, unknown to the
# journal: complete partial files not yet renamed, and objects renamed into
# place before their journal line was written. The rerun takes them up from
# their partial records. The final journal names each row by its sha256.
list_whole_rows() { # journal
    ((AT_COMPLETE_FILES + AT_UNJOURNALED > 0)) || return 0
    echo "  whole on disk at the kill but not journaled: $AT_COMPLETE bytes in" \
        "$AT_COMPLETE_FILES complete partial file(s) and $AT_UNJOURNALED_BYTES bytes in" \
        "$AT_UNJOURNALED object(s):"
    local sha size what rows
    for what in complete unjournaled; do
        [[ -s $WORK/kill.$what ]] || continue
        while read -r sha size; do
            rows=$(jq -Rrn --arg sha "$sha" '[inputs | fromjson? | select(.sha256 == $sha)
                | "\(.type) \(.id), journaled by run \(.run_id)"] | join("; ")' "$1")
            echo "    $what ${sha:0:12} ($size bytes): ${rows:-no journal line}"
        done <"$WORK/kill.$what"
    done
}

# Every object's name is its sha256sum, sits under its two-character fan-out,
# and is named by the journal; the store holds nothing else; tmp/ is empty.
check_store() { # out-dir expected-objects
    local out=$1 expected=$2
    local objects=$WORK/objects.list named=$WORK/objects.named
    find "$out/objects" -type f -print0 | xargs -0 -r sha256sum >"$objects"
    local count bad
    count=$(wc -l <"$objects")
    # sha256sum prints "HASH  PATH"; the path must be .../sha256/HA/HASH.
    bad=$(awk -v root="$out/objects/sha256/" '{
            want = root substr($1, 1, 2) "/" $1
            if (substr($0, 67) != want) print substr($0, 67)
        }' "$objects")
    check "$([[ -z $bad ]] && echo 0 || echo 1)" \
        "all $count objects are named by their sha256sum, under their fan-out folder" \
        "mismatched: $(echo "$bad" | head -n 3 | tr '\n' ' ')"
    jq -Rrn 'inputs | fromjson? | select(.status == "ok") | .sha256' \
        "$out/journal.jsonl" | sort -u >"$named"
    local strays others leftovers
    strays=$(cut -d ' ' -f 1 "$objects" | sort -u | comm -23 - "$named" | wc -l)
    others=$(find "$out/objects" ! -type f ! -type d | wc -l)
    leftovers=$(find "$out/tmp" -type f | wc -l)
    check "$((strays == 0 && others == 0 && count == expected ? 0 : 1))" \
        "no stray object: $count objects, each named by the journal" \
        "$strays not in the journal, $others not regular files, $expected expected"
    check "$((leftovers == 0 ? 0 : 1))" "tmp/ is empty after the rerun" "$leftovers files left"
}

# --- 2. no-op rerun of many rows -------------------------------------------

# Sets NOOP_SIM_ARGS, the simulator flags that make every row's file small,
# and NOOP_HOW; lowers NOOP_ROWS, saying why in NOOP_NOTE, when that is
# impossible without --every-size.
small_file_flags() {
    NOOP_SIM_ARGS=()
    if "$BIN" simulate --help | grep -q -- '--every-size'; then
        NOOP_SIM_ARGS=(--every-size "$NOOP_FILE_BYTES")
        NOOP_HOW="simulate --every-size $NOOP_FILE_BYTES"
        return
    fi
    # One --size per row. The kernel caps a command's arguments and
    # environment together at ARG_MAX bytes, with a pointer for each.
    local arg_max per_row env_bytes need
    arg_max=$(getconf ARG_MAX)
    per_row=$((${#NOOP_FILE_BYTES} + 24)) # "--size=noop-000001=" + NUL + pointer
    env_bytes=$(env | wc -c)
    need=$((NOOP_ROWS * per_row + env_bytes + 4096))
    if ((need > arg_max)); then
        NOOP_NOTE="this simulator has no --every-size, and $NOOP_ROWS --size flags need"
        NOOP_NOTE+=" about $need bytes of arguments, over ARG_MAX ($arg_max): measuring"
        NOOP_NOTE+=" $NOOP_FALLBACK_ROWS rows instead"
        NOOP_ROWS=$NOOP_FALLBACK_ROWS
    fi
    local i
    for ((i = 1; i <= NOOP_ROWS; i++)); do
        NOOP_SIM_ARGS+=("$(printf -- '--size=noop-%06d=%d' "$i" "$NOOP_FILE_BYTES")")
    done
    NOOP_HOW="one --size ID=$NOOP_FILE_BYTES per row"
}

bench_noop() {
    small_file_flags
    echo
    echo "2. No-op rerun: $NOOP_ROWS rows of $NOOP_FILE_BYTES-byte images, run once, then again"
    [[ -z $NOOP_NOTE ]] || echo "  NOTE: $NOOP_NOTE"
    # Each object takes a block and an inode; the journal and the reports
    # take about 2 KiB a row over three runs.
    local need=$((NOOP_ROWS * 16 * 1024 + 256 * MIB))
    if (($(free_bytes) < need || $(free_inodes) < 2 * NOOP_ROWS)); then
        echo "  SKIPPED: $(($(free_bytes) / MIB)) MiB and $(free_inodes) inodes free in $WORK;" \
            "$((need / MIB)) MiB and $((2 * NOOP_ROWS)) inodes needed"
        return
    fi
    local manifest=$WORK/noop.csv
    {
        echo 'type,identifier'
        seq -f 'image,noop-%06g' 1 "$NOOP_ROWS"
    } >"$manifest"
    echo "  files made small with: $NOOP_HOW"

    start_sim --limits 100000/s "${NOOP_SIM_ARGS[@]}"
    local out=$WORK/noop-out
    local -a run=("$BIN" run "$manifest" --out "$out" --api-url "$SIM_URL" --rate 100000/s
        --concurrency "$CONCURRENCY")

    timed noop-first "$NOOP_FIRST_TIMEOUT" env RUST_LOG=warn "${run[@]}"
    if ((RC != 0)) || ! run_dir_of noop-first >/dev/null; then
        report_failure "the first run" noop-first
        stop_sim
        wipe "$out"
        return
    fi
    local first_wall=$WALL first_rss=$RSS_KIB first_calls first_ok first_bytes first_elapsed
    first_calls=$(summary_of noop-first .api_calls)
    first_ok=$(summary_of noop-first .by_status.ok)
    first_bytes=$(summary_of noop-first .bytes_downloaded)
    first_elapsed=$(summary_of noop-first .elapsed_seconds)

    local mark
    mark=$(sim_mark)
    timed noop-rerun "$NOOP_RERUN_TIMEOUT" env RUST_LOG=warn "${run[@]}"
    local seen
    seen=$(sim_requests_since "$mark")
    if ((RC != 0)) || ! run_dir_of noop-rerun >/dev/null; then
        report_failure "the no-op rerun" noop-rerun
        stop_sim
        wipe "$out"
        return
    fi
    local wall=$WALL rss=$RSS_KIB calls stored downloaded elapsed ok
    calls=$(summary_of noop-rerun .api_calls)
    stored=$(summary_of noop-rerun .already_stored)
    downloaded=$(summary_of noop-rerun .bytes_downloaded)
    elapsed=$(summary_of noop-rerun .elapsed_seconds)
    ok=$(summary_of noop-rerun .by_status.ok)

    # A run rebuilds the by-id/ view after its summary is taken, where the
    # build has one; a rerun without it shows what that costs.
    local plain_wall=- plain_rss=-
    if "$BIN" run --help | grep -q -- '--view'; then
        timed noop-plain "$NOOP_RERUN_TIMEOUT" env RUST_LOG=warn "${run[@]}" --view none
        if ((RC == 0)); then
            plain_wall=$(calc '%.3f' "$WALL")
            plain_rss=$(calc '%.1f' "$RSS_KIB / 1024")
        else
            report_failure "the no-op rerun with --view none" noop-plain
        fi
    fi

    # One more rerun, under strace, for the sockets it opens: slower, so
    # not timed. A connect() to an inet address is a request attempt.
    local connects=- strace_note=
    if command -v strace >/dev/null; then
        # With a seccomp filter, only the traced calls stop the process.
        local -a strace=(strace -f -qq -e trace=connect)
        timeout 10 "${strace[@]}" --seccomp-bpf -o /dev/null true 2>/dev/null &&
            strace+=(--seccomp-bpf)
        RC=0
        timeout --kill-after=10 "$NOOP_RERUN_TIMEOUT" "${strace[@]}" \
            -o "$WORK/noop-strace.trace" env RUST_LOG=warn "${run[@]}" \
            >"$WORK/noop-strace.out" 2>"$WORK/noop-strace.err" || RC=$?
        if ((RC == 0)); then
            connects=$(grep -c 'AF_INET' "$WORK/noop-strace.trace" || true)
        else
            strace_note="strace rerun failed (exit $RC): $(tail -n 1 "$WORK/noop-strace.err")"
        fi
    else
        strace_note="strace is not installed"
    fi
    stop_sim

    row "" value expected
    local call_rate row_rate
    call_rate=$(calc '%.0f' "$first_calls / $first_wall")
    row_rate=$(calc '%.0f' "$NOOP_ROWS / $wall")
    row "first run: wall s" "$(calc '%.2f' "$first_wall")" \
        "$call_rate API calls/s; summary elapsed_seconds $(calc '%.2f' "$first_elapsed")"
    row "first run: api_calls, rows ok" "$first_calls, $first_ok" "$NOOP_ROWS, $NOOP_ROWS"
    row "first run: bytes_downloaded" "$first_bytes" "$((NOOP_ROWS * NOOP_FILE_BYTES))"
    row "first run: peak RSS MiB" "$(calc '%.1f' "$first_rss / 1024")"
    row "rerun: wall s" "$(calc '%.3f' "$wall")" \
        "summary elapsed_seconds $(calc '%.3f' "$elapsed"); $row_rate rows/s"
    row "rerun: peak RSS MiB" "$(calc '%.1f' "$rss / 1024")"
    row "rerun: wall s outside its elapsed_seconds" "$(calc '%.3f' "$wall - $elapsed")" \
        "start-up, and after the summary (the by-id/ view)"
    if [[ $plain_wall != - ]]; then
        row "rerun with --view none: wall s, peak RSS MiB" "$plain_wall, $plain_rss" \
            "the same rerun without rebuilding by-id/"
    fi
    row "rerun: api_calls" "$calls" 0
    row "rerun: already_stored, rows ok" "$stored, $ok" "$NOOP_ROWS, $NOOP_ROWS"
    row "rerun: bytes_downloaded" "$downloaded" 0
    row "rerun: requests the simulator answered" "$seen" 0
    row "rerun under strace: inet connect() calls" "$connects" "0${strace_note:+ ($strace_note)}"
    row "rerun wall / first run wall" "$(calc '%.4f' "$wall / $first_wall")"

    check "$((first_ok == NOOP_ROWS && first_calls == NOOP_ROWS ? 0 : 1))" \
        "the first run stored every row with one API call each" \
        "ok=$first_ok, api_calls=$first_calls"
    check "$((calls == 0 && stored == NOOP_ROWS && ok == NOOP_ROWS && downloaded == 0 ? 0 : 1))" \
        "the rerun made no API call and downloaded nothing" \
        "api_calls=$calls, already_stored=$stored, ok=$ok, bytes_downloaded=$downloaded"
    local quiet=1
    [[ $seen == 0 && ($connects == 0 || $connects == -) ]] && quiet=0
    check "$quiet" "the rerun sent no request at all" \
        "simulator answered $seen, connect() calls $connects"
    wipe "$out"
}

# --- main ------------------------------------------------------------------

parse_args() {
    while (($#)); do
        common_option "$1"
        shift
    done
    if ((QUICK)); then
        KILL_ROWS=200
        NOOP_ROWS=10000
    fi
}

prepare() {
    need jq "Debian: apt-get install jq"
    need /usr/bin/time "Debian: apt-get install time"
    need pgrep "Debian: apt-get install procps"
    build_and_make_scratch identifai-resume
}

print_header() {
    print_title "resume benchmark"
    echo "scratch $WORK (removed on exit); $(($(free_bytes) / MIB)) MiB free there"
}

main() {
    parse_args "$@"
    set_traps
    prepare
    print_header
    bench_kill
    bench_noop
    finish
}

main "$@"
