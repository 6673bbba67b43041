#!/usr/bin/env bash
# Benchmarks identifai-fetch against the built-in simulator and against common
# download tools measured in the same run, on 127.0.0.1 only. The machines are
# shared and noisy, so read the ratios first and the absolute figures second.
#
#   1. Large file: one video (2 GiB; 256 MiB with --quick). Our tool under
#      /usr/bin/time -v against `curl -L` followed by `sha256sum`, so the peer
#      does the same work (our tool hashes while it streams). A second peer
#      row adds `sync FILE`, because our tool fsyncs every object and curl
#      does not. Prints MB/s, ratios and peak RSS (target: under 50 MiB), and
#      checks that the stored object's name is the sha256sum of its bytes.
#   2. Many small files: 500 images (100 with --quick) of 20-300 KiB at
#      --rate 100000/s and --concurrency 8, against `aria2c -j 8` and
#      `xargs -P 8 curl` (one curl per file), each followed by sha256sum of
#      what it fetched. Prints files/s and ratios.
#   3. API pacing (opt-in, about 70 s): 70 rows at the default --rate against
#      the simulator at the vendor's default limits, read from summary.json.
#
# Usage, from anywhere:
#   benches/bench.sh [--quick] [--pacing] [--repeat N] [--no-build]
#
#   --quick      smaller sizes (256 MiB, 100 files) and one round, for a fast check
#   --pacing     also run the 70-row pacing check
#   --repeat N   rounds per tool, interleaved; wall times are the median
#                (default 3, or 1 with --quick)
#   --no-build   use target/release/identifai-fetch as it is
#
# Environment:
#   APT_INSTALL=1    install aria2 with apt-get when aria2c is missing
#   BENCH_TMPDIR=DIR where the scratch folder goes (default /var/tmp); it is
#                    removed on exit, whatever happens, unless BENCH_KEEP=1
#   BENCH_KEEP=1     keep the scratch folder, to look at what a run left
#   BENCH_BIN=PATH   measure this identifai-fetch binary instead (no build),
#                    e.g. an older build kept for comparison
#
# Every command runs under a timeout and the simulator under a lifetime cap,
# so the script always ends. It exits 0 when every tool succeeded and every
# check passed, 1 otherwise; the figures are printed either way.

set -euo pipefail
# shellcheck source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

GIB=$((1024 * 1024 * 1024))
LARGE_BYTES=$((2 * GIB))
SMALL_FILES=500
PACING_ROWS=70
RSS_TARGET_MIB=50
REPEAT=
PACING=0

LARGE_TIMEOUT=600 # seconds for one tool to fetch the large file
SMALL_TIMEOUT=300 # seconds for one tool to fetch all the small files
PACING_TIMEOUT=240

SMALL_BYTES= # set by our first good small-files run; peers must match it
ROW_LABEL_WIDTH=22 # the pacing table
ROW_VALUE_WIDTH=10

download_url() { # type identifier
    echo "$SIM_URL/api/v2/submissions/$1/$2/download"
}

# --- figures ---------------------------------------------------------------

median() {
    printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 }
        END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

# Formats a space-separated list of numbers, each divided by a divisor.
each_round() { # "numbers" [format] [divisor]
    echo "$1" | awk -v f="${2:-%.2f}" -v d="${3:-1}" \
        '{ for (i = 1; i <= NF; i++) printf (i > 1 ? " " : "") f, $i / d }'
}

max() {
    printf '%s\n' "$@" | sort -g | tail -n 1
}

# A number from a summary.json, pretty-printed or not.
json_number() { # file key
    grep -o "\"$2\": *[^,}]*" "$1" | head -n 1 | sed 's/^.*: *//'
}

# --- the peers, run as `bash -c` so /usr/bin/time measures the whole job ---

# curl follows the redirect itself and, unlike our tool, sends the API key on
# to the storage host as well; here that host is the simulator's.
peer_curl_large() { # url file [sync]
    curl -sS --fail -L -H "X-Api-Key: $IDENTIFAI_API_KEY" -o "$2" "$1" || return
    sha256sum "$2" >"$2.sha256" || return
    if [[ ${3:-} == sync ]]; then sync "$2"; fi
}

peer_aria2c() { # input-file dir
    aria2c -q -i "$1" -d "$2" -j 8 --header="X-Api-Key: $IDENTIFAI_API_KEY" \
        --allow-overwrite=true --auto-file-renaming=false --file-allocation=none || return
    hash_dir "$2"
}

# The argument file holds `-o NAME URL` per line: one curl process per file.
peer_xargs_curl() { # args-file dir
    (cd "$2" && xargs -P 8 -n 3 curl -sS --fail -L -H "X-Api-Key: $IDENTIFAI_API_KEY" <"$1") ||
        return
    hash_dir "$2"
}

hash_dir() {
    find "$1" -type f -print0 | xargs -0 sha256sum >/dev/null
}

export -f peer_curl_large peer_aria2c peer_xargs_curl hash_dir

# --- 1. large file ---------------------------------------------------------

bench_large() {
    local mib=$((LARGE_BYTES / 1024 / 1024))
    echo
    echo "1. Large file: one video of $LARGE_BYTES bytes ($mib MiB), $REPEAT round(s)"
    local need=$((2 * LARGE_BYTES + GIB))
    local free
    free=$(free_bytes)
    if ((free < need)); then
        echo "  SKIPPED: $((free / 1024 / 1024)) MiB free in $WORK, $((need / 1024 / 1024)) MiB needed"
        return
    fi

    start_sim --limits 100000/s --size "big=$LARGE_BYTES"
    local url manifest=$WORK/large.csv
    url=$(download_url video big)
    printf 'type,identifier\nvideo,big\n' >"$manifest"

    local -a ours=() curl=() synced=() rss_ours=() rss_curl=()
    local ok=1 ours_sha='' curl_sha='' checked=0 round
    # Checks and failures go to a notes file, printed below the table.
    local notes=$WORK/large.notes
    for ((round = 1; round <= REPEAT; round++)); do
        # Our tool, in a fresh store each round.
        local out=$WORK/large-out
        timed "large-ours-$round" "$LARGE_TIMEOUT" \
            "$BIN" run "$manifest" --out "$out" --api-url "$SIM_URL" --rate 100000/s \
            --concurrency 1
        if ((RC != 0)); then
            report_failure "identifai-fetch, round $round" "large-ours-$round"
            ok=0
        else
            ours+=("$WALL")
            rss_ours+=("$RSS_KIB")
            if ((checked == 0)); then
                check_large_object "$out" "large-ours-$round" && ours_sha=$CHECKED_SHA
                checked=1
            fi
        fi
        wipe "$out"

        # curl + sha256sum, then the same with sync.
        local file=$WORK/large-curl.bin
        timed "large-curl-$round" "$LARGE_TIMEOUT" bash -c 'peer_curl_large "$@"' _ "$url" "$file"
        if ((RC != 0)); then
            report_failure "curl, round $round" "large-curl-$round"
            ok=0
        else
            curl+=("$WALL")
            rss_curl+=("$RSS_KIB")
            curl_sha=$(cut -d ' ' -f 1 "$file.sha256")
        fi
        rm -f "$file" "$file.sha256"

        timed "large-sync-$round" "$LARGE_TIMEOUT" \
            bash -c 'peer_curl_large "$@"' _ "$url" "$file" sync
        if ((RC != 0)); then
            report_failure "curl + sync, round $round" "large-sync-$round"
            ok=0
        else
            synced+=("$WALL")
        fi
        rm -f "$file" "$file.sha256"
    done >"$notes"
    stop_sim

    local t_ours=
    ((${#ours[@]})) && t_ours=$(median "${ours[@]}")
    printf '  %-26s %8s %8s %13s %10s   %s\n' \
        tool "wall s" "MB/s" "peak RSS MiB" "ours/peer" "each round, s"
    large_row identifai-fetch "${ours[*]}" "$t_ours" "$(max "${rss_ours[@]:-}")"
    large_row "curl + sha256sum" "${curl[*]}" "$t_ours" "$(max "${rss_curl[@]:-}")"
    large_row "curl + sha256sum + sync" "${synced[*]}" "$t_ours" ""
    echo "  MB/s is 10^6 bytes a second; ours/peer is our MB/s over the peer's (above 1: ours is faster)."
    cat "$notes"

    if [[ -n $ours_sha && -n $curl_sha ]]; then
        if [[ $ours_sha == "$curl_sha" ]]; then
            check_ok "curl's file has the same sha256 as our object"
        else
            check_failed "curl's file hashes to $curl_sha, our object to $ours_sha"
        fi
    fi
    if ((${#rss_ours[@]})); then
        local peak
        peak=$(calc '%.1f' "$(max "${rss_ours[@]}") / 1024")
        echo "  our peak RSS in each round, MiB: $(each_round "${rss_ours[*]}" '%.1f' 1024)"
        if awk -v p="$peak" -v t="$RSS_TARGET_MIB" 'BEGIN { exit !(p < t) }'; then
            echo "  target: peak RSS under $RSS_TARGET_MIB MiB: $peak MiB, ok"
        else
            echo "  target: peak RSS under $RSS_TARGET_MIB MiB: $peak MiB, OVER TARGET"
            count_failure
        fi
    fi
    ((ok)) || echo "  (some rounds failed; the figures above are from the rounds that succeeded)"
}

large_row() { # label "seconds of each round" our-median rss-kib
    local label=$1 rounds=$2 t_ours=$3 rss=$4
    if [[ -z $rounds ]]; then
        printf '  %-26s %8s\n' "$label" failed
        return
    fi
    local t rate ratio=- mib=-
    # shellcheck disable=SC2086 # one word per round
    t=$(median $rounds)
    rate=$(calc '%.1f' "$LARGE_BYTES / 1e6 / $t")
    [[ $label != identifai-fetch && -n $t_ours ]] && ratio=$(calc '%.2f' "$t / $t_ours")
    [[ -n $rss ]] && mib=$(calc '%.1f' "$rss / 1024")
    printf '  %-26s %8s %8s %13s %10s   %s\n' \
        "$label" "$(calc '%.2f' "$t")" "$rate" "$mib" "$ratio" "$(each_round "$rounds")"
}

# Checks that our run stored exactly one object of the right size whose name
# is the sha256sum of its bytes, and that the report agrees. Sets CHECKED_SHA.
check_large_object() { # out-dir name
    local -a objects
    mapfile -t objects < <(find "$1/objects" -type f)
    CHECKED_SHA=
    if ((${#objects[@]} != 1)); then
        check_failed "expected one object in the store, found ${#objects[@]}"
        return 1
    fi
    local object=${objects[0]} name sum size reported
    name=$(basename "$object")
    sum=$(sha256sum "$object" | cut -d ' ' -f 1)
    size=$(stat -c %s "$object")
    reported=$(json_number "$(run_dir_of "$2")/summary.json" ok)
    if [[ $name == "$sum" && $size == "$LARGE_BYTES" && $reported == 1 ]]; then
        check_ok "stored object's name = sha256sum of its $size bytes ($sum)"
        CHECKED_SHA=$sum
        return 0
    fi
    check_failed "object $name, sha256sum $sum, $size bytes, summary ok=$reported"
    return 1
}

# --- 2. many small files ---------------------------------------------------

bench_small() {
    echo
    echo "2. Many small files: $SMALL_FILES images of 20-300 KiB, 8 at a time, $REPEAT round(s)"
    start_sim --limits 100000/s

    local manifest=$WORK/small.csv aria_input=$WORK/small.aria2 xargs_input=$WORK/small.xargs
    local i id url
    echo 'type,identifier' >"$manifest"
    : >"$aria_input"
    : >"$xargs_input"
    for ((i = 1; i <= SMALL_FILES; i++)); do
        id=$(printf 'img-%05d' "$i")
        url=$(download_url image "$id")
        echo "image,$id" >>"$manifest"
        printf '%s\n  out=%s\n' "$url" "$id" >>"$aria_input"
        printf -- '-o %s %s\n' "$id" "$url" >>"$xargs_input"
    done

    local have_aria=1
    if ! command -v aria2c >/dev/null; then
        have_aria=0
        echo "  aria2c is not installed (APT_INSTALL=1 installs it); that row is skipped"
    fi

    local -a ours=() aria=() xcurl=()
    local round out dir notes=$WORK/small.notes
    for ((round = 1; round <= REPEAT; round++)); do
        out=$WORK/small-out
        timed "small-ours-$round" "$SMALL_TIMEOUT" \
            "$BIN" run "$manifest" --out "$out" --api-url "$SIM_URL" --rate 100000/s \
            --concurrency 8
        if ((RC != 0)); then
            report_failure "identifai-fetch, round $round" "small-ours-$round"
        elif check_small_ours "small-ours-$round"; then
            ours+=("$WALL")
        fi
        wipe "$out"

        if ((have_aria)); then
            dir=$WORK/small-aria2c
            mkdir -p "$dir"
            timed "small-aria2c-$round" "$SMALL_TIMEOUT" \
                bash -c 'peer_aria2c "$@"' _ "$aria_input" "$dir"
            if ((RC != 0)); then
                report_failure "aria2c, round $round" "small-aria2c-$round"
            elif check_small_peer aria2c "$dir"; then
                aria+=("$WALL")
            fi
            wipe "$dir"
        fi

        dir=$WORK/small-xargs
        mkdir -p "$dir"
        timed "small-xargs-$round" "$SMALL_TIMEOUT" \
            bash -c 'peer_xargs_curl "$@"' _ "$xargs_input" "$dir"
        if ((RC != 0)); then
            report_failure "xargs -P 8 curl, round $round" "small-xargs-$round"
        elif check_small_peer "xargs curl" "$dir"; then
            xcurl+=("$WALL")
        fi
        wipe "$dir"
    done >"$notes"
    stop_sim

    local t_ours=
    ((${#ours[@]})) && t_ours=$(median "${ours[@]}")
    printf '  %-28s %7s %8s %7s %10s   %s\n' \
        tool "wall s" "files/s" "MB/s" "ours/peer" "each round, s"
    small_row identifai-fetch "${ours[*]}" "$t_ours"
    ((have_aria)) && small_row "aria2c -j 8 + sha256sum" "${aria[*]}" "$t_ours"
    small_row "xargs -P 8 curl + sha256sum" "${xcurl[*]}" "$t_ours"
    echo "  total ${SMALL_BYTES:-unknown} bytes; ours/peer is our files/s over the peer's (above 1: ours is faster)."
    cat "$notes"
}

small_row() { # label "seconds of each round" our-median
    local label=$1 rounds=$2 t_ours=$3
    if [[ -z $rounds ]]; then
        printf '  %-28s %7s\n' "$label" failed
        return
    fi
    local t ratio=-
    # shellcheck disable=SC2086 # one word per round
    t=$(median $rounds)
    [[ $label != identifai-fetch && -n $t_ours ]] && ratio=$(calc '%.2f' "$t / $t_ours")
    local mbs=- # unknown when our tool failed: it is what tells the total
    [[ -n $SMALL_BYTES ]] && mbs=$(calc '%.1f' "$SMALL_BYTES / 1e6 / $t")
    printf '  %-28s %7s %8s %7s %10s   %s\n' "$label" "$(calc '%.2f' "$t")" \
        "$(calc '%.1f' "$SMALL_FILES / $t")" "$mbs" "$ratio" "$(each_round "$rounds")"
}

# Our run must report every row ok; its byte count is what peers must match.
check_small_ours() { # name
    local summary ok
    summary=$(run_dir_of "$1")/summary.json
    ok=$(json_number "$summary" ok)
    if [[ $ok != "$SMALL_FILES" ]]; then
        check_failed "identifai-fetch stored $ok of $SMALL_FILES rows; summary:"
        quoted <"$summary"
        return 1
    fi
    [[ -n $SMALL_BYTES ]] || SMALL_BYTES=$(json_number "$summary" bytes_downloaded)
}

# A peer must leave one file per row, with as many bytes in all as ours got.
check_small_peer() { # label dir
    local count bytes
    count=$(find "$2" -type f | wc -l)
    bytes=$(find "$2" -type f -printf '%s\n' | awk '{ s += $1 } END { print s + 0 }')
    if [[ $count == "$SMALL_FILES" && (-z $SMALL_BYTES || $bytes == "$SMALL_BYTES") ]]; then
        return 0
    fi
    check_failed "$1 left $count files of $bytes bytes (expected $SMALL_FILES, ${SMALL_BYTES:-unknown})"
    return 1
}

# --- 3. API pacing ---------------------------------------------------------

bench_pacing() {
    echo
    echo "3. API pacing: $PACING_ROWS rows at the default --rate (2/s,60/min) against the default limits"
    start_sim
    local manifest=$WORK/pacing.csv i
    echo 'type,identifier' >"$manifest"
    for ((i = 1; i <= PACING_ROWS; i++)); do
        printf 'image,pace-%03d\n' "$i" >>"$manifest"
    done

    timed pacing "$PACING_TIMEOUT" "$BIN" run "$manifest" --out "$WORK/pacing-out" \
        --api-url "$SIM_URL"
    stop_sim
    if ((RC != 0)); then
        report_failure identifai-fetch pacing
        return
    fi
    local summary calls limited rate elapsed
    summary=$(run_dir_of pacing)/summary.json
    calls=$(json_number "$summary" api_calls)
    limited=$(json_number "$summary" rate_limited)
    rate=$(json_number "$summary" api_calls_per_second)
    elapsed=$(json_number "$summary" elapsed_seconds)
    row figure value expected
    row api_calls "$calls" "$PACING_ROWS"
    row rate_limited "$limited" "0 (no 429)"
    row api_calls_per_second "$(printf '%.3f' "$rate")" \
        "at most 1.000 (60/min binds; 0.989 with the 1% and 50 ms margins)"
    row elapsed_seconds "$(printf '%.1f' "$elapsed")" "about $((PACING_ROWS - 1)) s or more"
    if [[ $limited == 0 ]] && awk -v r="$rate" 'BEGIN { exit !(r <= 1.0) }'; then
        check_ok "no 429 and within 60/min"
    else
        check_failed "$limited answers were 429, or the rate $rate/s is over 1/s"
    fi
}

# --- main ------------------------------------------------------------------

parse_args() {
    while (($#)); do
        case $1 in
            --pacing) PACING=1 ;;
            --repeat)
                [[ ${2:-} =~ ^[1-9][0-9]*$ ]] || die "--repeat needs a positive number"
                REPEAT=$2
                shift
                ;;
            *) common_option "$1" ;;
        esac
        shift
    done
    if ((QUICK)); then
        LARGE_BYTES=$((256 * 1024 * 1024))
        SMALL_FILES=100
        REPEAT=${REPEAT:-1}
    fi
    REPEAT=${REPEAT:-3}
}

prepare() {
    need curl
    need /usr/bin/time "Debian: apt-get install time"
    if ! command -v aria2c >/dev/null && [[ ${APT_INSTALL:-0} == 1 ]]; then
        echo "installing aria2 with apt-get..."
        { apt-get update -qq && apt-get install -y -qq aria2; } >/dev/null 2>&1 ||
            die "apt-get could not install aria2; run 'apt-get install aria2' to see why"
    fi
    build_and_make_scratch identifai-bench
}

print_header() {
    local aria_version=none
    command -v aria2c >/dev/null && aria_version=$(aria2c --version | head -n 1 | awk '{ print $NF }')
    print_title benchmark \
        "curl $(curl --version | head -n 1 | awk '{ print $2 }'); aria2c $aria_version"
    echo "scratch $WORK (removed on exit); figures: median wall time of $REPEAT round(s), highest RSS"
}

main() {
    parse_args "$@"
    set_traps
    prepare
    export RUST_LOG=warn
    print_header
    bench_large
    bench_small
    if ((PACING)); then
        bench_pacing
    else
        echo
        echo "3. API pacing: skipped (add --pacing; it takes about 70 s)"
    fi
    finish
}

main "$@"
