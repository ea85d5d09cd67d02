#!/usr/bin/env python3
"""Where a node failover's time goes: a 3-node pool, SIGKILLs, and a timeline per kill.

  bench/failover-timeline.py --bin target/release/medpool [--net 80] [--kills 20] [--work DIR]
                             [--settle 3] [-- extra `medpool serve` flags, e.g. --lease-ms 800]

Starts three `medpool serve` nodes on 127.0.NET.1-3 (SIP :5060, internal :7000, admin :7001), each
with --audit-file and JSON logs at info. Each kill SIGKILLs one node (every 2nd kill the leader, the
others a follower, rotating), then restarts it on its data dir once every shard is owned again and
waits until it is back with shards (plus --settle s). Per kill, from the nodes' audit reports and
logs (all on one machine: one wall clock, Unix µs), relative to the kill:
  lease_end   the victim's last lease ended (audit `lease ... until_us`)
  leader      a survivor became leader (audit `leader`; leader kills only: election + detection)
  down        the leader declared the victim down (log `node declared down`)
  moved       the leader proposed the move (log `rebalancing shards`)
  owned       the survivors took the last of the victim's shards into their acting sets (audit
              `acting ... add`): every shard is owned and acted for again
and prints them with p50/p99/max of `owned` per kind of kill. Everything it starts is stopped by
PID on exit. Only loopback addresses of 127.0.NET.0/24 are used.
"""
import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from datetime import datetime

SIP, RAFT, ADMIN = 5060, 7000, 7001
PROCS = {}


def ip(net, host):
    return f'127.0.{net}.{host}'


def config(net):
    gw = lambda k: f'''
[[trunk]]
name = "gw{k}"
address = "{ip(net, 20 + k)}"
port = 5060
transport = "udp"
side = "gateway"
options_interval_ms = 1000
usages = ["inbound"]
media = "bypass"
'''
    return f'''# written by bench/failover-timeline.py
[[trunk]]
name = "pbx"
address = "{ip(net, 50)}"
side = "internal"
match_any_port = true
usages = ["outbound"]
media = "bypass"
{gw(1)}{gw(2)}
[[route]]
name = "from-pstn"
pattern = '.*'
usage = "inbound"
trunks = ["pbx"]

[[route]]
name = "to-gateways"
pattern = '.*'
usage = "outbound"
trunks = [{{ trunk = "gw1", priority = 1 }}, {{ trunk = "gw2", priority = 1 }}]
'''


def start(a, i, join):
    h = ip(a.net, i + 1)
    args = [a.bin, 'serve', '--config', os.path.join(a.work, 'pool.toml'),
            '--sip-listen', f'{h}:{SIP}', '--raft-listen', f'{h}:{RAFT}', '--node-id', str(i),
            '--data-dir', os.path.join(a.work, f'node{i}'), '--log', 'info', '--log-format', 'json',
            '--audit-file', os.path.join(a.work, f'node{i}.audit'), '--shutdown-grace', '1'] + a.extra
    if join is not None:
        args += ['--join', f'{ip(a.net, join + 1)}:{RAFT}']
    log = open(os.path.join(a.work, f'node{i}.log'), 'a')
    PROCS[i] = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)


def status(a, i):
    try:
        p = subprocess.run([a.bin, 'ctl', '-o', 'json', '--timeout', '1', '--server',
                            f'{ip(a.net, i + 1)}:{ADMIN}', 'status', '--local'],
                           capture_output=True, text=True, timeout=3)
        return json.loads(p.stdout)
    except (subprocess.TimeoutExpired, ValueError):
        return None


def converged(a, who):
    """Every node in `who` sees 3 nodes Active with shards, none unowned, and a leader."""
    for i in who:
        s = status(a, i)
        if not s or s.get('leader') is None or s['unowned_shards'] != 0:
            return None
        if sum(1 for n in s['nodes'] if n['state'].lower() == 'active' and n['shards'] > 0) != 3:
            return None
    return s


def wait(what, pred, timeout):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        r = pred()
        if r:
            return r
        time.sleep(0.1)
    sys.exit(f'timed out waiting for {what} (logs in the work dir)')


def audit(a, i):
    """Node i's audit lines as (kind, dict of fields)."""
    out = []
    try:
        for line in open(os.path.join(a.work, f'node{i}.audit')):
            w = line.split()
            if w:
                out.append((w[0], dict(x.split('=', 1) for x in w[1:] if '=' in x)))
    except OSError:
        pass
    return out


def log_us(a, i, needles, after_us):
    """Unix µs of the first JSON log line of node i at or after `after_us` whose message holds one
    of `needles`."""
    try:
        for line in open(os.path.join(a.work, f'node{i}.log'), errors='replace'):
            if not line.startswith('{'):
                continue
            try:
                j = json.loads(line)
            except ValueError:
                continue
            msg = j.get('fields', {}).get('message', '')
            if not any(n in msg for n in needles):
                continue
            t = int(datetime.fromisoformat(j['timestamp'].replace('Z', '+00:00')).timestamp() * 1e6)
            if t >= after_us:
                return t
    except OSError:
        pass
    return None


def ranges(text):
    """The shard numbers of an audit `<ranges>` field: `0,2,4-7`."""
    out = set()
    for part in text.split(','):
        if '-' in part:
            lo, hi = part.split('-')
            out |= set(range(int(lo), int(hi) + 1))
        elif part:
            out.add(int(part))
    return out


def timeline(a, victim, kill_us, shards):
    survivors = [i for i in range(3) if i != victim]
    row = {}
    ends = [int(f['until_us']) for k, f in audit(a, victim) if k == 'lease' and int(f['from_us']) <= kill_us]
    row['lease_end'] = max(ends) if ends else None
    leads = [int(f['at_us']) for i in survivors for k, f in audit(a, i) if k == 'leader' and int(f['at_us']) > kill_us]
    row['leader'] = min(leads) if leads else None
    row['down'] = min(filter(None, (log_us(a, i, ('declared down', 'silent for longer'), kill_us) for i in survivors)), default=None)
    row['moved'] = min(filter(None, (log_us(a, i, ('rebalancing shards',), kill_us) for i in survivors)), default=None)
    # The last survivor acting add that covers one of the victim's shards.
    left, owned = set(shards), None
    for i in survivors:
        for k, f in audit(a, i):
            if k != 'acting' or int(f['at_us']) <= kill_us or 'add' not in f:
                continue
            got = ranges(f['add'])
            if got & left:
                left -= got
                owned = max(owned or 0, int(f['at_us']))
    row['owned'] = owned if not left else None
    return {k: (None if v is None else (v - kill_us) / 1e6) for k, v in row.items()}


def pct(v, p):
    v = sorted(v)
    if not v:
        return '-'
    r = max(1, -(-len(v) * p // 100))
    return f'{v[int(r) - 1]:.2f}'


def stop_all():
    for p in PROCS.values():
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in PROCS.values():
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--bin', required=True)
    ap.add_argument('--net', type=int, default=80)
    ap.add_argument('--kills', type=int, default=20)
    ap.add_argument('--settle', type=float, default=3.0)
    ap.add_argument('--work')
    ap.add_argument('extra', nargs=argparse.REMAINDER)
    a = ap.parse_args()
    a.extra = [x for x in a.extra if x != '--']
    a.work = a.work or tempfile.mkdtemp(prefix='medpool-failover.')
    os.makedirs(a.work, exist_ok=True)
    open(os.path.join(a.work, 'pool.toml'), 'w').write(config(a.net))
    print(f'# work dir {a.work}; serve flags: {" ".join(a.extra) or "(defaults)"}', flush=True)
    rows = []
    try:
        start(a, 0, None)
        wait('node 0', lambda: status(a, 0), 30)
        for i in (1, 2):
            start(a, i, 0)
        wait('the pool', lambda: converged(a, range(3)), 60)
        time.sleep(a.settle)
        print('kill victim kind     lease_end leader  down   moved  owned', flush=True)
        follower_turn = 0
        for k in range(a.kills):
            s = converged(a, range(3)) or wait('the pool', lambda: converged(a, range(3)), 60)
            leader = s['leader']
            if k % 2 == 0:
                victim = leader
            else:
                victim = [i for i in range(3) if i != leader][follower_turn % 2]
                follower_turn += 1
            kind = 'leader' if victim == leader else 'follower'
            # The victim's shards: from its own acting set in its audit (adds minus removes).
            acting = set()
            for kk, f in audit(a, victim):
                if kk == 'start':
                    acting = set()
                if kk == 'acting':
                    if 'add' in f:
                        acting |= ranges(f['add'])
                    if 'remove' in f:
                        acting -= ranges(f['remove'])
            kill_us = int(time.time() * 1e6)
            PROCS[victim].kill()
            PROCS[victim].wait()
            survivors = [i for i in range(3) if i != victim]

            def moved():
                for i in survivors:
                    st = status(a, i)
                    if not st or st['unowned_shards'] != 0:
                        return False
                    if any(n['id'] == victim and (n['state'].lower() == 'active' or n['shards'] > 0) for n in st['nodes']):
                        return False
                return True
            wait('the failover', moved, 30)
            time.sleep(0.5)
            t = timeline(a, victim, kill_us, acting)
            rows.append((kind, t))
            f = lambda v: '    -' if v is None else f'{v:5.2f}'
            print(f'{k + 1:4} {victim:6} {kind:8} {f(t["lease_end"]):>9} {f(t["leader"]):>6} {f(t["down"]):>6} '
                  f'{f(t["moved"]):>6} {f(t["owned"]):>6}', flush=True)
            start(a, victim, survivors[0])
            wait('the restarted node', lambda: converged(a, range(3)), 60)
            time.sleep(a.settle)
    finally:
        stop_all()
    for kind in ('leader', 'follower', 'all'):
        v = [t['owned'] for k, t in rows if (kind == 'all' or k == kind) and t['owned'] is not None]
        miss = sum(1 for k, t in rows if (kind == 'all' or k == kind) and t['owned'] is None)
        print(f'# {kind:8} kills {len(v) + miss:3}  kill -> owned  p50 {pct(v, 50)} s  p99 {pct(v, 99)} s  '
              f'max {pct(v, 100)} s  unmeasured {miss}')


if __name__ == '__main__':
    main()
