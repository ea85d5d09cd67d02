# shellcheck shell=bash
# Helpers shared by bench/run.sh, bench/failover.sh and bench/anchors/kamailio/failover.sh
# (sourced, never run).
#
# The Kamailio anchor's configuration and its start/probe helpers live in bench/anchors/kamailio/
# (anchor.sh, sourced below); they use this file's list of started PIDs, so stop_all stops
# Kamailio too. Kamailio is only installed when a run measures it.

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd "$BENCH_DIR/.." && pwd)
STAMP=${STAMP:-$(date -u +%Y%m%dT%H%M%SZ)}
WORK=${WORK:-$(mktemp -d "/tmp/medpool-bench.$STAMP.XXXX")}
RESULTS_DIR=${RESULTS_DIR:-$BENCH_DIR/results}
MEDPOOL_BIN=${MEDPOOL_BIN:-$REPO_DIR/target/release/medpool}
HOLD_MS=${HOLD_MS:-1000}

# shellcheck source=anchors/kamailio/anchor.sh
source "$BENCH_DIR/anchors/kamailio/anchor.sh"   # write_configs, start_kamailio, wait_gateways_up, kam_rpc

# Addresses: Kamailio listens on 127.0.0.1:5060, the gateways on 127.0.0.2/.3:5060, the
# caller on 127.0.0.1:5070. medpool takes Kamailio's place when it is measured, so both front the
# very same two SIPp gateways with the same caller.
# (Each may be set in the environment, e.g. to run a smoke test on a loopback block of its own.)
PROXY_IP=${PROXY_IP:-127.0.0.1}; PROXY_PORT=${PROXY_PORT:-5060}
GW1_IP=${GW1_IP:-127.0.0.2};   GW2_IP=${GW2_IP:-127.0.0.3}; GW_PORT=${GW_PORT:-5060}
UAC_IP=${UAC_IP:-127.0.0.1};   UAC_PORT=${UAC_PORT:-5070}
SIPP_BUF=4194304
UAC_XML=$BENCH_DIR/sipp/uac.xml
UAS_XML=$BENCH_DIR/sipp/uas.xml
STARTED_PIDS=()

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
load_avg() { cut -d' ' -f1-3 /proc/loadavg; }

ensure_tools() {  # $1 = 1 when Kamailio is needed too
    local need=()
    command -v sipp >/dev/null || need+=(sip-tester)
    command -v dumpcap >/dev/null || need+=(tshark)
    command -v ss >/dev/null || need+=(iproute2)
    if [ ${#need[@]} -gt 0 ]; then
        log "installing: ${need[*]}"
        echo "wireshark-common wireshark-common/install-setuid boolean false" | debconf-set-selections
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null \
            || { log "apt-get install failed"; exit 1; }
    fi
    if [ "${1:-0}" = 1 ]; then ensure_kamailio; fi
}

ensure_medpool() {  # builds when missing; with BENCH_COPY_BIN=1 runs a private copy (a rebuild during the run cannot swap it)
    if [ ! -x "$MEDPOOL_BIN" ]; then
        log "building medpool (cargo build --release -p medpool)"
        (cd "$REPO_DIR" && cargo build --release -p medpool) || { log "build failed"; exit 1; }
    fi
    mkdir -p "$WORK"
    log "medpool binary: $MEDPOOL_BIN, sha256 $(sha256sum "$MEDPOOL_BIN" | cut -c1-16), built $(date -r "$MEDPOOL_BIN" '+%F %T %Z')"
    if [ "${BENCH_COPY_BIN:-0}" = 1 ]; then cp "$MEDPOOL_BIN" "$WORK/medpool.bin" && MEDPOOL_BIN=$WORK/medpool.bin; fi
}

check_ports_free() {
    local p
    for p in "$PROXY_IP:$PROXY_PORT" "$GW1_IP:$GW_PORT" "$GW2_IP:$GW_PORT" "$UAC_IP:$UAC_PORT"; do
        if ss -H -uln "( sport = :${p##*:} )" | awk '{print $4}' | grep -q -e "^${p}\$" -e "^\*:${p##*:}\$" -e "^0.0.0.0:${p##*:}\$"; then
            log "UDP $p is already in use; stop whatever holds it first"; exit 1
        fi
    done
}

# ------------------------------------------------------------------ process control
stop_pid() {   # stop one process we started: TERM, then KILL after 5 s
    local pid=$1 i
    kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null; return 0; }
    kill -TERM "$pid" 2>/dev/null
    for i in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
    return 0
}
forget_pid() { local p=$1 i; for i in "${!STARTED_PIDS[@]}"; do [ "${STARTED_PIDS[$i]}" = "$p" ] && unset 'STARTED_PIDS[i]'; done; }
stop_all() {
    local p
    for p in "${STARTED_PIDS[@]}"; do stop_pid "$p"; done
    STARTED_PIDS=()
}

wait_udp_listen() {  # $1 = ip:port
    local i
    for i in $(seq 100); do
        ss -H -uln | awk '{print $4}' | grep -qx "$1" && return 0
        sleep 0.1
    done
    log "nothing listens on udp $1"; return 1
}

start_gw() {  # $1 = ip, $2 = tag ; sets LAST_PID
    sipp -sf "$UAS_XML" -i "$1" -p "$GW_PORT" -aa -nostdin -buff_size "$SIPP_BUF" \
        -trace_stat -stf "$WORK/uas_$2.csv" -fd 1 > "$WORK/uas_$2.out" 2>&1 &
    LAST_PID=$!
    STARTED_PIDS+=("$LAST_PID")
}

start_gateways() {  # sets GW1_PID GW2_PID
    start_gw "$GW1_IP" "gw1-$1"; GW1_PID=$LAST_PID
    start_gw "$GW2_IP" "gw2-$1"; GW2_PID=$LAST_PID
    wait_udp_listen "$GW1_IP:$GW_PORT" && wait_udp_listen "$GW2_IP:$GW_PORT"
}

# medpool configuration: the PBX (any port of 127.0.0.1) calls out over two equal gateways.
# $1 = output file; $2.. = extra gateway keys (one "key = value" per argument)
write_medpool_config() {
    local out=$1; shift
    local extra="" kv
    for kv in "$@"; do extra+="$kv"$'\n'; done
    cat > "$out" <<EOF
# Generated by bench/lib.sh (write_medpool_config).
# media = "bypass": these runs measure signalling (SIPp sends no RTP; a relayed call would hold
# four UDP ports and be hung up by the media timeout); bench/media.sh measures the relay.
[node]
max_calls = 100000
max_tries = 3
unknown_source = "reject"
local_calls = ${LOCAL_CALLS:-true}

[[trunk]]
name = "pbx"
address = "$UAC_IP"
side = "internal"
match_any_port = true
usages = ["outbound"]
media = "bypass"

[[trunk]]
name = "gw1"
address = "$GW1_IP"
port = $GW_PORT
transport = "udp"
side = "gateway"
usages = ["inbound"]
media = "bypass"
$extra
[[trunk]]
name = "gw2"
address = "$GW2_IP"
port = $GW_PORT
transport = "udp"
side = "gateway"
usages = ["inbound"]
media = "bypass"
$extra
[[route]]
name = "to-gateways"
pattern = '.*'
usage = "outbound"
trunks = [
    { trunk = "gw1", priority = 1 },
    { trunk = "gw2", priority = 1 },
]

[[route]]
name = "from-pstn"
pattern = '.*'
usage = "inbound"
trunks = ["pbx"]
EOF
}

# start_medpool <config> <tag> <log filter> [extra args...]; sets LAST_PID; waits for "medpool ready"
start_medpool() {
    local cfg=$1 tag=$2 lvl=$3; shift 3
    rm -rf "$WORK/mpdata-$tag"
    # shellcheck disable=SC2086
    LD_PRELOAD="${MEDPOOL_PRELOAD:-}" "$MEDPOOL_BIN" serve --config "$cfg" --sip-listen "$PROXY_IP:$PROXY_PORT" --data-dir "$WORK/mpdata-$tag" \
        --log "$lvl" --shutdown-grace 2 ${MEDPOOL_ARGS:-} "$@" > "$WORK/medpool-$tag.log" 2>&1 &
    LAST_PID=$!
    STARTED_PIDS+=("$LAST_PID")
    local i
    for i in $(seq 100); do
        grep -q "medpool ready" "$WORK/medpool-$tag.log" 2>/dev/null && return 0
        kill -0 "$LAST_PID" 2>/dev/null || break
        sleep 0.1
    done
    log "medpool did not start:"; cat "$WORK/medpool-$tag.log" >&2; return 1
}

# build_bufshim : compiles bench/sipbuf-shim.c into $WORK (diagnostic target medpool_bigbuf); prints its path
build_bufshim() {
    [ -s "$WORK/sipbuf-shim.so" ] || cc -shared -fPIC -O2 -o "$WORK/sipbuf-shim.so" "$BENCH_DIR/sipbuf-shim.c" -ldl \
        || { log "cannot build the socket-buffer shim (needs cc)"; return 1; }
    echo "$WORK/sipbuf-shim.so"
}

# sock_mem <ip:port> : "rcvbuf=<bytes> drops=<datagrams dropped by the kernel>" of the UDP socket
sock_mem() {
    ss -uamn 2>/dev/null | awk -v a="$1" '$4 == a || $5 == a { hit = 1; next } hit && /skmem/ {
        match($0, /rb[0-9]+/); rb = substr($0, RSTART + 2, RLENGTH - 2)
        match($0, /d[0-9]+\)/); d = substr($0, RSTART + 1, RLENGTH - 2)
        print "rcvbuf=" rb " drops=" d; exit }'
}

# ------------------------------------------------------------------ accounting
proc_ticks() {   # CPU ticks (utime+stime, all threads) of PIDs and their children
    local pids=() p t=0
    for p in "$@"; do pids+=("$p"); pids+=($(ps -o pid= --ppid "$p" 2>/dev/null)); done
    for p in "${pids[@]}"; do
        [ -r "/proc/$p/stat" ] || continue
        t=$(( t + $(awk '{sub(/^.*\) /, ""); print $12 + $13}' "/proc/$p/stat") ))
    done
    echo "$t"
}
machine_cpu_ns() {   # whole-VM CPU time in ns (cpuacct is the scheduler's exact count; /proc/stat is sampled
                     # per tick and misses short bursts on a tickless VM, so it is the last resort)
    if [ -r /sys/fs/cgroup/cpuacct/cpuacct.usage ]; then cat /sys/fs/cgroup/cpuacct/cpuacct.usage
    elif [ -r /sys/fs/cgroup/cpu.stat ]; then awk '/^usage_usec/{print $2*1000}' /sys/fs/cgroup/cpu.stat
    else awk -v hz="$(getconf CLK_TCK)" '/^cpu /{printf "%.0f\n", ($2+$3+$4+$7+$8+$9)*1e9/hz}' /proc/stat; fi
}
cpu_pressure_us() { awk '/^some/{sub("total=","",$5); print $5}' /proc/pressure/cpu 2>/dev/null || echo 0; }
rss_kib() {  # resident set of PIDs and their children (kB), from /proc/PID/status
    local pids=() p t=0
    for p in "$@"; do pids+=("$p"); pids+=($(ps -o pid= --ppid "$p" 2>/dev/null)); done
    for p in "${pids[@]}"; do
        [ -r "/proc/$p/status" ] || continue
        t=$(( t + $(awk '/^VmRSS:/{print $2}' "/proc/$p/status") ))
    done
    echo "$t"
}
pss_kib() {  # proportional set size (shared pages split between processes) of PIDs and children
    local pids=() p t=0
    for p in "$@"; do pids+=("$p"); pids+=($(ps -o pid= --ppid "$p" 2>/dev/null)); done
    for p in "${pids[@]}"; do
        [ -r "/proc/$p/smaps_rollup" ] || continue
        t=$(( t + $(awk '/^Pss:/{print $2}' "/proc/$p/smaps_rollup") ))
    done
    echo "$t"
}

# ------------------------------------------------------------------ one load run
# run_load <target-name> <rate> <tag> <server pid> <uas pids...>
# SIPp caller ($UAC_XML) at <rate> for DUR s (calls of HOLD_MS ms) towards $PROXY_IP:$PROXY_PORT.
# Appends one TSV line to $WORK/results.tsv (columns: see print_results). PASS = 0 failed calls,
# every call created, calls created at >= 95% of the target rate (the anchor's criterion).
run_load() {
    local target=$1 rate=$2 tag=$3 spid=$4; shift 4
    local uas_pids=("$@") n=$(( rate * DUR )) hz
    hz=$(getconf CLK_TCK)
    local s0 s1 u0 u1 m0 m1 mt0 mt1 t0 t1 rc
    s0=$(proc_ticks "$spid"); u0=$(proc_ticks "${uas_pids[@]}")
    m0=$(machine_cpu_ns); mt0=$(cpu_pressure_us)
    t0=$(date +%s.%N)
    local TIMEFORMAT='%U %S'
    { time sipp "$PROXY_IP:$PROXY_PORT" -sf "$UAC_XML" -i "$UAC_IP" -p "$UAC_PORT" \
          -r "$rate" -rp 1000 -d "$HOLD_MS" -m "$n" -nostdin -buff_size "$SIPP_BUF" \
          -trace_stat -stf "$WORK/uac_$tag.csv" -fd 1 \
          -trace_err -error_file "$WORK/uac_$tag.errors" \
          -timeout $(( DUR * 3 + 30 ))s -recv_timeout 10000 \
          > "$WORK/uac_$tag.out" 2>&1 ; } 2> "$WORK/uac_$tag.time"
    rc=$?
    t1=$(date +%s.%N)
    s1=$(proc_ticks "$spid"); u1=$(proc_ticks "${uas_pids[@]}")
    m1=$(machine_cpu_ns); mt1=$(cpu_pressure_us)
    python3 - "$WORK/uac_$tag.csv" "$WORK/uac_$tag.time" "$rate" "$n" "$t0" "$t1" "$hz" \
        "$s0" "$s1" "$u0" "$u1" "$m0" "$m1" "$mt0" "$mt1" "$rc" "$tag" "$target" >> "$WORK/results.tsv" <<'PY'
import csv, sys
(f, tf, rate, n, t0, t1, hz, s0, s1, u0, u1, m0, m1, mt0, mt1, rc, tag, target) = sys.argv[1:]
rate, n, hz = int(rate), int(n), int(hz)
wall = float(t1) - float(t0)
rows = list(csv.reader(open(f), delimiter=';'))
h = rows[0]
def epoch(s): return float(s.split('\t')[-1])
def ms(s):
    hh, mm, ss, us = s.split(':'); return (int(hh)*3600 + int(mm)*60 + int(ss))*1000 + int(us)/1000
d = dict(zip(h, rows[-1]))
start = epoch(d['StartTime'])
created = int(d['TotalCallCreated'])
tc, prev = None, (start, 0)
for r in rows[1:]:
    x = dict(zip(h, r)); c = int(x['TotalCallCreated']); t = epoch(x['CurrentTime'])
    if c >= created:
        tc = prev[0] + (t - prev[0]) * (created - prev[1]) / max(1, c - prev[1]) - start
        break
    prev = (t, c)
achieved = created / tc if tc else 0.0
ut = open(tf).read().split()
uac_cpu = (float(ut[-2]) + float(ut[-1])) / wall * 100 if len(ut) >= 2 else float('nan')
srv_s = (int(s1) - int(s0)) / hz
srv_cpu = srv_s / wall * 100
uas_cpu = (int(u1) - int(u0)) / hz / wall * 100
mach = (int(m1) - int(m0)) / 1e9 / wall * 100
psi = (int(mt1) - int(mt0)) / 1e6 / wall * 100
failed = int(d['FailedCall(C)']); ok = int(d['SuccessfulCall(C)'])
ret = int(d['Retransmissions(C)'])
rtd = ms(d['ResponseTime1(C)'])
slow = sum(int(d[k]) for k in h if k.startswith('ResponseTimeRepartition1_') and k != 'ResponseTimeRepartition1_<10')
vslow = sum(int(d[k]) for k in h if k.startswith('ResponseTimeRepartition1_') and k not in
            ('ResponseTimeRepartition1_<10', 'ResponseTimeRepartition1_<20', 'ResponseTimeRepartition1_<30',
             'ResponseTimeRepartition1_<40', 'ResponseTimeRepartition1_<50', 'ResponseTimeRepartition1_<100',
             'ResponseTimeRepartition1_<150', 'ResponseTimeRepartition1_<200'))
passed = failed == 0 and created == n and achieved >= 0.95 * rate
print('\t'.join(str(v) for v in [target, tag, rate, n, ok, failed, ret, f'{achieved:.0f}', f'{rtd:.1f}', slow, vslow,
      f'{srv_cpu:.0f}', f'{srv_s:.2f}', f'{(srv_s / max(1, created) * 1e6):.0f}', f'{uac_cpu:.0f}', f'{uas_cpu:.0f}',
      f'{mach:.0f}', f'{max(0.0, mach - srv_cpu - uac_cpu - uas_cpu):.0f}', f'{psi:.0f}', f'{wall:.1f}', rc,
      'PASS' if passed else 'FAIL']))
PY
    tail -n1 "$WORK/results.tsv" | awk -F'\t' '{printf "    %-8s %-18s target %5d cps: ok %6d failed %6d retrans %6d achieved %5d cps  rtd %6s ms  srv %3s%% (%4s us/call) uac %3s%% uas %3s%% vm %3s%%  %s\n", $1,$2,$3,$5,$6,$7,$8,$9,$12,$14,$15,$16,$17,$22}' >&2
}
RESULTS_HEADER=$'target\trun\ttarget_cps\tcalls\tok\tfailed\tretrans\tachieved_cps\tavg_inv200_ms\tinv200_>=10ms\tinv200_>=200ms\tsrv_cpu%\tsrv_cpu_s\tsrv_cpu_us/call\tuac_cpu%\tuas_cpu%\tvm_cpu%\tother_cpu%\tcpu_wait%\twall_s\tsipp_rc\tverdict'

# ------------------------------------------------------------------ INVITE captures
# start_invite_capture <file> : dumpcap on lo, only UDP datagrams whose payload starts with
# "INVI" (every INVITE request, retransmissions included), first 256 bytes; sets CAP_PID.
start_invite_capture() {
    rm -f "$1"
    dumpcap -q -P -i lo -s 256 -B 64 -f "udp and udp[8:4] = 0x494e5649" -w "$1" > "$1.log" 2>&1 &
    CAP_PID=$!
    STARTED_PIDS+=("$CAP_PID")
    local i
    for i in $(seq 50); do [ -s "$1" ] && break; sleep 0.1; done
    sleep 0.5
}
stop_invite_capture() { sleep 1; stop_pid "$CAP_PID"; forget_pid "$CAP_PID"; }

# invites_tsv <pcap> : prints "epoch  src_ip:port  dst_ip:port  r-uri-user" per captured INVITE
# (reads the libpcap file itself: no tshark dissector needed, and fast for 100,000s of packets)
invites_tsv() {
    python3 - "$1" <<'PY'
import struct, sys, re
data = open(sys.argv[1], 'rb').read()
magic = struct.unpack('<I', data[:4])[0]
if magic in (0xa1b2c3d4, 0xa1b23c4d): e = '<'
else: e = '>'; magic = struct.unpack('>I', data[:4])[0]
nano = magic == 0xa1b23c4d
linktype = struct.unpack(e + 'I', data[20:24])[0]
off = 24
rx = re.compile(rb'^INVITE sip:([^@ ;>]*)@')
out = sys.stdout
while off + 16 <= len(data):
    sec, frac, incl, orig = struct.unpack(e + 'IIII', data[off:off + 16]); off += 16
    pkt = data[off:off + incl]; off += incl
    if linktype == 1: ip = pkt[14:]          # Ethernet (Linux lo)
    elif linktype == 113: ip = pkt[16:]      # Linux cooked
    elif linktype == 276: ip = pkt[20:]      # Linux cooked v2
    else: ip = pkt
    if len(ip) < 28 or ip[0] >> 4 != 4: continue
    ihl = (ip[0] & 15) * 4
    src = '.'.join(map(str, ip[12:16])); dst = '.'.join(map(str, ip[16:20]))
    sp, dp = struct.unpack('>HH', ip[ihl:ihl + 4])
    m = rx.match(ip[ihl + 8:])
    if not m: continue
    t = sec + frac / (1e9 if nano else 1e6)
    out.write(f'{t:.6f}\t{src}:{sp}\t{dst}:{dp}\t{m.group(1).decode(errors="replace")}\n')
PY
}

# pdd_stats <invites.tsv> <front ip:port> : added post-dial delay = first INVITE to a gateway -
# first INVITE to the front (proxy/B2BUA) of the same called number; prints key=value lines (ms)
pdd_stats() {
    python3 - "$1" "$2" "$GW1_IP:$GW_PORT" "$GW2_IP:$GW_PORT" <<'PY'
import math, sys
f, front, g1, g2 = sys.argv[1:]
a, b = {}, {}
for line in open(f):
    p = line.rstrip('\n').split('\t')
    if len(p) < 4: continue
    t, src, dst, user = float(p[0]), p[1], p[2], p[3]
    if dst == front: a.setdefault(user, t)
    # the first INVITE out at or after the INVITE in: the call number restarts at 1 with every SIPp
    # run, and a failed call of an earlier run may still be retransmitted to a gateway
    elif dst in (g1, g2) and user in a and t >= a[user]: b.setdefault(user, t)
d = sorted((b[u] - a[u]) * 1000 for u in a if u in b)
def pct(q):  # nearest rank
    if not d: return float('nan')
    return d[min(len(d), max(1, math.ceil(q / 100 * len(d)))) - 1]
print(f'pdd_calls_in={len(a)}')
print(f'pdd_matched={len(d)}')
print(f'pdd_unmatched={len(a) - len(d)}')
for q in (50, 90, 99, 99.9):
    print(f'pdd_p{str(q).replace(".", "_")}_ms={pct(q):.3f}')
print(f'pdd_max_ms={(d[-1] if d else float("nan")):.3f}')
print(f'pdd_mean_ms={(sum(d) / len(d) if d else float("nan")):.3f}')
PY
}
