//! Invariant: **a relayed call's audio survives the SIGKILL of the node anchoring it.** Three real
//! `medpool serve` processes with every trunk relaying media, behind the Service-like forwarder; two
//! simulated gateways whose calls echo RTP (a reflector leg per call) and a caller whose calls each
//! send a 20 ms G.711 stream and check every echo (see medpool-simpeer's `rtp` module).
//!
//! 1. `rtp_flows_through_the_relay_with_hold_resume_and_a_codec_change`: 60 calls through the pool;
//!    every packet is checked on both ends: no loss, duplicate, reordering, timestamp error or packet
//!    of another call; then a hold (re-INVITE `sendonly`: the gateway stops echoing), a resume, and a
//!    codec change (PCMU → PCMA by re-INVITE) that both ends follow.
//! 2. `relayed_audio_resumes_after_the_anchor_is_killed`: calls are placed until 200 are anchored
//!    on one node (the others are hung up), that node is SIGKILLed; the survivors adopt its shards and
//!    re-INVITE both legs of each call onto their own relay. Every call's echoes must come back; the
//!    audio gap per call (the longest silence at the caller after the kill) is printed as
//!    p50/p99/max and must stay within the failover time (kill → shards adopted) + 1 s. No packet
//!    may reach another call, before or after.
//!
//! 3. `srtp_audio_resumes_after_the_anchor_is_killed_rekeyed`: test 2 with SRTP on the caller's leg
//!    (its trunk has `encryption = "required"`, the gateways' legs are plain RTP). No key is in the
//!    record: the survivors' re-INVITEs offer fresh keys; the audio gap is printed the same way and
//!    every echo after the kill must decrypt.
//!
//! Addresses: 127.0.76.x (test 1), 127.0.73.x (test 2) and 127.0.162.x (test 3), one test at a
//! time (2 shared cores).

#![allow(clippy::unwrap_used, clippy::panic, missing_docs)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use medpool_chaos_tests::pool::{LocalPool, Net, Setup, status_table};
use medpool_chaos_tests::seed::seed;
use medpool_simpeer::rtp::{Direction, LegStats, PTIME};
use medpool_simpeer::{
    CallMedia, Caller, CallerConfig, Forwarder, ForwarderConfig, Gateway, GatewayConfig,
    ResponseRouting, Summary,
};

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

struct World {
    pool: LocalPool,
    fwd: Forwarder,
    gws: Vec<Gateway>,
}

/// The pool and its peers; with `srtp` the caller's trunk requires SRTP (the gateways' legs stay
/// plain RTP: the relay bridges SRTP ↔ RTP).
async fn world(net: Net, srtp: bool) -> World {
    let gw1 = Gateway::start(GatewayConfig {
        rtp: true,
        ..GatewayConfig::new(net.gateway(0))
    })
    .await
    .unwrap();
    let gw2 = Gateway::start(GatewayConfig {
        rtp: true,
        routing: ResponseRouting::ViaSentBy,
        ..GatewayConfig::new(net.gateway(1))
    })
    .await
    .unwrap();
    let backends: Vec<_> = (0..3).map(|i| net.node_sip(i)).collect();
    let fwd = Forwarder::start(
        ForwarderConfig::new(net.service(), backends).with_probes(Duration::from_millis(200)),
    )
    .await
    .unwrap();
    let setup = Setup {
        media_relay: true,
        pbx_encryption: srtp.then_some("required"),
        ..Setup::default()
    };
    let pool = LocalPool::start_with(net, 3, setup).await.unwrap();
    World {
        pool,
        fwd,
        gws: vec![gw1, gw2],
    }
}

async fn rtp_caller(net: Net, port: u16, seed: u64, srtp: bool) -> Caller {
    let cfg = CallerConfig {
        rtp: true,
        srtp,
        cps: 50,
        ..CallerConfig::new(net.caller(port), net.service(), seed)
    };
    Caller::start(cfg).await.unwrap()
}

fn gateway_stats(gws: &[Gateway]) -> LegStats {
    let mut s = LegStats::default();
    for g in gws {
        s.add(&g.rtp_stats());
    }
    s
}

fn caller_stats(media: &[CallMedia]) -> LegStats {
    let mut s = LegStats::default();
    for m in media {
        s.add(&m.stats);
    }
    s
}

/// Waits `d` of audio, then returns the caller's legs.
async fn listen(caller: &Caller, d: Duration) -> Vec<CallMedia> {
    tokio::time::sleep(d).await;
    caller.rtp_stats()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rtp_flows_through_the_relay_with_hold_resume_and_a_codec_change() {
    let _one = SERIAL.lock().await;
    let name = "media-relay";
    let net = Net(76);
    let seed = seed(name);
    let w = world(net, false).await;
    let caller = rtp_caller(net, 5070, seed, false).await;
    const CALLS: usize = 60;
    let answered = caller.place(CALLS).await;
    assert_eq!(answered, CALLS, "[{name}] calls answered");
    let media = listen(&caller, Duration::from_secs(2)).await;
    for m in &media {
        let ip = m.negotiated.remote.map(|r| r.ip());
        assert!(
            (0..3).any(|i| Some(net.node_sip(i).ip()) == ip),
            "[{name}] call {} sends to {ip:?}, not to a node's relay",
            m.index
        );
        assert!(
            m.stats.received > 50,
            "[{name}] call {}: {} echoes in 2 s of audio: {:?}",
            m.index,
            m.stats.received,
            m.stats
        );
    }
    let (c, g) = (caller_stats(&media), gateway_stats(&w.gws));
    eprintln!("[{name}] caller legs: {c:?}\n[{name}] gateway legs: {g:?}");
    assert_eq!(
        (c.defects(), g.defects()),
        (0, 0),
        "[{name}] damaged packets"
    );
    assert_eq!((c.lost, g.lost), (0, 0), "[{name}] loss on loopback");

    // Hold: the caller offers sendonly; the gateway answers recvonly and stops echoing.
    assert_eq!(
        caller.reinvite_all_with(Direction::SendOnly, 0).await,
        CALLS
    );
    let held_from = caller_stats(&listen(&caller, Duration::from_millis(300)).await).received;
    let gw_from = gateway_stats(&w.gws).received;
    let held = caller_stats(&listen(&caller, Duration::from_secs(1)).await);
    let gw_held = gateway_stats(&w.gws).received;
    assert_eq!(held.received, held_from, "[{name}] echoes while on hold");
    assert!(
        gw_held >= gw_from + (CALLS as u64) * 40,
        "[{name}] the gateway hears the held caller: {gw_from} → {gw_held}"
    );
    // Resume, then change the codec to PCMA.
    assert_eq!(
        caller.reinvite_all_with(Direction::SendRecv, 0).await,
        CALLS
    );
    let resumed = caller_stats(&listen(&caller, Duration::from_secs(1)).await);
    assert!(
        resumed.received >= held.received + (CALLS as u64) * 40,
        "[{name}] echoes after resume: {} → {}",
        held.received,
        resumed.received
    );
    assert_eq!(
        caller.reinvite_all_with(Direction::SendRecv, 8).await,
        CALLS
    );
    let pcma = listen(&caller, Duration::from_secs(1)).await;
    for m in &pcma {
        assert_eq!(
            (m.negotiated.payload_type, m.stats.last_payload_type),
            (8, Some(8)),
            "[{name}] call {} after the codec change",
            m.index
        );
    }
    let (c, g) = (caller_stats(&pcma), gateway_stats(&w.gws));
    eprintln!("[{name}] after hold, resume, PCMA: caller {c:?}\n[{name}] gateways {g:?}");
    assert_eq!(
        (c.defects(), g.defects()),
        (0, 0),
        "[{name}] damaged packets"
    );
    assert_eq!(
        caller.hangup_all().await,
        CALLS,
        "[{name}] BYE 2xx\n{}",
        Summary::of(&caller.ledger())
    );
    drop(w.fwd);
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relayed_audio_resumes_after_the_anchor_is_killed() {
    let _one = SERIAL.lock().await;
    anchor_killed("media-failover", Net(73), false).await;
}

/// The same with SRTP on the caller's leg (`encryption = "required"` on its trunk) and plain RTP
/// on the gateways': no key is in the record, so the survivor's re-anchoring re-INVITE gives the
/// caller a fresh key and takes the caller's answer's; the caller checks the decrypted echoes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn srtp_audio_resumes_after_the_anchor_is_killed_rekeyed() {
    let _one = SERIAL.lock().await;
    anchor_killed("media-failover-srtp", Net(162), true).await;
}

async fn anchor_killed(name: &str, net: Net, srtp: bool) {
    let seed = seed(name);
    let mut w = world(net, srtp).await;
    let up = w.pool.status(0).await.unwrap();
    let victim = up.leader.map_or(1, |l| (l as usize + 1) % 3);
    let victim_ip = net.node_sip(victim).ip();
    let caller = rtp_caller(net, 5070, seed, srtp).await;
    w.fwd.pin(caller.local_addr(), net.node_sip(victim));
    // Calls until 200 are anchored on the victim; the others are hung up.
    const ANCHORED: usize = 200;
    let mut on_victim = Vec::new();
    for round in 0..8 {
        let missing = ANCHORED - on_victim.len();
        caller.place(missing * 3 + 10).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let live = caller.live_calls();
        let media = caller.rtp_stats();
        let mut elsewhere = Vec::new();
        on_victim.clear();
        for m in media.iter().filter(|m| live.contains(&m.index)) {
            if m.negotiated.remote.map(|r| r.ip()) == Some(victim_ip) && on_victim.len() < ANCHORED
            {
                on_victim.push(m.index);
            } else {
                elsewhere.push(m.index);
            }
        }
        caller.hangup(&elsewhere).await;
        eprintln!(
            "[{name}] round {round}: {} calls anchored on node {victim} ({victim_ip})",
            on_victim.len()
        );
        if on_victim.len() >= ANCHORED {
            break;
        }
    }
    assert_eq!(
        on_victim.len(),
        ANCHORED,
        "[{name}] calls anchored on the victim"
    );
    let mut before = w.pool.status(0).await.unwrap();
    for _ in 0..50 {
        if before.dialogs >= ANCHORED {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        before = w.pool.status(0).await.unwrap();
    }
    let steady = listen(&caller, Duration::from_secs(2)).await;
    let steady: BTreeMap<usize, LegStats> = steady
        .into_iter()
        .filter(|m| on_victim.contains(&m.index))
        .map(|m| (m.index, m.stats))
        .collect();
    let c = steady.values().fold(LegStats::default(), |mut a, s| {
        a.add(s);
        a
    });
    assert_eq!(
        c.defects(),
        0,
        "[{name}] damaged packets before the kill: {c:?}"
    );
    if srtp {
        assert!(
            c.srtp_received > 0 && c.srtp_received == c.received && c.srtp_failed == 0,
            "[{name}] the caller's legs speak SRTP before the kill: {c:?}"
        );
    }

    let marks: Vec<(usize, usize)> = (0..3)
        .filter(|&i| i != victim)
        .map(|s| (s, w.pool.nodes[s].log().len()))
        .collect();
    eprintln!(
        "[{name}] SIGKILL node {victim}, anchoring {ANCHORED} calls; before:\n{}",
        status_table(&before)
    );
    let killed_us = now_us();
    let killed = w.pool.kill(victim);
    w.fwd.mark_dead(net.node_sip(victim));
    let failover = w
        .pool
        .wait_failover(victim, killed, &before, &marks, Duration::from_secs(20))
        .await
        .unwrap();
    let bound = failover.adopted + Duration::from_secs(1);
    eprintln!(
        "[{name}] shards moved {:.2} s after the kill, adopted after {:.2} s, {} calls rebuilt",
        failover.map_moved.as_secs_f64(),
        failover.adopted.as_secs_f64(),
        failover.restored
    );
    // Give every call the bound to come back, then 2 s of audio to judge.
    tokio::time::sleep(bound.saturating_sub(killed.elapsed()) + Duration::from_secs(2)).await;
    let after = caller.rtp_stats();
    let now = now_us();
    let mut gaps = Vec::new();
    let mut silent = Vec::new();
    let mut moved = 0;
    let mut total = LegStats::default();
    for m in after.iter().filter(|m| on_victim.contains(&m.index)) {
        total.add(&m.stats);
        let remote: Option<SocketAddr> = m.negotiated.remote;
        if remote.is_some_and(|r| r.ip() != victim_ip) {
            moved += 1;
        }
        let resumed = m
            .stats
            .last_rx_us
            .is_some_and(|t| now.saturating_sub(t) < 500_000 && t > killed_us);
        if !resumed {
            silent.push((
                m.index,
                remote,
                m.stats.last_rx_us.map(|t| t.saturating_sub(killed_us)),
            ));
            continue;
        }
        // The gap: the longest silence that began at or after the last packet before the kill.
        let gap = m
            .stats
            .gaps
            .iter()
            .filter(|g| g.from_us + g.len_us > killed_us)
            .map(|g| g.len_us)
            .max()
            .unwrap_or(PTIME.as_micros() as u64);
        gaps.push(gap);
    }
    gaps.sort_unstable();
    let ms = |us: u64| us as f64 / 1000.0;
    eprintln!(
        "[{name}] audio gap per call after the SIGKILL ({} calls resumed, {moved} re-anchored on a \
         survivor): p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms (bound: failover {:.2} s + 1 s)",
        gaps.len(),
        ms(percentile(&gaps, 0.50)),
        ms(percentile(&gaps, 0.99)),
        ms(gaps.last().copied().unwrap_or(0)),
        failover.adopted.as_secs_f64()
    );
    eprintln!(
        "[{name}] caller legs after: {total:?}\n[{name}] gateway legs: {:?}",
        gateway_stats(&w.gws)
    );
    assert!(
        silent.is_empty(),
        "[{name}] {} of {ANCHORED} calls' audio did not resume (index, anchor, last echo after the \
         kill µs): {:?}; logs in {}",
        silent.len(),
        &silent[..silent.len().min(10)],
        w.pool.dir().display()
    );
    assert_eq!(moved, ANCHORED, "[{name}] calls re-anchored on a survivor");
    let over: Vec<u64> = gaps
        .iter()
        .copied()
        .filter(|g| *g > bound.as_micros() as u64)
        .collect();
    assert!(
        over.is_empty(),
        "[{name}] {} calls' audio gap exceeded failover + 1 s ({:.2} s): {:?} ms",
        over.len(),
        bound.as_secs_f64(),
        over.iter().map(|g| g / 1000).collect::<Vec<_>>()
    );
    if srtp {
        // Re-keyed: after the kill every echo still decrypts (the survivor's key), and the
        // gateways (plain RTP) never saw an SRTP packet.
        let fresh: u64 = after
            .iter()
            .filter(|m| on_victim.contains(&m.index))
            .map(|m| m.stats.srtp_received)
            .sum::<u64>()
            - steady.values().map(|s| s.srtp_received).sum::<u64>();
        eprintln!(
            "[{name}] SRTP after the kill: {fresh} echoes decrypted with the new keys, {} failed",
            total.srtp_failed
        );
        assert!(
            fresh >= ANCHORED as u64 * 50,
            "[{name}] decrypted echoes after re-keying: {fresh}"
        );
        assert_eq!(total.srtp_received, total.received, "[{name}] {total:?}");
    }
    let g = gateway_stats(&w.gws);
    assert_eq!(
        (total.wrong_call, g.wrong_call, total.corrupt, g.corrupt),
        (0, 0, 0, 0),
        "[{name}] packets of another call or damaged"
    );
    let ended = caller.hangup_all().await;
    eprintln!(
        "[{name}] BYE 2xx {ended}/{ANCHORED}\n{}",
        Summary::of(&caller.ledger())
    );
    assert_eq!(ended, ANCHORED, "[{name}] calls hung up after the failover");
    let counts: Vec<_> = w.gws.iter().map(Gateway::counts).collect();
    eprintln!("[{name}] gateways: {counts:?}");
    assert!(
        counts
            .iter()
            .all(|c| c.cseq_out_of_order == 0 && c.unknown_dialog == 0),
        "[{name}] in-dialog requests out of CSeq order or for unknown dialogs at the gateways: \
         {counts:?}; logs in {}",
        w.pool.dir().display()
    );
}
