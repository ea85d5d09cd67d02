//! A local pool: `medpool serve` processes on 127.0.N.1, .2, .3 (SIP :5060, internal :7000), node 0
//! bootstrapping and the others joining through it, all advertising the Service address 127.0.N.100
//! and trusting it as a forwarder; the standard configuration (internal trunk `pbx` = the caller on
//! 127.0.N.50 any port, gateways `gw1`/`gw2` on 127.0.N.21/.22:5060); and the waits a test needs,
//! read from each node's pool status (medpool-cluster's Info over the internal service, through
//! medpool-harness's [`status`](medpool_harness::status) helpers, shared with `medpool demo`) and logs.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use medpool_cluster::pool::PoolInfo;
use medpool_harness::status::{is_active, node_row};
use tokio::time::Instant;

pub use medpool_harness::status::{field, status_table};

use crate::HarnessError;
use crate::process::{NodeProcess, NodeSpec};

/// Addresses of the test network 127.0.N.x (N unique to a test).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Net(pub u8);

impl Net {
    /// 127.0.N.host.
    pub fn ip(self, host: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(127, 0, self.0, host))
    }
    /// Node `i`'s SIP address: 127.0.N.(i+1):5060.
    pub fn node_sip(self, i: usize) -> SocketAddr {
        SocketAddr::new(self.ip(i as u8 + 1), 5060)
    }
    /// Node `i`'s internal address: 127.0.N.(i+1):7000.
    pub fn node_raft(self, i: usize) -> SocketAddr {
        SocketAddr::new(self.ip(i as u8 + 1), 7000)
    }
    /// The Service (forwarder) address: 127.0.N.100:5060.
    pub fn service(self) -> SocketAddr {
        SocketAddr::new(self.ip(100), 5060)
    }
    /// Gateway `k` (0 = gw1, 1 = gw2): 127.0.N.(21+k):5060.
    pub fn gateway(self, k: usize) -> SocketAddr {
        SocketAddr::new(self.ip(21 + k as u8), 5060)
    }
    /// The caller (internal trunk `pbx`) at 127.0.N.50:`port`.
    pub fn caller(self, port: u16) -> SocketAddr {
        SocketAddr::new(self.ip(50), port)
    }
}

/// The pool configuration every node is started with: signalling only (`media = "bypass"`).
pub fn pool_config(net: Net) -> String {
    pool_config_with(net, false)
}

/// The pool configuration, with every trunk's media relayed (`relay`) or bypassed.
pub fn pool_config_with(net: Net, relay: bool) -> String {
    let media = if relay { "relay" } else { "bypass" };
    let pbx = net.ip(50);
    let gw = |k: usize| {
        let a = net.gateway(k);
        format!(
            r#"
[[trunk]]
name = "gw{n}"
address = "{ip}"
port = {port}
transport = "udp"
side = "gateway"
options_interval_ms = 1000
down_after = 3
up_after = 1
usages = ["inbound"]
media = "{media}"
"#,
            n = k + 1,
            ip = a.ip(),
            port = a.port()
        )
    };
    format!(
        r#"# written by medpool-chaos-tests
[node]
max_calls = 20000
max_tries = 2

[[trunk]]
name = "pbx"
address = "{pbx}"
side = "internal"
match_any_port = true
usages = ["outbound"]
# "relay" when the simulated peers send RTP (the media tests and the chaos suite's media
# invariant); "bypass" otherwise (a relayed call without RTP would end at the media timeout).
media = "{media}"
{gw1}{gw2}
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
"#,
        gw1 = gw(0),
        gw2 = gw(1),
    )
}

/// What a failover looked like from the survivors.
#[derive(Debug, Clone)]
pub struct Failover {
    /// From the SIGKILL until a survivor's shard map shows the victim down with no shard.
    pub map_moved: Duration,
    /// From the SIGKILL until every survivor that gained shards logged `shards adopted`.
    pub adopted: Duration,
    /// Calls rebuilt by the survivors (sum of `restored=` in their `shards adopted` lines).
    pub restored: usize,
    /// The survivors' `shards adopted` lines.
    pub lines: Vec<String>,
    /// The pool status after the move.
    pub after: PoolInfo,
}

/// How a restarted node came back.
#[derive(Debug, Clone)]
pub struct Rejoin {
    /// The pool status (seen by another node) once it was back.
    pub info: PoolInfo,
    /// The `shards adopted`/`shards released` lines of the hand-over, in time order.
    pub lines: Vec<String>,
    /// From the restart until its log said `member of the pool`.
    pub member_after: Duration,
    /// From the restart until it owned its shards and held its lease.
    pub back_after: Duration,
    /// How long it owned its shards (as the pool and it agree) without a lease to act on them.
    pub owned_without_lease: Option<Duration>,
}

/// A local pool of node processes (stopped by PID when dropped). Its folder (data and logs) is
/// removed afterwards, unless the test panicked.
#[derive(Debug)]
pub struct LocalPool {
    /// Its addresses.
    pub net: Net,
    /// Nodes by index (node id = index); a killed node stays here until restarted.
    pub nodes: Vec<NodeProcess>,
    bin: PathBuf,
    config: PathBuf,
    dir: tempfile::TempDir,
    setup: Setup,
}

/// How the nodes of a [`LocalPool`] are started beyond the defaults.
#[derive(Debug, Clone, Default)]
pub struct Setup {
    /// Each node writes its audit report (`--audit-file`) next to its log: `node<i>.audit`.
    pub audit: bool,
    /// Data folders placed elsewhere (e.g. on a small tmpfs), by node index.
    pub data_dirs: std::collections::BTreeMap<usize, PathBuf>,
    /// Every trunk relays media (the peers send RTP); otherwise media bypasses the pool.
    pub media_relay: bool,
    /// The caller's trunk (`pbx`) has this `encryption` (e.g. `"required"`: its calls are SRTP);
    /// `None` leaves the default (plain RTP).
    pub pbx_encryption: Option<&'static str>,
}

impl LocalPool {
    /// Starts `size` nodes on `net` and waits until the pool has converged (every node active with
    /// shards, having adopted them and holding its lease; no unowned shard).
    pub async fn start(net: Net, size: usize) -> Result<LocalPool, HarnessError> {
        LocalPool::start_with(net, size, Setup::default()).await
    }

    /// [`LocalPool::start`] with a [`Setup`].
    pub async fn start_with(
        net: Net,
        size: usize,
        setup: Setup,
    ) -> Result<LocalPool, HarnessError> {
        let bin = crate::binary::medpool_binary()?;
        let dir = tempfile::Builder::new()
            .prefix(&format!("medpool-chaos-{}-", net.0))
            .tempdir()
            .map_err(|source| HarnessError::File {
                path: std::env::temp_dir(),
                source,
            })?;
        let config = dir.path().join("medpool.toml");
        let mut text = pool_config_with(net, setup.media_relay);
        if let Some(e) = setup.pbx_encryption {
            text = text.replacen(
                "name = \"pbx\"",
                &format!("name = \"pbx\"\nencryption = \"{e}\""),
                1,
            );
        }
        std::fs::write(&config, text).map_err(|source| HarnessError::File {
            path: config.clone(),
            source,
        })?;
        eprintln!(
            "[pool 127.0.{}.x] binary {} · data and logs in {}",
            net.0,
            bin.display(),
            dir.path().display()
        );
        let mut pool = LocalPool {
            net,
            nodes: Vec::new(),
            bin,
            config,
            dir,
            setup,
        };
        for i in 0..size {
            let join = if i == 0 {
                vec![]
            } else {
                vec![net.node_raft(0)]
            };
            let spec = pool.spec(i, join, "log");
            let mut node = NodeProcess::spawn(&pool.bin, spec)?;
            node.wait_for_line(0, "medpool ready", Duration::from_secs(30))
                .await?;
            pool.nodes.push(node);
        }
        let members: Vec<usize> = (0..size).collect();
        pool.wait_converged(&members, Duration::from_secs(30))
            .await?;
        Ok(pool)
    }

    fn spec(&self, i: usize, join: Vec<SocketAddr>, log: &str) -> NodeSpec {
        NodeSpec {
            id: i as u64,
            sip: self.net.node_sip(i),
            raft: self.net.node_raft(i),
            join,
            data_dir: self
                .setup
                .data_dirs
                .get(&i)
                .cloned()
                .unwrap_or_else(|| self.dir.path().join(format!("node{i}"))),
            config: self.config.clone(),
            advertise: self.net.service(),
            trusted_forwarder: self.net.service().ip(),
            log_file: self.dir.path().join(format!("node{i}.{log}")),
            extra: if self.setup.audit {
                vec![
                    "--audit-file".to_owned(),
                    self.audit_file(i).display().to_string(),
                ]
            } else {
                Vec::new()
            },
        }
    }

    /// Node `i`'s audit report file (written when [`Setup::audit`] is on).
    pub fn audit_file(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("node{i}.audit"))
    }

    /// Keeps the folder with data and logs after the pool is dropped (a failed run).
    pub fn keep_dir(&mut self) {
        self.dir.disable_cleanup(true);
    }

    /// The folder with data and logs.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The node whose SIP address is `sip`.
    pub fn index_of(&self, sip: SocketAddr) -> Option<usize> {
        (0..self.nodes.len()).find(|&i| self.net.node_sip(i) == sip)
    }

    /// Node `i`'s view of the pool.
    pub async fn status(&self, i: usize) -> Result<PoolInfo, HarnessError> {
        medpool_harness::status::status(self.net.node_raft(i)).await
    }

    /// Waits until, as `members[0]` sees it, every member is active with shards, no shard is
    /// unowned, every member has logged `shards adopted` and holds its lease (a node acts on its
    /// shards only with a lease: before, new calls on them are answered 503).
    pub async fn wait_converged(
        &mut self,
        members: &[usize],
        within: Duration,
    ) -> Result<PoolInfo, HarnessError> {
        let deadline = Instant::now() + within;
        let asked = members.first().copied().unwrap_or(0);
        let mut last = None;
        loop {
            if let Ok(info) = self.status(asked).await {
                let all_serving = members.iter().all(|&m| {
                    node_row(&info, m).is_some_and(|(state, shards)| is_active(state) && shards > 0)
                });
                let adopted = members
                    .iter()
                    .all(|&m| !self.nodes[m].log().matching(0, "shards adopted").is_empty());
                // Each member holds its lease and acts for every shard it owns (past any hand-over
                // fence): before that, new calls on a fenced shard are answered 503.
                let mut leases = true;
                for &m in members {
                    leases = leases
                        && self.status(m).await.is_ok_and(|own| {
                            own.lease
                                && node_row(&own, m).is_some_and(|(_, shards)| own.acting == shards)
                        });
                }
                if all_serving && adopted && leases && info.unowned == 0 {
                    return Ok(info);
                }
                last = Some(info);
            }
            for &m in members {
                if let Some(status) = self.nodes[m].exited() {
                    return Err(HarnessError::Exited {
                        node: format!("node {m}"),
                        status: status.to_string(),
                        tail: self.nodes[m].log().tail(30),
                    });
                }
            }
            if Instant::now() >= deadline {
                return Err(HarnessError::Timeout {
                    what: format!(
                        "the pool to converge on nodes {members:?}; last status:\n{}",
                        last.as_ref().map(status_table).unwrap_or_default()
                    ),
                    after: within,
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// SIGKILLs node `i`; returns when it was killed.
    pub fn kill(&mut self, i: usize) -> Instant {
        self.nodes[i].kill9();
        Instant::now()
    }

    /// After node `victim` was killed at `killed`: waits until a survivor's map shows it down with no
    /// shard and no shard unowned, then until every survivor that gained shards (compared with
    /// `before`) logged `shards adopted` after `log_marks` (the survivors' log lengths at the kill).
    pub async fn wait_failover(
        &mut self,
        victim: usize,
        killed: Instant,
        before: &PoolInfo,
        log_marks: &[(usize, usize)],
        within: Duration,
    ) -> Result<Failover, HarnessError> {
        let deadline = killed + within;
        let survivors: Vec<usize> = log_marks.iter().map(|(i, _)| *i).collect();
        let asked = survivors.first().copied().unwrap_or(0);
        let timeout = |what: String| HarnessError::Timeout {
            what,
            after: within,
        };
        let (after, map_moved) = loop {
            if let Ok(info) = self.status(asked).await {
                let victim_gone = node_row(&info, victim)
                    .is_some_and(|(state, shards)| !is_active(state) && shards == 0);
                if victim_gone && info.unowned == 0 {
                    break (info, killed.elapsed());
                }
            }
            if Instant::now() >= deadline {
                let now = self.status(asked).await.ok();
                return Err(timeout(format!(
                    "node {victim}'s shards to move; status now:\n{}",
                    now.as_ref().map(status_table).unwrap_or_default()
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let mut lines = Vec::new();
        for &(s, mark) in log_marks {
            let gained = node_row(&after, s).map(|r| r.1) > node_row(before, s).map(|r| r.1);
            if !gained {
                continue;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self.nodes[s]
                .wait_for_line(mark, "shards adopted", left)
                .await?;
            lines.push(format!("node {s}: {line}"));
        }
        let adopted = killed.elapsed();
        let restored = log_marks
            .iter()
            .flat_map(|&(s, mark)| self.nodes[s].log().matching(mark, "shards adopted"))
            .filter_map(|l| field(&l, "restored"))
            .sum();
        Ok(Failover {
            map_moved,
            adopted,
            restored,
            lines,
            after,
        })
    }

    /// Restarts node `i` with its data folder, joining through the others, and waits until it is
    /// back: its log says `member of the pool`; another node and node `i` itself agree that `i` is
    /// active and owns shards again (a joining node receives shards), no shard is unowned; `i`'s
    /// last shard event is the adoption of exactly those shards; and `i` holds its lease (it may
    /// act). Returns how that went.
    pub async fn restart(&mut self, i: usize, within: Duration) -> Result<Rejoin, HarnessError> {
        let started = Instant::now();
        let deadline = started + within;
        let join: Vec<SocketAddr> = (0..self.nodes.len())
            .filter(|&j| j != i)
            .map(|j| self.net.node_raft(j))
            .collect();
        let marks: Vec<(usize, usize)> = (0..self.nodes.len())
            .filter(|&j| j != i)
            .map(|j| (j, self.nodes[j].log().len()))
            .collect();
        let spec = self.spec(i, join, "restarted.log");
        self.nodes[i] = NodeProcess::spawn(&self.bin, spec)?;
        self.nodes[i]
            .wait_for_line(0, "medpool ready", within)
            .await?;
        let left = deadline.saturating_duration_since(Instant::now());
        self.nodes[i]
            .wait_for_line(0, "member of the pool", left)
            .await?;
        let member_after = started.elapsed();
        let others = marks.first().map_or(0, |m| m.0);
        let mut last = None;
        let mut owned_without_lease = None;
        loop {
            if let (Ok(seen), Ok(own)) = (self.status(others).await, self.status(i).await) {
                if self.settled_after_rejoin(i, &seen, &own) {
                    if own.lease {
                        let lines = self.shard_events(i, &marks);
                        let back_after = started.elapsed();
                        return Ok(Rejoin {
                            info: seen,
                            lines,
                            member_after,
                            back_after,
                            owned_without_lease: owned_without_lease
                                .map(|t: Instant| back_after - (t - started)),
                        });
                    }
                    owned_without_lease.get_or_insert_with(Instant::now);
                }
                last = Some(seen);
            }
            if Instant::now() >= deadline {
                return Err(HarnessError::Timeout {
                    what: format!(
                        "node {i} to own shards again and hold its lease after rejoining; last status:\n{}",
                        last.as_ref().map(status_table).unwrap_or_default()
                    ),
                    after: within,
                });
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// `shards adopted`/`shards released` lines of node `i` (all) and of the others (after their
    /// marks), in time order.
    fn shard_events(&self, i: usize, marks: &[(usize, usize)]) -> Vec<String> {
        let mut lines = Vec::new();
        for pattern in ["shards adopted", "shards released"] {
            for l in self.nodes[i].log().matching(0, pattern) {
                lines.push(format!("node {i}: {l}"));
            }
            for &(j, mark) in marks {
                for l in self.nodes[j].log().matching(mark, pattern) {
                    lines.push(format!("node {j}: {l}"));
                }
            }
        }
        lines.sort_by(|a, b| {
            a.split_once(": ")
                .map(|x| x.1)
                .cmp(&b.split_once(": ").map(|x| x.1))
        });
        lines
    }
}

impl LocalPool {
    /// After a rejoin: another node (`seen`) and node `i` itself (`own`) agree that `i` is active
    /// with the same shards (more than none), no shard is unowned, and `i`'s last shard event is a
    /// `shards adopted` of exactly that many shards. (A restarted node first adopts the shards its
    /// old state on disk gives it, then releases them when it catches up: that first line is not
    /// the one awaited.)
    fn settled_after_rejoin(&self, i: usize, seen: &PoolInfo, own: &PoolInfo) -> bool {
        let (Some((s1, n1)), Some((s2, n2))) = (node_row(seen, i), node_row(own, i)) else {
            return false;
        };
        // The node acts for every shard it owns (past any hand-over fence), by its own report. (Its
        // log's "shards adopted" lines once stood in for this; a restarted node's log holds its
        // earlier lives too, and a release of shards it never acted for logs nothing.)
        is_active(s1)
            && is_active(s2)
            && n1 == n2
            && n1 > 0
            && seen.unowned == 0
            && own.unowned == 0
            && own.acting == n1
    }
}

impl Drop for LocalPool {
    fn drop(&mut self) {
        // Nodes first (their guards print their logs' ends on a panic), then the folder.
        self.nodes.clear();
        if std::thread::panicking() {
            self.dir.disable_cleanup(true);
            eprintln!("data and logs kept in {}", self.dir.path().display());
        }
    }
}
