//! The media relay's metrics: what it relayed, its sessions and ports, the calls it refused or
//! ended.

use std::sync::atomic::Ordering::Relaxed;

use prometheus_client::encoding::DescriptorEncoder;

use super::family::{Labels, counter, gauge, one};

/// The media relay: what it relayed, its sessions and ports, the calls it refused or ended.
pub(super) fn encode(
    e: &mut DescriptorEncoder,
    media: &medpool_b2bua::media::MediaRuntime,
    s: &medpool_b2bua::node::Stats,
) -> Result<(), std::fmt::Error> {
    let t = media.relay.totals();
    let rows = [
        (
            "medpool_media_packets",
            "RTP packets received by the relay (both legs)",
            t.packets,
        ),
        (
            "medpool_media_bytes",
            "RTP bytes received by the relay (both legs)",
            t.bytes,
        ),
        (
            "medpool_media_rtcp_packets",
            "RTCP packets received by the relay",
            t.rtcp_packets,
        ),
        (
            "medpool_media_lost_packets",
            "RTP packets lost before the relay (sequence gaps)",
            t.lost,
        ),
        (
            "medpool_media_stray_packets",
            "Packets from a source other than the latched one (dropped)",
            t.stray,
        ),
        (
            "medpool_media_translated_packets",
            "Packets translated between G.711 A-law and mu-law",
            t.translated,
        ),
        (
            "medpool_media_latches",
            "Times a relay leg latched to its peer's source",
            t.latches,
        ),
        (
            "medpool_media_send_failures",
            "Packets the relay could not send on",
            t.send_failed,
        ),
        (
            "medpool_media_timeouts",
            "Calls hung up because their media stopped (media_timeout)",
            s.media_timeouts.load(Relaxed),
        ),
        (
            "medpool_media_ports_exhausted",
            "New calls refused with 503 because the media port range was full",
            s.media_ports_exhausted.load(Relaxed),
        ),
        (
            "medpool_media_reanchored",
            "Calls taken over whose media was moved onto this node (media failover)",
            s.media_reanchored.load(Relaxed),
        ),
        (
            "medpool_media_reanchor_failures",
            "Re-anchoring re-INVITEs that failed (the leg goes on with signalling only)",
            s.media_reanchor_failed.load(Relaxed),
        ),
    ];
    for (name, help, v) in rows {
        counter(e, name, help, &one(v))?;
    }
    let drops = s.srtp_drops();
    let per_trunk = |f: fn(&medpool_b2bua::ctx::SrtpDrops) -> u64| -> Vec<(Labels, u64)> {
        drops
            .iter()
            .map(|(t, d)| (vec![("trunk", t.clone())], f(d)))
            .collect()
    };
    counter(
        e,
        "medpool_srtp_auth_failures",
        "SRTP/SRTCP packets from a trunk's peers that failed authentication, dropped (counted when the call's relay session closes)",
        &per_trunk(|d| d.auth_failed),
    )?;
    counter(
        e,
        "medpool_srtp_replays",
        "SRTP/SRTCP packets from a trunk's peers that were replayed or too old, dropped (counted when the call's relay session closes)",
        &per_trunk(|d| d.replayed),
    )?;
    let ports = media.relay.ports();
    let gauges = [
        (
            "medpool_media_sessions",
            "Relay sessions running (relayed calls)",
            media.relay.sessions(),
        ),
        (
            "medpool_media_ports_in_use",
            "Media UDP ports in use (RTP and RTCP)",
            ports.pairs_in_use() * 2,
        ),
        (
            "medpool_media_ports_free",
            "Media UDP ports free (RTP and RTCP)",
            ports.free_pairs() * 2,
        ),
    ];
    for (name, help, v) in gauges {
        gauge(
            e,
            name,
            help,
            &[(Vec::new(), i64::try_from(v).unwrap_or(i64::MAX))],
        )?;
    }
    Ok(())
}
