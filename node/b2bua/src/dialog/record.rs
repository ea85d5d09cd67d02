//! The call's replicated record: written once the caller has its 2xx, retried while it cannot be,
//! removed when the call really ends, and read back to rebuild a call on the node that takes its
//! shard over.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use medpool_sip::ids;
use medpool_sip::transaction::{ClientKey, ServerKey};
use ractor::{ActorProcessingErr, ActorRef};

use super::call::{Attempt, Call, CallSeed};
use super::leg::Leg;
use super::msg::{DialogMsg, Phase};
use super::spans::call_span;
use crate::cluster::{DialogRecord, LegRecord};
use crate::config::SharedTrunk;
use crate::ctx::NodeCtx;

/// How far above the recorded CSeq a new owner starts its own requests on each leg, per owner the
/// shard had since the record was written: the old owner may have sent in-dialog requests after the
/// record was written, and so may every owner that rebuilt the call from the same record and lost
/// the shard before its own rewrite landed (ARCHITECTURE.md, "Failover"; [`restart_cseq`]).
pub const CSEQ_SKIP: u32 = 1000;

/// The largest CSeq number a request may carry (RFC 3261 §8.1.1.5: below 2**31).
const CSEQ_MAX: u32 = (1 << 31) - 1;

/// Where a node that rebuilds a call at shard epoch `now` starts a leg whose recorded CSeq is
/// `recorded`, the record having been written at shard epoch `written`: CSEQ_SKIP × (now −
/// written + 1) above it.
///
/// Why that is above every request an earlier owner sent: every owner of the shard since the
/// writer (epochs written … now − 1; an epoch is raised at every change of owner) rebuilt the call
/// from this record or an earlier one, so it started at most CSEQ_SKIP × (its epoch − written + 1)
/// above `recorded` — at most CSEQ_SKIP × (now − written) — and sent fewer than CSEQ_SKIP
/// requests on the leg from there (the bound CSEQ_SKIP always assumed of one owner); the writer
/// itself sent fewer than CSEQ_SKIP after writing. With one CSEQ_SKIP for all, two owners in a row
/// that rebuilt the call from one record (the first lost the shard before its rewrite landed, as
/// in a rolling restart) started at the same number and the gateway saw the second owner's
/// re-INVITE with the first one's CSeq (soak 0xb92769024e78ba4c, round 8). The writer's epoch is
/// that of its shard map, which may be ahead of the epoch it acted under (a call that finished
/// its set-up after the move) but never ahead of the reader's (the record was applied after it),
/// hence the "+ 1". Without both epochs (a node alone, a record from before epochs were
/// recorded): CSEQ_SKIP, as before.
pub(super) fn restart_cseq(recorded: u32, written: Option<u64>, now: Option<u64>) -> u32 {
    let owners = match (written, now) {
        (Some(w), Some(e)) => e.saturating_sub(w).saturating_add(1),
        _ => 1,
    };
    let skip = u64::from(CSEQ_SKIP).saturating_mul(owners);
    u32::try_from(u64::from(recorded).saturating_add(skip))
        .unwrap_or(u32::MAX)
        .min(CSEQ_MAX)
}

/// How often an answered call retries writing a record this node could not write at once.
pub(super) const STORE_RETRY_EVERY: Duration = Duration::from_millis(250);
/// How often a rebuilt call checks that its record still exists: every 2 s for as long as the old
/// owner may still be ending the call and retrying its removal (its transactions, up to 32 s, then
/// its write retries), then every 30 s for the rest of its life (a cheap read of the local state).
pub(super) const RECORD_CHECK_EVERY: Duration = Duration::from_secs(2);
pub(super) const RECORD_CHECKS: u8 = 30;
pub(super) const RECORD_CHECK_SLOW: Duration = Duration::from_secs(30);

impl Call {
    /// Writes the call's record (a confirmed call's both legs); whether it was taken for writing.
    /// A store that keeps no records takes every confirmed call's without one being built. A call
    /// rebuilt here only replaces its record: its old node may have ended it in the instant of
    /// the move and removed the record after this node read it, and a plain write (say, of the
    /// media plan after the re-anchoring re-INVITEs, which the peers then answer 481) would bring
    /// the record back for good — a call with nobody at either end, rebuilt at every later move.
    /// With the rewrite dropped, the record check (`on_record_check`) finds the record gone.
    pub(super) fn write_record(&self) -> bool {
        if !self.ctx.store.keeps_records() {
            return self.confirmed_b().is_some();
        }
        self.record().is_some_and(|rec| {
            if self.rebuilt {
                self.ctx.store.replace(rec)
            } else {
                self.ctx.store.store(rec)
            }
        })
    }

    /// The call's record was taken for writing: from here on the pool, not only this node, knows it.
    pub(super) fn mark_stored(&mut self) {
        if !self.stored {
            self.stored = true;
            self.ctx.set_ups.end(self.actor.pid());
            self.ctx
                .unrecorded_calls
                .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
            self.ctx.progressed();
        }
    }

    pub(super) fn record(&self) -> Option<DialogRecord> {
        let b = self.confirmed_b()?;
        let leg_rec = |l: &Leg, srtp: &crate::srtp::SideSrtp| LegRecord {
            call_id: String::from_utf8_lossy(&l.call_id).into_owned(),
            remote_tag: l
                .remote_tag
                .as_ref()
                .map(|t| String::from_utf8_lossy(t).into_owned())
                .unwrap_or_default(),
            local_tag: l.local_tag.clone(),
            remote_target: String::from_utf8_lossy(&l.remote_target).into_owned(),
            route_set: l
                .route_set
                .iter()
                .map(|r| String::from_utf8_lossy(r).into_owned())
                .collect(),
            peer: l.peer.to_string(),
            transport: l.transport.as_str().to_ascii_lowercase(),
            local_cseq: l.local_cseq,
            local_uri: String::from_utf8_lossy(&l.local_uri).into_owned(),
            remote_uri: String::from_utf8_lossy(&l.remote_uri).into_owned(),
            local_port: l.local_port,
            srtp_mki_len: srtp.mki_len(),
        };
        Some(DialogRecord {
            shard: self.shard,
            a: leg_rec(&self.a, self.srtp.side(0)),
            b: leg_rec(&b.leg, self.srtp.side(1)),
            trunk: b.trunk.clone(),
            inbound: self.inbound.name.clone(),
            traceparent: crate::trace::traceparent(&self.span),
            media: (self.media.a_sdp.is_some() || self.media.b_sdp.is_some())
                .then(|| self.media.clone()),
            session_timer: self.session.map(Into::into),
            epoch: self.ctx.shards.epoch(self.shard),
        })
    }
}

/// Why a record cannot be carried on here.
#[derive(Debug, thiserror::Error)]
pub(super) enum RestoreError {
    #[error("dialog record names trunk {0:?}, which the configuration no longer has")]
    UnknownTrunk(String),
    #[error("dialog record has a malformed address {0:?}")]
    BadAddress(String),
}

/// A leg as its record describes it, its own requests numbered from `local_cseq` (see
/// [`restart_cseq`]).
pub(super) fn leg_from_record(r: &LegRecord, local_cseq: u32) -> Result<Leg, RestoreError> {
    let peer = r
        .peer
        .parse()
        .map_err(|_| RestoreError::BadAddress(r.peer.clone()))?;
    Ok(Leg {
        call_id: Bytes::from(r.call_id.clone()),
        local_tag: r.local_tag.clone(),
        local_uri: Bytes::from(r.local_uri.clone()),
        remote_uri: Bytes::from(r.remote_uri.clone()),
        remote_tag: Some(Bytes::from(r.remote_tag.clone())),
        remote_target: Bytes::from(r.remote_target.clone()),
        route_set: r.route_set.iter().map(|x| Bytes::from(x.clone())).collect(),
        peer,
        transport: crate::config::transport_named(&r.transport),
        local_cseq,
        remote_cseq: 0,
        local_port: r.local_port,
    })
}

pub(super) fn restored(
    ctx: Arc<NodeCtx>,
    rec: DialogRecord,
    myself: &ActorRef<DialogMsg>,
) -> Result<Call, ActorProcessingErr> {
    let config = ctx.config();
    let inbound = SharedTrunk::named(&config, &rec.inbound)
        .ok_or_else(|| RestoreError::UnknownTrunk(rec.inbound.clone()))?;
    let epoch = ctx.shards.epoch(rec.shard);
    let a = leg_from_record(&rec.a, restart_cseq(rec.a.local_cseq, rec.epoch, epoch))?;
    let b = leg_from_record(&rec.b, restart_cseq(rec.b.local_cseq, rec.epoch, epoch))?;
    let span = call_span(
        &ctx,
        &rec.a.call_id,
        rec.shard,
        &rec.inbound,
        "",
        "",
        rec.traceparent.as_deref(),
    );
    span.record("call.restored", true);
    span.record("call.gateway", rec.trunk.as_str());
    tracing::debug!(parent: &span, node = ctx.shards.node_id(), "call taken over by this node");
    let a_span = tracing::info_span!(parent: &span, "leg", leg.side = "A", sip.call_id = %rec.a.call_id, leg.trunk = %rec.inbound);
    let b_span = tracing::info_span!(parent: &span, "leg", leg.side = "B", sip.call_id = %rec.b.call_id, leg.trunk = %rec.trunk);
    // Identifiers for the original INVITE transactions, which died with the old owner.
    let branch = ids::new_branch(rec.shard);
    let a_key = ServerKey::from_parts(branch.as_bytes(), ctx.me.hostport.as_bytes(), b"INVITE")
        .map_err(|e| ActorProcessingErr::from(e.to_string()))?;
    let key = ClientKey::new(branch.as_bytes(), b"INVITE");
    ctx.registry.add_call(
        a_key.clone(),
        &a.call_id,
        a.remote_tag.as_deref().unwrap_or_default(),
        rec.shard,
        myself.get_derived(),
    );
    ctx.registry.add_leg_b(&b.call_id, myself.get_derived());
    let gateway_active = config
        .trunk(&rec.trunk)
        .and_then(|t| ctx.gateways.carry(t).then(|| t.name.clone()));
    ctx.count_inbound(&inbound.name);
    let mut call = Call::new(CallSeed {
        ctx,
        span,
        a_span,
        shard: rec.shard,
        inbound,
        a,
        a_key,
        a_invite: None,
        a_cseq_invite: 0,
        called: String::new(),
        calling: String::new(),
        answered_b: Some(Attempt {
            relayed: false,
            span: b_span,
            tx_span: tracing::Span::none(),
            leg: b,
            trunk: rec.trunk.clone(),
            // An established call needs its INVITE no more (see `Attempt::invite`); its ACK
            // would have had the CSeq of the first.
            invite: None,
            invite_cseq: 1,
            key,
            number: 1,
            got_100: true,
            got_18x: true,
            cancel_sent: false,
            abandoned: false,
            answered: true,
            settled: true,
            timer_retried: false,
            early: Vec::new(),
            extra_answers: Vec::new(),
        }),
        gateway_active,
        history: vec![(rec.trunk.clone(), "restored on this node".into())],
        actor: myself.get_id(),
        session: rec.session_timer.map(Into::into),
    });
    // The media plan: re-anchored on this node's relay once the call runs (`post_start`).
    call.media = rec.media.unwrap_or_default();
    // No key survives in a record; the re-keying offers use the MKI length each peer used.
    call.srtp
        .remember_mki_lens(rec.a.srtp_mki_len, rec.b.srtp_mki_len);
    Ok(call)
}

/// A rebuilt call watches its record for the old owner's removal, which may land up to its retry
/// window after the move.
pub(super) fn watch_record(myself: &ActorRef<DialogMsg>) {
    drop(
        myself.send_after(RECORD_CHECK_EVERY, || DialogMsg::RecordCheck {
            left: RECORD_CHECKS - 1,
        }),
    );
}

/// Tries again to write the record of an answered call this node could not write yet (or could
/// not rewrite after its media plan changed).
pub(super) fn on_store_record(st: &mut Call) {
    st.store_retry = false;
    if (!st.stored || st.record_stale) && st.phase != Phase::Ending && st.write_record() {
        st.record_stale = false;
        st.mark_stored();
    }
}

impl Call {
    /// The call's media plan changed (an offer or an answer with new SDP, an offer undone, a
    /// re-anchoring): a written record is written again (replacing the old one; the pool
    /// group-commits record writes), so a new owner re-anchors from what the peers last said.
    /// One write per SDP change, never per packet; before the record's first write, nothing.
    pub(super) fn media_changed(&mut self) {
        self.record_changed();
    }

    /// What the record holds changed (the media plan, the session timer): a written record is
    /// written again; before its first write, nothing.
    pub(super) fn record_changed(&mut self) {
        if !self.stored || self.phase != Phase::Confirmed {
            return;
        }
        if self.confirmed_b().is_some() {
            self.record_stale = !self.write_record();
        }
    }
}

/// A rebuilt call whose record is gone was ended by its old node: it stops without a word.
pub(super) fn on_record_check(st: &mut Call, myself: &ActorRef<DialogMsg>, left: u8) {
    let call_id = String::from_utf8_lossy(&st.a.call_id).into_owned();
    if st.phase == Phase::Confirmed && !st.ctx.store.contains(st.shard, &call_id) {
        tracing::debug!(parent: &st.span, "record gone: the call ended on its old node");
        myself.stop(Some("record removed".into()));
    } else {
        let every = if left > 0 {
            RECORD_CHECK_EVERY
        } else {
            RECORD_CHECK_SLOW
        };
        let left = left.saturating_sub(1);
        drop(myself.send_after(every, move || DialogMsg::RecordCheck { left }));
    }
}

/// An answered call whose record this node could not write yet: try again shortly.
pub(super) fn retry_store_later(st: &mut Call, myself: &ActorRef<DialogMsg>) {
    if st.a_answered
        && (!st.stored || st.record_stale)
        && !st.store_retry
        && st.phase != Phase::Ending
    {
        st.store_retry = true;
        drop(myself.send_after(STORE_RETRY_EVERY, || DialogMsg::StoreRecord));
    }
}

/// How often a rebuilt call checks whether its node acts for its shard yet.
const ACTING_CHECK_EVERY: Duration = Duration::from_millis(100);
/// How many times it checks (10 s) before it gives its own initiatives up.
pub(super) const ACTING_CHECKS: u8 = 100;

/// A rebuilt call takes its own initiatives — re-anchoring its media onto this node's relay, its
/// session timer (refreshing at once when the refresh is ours: when the old owner last refreshed
/// is unknown here) — only once its node may act for its shard (owns it and holds its lease): a
/// restarted node is given shards before its first lease, and its copy of the shard map may still
/// be catching up; a re-INVITE sent then raced the real owner's (the gateway saw two nodes'
/// re-INVITEs with the same CSeq). Checked every 100 ms, for 10 s at most; a call whose node never
/// acts is stopped by the shard's release.
pub(super) fn take_over_when_acting(st: &mut Call, myself: &ActorRef<DialogMsg>, left: u8) {
    if st.ctx.shards.may_act(st.shard) {
        super::media::start_reanchor(st);
        st.start_session_timer(myself, true);
    } else if left == 0 {
        tracing::warn!(parent: &st.span, "this node never came to act for the call's shard: no re-anchoring, no session timer");
        st.history
            .push(("take-over".into(), "shard never acted for".into()));
    } else {
        drop(
            myself.send_after(ACTING_CHECK_EVERY, move || DialogMsg::TakeOver {
                left: left - 1,
            }),
        );
    }
}
