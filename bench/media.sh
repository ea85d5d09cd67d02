#!/usr/bin/env bash
# medpool's media relay against rtpengine, measured in one run with one RTP generator.
#
#   caller side 127.0.150.10:30000+k ─┐                  ┌─ gateway side 127.0.150.11:31000+k
#   (bench/media/rtpgen.c, K sockets) ├─ relay under test ┤  (the same generator process)
#                                     │  medpool  127.0.150.1 (SIP :5060, media 20000-39999)
#                                     │  rtpengine 127.0.150.2 (ng :12222, media 20000-39999)
#
# Relays (RELAYS):
#   medpool    a whole `medpool serve` node; its calls are set up by real INVITEs (bench/media/sipcalls.py
#              plays the PBX on 127.0.150.20:5070 and the gateway on 127.0.150.21:5060, both trunks
#              media = "relay"), so the relay sessions are the ones the B2BUA opens for real calls.
#   medpool_base  optional: another medpool binary (MEDPOOL_BASE_BIN, e.g. the commit before a relay
#              change) run the same way, so old and new are measured in one run
#   rtpengine  Debian's rtpengine-daemon, userspace forwarding (no kernel module: --table=-1),
#              RTPE_THREADS threads, its calls set up through its ng protocol (bench/media/ng.py:
#              offer + answer per call).
#   medpool_srtp, rtpengine_srtp  the same relays bridging SRTP on the caller side to RTP on the gateway side,
#              as a Mediation Server does (AES_CM_128_HMAC_SHA1_80, SDES keys per call and per leg): medpool's
#              PBX trunk has encryption = "required" and its gateway trunk encryption = "none" (sipcalls.py offers
#              RTP/SAVP with a=crypto and checks the gateway gets plain RTP/AVP); rtpengine's offer carries
#              "transport-protocol": "RTP/AVP" towards the gateway (ng.py). The generator (built with libsrtp2)
#              protects what the caller side sends and unprotects what comes back to it (srtp_fail counts
#              packets that fail to unprotect: a turn with any is not clean). SRTP=1 measures medpool plain,
#              medpool_eq, medpool_srtp and rtpengine_srtp in one run (the default RELAYS then).
#   medpool_eq medpool's plain relay (RTP on both legs) with the generator doing the SRTP turn's crypto work
#              anyway and throwing it away (rtpgen MODE rtpeq). A relay's CPU per packet depends on how packets
#              arrive: the SRTP turn's busier generator spreads each batch over more time, so the relay sleeps
#              and wakes more often per packet. Against medpool_eq, medpool_srtp's extra CPU is its own SRTP
#              work; that ratio is the one judged against the SRTP target (the ratio against `medpool` is
#              printed too).
# Every call: G.711 A-law, 20 ms packets (172 bytes: 12-byte RTP header + 160 bytes), 50 packets/s each way.
#
# For each call count N in CALLS, the relays take turns (the order reversed every other step, so a drifting
# machine load weighs on both alike); each turn starts the relay fresh, sets up N calls, and runs the
# generator: WARMUP s of traffic, then WINDOW s measured, then 0.5 s of silence. Per turn it prints:
#   - CPU µs per forwarded packet: the relay process's utime+stime (/proc/PID/stat, all threads) over the
#     window / packets that came back in the window
#   - added latency p50/p99/p99.9/max: the kernel's receive timestamp at the generator - the send time
#     written in the payload
#   - loss (every packet of the turn), misrouted packets (delivered to the wrong call or side)
#   - memory per call: (RSS after the traffic - RSS before the calls were set up) / N
# A turn is CLEAN with 0 loss, 0 misrouted, 0 generator send failures, p99 <= 1 ms, and the generator
# holding >= 95 % of the offered rate; a relay stops at its first step that is not clean (GEN_LIMIT when
# it is the generator that fell short, which stops both). Highest clean calls = the last clean step.
# medpool's memory per call counts the whole node (dialogs and transactions too); MEM_BYPASS=1 also sets up
# the same calls through medpool with media = "bypass" and reports the relay's own share (relay - bypass).
#
# Usage:  bench/media.sh                                    (full run: about 5-10 min)
#         RT=1 bench/media.sh                               (on a busy shared machine: see RT below)
#         CALLS="250 500" WARMUP=1 WINDOW=3 bench/media.sh   (smoke run)
#         SRTP=1 bench/media.sh                             (SRTP<->RTP: medpool plain, medpool_srtp, rtpengine_srtp)
#         SRTP=1 CALLS="250" WARMUP=1 WINDOW=3 bench/media.sh (SRTP smoke run)
# Env:    CALLS="250 500 750 1000 1250 1500 2000 2500 3000" WARMUP=3 WINDOW=10 RELAYS="medpool rtpengine"
#         SOCKETS=8 (generator sockets per side) RTPE_THREADS=2 MEM_BYPASS=1 MEDPOOL_BIN MEDPOOL_BASE_BIN
#         NICE=0 (the nice value of the relays, the generator and the call set-up, the same for all: on a
#         machine shared with other work, NICE=-10 keeps them from being starved; needs root. With the
#         kernel's autogroup scheduling on, nice counts only inside a session, so the script then runs in a
#         session of its own and gives that session's autogroup the same nice value)
#         RT=0 (1: the relays, the generator and the set-up run SCHED_FIFO priority 1 instead — on a busy
#         shared machine the only way to keep other work's time slices (4 ms ticks) out of the latency
#         figures; needs root; while a relay saturates the cores the rest of the machine waits, up to the
#         kernel's RT limit of 95 %)
#         MEDPOOL_LOG=warn KEEP_GOING=0 (1: every relay runs every step, even after a step that was not
#         clean; the highest clean count is still the last of an unbroken run of clean steps)
#         WORK RESULTS_DIR
# Output: a table and a summary on stdout; bench/results/media-<UTC stamp>.txt; raw files in $WORK.
# Installs what it lacks (rtpengine-daemon, gcc, python3, procps, libsrtp2-dev for the SRTP relays, with apt-get);
# builds medpool in release
# when MEDPOOL_BIN is missing. Everything it starts is stopped by PID on exit, also on Ctrl-C.
set -u
CALLS=${CALLS:-"250 500 750 1000 1250 1500 2000 2500 3000"}
WARMUP=${WARMUP:-3}
WINDOW=${WINDOW:-10}
SRTP=${SRTP:-0}
if [ "$SRTP" = 1 ]; then RELAYS=${RELAYS:-"medpool medpool_eq medpool_srtp rtpengine_srtp"}; else RELAYS=${RELAYS:-"medpool rtpengine"}; fi
SOCKETS=${SOCKETS:-8}
RTPE_THREADS=${RTPE_THREADS:-2}
MEM_BYPASS=${MEM_BYPASS:-1}
KEEP_GOING=${KEEP_GOING:-0}
NICE=${NICE:-0}
RT=${RT:-0}
MEDPOOL_LOG=${MEDPOOL_LOG:-warn}

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd "$BENCH_DIR/.." && pwd)
MEDIA_DIR=$BENCH_DIR/media
STAMP=${STAMP:-$(date -u +%Y%m%dT%H%M%SZ)}
WORK=${WORK:-$(mktemp -d "/tmp/medpool-media.$STAMP.XXXX")}
RESULTS_DIR=${RESULTS_DIR:-$BENCH_DIR/results}
MEDPOOL_BIN=${MEDPOOL_BIN:-${CARGO_TARGET_DIR:-$REPO_DIR/target}/release/medpool}

# Addresses (one /24 of loopback, nothing else of the repository's benchmarks uses it)
MP_IP=127.0.150.1;  MP_SIP_PORT=5060; MEDIA_PORTS=20000-39999
RTPE_IP=127.0.150.2; RTPE_NG=127.0.150.2:12222
CALLER_MEDIA_IP=127.0.150.10; CBASE=30000
GW_MEDIA_IP=127.0.150.11;     GBASE=31000
PBX_SIP=127.0.150.20:5070;    GW_SIP=127.0.150.21:5060
MAX_P99_US=1000
if [ "$RT" = 1 ]; then PRIO=(chrt -f 1); else PRIO=(nice -n "$NICE"); fi

STARTED_PIDS=()
log() { printf '[%s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
load_avg() { cut -d' ' -f1-3 /proc/loadavg; }
rss_kib() { awk '/^VmRSS:/{print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
stop_pid() {   # TERM, then KILL after 5 s; only processes this script started
    local pid=$1
    kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null; return 0; }
    kill -TERM "$pid" 2>/dev/null
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
    return 0
}
stop_all() { local p; for p in "${STARTED_PIDS[@]}"; do stop_pid "$p"; done; STARTED_PIDS=(); }
started() { STARTED_PIDS+=("$1"); }
udp_bound() { ss -H -uln | awk '{print $4}' | grep -qx "$1"; }
wait_udp() {   # $1 = ip:port, $2 = pid that must stay alive
    for _ in $(seq 100); do udp_bound "$1" && return 0; kill -0 "$2" 2>/dev/null || return 1; sleep 0.1; done
    return 1
}

ensure_tools() {
    local need=()
    command -v rtpengine >/dev/null || need+=(rtpengine-daemon)
    command -v gcc >/dev/null || need+=(gcc libc6-dev)
    command -v python3 >/dev/null || need+=(python3)
    command -v ss >/dev/null || need+=(iproute2)
    command -v top >/dev/null || need+=(procps)
    if [[ " $RELAYS " == *_srtp* || " $RELAYS " == *" medpool_eq "* ]] && [ ! -e /usr/include/srtp2/srtp.h ]; then need+=(libsrtp2-dev pkg-config); fi
    if [ ${#need[@]} -gt 0 ]; then
        log "installing: ${need[*]}"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null \
            || { log "apt-get install ${need[*]} failed"; exit 1; }
    fi
    if [[ " $RELAYS " == *" medpool "* || " $RELAYS " == *" medpool_srtp "* || " $RELAYS " == *" medpool_eq "* ]]; then ensure_medpool; fi
    if [[ " $RELAYS " == *" medpool_base "* ]]; then
        [ -x "${MEDPOOL_BASE_BIN:-}" ] || { log "RELAYS has medpool_base: set MEDPOOL_BASE_BIN to a medpool binary"; exit 1; }
        cp "$MEDPOOL_BASE_BIN" "$WORK/medpool_base.bin" || exit 1
        log "medpool_base binary: $MEDPOOL_BASE_BIN, sha256 $(sha256sum "$MEDPOOL_BASE_BIN" | cut -c1-16)"
    fi
    # batching generator: C (sendmmsg/recvmmsg/SO_TIMESTAMPNS, no runtime between the syscalls), built here
    # (with the SRTP relays, built against libsrtp2: the same binary runs the plain turns too)
    if [[ " $RELAYS " == *_srtp* || " $RELAYS " == *" medpool_eq "* ]]; then
        gcc -O2 -Wall -DWITH_SRTP -o "$WORK/rtpgen" "$MEDIA_DIR/rtpgen.c" -lsrtp2 || { log "cannot build the generator with libsrtp2"; exit 1; }
    else
        gcc -O2 -Wall -o "$WORK/rtpgen" "$MEDIA_DIR/rtpgen.c" || { log "cannot build the generator"; exit 1; }
    fi
}

ensure_medpool() {
    if [ ! -x "$MEDPOOL_BIN" ]; then
        log "building medpool (cargo build --release -p medpool)"
        (cd "$REPO_DIR" && cargo build --release -p medpool) || { log "build failed"; exit 1; }
        MEDPOOL_BIN=${CARGO_TARGET_DIR:-$REPO_DIR/target}/release/medpool
    fi
    # a private copy: a rebuild during the run cannot swap the binary
    cp "$MEDPOOL_BIN" "$WORK/medpool.bin" || exit 1
    log "medpool binary: $MEDPOOL_BIN, sha256 $(sha256sum "$MEDPOOL_BIN" | cut -c1-16), built $(date -r "$MEDPOOL_BIN" '+%F %T %Z')"
}

check_free() {
    local a
    for a in "$MP_IP:$MP_SIP_PORT" "$RTPE_NG" "$PBX_SIP" "$GW_SIP" "$CALLER_MEDIA_IP:$CBASE" "$GW_MEDIA_IP:$GBASE"; do
        if udp_bound "$a"; then log "UDP $a is already in use: stop whatever holds it first"; exit 1; fi
    done
}

write_medpool_config() {   # $1 = file, $2 = relay | bypass, $3 = rtp | srtp (the PBX trunk's media protection)
    local pbx_enc="" gw_enc=""
    if [ "${3:-rtp}" = srtp ]; then pbx_enc='encryption = "required"'; gw_enc='encryption = "none"'; fi
    cat > "$1" <<EOF
# Generated by bench/media.sh: the PBX ($PBX_SIP) calls out over one gateway ($GW_SIP).
[node]
max_calls = 100000

[[trunk]]
name = "pbx"
address = "${PBX_SIP%:*}"
side = "internal"
match_any_port = true
usages = ["outbound"]
media = "$2"
media_timeout = 0
$pbx_enc

[[trunk]]
name = "gw"
address = "${GW_SIP%:*}"
port = ${GW_SIP#*:}
transport = "udp"
side = "gateway"
media = "$2"
media_timeout = 0
$gw_enc

[[route]]
name = "out"
pattern = '.*'
usage = "outbound"
trunks = ["gw"]
EOF
}

# start_medpool <tag> <relay|bypass> [binary] [rtp|srtp]; sets RELAY_PID
start_medpool() {
    local tag=$1 bin=${3:-$WORK/medpool.bin}
    write_medpool_config "$WORK/medpool-$tag.toml" "$2" "${4:-rtp}"
    rm -rf "$WORK/mpdata-$tag"
    "${PRIO[@]}" "$bin" serve --config "$WORK/medpool-$tag.toml" --sip-listen "$MP_IP:$MP_SIP_PORT" \
        --data-dir "$WORK/mpdata-$tag" --media-ports "$MEDIA_PORTS" --log "$MEDPOOL_LOG" --shutdown-grace 1 \
        > "$WORK/medpool-$tag.log" 2>&1 &
    RELAY_PID=$!; started "$RELAY_PID"
    for _ in $(seq 150); do
        grep -q "medpool ready" "$WORK/medpool-$tag.log" 2>/dev/null && return 0
        kill -0 "$RELAY_PID" 2>/dev/null || break
        sleep 0.1
    done
    log "medpool did not start:"; tail -20 "$WORK/medpool-$tag.log" >&2; return 1
}

# setup_sip <tag> <calls> [rtp|srtp]: sipcalls.py sets the calls up through the node; sets SIP_PID; pairs in
# $WORK/pairs-<tag>.txt
setup_sip() {
    local tag=$1 n=$2
    : > "$WORK/sip-$tag.out"
    "${PRIO[@]}" python3 "$MEDIA_DIR/sipcalls.py" "$MP_IP:$MP_SIP_PORT" "$PBX_SIP" "$GW_SIP" "$n" "$SOCKETS" \
        "$CALLER_MEDIA_IP" "$CBASE" "$GW_MEDIA_IP" "$GBASE" "$WORK/pairs-$tag.txt" "${3:-rtp}" \
        > "$WORK/sip-$tag.out" 2> "$WORK/sip-$tag.err" &
    SIP_PID=$!; started "$SIP_PID"
    for _ in $(seq $(( n / 10 + 300 ))); do
        grep -q '^ready' "$WORK/sip-$tag.out" && { log "    $(tail -1 "$WORK/sip-$tag.err")"; return 0; }
        grep -q '^failed' "$WORK/sip-$tag.out" && break
        kill -0 "$SIP_PID" 2>/dev/null || break
        sleep 0.2
    done
    log "    call setup failed: $(tail -3 "$WORK/sip-$tag.err")"; return 1
}

# start_rtpengine <tag>; sets RELAY_PID
start_rtpengine() {
    "${PRIO[@]}" rtpengine --interface="$RTPE_IP" --listen-ng="$RTPE_NG" --foreground --log-stderr --table=-1 \
        --port-min="${MEDIA_PORTS%-*}" --port-max="${MEDIA_PORTS#*-}" --num-threads="$RTPE_THREADS" --log-level=4 \
        --delete-delay=0 > "$WORK/rtpengine-$1.log" 2>&1 &
    RELAY_PID=$!; started "$RELAY_PID"
    wait_udp "$RTPE_NG" "$RELAY_PID" || { log "rtpengine did not start:"; tail -5 "$WORK/rtpengine-$1.log" >&2; return 1; }
}

RESULTS=$WORK/results.tsv
HEADER="relay	calls	verdict	offered_pps	pps	lost	lossy_calls	misrouted	send_fail	p50_us	p99_us	p999_us	max_us	relay_core_pct	us_per_pkt	gen_core_pct	rss_idle_kib	rss_kib	kib_per_call	setup_s	load	srtp_fail"
kv() { tr ' ' '\n' <<< "$1" | awk -F= -v k="$2" '$1 == k {print $2}'; }

# run_turn <relay> <calls>: one measured turn; appends a row to $RESULTS
run_turn() {
    local relay=$1 n=$2 tag="$1-$2" rss0 rss1 t0 t1 out verdict offered sip_pid="" ok=1 mode=rtp gen_mode
    [[ $relay == *_srtp ]] && mode=srtp
    gen_mode=$mode
    [ "$relay" = medpool_eq ] && gen_mode=rtpeq
    log "--- $relay, $n calls (load $(load_avg))"
    top -bn1 | head -15 > "$WORK/top-$tag.txt"
    check_free
    t0=$(date +%s.%N)
    case $relay in
        medpool|medpool_base|medpool_srtp|medpool_eq)
            local bin=${relay%_srtp}
            start_medpool "$tag" relay "$WORK/${bin%_eq}.bin" "$mode" || ok=0
            if [ $ok = 1 ]; then
                rss0=$(rss_kib "$RELAY_PID"); t0=$(date +%s.%N)
                setup_sip "$tag" "$n" "$mode" || ok=0; sip_pid=${SIP_PID:-}
            fi ;;
        rtpengine|rtpengine_srtp)
            start_rtpengine "$tag" || ok=0
            if [ $ok = 1 ]; then
                rss0=$(rss_kib "$RELAY_PID"); t0=$(date +%s.%N)
                python3 "$MEDIA_DIR/ng.py" "$RTPE_NG" "$n" "$SOCKETS" "$CALLER_MEDIA_IP" "$CBASE" "$GW_MEDIA_IP" "$GBASE" "$mode" \
                    > "$WORK/pairs-$tag.txt" 2> "$WORK/ng-$tag.err" || { log "    ng: $(tail -2 "$WORK/ng-$tag.err")"; ok=0; }
            fi ;;
    esac
    t1=$(date +%s.%N)
    if [ $ok = 0 ]; then
        printf '%s\t%s\tSETUP_FAILED%s\n' "$relay" "$n" "$(printf '\t-%.0s' $(seq 19))" >> "$RESULTS"
        [ -n "$sip_pid" ] && stop_pid "$sip_pid"
        stop_pid "$RELAY_PID"
        return 1
    fi
    out=$("${PRIO[@]}" "$WORK/rtpgen" "$WORK/pairs-$tag.txt" "$SOCKETS" "$CALLER_MEDIA_IP" "$CBASE" "$GW_MEDIA_IP" "$GBASE" "$WARMUP" "$WINDOW" "$RELAY_PID" "$gen_mode" 2> "$WORK/gen-$tag.err")
    rss1=$(rss_kib "$RELAY_PID")
    echo "$out" > "$WORK/gen-$tag.out"
    [ -n "$sip_pid" ] && stop_pid "$sip_pid"
    stop_pid "$RELAY_PID"
    [ -n "$out" ] || { log "    generator failed: $(cat "$WORK/gen-$tag.err")"; return 1; }
    offered=$(( n * 100 ))
    verdict=$(awk -v lost="$(kv "$out" lost)" -v mis="$(kv "$out" misrouted)" -v sf="$(kv "$out" send_fail)" \
        -v p99="$(kv "$out" p99_us)" -v pps="$(kv "$out" pps)" -v off="$offered" -v maxp99="$MAX_P99_US" \
        -v srtpf="$(kv "$out" srtp_fail)" 'BEGIN {
        if (pps < 0.95 * off || sf > 0) print "GEN_LIMIT"
        else if (lost == 0 && mis == 0 && srtpf + 0 == 0 && p99 <= maxp99) print "CLEAN"
        else print "FAIL" }')
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%.1f\t%s\t%s\n' \
        "$relay" "$n" "$verdict" "$offered" "$(kv "$out" pps)" "$(kv "$out" lost)" "$(kv "$out" lossy_calls)" \
        "$(kv "$out" misrouted)" "$(kv "$out" send_fail)" "$(kv "$out" p50_us)" "$(kv "$out" p99_us)" \
        "$(kv "$out" p999_us)" "$(kv "$out" max_us)" "$(kv "$out" relay_core_pct)" "$(kv "$out" us_per_pkt)" \
        "$(kv "$out" gen_core_pct)" "$rss0" "$rss1" "$(awk -v a="$rss1" -v b="$rss0" -v n="$n" 'BEGIN{printf "%.2f", (a - b) / n}')" \
        "$(awk -v a="$t1" -v b="$t0" 'BEGIN{print b == "" ? 0 : a - b}')" "$(load_avg | tr ' ' '/')" "$(kv "$out" srtp_fail)" >> "$RESULTS"
    log "    $verdict: $out"
    [ "$verdict" = CLEAN ]
}

# bypass_memory <calls>: the same calls set up through medpool with media = "bypass", RSS read after the same
# time a relayed turn's traffic takes; prints "<rss idle> <rss after>"
bypass_memory() {
    local n=$1 tag="medpool_bypass-$1" rss0 rss1
    check_free
    start_medpool "$tag" bypass || return 1
    rss0=$(rss_kib "$RELAY_PID")
    setup_sip "$tag" "$n" || { stop_pid "$RELAY_PID"; return 1; }
    sleep "$(awk -v w="$WARMUP" -v d="$WINDOW" 'BEGIN{print w + d + 0.5}')"
    rss1=$(rss_kib "$RELAY_PID")
    stop_pid "$SIP_PID"; stop_pid "$RELAY_PID"
    echo "$rss0 $rss1"
}

col() {   # col <relay> <calls> <column name>
    awk -F'\t' -v r="$1" -v n="$2" -v name="$3" 'NR == 1 { for (i = 1; i <= NF; i++) c[$i] = i; next }
        $1 == r && $2 == n { print $c[name] }' <(echo "$HEADER"; cat "$RESULTS")
}

main() {
    if [ "$NICE" != 0 ] && [ "$(cat /proc/sys/kernel/sched_autogroup_enabled 2>/dev/null)" = 1 ] && [ -z "${MEDIA_BENCH_SESSION:-}" ]; then
        # a session (and autogroup) of its own; Ctrl-C here stops it (it is no longer in this terminal's group)
        MEDIA_BENCH_SESSION=1 WORK=$WORK STAMP=$STAMP setsid -w "$0" "$@" &
        local child=$!
        trap 'kill -TERM $child 2>/dev/null' INT TERM
        wait $child; wait $child
        exit $?
    fi
    if [ "$NICE" != 0 ] && [ -w /proc/self/autogroup ]; then
        echo "$NICE" > /proc/self/autogroup 2>/dev/null && log "autogroup $(cat /proc/self/autogroup)"
    fi
    mkdir -p "$WORK" "$RESULTS_DIR"
    ensure_tools
    ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
    trap 'stop_all; exit 130' INT TERM
    trap 'stop_all' EXIT
    check_free
    : > "$RESULTS"
    local SUMMARY=$WORK/summary.txt
    summary() { echo "$1=$2" >> "$SUMMARY"; }
    : > "$SUMMARY"
    summary stamp "$STAMP"
    summary commit "$(git -C "$REPO_DIR" rev-parse --short HEAD 2>/dev/null)$(git -C "$REPO_DIR" diff --quiet 2>/dev/null || echo '+dirty')"
    summary machine "$(nproc) cores, $(awk -F': ' '/model name/{print $2; exit}' /proc/cpuinfo), $(free -m | awk '/Mem:/{print $2}') MiB, kernel $(uname -r)"
    summary rtpengine "$(rtpengine --version 2>&1 | head -1), userspace, $RTPE_THREADS threads"
    summary params "CALLS='$CALLS' WARMUP=$WARMUP WINDOW=$WINDOW SOCKETS=$SOCKETS RTPE_THREADS=$RTPE_THREADS NICE=$NICE RT=$RT fd_limit=$(ulimit -n)"
    summary uptime_at_start "$(uptime)"
    top -bn1 | head -15 > "$WORK/top-start.txt"
    log "work dir $WORK; relays: $RELAYS; calls: $CALLS; ${WARMUP}s warm-up + ${WINDOW}s window per turn"
    local n step=0 r order active still gen_limited=0
    read -r -a active <<< "$RELAYS"
    declare -A best=() broken=()
    for r in $RELAYS; do best[$r]=0; broken[$r]=0; done
    for n in $CALLS; do
        [ ${#active[@]} = 0 ] && break
        order=("${active[@]}")
        if [ $(( step % 2 )) = 1 ]; then order=(); for r in "${active[@]}"; do order=("$r" "${order[@]}"); done; fi
        still=()
        for r in "${order[@]}"; do
            if run_turn "$r" "$n"; then
                [ "${broken[$r]}" = 0 ] && best[$r]=$n
                still+=("$r")
            else
                broken[$r]=1
                [ "$KEEP_GOING" = 1 ] && still+=("$r")
            fi
            [ "$(col "$r" "$n" verdict)" = GEN_LIMIT ] && gen_limited=1
            sleep 2
        done
        active=()
        for r in $RELAYS; do case " ${still[*]} " in *" $r "*) active+=("$r");; esac; done
        if [ $gen_limited = 1 ]; then log "the generator fell short of the offered rate at $n calls: stopping"; summary generator_limit_at "$n"; break; fi
        step=$(( step + 1 ))
    done
    summary uptime_at_end "$(uptime)"
    top -bn1 | head -15 > "$WORK/top-end.txt"
    for r in $RELAYS; do summary "$r.max_clean_calls" "${best[$r]}"; done
    # CPU and memory compared at the highest call count both relays ran clean
    local common=0
    for n in $CALLS; do
        local all=1
        for r in $RELAYS; do [ "$(col "$r" "$n" verdict)" = CLEAN ] || all=0; done
        [ $all = 1 ] && common=$n
    done
    summary common_clean_calls "$common"
    if [ "$common" -gt 0 ]; then
        for r in $RELAYS; do
            summary "$r.us_per_pkt_at_common" "$(col "$r" "$common" us_per_pkt)"
            summary "$r.core_pct_at_common" "$(col "$r" "$common" relay_core_pct)"
            summary "$r.p99_us_at_common" "$(col "$r" "$common" p99_us)"
            summary "$r.kib_per_call_at_common" "$(col "$r" "$common" kib_per_call)"
        done
    fi
    if [ "$MEM_BYPASS" = 1 ] && [ "$common" -gt 0 ] && [[ " $RELAYS " == *" medpool "* ]]; then
        log "--- medpool with media = bypass, $common calls (memory of the node without the relay)"
        local bp
        if bp=$(bypass_memory "$common"); then
            summary medpool_bypass.rss_idle_kib "${bp% *}"
            summary medpool_bypass.rss_kib "${bp#* }"
            summary medpool_bypass.kib_per_call "$(awk -v a="${bp#* }" -v b="${bp% *}" -v n="$common" 'BEGIN{printf "%.2f", (a - b) / n}')"
            summary medpool.relay_kib_per_call "$(awk -v r="$(col medpool "$common" kib_per_call)" -v a="${bp#* }" -v b="${bp% *}" -v n="$common" 'BEGIN{printf "%.2f", r - (a - b) / n}')"
        fi
    fi
    # the issue's targets
    if [[ " $RELAYS " == *" medpool "* && " $RELAYS " == *" rtpengine "* ]]; then
        local mp rt
        mp=$(awk -F= '$1 == "medpool.us_per_pkt_at_common" {print $2}' "$SUMMARY")
        rt=$(awk -F= '$1 == "rtpengine.us_per_pkt_at_common" {print $2}' "$SUMMARY")
        [ -n "$mp" ] && [ -n "$rt" ] && summary target.cpu_per_packet "$(awk -v a="$mp" -v b="$rt" 'BEGIN{printf "medpool/rtpengine = %.2f (target <= 0.50): %s", a / b, (a / b <= 0.5 ? "MET" : "MISSED")}')"
        summary target.clean_calls "$(awk -v a="${best[medpool]}" -v b="${best[rtpengine]}" -v last="${CALLS##* }" 'BEGIN{
            if (b == 0) { print "rtpengine had no clean step: no ratio"; exit }
            if (a == last && b == last) { print "both clean at the largest step: no ratio (add larger CALLS)"; exit }
            printf "medpool/rtpengine = %d/%d = %.2f (target >= 1.50): %s%s", a, b, a / b, (a / b >= 1.5 ? "MET" : "MISSED"),
                (a == last ? " (medpool clean at the largest step: a lower bound)" : "") }')"
        local mem
        mem=$(awk -F= '$1 == "medpool.relay_kib_per_call" {print $2}' "$SUMMARY")
        if [ -n "$mem" ]; then
            summary target.memory_per_call "$(awk -v m="$mem" 'BEGIN{printf "%.2f KiB per relayed call (relay - bypass; target <= 16): %s", m, (m <= 16 ? "MET" : "MISSED")}')"
        else
            summary target.memory_per_call "not judged: the relay's share needs the bypass turn (MEM_BYPASS=1); the whole node's figure includes dialogs and transactions"
        fi
    fi
    # SRTP<->RTP (issue 16): medpool bridging SRTP to RTP against its plain relay and against rtpengine bridging
    if [ "$common" -gt 0 ] && [[ " $RELAYS " == *" medpool_srtp "* ]]; then
        local ms mp_plain mp_eq rs
        ms=$(col medpool_srtp "$common" us_per_pkt)
        if [[ " $RELAYS " == *" medpool_eq "* ]]; then
            # the plain turn whose generator did the SRTP turn's crypto work: the packets arrived as in the
            # SRTP turn, so the difference is the relay's own SRTP work
            mp_eq=$(col medpool_eq "$common" us_per_pkt)
            summary target.srtp_cpu_per_packet "$(awk -v a="$ms" -v b="$mp_eq" 'BEGIN{printf "medpool SRTP<->RTP / plain RTP, the generator doing the same work in both turns = %.2f (target <= 1.50): %s", a / b, (a / b <= 1.5 ? "MET" : "MISSED")}')"
        fi
        if [[ " $RELAYS " == *" medpool "* ]]; then
            mp_plain=$(col medpool "$common" us_per_pkt)
            summary srtp.vs_plain_generator_lighter "$(awk -v a="$ms" -v b="$mp_plain" 'BEGIN{printf "medpool SRTP<->RTP / plain RTP with the plain turn'"'"'s generator doing no crypto = %.2f", a / b}')"
        fi
        if [[ " $RELAYS " == *" rtpengine_srtp "* ]]; then
            rs=$(col rtpengine_srtp "$common" us_per_pkt)
            summary srtp.medpool_vs_rtpengine "$(awk -v a="$ms" -v b="$rs" 'BEGIN{printf "SRTP<->RTP CPU per packet, medpool / rtpengine = %.2f", a / b}')"
        fi
    fi
    {
        echo
        echo "media relay bench $(awk -F= '$1 == "commit" {print $2}' "$SUMMARY"): $(awk -F= '$1 == "machine" {print $2}' "$SUMMARY")"
        echo "per turn: ${WARMUP}s warm-up + ${WINDOW}s measured; G.711 20 ms, 100 packets/s per call (50 each way); latency = kernel receive timestamp - send time"
        echo "relay_core_pct = the relay process's CPU (% of ONE core) over the window; us_per_pkt = its CPU per forwarded packet; kib_per_call = (rss - rss_idle) / calls"
        echo
        ( echo "$HEADER"; cat "$RESULTS" ) | column -t -s $'\t'
        echo
        echo "Summary (also in $RESULTS_DIR/media-$STAMP.txt):"
        cat "$SUMMARY"
    } | tee "$WORK/table.txt"
    { cat "$SUMMARY"; echo; echo "# turns"; echo "$HEADER"; cat "$RESULTS"; echo; echo "# top at start"; cat "$WORK/top-start.txt"; echo "# top at end"; cat "$WORK/top-end.txt"; } > "$RESULTS_DIR/media-$STAMP.txt"
    log "raw files: $WORK"
}

main "$@"
