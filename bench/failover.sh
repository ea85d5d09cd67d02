#!/usr/bin/env bash
# Gateway-death benchmark: medpool, then the Kamailio anchor (bench/anchors/kamailio/failover.sh)
# in the same run.
#
# The bench/run.sh setup (SIPp caller -> medpool on 127.0.0.1:5060 -> SIPp gateways on
# 127.0.0.2:5060 and 127.0.0.3:5060) at RATE cps for TOTAL s; KILL_AT s after the caller starts
# gateway 2 (127.0.0.3) is killed with SIGKILL; RESTART_AT s after the start it is started again.
# medpool's gateways here: OPTIONS every 500 ms, down after 2 failed probes, up after 2 good
# ones, fast failover after 1000 ms without a provisional answer (see BENCHMARKS.md).
#
# Measured per run, from medpool's log (--log info --log-format json) and a dumpcap capture on lo
# of every INVITE and of every 200 sent to the caller:
#   kill -> "gateway down" gw2          restart -> "gateway up" gw2
#   new INVITEs to the dead gateway (calls whose FIRST leg-B INVITE went to gw2 between kill and
#   restart) and kill -> the last of them; how many of those calls were failed over to gw1
#   failed calls (SIPp), split into new calls (no 200 for the INVITE) and established calls (the
#   BYE of a call set up on gw2 before the kill); final codes from SIPp's error file
#   delayed calls: INVITE -> 200 at the caller >= 200 ms (the anchor's measure) and >= DELAY_MS
#   restart -> first new INVITE to gw2
# Then (ANCHOR_FAILOVER=1) bench/anchors/kamailio/failover.sh with the same
# RATE/TOTAL/KILL_AT/RESTART_AT and FO_REPEATS: Kamailio with dispatcher probing alone, and with
# a failure_route that retries on the next gateway.
#
# Usage:  bench/failover.sh
#         FO_REPEATS=1 ANCHOR_FAILOVER=0 bench/failover.sh       (one medpool run only)
# Env:    RATE=200 TOTAL=40 KILL_AT=10 RESTART_AT=25 FO_REPEATS=3 DELAY_MS=500 ANCHOR_FAILOVER=1
#         OPTIONS_MS=500 DOWN_AFTER=2 UP_AFTER=2 FAST_FAILOVER_MS=1000 MEDPOOL_BIN MEDPOOL_ARGS
# Output: a table on stdout, bench/results/<UTC timestamp>-failover.txt, raw files in $WORK.
# Everything it starts is stopped by PID on exit, also on Ctrl-C.
set -u
RATE=${RATE:-200}
TOTAL=${TOTAL:-40}
KILL_AT=${KILL_AT:-10}
RESTART_AT=${RESTART_AT:-25}
FO_REPEATS=${FO_REPEATS:-3}
DELAY_MS=${DELAY_MS:-500}
ANCHOR_FAILOVER=${ANCHOR_FAILOVER:-1}
OPTIONS_MS=${OPTIONS_MS:-500}
DOWN_AFTER=${DOWN_AFTER:-2}
UP_AFTER=${UP_AFTER:-2}
FAST_FAILOVER_MS=${FAST_FAILOVER_MS:-1000}
export RATE TOTAL KILL_AT RESTART_AT FO_REPEATS

BENCH_COPY_BIN=1   # run a copy of the binary: a rebuild by someone else cannot swap it mid-run
# shellcheck source=lib.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib.sh"

FO_TSV=$WORK/failover-medpool.tsv

run_medpool_failover() {  # $1 = repeat
    local rep=$1 tag="medpool-r$1" mpid upid t_start t_kill t_restart=0
    log "=== $tag: $RATE cps for ${TOTAL}s, kill gw2 at ${KILL_AT}s, restart at ${RESTART_AT}s (load: $(load_avg))"
    check_ports_free
    start_gateways "$tag" || { stop_all; return 1; }
    write_medpool_config "$WORK/medpool-failover.toml" "options_interval_ms = $OPTIONS_MS" "down_after = $DOWN_AFTER" \
        "up_after = $UP_AFTER" "fast_failover_ms = $FAST_FAILOVER_MS" "failover_codes = [408, 503, 504]"
    start_medpool "$WORK/medpool-failover.toml" "$tag" info --log-format json || { stop_all; return 1; }
    mpid=$LAST_PID
    sleep 3
    # every INVITE, and every "SIP/2.0 200 " sent to the caller's port
    rm -f "$WORK/$tag.pcap"
    dumpcap -q -P -i lo -s 1500 -B 64 \
        -f "udp and (udp[8:4] = 0x494e5649 or (dst port $UAC_PORT and udp[8:4] = 0x5349502f and udp[16:4] = 0x32303020))" \
        -w "$WORK/$tag.pcap" > "$WORK/$tag.dumpcap.log" 2>&1 &
    CAP_PID=$!; STARTED_PIDS+=("$CAP_PID")
    for _ in $(seq 50); do [ -s "$WORK/$tag.pcap" ] && break; sleep 0.1; done
    sleep 0.5
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
    sleep 1
    stop_pid "$CAP_PID"; forget_pid "$CAP_PID"
    stop_all
    python3 - "$rep" "$t_start" "$t_kill" "$t_restart" "$WORK/medpool-$tag.log" "$WORK/$tag.pcap" \
        "$WORK/uac_$tag.csv" "$WORK/uac_$tag.errors" "$PROXY_IP:$PROXY_PORT" "$GW1_IP:$GW_PORT" "$GW2_IP:$GW_PORT" \
        "$DELAY_MS" "$WORK/$tag.calls.tsv" "$UAC_IP:$UAC_PORT" >> "$FO_TSV" <<'PY'
import csv, json, re, struct, sys
from datetime import datetime
(rep, t_start, t_kill, t_restart, mlog, pcap, ucsv, uerr, front, g1, g2, delay_ms, calls_out, caller) = sys.argv[1:]
t_start, t_kill, t_restart, delay_ms = float(t_start), float(t_kill), float(t_restart), float(delay_ms)
# ---- medpool log: gateway down/up for gw2
down = up = None
downs = ups = 0
for line in open(mlog, errors='replace'):
    if not line.startswith('{'): continue
    try: j = json.loads(line)
    except ValueError: continue
    f = j.get('fields', {})
    if f.get('gateway') != 'gw2': continue
    t = datetime.fromisoformat(j['timestamp'].replace('Z', '+00:00')).timestamp()
    if f.get('message') == 'gateway down' and t >= t_kill:
        downs += 1
        if down is None: down = t
    if f.get('message') == 'gateway up' and t_restart and t >= t_restart:
        ups += 1
        if up is None: up = t
# ---- capture: INVITEs (leg A to the front, leg B to a gateway) and 200s to the caller
data = open(pcap, 'rb').read()
magic = struct.unpack('<I', data[:4])[0]
e = '<' if magic in (0xa1b2c3d4, 0xa1b23c4d) else '>'
nano = struct.unpack(e + 'I', data[:4])[0] == 0xa1b23c4d
link = struct.unpack(e + 'I', data[20:24])[0]
skip = {1: 14, 113: 16, 276: 20}.get(link, 0)
off = 24
inv_a, inv_b, ok200 = {}, {}, {}
rx_inv = re.compile(rb'^INVITE sip:([^@ ;>]*)@')
rx_to = re.compile(rb'\r\n(?:To|t)\s*:[^\r\n]*?sip:([^@ ;>]*)@', re.I)
rx_cseq = re.compile(rb'\r\nCSeq\s*:\s*\d+\s+(\w+)', re.I)
while off + 16 <= len(data):
    sec, frac, incl, orig = struct.unpack(e + 'IIII', data[off:off + 16]); off += 16
    ip = data[off + skip:off + incl]; off += incl
    if len(ip) < 28 or ip[0] >> 4 != 4: continue
    ihl = (ip[0] & 15) * 4
    dst = '.'.join(map(str, ip[16:20])) + ':' + str(struct.unpack('>H', ip[ihl + 2:ihl + 4])[0])
    pl = ip[ihl + 8:]
    t = sec + frac / (1e9 if nano else 1e6)
    m = rx_inv.match(pl)
    if m:
        u = m.group(1).decode()
        if dst == front: inv_a.setdefault(u, t)
        elif dst in (g1, g2):
            l = inv_b.setdefault(u, [])
            if all(x[1] != dst for x in l): l.append((t, dst))   # gateways tried, in order (no retransmissions)
        continue
    if dst == caller and pl.startswith(b'SIP/2.0 200'):
        c = rx_cseq.search(pl); m = rx_to.search(pl)
        if c and m and c.group(1) == b'INVITE': ok200.setdefault(m.group(1).decode(), t)
end_dead = t_restart if t_restart else float('inf')
first_b = {u: l[0] for u, l in inv_b.items()}
dead_first = sorted((t, u) for u, (t, d) in first_b.items() if d == g2 and t_kill < t < end_dead)
failed_over = [u for t, u in dead_first if any(d == g1 for _, d in inv_b[u])]
after = sorted(t for u, (t, d) in first_b.items() if d == g2 and t_restart and t >= t_restart)
delays = {u: (ok200[u] - inv_a[u]) * 1000 for u in inv_a if u in ok200}
no200 = [u for u in inv_a if u not in ok200]
d200 = sum(1 for v in delays.values() if v >= 200)
dlong = sum(1 for v in delays.values() if v >= delay_ms)
with open(calls_out, 'w') as fo:
    fo.write('user\tinvite_in\tfirst_200_ms\tleg_b_attempts\n')
    for u in sorted(inv_a, key=lambda x: inv_a[x]):
        fo.write(f"{u}\t{inv_a[u]:.6f}\t{delays.get(u, float('nan')):.1f}\t{' '.join(d for _, d in inv_b.get(u, []))}\n")
# ---- SIPp
rows = list(csv.reader(open(ucsv), delimiter=';'))
d = dict(zip(rows[0], rows[-1]))
failed, ok = int(d['FailedCall(C)']), int(d['SuccessfulCall(C)'])
codes = {}
try: txt = open(uerr, errors='replace').read()
except FileNotFoundError: txt = ''
for m in re.finditer(r"while expecting '([^']*)' \(index (\d+)\), received '(\S+) (\d+)", txt):
    codes[m.group(4)] = codes.get(m.group(4), 0) + 1
for m in re.finditer(r"receive timeout on message [^:]*:(\d+)", txt):
    k = 'timeout@' + m.group(1); codes[k] = codes.get(k, 0) + 1
k = len(re.findall(r"Aborting call on UDP retransmission timeout", txt))
if k: codes['retrans-timeout'] = k
new_fail = len(no200)
est_fail = max(0, failed - new_fail)
f = lambda x: f'{x:.2f}' if x is not None else '-'
print('\t'.join([f'medpool-r{rep}', f(down - t_kill if down else None), str(downs),
                 f(dead_first[-1][0] - t_kill if dead_first else None), str(len(dead_first)), str(len(failed_over)),
                 str(failed), str(new_fail), str(est_fail), ','.join(f'{k}x{c}' for k, c in sorted(codes.items())) or '-',
                 str(d200), str(dlong), f"{max(delays.values()) if delays else 0:.0f}", str(ok),
                 f(up - t_restart if up else None), f(after[0] - t_restart if after else None)]))
PY
    tail -n1 "$FO_TSV" >&2
}

FO_HEADER=$'run\tkill->marked_down_s\tdown_events\tkill->last_new_INVITE_to_dead_gw_s\tnew_INVITEs_to_dead_gw\tof_them_failed_over\tfailed_calls\tnew_fail\test_fail\tfinal_codes\tINVITE->200_>=200ms\tINVITE->200_>=DELAY_MS\tmax_INVITE->200_ms\tok_calls\trestart->marked_up_s\trestart->first_INVITE_s'

main() {
    ensure_tools "$ANCHOR_FAILOVER"
    ensure_medpool
    mkdir -p "$WORK" "$RESULTS_DIR"
    ulimit -n 65536 2>/dev/null || true
    : > "$FO_TSV"
    trap 'stop_all; exit 130' INT TERM
    trap 'stop_all' EXIT
    local load0 r out=$RESULTS_DIR/$STAMP-failover.txt
    load0=$(load_avg)
    log "work dir $WORK"
    for r in $(seq "$FO_REPEATS"); do run_medpool_failover "$r"; sleep 3; done
    local load_mp
    load_mp=$(load_avg)
    {
    echo "medpool failover bench: $(git -C "$REPO_DIR" rev-parse --short HEAD 2>/dev/null)$(git -C "$REPO_DIR" diff --quiet 2>/dev/null || echo '+dirty'), $(nproc) cores"
    echo "$RATE cps, call hold ${HOLD_MS} ms, gateway 2 ($GW2_IP) killed (SIGKILL) at ${KILL_AT}s, restarted at ${RESTART_AT}s; medpool gateways:"
    echo "options_interval_ms=$OPTIONS_MS down_after=$DOWN_AFTER up_after=$UP_AFTER fast_failover_ms=$FAST_FAILOVER_MS failover_codes=408,503,504; DELAY_MS=$DELAY_MS."
    echo "Load avg at start: $load0; after the medpool runs: $load_mp."
    echo "new_fail = calls whose INVITE never got a 200; est_fail = other failed calls (established on the dead gateway, BYE lost)."
    echo "new_INVITEs_to_dead_gw = calls whose first leg-B INVITE went to the dead gateway while it was dead; of_them_failed_over = retried on gw1."
    echo
    ( echo "$FO_HEADER"; cat "$FO_TSV" ) | column -t -s $'\t'
    } | tee "$out"
    if [ "$ANCHOR_FAILOVER" = 1 ]; then
        log "=== the anchor: $ANCHOR_DIR/failover.sh (FO_REPEATS=$FO_REPEATS)"
        mkdir -p "$WORK/anchor-failover"
        trap - EXIT
        WORK="$WORK/anchor-failover" bash "$ANCHOR_DIR/failover.sh" > "$WORK/anchor-failover.out" 2> "$WORK/anchor-failover.err"
        trap 'stop_all' EXIT
        { echo; echo "Kamailio anchor (bench/anchors/kamailio/failover.sh, same run):"; cat "$WORK/anchor-failover/failover-table.txt"; } | tee -a "$out"
    fi
    echo "load avg at end: $(load_avg)" | tee -a "$out"
    log "results: $out ; raw files: $WORK"
}

main "$@"
