#!/usr/bin/env bash
# medpool 3-node pool benchmark (issue 4, BENCHMARKS.md "Pool (3 nodes)").
#
# Addresses (all on lo, apart from bench/run.sh's 127.0.0.x so both can run on one machine):
#   pool nodes   127.0.80.1/.2/.3  SIP :5060 (UDP+TCP), internal gRPC (--raft-listen) :7000, /metrics :9100
#   single node  127.0.80.4:5060   (`medpool serve` without --raft-listen), /metrics :9100
#   gateways     127.0.80.21/.22:5060  SIPp bench/sipp/uas.xml -aa (bench/lib.sh start_gw)
#   caller (PBX) 127.0.80.10:5070  SIPp bench/sipp/uac.xml (R-URI user = call number), via bench/lib.sh run_load
# Configuration: bench/lib.sh write_medpool_config (PBX trunk at the caller's IP, any port, two
# equal gateways, catch-all routes; OPTIONS every 1 s as in bench/run.sh).
#
# Parts (PARTS="failover cps bytes"):
#   failover  For each lease setting in LEASE_SETS ("lease_ms:margin_ms"): a fresh 3-node pool; RUNS
#             runs. Each run SIGKILLs one node (every 3rd run, starting with the first, the current
#             leader as `pool status` names it; the other runs a follower, rotating over node ids),
#             then polls `medpool ctl status --local` on a survivor (the leader when it survived) every
#             POLL_MS ms until it shows `unowned shards 0` and the dead node Down with 0 shards
#             (bench/pool-watch.py kill). The time is kill -> end of the first poll showing it (an
#             upper bound; the end of the poll before it is the lower bound, also recorded). Then
#             the node is restarted with its data dir and --join a survivor, and the run waits until
#             it is Active with shards again (and says so itself), plus SETTLE s. No calls.
#   cps       The 3-node pool (default lease) and a single node, started side by side, same gateways,
#             same caller. For each rate in RATES, REPEATS x (single, pool) alternating order, DUR s of
#             calls of HOLD_MS ms each, the caller sends every call to node 0 (127.0.80.1), which sets
#             each up itself in one of its own shards (`[node] local_calls`, the default): nothing
#             crosses nodes but the records' Raft entries. LOCAL_CALLS=false measures the forwarding
#             path instead: the call's shard (from its Call-ID) decides the owner, so ~2/3 are
#             forwarded. bench/lib.sh run_load
#             (PASS = 0 failed calls, every call created, >= 95 % of the rate). srv CPU = the node,
#             or the three pool nodes summed. A target stops after a rate where every repeat failed.
#             Highest clean rate = highest rate where every repeat passed.
#   bytes     For each N in HOLD_CALLS: a fresh 3-node pool; N calls at HOLD_RATE cps held up (-d 10 min); once
#             `pool status` counts them all as dialogs (+ 3 s): delta of
#             medpool_dialog_bytes_replicated_total (sum of the 3 nodes: record payload = Call-ID +
#             JSON record) / calls, and delta of `du -sb <data-dir>/raft` per node / calls (redb
#             file: log entry + state-machine copy + B-tree overhead, before any snapshot; snapshots
#             come every 5000 entries, the applied index is recorded to show none was due).
#
# Usage:  bench/pool.sh                                   (full run: about 35-50 min)
#         RUNS=3 RATES="200 500" DUR=5 REPEATS=1 LEASE_SETS="2000:1000" bench/pool.sh   (smoke run)
#   idle      A fresh 3-node pool (lease IDLE_LEASE, "lease_ms:margin_ms", default the cps part's 2000:1000)
#             and no calls: after IDLE_SETTLE s, each node's CPU (utime + stime) and context switches
#             (every thread's voluntary + involuntary) over IDLE_DUR s, as % of one core and per second.
#
# Env:    PARTS RUNS LEASE_SETS POLL_MS SETTLE RATES DUR REPEATS HOLD_MS HOLD_CALLS HOLD_RATE
#         IDLE_LEASE IDLE_SETTLE IDLE_DUR POOL_NET (default 127.0.80: the /24 of every address above)
#         LOCAL_CALLS (default true) MEDPOOL_BIN MEDPOOL_ARGS (default "--max-transactions 2000000", as bench/run.sh) NODE_LOG=warn WORK RESULTS_DIR
# Output: a table on stdout, bench/results/pool-<UTC timestamp>.txt, raw files (node logs, every
#         pool status poll, SIPp CSVs/errors, metrics) in $WORK.
# Everything it starts is stopped by PID on exit, also on Ctrl-C.
set -u
PARTS=${PARTS:-"failover cps bytes"}
RUNS=${RUNS:-20}
LEASE_SETS=${LEASE_SETS:-"2000:1000 1000:500"}
POLL_MS=${POLL_MS:-50}
SETTLE=${SETTLE:-3}
RATES=${RATES:-"200 500 1000 1500 2000 2500 3000"}
DUR=${DUR:-15}
REPEATS=${REPEATS:-2}
HOLD_MS=${HOLD_MS:-1000}
HOLD_CALLS=${HOLD_CALLS:-"500 2000"}
HOLD_RATE=${HOLD_RATE:-100}
NODE_LOG=${NODE_LOG:-warn}
MEDPOOL_ARGS=${MEDPOOL_ARGS:-"--max-transactions 2000000"}
export MEDPOOL_ARGS
STAMP=${STAMP:-$(date -u +%Y%m%dT%H%M%SZ)}
WORK=${WORK:-$(mktemp -d "/tmp/medpool-pool.$STAMP.XXXX")}

# shellcheck source=lib.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib.sh"

# Our addresses (after lib.sh, which sets the single-node benchmark's 127.0.0.x ones). POOL_NET moves
# them all to another /24 of loopback (e.g. POOL_NET=127.0.186 beside someone else's run).
POOL_NET=${POOL_NET:-127.0.80}
NODE_IP=("$POOL_NET.1" "$POOL_NET.2" "$POOL_NET.3")
SINGLE_IP=$POOL_NET.4
SIP_PORT=5060; RAFT_PORT=7000; METRICS_PORT=9100
GW1_IP=$POOL_NET.21; GW2_IP=$POOL_NET.22; GW_PORT=5060
UAC_IP=$POOL_NET.10; UAC_PORT=5070
PROXY_PORT=$SIP_PORT
WATCH=$BENCH_DIR/pool-watch.py
SUMMARY=$WORK/summary.txt
CMDS=$WORK/commands.txt
summary() { echo "$1=$2" >> "$SUMMARY"; log "    $1=$2"; }
declare -a NODE_PID=()

# run_load (bench/lib.sh) counts the server's CPU with proc_ticks "$spid": let one argument name
# several processes, comma-separated (the three pool nodes).
eval "$(declare -f proc_ticks | sed '1s/^proc_ticks/lib_proc_ticks/')"
proc_ticks() { local a=() x; for x in "$@"; do a+=(${x//,/ }); done; lib_proc_ticks "${a[@]}"; }

check_free() {
    local a
    for a in "${NODE_IP[@]}" "$SINGLE_IP"; do
        if ss -H -tuln | awk '{print $5}' | grep -q -e "^$a:"; then log "something listens on $a already; stop it first"; exit 1; fi
    done
    for a in "$GW1_IP:$GW_PORT" "$GW2_IP:$GW_PORT" "$UAC_IP:$UAC_PORT"; do
        if ss -H -uln | awk '{print $4}' | grep -qx "$a"; then log "UDP $a is already in use; stop it first"; exit 1; fi
    done
}

raft_addr() { echo "${NODE_IP[$1]}:$RAFT_PORT"; }

# start_node <id> <data dir> <log file> <lease ms> <margin ms> [join addr] ; sets NODE_PID[id]
start_node() {
    local id=$1 dir=$2 logf=$3 lease=$4 margin=$5 join=${6:-} ip=${NODE_IP[$1]} i
    local args=(serve --config "$CFG" --sip-listen "$ip:$SIP_PORT" --raft-listen "$ip:$RAFT_PORT" --node-id "$id"
        --data-dir "$dir" --log "$NODE_LOG" --metrics-listen "$ip:$METRICS_PORT"
        --lease-ms "$lease" --lease-margin-ms "$margin" --shutdown-grace 2)
    [ -n "$join" ] && args+=(--join "$join")
    # shellcheck disable=SC2086
    args+=($MEDPOOL_ARGS)
    echo "$MEDPOOL_BIN ${args[*]}" >> "$CMDS"
    "$MEDPOOL_BIN" "${args[@]}" > "$logf" 2>&1 &
    NODE_PID[$id]=$!
    STARTED_PIDS+=("$!")
    for i in $(seq 200); do
        grep -q "medpool ready" "$logf" 2>/dev/null && return 0
        kill -0 "${NODE_PID[$id]}" 2>/dev/null || break
        sleep 0.05
    done
    log "node $id did not start:"; cat "$logf" >&2; return 1
}

pool_status() { python3 "$WATCH" show --bin "$MEDPOOL_BIN" --servers "$1" 2>&1; }

# wait_pool <server> <timeout s> : until 3 nodes Active, each with shards, none unowned
wait_pool() {
    local s=$1 t=$2 i out
    for i in $(seq $(( t * 5 ))); do
        out=$(pool_status "$s")
        if echo "$out" | awk 'NR == 1 { ok = ($NF == 0) } $3 == "Active" && $4 > 0 { n++ } END { exit !(ok && n == 3) }'; then
            echo "$out" > "$WORK/last-status.txt"; return 0
        fi
        sleep 0.2
    done
    log "pool not settled after ${t}s:"; echo "$out" >&2; return 1
}

# start_pool <dir> <tag> <lease> <margin>
start_pool() {
    local dir=$1 tag=$2 lease=$3 margin=$4 id
    mkdir -p "$dir"
    start_node 0 "$dir/node0" "$dir/node0.start1.log" "$lease" "$margin" || return 1
    for id in 1 2; do
        start_node "$id" "$dir/node$id" "$dir/node$id.start1.log" "$lease" "$margin" "$(raft_addr 0)" || return 1
    done
    wait_pool "$(raft_addr 0)" 60 || return 1
    log "pool $tag up: pids ${NODE_PID[*]}"
    sed 's/^/    /' "$WORK/last-status.txt" >&2
}

stop_pool() {
    local id
    for id in 0 1 2; do
        [ -n "${NODE_PID[$id]:-}" ] || continue
        stop_pid "${NODE_PID[$id]}"; forget_pid "${NODE_PID[$id]}"; NODE_PID[$id]=
    done
}

# metric <ip> <name> : the sum of every series of a metric (0 when absent)
metric() {
    curl -s --max-time 2 "http://$1:$METRICS_PORT/metrics" | awk -v n="$2" '
        $1 == n || index($1, n "{") == 1 { s += $NF } END { printf "%.0f\n", s }'
}
metrics_snapshot() {  # <file> : name ip value lines for the pool nodes
    local ip m
    : > "$1"
    for ip in "${NODE_IP[@]}"; do
        curl -s --max-time 2 "http://$ip:$METRICS_PORT/metrics" > "$1.$ip.txt"
        for m in medpool_calls_answered_total medpool_forwarded_messages_total medpool_dialog_bytes_replicated_total \
                 medpool_dialog_records_replicated_total medpool_dialog_batches_total medpool_dialog_batches_failed_total \
                 medpool_raft_applied_index medpool_sip_retransmissions_total; do
            echo "$m $ip $(awk -v n="$m" '$1 == n || index($1, n "{") == 1 { s += $NF } END { printf "%.0f\n", s }' "$1.$ip.txt")" >> "$1"
        done
    done
}
metrics_delta() {  # <before> <after> <metric> : "total n0 n1 n2"
    awk -v m="$3" 'FNR == NR && $1 == m { b[$2] = $3; next } $1 == m { d[$2] = $3 - b[$2]; o[++k] = $2; t += d[$2] }
        END { printf "%d", t; for (i = 1; i <= k; i++) printf " %d", d[o[i]]; printf "\n" }' "$1" "$2"
}

udp_sock() {  # <ip:port ...> : "<sum of kernel drops> <rcvbuf bytes of the first>" of these UDP sockets (ss -uamn skmem)
    ss -uamn 2>/dev/null | awk -v list=" $* " '
        /^UNCONN|^ESTAB/ { hit = index(list, " " $4 " ") > 0; next }
        hit && /skmem/ { match($0, /d[0-9]+\)/); d += substr($0, RSTART + 1, RLENGTH - 2)
            if (rb == "") { match($0, /rb[0-9]+/); rb = substr($0, RSTART + 2, RLENGTH - 2) } hit = 0 }
        END { print d + 0, (rb == "" ? "-" : rb) }'
}

pct() {  # <p> : nearest-rank percentile of numbers on stdin ("timeout" counts as +inf)
    sort -g | awk -v p="$1" '{ v[++n] = $1 } END { if (!n) { print "-"; exit } r = int(p / 100 * n); if (r < p / 100 * n) r++; if (r < 1) r = 1; print v[r] }'
}

# ------------------------------------------------------------------ 1. kill -9 -> all shards owned
FO_TSV=$WORK/failover.tsv
FO_HEADER=$'set\trun\tvictim\twas_leader\tleader_before\tleader_after\tkill->down_s\tkill->all_owned_s\tall_owned_lo_s\tleader_seen_s\tunowned_max\tpolls\tpoll_p50_ms\tpoll_max_ms\trestart->active_s\trestart->shards_back_s\tload1'

failover_set() {  # <lease ms> <margin ms>
    local lease=$1 margin=$2 label="L${1}-m${2}" dir r leader victim was k=0 survivors servers line rj id
    dir=$WORK/fo-$label
    log "=== failover $label: $RUNS runs (load: $(load_avg))"
    summary "failover.$label.load_at_start" "$(load_avg)"
    start_pool "$dir" "$label" "$lease" "$margin" || { stop_pool; return 1; }
    sleep "$SETTLE"
    for r in $(seq "$RUNS"); do
        leader=$(python3 "$WATCH" leader --bin "$MEDPOOL_BIN" --servers "$(raft_addr 0),$(raft_addr 1),$(raft_addr 2)")
        if [ $(( (r - 1) % 3 )) = 0 ] && [[ "$leader" =~ ^[0-2]$ ]]; then
            victim=$leader
        else
            victim=$(( k % 3 )); k=$(( k + 1 ))
            [ "$victim" = "$leader" ] && { victim=$(( k % 3 )); k=$(( k + 1 )); }
        fi
        was=$([ "$victim" = "$leader" ] && echo yes || echo no)
        survivors=(); for id in 0 1 2; do [ "$id" != "$victim" ] && survivors+=("$id"); done
        if [ "$was" = no ] && [[ "$leader" =~ ^[0-2]$ ]]; then
            servers="$(raft_addr "$leader")"
            for id in "${survivors[@]}"; do [ "$id" != "$leader" ] && servers+=",$(raft_addr "$id")"; done
        else
            servers="$(raft_addr "${survivors[0]}"),$(raft_addr "${survivors[1]}")"
        fi
        line=$(python3 "$WATCH" kill --bin "$MEDPOOL_BIN" --servers "$servers" --pid "${NODE_PID[$victim]}" --node "$victim" \
            --interval "$(awk -v m="$POLL_MS" 'BEGIN{print m / 1000}')" --timeout 30 --trace "$dir/polls.txt")
        wait "${NODE_PID[$victim]}" 2>/dev/null; forget_pid "${NODE_PID[$victim]}"
        log "  $label run $r: killed node $victim (leader before: $leader, was leader: $was): $line"
        start_node "$victim" "$dir/node$victim" "$dir/node$victim.start$(( r + 1 )).log" "$lease" "$margin" \
            "$(raft_addr "${survivors[0]}")" || { stop_pool; return 1; }
        rj=$(python3 "$WATCH" rejoin --bin "$MEDPOOL_BIN" --servers "${servers}" --node "$victim" --self "$(raft_addr "$victim")" \
            --interval 0.1 --timeout 60 --trace "$dir/polls.txt")
        log "  $label run $r: node $victim restarted: $rj"
        kv() { echo "$1" | tr ' ' '\n' | awk -F= -v k="$2" '$1 == k { print $2 }'; }
        printf '%s\t%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$label" "$r" "$victim" "$was" "$leader" \
            "$(kv "$line" leader_after)" "$(kv "$line" down_s)" "$(kv "$line" owned_s)" "$(kv "$line" owned_lo_s)" \
            "$(kv "$line" leader_seen_s)" "$(kv "$line" unowned_max)" "$(kv "$line" polls)" "$(kv "$line" poll_p50_ms)" \
            "$(kv "$line" poll_max_ms)" "$(kv "$rj" active_s)" "$(kv "$rj" shards_back_s)" "$(cut -d' ' -f1 /proc/loadavg)" >> "$FO_TSV"
        sleep "$SETTLE"
    done
    stop_pool
    local all ldr fol
    all=$(awk -F'\t' -v s="$label" '$1 == s { print $8 }' "$FO_TSV")
    ldr=$(awk -F'\t' -v s="$label" '$1 == s && $4 == "yes" { print $8 }' "$FO_TSV")
    fol=$(awk -F'\t' -v s="$label" '$1 == s && $4 == "no" { print $8 }' "$FO_TSV")
    summary "failover.$label.runs" "$(echo "$all" | grep -c .)"
    summary "failover.$label.timeouts" "$(echo "$all" | grep -c timeout)"
    summary "failover.$label.all_owned_p50_s" "$(echo "$all" | pct 50)"
    summary "failover.$label.all_owned_p99_s" "$(echo "$all" | pct 99)"
    summary "failover.$label.all_owned_min_s" "$(echo "$all" | pct 0)"
    summary "failover.$label.all_owned_max_s" "$(echo "$all" | pct 100)"
    summary "failover.$label.leader_kills" "$(echo "$ldr" | grep -c .)"
    summary "failover.$label.leader_kill_p50_s" "$(echo "$ldr" | pct 50)"
    summary "failover.$label.leader_kill_max_s" "$(echo "$ldr" | pct 100)"
    summary "failover.$label.follower_kills" "$(echo "$fol" | grep -c .)"
    summary "failover.$label.follower_kill_p50_s" "$(echo "$fol" | pct 50)"
    summary "failover.$label.follower_kill_max_s" "$(echo "$fol" | pct 100)"
    summary "failover.$label.all_owned_lo_p50_s" "$(awk -F'\t' -v s="$label" '$1 == s { print $9 }' "$FO_TSV" | pct 50)"
    summary "failover.$label.all_owned_lo_p99_s" "$(awk -F'\t' -v s="$label" '$1 == s { print $9 }' "$FO_TSV" | pct 99)"
    summary "failover.$label.kill_to_down_p50_s" "$(awk -F'\t' -v s="$label" '$1 == s { print $7 }' "$FO_TSV" | pct 50)"
    summary "failover.$label.load_at_end" "$(load_avg)"
}

part_failover() {
    local set
    : > "$FO_TSV"
    for set in $LEASE_SETS; do failover_set "${set%%:*}" "${set##*:}"; sleep 2; done
}

# ------------------------------------------------------------------ 2. CPS: pool vs single node
CPS_EXTRA=$WORK/cps-pool-metrics.tsv
CPS_DROPS=$WORK/cps-udp-drops.tsv
part_cps() {
    local dir=$WORK/cps rate rep t order spid tag line socks d0 d1 rb stopped_single=0 stopped_pool=0 fails_single fails_pool
    log "=== CPS: rates $RATES, ${DUR}s x $REPEATS, single node vs 3-node pool (load: $(load_avg))"
    summary cps.load_at_start "$(load_avg)"
    mkdir -p "$dir"
    echo "sipp -sf $UAS_XML -i <gw ip> -p $GW_PORT -aa -nostdin -buff_size $SIPP_BUF -trace_stat -stf ... -fd 1" >> "$CMDS"
    start_gateways cps || return 1
    start_pool "$dir/pool" cps 2000 1000 || { stop_all; return 1; }
    local sargs=(serve --config "$CFG" --sip-listen "$SINGLE_IP:$SIP_PORT" --data-dir "$dir/single" --log "$NODE_LOG"
        --metrics-listen "$SINGLE_IP:$METRICS_PORT" --shutdown-grace 2)
    # shellcheck disable=SC2086
    sargs+=($MEDPOOL_ARGS)
    echo "$MEDPOOL_BIN ${sargs[*]}" >> "$CMDS"
    "$MEDPOOL_BIN" "${sargs[@]}" > "$dir/single.log" 2>&1 &
    SINGLE_PID=$!; STARTED_PIDS+=("$SINGLE_PID")
    for _ in $(seq 100); do grep -q "medpool ready" "$dir/single.log" && break; sleep 0.1; done
    grep -q "medpool ready" "$dir/single.log" || { log "single node did not start"; cat "$dir/single.log" >&2; stop_all; return 1; }
    sleep 3   # first OPTIONS round trips
    # idle CPU (no calls): Raft heartbeats, leases, OPTIONS probes
    local hz i0 i1 j0 j1
    hz=$(getconf CLK_TCK)
    i0=$(proc_ticks "${NODE_PID[0]},${NODE_PID[1]},${NODE_PID[2]}"); j0=$(proc_ticks "$SINGLE_PID")
    sleep 10
    i1=$(proc_ticks "${NODE_PID[0]},${NODE_PID[1]},${NODE_PID[2]}"); j1=$(proc_ticks "$SINGLE_PID")
    summary cps.pool3.idle_cpu_pct_of_one_core "$(awk -v a="$i0" -v b="$i1" -v h="$hz" 'BEGIN { printf "%.1f\n", (b - a) / h / 10 * 100 }')"
    summary cps.single.idle_cpu_pct_of_one_core "$(awk -v a="$j0" -v b="$j1" -v h="$hz" 'BEGIN { printf "%.1f\n", (b - a) / h / 10 * 100 }')"
    echo "sipp <node>:$SIP_PORT -sf $UAC_XML -i $UAC_IP -p $UAC_PORT -r <rate> -rp 1000 -d $HOLD_MS -m <rate*$DUR> -nostdin -buff_size $SIPP_BUF -trace_stat -stf ... -fd 1 -trace_err -error_file ... -timeout $(( DUR * 3 + 30 ))s -recv_timeout 10000   (bench/lib.sh run_load)" >> "$CMDS"
    printf 'run\tudp_drops\tso_rcvbuf\n' > "$CPS_DROPS"
    printf 'run\tanswered_total\tanswered_n0\tanswered_n1\tanswered_n2\tforwarded_total\tforwarded_n0\tforwarded_n1\tforwarded_n2\traft_entries\tdialog_batches\tdialog_batches_failed\tsip_retrans_sent\n' > "$CPS_EXTRA"
    for rate in $RATES; do
        fails_single=0; fails_pool=0
        for rep in $(seq "$REPEATS"); do
            if [ $(( rep % 2 )) = 1 ]; then order="single pool3"; else order="pool3 single"; fi
            for t in $order; do
                [ "$t" = single ] && [ "$stopped_single" = 1 ] && continue
                [ "$t" = pool3 ] && [ "$stopped_pool" = 1 ] && continue
                tag="$t-$rate-r$rep"
                if [ "$t" = single ]; then PROXY_IP=$SINGLE_IP; spid=$SINGLE_PID
                else PROXY_IP=${NODE_IP[0]}; spid="${NODE_PID[0]},${NODE_PID[1]},${NODE_PID[2]}"
                    metrics_snapshot "$dir/m-$tag.before"; fi
                if [ "$t" = single ]; then socks="$SINGLE_IP:$SIP_PORT"; else socks="${NODE_IP[0]}:$SIP_PORT ${NODE_IP[1]}:$SIP_PORT ${NODE_IP[2]}:$SIP_PORT"; fi
                read -r d0 rb < <(udp_sock $socks)
                run_load "$t" "$rate" "$tag" "$spid" "$GW1_PID" "$GW2_PID"
                line=$(tail -n1 "$WORK/results.tsv")
                read -r d1 rb < <(udp_sock $socks)
                printf '%s\t%s\t%s\n' "$tag" "$(( d1 - d0 ))" "$rb" >> "$CPS_DROPS"
                log "    kernel drops at the SIP socket(s) during the run: $(( d1 - d0 )) (SO_RCVBUF $rb)"
                if [ "$t" = pool3 ]; then
                    metrics_snapshot "$dir/m-$tag.after"
                    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$tag" "$(metrics_delta "$dir/m-$tag.before" "$dir/m-$tag.after" medpool_calls_answered_total | tr ' ' '\t')" \
                        "$(metrics_delta "$dir/m-$tag.before" "$dir/m-$tag.after" medpool_forwarded_messages_total | tr ' ' '\t')" \
                        "$(metrics_delta "$dir/m-$tag.before" "$dir/m-$tag.after" medpool_raft_applied_index | cut -d' ' -f2)" \
                        "$(metrics_delta "$dir/m-$tag.before" "$dir/m-$tag.after" medpool_dialog_batches_total | cut -d' ' -f1)" \
                        "$(metrics_delta "$dir/m-$tag.before" "$dir/m-$tag.after" medpool_dialog_batches_failed_total | cut -d' ' -f1)" \
                        "$(metrics_delta "$dir/m-$tag.before" "$dir/m-$tag.after" medpool_sip_retransmissions_total | cut -d' ' -f1)" >> "$CPS_EXTRA"
                    log "    pool answered/forwarded (total n0 n1 n2): $(tail -n1 "$CPS_EXTRA" | cut -f2-)"
                fi
                if [ "${line##*$'\t'}" != PASS ]; then
                    if [ "$t" = single ]; then fails_single=$((fails_single + 1)); else fails_pool=$((fails_pool + 1)); fi
                fi
                for spid in ${spid//,/ }; do
                    kill -0 "$spid" 2>/dev/null || { log "$t: process $spid died"; summary "cps.$t.died_at_rate" "$rate"; }
                done
                sleep 5   # let transactions and the gateways' timewait drain
            done
        done
        [ "$fails_single" = "$REPEATS" ] && { stopped_single=1; log "    single: every repeat failed at $rate cps"; }
        [ "$fails_pool" = "$REPEATS" ] && { stopped_pool=1; log "    pool3: every repeat failed at $rate cps"; }
        [ "$stopped_single" = 1 ] && [ "$stopped_pool" = 1 ] && break
    done
    summary cps.pool_status_at_end "$(pool_status "$(raft_addr 0)" | head -1)"
    stop_all; NODE_PID=()
    local t best any
    for t in single pool3; do
        read -r best any < <(awk -F'\t' -v t="$t" 'BEGIN{best=0; any=0} $1 == t && $2 ~ ("^" t "-[0-9]+-r[0-9]+$") {
              r=$3; n[r]++; if ($22=="PASS") p[r]++; if ($6==0) z[r]++ }
            END { for (r in n) { if (p[r]==n[r] && r+0>best) best=r+0; if (z[r]==n[r] && r+0>any) any=r+0 }
                  print best, any }' "$WORK/results.tsv")
        summary "cps.$t.max_clean_cps" "$best"
        summary "cps.$t.max_zero_failed_cps" "$any"
        if [ "$best" -gt 0 ]; then
            summary "cps.$t.cpu_us_per_call_at_max" "$(awk -F'\t' -v t="$t" -v r="$best" '$1 == t && $3 == r { s += $14; n++ } END { if (n) printf "%.0f\n", s / n }' "$WORK/results.tsv")"
        fi
    done
    summary cps.pool_over_single "$(awk -F= '$1 == "cps.single.max_clean_cps" {s=$2} $1 == "cps.pool3.max_clean_cps" {p=$2} END { if (s > 0) printf "%.2f\n", p / s; else print "-" }' "$SUMMARY")"
    local common
    common=$(awk -F= '$1 == "cps.single.max_clean_cps" || $1 == "cps.pool3.max_clean_cps" {print $2}' "$SUMMARY" | sort -n | head -1)
    if [ -n "$common" ] && [ "$common" -gt 0 ]; then
        summary cps.common_clean_cps "$common"
        for t in single pool3; do
            summary "cps.$t.cpu_us_per_call_at_common" "$(awk -F'\t' -v t="$t" -v r="$common" '$1 == t && $3 == r { s += $14; n++ } END { if (n) printf "%.0f\n", s / n }' "$WORK/results.tsv")"
        done
    fi
    summary cps.forwarded_share_of_calls "$(awk -F'\t' 'NR > 1 { a += $2 } END { print "see cps-pool-metrics.tsv (answered " a " calls)" }' "$CPS_EXTRA")"
    summary cps.load_at_end "$(load_avg)"
}

# ------------------------------------------------------------------ 3. replicated bytes per call
bytes_one() {  # <calls>
    local n_calls=$1 dir=$WORK/bytes-$1 id upid i created cur failed dialogs st k="bytes.$1"
    log "=== replicated bytes: $n_calls calls held up at $HOLD_RATE cps (load: $(load_avg))"
    summary "$k.load_at_start" "$(load_avg)"
    mkdir -p "$dir"
    start_gateways "bytes-$n_calls" || return 1
    start_pool "$dir/pool" "bytes-$n_calls" 2000 1000 || { stop_all; return 1; }
    sleep 5
    metrics_snapshot "$dir/m.before"
    for id in 0 1 2; do
        summary "$k.node$id.raft_du_before" "$(du -sb "$dir/pool/node$id/raft" | cut -f1)"
        summary "$k.node$id.applied_before" "$(pool_status "$(raft_addr "$id")" | head -1 | sed 's/.*applied \([0-9-]*\).*/\1/')"
    done
    ls -la "$dir"/pool/node*/raft > "$dir/raft-files.before.txt" 2>&1
    local hold_ms=600000
    echo "sipp ${NODE_IP[0]}:$SIP_PORT -sf $UAC_XML -i $UAC_IP -p $UAC_PORT -r $HOLD_RATE -rp 1000 -d $hold_ms -m $n_calls -l $(( n_calls + 100 )) -nostdin -buff_size $SIPP_BUF -trace_stat -stf ... -fd 1 -trace_err -error_file ... -recv_timeout 10000" >> "$CMDS"
    sipp "${NODE_IP[0]}:$SIP_PORT" -sf "$UAC_XML" -i "$UAC_IP" -p "$UAC_PORT" \
        -r "$HOLD_RATE" -rp 1000 -d "$hold_ms" -m "$n_calls" -l $(( n_calls + 100 )) -nostdin -buff_size "$SIPP_BUF" \
        -trace_stat -stf "$WORK/uac_bytes-$n_calls.csv" -fd 1 -trace_err -error_file "$WORK/uac_bytes-$n_calls.errors" \
        -recv_timeout 10000 > "$WORK/uac_bytes-$n_calls.out" 2>&1 &
    upid=$!; STARTED_PIDS+=("$upid")
    for i in $(seq $(( n_calls / HOLD_RATE * 4 + 60 ))); do
        sleep 1
        dialogs=$(pool_status "$(raft_addr 0)" | head -1 | sed 's/.*dialogs \([0-9]*\).*/\1/')
        [ "${dialogs:-0}" -ge "$n_calls" ] && break
        kill -0 "$upid" 2>/dev/null || break
    done
    sleep 3
    read -r created cur failed < <(python3 -c '
import csv, sys
rows = list(csv.reader(open(sys.argv[1]), delimiter=";"))
d = dict(zip(rows[0], rows[-1])) if len(rows) > 1 else {}
print(" ".join(d.get(k, "0") for k in sys.argv[2:]))' "$WORK/uac_bytes-$n_calls.csv" TotalCallCreated CurrentCall 'FailedCall(C)' 2>/dev/null || echo "0 0 0")
    metrics_snapshot "$dir/m.after"
    st=$(pool_status "$(raft_addr 0)"); echo "$st" > "$dir/status.after.txt"
    summary "$k.calls_created" "$created"
    summary "$k.calls_open" "$cur"
    summary "$k.calls_failed" "$failed"
    summary "$k.pool_dialogs" "$(echo "$st" | head -1 | sed 's/.*dialogs \([0-9]*\).*/\1/')"
    local bytes recs batches n=${cur:-0}
    bytes=$(metrics_delta "$dir/m.before" "$dir/m.after" medpool_dialog_bytes_replicated_total)
    recs=$(metrics_delta "$dir/m.before" "$dir/m.after" medpool_dialog_records_replicated_total)
    batches=$(metrics_delta "$dir/m.before" "$dir/m.after" medpool_dialog_batches_total)
    summary "$k.dialog_bytes_replicated_total_n0_n1_n2" "$bytes"
    summary "$k.dialog_records_replicated_total_n0_n1_n2" "$recs"
    summary "$k.dialog_batches_total_n0_n1_n2" "$batches"
    summary "$k.record_bytes_per_call" "$(awk -v b="${bytes%% *}" -v n="$n" 'BEGIN { if (n > 0) printf "%.0f\n", b / n; else print "-" }')"
    summary "$k.record_bytes_per_record" "$(awk -v b="${bytes%% *}" -v n="${recs%% *}" 'BEGIN { if (n > 0) printf "%.0f\n", b / n; else print "-" }')"
    local du_tot=0 d0 d1
    for id in 0 1 2; do
        d0=$(awk -F= -v k="$k.node$id.raft_du_before" '$1 == k {print $2}' "$SUMMARY")
        d1=$(du -sb "$dir/pool/node$id/raft" | cut -f1)
        summary "$k.node$id.raft_du_after" "$d1"
        summary "$k.node$id.applied_after" "$(pool_status "$(raft_addr "$id")" | head -1 | sed 's/.*applied \([0-9-]*\).*/\1/')"
        summary "$k.node$id.raft_du_growth_per_call" "$(awk -v a="$d1" -v b="$d0" -v n="$n" 'BEGIN { if (n > 0) printf "%.0f\n", (a - b) / n; else print "-" }')"
        du_tot=$(( du_tot + d1 - d0 ))
    done
    ls -la "$dir"/pool/node*/raft > "$dir/raft-files.after.txt" 2>&1
    summary "$k.raft_du_growth_per_call_mean_of_3_nodes" "$(awk -v a="$du_tot" -v n="$n" 'BEGIN { if (n > 0) printf "%.0f\n", a / 3 / n; else print "-" }')"
    summary "$k.raft_du_growth_per_call_all_3_replicas" "$(awk -v a="$du_tot" -v n="$n" 'BEGIN { if (n > 0) printf "%.0f\n", a / n; else print "-" }')"
    summary "$k.load_at_end" "$(load_avg)"
    stop_pid "$upid"; forget_pid "$upid"
    stop_all; NODE_PID=()
}
part_bytes() { local n; for n in $HOLD_CALLS; do bytes_one "$n"; sleep 3; done; }

# ------------------------------------------------------------------ 4. the idle pool's CPU
ctx_switches() {  # <pid> : voluntary + involuntary context switches of every thread so far
    cat /proc/"$1"/task/*/status 2>/dev/null | awk '/^(non)?voluntary_ctxt_switches/ { s += $2 } END { print s + 0 }'
}
part_idle() {
    local lease=${IDLE_LEASE:-2000:1000} settle=${IDLE_SETTLE:-10} dur=${IDLE_DUR:-60} dir=$WORK/idle id hz
    local -a t0 t1 c0 c1
    log "=== idle pool: lease $lease, ${settle}s to settle, ${dur}s measured (load: $(load_avg))"
    summary idle.load_at_start "$(load_avg)"
    start_pool "$dir" idle "${lease%%:*}" "${lease##*:}" || { stop_pool; return 1; }
    sleep "$settle"
    hz=$(getconf CLK_TCK)
    for id in 0 1 2; do t0[$id]=$(proc_ticks "${NODE_PID[$id]}"); c0[$id]=$(ctx_switches "${NODE_PID[$id]}"); done
    sleep "$dur"
    for id in 0 1 2; do t1[$id]=$(proc_ticks "${NODE_PID[$id]}"); c1[$id]=$(ctx_switches "${NODE_PID[$id]}"); done
    for id in 0 1 2; do
        summary "idle.node$id.cpu_pct_of_one_core" "$(awk -v a="${t0[$id]}" -v b="${t1[$id]}" -v h="$hz" -v d="$dur" 'BEGIN { printf "%.2f\n", (b - a) / h / d * 100 }')"
        summary "idle.node$id.ctx_switches_per_s" "$(awk -v a="${c0[$id]}" -v b="${c1[$id]}" -v d="$dur" 'BEGIN { printf "%.0f\n", (b - a) / d }')"
    done
    summary idle.pool3.cpu_pct_of_one_core "$(awk -v a="$(( t0[0] + t0[1] + t0[2] ))" -v b="$(( t1[0] + t1[1] + t1[2] ))" -v h="$hz" -v d="$dur" 'BEGIN { printf "%.2f\n", (b - a) / h / d * 100 }')"
    summary idle.leader "$(python3 "$WATCH" leader --bin "$MEDPOOL_BIN" --servers "$(raft_addr 0),$(raft_addr 1),$(raft_addr 2)")"
    summary idle.load_at_end "$(load_avg)"
    stop_pool
}

# ------------------------------------------------------------------ report
print_results() {
    echo
    echo "medpool pool bench: $(git -C "$REPO_DIR" rev-parse --short HEAD 2>/dev/null)$(git -C "$REPO_DIR" diff --quiet HEAD -- node cluster proto 2>/dev/null || echo '+dirty'), SIPp $(sipp -v 2>/dev/null | grep -o 'v[0-9.]*' | head -1), $(nproc) cores; local_calls ${LOCAL_CALLS:-true}; load avg at end: $(load_avg)"
    if [ -s "$FO_TSV" ]; then
        echo
        echo "1. kill -9 -> all shards owned (poll every ${POLL_MS} ms; times in s from SIGKILL to the end of the first 'pool status' showing unowned 0 and the dead node Down with 0 shards)"
        ( echo "$FO_HEADER"; cat "$FO_TSV" ) | column -t -s $'\t'
    fi
    if [ -s "$WORK/results.tsv" ]; then
        echo
        echo "2. CPS: single node vs 3-node pool (every call sent to node 0); srv = the node, or the 3 pool nodes summed (% of ONE core)"
        echo "PASS = 0 failed calls, every call created, and calls created at >= 95% of the target rate."
        ( echo "$RESULTS_HEADER"; cat "$WORK/results.tsv" ) | column -t -s $'\t'
        echo
        echo "pool, per run (deltas of /metrics): calls answered and SIP messages forwarded, per node; Raft entries applied (node 0); dialog batches (ok, failed) and SIP retransmissions sent, all nodes"
        column -t -s $'\t' "$CPS_EXTRA"
        echo
        echo "datagrams dropped by the kernel at the front's SIP UDP socket(s) during each run (ss -uamn skmem d, summed over the pool's 3 nodes), and SO_RCVBUF"
        column -t -s $'\t' "$CPS_DROPS"
    fi
    echo
    echo "Summary (key=value; also in $RESULTS_DIR/pool-$STAMP.txt):"
    cat "$SUMMARY"
}

main() {
    ensure_tools 0
    ensure_medpool
    mkdir -p "$WORK" "$RESULTS_DIR"
    check_free
    # A private copy: target/ is shared, and a rebuild during the run must not change the binary
    # that restarted nodes run.
    cp "$MEDPOOL_BIN" "$WORK/medpool" || exit 1
    MEDPOOL_BIN_SRC=$MEDPOOL_BIN; MEDPOOL_BIN=$WORK/medpool
    ulimit -n 65536 2>/dev/null || true
    : > "$WORK/results.tsv"; : > "$SUMMARY"; : > "$CMDS"
    trap 'stop_all; exit 130' INT TERM
    trap 'stop_all' EXIT
    CFG=$WORK/medpool.toml
    write_medpool_config "$CFG" "options_interval_ms = 1000" "down_after = 2" "up_after = 2"
    summary stamp "$STAMP"
    summary work_dir "$WORK"
    summary cores "$(nproc)"
    summary medpool_commit "$(git -C "$REPO_DIR" rev-parse HEAD 2>/dev/null)$(git -C "$REPO_DIR" diff --quiet HEAD -- node cluster proto 2>/dev/null || echo '+dirty')"
    summary medpool_binary "$MEDPOOL_BIN_SRC built $(stat -c '%y' "$MEDPOOL_BIN_SRC")"
    summary medpool_args "$MEDPOOL_ARGS"
    summary params "PARTS='$PARTS' RUNS=$RUNS LEASE_SETS='$LEASE_SETS' POLL_MS=$POLL_MS SETTLE=$SETTLE RATES='$RATES' DUR=$DUR REPEATS=$REPEATS HOLD_MS=$HOLD_MS HOLD_CALLS='$HOLD_CALLS' HOLD_RATE=$HOLD_RATE"
    summary load_at_start "$(load_avg)"
    log "work dir $WORK; parts: $PARTS"
    local p
    for p in $PARTS; do "part_$p"; sleep 3; done
    summary load_at_end "$(load_avg)"
    print_results | tee "$WORK/table.txt"
    { cat "$SUMMARY"; echo; echo "# commands"; cat "$CMDS"
      [ -s "$FO_TSV" ] && { echo; echo "# failover runs"; echo "$FO_HEADER"; cat "$FO_TSV"; }
      [ -s "$WORK/results.tsv" ] && { echo; echo "# cps runs"; echo "$RESULTS_HEADER"; cat "$WORK/results.tsv"; echo; echo "# pool answered/forwarded per run"; cat "$CPS_EXTRA"; echo; echo "# udp drops per run"; cat "$CPS_DROPS"; }
    } > "$RESULTS_DIR/pool-$STAMP.txt"
    log "summary: $RESULTS_DIR/pool-$STAMP.txt ; raw files: $WORK"
}

main "$@"
