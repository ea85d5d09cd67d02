#!/usr/bin/env bash
# Gateway death with Kamailio in front: the anchor half of bench/failover.sh (which runs this
# script after its medpool runs, with the same RATE, TOTAL, KILL_AT, RESTART_AT and FO_REPEATS).
#
# Same stage as the medpool runs: the bench caller (bench/sipp/uac.xml) at RATE cps for TOTAL s
# through Kamailio on 127.0.0.1:5060 to the two bench gateways; KILL_AT s after the caller starts,
# gateway 2 (127.0.0.3) gets SIGKILL; at RESTART_AT s (0: never) it is started again.
# Two variants (VARIANTS):
#   probe-only      the dispatcher's OPTIONS probes alone take the dead gateway out
#   failover-route  plus a failure_route (kamailio -A WITH_FAILOVER): a 408/5xx or a timeout
#                   marks the gateway inactive at once and the call goes on to the other one
# For each run one row: kill -> gateway marked down (and by what), the new INVITEs Kamailio still
# sent to the dead gateway and when the last one left, failed calls (new ones, whose INVITE
# failed, and established ones, whose BYE went to the dead gateway), their final codes, calls
# whose INVITE -> 200 took >= 200 ms, and restart -> marked up / first INVITE to it again.
#
# Usage:  bench/anchors/kamailio/failover.sh        (or through bench/failover.sh)
# Env:    RATE=200 TOTAL=40 KILL_AT=10 RESTART_AT=25 FO_REPEATS=3 VARIANTS WORK
# Output: $WORK/failover-table.txt (also on stdout). Everything it starts is stopped by PID.
set -u
RATE=${RATE:-200}
TOTAL=${TOTAL:-40}
KILL_AT=${KILL_AT:-10}
RESTART_AT=${RESTART_AT:-25}
FO_REPEATS=${FO_REPEATS:-3}
VARIANTS=${VARIANTS:-"probe-only failover-route"}
# shellcheck source=../../lib.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)/lib.sh"
TSV=$WORK/failover.tsv

run_variant() {  # $1 = variant, $2 = repeat
    local v=$1 rep=$2 tag="$1-r$2" upid t_start t_kill t_restart=0
    log "=== kamailio $tag: $RATE cps for ${TOTAL}s, kill gw2 at ${KILL_AT}s, restart at ${RESTART_AT}s"
    check_ports_free
    start_gateways "$tag" || { stop_all; return 1; }
    if [ "$v" = failover-route ]; then start_kamailio -A WITH_FAILOVER; else start_kamailio; fi
    wait_udp_listen "$PROXY_IP:$PROXY_PORT" && wait_gateways_up || { stop_all; return 1; }
    start_invite_capture "$WORK/$tag.pcap"
    t_start=$(date +%s.%N)
    sipp "$PROXY_IP:$PROXY_PORT" -sf "$UAC_XML" -i "$UAC_IP" -p "$UAC_PORT" \
        -r "$RATE" -rp 1000 -d "$HOLD_MS" -m $(( RATE * TOTAL )) -nostdin -buff_size "$SIPP_BUF" \
        -trace_stat -stf "$WORK/uac_$tag.csv" -fd 1 -trace_err -error_file "$WORK/uac_$tag.errors" \
        -timeout $(( TOTAL * 3 + 30 ))s -recv_timeout 10000 > "$WORK/uac_$tag.out" 2>&1 &
    upid=$!; STARTED_PIDS+=("$upid")
    sleep "$KILL_AT"
    t_kill=$(date +%s.%N)
    kill -KILL "$GW2_PID"; wait "$GW2_PID" 2>/dev/null; forget_pid "$GW2_PID"
    if [ "$RESTART_AT" -gt 0 ]; then
        sleep $(( RESTART_AT - KILL_AT ))
        t_restart=$(date +%s.%N)
        start_gw "$GW2_IP" "gw2-$tag-restarted"; GW2_PID=$LAST_PID
    fi
    wait "$upid"; forget_pid "$upid"
    stop_invite_capture
    stop_all
    cp "$WORK/kamailio.log" "$WORK/$tag.kamailio.log"
    invites_tsv "$WORK/$tag.pcap" > "$WORK/$tag.invites.tsv"
    python3 - "$tag" "$t_kill" "$t_restart" "$WORK/$tag.kamailio.log" "$WORK/$tag.invites.tsv" \
        "$WORK/uac_$tag.csv" "$WORK/uac_$tag.errors" "$GW2_IP:$GW_PORT" >> "$TSV" <<'PY'
import csv, re, sys
tag, t_kill, t_restart, klog, invites, ucsv, uerr, gw2 = sys.argv[1:]
t_kill, t_restart = float(t_kill), float(t_restart)
# Kamailio's log: the first dispatcher DS-DOWN / DS-UP of gateway 2 and the first failure_route
# retry after the kill (see the event routes and GW_FAILOVER in kamailio.cfg.in)
down = up = retried = None
for line in open(klog, errors='replace'):
    m = re.search(r'FAILOVER ([0-9.]+) ', line)
    if m and retried is None and float(m.group(1)) >= t_kill:
        retried = float(m.group(1))
    m = re.search(r'DS-(DOWN|UP) sip:(\S+) at ([0-9.]+)', line)
    if not m or m.group(2) != gw2:
        continue
    t = float(m.group(3))
    if m.group(1) == 'DOWN' and down is None and t >= t_kill:
        down = t
    if m.group(1) == 'UP' and up is None and t_restart and t >= t_restart:
        up = t
# the capture: the first INVITE of each call (called number) to gateway 2
first = {}
for line in open(invites):
    p = line.rstrip('\n').split('\t')
    if len(p) == 4 and p[2] == gw2:
        first.setdefault(p[3], float(p[0]))
sent = sorted(first.values())
dead_until = t_restart if t_restart else float('inf')
to_dead = [t for t in sent if t_kill < t < dead_until]
after_restart = [t for t in sent if t_restart and t >= t_restart]
# SIPp: the last statistics row and the error file. The caller's scenario receives the 200 of
# the INVITE at index 4: a call that failed at or before it is a new call, later an established one.
rows = list(csv.reader(open(ucsv), delimiter=';'))
d = dict(zip(rows[0], rows[-1]))
failed, ok = int(d['FailedCall(C)']), int(d['SuccessfulCall(C)'])
slow = int(d.get('ResponseTimeRepartition1_>=200', 0))
try:
    errors = open(uerr, errors='replace').read()
except FileNotFoundError:
    errors = ''
new_fail = est_fail = 0
codes = {}
for m in re.finditer(r"while expecting '[^']*' \(index (\d+)\), received '\S+ (\d+)", errors):
    if int(m.group(1)) <= 4:
        new_fail += 1
    else:
        est_fail += 1
    codes[m.group(2)] = codes.get(m.group(2), 0) + 1
marks = [(t, by) for t, by in ((down, 'probe'), (retried, 'failure_route')) if t is not None]
marked, by = min(marks) if marks else (None, '-')
f = lambda x: f'{x:.2f}' if x is not None else '-'
print('\t'.join([tag, f(marked - t_kill if marked else None), by,
                 f(to_dead[-1] - t_kill if to_dead else None), str(len(to_dead)),
                 str(failed), str(new_fail), str(est_fail),
                 ','.join(f'{k}x{c}' for k, c in sorted(codes.items())) or '-', str(slow), str(ok),
                 f(up - t_restart if up else None), f(after_restart[0] - t_restart if after_restart else None)]))
PY
    tail -n1 "$TSV" >&2
}

main() {
    ensure_tools 1
    write_configs
    : > "$TSV"
    trap 'stop_all; exit 130' INT TERM
    trap 'stop_all' EXIT
    local v r
    for v in $VARIANTS; do
        for r in $(seq "$FO_REPEATS"); do run_variant "$v" "$r"; sleep 3; done
    done
    {
    echo
    echo "Kamailio failover: $RATE cps, call hold ${HOLD_MS} ms, gateway 2 ($GW2_IP) killed (SIGKILL) at ${KILL_AT}s, restarted at ${RESTART_AT}s;"
    echo "dispatcher OPTIONS every ${PING_INTERVAL}s, down after 1 lost probe, tm fr_timer ${FR_TIMER_MS} ms. Times in seconds. Load avg at end: $(load_avg)"
    echo "new_fail = calls whose INVITE failed; est_fail = established calls whose BYE went to the dead gateway."
    echo
    ( printf 'run\tkill->marked_down\tmarked_by\tkill->last_new_INVITE_to_dead_gw\tnew_INVITEs_to_dead_gw\tfailed_calls\tnew_fail\test_fail\tfinal_codes\tINVITE->200_>=200ms\tok_calls\trestart->marked_up\trestart->first_INVITE\n'
      cat "$TSV" ) | column -t -s $'\t'
    } | tee "$WORK/failover-table.txt"
}

main "$@"
