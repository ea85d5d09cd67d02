//! In-process DialogActor and GatewayActor tests on paused time: a node started with `node::start` on
//! loopback, and scripted SIP peers (a caller and gateways) written with medpool-sip's codec. Time is
//! paused, so fast-failover, Timer B, 2xx retransmission and OPTIONS-probe timers run in virtual time.

#![allow(clippy::unwrap_used, clippy::panic, missing_docs)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use medpool_b2bua::cluster::SingleNode;
use medpool_b2bua::config::PoolConfig;
use medpool_b2bua::health::HealthView;
use medpool_b2bua::node::{self, NodeOptions, RunningNode};
use medpool_sip::message::builder::{MessageBuilder, response_to};
use medpool_sip::transport::TransportConfig;
use medpool_sip::{HeaderName, Method, SipMessage};
use tokio::net::UdpSocket;
use tokio::time::{Instant, timeout};

/// A scripted SIP peer on one UDP socket.
struct Peer {
    sock: UdpSocket,
}

impl Peer {
    async fn bind(addr: &str) -> Peer {
        Peer {
            sock: UdpSocket::bind(addr).await.unwrap(),
        }
    }
    fn addr(&self) -> SocketAddr {
        self.sock.local_addr().unwrap()
    }
    async fn send(&self, bytes: &[u8], to: SocketAddr) {
        self.sock.send_to(bytes, to).await.unwrap();
    }
    /// The next message, skipping OPTIONS probes (answered 200) and retransmissions of `skip` methods.
    async fn recv(&self, within: Duration) -> Option<(SipMessage, SocketAddr)> {
        let mut buf = vec![0u8; 65536];
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let (n, from) = timeout(left, self.sock.recv_from(&mut buf))
                .await
                .ok()?
                .unwrap();
            let m = SipMessage::parse(Bytes::copy_from_slice(&buf[..n])).unwrap();
            if m.method() == Some(Method::Options) {
                let ok = response_to(&m, 200, b"OK", Some("gwtag"), None).build();
                self.send(&ok, from).await;
                continue;
            }
            return Some((m, from));
        }
    }
    /// Waits for a request of `method` (or a response with `status`), ignoring anything else.
    async fn expect(&self, what: Expect, within: Duration) -> (SipMessage, SocketAddr) {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Some((m, from)) = self.recv(left).await else {
                panic!("{:?} not received within {within:?}", what);
            };
            let hit = match what {
                Expect::Request(meth) => m.method() == Some(meth),
                Expect::Status(s) => m.status() == Some(s),
            };
            if hit {
                return (m, from);
            }
        }
    }
    async fn respond(
        &self,
        req: &SipMessage,
        status: u16,
        tag: &str,
        to: SocketAddr,
        body: Option<&str>,
    ) {
        let mut b = response_to(req, status, b"X", Some(tag), None);
        b.header(
            HeaderName::Contact,
            format!("<sip:{}>", self.addr()).as_bytes(),
        );
        if let Some(body) = body {
            b.body(b"application/sdp", Bytes::copy_from_slice(body.as_bytes()));
        }
        self.send(&b.build(), to).await;
    }
}

#[derive(Debug, Clone, Copy)]
enum Expect {
    Request(Method),
    Status(u16),
}

const SDP: &str = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 6000 RTP/AVP 0\r\n";

fn config(net: u8, extra_gw: &str) -> PoolConfig {
    let text = format!(
        r#"
[node]
max_tries = 3
[[trunk]]
name = "pbx"
address = "127.0.{net}.1"
side = "internal"
usages = ["outbound"]
[[trunk]]
name = "gw1"
address = "127.0.{net}.21"
side = "gateway"
options_interval_ms = 1000
down_after = 2
up_after = 2
{extra_gw}
[[trunk]]
name = "gw2"
address = "127.0.{net}.22"
side = "gateway"
options_interval_ms = 1000
down_after = 2
up_after = 2
{extra_gw}
[[route]]
name = "out"
usage = "outbound"
pattern = ".*"
trunks = [{{ trunk = "gw1", priority = 1 }}, {{ trunk = "gw2", priority = 2 }}]
"#
    );
    PoolConfig::from_toml_str(&text, "test.toml").unwrap()
}

async fn start_node(net: u8, extra_gw: &str) -> RunningNode {
    let pool = Arc::new(SingleNode::new(1024));
    let opts = NodeOptions {
        sip: TransportConfig {
            listen: format!("127.0.{net}.1:5060").parse().unwrap(),
            ..TransportConfig::default()
        },
        ..NodeOptions::default()
    };
    node::start(
        opts,
        config(net, extra_gw),
        pool.clone(),
        pool,
        Arc::new(medpool_b2bua::cluster::NoRelay),
    )
    .await
    .unwrap()
}

/// A node on `listen` (test network `net`) with the given pool parts.
async fn start_with(
    listen: &str,
    net: u8,
    shards: Arc<dyn medpool_b2bua::cluster::ShardOwnership>,
    store: Arc<dyn medpool_b2bua::cluster::DialogStore>,
    relay: Arc<dyn medpool_b2bua::cluster::Relay>,
) -> RunningNode {
    let opts = NodeOptions {
        sip: TransportConfig {
            listen: listen.parse().unwrap(),
            ..TransportConfig::default()
        },
        ..NodeOptions::default()
    };
    node::start(opts, config(net, ""), shards, store, relay)
        .await
        .unwrap()
}

fn invite(caller: SocketAddr, call_id: &str) -> Bytes {
    let mut b = MessageBuilder::request_method(Method::Invite, b"sip:+15550100@127.0.0.1");
    b.header(
        HeaderName::Via,
        format!("SIP/2.0/UDP {caller};branch=z9hG4bK-{call_id}").as_bytes(),
    )
    .header(HeaderName::MaxForwards, b"70")
    .header(
        HeaderName::From,
        format!("<sip:alice@{caller}>;tag=a-{call_id}").as_bytes(),
    )
    .header(HeaderName::To, b"<sip:+15550100@127.0.0.1>")
    .header(HeaderName::CallId, call_id.as_bytes())
    .header(HeaderName::CSeq, b"1 INVITE")
    .header(
        HeaderName::Contact,
        format!("<sip:alice@{caller}>").as_bytes(),
    )
    .body(b"application/sdp", Bytes::from_static(SDP.as_bytes()));
    b.build()
}

fn ack_for(resp: &SipMessage, caller: SocketAddr) -> Bytes {
    let mut b = MessageBuilder::request_method(Method::Ack, b"sip:x@127.0.0.1");
    b.header(
        HeaderName::Via,
        format!("SIP/2.0/UDP {caller};branch=z9hG4bK-ack{}", rand_suffix()).as_bytes(),
    );
    b.copy_headers(resp, HeaderName::From)
        .copy_headers(resp, HeaderName::To)
        .copy_headers(resp, HeaderName::CallId);
    b.header(HeaderName::CSeq, b"1 ACK");
    b.build()
}

fn rand_suffix() -> u32 {
    rand::random::<u32>()
}

#[tokio::test(start_paused = true)]
async fn silent_gateway_fails_over_after_the_fast_failover_timer() {
    let node = start_node(61, "fast_failover_ms = 3000").await;
    let caller = Peer::bind("127.0.61.1:5070").await;
    let gw1 = Peer::bind("127.0.61.21:5060").await;
    let gw2 = Peer::bind("127.0.61.22:5060").await;
    let t0 = Instant::now();
    caller
        .send(&invite(caller.addr(), "ff1"), node.sip_addr)
        .await;
    caller
        .expect(Expect::Status(100), Duration::from_secs(1))
        .await;
    // gw1 (priority 1) gets the INVITE and stays silent.
    let (inv1, _) = gw1
        .expect(Expect::Request(Method::Invite), Duration::from_secs(1))
        .await;
    assert!(
        inv1.call_id().unwrap().unwrap().starts_with(b"mp"),
        "leg B has our own Call-ID"
    );
    // gw2 gets it once the fast-failover timer fires.
    let (inv2, from) = gw2
        .expect(Expect::Request(Method::Invite), Duration::from_secs(10))
        .await;
    let waited = t0.elapsed();
    assert!(
        waited >= Duration::from_millis(3000),
        "failed over after {waited:?}, before the 3 s timer"
    );
    assert!(
        waited < Duration::from_millis(4000),
        "failed over only after {waited:?}"
    );
    gw2.respond(&inv2, 200, "g2", from, Some(SDP)).await;
    let (ok, _) = caller
        .expect(Expect::Status(200), Duration::from_secs(2))
        .await;
    assert_eq!(ok.body(), SDP.as_bytes(), "the gateway's SDP is relayed");
    caller
        .send(&ack_for(&ok, caller.addr()), node.sip_addr)
        .await;
    gw2.expect(Expect::Request(Method::Ack), Duration::from_secs(2))
        .await;
    // The silent gateway counted as a failure (passive health), one more and it is down.
    let failures = node
        .ctx
        .gateways
        .get("gw1")
        .unwrap()
        .failures
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        failures >= 1,
        "the silent gateway's timeout was not counted ({failures})"
    );
    node.shutdown(Duration::from_secs(1), true).await;
}

#[tokio::test(start_paused = true)]
async fn timer_b_without_fast_failover_answers_408_after_32_seconds() {
    let node = start_node(62, "fast_failover_ms = 0\nfailover_codes = [503]").await;
    let caller = Peer::bind("127.0.62.1:5070").await;
    let gw1 = Peer::bind("127.0.62.21:5060").await;
    let t0 = Instant::now();
    caller
        .send(&invite(caller.addr(), "tb1"), node.sip_addr)
        .await;
    gw1.expect(Expect::Request(Method::Invite), Duration::from_secs(1))
        .await;
    let (resp, _) = caller
        .expect(Expect::Status(408), Duration::from_secs(40))
        .await;
    let waited = t0.elapsed();
    assert!(
        waited >= Duration::from_secs(32) && waited < Duration::from_secs(33),
        "408 after {waited:?}"
    );
    assert!(resp.to_tag().unwrap().starts_with(b"mp"));
    node.shutdown(Duration::from_secs(1), false).await;
}

#[tokio::test(start_paused = true)]
async fn the_2xx_is_retransmitted_until_the_ack_and_a_missing_ack_ends_the_call() {
    let node = start_node(63, "").await;
    let caller = Peer::bind("127.0.63.1:5070").await;
    let gw1 = Peer::bind("127.0.63.21:5060").await;
    caller
        .send(&invite(caller.addr(), "rt1"), node.sip_addr)
        .await;
    let (inv, from) = gw1
        .expect(Expect::Request(Method::Invite), Duration::from_secs(1))
        .await;
    gw1.respond(&inv, 200, "g1", from, Some(SDP)).await;
    let t0 = Instant::now();
    let mut copies = 0;
    // The caller never ACKs: the 2xx comes again at T1, 2T1, 4T1... then BYE on both legs.
    loop {
        let (m, _) = caller
            .recv(Duration::from_secs(40))
            .await
            .expect("2xx retransmissions then BYE");
        if m.status() == Some(200) {
            copies += 1;
            continue;
        }
        if m.method() == Some(Method::Bye) {
            let bye_to_a = m;
            let ok = response_to(&bye_to_a, 200, b"OK", None, None).build();
            caller.send(&ok, node.sip_addr).await;
            break;
        }
    }
    assert!(copies >= 7, "only {copies} copies of the 2xx");
    assert!(
        t0.elapsed() >= Duration::from_secs(32),
        "gave up after {:?}",
        t0.elapsed()
    );
    let (bye_b, from) = gw1
        .expect(Expect::Request(Method::Bye), Duration::from_secs(5))
        .await;
    gw1.respond(&bye_b, 200, "g1", from, None).await;
    node.shutdown(Duration::from_secs(1), false).await;
}

#[tokio::test(start_paused = true)]
async fn cancel_before_the_gateway_answers_gives_487_and_cancels_leg_b() {
    let node = start_node(64, "").await;
    let caller = Peer::bind("127.0.64.1:5070").await;
    let gw1 = Peer::bind("127.0.64.21:5060").await;
    let inv_a = invite(caller.addr(), "cx1");
    caller.send(&inv_a, node.sip_addr).await;
    let (inv, from) = gw1
        .expect(Expect::Request(Method::Invite), Duration::from_secs(1))
        .await;
    // The caller cancels before the gateway said anything.
    let a = SipMessage::parse(inv_a).unwrap();
    let mut c = MessageBuilder::request_method(Method::Cancel, a.request_uri_bytes().unwrap());
    c.copy_headers(&a, HeaderName::Via)
        .copy_headers(&a, HeaderName::From)
        .copy_headers(&a, HeaderName::To)
        .copy_headers(&a, HeaderName::CallId)
        .header(HeaderName::CSeq, b"1 CANCEL");
    caller.send(&c.build(), node.sip_addr).await;
    caller
        .expect(Expect::Status(487), Duration::from_secs(2))
        .await;
    // The gateway now rings: the pool CANCELs it (RFC 3261 §9.1: only after a provisional).
    gw1.respond(&inv, 180, "g1", from, None).await;
    let (cancel, from) = gw1
        .expect(Expect::Request(Method::Cancel), Duration::from_secs(2))
        .await;
    assert_eq!(
        cancel.top_branch(),
        inv.top_branch(),
        "CANCEL carries the INVITE's branch"
    );
    gw1.respond(&cancel, 200, "g1", from, None).await;
    gw1.respond(&inv, 487, "g1", from, None).await;
    gw1.expect(Expect::Request(Method::Ack), Duration::from_secs(2))
        .await;
    node.shutdown(Duration::from_secs(1), false).await;
}

#[tokio::test(start_paused = true)]
async fn gateway_goes_down_after_missed_probes_and_comes_back_up() {
    let node = start_node(65, "").await;
    // Nobody answers at gw1 yet: two probe timeouts (1 s interval) mark it down.
    let gw2 = Peer::bind("127.0.65.22:5060").await;
    let answer_gw2 = tokio::spawn(async move {
        loop {
            if gw2.recv(Duration::from_secs(3600)).await.is_none() {
                break;
            }
        }
    });
    let t0 = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if !node.ctx.gateways.view("gw1").up {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "gw1 still up after {:?}",
            t0.elapsed()
        );
    }
    assert!(
        t0.elapsed() >= Duration::from_secs(2),
        "down after {:?}: before two probe intervals",
        t0.elapsed()
    );
    assert!(node.ctx.gateways.view("gw2").up, "gw2 answers its probes");
    // gw1 comes back: answered probes bring it up after up_after = 2.
    let gw1 = Peer::bind("127.0.65.21:5060").await;
    let back = tokio::spawn(async move {
        loop {
            if gw1.recv(Duration::from_secs(3600)).await.is_none() {
                break;
            }
        }
    });
    let t1 = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if node.ctx.gateways.view("gw1").up {
            break;
        }
        assert!(
            t1.elapsed() < Duration::from_secs(5),
            "gw1 still down after {:?}",
            t1.elapsed()
        );
    }
    back.abort();
    answer_gw2.abort();
    node.shutdown(Duration::from_secs(1), false).await;
}

#[tokio::test(start_paused = true)]
async fn a_call_refused_at_once_leaves_nothing_registered() {
    let node = start_node(66, "").await;
    let caller = Peer::bind("127.0.66.1:5070").await;
    // Max-Forwards 0: answered 483 before any gateway is tried; the call ends inside its actor's start.
    let inv = String::from_utf8(invite(caller.addr(), "mf0").to_vec())
        .unwrap()
        .replace("Max-Forwards: 70", "Max-Forwards: 0");
    caller.send(inv.as_bytes(), node.sip_addr).await;
    caller
        .expect(Expect::Status(483), Duration::from_secs(2))
        .await;
    for _ in 0..50 {
        if node.ctx.active_calls() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        node.ctx.active_calls(),
        0,
        "the refused call is still registered"
    );
    node.shutdown(Duration::from_secs(1), false).await;
}

#[tokio::test(start_paused = true)]
async fn a_confirmed_call_is_carried_on_by_the_node_that_adopts_its_shard() {
    // Two nodes share one dialog store (the replicated state in a pool).
    let store = Arc::new(SingleNode::new(1024));
    let start = |listen: &str| {
        let opts = NodeOptions {
            sip: TransportConfig {
                listen: listen.parse().unwrap(),
                ..TransportConfig::default()
            },
            ..NodeOptions::default()
        };
        node::start(
            opts,
            config(67, ""),
            store.clone(),
            store.clone(),
            Arc::new(medpool_b2bua::cluster::NoRelay),
        )
    };
    let node_a = start("127.0.67.1:5060").await.unwrap();
    let node_b = start("127.0.67.2:5060").await.unwrap();
    let caller = Peer::bind("127.0.67.1:5070").await;
    let gw1 = Peer::bind("127.0.67.21:5060").await;
    caller
        .send(&invite(caller.addr(), "fo1"), node_a.sip_addr)
        .await;
    let (inv, from) = gw1
        .expect(Expect::Request(Method::Invite), Duration::from_secs(1))
        .await;
    gw1.respond(&inv, 200, "g1", from, Some(SDP)).await;
    let (ok, _) = caller
        .expect(Expect::Status(200), Duration::from_secs(1))
        .await;
    caller
        .send(&ack_for(&ok, caller.addr()), node_a.sip_addr)
        .await;
    gw1.expect(Expect::Request(Method::Ack), Duration::from_secs(1))
        .await;
    let shard = medpool_sip::ids::call_id_shard(b"fo1", 1024);
    for _ in 0..50 {
        if !store.records_of_shard(shard).is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        store.records_of_shard(shard).len(),
        1,
        "the confirmed dialog was recorded"
    );
    // The shard moves: A stops acting for it without a word, B rebuilds the call from the record.
    assert_eq!(node_a.ctx.release_shard(shard), 1);
    assert_eq!(node_b.ctx.adopt_shard(shard).await, 1);
    // The gateway re-INVITEs (hold) through node B: the caller gets it in its own dialog.
    let (tag_b, call_b) = (
        inv.from_tag().unwrap().to_vec(),
        inv.call_id().unwrap().unwrap().to_vec(),
    );
    let mut re = MessageBuilder::request_method(
        Method::Invite,
        format!("sip:{}", node_b.sip_addr).as_bytes(),
    );
    re.header(
        HeaderName::Via,
        format!("SIP/2.0/UDP {};branch=z9hG4bK-re1", gw1.addr()).as_bytes(),
    )
    .header(
        HeaderName::From,
        format!("<sip:gw@{}>;tag=g1", gw1.addr()).as_bytes(),
    )
    .header(
        HeaderName::To,
        [b"<sip:x@y>;tag=".as_slice(), &tag_b].concat().as_slice(),
    )
    .header(HeaderName::CallId, &call_b)
    .header(HeaderName::CSeq, b"2 INVITE")
    .header(
        HeaderName::Contact,
        format!("<sip:{}>", gw1.addr()).as_bytes(),
    )
    .body(
        b"application/sdp",
        Bytes::from_static(b"v=0\r\na=sendonly\r\n"),
    );
    gw1.send(&re.build(), node_b.sip_addr).await;
    let (re_a, from_b) = caller
        .expect(Expect::Request(Method::Invite), Duration::from_secs(2))
        .await;
    assert_eq!(
        re_a.call_id().unwrap().unwrap(),
        b"fo1",
        "the re-INVITE is in the caller's dialog"
    );
    assert!(
        re_a.cseq().unwrap().unwrap().seq > 1000,
        "the new owner's CSeq skips ahead of the old owner's"
    );
    assert_eq!(re_a.to_tag(), Some(&b"a-fo1"[..]));
    caller
        .respond(&re_a, 200, "unused", from_b, Some(SDP))
        .await;
    gw1.expect(Expect::Status(200), Duration::from_secs(2))
        .await;
    // The caller hangs up through node B: the gateway gets the BYE.
    let mut bye =
        MessageBuilder::request_method(Method::Bye, format!("sip:{}", node_b.sip_addr).as_bytes());
    bye.header(
        HeaderName::Via,
        format!("SIP/2.0/UDP {};branch=z9hG4bK-bye1", caller.addr()).as_bytes(),
    )
    .copy_headers(&ok, HeaderName::From)
    .copy_headers(&ok, HeaderName::To)
    .header(HeaderName::CallId, b"fo1")
    .header(HeaderName::CSeq, b"2 BYE");
    caller.send(&bye.build(), node_b.sip_addr).await;
    caller
        .expect(Expect::Status(200), Duration::from_secs(2))
        .await;
    let (bye_b, from) = gw1
        .expect(Expect::Request(Method::Bye), Duration::from_secs(2))
        .await;
    gw1.respond(&bye_b, 200, "g1", from, None).await;
    node_a.shutdown(Duration::from_secs(1), false).await;
    node_b.shutdown(Duration::from_secs(1), false).await;
}

#[tokio::test(start_paused = true)]
async fn a_call_ends_as_soon_as_both_byes_are_answered() {
    let node = start_node(68, "").await;
    let caller = Peer::bind("127.0.68.1:5070").await;
    let gw1 = Peer::bind("127.0.68.21:5060").await;
    caller
        .send(&invite(caller.addr(), "end1"), node.sip_addr)
        .await;
    let (inv, from) = gw1
        .expect(Expect::Request(Method::Invite), Duration::from_secs(1))
        .await;
    gw1.respond(&inv, 200, "g1", from, Some(SDP)).await;
    let (ok, _) = caller
        .expect(Expect::Status(200), Duration::from_secs(1))
        .await;
    caller
        .send(&ack_for(&ok, caller.addr()), node.sip_addr)
        .await;
    gw1.expect(Expect::Request(Method::Ack), Duration::from_secs(1))
        .await;
    assert_eq!(node.ctx.active_calls(), 1);
    let mut bye =
        MessageBuilder::request_method(Method::Bye, format!("sip:{}", node.sip_addr).as_bytes());
    bye.header(
        HeaderName::Via,
        format!("SIP/2.0/UDP {};branch=z9hG4bK-bye-end1", caller.addr()).as_bytes(),
    )
    .copy_headers(&ok, HeaderName::From)
    .copy_headers(&ok, HeaderName::To)
    .header(HeaderName::CallId, b"end1")
    .header(HeaderName::CSeq, b"2 BYE");
    caller.send(&bye.build(), node.sip_addr).await;
    caller
        .expect(Expect::Status(200), Duration::from_secs(1))
        .await;
    let (bye_b, from) = gw1
        .expect(Expect::Request(Method::Bye), Duration::from_secs(1))
        .await;
    gw1.respond(&bye_b, 200, "g1", from, None).await;
    // Well before any transaction timer (Timer M/L are 32 s): the call is gone.
    let t0 = Instant::now();
    while node.ctx.active_calls() > 0 {
        assert!(
            t0.elapsed() < Duration::from_millis(500),
            "the call lingered after both BYEs were answered"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        node.ctx
            .stats
            .calls_ended
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    // The gateway resends its 200 after the call ended (say it missed our ACK): the node ACKs it
    // again but does not hang the leg up a second time.
    gw1.respond(&inv, 200, "g1", from, Some(SDP)).await;
    gw1.expect(Expect::Request(Method::Ack), Duration::from_secs(1))
        .await;
    assert!(
        gw1.recv(Duration::from_secs(1)).await.is_none(),
        "a leg already hung up was hung up again"
    );
    node.shutdown(Duration::from_secs(1), false).await;
}

#[tokio::test(start_paused = true)]
async fn a_gateway_2xx_sent_again_is_acked_again_and_the_call_stays_up() {
    // Found by the chaos suite under packet loss: the gateway resends its 200 because our ACK was
    // lost; that copy was taken for a late answer and the B-leg was ACKed and BYE'd.
    let node = start_node(69, "").await;
    let caller = Peer::bind("127.0.69.1:5070").await;
    let gw1 = Peer::bind("127.0.69.21:5060").await;
    caller
        .send(&invite(caller.addr(), "again1"), node.sip_addr)
        .await;
    let (inv, from) = gw1
        .expect(Expect::Request(Method::Invite), Duration::from_secs(1))
        .await;
    gw1.respond(&inv, 200, "g1", from, Some(SDP)).await;
    let (ok, _) = caller
        .expect(Expect::Status(200), Duration::from_secs(1))
        .await;
    caller
        .send(&ack_for(&ok, caller.addr()), node.sip_addr)
        .await;
    gw1.expect(Expect::Request(Method::Ack), Duration::from_secs(1))
        .await;
    // The same 200 again, twice (RFC 3261 §13.3.1.4: a UAS resends its 2xx until it sees an ACK).
    for _ in 0..2 {
        gw1.respond(&inv, 200, "g1", from, Some(SDP)).await;
        let (again, _) = gw1
            .recv(Duration::from_secs(1))
            .await
            .expect("an answer to the resent 2xx");
        assert_eq!(
            again.method(),
            Some(Method::Ack),
            "the resent 2xx must be ACKed again, got {:?} {:?}",
            again.method(),
            again.status()
        );
    }
    // Nothing else reaches the gateway (no BYE), and the call is still up.
    if let Some((m, _)) = gw1.recv(Duration::from_secs(3)).await {
        panic!(
            "the gateway received {:?} after its 2xx was ACKed again",
            m.method()
        );
    }
    assert_eq!(node.ctx.active_calls(), 1);
    node.shutdown(Duration::from_secs(1), false).await;
}

/// Sets up one call through `node` (INVITE, gateway 200, ACK) and waits until its record is in
/// `store`. Returns the caller's 2xx.
async fn recorded_call(
    node: &RunningNode,
    store: &SingleNode,
    caller: &Peer,
    gw: &Peer,
    call_id: &str,
) -> SipMessage {
    caller
        .send(&invite(caller.addr(), call_id), node.sip_addr)
        .await;
    let (inv, from) = gw
        .expect(Expect::Request(Method::Invite), Duration::from_secs(1))
        .await;
    gw.respond(&inv, 200, "g1", from, Some(SDP)).await;
    let (ok, _) = caller
        .expect(Expect::Status(200), Duration::from_secs(1))
        .await;
    caller
        .send(&ack_for(&ok, caller.addr()), node.sip_addr)
        .await;
    gw.expect(Expect::Request(Method::Ack), Duration::from_secs(1))
        .await;
    let shard = medpool_sip::ids::call_id_shard(call_id.as_bytes(), 1024);
    let t0 = Instant::now();
    while store.records_of_shard(shard).is_empty() {
        assert!(
            t0.elapsed() < Duration::from_secs(1),
            "{call_id} was not recorded"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    ok
}

#[tokio::test(start_paused = true)]
async fn a_record_goes_only_with_a_call_that_ended_and_a_rebuilt_call_follows_it() {
    // Two nodes share one dialog store (the replicated state in a pool).
    let store = Arc::new(SingleNode::new(1024));
    let start = |listen: &'static str| {
        start_with(
            listen,
            60,
            store.clone(),
            store.clone(),
            Arc::new(medpool_b2bua::cluster::NoRelay),
        )
    };
    let node_a = start("127.0.60.1:5060").await;
    let node_b = start("127.0.60.2:5060").await;
    let caller = Peer::bind("127.0.60.1:5070").await;
    let gw1 = Peer::bind("127.0.60.21:5060").await;

    // 1. The call ends on its old node in the instant its shard moves: node B has already rebuilt
    //    it from the record. The old node's removal goes through, and B's rebuilt call follows.
    let ok = recorded_call(&node_a, &store, &caller, &gw1, "mv1").await;
    let shard = medpool_sip::ids::call_id_shard(b"mv1", 1024);
    assert_eq!(node_b.ctx.adopt_shard(shard).await, 1, "B rebuilt the call");
    let mut bye =
        MessageBuilder::request_method(Method::Bye, format!("sip:{}", node_a.sip_addr).as_bytes());
    bye.header(
        HeaderName::Via,
        format!("SIP/2.0/UDP {};branch=z9hG4bK-bye-mv1", caller.addr()).as_bytes(),
    )
    .copy_headers(&ok, HeaderName::From)
    .copy_headers(&ok, HeaderName::To)
    .header(HeaderName::CallId, b"mv1")
    .header(HeaderName::CSeq, b"2 BYE");
    caller.send(&bye.build(), node_a.sip_addr).await;
    caller
        .expect(Expect::Status(200), Duration::from_secs(1))
        .await;
    let (bye_b, from) = gw1
        .expect(Expect::Request(Method::Bye), Duration::from_secs(1))
        .await;
    gw1.respond(&bye_b, 200, "g1", from, None).await;
    let t0 = Instant::now();
    while !store.records_of_shard(shard).is_empty() {
        assert!(
            t0.elapsed() < Duration::from_secs(1),
            "the ended call's record stayed"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The rebuilt copy on B notices within a few record checks (2 s apart), not never.
    assert_eq!(node_b.ctx.active_calls(), 1);
    let t0 = Instant::now();
    while node_b.ctx.active_calls() > 0 {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "node B kept a call that ended on node A"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // 2. A shard released, and a node shut down, stop their calls without removing the records:
    //    the calls go on elsewhere.
    recorded_call(&node_a, &store, &caller, &gw1, "mv2").await;
    let shard2 = medpool_sip::ids::call_id_shard(b"mv2", 1024);
    assert_eq!(node_a.ctx.release_shard(shard2), 1);
    recorded_call(&node_b, &store, &caller, &gw1, "mv3").await;
    let shard3 = medpool_sip::ids::call_id_shard(b"mv3", 1024);
    node_b.shutdown(Duration::from_secs(1), false).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        store.records_of_shard(shard2).len(),
        1,
        "a released shard's call lost its record"
    );
    assert_eq!(
        store.records_of_shard(shard3).len(),
        1,
        "a node shut down without BYEs removed its call's record"
    );
    node_a.shutdown(Duration::from_secs(1), false).await;
}

/// A dialog store that refuses writes while `refuse` is set (a node whose lease lapsed).
struct RefusingStore {
    inner: SingleNode,
    refuse: std::sync::atomic::AtomicBool,
}

impl medpool_b2bua::cluster::DialogStore for RefusingStore {
    fn store(&self, record: medpool_b2bua::cluster::DialogRecord) -> bool {
        !self.refuse.load(std::sync::atomic::Ordering::SeqCst) && self.inner.store(record)
    }
    fn remove(&self, shard: u16, a_call_id: &str) {
        self.inner.remove(shard, a_call_id);
    }
    fn contains(&self, shard: u16, a_call_id: &str) -> bool {
        self.inner.contains(shard, a_call_id)
    }
    fn records_of(&self, shard: u16) -> Vec<medpool_b2bua::cluster::DialogRecord> {
        self.inner.records_of(shard)
    }
}

#[tokio::test(start_paused = true)]
async fn an_answered_call_without_a_record_retries_it_and_is_ended_if_its_shard_moves_first() {
    use medpool_b2bua::cluster::DialogStore;
    use std::sync::atomic::Ordering::SeqCst;
    let store = Arc::new(RefusingStore {
        inner: SingleNode::new(1024),
        refuse: std::sync::atomic::AtomicBool::new(true),
    });
    let node = start_with(
        "127.0.59.1:5060",
        59,
        Arc::new(SingleNode::new(1024)),
        store.clone(),
        Arc::new(medpool_b2bua::cluster::NoRelay),
    )
    .await;
    let caller = Peer::bind("127.0.59.1:5070").await;
    let gw1 = Peer::bind("127.0.59.21:5060").await;
    let answer = |call_id: &'static str| {
        let (caller, gw1, node) = (&caller, &gw1, &node);
        async move {
            caller
                .send(&invite(caller.addr(), call_id), node.sip_addr)
                .await;
            let (inv, from) = gw1
                .expect(Expect::Request(Method::Invite), Duration::from_secs(1))
                .await;
            gw1.respond(&inv, 200, "g1", from, Some(SDP)).await;
            let (ok, _) = caller
                .expect(Expect::Status(200), Duration::from_secs(1))
                .await;
            caller
                .send(&ack_for(&ok, caller.addr()), node.sip_addr)
                .await;
            gw1.expect(Expect::Request(Method::Ack), Duration::from_secs(1))
                .await;
        }
    };

    // 1. The write is refused, then allowed again: the call writes its record on a retry.
    answer("nr1").await;
    let shard1 = medpool_sip::ids::call_id_shard(b"nr1", 1024);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        store.records_of(shard1).is_empty(),
        "a refused write was kept"
    );
    store.refuse.store(false, SeqCst);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        store.records_of(shard1).len(),
        1,
        "the record was not retried"
    );
    assert_eq!(
        node.ctx.unrecorded_calls(),
        0,
        "a recorded call is still counted"
    );

    // 2. Still refused when the shard moves: nobody else can carry the call, so it is ended here,
    //    with a BYE on both legs, rather than left up at the gateway.
    store.refuse.store(true, SeqCst);
    answer("nr2").await;
    let shard2 = medpool_sip::ids::call_id_shard(b"nr2", 1024);
    assert_eq!(node.ctx.release_shard(shard2), 1);
    let (bye_a, from_a) = caller
        .expect(Expect::Request(Method::Bye), Duration::from_secs(1))
        .await;
    assert_eq!(bye_a.call_id().unwrap().unwrap(), b"nr2");
    caller.respond(&bye_a, 200, "unused", from_a, None).await;
    let (bye_b, from_b) = gw1
        .expect(Expect::Request(Method::Bye), Duration::from_secs(1))
        .await;
    gw1.respond(&bye_b, 200, "g1", from_b, None).await;
    let t0 = Instant::now();
    while node.ctx.active_calls() > 1 {
        assert!(
            t0.elapsed() < Duration::from_secs(1),
            "the ended call lingered"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    node.shutdown(Duration::from_secs(1), false).await;
}

/// Shard ownership of a node behind a hand-over fence: it owns every shard under its lease but does
/// not act for them until `acting` is set.
struct Fenced {
    acting: std::sync::atomic::AtomicBool,
}

impl medpool_b2bua::cluster::ShardOwnership for Fenced {
    fn shard_count(&self) -> u16 {
        1024
    }
    fn may_act(&self, _shard: u16) -> bool {
        self.acting.load(std::sync::atomic::Ordering::SeqCst)
    }
    fn owner(&self, _shard: u16) -> Option<u64> {
        Some(0)
    }
    fn node_id(&self) -> u64 {
        0
    }
    fn taking_over(&self, _shard: u16) -> bool {
        !self.acting.load(std::sync::atomic::Ordering::SeqCst)
    }
}

#[tokio::test(start_paused = true)]
async fn a_new_udp_call_waits_out_a_hand_over_fence_instead_of_being_refused() {
    let shards = Arc::new(Fenced {
        acting: std::sync::atomic::AtomicBool::new(false),
    });
    let node = start_with(
        "127.0.58.1:5060",
        58,
        shards.clone(),
        Arc::new(SingleNode::new(1024)),
        Arc::new(medpool_b2bua::cluster::NoRelay),
    )
    .await;
    let caller = Peer::bind("127.0.58.1:5070").await;
    let gw1 = Peer::bind("127.0.58.21:5060").await;
    let inv = invite(caller.addr(), "fence1");
    caller.send(&inv, node.sip_addr).await;
    assert!(
        caller.recv(Duration::from_millis(400)).await.is_none(),
        "a new call behind the fence was answered (503) instead of left to its retransmission"
    );
    assert_eq!(
        node.ctx
            .stats
            .held_for_takeover
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    // The fence passes; the caller's retransmission (T1 = 500 ms) sets the call up.
    shards
        .acting
        .store(true, std::sync::atomic::Ordering::SeqCst);
    caller.send(&inv, node.sip_addr).await;
    let (inv_b, from) = gw1
        .expect(Expect::Request(Method::Invite), Duration::from_secs(1))
        .await;
    gw1.respond(&inv_b, 200, "g1", from, Some(SDP)).await;
    caller
        .expect(Expect::Status(200), Duration::from_secs(1))
        .await;
    node.shutdown(Duration::from_secs(1), false).await;
}

#[tokio::test(start_paused = true)]
async fn a_node_shutting_down_still_acks_and_byes_a_gateway_answer_that_crossed_its_cancel() {
    let node = start_node(57, "").await;
    let caller = Peer::bind("127.0.57.1:5070").await;
    let gw1 = Peer::bind("127.0.57.21:5060").await;
    caller
        .send(&invite(caller.addr(), "cross1"), node.sip_addr)
        .await;
    let (inv, from) = gw1
        .expect(Expect::Request(Method::Invite), Duration::from_secs(1))
        .await;
    gw1.respond(&inv, 180, "g1", from, None).await;
    caller
        .expect(Expect::Status(180), Duration::from_secs(1))
        .await;
    assert_eq!(
        node.ctx.unrecorded_calls(),
        1,
        "a call in set-up is one only this node can finish"
    );
    // The shard moves while the call is being set up (a drain): the caller gets 503, the gateway a
    // CANCEL, but it has already answered 200; its 200 arrives just as the node is told to stop.
    // (The race this guards against — the 200 handled by the transaction layer but not yet by the
    // call when the shutdown looks — is not forced here; the test checks that the shutdown lets
    // the call finish and that the count the shutdown waits on comes back to zero.)
    let shard = medpool_sip::ids::call_id_shard(b"cross1", 1024);
    assert_eq!(node.ctx.release_shard(shard), 1);
    caller
        .expect(Expect::Status(503), Duration::from_secs(1))
        .await;
    let (cancel, from_c) = gw1
        .expect(Expect::Request(Method::Cancel), Duration::from_secs(1))
        .await;
    gw1.respond(&inv, 200, "g1", from, Some(SDP)).await;
    gw1.respond(&cancel, 200, "g1", from_c, None).await;
    let ctx = node.ctx.clone();
    let stopping = tokio::spawn(node.shutdown(Duration::from_secs(5), false));
    gw1.expect(Expect::Request(Method::Ack), Duration::from_secs(1))
        .await;
    let (bye, from_b) = gw1
        .expect(Expect::Request(Method::Bye), Duration::from_secs(1))
        .await;
    gw1.respond(&bye, 200, "g1", from_b, None).await;
    stopping.await.unwrap();
    assert_eq!(ctx.unrecorded_calls(), 0);
    assert_eq!(ctx.active_calls(), 0);
}

/// Shard ownership of node 0 of a pair: it acts for the even shards, node 1 owns the odd ones.
struct OwnsEven;

impl medpool_b2bua::cluster::ShardOwnership for OwnsEven {
    fn shard_count(&self) -> u16 {
        1024
    }
    fn may_act(&self, shard: u16) -> bool {
        shard.is_multiple_of(2)
    }
    fn owner(&self, shard: u16) -> Option<u64> {
        Some(u64::from(shard % 2))
    }
    fn node_id(&self) -> u64 {
        0
    }
}

/// Call-IDs `{prefix}-{i}` whose Call-ID shard is odd (owned by node 1 for [`OwnsEven`]).
fn odd_call_ids(prefix: &str, n: usize) -> Vec<String> {
    (0..)
        .map(|i| format!("{prefix}-{i}"))
        .filter(|c| medpool_sip::ids::call_id_shard(c.as_bytes(), 1024) % 2 == 1)
        .take(n)
        .collect()
}

#[tokio::test(start_paused = true)]
async fn a_new_call_is_set_up_where_it_arrives_in_a_shard_of_that_node_unless_told_otherwise() {
    let relay = Arc::new(KeepingRelay::default());
    let node = start_with(
        "127.0.189.1:5060",
        189,
        Arc::new(OwnsEven),
        Arc::new(SingleNode::new(1024)),
        relay.clone(),
    )
    .await;
    let caller = Peer::bind("127.0.189.1:5070").await;
    let gw1 = Peer::bind("127.0.189.21:5060").await;
    let ids = odd_call_ids("loc", 2);
    // 1. A call whose Call-ID's shard node 1 owns is set up here, in a shard this node acts for:
    // the gateway gets its INVITE from here, the caller's answer names that shard, and the BYE
    // that comes back with that tag reaches it. Nothing crosses to node 1.
    let inv = invite(caller.addr(), &ids[0]);
    caller.send(&inv, node.sip_addr).await;
    let (g_inv, from) = gw1
        .expect(Expect::Request(Method::Invite), Duration::from_secs(1))
        .await;
    let gw_shard = medpool_sip::ids::shard_in(g_inv.call_id().unwrap().unwrap()).unwrap();
    assert_eq!(gw_shard % 2, 0, "leg B's Call-ID names a shard of node 0");
    // The caller sends its INVITE again (its 100 was lost): the call absorbs it, here.
    caller.send(&inv, node.sip_addr).await;
    gw1.respond(&g_inv, 200, "g1", from, Some(SDP)).await;
    let (ok, _) = caller
        .expect(Expect::Status(200), Duration::from_secs(1))
        .await;
    let tag_shard = medpool_sip::ids::shard_in(ok.to_tag().unwrap()).unwrap();
    assert_eq!(tag_shard, gw_shard, "both legs' identifiers name one shard");
    assert_ne!(
        tag_shard,
        medpool_sip::ids::call_id_shard(ids[0].as_bytes(), 1024)
    );
    caller
        .send(&ack_for(&ok, caller.addr()), node.sip_addr)
        .await;
    gw1.expect(Expect::Request(Method::Ack), Duration::from_secs(1))
        .await;
    let mut bye = MessageBuilder::request_method(Method::Bye, b"sip:x@127.0.189.1");
    bye.header(
        HeaderName::Via,
        format!("SIP/2.0/UDP {};branch=z9hG4bK-locbye", caller.addr()).as_bytes(),
    )
    .copy_headers(&ok, HeaderName::From)
    .copy_headers(&ok, HeaderName::To)
    .copy_headers(&ok, HeaderName::CallId)
    .header(HeaderName::CSeq, b"2 BYE");
    caller.send(&bye.build(), node.sip_addr).await;
    let (g_bye, from_b) = gw1
        .expect(Expect::Request(Method::Bye), Duration::from_secs(1))
        .await;
    gw1.respond(&g_bye, 200, "g1", from_b, None).await;
    caller
        .expect(Expect::Status(200), Duration::from_secs(1))
        .await;
    // 2. A CANCEL right behind its INVITE has no To tag: it finds the call here all the same.
    let inv2 = invite(caller.addr(), &ids[1]);
    caller.send(&inv2, node.sip_addr).await;
    let (g_inv2, from2) = gw1
        .expect(Expect::Request(Method::Invite), Duration::from_secs(1))
        .await;
    gw1.respond(&g_inv2, 180, "g2", from2, None).await;
    caller
        .expect(Expect::Status(180), Duration::from_secs(1))
        .await;
    caller.send(&cancel_for(&inv2), node.sip_addr).await;
    let (g_cancel, from_c) = gw1
        .expect(Expect::Request(Method::Cancel), Duration::from_secs(1))
        .await;
    gw1.respond(&g_cancel, 200, "g2", from_c, None).await;
    gw1.respond(&g_inv2, 487, "g2", from2, None).await;
    let mut got = Vec::new();
    while got.len() < 2 {
        let (m, _) = caller
            .recv(Duration::from_secs(1))
            .await
            .expect("the CANCEL's 200 and the INVITE's 487");
        got.push((m.status(), m.cseq().unwrap().unwrap().method));
    }
    got.sort_by_key(|(s, _)| *s);
    assert_eq!(
        got,
        vec![(Some(200), Method::Cancel), (Some(487), Method::Invite)]
    );
    assert!(
        relay.forwarded.lock().unwrap().is_empty(),
        "a message crossed to node 1"
    );
    // 3. With `local_calls = false` the same kind of call goes to its Call-ID's owner.
    let mut config = node.ctx.config().as_ref().clone();
    config.node.local_calls = false;
    node.ctx.set_config(config);
    let id3 = odd_call_ids("fwd", 1).remove(0);
    caller
        .send(&invite(caller.addr(), &id3), node.sip_addr)
        .await;
    until(
        Duration::from_secs(1),
        "the INVITE was not forwarded to its Call-ID's owner",
        || relay.forwarded.lock().unwrap().len() == 1,
    )
    .await;
    // (Gateway probes may come meanwhile: only an INVITE would be wrong.)
    while let Some((m, _)) = gw1.recv(Duration::from_millis(300)).await {
        assert_ne!(
            m.method(),
            Some(Method::Invite),
            "the node set up a call it was told to forward"
        );
    }
    node.shutdown(Duration::from_secs(1), false).await;
}

/// Shard ownership of a node that owns nothing: every shard belongs to node 1.
struct OwnsNothing;

impl medpool_b2bua::cluster::ShardOwnership for OwnsNothing {
    fn shard_count(&self) -> u16 {
        1024
    }
    fn may_act(&self, _shard: u16) -> bool {
        false
    }
    fn owner(&self, _shard: u16) -> Option<u64> {
        Some(1)
    }
    fn node_id(&self) -> u64 {
        0
    }
}

/// A relay that takes every message and keeps what was forwarded.
#[derive(Default)]
struct KeepingRelay {
    forwarded: std::sync::Mutex<Vec<Bytes>>,
}

impl medpool_b2bua::cluster::Relay for KeepingRelay {
    fn forward(
        &self,
        _: u64,
        _: u16,
        message: Bytes,
        _: SocketAddr,
        _: &str,
        _: medpool_b2bua::cluster::ForwardMeta,
    ) -> bool {
        self.forwarded.lock().unwrap().push(message);
        true
    }
    fn send_via(&self, _: u64, _: Bytes, _: SocketAddr, _: &str) -> bool {
        true
    }
}

#[tokio::test(start_paused = true)]
async fn a_node_stopping_waits_for_the_answers_to_invites_it_forwarded() {
    let relay = Arc::new(KeepingRelay::default());
    let node = start_with(
        "127.0.56.1:5060",
        56,
        Arc::new(OwnsNothing),
        Arc::new(SingleNode::new(1024)),
        relay.clone(),
    )
    .await;
    let caller = Peer::bind("127.0.56.1:5070").await;
    caller
        .send(&invite(caller.addr(), "relay1"), node.sip_addr)
        .await;
    let t0 = Instant::now();
    while relay.forwarded.lock().unwrap().is_empty() {
        assert!(
            t0.elapsed() < Duration::from_secs(1),
            "the INVITE was not forwarded"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(node.ctx.relayed_pending(), 1);
    let inv = SipMessage::parse(relay.forwarded.lock().unwrap()[0].clone()).unwrap();
    let ctx = node.ctx.clone();
    let stopping = tokio::spawn(node.shutdown(Duration::from_secs(10), false));
    // The owner's provisional answer passes through; the node keeps waiting for the final one.
    ctx.relayed_answer(&response_to(&inv, 180, b"Ringing", Some("t1"), None).build());
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        !stopping.is_finished(),
        "stopped before the final answer came back"
    );
    ctx.relayed_answer(&response_to(&inv, 200, b"OK", Some("t1"), None).build());
    tokio::time::timeout(Duration::from_secs(1), stopping)
        .await
        .expect("still waiting after the final answer")
        .unwrap();
    assert_eq!(ctx.relayed_pending(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_gateway_answer_no_call_knows_is_acked_and_hung_up() {
    let node = start_node(55, "").await;
    let gw1 = Peer::bind("127.0.55.21:5060").await;
    // A 200 to an INVITE of ours whose call is gone (an abandoned attempt answered late, after its
    // call ended or moved): our Call-ID format and branch, a gateway tag, the gateway's Contact.
    let call_id = medpool_sip::ids::new_call_id(7);
    let branch = medpool_sip::ids::new_branch(7);
    let mut ok = MessageBuilder::response(200, b"OK");
    ok.header(
        HeaderName::Via,
        format!("SIP/2.0/UDP {};branch={branch}", node.sip_addr).as_bytes(),
    )
    .header(HeaderName::From, b"<sip:medpool@127.0.55.1>;tag=ours1")
    .header(HeaderName::To, b"<sip:+15550100@127.0.55.21>;tag=gwtag1")
    .header(HeaderName::CallId, call_id.as_bytes())
    .header(HeaderName::CSeq, b"1 INVITE")
    .header(
        HeaderName::Contact,
        format!("<sip:gw@{}>", gw1.addr()).as_bytes(),
    );
    let ok = ok.build();
    gw1.send(&ok, node.sip_addr).await;
    let (ack, _) = gw1
        .expect(Expect::Request(Method::Ack), Duration::from_secs(1))
        .await;
    assert_eq!(ack.call_id().unwrap().unwrap(), call_id.as_bytes());
    let (bye, from) = gw1
        .expect(Expect::Request(Method::Bye), Duration::from_secs(1))
        .await;
    assert_eq!(bye.to_tag(), Some(&b"gwtag1"[..]));
    assert_eq!(bye.cseq().unwrap().unwrap().seq, 2);
    gw1.respond(&bye, 200, "gwtag1", from, None).await;
    // The gateway resends its 200 (it missed nothing, but say it did): ACKed again, no second BYE.
    gw1.send(&ok, node.sip_addr).await;
    gw1.expect(Expect::Request(Method::Ack), Duration::from_secs(1))
        .await;
    assert!(
        gw1.recv(Duration::from_secs(1)).await.is_none(),
        "a second BYE for the same leg"
    );
    assert_eq!(
        node.ctx
            .stats
            .orphan_answers
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    node.shutdown(Duration::from_secs(1), false).await;
}

/// The CANCEL for `invite` (same Via branch, From, To, Call-ID; CSeq method CANCEL).
fn cancel_for(invite: &Bytes) -> Bytes {
    let a = SipMessage::parse(invite.clone()).unwrap();
    let mut c = MessageBuilder::request_method(Method::Cancel, a.request_uri_bytes().unwrap());
    c.copy_headers(&a, HeaderName::Via)
        .copy_headers(&a, HeaderName::From)
        .copy_headers(&a, HeaderName::To)
        .copy_headers(&a, HeaderName::CallId)
        .header(HeaderName::MaxForwards, b"70")
        .header(HeaderName::CSeq, b"1 CANCEL");
    c.build()
}

#[tokio::test(start_paused = true)]
async fn with_several_lanes_a_cancel_right_behind_its_invite_finds_its_call() {
    // Four dispatchers: calls spread over them by Call-ID; each INVITE's call is spawned without
    // the dispatcher waiting for it, and the CANCEL sent right behind it must still find it (a 481
    // would mean it overtook the INVITE, or reached another dispatcher first).
    let pool = Arc::new(SingleNode::new(1024));
    let opts = NodeOptions {
        sip: TransportConfig {
            listen: "127.0.171.1:5060".parse().unwrap(),
            lanes: 4,
            ..TransportConfig::default()
        },
        ..NodeOptions::default()
    };
    let node = node::start(
        opts,
        config(171, ""),
        pool.clone(),
        pool,
        Arc::new(medpool_b2bua::cluster::NoRelay),
    )
    .await
    .unwrap();
    let caller = Peer::bind("127.0.171.1:5070").await;
    // Gateways that never answer: the calls stay in set-up until cancelled.
    let _gw1 = Peer::bind("127.0.171.21:5060").await;
    let _gw2 = Peer::bind("127.0.171.22:5060").await;
    let n = 32;
    for i in 0..n {
        let inv = invite(caller.addr(), &format!("lanes-{i}"));
        caller.send(&inv, node.sip_addr).await;
        caller.send(&cancel_for(&inv), node.sip_addr).await;
    }
    let mut terminated = std::collections::HashSet::new();
    let mut cancel_ok = std::collections::HashSet::new();
    while terminated.len() < n || cancel_ok.len() < n {
        let (m, _) = caller
            .recv(Duration::from_secs(5))
            .await
            .unwrap_or_else(|| panic!("answers missing: {terminated:?} {cancel_ok:?}"));
        let call = String::from_utf8(m.call_id().unwrap().unwrap().to_vec()).unwrap();
        let method = m.cseq().unwrap().unwrap().method;
        match (m.status(), method) {
            (Some(487), Method::Invite) => {
                terminated.insert(call);
            }
            (Some(200), Method::Cancel) => {
                cancel_ok.insert(call);
            }
            (Some(100 | 180 | 183), Method::Invite) => {}
            (status, method) => panic!("unexpected {status:?} to {method:?} of {call}"),
        }
    }
    node.shutdown(Duration::from_secs(1), false).await;
}

/// A relay that takes every message and keeps what it was asked to do: forwards (with what came
/// with them), sends through another node, INVITEs sent back.
#[derive(Default)]
struct RecordingRelay {
    forwarded: std::sync::Mutex<Vec<(Bytes, medpool_b2bua::cluster::ForwardMeta)>>,
    sent_via: std::sync::Mutex<Vec<Bytes>>,
    bounced: std::sync::Mutex<Vec<(u64, Bytes, u32)>>,
    /// The other nodes are of the previous version (they do not understand `trying_sent`).
    old_peers: bool,
}

impl medpool_b2bua::cluster::Relay for RecordingRelay {
    fn forward(
        &self,
        _: u64,
        _: u16,
        message: Bytes,
        _: SocketAddr,
        _: &str,
        meta: medpool_b2bua::cluster::ForwardMeta,
    ) -> bool {
        self.forwarded.lock().unwrap().push((message, meta));
        true
    }
    fn send_via(&self, _: u64, message: Bytes, _: SocketAddr, _: &str) -> bool {
        self.sent_via.lock().unwrap().push(message);
        true
    }
    fn understands_trying(&self, _: u64) -> bool {
        !self.old_peers
    }
    fn bounce(
        &self,
        via: u64,
        message: Bytes,
        _: SocketAddr,
        _: &str,
        bounces: u32,
        _: bool,
    ) -> bool {
        self.bounced.lock().unwrap().push((via, message, bounces));
        true
    }
}

/// Waits (in virtual time) until `cond` holds; panics with `what` after `within`.
async fn until(within: Duration, what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + within;
    while !cond() {
        assert!(Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A message as another node hands it over: parsed, from `source` over UDP.
fn arrived(bytes: Bytes, source: SocketAddr) -> medpool_sip::transport::Inbound {
    medpool_sip::transport::Inbound {
        msg: SipMessage::parse(bytes).unwrap(),
        source,
        transport: medpool_sip::transport::Transport::Udp,
        tls: None,
    }
}

fn statuses(sent: &[Bytes]) -> Vec<u16> {
    sent.iter()
        .filter_map(|b| SipMessage::parse(b.clone()).ok()?.status())
        .collect()
}

#[tokio::test(start_paused = true)]
async fn the_node_a_new_call_reaches_answers_it_100_and_forwards_it_marked_so() {
    let relay = Arc::new(RecordingRelay::default());
    let node = start_with(
        "127.0.187.31:5060",
        187,
        Arc::new(OwnsNothing),
        Arc::new(SingleNode::new(1024)),
        relay.clone(),
    )
    .await;
    let caller = Peer::bind("127.0.187.1:5071").await;
    let inv = invite(caller.addr(), "try1");
    caller.send(&inv, node.sip_addr).await;
    let (trying, from) = caller
        .expect(Expect::Status(100), Duration::from_secs(1))
        .await;
    assert_eq!(
        from, node.sip_addr,
        "the 100 leaves from the node the INVITE reached"
    );
    assert_eq!(trying.call_id().unwrap().unwrap(), b"try1");
    {
        let fwd = relay.forwarded.lock().unwrap();
        assert_eq!(fwd.len(), 1, "the INVITE was not forwarded");
        assert!(
            fwd[0].1.trying_sent,
            "the owner was not told the caller has its 100"
        );
        assert_eq!(fwd[0].1.bounces, 0);
    }
    // A retransmission is forwarded again (the owner's transaction absorbs it), not answered 100
    // again here (a late second 100 could follow the owner's 180).
    caller.send(&inv, node.sip_addr).await;
    until(
        Duration::from_secs(1),
        "the retransmission was not forwarded",
        || relay.forwarded.lock().unwrap().len() == 2,
    )
    .await;
    assert!(relay.forwarded.lock().unwrap()[1].1.trying_sent);
    // A request in a dialog is forwarded unmarked and answered nothing here.
    let mut bye = MessageBuilder::request_method(Method::Bye, b"sip:x@127.0.187.31");
    bye.header(
        HeaderName::Via,
        format!("SIP/2.0/UDP {};branch=z9hG4bK-bye1", caller.addr()).as_bytes(),
    )
    .header(HeaderName::From, b"<sip:alice@x>;tag=a-try1")
    .header(HeaderName::To, b"<sip:+15550100@127.0.0.1>;tag=mp-b")
    .header(HeaderName::CallId, b"try1")
    .header(HeaderName::CSeq, b"2 BYE");
    caller.send(&bye.build(), node.sip_addr).await;
    until(Duration::from_secs(1), "the BYE was not forwarded", || {
        relay.forwarded.lock().unwrap().len() == 3
    })
    .await;
    assert!(!relay.forwarded.lock().unwrap()[2].1.trying_sent);
    assert!(
        caller.recv(Duration::from_millis(300)).await.is_none(),
        "the node answered a forwarded in-dialog request itself"
    );
    assert_eq!(
        node.ctx
            .stats
            .trying_for_forwarded
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    node.shutdown(Duration::from_secs(1), false).await;
}

#[tokio::test(start_paused = true)]
async fn the_owner_of_a_forwarded_new_call_sends_100_only_when_the_first_node_did_not() {
    let relay = Arc::new(RecordingRelay::default());
    let pool = Arc::new(SingleNode::new(1024));
    let node = start_with("127.0.187.32:5060", 187, pool.clone(), pool, relay.clone()).await;
    let gw1 = Peer::bind("127.0.187.21:5060").await;
    let caller: SocketAddr = "127.0.187.1:5073".parse().unwrap();
    // The node's socket has done I/O (its first probe went out) before it sends on its own: with
    // time paused, a socket the runtime has not polled yet reports itself busy.
    let _ = gw1.recv(Duration::from_millis(1500)).await;
    // Marked: the node it reached answered 100; only the gateway's 180 goes back through it.
    let meta = medpool_b2bua::cluster::ForwardMeta {
        trying_sent: true,
        ..Default::default()
    };
    assert!(
        node.ctx
            .inject(arrived(invite(caller, "own1"), caller), 7, meta)
    );
    let (inv_b, from) = gw1
        .expect(Expect::Request(Method::Invite), Duration::from_secs(1))
        .await;
    gw1.respond(&inv_b, 180, "g1", from, None).await;
    until(Duration::from_secs(1), "the 180 was not sent back", || {
        statuses(&relay.sent_via.lock().unwrap()).contains(&180)
    })
    .await;
    assert_eq!(
        statuses(&relay.sent_via.lock().unwrap()),
        vec![180],
        "the owner sent a 100 for an INVITE the first node answered 100"
    );
    // Unmarked (a node of the previous version forwarded it): the owner answers 100 itself.
    relay.sent_via.lock().unwrap().clear();
    assert!(node.ctx.inject(
        arrived(invite(caller, "own2"), caller),
        7,
        medpool_b2bua::cluster::ForwardMeta::default()
    ));
    until(
        Duration::from_secs(1),
        "no 100 for an unmarked INVITE",
        || statuses(&relay.sent_via.lock().unwrap()).contains(&100),
    )
    .await;
    node.shutdown(Duration::from_secs(1), false).await;
}

#[tokio::test(start_paused = true)]
async fn an_invite_answered_100_elsewhere_is_sent_back_not_dropped_and_fed_again_there() {
    let relay = Arc::new(RecordingRelay::default());
    let node = start_with(
        "127.0.187.33:5060",
        187,
        Arc::new(OwnsNothing),
        Arc::new(SingleNode::new(1024)),
        relay.clone(),
    )
    .await;
    let caller = Peer::bind("127.0.187.1:5072").await;
    // Forwarded here, but the shard is node 1's (it moved on): unmarked, it is dropped for its
    // caller to retransmit; marked, its caller will not, so it goes back to the node it reached.
    let marked = medpool_b2bua::cluster::ForwardMeta {
        trying_sent: true,
        ..Default::default()
    };
    assert!(node.ctx.inject(
        arrived(invite(caller.addr(), "bnc0"), caller.addr()),
        5,
        medpool_b2bua::cluster::ForwardMeta::default()
    ));
    assert!(node.ctx.inject(
        arrived(invite(caller.addr(), "bnc1"), caller.addr()),
        5,
        marked
    ));
    until(
        Duration::from_secs(1),
        "the marked INVITE was not sent back",
        || !relay.bounced.lock().unwrap().is_empty(),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    {
        let back = relay.bounced.lock().unwrap();
        assert_eq!(back.len(), 1, "the unmarked INVITE was sent back too");
        assert_eq!(
            back[0].0, 5,
            "sent back to another node than the one it reached"
        );
        assert_eq!(back[0].2, 1);
        let m = SipMessage::parse(back[0].1.clone()).unwrap();
        assert_eq!(m.call_id().unwrap().unwrap(), b"bnc1");
    }
    // The node it reached takes it back: after a pause it forwards it again (counted), without a
    // second 100 to the caller.
    assert!(
        node.ctx
            .take_back(arrived(invite(caller.addr(), "bnc2"), caller.addr()), 1)
    );
    until(
        Duration::from_secs(2),
        "an INVITE taken back was not forwarded again",
        || !relay.forwarded.lock().unwrap().is_empty(),
    )
    .await;
    {
        let fwd = relay.forwarded.lock().unwrap();
        assert!(fwd[0].1.trying_sent);
        assert_eq!(fwd[0].1.bounces, 1);
    }
    assert!(
        caller.recv(Duration::from_millis(300)).await.is_none(),
        "an INVITE taken back was answered again"
    );
    // Sent back more than MAX_BOUNCES (8) times: the caller is told to come back.
    assert!(
        node.ctx
            .take_back(arrived(invite(caller.addr(), "bnc3"), caller.addr()), 9)
    );
    caller
        .expect(Expect::Status(503), Duration::from_secs(10))
        .await;
    node.shutdown(Duration::from_secs(1), false).await;
}

#[tokio::test(start_paused = true)]
async fn an_invite_for_an_owner_of_the_previous_version_goes_unmarked_and_unanswered_here() {
    let relay = Arc::new(RecordingRelay {
        old_peers: true,
        ..RecordingRelay::default()
    });
    let node = start_with(
        "127.0.187.34:5060",
        187,
        Arc::new(OwnsNothing),
        Arc::new(SingleNode::new(1024)),
        relay.clone(),
    )
    .await;
    let caller = Peer::bind("127.0.187.1:5074").await;
    caller
        .send(&invite(caller.addr(), "old1"), node.sip_addr)
        .await;
    until(
        Duration::from_secs(1),
        "the INVITE was not forwarded",
        || !relay.forwarded.lock().unwrap().is_empty(),
    )
    .await;
    assert!(
        !relay.forwarded.lock().unwrap()[0].1.trying_sent,
        "marked for an owner that would not understand it"
    );
    assert!(
        caller.recv(Duration::from_millis(300)).await.is_none(),
        "answered 100 here although the owner (of the previous version) answers it too"
    );
    node.shutdown(Duration::from_secs(1), false).await;
}

#[tokio::test(start_paused = true)]
async fn an_invite_answered_100_here_is_fed_again_when_the_stream_to_its_owner_broke() {
    let relay = Arc::new(RecordingRelay::default());
    let node = start_with(
        "127.0.187.35:5060",
        187,
        Arc::new(OwnsNothing),
        Arc::new(SingleNode::new(1024)),
        relay.clone(),
    )
    .await;
    let caller = Peer::bind("127.0.187.1:5075").await;
    let inv = invite(caller.addr(), "lost1");
    caller.send(&inv, node.sip_addr).await;
    let _ = caller
        .expect(Expect::Status(100), Duration::from_secs(1))
        .await;
    until(
        Duration::from_secs(1),
        "the INVITE was not forwarded",
        || relay.forwarded.lock().unwrap().len() == 1,
    )
    .await;
    assert_eq!(
        node.ctx.relayed_kept(),
        1,
        "the INVITE answered 100 is not kept"
    );
    // The stream to another node broke: nothing of this INVITE is fed again.
    assert_eq!(node.ctx.refeed_lost_to(9), 0);
    // The stream to its owner (node 1) broke before the owner answered anything: its caller,
    // answered 100, will not retransmit, so this node feeds it again; it goes to the owner again,
    // marked, and the caller hears no second 100.
    assert_eq!(node.ctx.refeed_lost_to(1), 1);
    assert_eq!(
        node.ctx.refeed_lost_to(1),
        0,
        "fed again twice for one break"
    );
    until(
        Duration::from_secs(2),
        "the INVITE was not forwarded again",
        || relay.forwarded.lock().unwrap().len() == 2,
    )
    .await;
    {
        let fwd = relay.forwarded.lock().unwrap();
        assert_eq!(fwd[1].0, fwd[0].0, "not the same INVITE");
        assert!(fwd[1].1.trying_sent, "forwarded again unmarked");
        assert_eq!(fwd[1].1.bounces, 1);
    }
    assert!(
        caller.recv(Duration::from_millis(300)).await.is_none(),
        "the caller was answered again"
    );
    assert_eq!(
        node.ctx.relayed_kept(),
        1,
        "not kept again once forwarded again"
    );
    // The owner answers 180 through this node: it has the INVITE, a later break loses nothing.
    let ringing = SipMessage::parse(inv.clone()).unwrap();
    let ringing = response_to(&ringing, 180, b"Ringing", Some("o1"), None).build();
    node.ctx.relayed_answer(&ringing);
    assert_eq!(node.ctx.relayed_kept(), 0);
    assert_eq!(node.ctx.refeed_lost_to(1), 0);
    assert_eq!(
        node.ctx.relayed_pending(),
        1,
        "a 180 ended the wait for its final answer"
    );
    assert_eq!(
        node.ctx
            .stats
            .refed
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    node.shutdown(Duration::from_secs(1), false).await;
}

#[tokio::test(start_paused = true)]
async fn a_stopping_node_sends_a_forwarded_new_call_back_instead_of_refusing_it() {
    let relay = Arc::new(RecordingRelay::default());
    let pool = Arc::new(SingleNode::new(1024));
    let node = start_with("127.0.188.36:5060", 188, pool.clone(), pool, relay.clone()).await;
    let gw1 = Peer::bind("127.0.188.21:5060").await;
    let _ = gw1.recv(Duration::from_millis(1500)).await;
    // A call of its own in set-up (the gateway does not answer) keeps the stopping node running.
    let caller = Peer::bind("127.0.188.1:5076").await;
    caller
        .send(&invite(caller.addr(), "stop0"), node.sip_addr)
        .await;
    let _ = gw1
        .expect(Expect::Request(Method::Invite), Duration::from_secs(1))
        .await;
    let ctx = node.ctx.clone();
    let stopping = tokio::spawn(node.shutdown(Duration::from_secs(10), false));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        !stopping.is_finished(),
        "the node did not wait for its call"
    );
    // Another node forwards new calls for shards this node still owns: a marked one goes back
    // to it (it feeds it again, to the next owner once this node is gone) ...
    let marked = medpool_b2bua::cluster::ForwardMeta {
        trying_sent: true,
        ..Default::default()
    };
    let from = caller.addr();
    assert!(
        ctx.inject(arrived(invite(from, "stop1"), from), 4, marked),
        "a marked INVITE was not sent back"
    );
    {
        let back = relay.bounced.lock().unwrap();
        assert_eq!(back.len(), 1);
        assert_eq!((back[0].0, back[0].2), (4, 1));
    }
    // ... an unmarked one is not taken (its caller retransmits to the node it reached).
    assert!(!ctx.inject(
        arrived(invite(from, "stop2"), from),
        4,
        medpool_b2bua::cluster::ForwardMeta::default()
    ));
    assert_eq!(relay.bounced.lock().unwrap().len(), 1);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        statuses(&relay.sent_via.lock().unwrap()).is_empty(),
        "a stopping node answered a forwarded new call (503) instead of letting it go on"
    );
    stopping.await.unwrap();
}

/// The tests of this file run at once, each on loopback addresses of its own: two that bind one
/// address fail with `AddrInUse` (CI caught a pair on 127.0.187.21:5060). An `ip:port` written in
/// two functions of this file is refused here, in every run, not only in runs where the two overlap.
#[test]
fn no_two_tests_of_this_file_share_a_loopback_address() {
    let src = include_str!("actors.rs");
    let mut first_seen: std::collections::HashMap<&str, &str> = std::collections::HashMap::new();
    for func in src.split("\nasync fn ").skip(1) {
        let name = func.split('(').next().unwrap_or_default();
        let mut rest = func;
        while let Some(at) = rest.find("\"127.") {
            let lit = &rest[at + 1..];
            let end = lit.find('"').unwrap_or(lit.len());
            let addr = &lit[..end];
            rest = &lit[end..];
            if !addr.contains(':') {
                continue;
            }
            let first = *first_seen.entry(addr).or_insert(name);
            assert_eq!(
                first, name,
                "{addr} is used by both {first} and {name}: give one of them addresses of its own"
            );
        }
    }
    assert!(first_seen.len() > 40, "the scan found the tests' addresses");
}
