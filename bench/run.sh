#!/usr/bin/env bash
# medpool single-node benchmark, with the Kamailio anchor measured in the same run.
#
#   SIPp caller (127.0.0.1:5070) -> front (Kamailio 127.0.0.1:5060, medpool 127.0.0.1:5062,
#   medpool_bigbuf 127.0.0.1:5064) -> two SIPp gateways (127.0.0.2:5060, 127.0.0.3:5060,
#   answering OPTIONS with -aa)
#
# Fronts (TARGETS):
#   medpool   one `medpool serve` node (config written by bench/lib.sh: the PBX trunk calls out
#             over two equal-priority gateways; OPTIONS every 1 s)
#   medpool_base  a baseline build of medpool (MEDPOOL_BASE_BIN, e.g. the binary of the commit before a
#             change), on 127.0.0.1:5066 with the same configuration: old and new measured in one run
#   medpool_bigbuf  diagnostic, not in the default TARGETS: medpool with its UDP socket buffers
#             raised to 4 MiB (x2 by the kernel) by an LD_PRELOAD shim (bench/sipbuf-shim.c, needs cc),
#             as Kamailio's maxbuffer and SIPp's -buff_size do; shows how much of medpool's CPS
#             limit is datagrams dropped at its 208 KiB default receive buffer
#   kamailio  the anchor: Kamailio 5.6, transaction-stateful (tm), record-routing (rr)
#             dispatcher proxy, round-robin over the same two gateways (configuration and
#             helpers in bench/anchors/kamailio/)
#
# For each front:
#   1. CPS: every front is started at once; for each rate in RATES and each of REPEATS repeats,
#      the fronts take turns (order reversed every other repeat: a drifting machine load weighs
#      on all alike), each a run of DUR s of calls (HOLD_MS long); a run PASSes
#      with 0 failed calls, every call created, and calls created at >= 95 % of the rate (the
#      anchor's criterion); a front stops at the first rate where every repeat fails. Highest clean rate
#      = highest rate where every repeat passed. CPU of the front (utime+stime of all its
#      threads/processes from /proc/PID/stat, before/after each run) per 1,000 calls.
#   2. Added post-dial delay at half the highest clean rate: dumpcap on lo keeps every INVITE;
#      the INVITE into the front and the INVITE out to a gateway are paired by the called number
#      (the caller puts SIPp's call number in the R-URI user; medpool mints a new Call-ID on
#      leg B but keeps the called number). p50/p90/p99 of (first INVITE out - first INVITE in).
#   3. RSS per established call (medpool; Kamailio with its dialog module, -A WITH_DIALOG):
#      RSS_CALLS calls at RSS_RATE held open, resident memory idle, with every call up, and
#      RSS_SETTLE s later (when the INVITE transactions, kept 64*T1 = 32 s after their 2xx, are
#      gone): (settled - idle) / calls.
#
# Usage:  bench/run.sh                       (full run: about 25-40 min)
#         RATES="500 1000" DUR=5 REPEATS=1 RSS_CALLS=2000 bench/run.sh    (smoke run)
# Env:    RATES DUR REPEATS HOLD_MS TARGETS="medpool kamailio" PDD=1 RSS=1 KAM_RSS=1
#         RSS_CALLS=20000 RSS_RATE=500 RSS_SETTLE=40 RSS_SHORT_T1=1 MEDPOOL_BIN MEDPOOL_ARGS MEDPOOL_LOG=warn
#         MEDPOOL_BASE_BIN (the binary of the medpool_base front) MEDPOOL_METRICS (ip:port: stage histograms)
#         WORK RESULTS_DIR; Kamailio's: KAM_CHILDREN KAM_SHM_MB PING_INTERVAL FR_TIMER_MS
# Output: a table on stdout, bench/results/<UTC timestamp>.txt (key=value summary + tables),
#         raw files (SIPp CSVs/errors, logs, captures) in $WORK.
# Everything it starts is stopped by PID on exit, also on Ctrl-C.
set -u
RATES=${RATES:-"1000 2000 3000 4000 5000 6000 7000 8000"}
DUR=${DUR:-20}
REPEATS=${REPEATS:-2}
HOLD_MS=${HOLD_MS:-1000}
TARGETS=${TARGETS:-"medpool kamailio"}
PDD=${PDD:-1}
RSS=${RSS:-1}
KAM_RSS=${KAM_RSS:-1}
RSS_CALLS=${RSS_CALLS:-20000}
RSS_RATE=${RSS_RATE:-500}
RSS_SETTLE=${RSS_SETTLE:-40}
RSS_SHORT_T1=${RSS_SHORT_T1:-1}
MEDPOOL_LOG=${MEDPOOL_LOG:-warn}
# medpool's default --max-transactions (200,000) counts transactions that linger 32 s after
# their final answer (RFC 6026 Timer L/M, Timer J): at a few thousand CPS that limit, not the
# CPU, would cap the rate. The anchor gives Kamailio 4 GB of shared memory for the same reason.
MEDPOOL_ARGS=${MEDPOOL_ARGS:-"--max-transactions 2000000"}
# MEDPOOL_METRICS=ip:port: the medpool front serves /metrics there, and its per-stage latency
# histograms are saved after the post-dial-delay run (stages-medpool.txt in $WORK).
[ -n "${MEDPOOL_METRICS:-}" ] && MEDPOOL_ARGS="$MEDPOOL_ARGS --metrics-listen $MEDPOOL_METRICS"
export MEDPOOL_ARGS

BENCH_COPY_BIN=1   # run a copy of the binary: a rebuild by someone else cannot swap it mid-run
# shellcheck source=lib.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib.sh"

SUMMARY=$WORK/summary.txt
summary() { echo "$1=$2" >> "$SUMMARY"; }

# best_rate <target> : "<highest rate where every repeat passed> <highest rate where one did>"
best_rate() {
    awk -F'\t' -v t="$1" 'BEGIN{best=0; any=0} $1 == t && $2 ~ ("^" t "-[0-9]+-r[0-9]+$") {
          r=$3; n[r]++; if ($22=="PASS") p[r]++ }
        END { for (r in n) { if (p[r]==n[r] && r+0>best) best=r+0; if (p[r]>0 && r+0>any) any=r+0 }
              print best, any }' "$WORK/results.tsv"
}
# mean_at <target> <rate> <column> : mean of a column over the CPS runs of a target at a rate
mean_at() {
    awk -F'\t' -v t="$1" -v r="$2" -v c="$3" '$1 == t && $2 ~ ("^" t "-[0-9]+-r[0-9]+$") && $3 == r { s += $c; n++ }
        END { if (n) printf "%.2f\n", s / n; else print "-" }' "$WORK/results.tsv"
}

start_front() {  # $1 = target, $2 = tag, $3 = kamailio extra define or "" ; sets FRONT_PID
    case $1 in
        medpool|medpool_bigbuf|medpool_base)
            local pre="" bin=$MEDPOOL_BIN args=$MEDPOOL_ARGS
            [ "$1" = medpool_bigbuf ] && { pre=$(build_bufshim) || return 1; }
            # Only the medpool front serves MEDPOOL_METRICS (one port).
            [ "$1" = medpool_base ] && { bin=$MEDPOOL_BASE_COPY; args=${args//--metrics-listen ${MEDPOOL_METRICS:-}/}; }
            write_medpool_config "$WORK/medpool-$2.toml" "options_interval_ms = 1000" "down_after = 2" "up_after = 2"
            # shellcheck disable=SC2086
            MEDPOOL_ARGS=$args MEDPOOL_BIN=$bin MEDPOOL_PRELOAD=$pre start_medpool "$WORK/medpool-$2.toml" "$2" "$MEDPOOL_LOG" ${MEDPOOL_EXTRA:-} || return 1
            FRONT_PID=$LAST_PID
            sleep 3 ;;   # first OPTIONS round trips
        kamailio)
            if [ -n "${3:-}" ]; then start_kamailio -A "$3"; else start_kamailio; fi
            FRONT_PID=$LAST_PID
            wait_udp_listen "$PROXY_IP:$PROXY_PORT" && wait_gateways_up || return 1 ;;
    esac
}

# Every front listens on its own port of 127.0.0.1 (Kamailio on the anchor's 5060), all in front
# of the same two gateways, and all are up during the whole CPS sweep: for each rate and repeat
# the fronts take turns (the order reversed on every other repeat), so that a machine whose load
# drifts (a shared one) weighs on every front alike. An idle front only answers and sends OPTIONS.
declare -A FRONT_PORT=([kamailio]=5060 [medpool]=5062 [medpool_bigbuf]=5064 [medpool_base]=5066)
declare -A FRONT_PIDS=()
use_front() { PROXY_PORT=${FRONT_PORT[$1]}; FRONT_PID=${FRONT_PIDS[$1]:-}; }

run_cps() {
    local t rate rep tag line best any pdd_rate order active=() still
    declare -A fails=()
    log "=== CPS: $TARGETS; steps $RATES, ${DUR}s x $REPEATS, fronts interleaved (load: $(load_avg))"
    for t in $TARGETS; do use_front "$t"; check_ports_free; done
    start_gateways cps || { stop_all; return 1; }
    for t in $TARGETS; do
        use_front "$t"
        start_front "$t" "$t" "" || { stop_all; return 1; }
        FRONT_PIDS[$t]=$FRONT_PID
        log "    $t on $PROXY_IP:$PROXY_PORT pid $FRONT_PID; SIP socket $(sock_mem "$PROXY_IP:$PROXY_PORT")"
        summary "$t.sip_socket_at_start" "$(sock_mem "$PROXY_IP:$PROXY_PORT")"
        active+=("$t")
    done
    log "    gateways: $GW1_PID $GW2_PID"
    summary cps.load_at_start "$(load_avg)"
    for rate in $RATES; do
        for t in "${active[@]}"; do fails[$t]=0; done
        for rep in $(seq "$REPEATS"); do
            order=("${active[@]}")
            if [ $(( rep % 2 )) = 0 ]; then order=(); for t in "${active[@]}"; do order=("$t" "${order[@]}"); done; fi
            for t in "${order[@]}"; do
                use_front "$t"
                tag="$t-$rate-r$rep"
                run_load "$t" "$rate" "$tag" "$FRONT_PID" "$GW1_PID" "$GW2_PID"
                line=$(tail -n1 "$WORK/results.tsv")
                [ "${line##*$'\t'}" = PASS ] || fails[$t]=$(( ${fails[$t]} + 1 ))
                if ! kill -0 "$FRONT_PID" 2>/dev/null; then log "$t died"; summary "$t.died_at_rate" "$rate"; fails[$t]=$REPEATS; fi
                sleep 5   # let transactions and the gateways' timewait drain
            done
        done
        still=()
        for t in "${active[@]}"; do
            if [ "${fails[$t]}" -ge "$REPEATS" ]; then log "    every repeat of $t failed at $rate cps: no higher rates for $t"
            else still+=("$t"); fi
        done
        active=("${still[@]}")
        [ ${#active[@]} = 0 ] && break
    done
    summary cps.load_at_end "$(load_avg)"
    for t in $TARGETS; do
        read -r best any < <(best_rate "$t")
        summary "$t.max_clean_cps" "$best"
        summary "$t.max_cps_one_repeat_clean" "$any"
        if [ "$best" -gt 0 ]; then
            summary "$t.cpu_s_per_1000_calls_at_max" "$(mean_at "$t" "$best" 14 | awk '{ if ($1 == "-") print "-"; else printf "%.3f\n", $1 / 1000 }')"
            summary "$t.cpu_us_per_call_at_max" "$(mean_at "$t" "$best" 14)"
            summary "$t.cpu_pct_at_max" "$(mean_at "$t" "$best" 12)"
            summary "$t.inv200_avg_ms_at_max" "$(mean_at "$t" "$best" 9)"
        fi
    done
    # ------------------------------------------------------------ post-dial delay
    for t in $TARGETS; do
        use_front "$t"
        [ "$PDD" = 1 ] && kill -0 "$FRONT_PID" 2>/dev/null || continue
        best=$(awk -F= -v k="$t.max_clean_cps" '$1 == k {print $2}' "$SUMMARY")
        if [ "${best:-0}" -gt 0 ]; then pdd_rate=$(( best / 2 )); else pdd_rate=$(( ${RATES%% *} / 2 )); fi
        [ "$pdd_rate" -lt 50 ] && pdd_rate=50
        log "--- $t: post-dial delay at $pdd_rate cps (half of $best; load: $(load_avg))"
        sleep 5
        start_invite_capture "$WORK/pdd-$t.pcap"
        run_load "$t" "$pdd_rate" "$t-pdd-$pdd_rate" "$FRONT_PID" "$GW1_PID" "$GW2_PID"
        stop_invite_capture
        invites_tsv "$WORK/pdd-$t.pcap" > "$WORK/pdd-$t.invites.tsv"
        summary "$t.pdd_rate" "$pdd_rate"
        summary "$t.pdd_run_verdict" "$(tail -n1 "$WORK/results.tsv" | awk -F'\t' '{print $22 " (failed " $6 ")"}')"
        summary "$t.pdd_load" "$(load_avg)"
        pdd_stats "$WORK/pdd-$t.invites.tsv" "$PROXY_IP:$PROXY_PORT" | sed "s/^/$t./" >> "$SUMMARY"
        grep "^$t.pdd_" "$SUMMARY" | sed 's/^/    /' >&2
        # The node's own stage histograms (MEDPOOL_METRICS=ip:port), cumulative since the node
        # started: which stage holds the tail.
        if [ "$t" = medpool ] && [ -n "${MEDPOOL_METRICS:-}" ]; then
            curl -s "http://$MEDPOOL_METRICS/metrics" | grep -E '^medpool_(stage_|sip_timer_sweep|post_dial)' > "$WORK/stages-$t.txt"
            summary "$t.stages_file" "$WORK/stages-$t.txt"
        fi
    done
    for t in $TARGETS; do use_front "$t"; summary "$t.sip_socket_at_end" "$(sock_mem "$PROXY_IP:$PROXY_PORT")"; done
    stop_all
    case " $TARGETS " in *" kamailio "*) cp "$WORK/kamailio.log" "$WORK/kamailio-cps.log";; esac
    return 0
}

# ------------------------------------------------------------------ memory per call
# hold_calls <target> <tag> <kamailio define or ""> [medpool extra args] ; RSS_CALLS calls held open
hold_calls() {
    local t=$1 tag=$2 def=$3 upid i created cur failed idle idle_pss up up_pss settled settled_pss hold_ms
    log "=== $tag: $RSS_CALLS calls at $RSS_RATE cps held open (load: $(load_avg))"
    use_front "$t"
    check_ports_free
    start_gateways "$tag" || { stop_all; return 1; }
    MEDPOOL_EXTRA="${4:-}" start_front "$t" "$tag" "$def" || { stop_all; return 1; }
    sleep 2
    kshm() { kam_rpc core.shmmem 2>/dev/null | awk '/real_used/{print int($2/1024)}'; }
    idle=$(rss_kib "$FRONT_PID"); idle_pss=$(pss_kib "$FRONT_PID")
    [ "$t" = kamailio ] && summary "$tag.shm_idle_kib" "$(kshm)"
    hold_ms=$(( (RSS_CALLS / RSS_RATE + RSS_SETTLE + 120) * 1000 ))
    sipp "$PROXY_IP:$PROXY_PORT" -sf "$UAC_XML" -i "$UAC_IP" -p "$UAC_PORT" \
        -r "$RSS_RATE" -rp 1000 -d "$hold_ms" -m "$RSS_CALLS" -l $(( RSS_CALLS + 1000 )) -nostdin -buff_size "$SIPP_BUF" \
        -trace_stat -stf "$WORK/uac_$tag.csv" -fd 1 -trace_err -error_file "$WORK/uac_$tag.errors" \
        -recv_timeout 10000 > "$WORK/uac_$tag.out" 2>&1 &
    upid=$!; STARTED_PIDS+=("$upid")
    csv_field() { python3 -c '
import csv, sys
rows = list(csv.reader(open(sys.argv[1]), delimiter=";"))
d = dict(zip(rows[0], rows[-1])) if len(rows) > 1 else {}
print(" ".join(d.get(k, "0") for k in sys.argv[2:]))' "$WORK/uac_$tag.csv" "$@" 2>/dev/null || echo "0 0 0"; }
    for i in $(seq $(( RSS_CALLS / RSS_RATE * 2 + 120 ))); do
        sleep 1
        read -r created cur failed < <(csv_field TotalCallCreated CurrentCall 'FailedCall(C)')
        [ "${created:-0}" -ge "$RSS_CALLS" ] && break
        kill -0 "$upid" 2>/dev/null || break
    done
    sleep 5   # the last calls' 200/ACK
    read -r created cur failed < <(csv_field TotalCallCreated CurrentCall 'FailedCall(C)')
    up=$(rss_kib "$FRONT_PID"); up_pss=$(pss_kib "$FRONT_PID")
    [ "$t" = kamailio ] && summary "$tag.shm_up_kib" "$(kshm)"
    log "    created $created, open $cur, failed $failed; RSS idle $idle kB, all up $up kB; waiting ${RSS_SETTLE}s"
    sleep "$RSS_SETTLE"
    read -r created cur failed < <(csv_field TotalCallCreated CurrentCall 'FailedCall(C)')
    settled=$(rss_kib "$FRONT_PID"); settled_pss=$(pss_kib "$FRONT_PID")
    [ "$t" = kamailio ] && { summary "$tag.shm_settled_kib" "$(kshm)"
        summary "$tag.shm_per_dialog_kib" "$(awk -F= -v k="$tag" -v n="$cur" '$1 == k ".shm_idle_kib" {i=$2} $1 == k ".shm_settled_kib" {s=$2} END{ if (n > 0) printf "%.2f\n", (s - i) / n; else print "-" }' "$SUMMARY")"
        summary "$tag.dialogs_active" "$(kam_rpc dlg.stats_active 2>/dev/null | tr -s ' \t\n' ' ')"; }
    [ "$t" = medpool ] && summary "$tag.vmhwm_kib" "$(awk '/^VmHWM:/{print $2}' "/proc/$FRONT_PID/status")"
    summary "$tag.calls_created" "$created"
    summary "$tag.calls_open" "$cur"
    summary "$tag.calls_failed" "$failed"
    summary "$tag.rss_idle_kib" "$idle"
    summary "$tag.rss_all_up_kib" "$up"
    summary "$tag.rss_settled_kib" "$settled"
    summary "$tag.pss_idle_kib" "$idle_pss"
    summary "$tag.pss_settled_kib" "$settled_pss"
    summary "$tag.rss_per_call_kib" "$(awk -v a="$settled" -v b="$idle" -v n="$cur" 'BEGIN{ if (n > 0) printf "%.2f\n", (a - b) / n; else print "-" }')"
    summary "$tag.rss_per_call_all_up_kib" "$(awk -v a="$up" -v b="$idle" -v n="$cur" 'BEGIN{ if (n > 0) printf "%.2f\n", (a - b) / n; else print "-" }')"
    summary "$tag.pss_per_call_kib" "$(awk -v a="$settled_pss" -v b="$idle_pss" -v n="$cur" 'BEGIN{ if (n > 0) printf "%.2f\n", (a - b) / n; else print "-" }')"
    summary "$tag.load_at_end" "$(load_avg)"
    grep "^$tag\." "$SUMMARY" | sed 's/^/    /' >&2
    stop_pid "$upid"; forget_pid "$upid"
    stop_all
}

print_results() {
    echo
    echo "medpool bench: $(git -C "$REPO_DIR" rev-parse --short HEAD 2>/dev/null)$(git -C "$REPO_DIR" diff --quiet 2>/dev/null || echo '+dirty'), SIPp $(sipp -v 2>/dev/null | grep -o 'v[0-9.]*' | head -1), $(command -v kamailio >/dev/null && kamailio -v | head -1 | cut -d' ' -f2-3), $(nproc) cores; call hold ${HOLD_MS} ms, ${DUR} s of calls per run, ${REPEATS} repeat(s); load avg at end: $(load_avg)"
    echo "srv = the front (medpool, or Kamailio with all its processes): % of ONE core over the run, CPU seconds, CPU us per call."
    echo "PASS = 0 failed calls, every call created, and calls created at >= 95% of the target rate."
    echo
    ( echo "$RESULTS_HEADER"; cat "$WORK/results.tsv" ) | column -t -s $'\t'
    echo
    echo "Summary (key=value; also in $RESULTS_DIR/$STAMP.txt):"
    cat "$SUMMARY"
}

main() {
    local t
    # Kamailio is needed when it is a front, or for its dialog-module RSS run
    local kam=0
    case " $TARGETS " in *" kamailio "*) kam=1;; esac
    [ "$RSS" = 1 ] && [ "$KAM_RSS" = 1 ] && kam=1
    ensure_tools "$kam"
    ensure_medpool
    mkdir -p "$WORK" "$RESULTS_DIR"
    case " $TARGETS " in *" medpool_base "*)
        [ -x "${MEDPOOL_BASE_BIN:-}" ] || { log "TARGETS has medpool_base: set MEDPOOL_BASE_BIN to a medpool binary"; exit 1; }
        MEDPOOL_BASE_COPY=$WORK/medpool-base.bin; cp "$MEDPOOL_BASE_BIN" "$MEDPOOL_BASE_COPY"
        log "medpool_base binary: $MEDPOOL_BASE_BIN, sha256 $(sha256sum "$MEDPOOL_BASE_BIN" | cut -c1-16)"
        summary medpool_base.binary "$MEDPOOL_BASE_BIN" ;;
    esac
    if [ "$kam" = 1 ]; then
        write_configs   # bench/anchors/kamailio: kamailio.cfg + dispatcher.list in $WORK
        kamailio -c -f "$WORK/kamailio.cfg" >/dev/null 2>"$WORK/kamailio-check.log" || { cat "$WORK/kamailio-check.log"; exit 1; }
    fi
    ulimit -n 65536 2>/dev/null || true
    : > "$WORK/results.tsv"; : > "$SUMMARY"
    trap 'stop_all; exit 130' INT TERM
    trap 'stop_all' EXIT
    summary stamp "$STAMP"
    summary work_dir "$WORK"
    summary cores "$(nproc)"
    summary medpool_commit "$(git -C "$REPO_DIR" rev-parse HEAD 2>/dev/null)$(git -C "$REPO_DIR" diff --quiet 2>/dev/null || echo '+dirty')"
    summary medpool_args "$MEDPOOL_ARGS"
    summary params "RATES='$RATES' DUR=$DUR REPEATS=$REPEATS HOLD_MS=$HOLD_MS RSS_CALLS=$RSS_CALLS RSS_RATE=$RSS_RATE RSS_SETTLE=$RSS_SETTLE"
    summary load_at_start "$(load_avg)"
    log "work dir $WORK; targets: $TARGETS; rates: $RATES; ${DUR}s x ${REPEATS}"
    run_cps; sleep 3
    # CPU per call at the highest rate every target ran clean (same load for all)
    local common
    common=$(for t in $TARGETS; do awk -F= -v k="$t.max_clean_cps" '$1 == k {print $2}' "$SUMMARY"; done | sort -n | head -1)
    if [ -n "$common" ] && [ "$common" -gt 0 ]; then
        summary common_clean_cps "$common"
        for t in $TARGETS; do
            summary "$t.cpu_us_per_call_at_common" "$(mean_at "$t" "$common" 14)"
            summary "$t.cpu_s_per_1000_calls_at_common" "$(mean_at "$t" "$common" 14 | awk '{ if ($1 == "-") print "-"; else printf "%.3f\n", $1 / 1000 }')"
        done
    fi
    if [ "$RSS" = 1 ]; then
        case " $TARGETS " in *" medpool "*)
            hold_calls medpool medpool-hold ""; sleep 3
            # Again with T1 = 50 ms: transactions then linger 64*T1 = 3.2 s instead of 32 s after
            # their final answer, so the allocator's high-water mark holds far fewer transactions
            # and the figure is closer to the established dialog alone.
            [ "$RSS_SHORT_T1" = 1 ] && { hold_calls medpool medpool-hold-t1-50ms "" "--t1-ms 50"; sleep 3; } ;;
        esac
        [ "$KAM_RSS" = 1 ] && hold_calls kamailio kamailio-dialog-hold WITH_DIALOG
    fi
    summary load_at_end "$(load_avg)"
    print_results | tee "$WORK/table.txt"
    { cat "$SUMMARY"; echo; echo "# runs"; echo "$RESULTS_HEADER"; cat "$WORK/results.tsv"; } > "$RESULTS_DIR/$STAMP.txt"
    log "summary: $RESULTS_DIR/$STAMP.txt ; raw files: $WORK"
}

main "$@"
