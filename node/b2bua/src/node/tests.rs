//! The node's own answers, on the socket-less test node: 2xx answers no call knows (orphans, and
//! forged look-alikes that must not turn the node into a reflector).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use medpool_sip::{Method, ids};

use super::core_events::orphan_target;
use crate::config::PoolConfig;
use crate::testkit::{CONFIG, Expect, GW1, NODE, TestNode, addr};

/// A 2xx to an INVITE of ours (Call-ID `call_id`) whose Contact is `contact`.
fn late_ok(call_id: &str, contact: &str) -> Bytes {
    Bytes::from(format!(
        "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP {NODE};branch=z9hG4bKmp0007late\r\n\
         From: <sip:alice@{NODE}>;tag=mp0007n\r\nTo: <sip:+15550100@{GW1}>;tag=g9\r\n\
         Call-ID: {call_id}\r\nCSeq: 1 INVITE\r\nContact: <sip:bob@{contact}>\r\nContent-Length: 0\r\n\r\n"
    ))
}

#[test]
fn an_orphan_answer_goes_back_only_to_the_trunk_it_came_from() {
    let config = PoolConfig::from_toml_str(CONFIG, "test.toml").unwrap();
    let dns = crate::dns::Directory::new(Err("no DNS here".into()));
    let a = |s: &str| s.parse::<SocketAddr>().unwrap();
    // (came from, its next hop, where the ACK and BYE go)
    let table = [
        (GW1, "127.0.9.21:5070", Some(a("127.0.9.21:5070"))), // the trunk's other port
        (GW1, "198.51.100.7:5060", Some(a(GW1))),             // a third party: back to the trunk
        (GW1, "127.0.9.22:5060", Some(a(GW1))),               // another trunk: back to this one
        ("127.0.9.77:5060", "127.0.9.77:5060", None),         // no trunk: nothing at all
    ];
    for (from, hop, want) in table {
        assert_eq!(
            orphan_target(&config, &dns, a(from), a(hop)),
            want,
            "{from} → {hop}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_forged_2xx_is_ignored_and_a_real_orphan_is_hung_up_towards_its_trunk() {
    let mut node = TestNode::new().await;
    // A look-alike: our prefix and shard, but not our MAC.
    node.receive(late_ok("mp0007abcdefghijklmnopqrstuvwx", GW1), GW1)
        .await;
    assert!(
        node.sent(Duration::from_secs(2)).await.is_none(),
        "a forged 2xx is not answered"
    );
    assert_eq!(node.ctx.stats.forged_answers.load(Ordering::Relaxed), 1);

    // One we minted, from an address that is no trunk: not answered either.
    let ours = ids::new_call_id(7);
    node.receive(late_ok(&ours, "127.0.9.77:5060"), "127.0.9.77:5060")
        .await;
    assert!(node.sent(Duration::from_secs(2)).await.is_none());

    // One we minted, from the gateway, naming a third party in its Contact: ACK and BYE go to the
    // gateway, never to the third party.
    node.receive(late_ok(&ours, "198.51.100.7:5060"), GW1).await;
    let ack = node.sent(Duration::from_secs(2)).await.expect("an ACK");
    assert_eq!((ack.msg.method(), ack.to), (Some(Method::Ack), addr(GW1)));
    let bye = node.expect(GW1, Expect::Request(Method::Bye)).await;
    assert_eq!(bye.call_id().unwrap().unwrap(), ours.as_bytes());
    assert_eq!(node.ctx.stats.orphan_answers.load(Ordering::Relaxed), 1);

    // The leg is remembered (by its Call-ID's hash): the gateway's next copy of the 2xx is ACKed
    // again but not hung up a second time; another leg's is.
    assert_eq!(node.ctx.remembered_legs().0, 1);
    node.receive(late_ok(&ours, "198.51.100.7:5060"), GW1).await;
    node.expect(GW1, Expect::Request(Method::Ack)).await;
    assert_eq!(node.ctx.stats.orphan_answers.load(Ordering::Relaxed), 1);
    let other = ids::new_call_id(7);
    node.receive(late_ok(&other, "198.51.100.7:5060"), GW1)
        .await;
    let bye = node.expect(GW1, Expect::Request(Method::Bye)).await;
    assert_eq!(bye.call_id().unwrap().unwrap(), other.as_bytes());
    assert_eq!(node.ctx.stats.orphan_answers.load(Ordering::Relaxed), 2);
    assert_eq!(node.ctx.remembered_legs().0, 2);
}
