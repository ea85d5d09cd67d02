#!/usr/bin/env python3
"""Helper of bench/pool.sh: watches a medpool pool through `medpool ctl -o json status --local` (never run alone).

  pool-watch.py leader  --bin MEDPOOL --servers A,B,...
        prints the leader's node id as the first reachable server sees it ("none" / "?" otherwise)
  pool-watch.py kill    --bin MEDPOOL --servers A[,B] --pid PID --node N [--interval 0.05] [--timeout 30] [--trace FILE]
        sends SIGKILL to PID (node N) and polls `ctl status --local` on A every --interval seconds (B is
        polled instead while A does not answer) until it shows no unowned shard, node N with state
        Down and 0 shards. Prints one line of key=value: kill->down and kill->all-owned times (the end
        of the first poll that showed it: an upper bound; `..._lo` = the end of the poll before it, a
        lower bound), the first leader other than N seen (leader_after) and when (leader_seen_s), polls made and their durations.
  pool-watch.py rejoin  --bin MEDPOOL --servers A[,B] --node N --self S [--interval 0.1] [--timeout 60] [--trace FILE]
        polls until A shows node N Active with shards > 0 and none unowned, and node N itself (server S)
        shows itself Active and knows a leader. Prints key=value: seconds to Active, to shards back.
  pool-watch.py show    --bin MEDPOOL --servers A
        prints A's view as the text pool.sh parses: `node I · leader L · term T · applied A · config vC ·
        dialogs D · unowned shards U`, then a header and one `ID SIP STATE SHARDS` row per node.
All times are from time.monotonic(). Every poll's output is appended to --trace (evidence).
"""
import argparse
import json
import os
import signal
import subprocess
import sys
import time

def admin_of(server):
    """A node's admin API from its internal address (pool.sh: same IP, port 7001, medpool's default)."""
    host = server.rsplit(':', 1)[0]
    return f'{host}:7001'


def status(binary, server, timeout=2.0):
    """One `medpool ctl status --local` call on the node whose internal address is `server` (its own
    view, no fan-out): (dict or None, t_start, t_end, raw text)."""
    t0 = time.monotonic()
    try:
        p = subprocess.run([binary, 'ctl', '-o', 'json', '--timeout', str(max(1, int(timeout))),
                            '--server', admin_of(server), 'status', '--local'],
                           capture_output=True, text=True, timeout=timeout)
        out = p.stdout + p.stderr
    except subprocess.TimeoutExpired:
        return None, t0, time.monotonic(), 'timeout'
    t1 = time.monotonic()
    try:
        j = json.loads(p.stdout)
    except ValueError:
        return None, t0, t1, out
    opt = lambda v: '-' if v is None else str(v)
    st = {'node': j['node_id'], 'leader': 'none' if j.get('leader') is None else str(j['leader']),
          'term': j['term'], 'applied': opt(j.get('applied_index')), 'config': opt(j.get('config_version')),
          'dialogs': j['dialogs'], 'unowned': j['unowned_shards'], 'nodes': {}}
    for n in j['nodes']:
        st['nodes'][n['id']] = (n['sip_addr'], n['state'].capitalize(), n['shards'])
    return st, t0, t1, out


def trace(f, tag, t_ref, t0, t1, server, out):
    if f:
        f.write(f'--- {tag} server={server} start=+{t0 - t_ref:.3f}s end=+{t1 - t_ref:.3f}s\n{out.rstrip()}\n')


def cmd_leader(a):
    for s in a.servers.split(','):
        st, _, _, _ = status(a.bin, s)
        if st:
            print(st['leader'])
            return 0
    print('?')
    return 1


def cmd_kill(a):
    servers = a.servers.split(',')
    f = open(a.trace, 'a') if a.trace else None
    t_kill = time.monotonic()
    os.kill(a.pid, signal.SIGKILL)
    down = down_lo = owned = owned_lo = None
    leader_new = None
    leader_first = None
    unowned_max = 0
    polls = 0
    durs = []
    prev_end = t_kill
    nxt = t_kill
    idx = 0
    fails = 0
    while time.monotonic() - t_kill < a.timeout:
        now = time.monotonic()
        if nxt > now:
            time.sleep(nxt - now)
        nxt = max(nxt + a.interval, time.monotonic())
        server = servers[idx]
        st, t0, t1, out = status(a.bin, server)
        polls += 1
        durs.append(t1 - t0)
        trace(f, f'kill node {a.node}', t_kill, t0, t1, server, out)
        if st is None:
            fails += 1
            idx = (idx + 1) % len(servers)   # try the other survivor
            prev_end = t1
            continue
        if st['leader'] not in ('none', str(a.node)) and leader_new is None:
            leader_new = t1 - t_kill
            leader_first = st['leader']
        unowned_max = max(unowned_max, st['unowned'])
        row = st['nodes'].get(a.node)
        if row and row[1] == 'Down' and down is None:
            down, down_lo = t1 - t_kill, prev_end - t_kill
        if row and row[1] == 'Down' and row[2] == 0 and st['unowned'] == 0:
            owned, owned_lo = t1 - t_kill, prev_end - t_kill
            break
        prev_end = t1
    durs.sort()
    fmt = lambda x: f'{x:.3f}' if x is not None else 'timeout'
    print(f'down_s={fmt(down)} down_lo_s={fmt(down_lo)} owned_s={fmt(owned)} owned_lo_s={fmt(owned_lo)} '
          f'leader_seen_s={fmt(leader_new)} leader_after={leader_first or "-"} unowned_max={unowned_max} '
          f'polls={polls} poll_fail={fails} poll_p50_ms={durs[len(durs) // 2] * 1000:.0f} '
          f'poll_max_ms={durs[-1] * 1000:.0f}')
    return 0 if owned is not None else 1


def cmd_rejoin(a):
    servers = a.servers.split(',')
    f = open(a.trace, 'a') if a.trace else None
    t_ref = time.monotonic()
    active = shards = selfok = None
    idx = 0
    while time.monotonic() - t_ref < a.timeout:
        server = servers[idx]
        st, t0, t1, out = status(a.bin, server)
        trace(f, f'rejoin node {a.node}', t_ref, t0, t1, server, out)
        if st is None:
            idx = (idx + 1) % len(servers)
        else:
            row = st['nodes'].get(a.node)
            if row and row[1] == 'Active' and active is None:
                active = t1 - t_ref
            if row and row[1] == 'Active' and row[2] > 0 and st['unowned'] == 0 and shards is None:
                shards = t1 - t_ref
        if shards is not None and selfok is None:
            s2, t0, t1, out = status(a.bin, a.self)
            trace(f, f'rejoin node {a.node} (itself)', t_ref, t0, t1, a.self, out)
            if s2 and s2['leader'] not in ('none', '?') and s2['nodes'].get(a.node, ('', '', 0))[1] == 'Active' \
                    and s2['nodes'][a.node][2] > 0:
                selfok = t1 - t_ref
                break
        time.sleep(a.interval)
    fmt = lambda x: f'{x:.3f}' if x is not None else 'timeout'
    print(f'active_s={fmt(active)} shards_back_s={fmt(shards)} self_view_s={fmt(selfok)}')
    return 0 if selfok is not None else 1


def cmd_show(a):
    server = a.servers.split(',')[0]
    st, _, _, out = status(a.bin, server)
    if not st:
        print(out.rstrip())
        return 1
    print(f"node {st['node']} · leader {st['leader']} · term {st['term']} · applied {st['applied']} · "
          f"config v{st['config']} · dialogs {st['dialogs']} · unowned shards {st['unowned']}")
    print(f"{'NODE':<6} {'SIP':<24} {'STATE':<10} {'SHARDS':>6}")
    for i, (sip, state, shards) in sorted(st['nodes'].items()):
        print(f"{i:<6} {sip:<24} {state:<10} {shards:>6}")
    return 0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('cmd', choices=['leader', 'kill', 'rejoin', 'show'])
    ap.add_argument('--bin', required=True)
    ap.add_argument('--servers', required=True)
    ap.add_argument('--pid', type=int)
    ap.add_argument('--node', type=int)
    ap.add_argument('--self')
    ap.add_argument('--interval', type=float, default=0.05)
    ap.add_argument('--timeout', type=float, default=30.0)
    ap.add_argument('--trace')
    a = ap.parse_args()
    return {'leader': cmd_leader, 'kill': cmd_kill, 'rejoin': cmd_rejoin, 'show': cmd_show}[a.cmd](a)


if __name__ == '__main__':
    sys.exit(main())
