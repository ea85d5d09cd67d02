#!/usr/bin/env bash
# SIP over TLS: calls per second through medpool and through the Kamailio anchor with its tls module, in
# the same run, the CPU per call of each front, and the cost of a TLS handshake.
#
#   tls-load (the PBX, mutual TLS, 127.0.0.1) ──TLS──► front ──UDP──► two SIPp gateways (127.0.0.2/.3:5060)
#     Kamailio 127.0.0.1: TLS 5061, UDP 5060 (bench/anchors/kamailio, -A WITH_TLS, kamailio-tls.cfg.in)
#     medpool  127.0.0.1: TLS 5063, UDP 5062 (pbx trunk transport = "tls", its client certificate required)
#
# The load generator is node/simpeer's `tls-load` (Debian's SIPp is built without TLS): INVITE → 200 → ACK →
# HOLD_MS → BYE → 200 per call, at a fixed rate, over TLS with a client certificate. Two connection modes:
#   kept  every call over CONNS connections opened before the run (a trunk's persistent connections)
#   new   a new TCP+TLS connection per call, closed after the BYE (a full handshake per call: session
#         resumption off), as many short-lived clients would do
# Certificates: a CA, the fronts' certificate (SAN IP 127.0.0.1, DNS front.bench) and the PBX's client
# certificate (DNS pbx.bench), made with openssl into $WORK/tls at the start.
#
# For each MODE, each rate in RATES and each of REPEATS repeats, the fronts take turns (order reversed every
# other repeat) as in bench/run.sh; all fronts and gateways are up during the whole sweep. A run PASSes with
# 0 failed calls and calls started at >= 95 % of the rate; a front stops in a mode at the first rate where
# every repeat failed. Per run: the front's CPU (utime+stime of all its threads/processes, /proc/PID/stat,
# before/after) per call, the generator's CPU, handshake and INVITE→200 times (p50/p99).
# Summary: each front's highest clean rate per mode; CPU µs per call at the highest rate every front ran clean
# in both modes; the cost of a handshake on each front = CPU per call (new) - CPU per call (kept) at that rate;
# the target TLS CPS(medpool) >= TLS CPS(Kamailio), judged in each mode.
#
# Usage:  bench/tls.sh                                  (full run: about 15-25 min)
#         RATES="50 100" DUR=5 REPEATS=1 bench/tls.sh   (smoke run)
# Env:    RATES="100 200 300 400 600 800 1000 1200" DUR=15 REPEATS=2 HOLD_MS=1000 MODES="kept new" CONNS=4
#         TARGETS="medpool kamailio" MEDPOOL_BIN TLS_LOAD_BIN MEDPOOL_LOG=warn WORK RESULTS_DIR; Kamailio's:
#         KAM_CHILDREN (UDP workers) KAM_TCP_CHILDREN (TCP/TLS workers, default 1: see below) KAM_SHM_MB
#         KAM_TLS_PORT KAM_TCP_MAX
# Kamailio's TLS workers: Debian 12's Kamailio 5.6.3 with OpenSSL 3.0 frees OpenSSL's shared memory
# twice when more than one TCP worker runs TLS ("qm_free(): BUG: freeing already freed pointer ...
# tls_init.c: ser_free", Kamailio issue #3791; fixed upstream by `tls_threads_mode` in 5.7.5/5.8):
# with 2 or 4 workers it died within seconds at 100-200 cps here. One worker is the only setting of
# that version that stays up, so it is the default; the anchor's TLS then runs on one core.
# Installs what it lacks (SIPp, Kamailio and kamailio-tls-modules, openssl); builds medpool and tls-load in
# release when missing. Output: a table, bench/results/tls-<UTC stamp>.txt, raw files in $WORK. Everything it
# starts is stopped by PID on exit, also on Ctrl-C.
set -u
RATES=${RATES:-"100 200 300 400 600 800 1000 1200"}
DUR=${DUR:-15}
REPEATS=${REPEATS:-2}
HOLD_MS=${HOLD_MS:-1000}
MODES=${MODES:-"kept new"}
CONNS=${CONNS:-4}
TARGETS=${TARGETS:-"medpool kamailio"}
KAM_TCP_CHILDREN=${KAM_TCP_CHILDREN:-1}
MEDPOOL_LOG=${MEDPOOL_LOG:-warn}
MEDPOOL_ARGS=${MEDPOOL_ARGS:-"--max-transactions 2000000"}
export MEDPOOL_ARGS

BENCH_COPY_BIN=1
# shellcheck source=lib.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib.sh"
TLS_LOAD_BIN=${TLS_LOAD_BIN:-${CARGO_TARGET_DIR:-$REPO_DIR/target}/release/tls-load}
TLS_DIR=$WORK/tls
SUMMARY=$WORK/summary.txt
RESULTS=$WORK/results.tsv
summary() { echo "$1=$2" >> "$SUMMARY"; }

# Each front: its UDP port (towards the gateways) and its TLS port (the caller's side).
declare -A UDP_PORT=([kamailio]=5060 [medpool]=5062)
declare -A TLS_PORT=([kamailio]=$KAM_TLS_PORT [medpool]=5063)
declare -A FRONT_PIDS=()

ensure_tls_tools() {
    ensure_tools 0
    case " $TARGETS " in *" kamailio "*) ensure_kamailio_tls;; esac
    command -v openssl >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssl >/dev/null; }
    if [ ! -x "$TLS_LOAD_BIN" ]; then
        log "building tls-load (cargo build --release -p medpool-simpeer --bin tls-load)"
        (cd "$REPO_DIR" && cargo build --release -p medpool-simpeer --bin tls-load) || { log "build failed"; exit 1; }
    fi
    mkdir -p "$WORK"
    cp "$TLS_LOAD_BIN" "$WORK/tls-load" || exit 1
}

# make_certs : a CA, the fronts' certificate and the PBX's client certificate (EC P-256) in $TLS_DIR
make_certs() {
    mkdir -p "$TLS_DIR"
    (
        cd "$TLS_DIR" || exit 1
        openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout ca.key -out ca.crt \
            -subj /CN=medpool-bench-ca -days 7 -addext basicConstraints=critical,CA:TRUE 2>/dev/null || exit 1
        local who san
        for who in front pbx; do
            if [ "$who" = front ]; then san="subjectAltName=IP:127.0.0.1,DNS:front.bench"; else san="subjectAltName=DNS:pbx.bench"; fi
            openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$who.key" -out "$who.csr" \
                -subj "/CN=$who.bench" 2>/dev/null || exit 1
            echo "$san" > "$who.ext"
            openssl x509 -req -in "$who.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -out "$who.crt" -days 7 \
                -extfile "$who.ext" 2>/dev/null || exit 1
        done
    ) || { log "cannot make the bench certificates"; exit 1; }
}

# medpool's configuration: the PBX on 127.0.0.1 over TLS (its client certificate required and named),
# media bypass (signalling only, as bench/run.sh), two equal UDP gateways.
write_medpool_tls_config() {
    cat > "$1" <<EOF
# Generated by bench/tls.sh.
[node]
max_calls = 100000
max_tries = 3
unknown_source = "reject"

[[trunk]]
name = "pbx"
address = "$UAC_IP"
port = ${TLS_PORT[medpool]}
transport = "tls"
tls_client_ca = "$TLS_DIR/ca.crt"
tls_client_names = ["pbx.bench"]
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
options_interval_ms = 1000
down_after = 2
up_after = 2

[[trunk]]
name = "gw2"
address = "$GW2_IP"
port = $GW_PORT
transport = "udp"
side = "gateway"
usages = ["inbound"]
media = "bypass"
options_interval_ms = 1000
down_after = 2
up_after = 2

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

wait_tcp_listen() {  # $1 = ip:port
    local i
    for i in $(seq 100); do
        ss -H -tln | awk '{print $4}' | grep -qx "$1" && return 0
        sleep 0.1
    done
    log "nothing listens on tcp $1"; return 1
}

start_fronts() {
    local t
    for t in $TARGETS; do
        PROXY_PORT=${UDP_PORT[$t]}
        case $t in
            medpool)
                write_medpool_tls_config "$WORK/medpool-tls.toml"
                start_medpool "$WORK/medpool-tls.toml" tls "$MEDPOOL_LOG" \
                    --sip-tls-listen "$PROXY_IP:${TLS_PORT[medpool]}" \
                    --sip-tls-cert "$TLS_DIR/front.crt" --sip-tls-key "$TLS_DIR/front.key" || return 1
                FRONT_PIDS[$t]=$LAST_PID ;;
            kamailio)
                write_configs
                write_tls_config "$TLS_DIR/front.crt" "$TLS_DIR/front.key" "$TLS_DIR/ca.crt"
                kamailio -c -A WITH_TLS -f "$WORK/kamailio.cfg" >/dev/null 2>"$WORK/kamailio-check.log" \
                    || { cat "$WORK/kamailio-check.log" >&2; return 1; }
                start_kamailio -A WITH_TLS
                FRONT_PIDS[$t]=$LAST_PID
                wait_udp_listen "$PROXY_IP:$PROXY_PORT" && wait_gateways_up || return 1 ;;
        esac
        wait_tcp_listen "$PROXY_IP:${TLS_PORT[$t]}" || return 1
        log "    $t: UDP $PROXY_IP:$PROXY_PORT, TLS $PROXY_IP:${TLS_PORT[$t]}, pid ${FRONT_PIDS[$t]}"
    done
    sleep 3   # first OPTIONS round trips
}

# tls_run <front> <mode> <rate> <tag> : one run; appends a line to $RESULTS
tls_run() {
    local t=$1 mode=$2 rate=$3 tag=$4 n spid conns hz s0 s1 u0 u1 t0 t1 out rc
    n=$(( rate * DUR )); spid=${FRONT_PIDS[$t]}; hz=$(getconf CLK_TCK)
    if [ "$mode" = new ]; then conns=0; else conns=$CONNS; fi
    s0=$(proc_ticks "$spid"); u0=$(proc_ticks "$GW1_PID" "$GW2_PID"); t0=$(date +%s.%N)
    out=$("$WORK/tls-load" --target "$PROXY_IP:${TLS_PORT[$t]}" --server-name 127.0.0.1 --ca "$TLS_DIR/ca.crt" \
        --cert "$TLS_DIR/pbx.crt" --key "$TLS_DIR/pbx.key" --rate "$rate" --calls "$n" --hold-ms "$HOLD_MS" \
        --conns "$conns" --timeout-ms 10000 --prefix $(( 1000000 + RANDOM * 100 )) 2> "$WORK/load-$tag.err")
    rc=$?
    t1=$(date +%s.%N); s1=$(proc_ticks "$spid"); u1=$(proc_ticks "$GW1_PID" "$GW2_PID")
    echo "$out" > "$WORK/load-$tag.out"
    [ -n "$out" ] || out="calls=$n ok=0 failed=$n achieved_cps=0 gen_cpu_s=0 first_error=no_output_rc_$rc"
    python3 - "$t" "$mode" "$rate" "$n" "$hz" "$s0" "$s1" "$u0" "$u1" "$t0" "$t1" "$out" >> "$RESULTS" <<'PY'
import sys
t, mode, rate, n, hz, s0, s1, u0, u1, t0, t1, out = sys.argv[1:]
kv = dict(x.split('=', 1) for x in out.split() if '=' in x)
rate, n, hz = int(rate), int(n), int(hz)
wall = float(t1) - float(t0)
srv_s = (int(s1) - int(s0)) / hz
ok, failed = int(kv.get('ok', 0)), int(kv.get('failed', n))
ach = float(kv.get('achieved_cps', 0))
verdict = 'PASS' if failed == 0 and ok == n and ach >= 0.95 * rate else 'FAIL'
print('\t'.join(str(v) for v in [t, mode, rate, n, ok, failed, f'{ach:.0f}', f'{srv_s / wall * 100:.0f}', f'{srv_s:.2f}',
      f'{srv_s / max(1, ok) * 1e6:.0f}', kv.get('gen_cpu_s', '-'), f'{(int(u1) - int(u0)) / hz / wall * 100:.0f}',
      kv.get('hs_p50_us', '-'), kv.get('hs_p99_us', '-'), kv.get('setup_p50_us', '-'), kv.get('setup_p99_us', '-'),
      kv.get('handshake_fail', '-'), kv.get('timeout', '-'), kv.get('rejected', '-'), f'{wall:.1f}', verdict,
      kv.get('first_error', '') or '-']))
PY
    tail -n1 "$RESULTS" | awk -F'\t' '{printf "    %-8s %-4s %5d cps: ok %6d failed %5d achieved %5d cps  srv %3s%% (%5s us/call)  gen %6s s  hs p50 %6s us  setup p50 %6s us  %s %s\n", $1,$2,$3,$5,$6,$7,$8,$10,$11,$13,$15,$21,$22}' >&2
}
RESULTS_HEADER=$'front\tmode\ttarget_cps\tcalls\tok\tfailed\tachieved_cps\tsrv_cpu%\tsrv_cpu_s\tsrv_us/call\tgen_cpu_s\tuas_cpu%\ths_p50_us\ths_p99_us\tsetup_p50_us\tsetup_p99_us\ths_fail\ttimeouts\trejected\twall_s\tverdict\tfirst_error'

# best <front> <mode> : the highest rate where every repeat passed
best() {
    awk -F'\t' -v t="$1" -v m="$2" 'BEGIN{best=0} $1 == t && $2 == m { n[$3]++; if ($21 == "PASS") p[$3]++ }
        END { for (r in n) if (p[r] == n[r] && r + 0 > best) best = r + 0; print best }' "$RESULTS"
}
# mean_us <front> <mode> <rate> : mean CPU µs per call over the repeats
mean_us() {
    awk -F'\t' -v t="$1" -v m="$2" -v r="$3" '$1 == t && $2 == m && $3 == r { s += $10; k++ }
        END { if (k) printf "%.0f\n", s / k; else print "-" }' "$RESULTS"
}

sweep() {  # sweep <mode>
    local mode=$1 rate rep t order active=() still
    declare -A fails=()
    for t in $TARGETS; do active+=("$t"); done
    log "=== $mode connections: steps $RATES, ${DUR}s x $REPEATS (load: $(load_avg))"
    for rate in $RATES; do
        for t in "${active[@]}"; do fails[$t]=0; done
        for rep in $(seq "$REPEATS"); do
            order=("${active[@]}")
            if [ $(( rep % 2 )) = 0 ]; then order=(); for t in "${active[@]}"; do order=("$t" "${order[@]}"); done; fi
            for t in "${order[@]}"; do
                tls_run "$t" "$mode" "$rate" "$t-$mode-$rate-r$rep"
                [ "$(tail -n1 "$RESULTS" | cut -f21)" = PASS ] || fails[$t]=$(( ${fails[$t]} + 1 ))
                if ! kill -0 "${FRONT_PIDS[$t]}" 2>/dev/null; then log "$t died"; summary "$t.died_at" "$mode $rate"; fails[$t]=$REPEATS; fi
                sleep 3   # let transactions and TIME_WAIT drain
            done
        done
        still=()
        for t in "${active[@]}"; do
            if [ "${fails[$t]}" -ge "$REPEATS" ]; then log "    every repeat of $t failed at $rate cps ($mode): no higher rates"
            else still+=("$t"); fi
        done
        active=("${still[@]}")
        [ ${#active[@]} = 0 ] && break
    done
}

main() {
    mkdir -p "$WORK" "$RESULTS_DIR"
    ensure_tls_tools
    case " $TARGETS " in *" medpool "*) ensure_medpool;; esac
    make_certs
    ulimit -n 65536 2>/dev/null || true
    : > "$RESULTS"; : > "$SUMMARY"
    trap 'stop_all; exit 130' INT TERM
    trap 'stop_all' EXIT
    summary stamp "$STAMP"
    summary work_dir "$WORK"
    summary machine "$(nproc) cores, $(awk -F': ' '/model name/{print $2; exit}' /proc/cpuinfo), kernel $(uname -r)"
    summary medpool_commit "$(git -C "$REPO_DIR" rev-parse HEAD 2>/dev/null)$(git -C "$REPO_DIR" diff --quiet 2>/dev/null || echo '+dirty')"
    summary kamailio "$(kamailio -v 2>/dev/null | head -1)"
    summary params "RATES='$RATES' DUR=$DUR REPEATS=$REPEATS HOLD_MS=$HOLD_MS MODES='$MODES' CONNS=$CONNS KAM_CHILDREN=$KAM_CHILDREN KAM_TCP_CHILDREN=$KAM_TCP_CHILDREN"
    summary load_at_start "$(load_avg)"
    log "work dir $WORK; fronts: $TARGETS; modes: $MODES; rates: $RATES"
    PROXY_PORT=5060
    check_ports_free
    start_gateways tls || exit 1
    start_fronts || exit 1
    local mode t common=""
    for mode in $MODES; do sweep "$mode"; done
    summary load_at_end "$(load_avg)"
    for mode in $MODES; do
        for t in $TARGETS; do summary "$t.$mode.max_clean_cps" "$(best "$t" "$mode")"; done
    done
    # the target, per mode: medpool's TLS CPS >= Kamailio's
    if [[ " $TARGETS " == *" medpool "* && " $TARGETS " == *" kamailio "* ]]; then
        for mode in $MODES; do
            summary "target.tls_cps.$mode" "$(awk -v a="$(best medpool "$mode")" -v b="$(best kamailio "$mode")" -v last="${RATES##* }" 'BEGIN{
                if (b == 0) { print "Kamailio had no clean rate: no ratio"; exit }
                printf "medpool %d / Kamailio %d cps (target >= 1.00): %s%s", a, b, (a >= b ? "MET" : "MISSED"),
                    (a == last && b == last ? " (both clean at the highest step: add higher RATES)" : "") }')"
        done
    fi
    # CPU per call and per handshake at the highest rate every front ran clean in every mode
    common=$(for mode in $MODES; do for t in $TARGETS; do best "$t" "$mode"; done; done | sort -n | head -1)
    if [ -n "$common" ] && [ "$common" -gt 0 ]; then
        summary common_clean_cps "$common"
        for t in $TARGETS; do
            for mode in $MODES; do summary "$t.$mode.cpu_us_per_call_at_common" "$(mean_us "$t" "$mode" "$common")"; done
            if [[ " $MODES " == *" kept "* && " $MODES " == *" new "* ]]; then
                summary "$t.cpu_us_per_handshake" "$(awk -v n="$(mean_us "$t" new "$common")" -v k="$(mean_us "$t" kept "$common")" 'BEGIN{printf "%.0f (new %s - kept %s us per call)", n - k, n, k}')"
            fi
        done
    fi
    {
        echo
        echo "SIP over TLS bench $(awk -F= '$1 == "medpool_commit" {print substr($2, 1, 12)}' "$SUMMARY"): $(awk -F= '$1 == "machine" {print $2}' "$SUMMARY")"
        echo "srv = the front's CPU (% of ONE core; us per call); kept = $CONNS connections kept, new = a TLS connection per call; call hold ${HOLD_MS} ms, ${DUR} s of calls per run"
        echo
        ( echo "$RESULTS_HEADER"; cat "$RESULTS" ) | column -t -s $'\t'
        echo
        echo "Summary (also in $RESULTS_DIR/tls-$STAMP.txt):"
        cat "$SUMMARY"
    } | tee "$WORK/table.txt"
    { cat "$SUMMARY"; echo; echo "# runs"; echo "$RESULTS_HEADER"; cat "$RESULTS"; } > "$RESULTS_DIR/tls-$STAMP.txt"
    stop_all
    log "raw files: $WORK"
}

main "$@"
