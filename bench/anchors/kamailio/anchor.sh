# shellcheck shell=bash
# The Kamailio anchor's helpers, sourced by bench/lib.sh (never run). They use lib.sh's log,
# STARTED_PIDS and addresses (PROXY_IP/PORT, GW1_IP, GW2_IP, GW_PORT, SIPP_BUF, WORK), so a
# Kamailio they start is stopped with everything else by stop_all.

ANCHOR_DIR=${ANCHOR_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)}
KAM_CHILDREN=${KAM_CHILDREN:-4}   # UDP worker processes
KAM_TCP_CHILDREN=${KAM_TCP_CHILDREN:-$KAM_CHILDREN} # TCP/TLS worker processes (-A WITH_TLS)
# tm keeps every finished transaction for 5 s: at several thousand CPS 1 GB was not enough
KAM_SHM_MB=${KAM_SHM_MB:-4096}
PING_INTERVAL=${PING_INTERVAL:-2} # dispatcher's OPTIONS period (s)
FR_TIMER_MS=${FR_TIMER_MS:-2000}  # tm: 408 after this long without any answer
KAM_TLS_PORT=${KAM_TLS_PORT:-5061} # SIP over TLS (-A WITH_TLS)
KAM_TCP_MAX=${KAM_TCP_MAX:-20000}  # TCP/TLS connections at most (a new connection per call holds one per call up)

# ensure_kamailio : installs Kamailio from Debian when it (or its dispatcher module) is missing
# (lib.sh's ensure_tools installs SIPp and dumpcap, and calls this when Kamailio is measured)
ensure_kamailio() {
    if command -v kamailio >/dev/null && command -v kamcmd >/dev/null \
        && [ -e /usr/lib/x86_64-linux-gnu/kamailio/modules/dispatcher.so ]; then
        return 0
    fi
    log "installing: kamailio"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends kamailio >/dev/null \
        || { log "apt-get install failed"; exit 1; }
}

# ensure_kamailio_tls : Kamailio and its tls module (Debian kamailio-tls-modules), for bench/tls.sh
ensure_kamailio_tls() {
    ensure_kamailio
    [ -e /usr/lib/x86_64-linux-gnu/kamailio/modules/tls.so ] && return 0
    log "installing: kamailio-tls-modules"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends kamailio-tls-modules >/dev/null \
        || { log "apt-get install kamailio-tls-modules failed"; exit 1; }
}

# write_tls_config <cert> <key> <ca> : $WORK/kamailio-tls.cfg (from kamailio-tls.cfg.in) for -A WITH_TLS
write_tls_config() {
    sed -e "s|@TLS_CERT@|$1|g; s|@TLS_KEY@|$2|g; s|@TLS_CA@|$3|g" "$ANCHOR_DIR/kamailio-tls.cfg.in" > "$WORK/kamailio-tls.cfg"
}

# write_configs : $WORK/kamailio.cfg (from kamailio.cfg.in) and $WORK/dispatcher.list
write_configs() {
    mkdir -p "$WORK"
    local name script=""
    for name in KAM_CHILDREN KAM_TCP_CHILDREN PROXY_IP PROXY_PORT SIPP_BUF WORK FR_TIMER_MS PING_INTERVAL KAM_TLS_PORT KAM_TCP_MAX; do
        script+="s|@$name@|${!name}|g;"
    done
    sed -e "$script" "$ANCHOR_DIR/kamailio.cfg.in" > "$WORK/kamailio.cfg"
    if grep -q '@[A-Z_]*@' "$WORK/kamailio.cfg"; then
        log "kamailio.cfg.in has a placeholder anchor.sh does not fill: $(grep -o '@[A-Z_]*@' "$WORK/kamailio.cfg" | head -1)"
        exit 1
    fi
    printf '# set destination flags priority\n1 sip:%s:%s 0 0\n1 sip:%s:%s 0 0\n' \
        "$GW1_IP" "$GW_PORT" "$GW2_IP" "$GW_PORT" > "$WORK/dispatcher.list"
}

# start_kamailio [-A DEFINE ...] : Kamailio in the foreground (-DD) on $WORK's config; sets LAST_PID
start_kamailio() {
    kamailio -f "$WORK/kamailio.cfg" -DD -E -m "$KAM_SHM_MB" -M 16 "$@" > "$WORK/kamailio.log" 2>&1 &
    LAST_PID=$!
    STARTED_PIDS+=("$LAST_PID")
}

kam_rpc() { kamcmd -s "unix:$WORK/kamailio_ctl" "$@"; }

# wait_gateways_up : until dispatcher shows both gateways active and probing ("AP"), at most 20 s
wait_gateways_up() {
    local i
    for i in $(seq 100); do
        [ "$(kam_rpc dispatcher.list 2>/dev/null | grep -c 'FLAGS: AP')" = 2 ] && return 0
        sleep 0.2
    done
    log "dispatcher did not mark both gateways up"; kam_rpc dispatcher.list >&2; return 1
}
