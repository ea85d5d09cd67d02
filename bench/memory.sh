#!/usr/bin/env bash
# medpool memory checks on one node (same SIPp caller, gateways and configuration as bench/run.sh):
#
#   1. hold:  RSS per established call. HOLD_CALLS calls at HOLD_RATE cps held open; resident
#             memory idle, with every call up, and HOLD_SETTLE s later (when the INVITE
#             transactions, kept 64*T1 = 32 s after their 2xx, are gone): (settled - idle) / calls.
#   2. burst: memory given back after a burst. BURST_RATE cps of short calls (HOLD_MS) for BURST_S
#             s, then RSS every 5 s for AFTER_S s after the burst ended; PASS when RSS is back
#             within 20 % of its idle value at the end (the issue's criterion: 60 s after).
#
# Usage:  bench/memory.sh                                  (20,000 held; 5,000 cps for 20 s)
#         HOLD_CALLS=2000 HOLD_RATE=500 BURST_RATE=1000 BURST_S=5 AFTER_S=20 bench/memory.sh  (smoke)
# Env:    CHECKS="hold burst" HOLD_CALLS HOLD_RATE HOLD_SETTLE BURST_RATE BURST_S AFTER_S HOLD_MS
#         AFTER_CMD MEDPOOL_BIN MEDPOOL_ARGS MEDPOOL_LOG, and bench/lib.sh's addresses (PROXY_IP ... UAC_PORT);
#         METRICS_LISTEN=ip:port: the node serves /metrics there and each after-burst sample also
#         shows its live calls and transactions (what still holds memory)
#         AFTER_CMD: a command run with the node's PID as its argument after the last after-burst
#         sample, before the node is stopped (e.g. bench/jemalloc-stats.sh: the allocator's view)
# Output: key=value lines on stdout and in bench/results/memory-<UTC timestamp>.txt; raw files in $WORK.
# Everything it starts is stopped by PID on exit, also on Ctrl-C.
set -u
CHECKS=${CHECKS:-"hold burst"}
HOLD_CALLS=${HOLD_CALLS:-20000}
HOLD_RATE=${HOLD_RATE:-500}
HOLD_SETTLE=${HOLD_SETTLE:-40}
BURST_RATE=${BURST_RATE:-5000}
BURST_S=${BURST_S:-20}
AFTER_S=${AFTER_S:-60}
HOLD_MS=${HOLD_MS:-1000}
METRICS_LISTEN=${METRICS_LISTEN:-}
MEDPOOL_LOG=${MEDPOOL_LOG:-warn}
MEDPOOL_ARGS=${MEDPOOL_ARGS:-"--max-transactions 2000000"}
export MEDPOOL_ARGS
PROXY_PORT=${PROXY_PORT:-5062}

BENCH_COPY_BIN=1
# shellcheck source=lib.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib.sh"

SUMMARY=$WORK/summary.txt
summary() { echo "$1=$2" | tee -a "$SUMMARY"; }

start_node() {  # $1 = tag ; sets NODE_PID
    write_medpool_config "$WORK/medpool-$1.toml" "options_interval_ms = 1000" "down_after = 2" "up_after = 2"
    # shellcheck disable=SC2046
    start_medpool "$WORK/medpool-$1.toml" "$1" "$MEDPOOL_LOG" $([ -n "$METRICS_LISTEN" ] && echo --metrics-listen "$METRICS_LISTEN") || return 1
    NODE_PID=$LAST_PID
    sleep 3   # first OPTIONS round trips
}

# calls_field <csv> <field>... : the last row's values of SIPp's statistics file
# live_counts : "calls=N transactions=M" from the node's metrics (METRICS_LISTEN), else nothing
live_counts() {
    [ -n "$METRICS_LISTEN" ] || return 0
    curl -s --max-time 2 "http://$METRICS_LISTEN/metrics" 2>/dev/null \
        | awk '/^medpool_active_calls[{} ]/{c=$NF} /^medpool_sip_transactions[{} ]/{t=$NF}
               /^medpool_sip_transaction_slots[{} ]/{ts=$NF} /^medpool_registry_slots[{} ]/{rs=$NF}
               /^medpool_hung_up_legs[{} ]/{l=$NF}
               END{printf "calls=%s transactions=%s", c, t;
                   if (ts != "") printf " transaction_slots=%s registry_slots=%s hung_up_legs=%s", ts, rs, l}'
}

calls_field() {
    python3 -c '
import csv, sys
rows = list(csv.reader(open(sys.argv[1]), delimiter=";"))
d = dict(zip(rows[0], rows[-1])) if len(rows) > 1 else {}
print(" ".join(d.get(k, "0") for k in sys.argv[2:]))' "$@" 2>/dev/null || echo "0 0 0"
}

check_hold() {
    local upid idle up settled created cur failed hold_ms
    log "=== hold: $HOLD_CALLS calls at $HOLD_RATE cps held open (load: $(load_avg))"
    start_gateways hold || return 1
    start_node hold || return 1
    idle=$(rss_kib "$NODE_PID")
    hold_ms=$(( (HOLD_CALLS / HOLD_RATE + HOLD_SETTLE + 120) * 1000 ))
    sipp "$PROXY_IP:$PROXY_PORT" -sf "$UAC_XML" -i "$UAC_IP" -p "$UAC_PORT" \
        -r "$HOLD_RATE" -rp 1000 -d "$hold_ms" -m "$HOLD_CALLS" -l $(( HOLD_CALLS + 1000 )) -nostdin \
        -buff_size "$SIPP_BUF" -trace_stat -stf "$WORK/uac_hold.csv" -fd 1 \
        -trace_err -error_file "$WORK/uac_hold.errors" -recv_timeout 10000 > "$WORK/uac_hold.out" 2>&1 &
    upid=$!; STARTED_PIDS+=("$upid")
    for _ in $(seq $(( HOLD_CALLS * 2 / HOLD_RATE + 120 ))); do
        sleep 1
        read -r created cur failed < <(calls_field "$WORK/uac_hold.csv" TotalCallCreated CurrentCall 'FailedCall(C)')
        [ "${created:-0}" -ge "$HOLD_CALLS" ] && break
        kill -0 "$upid" 2>/dev/null || break
    done
    sleep 5   # the last calls' 200/ACK
    up=$(rss_kib "$NODE_PID")
    log "    created $created, open $cur, failed $failed; RSS idle $idle kB, all up $up kB; waiting ${HOLD_SETTLE}s"
    sleep "$HOLD_SETTLE"
    read -r created cur failed < <(calls_field "$WORK/uac_hold.csv" TotalCallCreated CurrentCall 'FailedCall(C)')
    settled=$(rss_kib "$NODE_PID")
    summary hold.calls_open "$cur"
    summary hold.calls_failed "$failed"
    summary hold.rss_idle_kib "$idle"
    summary hold.rss_all_up_kib "$up"
    summary hold.rss_settled_kib "$settled"
    summary hold.vmhwm_kib "$(awk '/^VmHWM:/{print $2}' "/proc/$NODE_PID/status")"
    summary hold.rss_per_call_kib "$(awk -v a="$settled" -v b="$idle" -v n="$cur" 'BEGIN{ if (n > 0) printf "%.2f\n", (a - b) / n; else print "-" }')"
    summary hold.rss_per_call_all_up_kib "$(awk -v a="$up" -v b="$idle" -v n="$cur" 'BEGIN{ if (n > 0) printf "%.2f\n", (a - b) / n; else print "-" }')"
    stop_pid "$upid"; forget_pid "$upid"
    stop_all
}

check_burst() {
    local idle peak rss t verdict
    log "=== burst: $BURST_RATE cps for ${BURST_S}s, then ${AFTER_S}s idle (load: $(load_avg))"
    start_gateways burst || return 1
    start_node burst || return 1
    idle=$(rss_kib "$NODE_PID")
    DUR=$BURST_S run_load medpool "$BURST_RATE" "burst-$BURST_RATE" "$NODE_PID" "$GW1_PID" "$GW2_PID"
    peak=$(awk '/^VmHWM:/{print $2}' "/proc/$NODE_PID/status")
    summary burst.rss_idle_kib "$idle"
    summary burst.vmhwm_kib "$peak"
    summary burst.rss_at_end_kib "$(rss_kib "$NODE_PID")"
    for t in $(seq 5 5 "$AFTER_S"); do
        sleep 5
        rss=$(rss_kib "$NODE_PID")
        summary "burst.rss_after_${t}s_kib" "$rss${METRICS_LISTEN:+ ($(live_counts))}"
    done
    summary burst.rss_after_kib "$rss"
    if [ -n "${AFTER_CMD:-}" ]; then
        # shellcheck disable=SC2086
        $AFTER_CMD "$NODE_PID" > "$WORK/after-cmd.out" 2>&1
        summary burst.after_cmd "$AFTER_CMD ($WORK/after-cmd.out)"
    fi
    summary burst.rss_after_vs_idle "$(awk -v a="$rss" -v b="$idle" 'BEGIN{ printf "%.2f\n", a / b }')"
    verdict=$(awk -v a="$rss" -v b="$idle" 'BEGIN{ print (a <= b * 1.2) ? "PASS" : "FAIL" }')
    summary burst.verdict "$verdict (RSS ${AFTER_S}s after the burst within 20 % of idle)"
    summary burst.run "$(tail -n1 "$WORK/results.tsv" | awk -F'\t' '{print "ok " $5 " failed " $6 " achieved " $8 " cps " $22}')"
    stop_all
}

main() {
    local c
    ensure_tools 0
    ensure_medpool
    mkdir -p "$WORK" "$RESULTS_DIR"
    ulimit -n 65536 2>/dev/null || true
    : > "$WORK/results.tsv"; : > "$SUMMARY"
    trap 'stop_all; exit 130' INT TERM
    trap 'stop_all' EXIT
    summary stamp "$STAMP"
    summary medpool_commit "$(git -C "$REPO_DIR" rev-parse HEAD 2>/dev/null)$(git -C "$REPO_DIR" diff --quiet 2>/dev/null || echo '+dirty')"
    summary medpool_args "$MEDPOOL_ARGS"
    summary params "CHECKS='$CHECKS' HOLD_CALLS=$HOLD_CALLS HOLD_RATE=$HOLD_RATE HOLD_SETTLE=$HOLD_SETTLE BURST_RATE=$BURST_RATE BURST_S=$BURST_S AFTER_S=$AFTER_S HOLD_MS=$HOLD_MS"
    summary load_at_start "$(load_avg)"
    for c in $CHECKS; do
        check_ports_free
        "check_$c"
        sleep 3
    done
    summary load_at_end "$(load_avg)"
    cp "$SUMMARY" "$RESULTS_DIR/memory-$STAMP.txt"
    log "summary: $RESULTS_DIR/memory-$STAMP.txt ; raw files: $WORK"
}

main "$@"
