//! The DialogActor: one ractor actor per call, holding the whole B2BUA state of the call — both legs,
//! the gateway attempts, the in-dialog requests being relayed between the legs, and the call's timers.
//! Transactions (retransmissions, absorption) run in the node's transaction layer
//! ([`crate::txlayer`]); the actor sees their events and decides what the call does.
//!
//! Life of a call:
//! ```text
//! INVITE(A) ─► 100 ─► route ─► INVITE(B, gateway 1) ─┬─ 18x ─► 18x(A) ─► 200 ─► 200(A) ─► ACK(A) ─► ACK(B)   confirmed
//!                                                     ├─ 503/408/504/timeout before any 18x ─► INVITE(B, gateway 2) ...
//!                                                     ├─ fast-failover timer, no 18x ─► CANCEL(B) ─► next gateway
//!                                                     └─ other final ─► mapped final(A)
//! CANCEL(A) ─► 200, 487(A), CANCEL(B) (or ACK+BYE when B's 200 crosses it)
//! BYE from either side ─► 200 at once, BYE to the other side ─► call ends
//! re-INVITE / UPDATE / INFO / NOTIFY / MESSAGE / OPTIONS / PRACK / REFER ─► relayed to the other leg,
//!   with that leg's dialog identifiers and CSeq; the answer is relayed back.
//! ```

pub mod leg;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use medpool_sip::message::builder::{MessageBuilder, quote_display, reason_phrase};
use medpool_sip::message::uri::escape_user;
use medpool_sip::transaction::{ClientKey, Outcome, ServerKey};
use medpool_sip::transport::Transport;
use medpool_sip::{HeaderName, Method, SipMessage, ids};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio::time::Instant;

use crate::cluster::{DialogRecord, LegRecord};
use crate::config::{ReferPolicy, Trunk};
use crate::ctx::{NodeCtx, NodeEvent};
use crate::health::InviteOutcome;
use crate::routing::Candidate;
use crate::txlayer::{CallEvent, CallRef, Envelope, Owner, Registry, Side};
use leg::{Leg, local_response, relay_request_parts, relay_response};

/// Messages a call receives.
// Transaction events are most of a call's messages and carry their message inline, as before
// they were a variant of their own: boxing them would allocate once per message.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum DialogMsg {
    /// A transaction event of the call (from the transaction layer).
    Tx(CallEvent),
    /// The call's shard moved to another node. A call written down (answered) goes on there: this
    /// actor stops without a word. A call still being set up is known nowhere else: it is ended
    /// here (503 + Retry-After to the caller, CANCEL to the gateway), never left half-open.
    ShardReleased,
    /// Time to try writing the call's record again (this node could not write it when the call was
    /// answered: its lease had lapsed, or the write queue was full).
    StoreRecord,
    /// A call rebuilt from its record checks that the record still exists (`left` checks to go):
    /// its old node may have ended the call in the instant the shard moved.
    RecordCheck {
        /// Checks left after this one.
        left: u8,
    },
    /// The fast-failover timer of attempt `attempt` fired.
    FastFailover {
        /// Attempt number.
        attempt: u32,
    },
    /// Time to retransmit the 2xx to the caller (no ACK yet).
    Retransmit2xx {
        /// Interval used this time.
        interval: Duration,
    },
    /// The session timer refresh is due (we are the refresher on leg B).
    SessionRefresh,
    /// Hang the call up: BYE both confirmed legs (admin or shutdown).
    Hangup,
    /// Report the call's state.
    Info(RpcReplyPort<CallInfo>),
}

impl From<CallEvent> for DialogMsg {
    fn from(e: CallEvent) -> Self {
        DialogMsg::Tx(e)
    }
}

impl TryFrom<DialogMsg> for CallEvent {
    type Error = DialogMsg;
    fn try_from(m: DialogMsg) -> Result<Self, DialogMsg> {
        match m {
            DialogMsg::Tx(e) => Ok(e),
            other => Err(other),
        }
    }
}

/// The DialogActor behind a registry entry (the registry holds only calls in its call maps).
pub fn actor_of(call: &CallRef) -> ActorRef<DialogMsg> {
    ActorRef::from(call.get_cell())
}

impl Registry {
    /// Every call's actor (for shutdown and admin).
    pub fn call_actors(&self) -> Vec<ActorRef<DialogMsg>> {
        self.all_calls().iter().map(actor_of).collect()
    }
}

/// What the admin API and tests see of a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallInfo {
    /// Leg A Call-ID.
    pub a_call_id: String,
    /// Leg B Call-ID (of the current attempt).
    pub b_call_id: Option<String>,
    /// Phase.
    pub phase: Phase,
    /// Gateway trunks tried, with what happened.
    pub attempts: Vec<(String, String)>,
    /// Shard of the call.
    pub shard: u16,
    /// The trunk it came in on.
    pub inbound_trunk: String,
    /// The gateway trunk of the current attempt.
    pub gateway: Option<String>,
    /// Normalised called number.
    pub called: String,
    /// Normalised calling number.
    pub calling: String,
    /// Time since the INVITE arrived (or since the call was restored here).
    pub age: Duration,
    /// Time from the INVITE to the answer, when answered.
    pub answered_after: Option<Duration>,
    /// Leg A: our tag and the peer's.
    pub a_tags: (String, String),
    /// Leg B: our tag and the peer's, when there is a leg B.
    pub b_tags: Option<(String, String)>,
}

/// Where a call is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Choosing / calling a gateway.
    Calling,
    /// A provisional response was relayed to the caller.
    Early,
    /// 2xx relayed, waiting for the caller's ACK.
    Answered,
    /// Established.
    Confirmed,
    /// Ending (BYE or CANCEL under way).
    Ending,
}

/// How a DialogActor starts.
pub enum DialogStart {
    /// A new INVITE.
    New(Box<DialogArgs>),
    /// A confirmed dialog taken over from another node (its shard moved here).
    Restored(Arc<NodeCtx>, Box<DialogRecord>),
}

/// How far above the recorded CSeq a new owner starts its own requests on each leg: the old owner may
/// have sent in-dialog requests after the record was written (DESIGN.md "Failover").
pub const CSEQ_SKIP: u32 = 1000;

/// How often an answered call retries writing a record this node could not write at once.
const STORE_RETRY_EVERY: Duration = Duration::from_millis(250);
/// How often a rebuilt call checks that its record still exists: every 2 s for as long as the old
/// owner may still be ending the call and retrying its removal (its transactions, up to 32 s, then
/// its write retries), then every 30 s for the rest of its life (a cheap read of the local state).
const RECORD_CHECK_EVERY: Duration = Duration::from_secs(2);
const RECORD_CHECKS: u8 = 30;
const RECORD_CHECK_SLOW: Duration = Duration::from_secs(30);

/// Arguments of a new call.
pub struct DialogArgs {
    /// The node.
    pub ctx: Arc<NodeCtx>,
    /// The INVITE's server transaction.
    pub key: ServerKey,
    /// The INVITE.
    pub env: Envelope,
    /// The trunk it came in on.
    pub inbound: Trunk,
    /// The call's shard.
    pub shard: u16,
}

/// The actor (behaviour only; the state is [`Call`]).
pub struct DialogActor;

/// One gateway attempt on leg B.
#[derive(Debug)]
struct Attempt {
    /// This leg B attempt's span, and its INVITE transaction's (closed at the final answer).
    span: tracing::Span,
    tx_span: tracing::Span,
    leg: Leg,
    trunk: String,
    invite: Envelope,
    key: ClientKey,
    number: u32,
    got_100: bool,
    got_18x: bool,
    cancel_sent: bool,
    /// Abandoned (failover or caller cancel): a late 2xx is ACKed and BYE'd.
    abandoned: bool,
    answered: bool,
    /// A final response arrived or the transaction ended: nothing more can come that needs us.
    settled: bool,
}

/// An in-dialog request being relayed: answer `server` on `from` when `client` gets its final.
#[derive(Debug)]
struct Relay {
    /// The relayed transaction's span (closed at the final answer).
    span: tracing::Span,
    client: ClientKey,
    from: Side,
    server: ServerKey,
    request: Envelope,
    /// For a relayed INVITE answered 2xx: the CSeq to ACK on the far leg with the caller's ACK.
    invite_cseq: Option<u32>,
}

/// The state of one call.
pub struct Call {
    ctx: Arc<NodeCtx>,
    /// The call's root span (one trace per call); legs and transactions are its children.
    span: tracing::Span,
    /// Leg A's span.
    a_span: tracing::Span,
    shard: u16,
    inbound: Trunk,
    a: Leg,
    a_invite: Option<Envelope>,
    a_key: ServerKey,
    a_cseq_invite: u32,
    phase: Phase,
    plan: Vec<Candidate>,
    next_candidate: usize,
    attempts: Vec<Attempt>,
    history: Vec<(String, String)>,
    called: String,
    calling: String,
    a_final_sent: bool,
    a_2xx: Option<(u16, Envelope)>,
    /// A 2xx went to the caller: leg A is (or was) a confirmed dialog.
    a_answered: bool,
    /// INVITE → 2xx time.
    answered_after: Option<Duration>,
    /// The post-dial delay was recorded.
    pdd_recorded: bool,
    ack_b: Option<Envelope>,
    relays: Vec<Relay>,
    /// A relayed re-INVITE answered 2xx on the A side, waiting for A's ACK: (A's CSeq, B's CSeq).
    pending_ack_b: Vec<(u32, u32)>,
    pending_ack_a: Vec<(u32, u32)>,
    bye_keys: Vec<ClientKey>,
    started: Instant,
    last_status: u16,
    gateway_active: Option<String>,
    session_refresh: Option<Duration>,
    /// The call's record was taken for writing (or the call was rebuilt from it).
    stored: bool,
    /// A [`DialogMsg::StoreRecord`] retry is scheduled.
    store_retry: bool,
    /// The call really ended (both legs done); stops for a shard move or a shutdown leave it false,
    /// and only an ended call's record is removed.
    ended: bool,
}

impl Call {
    fn me(&self) -> &leg::Me {
        &self.ctx.me
    }

    fn current(&self) -> Option<&Attempt> {
        self.attempts.iter().rev().find(|a| !a.abandoned)
    }

    fn current_mut(&mut self) -> Option<&mut Attempt> {
        self.attempts.iter_mut().rev().find(|a| !a.abandoned)
    }

    fn confirmed_b(&self) -> Option<&Attempt> {
        self.attempts.iter().find(|a| a.answered && !a.abandoned)
    }

    fn leg(&self, side: Side) -> Option<&Leg> {
        match side {
            Side::A => Some(&self.a),
            Side::B => self
                .attempts
                .iter()
                .rev()
                .find(|a| !a.abandoned)
                .map(|a| &a.leg),
        }
    }

    fn leg_mut(&mut self, side: Side) -> Option<&mut Leg> {
        match side {
            Side::A => Some(&mut self.a),
            Side::B => self
                .attempts
                .iter_mut()
                .rev()
                .find(|a| !a.abandoned)
                .map(|a| &mut a.leg),
        }
    }

    /// The call's record was taken for writing: from here on the pool, not only this node, knows it.
    fn mark_stored(&mut self) {
        if !self.stored {
            self.stored = true;
            self.ctx
                .unrecorded_calls
                .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    /// Answers the caller's INVITE (final or provisional) through its server transaction.
    fn respond_a(&mut self, status: u16, bytes: Bytes) {
        let Some(inv) = &self.a_invite else { return };
        if status > 100 && status < 300 && !self.pdd_recorded {
            self.pdd_recorded = true;
            self.ctx
                .stats
                .post_dial_delay
                .observe(self.started.elapsed());
        }
        if let Some(env) = inv.reply(bytes) {
            if status >= 200 {
                self.a_final_sent = true;
                if (200..300).contains(&status) {
                    self.a_2xx = Some((status, env.clone()));
                    self.a_answered = true;
                    self.answered_after = Some(self.started.elapsed());
                    // Written down as soon as the caller has its 2xx, not at its ACK: a shard that
                    // moves in between (a drain) must not lose a call the caller considers up. The
                    // new owner carries it on as confirmed (the ACK is then absorbed there).
                    if !self.stored
                        && let Some(rec) = self.record()
                        && self.ctx.store.store(rec)
                    {
                        self.mark_stored();
                    }
                    tracing::debug!(parent: &self.span, status, "answered");
                    self.ctx.publish(NodeEvent::CallAnswered {
                        call_id: String::from_utf8_lossy(&self.a.call_id).into_owned(),
                        gateway: self.current().map(|a| a.trunk.clone()).unwrap_or_default(),
                    });
                }
            }
            self.last_status = status;
            if let Err(e) = self.ctx.driver.respond(&self.a_key, status, env) {
                tracing::debug!(error = %e, status, "could not answer the caller's INVITE");
            }
        }
    }

    /// Relays a gateway's response to the caller's INVITE (same status and reason, its body and headers).
    fn relay_to_a(&mut self, status: u16, from: &SipMessage, rseq: Option<u32>) {
        let Some(inv) = self.a_invite.clone() else {
            return;
        };
        let reason = from.reason_phrase().unwrap_or_default().to_vec();
        let bytes = relay_response(
            &self.ctx.me,
            &inv,
            status,
            &reason,
            &self.a.local_tag,
            Some(from),
            rseq,
        );
        self.respond_a(status, bytes);
    }

    fn fail_a(&mut self, status: u16, extra: &[(HeaderName, &[u8])]) {
        if self.a_final_sent {
            return;
        }
        let Some(inv) = self.a_invite.clone() else {
            return;
        };
        let bytes = local_response(&inv, status, Some(&self.a.local_tag), extra);
        self.respond_a(status, bytes);
        self.phase = Phase::Ending;
    }

    /// Sends a request on a leg in its own client transaction, routed back to this actor.
    fn send_request(
        &mut self,
        myself: &ActorRef<DialogMsg>,
        side: Side,
        bytes: Bytes,
    ) -> Option<ClientKey> {
        let leg = self.leg(side)?;
        let env = Envelope::outgoing(bytes, leg.next_hop(), leg.transport)?;
        let key = crate::txlayer::client_key_of_request(&env.msg)?;
        self.ctx
            .registry
            .add_client(key.clone(), Owner::Dialog(myself.get_derived()));
        if let Err(e) = self
            .ctx
            .driver
            .start_client(key.clone(), env, leg.transport.is_reliable())
        {
            tracing::warn!(error = %e, "could not start a client transaction");
            self.ctx.registry.remove_client(&key);
            return None;
        }
        Some(key)
    }

    fn gateway_outcome(&self, trunk: &str, outcome: InviteOutcome) {
        self.ctx.gateways.invite_outcome(trunk, outcome);
    }

    /// Starts the next gateway attempt; false when the route is exhausted.
    fn try_next(&mut self, myself: &ActorRef<DialogMsg>) -> bool {
        let config = self.ctx.config();
        while self.next_candidate < self.plan.len() {
            let cand = self.plan[self.next_candidate].clone();
            self.next_candidate += 1;
            let Some(trunk) = config.trunk(&cand.trunk).cloned() else {
                continue;
            };
            if !self.ctx.gateways.try_acquire(&trunk) {
                self.history
                    .push((trunk.name.clone(), "at capacity".into()));
                continue;
            }
            if let Some(prev) = self.gateway_active.replace(trunk.name.clone()) {
                self.ctx.gateways.release(&prev);
            }
            let Some(att) = self.build_attempt(&trunk) else {
                continue;
            };
            let key = att.key.clone();
            let env = att.invite.clone();
            let number = att.number;
            let call_id = att.leg.call_id.clone();
            self.attempts.push(att);
            self.ctx.registry.add_leg_b(&call_id, myself.get_derived());
            self.ctx
                .registry
                .add_client(key.clone(), Owner::Dialog(myself.get_derived()));
            if let Err(e) = self.ctx.driver.start_client(
                key.clone(),
                env,
                trunk.transport == crate::config::Transport::Tcp,
            ) {
                tracing::warn!(error = %e, "could not start the INVITE to the gateway");
                self.ctx.registry.remove_client(&key);
                self.history.push((trunk.name.clone(), "overloaded".into()));
                continue;
            }
            if let Some(ff) = trunk.fast_failover() {
                drop(myself.send_after(ff, move || DialogMsg::FastFailover { attempt: number }));
            }
            tracing::debug!(trunk = %trunk.name, attempt = number, "calling gateway");
            return true;
        }
        false
    }

    fn build_attempt(&self, trunk: &Trunk) -> Option<Attempt> {
        let inv = self.a_invite.as_ref()?;
        let a = &inv.msg;
        let me = self.me();
        let transport = match trunk.transport {
            crate::config::Transport::Udp => Transport::Udp,
            crate::config::Transport::Tcp => Transport::Tcp,
        };
        let ip = trunk.address.ip()?;
        let peer = std::net::SocketAddr::new(ip, trunk.port);
        let host = match ip {
            std::net::IpAddr::V6(v6) => format!("[{v6}]:{}", trunk.port),
            std::net::IpAddr::V4(v4) => format!("{v4}:{}", trunk.port),
        };
        let called = trunk.called_out_number(&self.called).into_owned();
        let calling = trunk.calling_out_number(&self.calling).into_owned();
        let user_phone = called.starts_with('+') || called.bytes().all(|b| b.is_ascii_digit());
        let ruri = format!(
            "sip:{}@{host}{}",
            escape_user(called.as_bytes()),
            if user_phone && !called.is_empty() {
                ";user=phone"
            } else {
                ""
            }
        );
        let call_id = ids::new_call_id(self.shard);
        let tag = ids::new_tag(self.shard);
        let branch = ids::new_branch(self.shard);
        let display = a
            .from()
            .and_then(|f| f.ok())
            .and_then(|f| f.display_unquoted());
        let mut from = Vec::with_capacity(96);
        if let Some(d) = display.filter(|d| !d.is_empty()) {
            from.extend_from_slice(&quote_display(&d));
            from.push(b' ');
        }
        let my_host = me
            .hostport
            .rsplit_once(':')
            .map_or(me.hostport.as_str(), |(h, _)| h);
        from.extend_from_slice(
            format!(
                "<sip:{}@{my_host}>;tag={tag}",
                escape_user(calling.as_bytes())
            )
            .as_bytes(),
        );
        let to = format!("<sip:{}@{host}>", escape_user(called.as_bytes()));
        let mf = a
            .max_forwards()
            .and_then(|r| r.ok())
            .map_or(70, |m| m.saturating_sub(1).min(70));
        let mut b = MessageBuilder::request_method(Method::Invite, ruri.as_bytes());
        b.header(HeaderName::Via, me.via(transport, &branch).as_bytes())
            .header_fmt(HeaderName::MaxForwards, format_args!("{mf}"))
            .header(HeaderName::From, &from)
            .header(HeaderName::To, to.as_bytes())
            .header(HeaderName::CallId, call_id.as_bytes())
            .header(HeaderName::CSeq, b"1 INVITE")
            .header(HeaderName::Contact, me.contact(transport).as_bytes())
            .header(
                HeaderName::Allow,
                medpool_sip::check::ALLOWED_METHODS.as_bytes(),
            );
        let mut supported: Vec<&[u8]> = a
            .supported()
            .filter(|t| {
                medpool_sip::check::SUPPORTED_OPTIONS
                    .iter()
                    .any(|s| t.eq_ignore_ascii_case(s.as_bytes()))
            })
            .collect();
        let want_timer = trunk.session_expires.is_some() && a.session_expires().is_none();
        if want_timer && !supported.iter().any(|t| t.eq_ignore_ascii_case(b"timer")) {
            supported.push(b"timer");
        }
        if !supported.is_empty() {
            b.header(HeaderName::Supported, &supported.join(&b", "[..]));
        }
        b.copy_headers(a, HeaderName::Require);
        if want_timer {
            if let Some(se) = trunk.session_expires {
                b.header_fmt(HeaderName::SessionExpires, format_args!("{se}"));
                b.header_fmt(HeaderName::MinSe, format_args!("{}", trunk.min_se));
            }
        } else {
            b.copy_headers(a, HeaderName::SessionExpires);
            b.copy_headers(a, HeaderName::MinSe);
        }
        if trunk.forward_pai || self.inbound.forward_pai {
            b.copy_headers(a, HeaderName::PAssertedIdentity);
            b.copy_headers(a, HeaderName::Privacy);
        }
        if trunk.forward_history_info {
            b.copy_headers(a, HeaderName::HistoryInfo);
            b.copy_headers(a, HeaderName::Diversion);
        }
        if !a.body().is_empty() {
            let ct = a
                .header(HeaderName::ContentType)
                .unwrap_or(b"application/sdp");
            b.body(ct, Bytes::copy_from_slice(a.body()));
        }
        let invite = Envelope::outgoing(b.build(), peer, transport)?;
        let key = crate::txlayer::client_key_of_request(&invite.msg)?;
        let number = self.attempts.len() as u32 + 1;
        let span = tracing::info_span!(
            parent: &self.span,
            "leg",
            leg.side = "B",
            leg.attempt = number,
            leg.trunk = %trunk.name,
            sip.call_id = %call_id,
            sip.status = tracing::field::Empty,
        );
        let tx_span = tracing::info_span!(parent: &span, "sip.transaction", sip.method = "INVITE", sip.branch = %branch, sip.status = tracing::field::Empty);
        self.span.record("call.gateway", trunk.name.as_str());
        self.span.record("call.b_call_id", call_id.as_str());
        if number > 1 {
            self.span.record("call.failovers", number - 1);
            tracing::debug!(parent: &self.span, attempt = number, trunk = %trunk.name, "failover to the next gateway");
        }
        Some(Attempt {
            span,
            tx_span,
            leg: Leg {
                call_id: Bytes::from(call_id),
                local_tag: tag,
                local_uri: Bytes::from(from),
                remote_uri: Bytes::from(to),
                remote_tag: None,
                remote_target: Bytes::from(ruri),
                route_set: Vec::new(),
                peer,
                transport,
                local_cseq: 1,
                remote_cseq: 0,
            },
            trunk: trunk.name.clone(),
            invite,
            key,
            number,
            got_100: false,
            got_18x: false,
            cancel_sent: false,
            abandoned: false,
            answered: false,
            settled: false,
        })
    }

    /// The current attempt failed before any provisional reached the caller: fail over or give up.
    fn attempt_failed(
        &mut self,
        myself: &ActorRef<DialogMsg>,
        status: u16,
        response: Option<&SipMessage>,
        why: &str,
    ) {
        let trunk = self.current().map(|a| a.trunk.clone()).unwrap_or_default();
        if let Some(cur) = self.current_mut() {
            cur.abandoned = true;
        }
        self.history.push((trunk.clone(), why.to_owned()));
        let failover_allowed = self
            .ctx
            .config()
            .trunk(&trunk)
            .is_some_and(|t| t.is_failover_code(status));
        if self.phase == Phase::Calling && failover_allowed && self.try_next(myself) {
            return;
        }
        if self.a_final_sent {
            return;
        }
        // Give up: relay the final answer, mapped per the trunk.
        let mapped = self
            .ctx
            .config()
            .trunk(&trunk)
            .map_or(status, |t| t.map_response(status));
        let Some(inv) = self.a_invite.clone() else {
            return;
        };
        let reason = if mapped == status {
            response
                .and_then(|r| r.reason_phrase())
                .filter(|r| !r.is_empty())
                .map(<[u8]>::to_vec)
        } else {
            None
        }
        .unwrap_or_else(|| reason_phrase(mapped).as_bytes().to_vec());
        let bytes = relay_response(
            self.me(),
            &inv,
            mapped,
            &reason,
            &self.a.local_tag,
            response,
            None,
        );
        self.respond_a(mapped, bytes);
        self.phase = Phase::Ending;
        self.maybe_finish(myself);
    }

    fn cancel_attempt(&mut self, idx: usize, myself: &ActorRef<DialogMsg>) {
        let att = &mut self.attempts[idx];
        if att.cancel_sent || att.answered {
            return;
        }
        if !self.ctx.driver.may_cancel(&att.key) {
            return; // no provisional yet: CANCEL when one arrives (RFC 3261 §9.1)
        }
        att.cancel_sent = true;
        let inv = &att.invite.msg;
        let mut b = MessageBuilder::request_method(
            Method::Cancel,
            inv.request_uri_bytes().unwrap_or_default(),
        );
        if let Some(Ok(v)) = inv.top_via() {
            b.header(HeaderName::Via, v.raw);
        }
        b.header(HeaderName::MaxForwards, b"70");
        b.copy_headers(inv, HeaderName::Route);
        b.copy_headers(inv, HeaderName::From);
        b.copy_headers(inv, HeaderName::To);
        b.copy_headers(inv, HeaderName::CallId);
        let seq = inv.cseq().and_then(|c| c.ok()).map_or(1, |c| c.seq);
        b.header_fmt(HeaderName::CSeq, format_args!("{seq} CANCEL"));
        if let Some(env) = Envelope::outgoing(b.build(), att.invite.peer, att.invite.transport) {
            let key = att.key.cancel_key();
            self.ctx
                .registry
                .add_client(key.clone(), Owner::Dialog(myself.get_derived()));
            let reliable = env.transport.is_reliable();
            if self
                .ctx
                .driver
                .start_client(key.clone(), env, reliable)
                .is_err()
            {
                self.ctx.registry.remove_client(&key);
            }
        }
    }

    /// Sends the leg-B ACK again for a retransmitted 2xx of the answer we took (none yet: the ACK
    /// goes when it can, e.g. once the caller's ACK brings a late offer's answer).
    fn reack_b(&self, env: &Envelope) {
        if let Some(ack) = &self.ack_b
            && env.msg.call_id().and_then(|c| c.ok()) == ack.msg.call_id().and_then(|c| c.ok())
        {
            let _ = self
                .ctx
                .transports
                .send_now(ack.transport, ack.peer, ack.msg.bytes());
        }
    }

    /// ACK (and, when `bye`, BYE) a 2xx from a leg-B attempt.
    /// ACK a 2xx from an attempt the call no longer wants (cancelled, failed over) and BYE it at once.
    fn ack_and_bye(&mut self, idx: usize, env: &Envelope, myself: &ActorRef<DialogMsg>) {
        let att = &mut self.attempts[idx];
        att.leg.learn_from_answer(&env.msg);
        att.answered = true;
        let cseq = env.msg.cseq().and_then(|c| c.ok()).map_or(1, |c| c.seq);
        send_ack_b(self, idx, cseq, None, false);
        let leg = self.attempts[idx].leg.clone();
        self.send_bye_on(&leg, myself);
    }

    fn send_bye_on(&mut self, leg: &Leg, myself: &ActorRef<DialogMsg>) {
        let mut leg = leg.clone();
        leg.local_cseq += 1;
        let branch = ids::new_branch(self.shard);
        let mut b = leg.request(&self.ctx.me, b"BYE", leg.local_cseq, &branch);
        b.header(
            HeaderName::Reason,
            b"SIP;cause=200;text=\"Call completed elsewhere\"",
        );
        if let Some(env) = Envelope::outgoing(b.build(), leg.next_hop(), leg.transport)
            && let Some(key) = crate::txlayer::client_key_of_request(&env.msg)
        {
            self.ctx
                .registry
                .add_client(key.clone(), Owner::Dialog(myself.get_derived()));
            if self
                .ctx
                .driver
                .start_client(key.clone(), env, leg.transport.is_reliable())
                .is_ok()
            {
                self.bye_keys.push(key);
            } else {
                self.ctx.registry.remove_client(&key);
            }
        }
    }

    /// BYE the confirmed legs except `except`.
    fn bye_all(&mut self, myself: &ActorRef<DialogMsg>, except: Option<Side>) {
        self.phase = Phase::Ending;
        if except != Some(Side::A) && self.a_answered {
            self.a.local_cseq += 1;
            let leg = self.a.clone();
            self.send_bye_on(&leg, myself);
        }
        if except != Some(Side::B)
            && let Some(b) = self.confirmed_b()
        {
            let leg = b.leg.clone();
            self.send_bye_on(&leg, myself);
        }
        self.maybe_finish(myself);
    }

    fn maybe_finish(&mut self, myself: &ActorRef<DialogMsg>) {
        // An unanswered INVITE on leg B may still ring (→ CANCEL) or answer (→ ACK + BYE): wait for it.
        let unsettled = self.attempts.iter().any(|a| !a.settled);
        if self.phase == Phase::Ending
            && self.bye_keys.is_empty()
            && self.relays.is_empty()
            && !unsettled
        {
            self.ended = true;
            myself.stop(None);
        }
    }

    fn record(&self) -> Option<DialogRecord> {
        let b = self.confirmed_b()?;
        let leg_rec = |l: &Leg| LegRecord {
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
        };
        Some(DialogRecord {
            shard: self.shard,
            a: leg_rec(&self.a),
            b: leg_rec(&b.leg),
            trunk: b.trunk.clone(),
            inbound: self.inbound.name.clone(),
            traceparent: crate::trace::traceparent(&self.span),
        })
    }
}

impl Actor for DialogActor {
    type Msg = DialogMsg;
    type State = Call;
    type Arguments = DialogStart;

    async fn pre_start(
        &self,
        myself: ActorRef<DialogMsg>,
        start: DialogStart,
    ) -> Result<Call, ActorProcessingErr> {
        let args = match start {
            DialogStart::New(args) => *args,
            DialogStart::Restored(ctx, record) => return restored(ctx, *record, myself),
        };
        let DialogArgs {
            ctx,
            key,
            env,
            inbound,
            shard,
        } = args;
        let msg = &env.msg;
        let call_id =
            Bytes::copy_from_slice(msg.call_id().and_then(|c| c.ok()).unwrap_or_default());
        let remote_tag = msg.from_tag().map(Bytes::copy_from_slice);
        // Registered before the actor runs (post_stop unregisters): a CANCEL or an in-dialog request
        // handled right after the spawn finds the call, and a call that ends at once leaves nothing behind.
        ctx.registry.add_call(
            key.clone(),
            &call_id,
            remote_tag.as_deref().unwrap_or_default(),
            shard,
            myself.get_derived(),
        );
        let local_tag = ids::new_tag(shard);
        let to = msg.header(HeaderName::To).unwrap_or_default();
        let mut local_uri = to.to_vec();
        local_uri.extend_from_slice(b";tag=");
        local_uri.extend_from_slice(local_tag.as_bytes());
        let remote_target = msg
            .contacts()
            .next()
            .and_then(|c| c.ok())
            .map(|c| Bytes::copy_from_slice(c.uri))
            .unwrap_or_else(|| Bytes::copy_from_slice(msg.request_uri_bytes().unwrap_or_default()));
        let route_set = msg
            .record_routes()
            .flatten()
            .map(|r| Bytes::copy_from_slice(r.raw))
            .collect();
        let cseq = msg.cseq().and_then(|c| c.ok()).map_or(0, |c| c.seq);
        let called_raw = msg
            .request_uri_bytes()
            .and_then(|u| crate::translate::number_from_uri(&String::from_utf8_lossy(u)))
            .unwrap_or_default();
        let called = inbound.normalize_number(&called_raw).into_owned();
        let calling_src = msg
            .p_asserted_identities()
            .next()
            .and_then(|p| p.ok())
            .map(|p| p.uri)
            .or_else(|| msg.from().and_then(|f| f.ok()).map(|f| f.uri))
            .map(|u| {
                crate::translate::number_from_uri(&String::from_utf8_lossy(u)).unwrap_or_default()
            })
            .unwrap_or_default();
        let calling = inbound.normalize_number(&calling_src).into_owned();
        let a = Leg {
            call_id,
            local_tag,
            local_uri: Bytes::from(local_uri),
            remote_uri: Bytes::copy_from_slice(msg.header(HeaderName::From).unwrap_or_default()),
            remote_tag,
            remote_target,
            route_set,
            peer: env.reply_peer(),
            transport: env.transport,
            local_cseq: 0,
            remote_cseq: cseq,
        };
        let span = call_span(
            &ctx,
            &String::from_utf8_lossy(&a.call_id),
            shard,
            &inbound.name,
            &called,
            &calling,
            env.traceparent.as_deref(),
        );
        let a_span = tracing::info_span!(parent: &span, "leg", leg.side = "A", sip.call_id = %String::from_utf8_lossy(&a.call_id), leg.trunk = %inbound.name);
        Ok(Call {
            ctx,
            span,
            a_span,
            shard,
            inbound,
            a,
            a_key: key,
            a_cseq_invite: cseq,
            a_invite: Some(env),
            phase: Phase::Calling,
            plan: Vec::new(),
            next_candidate: 0,
            attempts: Vec::new(),
            history: Vec::new(),
            called,
            calling,
            a_final_sent: false,
            a_2xx: None,
            a_answered: false,
            answered_after: None,
            pdd_recorded: false,
            ack_b: None,
            relays: Vec::new(),
            pending_ack_b: Vec::new(),
            pending_ack_a: Vec::new(),
            bye_keys: Vec::new(),
            started: Instant::now(),
            last_status: 0,
            gateway_active: None,
            session_refresh: None,
            stored: false,
            store_retry: false,
            ended: false,
        })
    }

    async fn post_start(
        &self,
        myself: ActorRef<DialogMsg>,
        st: &mut Call,
    ) -> Result<(), ActorProcessingErr> {
        if st.phase == Phase::Confirmed {
            // A restored call: nothing to start, but its record is watched for the old owner's
            // removal, which may land up to its retry window after the move.
            drop(
                myself.send_after(RECORD_CHECK_EVERY, || DialogMsg::RecordCheck {
                    left: RECORD_CHECKS - 1,
                }),
            );
            return Ok(());
        }
        // Until its record is written, only this node can finish the call (see `mark_stored`).
        st.ctx
            .unrecorded_calls
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        tracing::debug!(parent: &st.span, via = ?st.a_invite.as_ref().and_then(|e| e.via), "call started");
        st.ctx.publish(NodeEvent::CallStarted {
            call_id: String::from_utf8_lossy(&st.a.call_id).into_owned(),
            shard: st.shard,
            trunk: st.inbound.name.clone(),
        });
        // 100 Trying at once (RFC 3261 §16.2 practice for a B2BUA: stops the caller's retransmissions).
        if let Some(inv) = st.a_invite.clone() {
            let trying = local_response(&inv, 100, None, &[]);
            st.respond_a(100, trying);
        }
        let config = st.ctx.config();
        let msg_mf = st
            .a_invite
            .as_ref()
            .and_then(|e| e.msg.max_forwards())
            .and_then(|r| r.ok());
        if msg_mf == Some(0) {
            st.fail_a(483, &[]);
            st.maybe_finish(&myself);
            return Ok(());
        }
        let random = rand::random::<u64>();
        match crate::routing::select(&config, &st.called, &st.inbound, &st.ctx.gateways, random) {
            Ok(plan) => {
                st.plan = plan.candidates;
                if !st.try_next(&myself) {
                    let retry = config.node.retry_after.to_string();
                    st.fail_a(503, &[(HeaderName::RetryAfter, retry.as_bytes())]);
                    st.maybe_finish(&myself);
                }
            }
            Err(no_route) => {
                tracing::debug!(called = %st.called, %no_route, "no route");
                let status = no_route.status();
                let retry = config.node.retry_after.to_string();
                let extra: &[(HeaderName, &[u8])] = if status == 503 {
                    &[(HeaderName::RetryAfter, retry.as_bytes())]
                } else {
                    &[]
                };
                st.fail_a(status, extra);
                st.maybe_finish(&myself);
            }
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        myself: ActorRef<DialogMsg>,
        st: &mut Call,
    ) -> Result<(), ActorProcessingErr> {
        let reg = &st.ctx.registry;
        reg.remove_call(
            &st.a_key,
            &st.a.call_id,
            st.a.remote_tag.as_deref().unwrap_or_default(),
            st.shard,
            myself.get_id(),
        );
        for att in &st.attempts {
            reg.remove_leg_b(&att.leg.call_id);
        }
        if let Some(g) = st.gateway_active.take() {
            st.ctx.gateways.release(&g);
        }
        if st.stored && st.ended {
            st.ctx
                .store
                .remove(st.shard, &String::from_utf8_lossy(&st.a.call_id));
        }
        if st.ended {
            // Its answered legs B were hung up with it (or never confirmed): a late copy of their
            // 2xx is only ACKed by the node (`CoreEvent::OrphanAnswer`).
            for att in st.attempts.iter().filter(|a| a.answered) {
                st.ctx.leg_hung_up(&att.leg.call_id);
            }
        }
        if !st.stored {
            // Counted in post_start (calls rebuilt here start stored and are never counted).
            st.ctx
                .unrecorded_calls
                .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        }
        st.ctx
            .call_ended(&st.inbound.name, st.last_status, st.started.elapsed());
        st.span.record("sip.status", st.last_status);
        tracing::debug!(parent: &st.span, status = st.last_status, cause = ?st.history.last(), "call ended");
        st.ctx.publish(NodeEvent::CallEnded {
            call_id: String::from_utf8_lossy(&st.a.call_id).into_owned(),
            status: st.last_status,
            cause: st
                .history
                .last()
                .map(|(who, what)| format!("{who}: {what}"))
                .unwrap_or_default(),
        });
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<DialogMsg>,
        msg: DialogMsg,
        st: &mut Call,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            DialogMsg::Tx(CallEvent::Response { key, status, env }) => {
                on_response(st, &myself, key, status, env)
            }
            DialogMsg::Tx(CallEvent::StrayAnswer { env }) => st.reack_b(&env),
            DialogMsg::ShardReleased if st.phase == Phase::Ending => {
                // Already ending (a BYE or CANCEL under way): it finishes here, and its record is
                // removed with it, so that the new owner's copy, if any, follows (RecordCheck).
                tracing::debug!(parent: &st.span, "shard moved while the call ends: it ends here");
            }
            DialogMsg::ShardReleased if st.stored => {
                tracing::debug!(parent: &st.span, "shard moved: the call goes on at its new owner");
                myself.stop(Some("shard moved".into()));
            }
            DialogMsg::ShardReleased if st.a_answered => {
                // Answered while this node could not write the record (a frozen node waking up
                // after its lease lapsed): the new owner cannot know the call, so it ends here.
                st.history.push((
                    "pool".into(),
                    "shard moved before the call's record was written".into(),
                ));
                // The caller has not ACKed yet: the gateway's 2xx is still unACKed too (ours goes
                // with the caller's). ACK it first: every 2xx is ACKed (RFC 3261 §13.2.2.4).
                if st.phase == Phase::Answered
                    && let Some(idx) = st.attempts.iter().position(|a| a.answered && !a.abandoned)
                {
                    send_ack_b(st, idx, 1, None, true);
                }
                for i in 0..st.attempts.len() {
                    if !st.attempts[i].answered {
                        st.attempts[i].abandoned = true;
                        st.cancel_attempt(i, &myself);
                    }
                }
                st.bye_all(&myself, None);
            }
            DialogMsg::StoreRecord => {
                st.store_retry = false;
                if !st.stored
                    && st.phase != Phase::Ending
                    && let Some(rec) = st.record()
                    && st.ctx.store.store(rec)
                {
                    st.mark_stored();
                }
            }
            DialogMsg::RecordCheck { left } => {
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
            DialogMsg::ShardReleased => {
                st.history
                    .push(("pool".into(), "shard moved during set-up".into()));
                st.fail_a(503, &[(HeaderName::RetryAfter, b"1")]);
                for i in 0..st.attempts.len() {
                    st.attempts[i].abandoned = true;
                    st.cancel_attempt(i, &myself);
                }
                st.phase = Phase::Ending;
                st.maybe_finish(&myself);
            }
            DialogMsg::Tx(CallEvent::ClientEnded { key, outcome }) => {
                on_client_ended(st, &myself, key, outcome)
            }
            DialogMsg::FastFailover { attempt } => {
                let idx = st.attempts.iter().position(|a| a.number == attempt);
                if let Some(idx) = idx
                    && !st.attempts[idx].abandoned
                    && !st.attempts[idx].got_18x
                    && !st.attempts[idx].answered
                    && st.phase == Phase::Calling
                {
                    let trunk = st.attempts[idx].trunk.clone();
                    st.gateway_outcome(&trunk, InviteOutcome::Timeout);
                    st.cancel_attempt(idx, &myself);
                    st.attempt_failed(&myself, 408, None, "fast failover: no provisional in time");
                }
            }
            DialogMsg::Tx(CallEvent::Cancel { key, env }) => {
                let ok = local_response(&env, 200, Some(&st.a.local_tag), &[]);
                if let Some(e) = env.reply(ok) {
                    let _ = st.ctx.driver.respond(&key, 200, e);
                }
                if !st.a_final_sent {
                    st.fail_a(487, &[]);
                    for i in 0..st.attempts.len() {
                        st.attempts[i].abandoned = true;
                        st.cancel_attempt(i, &myself);
                    }
                    st.history.push(("caller".into(), "cancelled".into()));
                    st.maybe_finish(&myself);
                }
            }
            DialogMsg::Tx(CallEvent::Request { side, key, env }) => {
                on_request(st, &myself, side, key, env)
            }
            DialogMsg::Tx(CallEvent::Ack { side, env }) => on_ack(st, &myself, side, env),
            DialogMsg::Retransmit2xx { interval } => {
                if st.phase == Phase::Answered
                    && let Some((status, env)) = st.a_2xx.clone()
                {
                    if st
                        .ctx
                        .driver
                        .respond(&st.a_key, status, env.clone())
                        .is_err()
                    {
                        let _ =
                            st.ctx
                                .transports
                                .send_now(env.transport, env.peer, env.msg.bytes());
                    }
                    let t = st.ctx.timers;
                    if st.started.elapsed() > t.t1 * 64 + Duration::from_secs(1) && interval >= t.t2
                    {
                        // No ACK in 64*T1: end the call (RFC 3261 §13.3.1.4).
                        st.history.push(("caller".into(), "no ACK for 2xx".into()));
                        st.bye_all(&myself, None);
                    } else {
                        let next = (interval * 2).min(t.t2);
                        drop(
                            myself.send_after(interval, move || DialogMsg::Retransmit2xx {
                                interval: next,
                            }),
                        );
                    }
                }
            }
            DialogMsg::SessionRefresh => {
                if matches!(st.phase, Phase::Confirmed)
                    && let Some(interval) = st.session_refresh
                    && let Some(b) = st.confirmed_b()
                {
                    let mut leg = b.leg.clone();
                    leg.local_cseq += 1;
                    let cseq = leg.local_cseq;
                    let branch = ids::new_branch(st.shard);
                    let mut req = leg.request(&st.ctx.me, b"UPDATE", cseq, &branch);
                    req.header(
                        HeaderName::Contact,
                        st.ctx.me.contact(leg.transport).as_bytes(),
                    );
                    req.header_fmt(
                        HeaderName::SessionExpires,
                        format_args!("{};refresher=uac", interval.as_secs() * 2),
                    );
                    req.header(HeaderName::Supported, b"timer");
                    if let Some(cur) = st.leg_mut(Side::B) {
                        cur.local_cseq = cseq;
                    }
                    let _ = st.send_request(&myself, Side::B, req.build());
                    drop(myself.send_after(interval, || DialogMsg::SessionRefresh));
                }
            }
            DialogMsg::Hangup => {
                if st.a_final_sent {
                    st.bye_all(&myself, None);
                } else {
                    st.fail_a(480, &[]);
                    for i in 0..st.attempts.len() {
                        st.attempts[i].abandoned = true;
                        st.cancel_attempt(i, &myself);
                    }
                    st.maybe_finish(&myself);
                }
            }
            DialogMsg::Info(reply) => {
                let _ = reply.send(CallInfo {
                    a_call_id: String::from_utf8_lossy(&st.a.call_id).into_owned(),
                    b_call_id: st
                        .current()
                        .map(|a| String::from_utf8_lossy(&a.leg.call_id).into_owned()),
                    phase: st.phase,
                    attempts: st.history.clone(),
                    shard: st.shard,
                    inbound_trunk: st.inbound.name.clone(),
                    gateway: st.current().map(|a| a.trunk.clone()),
                    called: st.called.clone(),
                    calling: st.calling.clone(),
                    age: st.started.elapsed(),
                    answered_after: st.answered_after,
                    a_tags: (
                        st.a.local_tag.clone(),
                        st.a.remote_tag
                            .as_ref()
                            .map(|t| String::from_utf8_lossy(t).into_owned())
                            .unwrap_or_default(),
                    ),
                    b_tags: st.current().map(|a| {
                        (
                            a.leg.local_tag.clone(),
                            a.leg
                                .remote_tag
                                .as_ref()
                                .map(|t| String::from_utf8_lossy(t).into_owned())
                                .unwrap_or_default(),
                        )
                    }),
                });
            }
        }
        // An answered call whose record this node could not write yet: try again shortly.
        if st.a_answered && !st.stored && !st.store_retry && st.phase != Phase::Ending {
            st.store_retry = true;
            drop(myself.send_after(STORE_RETRY_EVERY, || DialogMsg::StoreRecord));
        }
        Ok(())
    }
}

fn on_response(
    st: &mut Call,
    myself: &ActorRef<DialogMsg>,
    key: ClientKey,
    status: u16,
    env: Envelope,
) {
    // 1. A leg-B INVITE attempt?
    if let Some(idx) = st.attempts.iter().position(|a| a.key == key) {
        on_invite_response(st, myself, idx, status, env);
        return;
    }
    // 2. A relayed in-dialog request.
    if let Some(pos) = st.relays.iter().position(|r| r.client == key) {
        if status < 200 {
            if status > 100 {
                let r = &st.relays[pos];
                let tag = match r.from {
                    Side::A => st.a.local_tag.clone(),
                    Side::B => st
                        .leg(Side::B)
                        .map(|l| l.local_tag.clone())
                        .unwrap_or_default(),
                };
                let bytes = relay_response(
                    &st.ctx.me,
                    &r.request,
                    status,
                    env.msg.reason_phrase().unwrap_or_default(),
                    &tag,
                    Some(&env.msg),
                    None,
                );
                if let Some(e) = r.request.reply(bytes) {
                    let _ = st.ctx.driver.respond(&r.server, status, e);
                }
            }
            return;
        }
        let r = st.relays.remove(pos);
        r.span.record("sip.status", status);
        let tag = match r.from {
            Side::A => st.a.local_tag.clone(),
            Side::B => st
                .leg(Side::B)
                .map(|l| l.local_tag.clone())
                .unwrap_or_default(),
        };
        let to_side = match r.from {
            Side::A => Side::B,
            Side::B => Side::A,
        };
        if (200..300).contains(&status) {
            // Target refresh on the far leg (RFC 3261 §12.2.1.2).
            let is_refresh = matches!(
                r.request.msg.method(),
                Some(Method::Invite | Method::Update)
            );
            if is_refresh && let Some(leg) = st.leg_mut(to_side) {
                leg.learn_remote(&env.msg, None);
            }
            if let Some(cseq) = r.invite_cseq {
                let a_cseq = r
                    .request
                    .msg
                    .cseq()
                    .and_then(|c| c.ok())
                    .map_or(0, |c| c.seq);
                match r.from {
                    Side::A => st.pending_ack_b.push((a_cseq, cseq)),
                    Side::B => st.pending_ack_a.push((a_cseq, cseq)),
                }
            }
        }
        let bytes = relay_response(
            &st.ctx.me,
            &r.request,
            status,
            env.msg.reason_phrase().unwrap_or_default(),
            &tag,
            Some(&env.msg),
            None,
        );
        if let Some(e) = r.request.reply(bytes) {
            let _ = st.ctx.driver.respond(&r.server, status, e);
        }
        st.maybe_finish(myself);
        return;
    }
    // 3. Our BYE / CANCEL / refresh: nothing to relay.
    if status >= 200 {
        st.bye_keys.retain(|k| *k != key);
        st.maybe_finish(myself);
    }
}

fn on_invite_response(
    st: &mut Call,
    myself: &ActorRef<DialogMsg>,
    idx: usize,
    status: u16,
    env: Envelope,
) {
    let trunk = st.attempts[idx].trunk.clone();
    if status >= 200 {
        // A final answer: nothing more can come on this INVITE that needs the call.
        st.attempts[idx].settled = true;
        let att = &mut st.attempts[idx];
        att.tx_span.record("sip.status", status);
        att.span.record("sip.status", status);
        att.tx_span = tracing::Span::none();
    } else {
        tracing::debug!(parent: &st.attempts[idx].tx_span, status, "provisional");
    }
    if st.attempts[idx].abandoned {
        // A late answer to an attempt we gave up on.
        if (200..300).contains(&status) && !st.attempts[idx].answered {
            st.ack_and_bye(idx, &env, myself);
        } else if status > 100 && status < 200 {
            st.cancel_attempt(idx, myself);
        }
        st.maybe_finish(myself);
        return;
    }
    match status {
        100 => st.attempts[idx].got_100 = true,
        101..=199 if st.a_final_sent => {} // the caller has its final answer: nothing after it
        101..=199 => {
            let first = !st.attempts[idx].got_18x;
            st.attempts[idx].got_18x = true;
            if first {
                st.gateway_outcome(&trunk, InviteOutcome::Answered(status));
            }
            st.attempts[idx]
                .leg
                .learn_remote(&env.msg, env.msg.to_tag());
            let rseq = env.msg.rseq().and_then(|r| r.ok());
            if st.a_invite.is_some() {
                st.relay_to_a(status, &env.msg, rseq);
                if st.phase == Phase::Calling {
                    st.phase = Phase::Early;
                }
            }
        }
        200..=299 if st.attempts[idx].answered => {
            // The gateway sent its 2xx again (our ACK was lost; the INVITE transaction hands
            // retransmissions up, RFC 6026 §8.4): ACK it again. Never mistake it for a new answer.
            st.reack_b(&env);
        }
        200..=299 => {
            if !st.attempts[idx].got_18x {
                st.gateway_outcome(&trunk, InviteOutcome::Answered(status));
            }
            st.attempts[idx].answered = true;
            if st.a_final_sent {
                // The caller cancelled (or the call was refused) while the 200 was on its way: ACK and BYE.
                st.attempts[idx].abandoned = true;
                st.ack_and_bye(idx, &env, myself);
                st.maybe_finish(myself);
                return;
            }
            st.attempts[idx].leg.learn_from_answer(&env.msg);
            // Session timer: when the gateway makes us (the UAC on leg B) the refresher.
            if let Some(Ok(se)) = env.msg.session_expires()
                && se.refresher == Some(medpool_sip::message::headers::Refresher::Uac)
                && st
                    .a_invite
                    .as_ref()
                    .is_some_and(|a| a.msg.session_expires().is_none())
            {
                let half = Duration::from_secs(u64::from(se.delta.max(2)) / 2);
                st.session_refresh = Some(half);
            }
            st.relay_to_a(status, &env.msg, None);
            st.phase = Phase::Answered;
            if !st.a.transport.is_reliable() {
                let t1 = st.ctx.timers.t1;
                drop(myself.send_after(t1, move || DialogMsg::Retransmit2xx { interval: t1 * 2 }));
            }
        }
        _ => {
            // A non-2xx final (the transaction layer ACKed it).
            let outcome = InviteOutcome::Answered(status);
            if !st.attempts[idx].got_18x || status == 503 {
                st.gateway_outcome(&trunk, outcome);
            }
            if st.attempts[idx].got_18x || st.phase != Phase::Calling {
                // After a provisional reached the caller there is no failover: relay the answer.
                st.attempts[idx].abandoned = true;
                st.history.push((trunk.clone(), format!("{status}")));
                if !st.a_final_sent
                    && let Some(inv) = st.a_invite.clone()
                {
                    let mapped = st
                        .ctx
                        .config()
                        .trunk(&trunk)
                        .map_or(status, |t| t.map_response(status));
                    let reason = if mapped == status {
                        env.msg.reason_phrase().unwrap_or_default().to_vec()
                    } else {
                        reason_phrase(mapped).as_bytes().to_vec()
                    };
                    let bytes = relay_response(
                        &st.ctx.me,
                        &inv,
                        mapped,
                        &reason,
                        &st.a.local_tag,
                        Some(&env.msg),
                        None,
                    );
                    st.respond_a(mapped, bytes);
                }
                st.phase = Phase::Ending;
                st.maybe_finish(myself);
            } else {
                st.attempt_failed(myself, status, Some(&env.msg), &format!("{status}"));
            }
        }
    }
}

fn on_client_ended(st: &mut Call, myself: &ActorRef<DialogMsg>, key: ClientKey, outcome: Outcome) {
    if let Some(idx) = st.attempts.iter().position(|a| a.key == key) {
        let was_settled = st.attempts[idx].settled;
        st.attempts[idx].settled = true;
        let att = &st.attempts[idx];
        if was_settled || att.abandoned {
            st.maybe_finish(myself);
            return;
        }
        if outcome != Outcome::Completed && !att.abandoned && !att.answered {
            let trunk = att.trunk.clone();
            let (gw, status, why) = match outcome {
                Outcome::TransportError => (InviteOutcome::TransportError, 503, "transport error"),
                _ => (InviteOutcome::Timeout, 408, "timeout"),
            };
            st.gateway_outcome(&trunk, gw);
            if st.attempts[idx].got_18x || st.phase != Phase::Calling {
                st.attempts[idx].abandoned = true;
                st.fail_a(status, &[]);
                st.maybe_finish(myself);
            } else {
                st.attempt_failed(myself, status, None, why);
            }
        }
        st.maybe_finish(myself);
        return;
    }
    if let Some(pos) = st.relays.iter().position(|r| r.client == key)
        && outcome != Outcome::Completed
    {
        let r = st.relays.remove(pos);
        let status = if outcome == Outcome::Timeout {
            408
        } else {
            503
        };
        let tag = st.a.local_tag.clone();
        let bytes = local_response(&r.request, status, Some(&tag), &[]);
        if let Some(e) = r.request.reply(bytes) {
            let _ = st.ctx.driver.respond(&r.server, status, e);
        }
        if r.request.msg.method() == Some(Method::Bye)
            || outcome == Outcome::Timeout && r.request.msg.method() == Some(Method::Invite)
        {
            st.bye_all(myself, None);
        }
    }
    let before = st.bye_keys.len();
    st.bye_keys.retain(|k| *k != key);
    if before != st.bye_keys.len() || st.phase == Phase::Ending {
        st.maybe_finish(myself);
    }
}

fn on_ack(st: &mut Call, myself: &ActorRef<DialogMsg>, side: Side, env: Envelope) {
    let cseq = env.msg.cseq().and_then(|c| c.ok()).map_or(0, |c| c.seq);
    match side {
        Side::A if st.phase == Phase::Answered && cseq == st.a_cseq_invite => {
            st.phase = Phase::Confirmed;
            st.a_invite = None; // the INVITE is no longer needed: keep the established call small
            if let Some(idx) = st.attempts.iter().position(|a| a.answered && !a.abandoned) {
                st.a_2xx = None;
                // End-to-end ACK: the caller's ACK may carry the SDP answer to a late offer.
                send_ack_b(st, idx, 1, Some(&env.msg), true);
            }
            if !st.stored
                && let Some(rec) = st.record()
                && st.ctx.store.store(rec)
            {
                st.mark_stored();
            }
            st.ctx.call_answered();
            if let Some(half) = st.session_refresh {
                drop(myself.send_after(half, || DialogMsg::SessionRefresh));
            }
        }
        Side::A => {
            if let Some(pos) = st.pending_ack_b.iter().position(|(a, _)| *a == cseq) {
                let (_, b_cseq) = st.pending_ack_b.remove(pos);
                if let Some(idx) = st.attempts.iter().position(|a| a.answered && !a.abandoned) {
                    send_ack_b(st, idx, b_cseq, Some(&env.msg), false);
                }
            }
        }
        Side::B => {
            if let Some(pos) = st.pending_ack_a.iter().position(|(b, _)| *b == cseq) {
                let (_, a_cseq) = st.pending_ack_a.remove(pos);
                let branch = ids::new_branch(st.shard);
                let mut b = st.a.request(&st.ctx.me, b"ACK", a_cseq, &branch);
                if !env.msg.body().is_empty() {
                    let ct = env
                        .msg
                        .header(HeaderName::ContentType)
                        .unwrap_or(b"application/sdp");
                    b.body(ct, Bytes::copy_from_slice(env.msg.body()));
                }
                let hop = st.a.next_hop();
                let _ = st.ctx.transports.send_now(st.a.transport, hop, b.build());
            }
        }
    }
}

/// Sends an ACK on a leg-B attempt (end to end: `body` is the caller's ACK, which may carry the SDP
/// answer to a late offer). `keep` remembers it to re-ACK retransmitted 2xx.
fn send_ack_b(st: &mut Call, idx: usize, cseq: u32, body: Option<&SipMessage>, keep: bool) {
    let att = &st.attempts[idx];
    let branch = ids::new_branch(st.shard);
    let mut b = att.leg.request(&st.ctx.me, b"ACK", cseq, &branch);
    if let Some(src) = body
        && !src.body().is_empty()
    {
        let ct = src
            .header(HeaderName::ContentType)
            .unwrap_or(b"application/sdp");
        b.body(ct, Bytes::copy_from_slice(src.body()));
    }
    let hop = att.leg.next_hop();
    let transport = att.leg.transport;
    if let Some(ack) = Envelope::outgoing(b.build(), hop, transport) {
        let _ = st.ctx.transports.send_now(transport, hop, ack.msg.bytes());
        if keep {
            st.ack_b = Some(ack);
        }
    }
}

fn on_request(
    st: &mut Call,
    myself: &ActorRef<DialogMsg>,
    side: Side,
    key: ServerKey,
    env: Envelope,
) {
    let method = env.msg.method().unwrap_or(Method::Other);
    let my_tag = match side {
        Side::A => st.a.local_tag.clone(),
        Side::B => st
            .leg(Side::B)
            .map(|l| l.local_tag.clone())
            .unwrap_or_default(),
    };
    let respond_local = |st: &Call, status: u16, extra: &[(HeaderName, &[u8])]| {
        let bytes = local_response(&env, status, Some(&my_tag), extra);
        if let Some(e) = env.reply(bytes) {
            let _ = st.ctx.driver.respond(&key, status, e);
        }
    };
    // CSeq must grow within a dialog (RFC 3261 §12.2.2).
    let cseq = env.msg.cseq().and_then(|c| c.ok()).map_or(0, |c| c.seq);
    if let Some(leg) = st.leg_mut(side) {
        if cseq < leg.remote_cseq && method != Method::Ack {
            let _ = leg;
            respond_local(st, 500, &[]);
            return;
        }
        leg.remote_cseq = leg.remote_cseq.max(cseq);
    }
    if method == Method::Bye {
        respond_local(st, 200, &[]);
        st.history.push((
            if side == Side::A { "caller" } else { "gateway" }.into(),
            "BYE".into(),
        ));
        if st.phase == Phase::Confirmed || st.phase == Phase::Answered || st.phase == Phase::Ending
        {
            st.bye_all(myself, Some(side));
        } else {
            // BYE in an early dialog: end the call.
            st.fail_a(487, &[]);
            for i in 0..st.attempts.len() {
                st.attempts[i].abandoned = true;
                st.cancel_attempt(i, myself);
            }
            st.phase = Phase::Ending;
            st.maybe_finish(myself);
        }
        return;
    }
    if method == Method::Refer {
        let policy_trunk = match side {
            Side::A => st.current().map(|a| a.trunk.clone()).unwrap_or_default(),
            Side::B => st.current().map(|a| a.trunk.clone()).unwrap_or_default(),
        };
        let pass = st
            .ctx
            .config()
            .trunk(&policy_trunk)
            .is_some_and(|t| t.refer == ReferPolicy::Pass);
        if !pass {
            respond_local(st, 403, &[]);
            return;
        }
    }
    let to_side = match side {
        Side::A => Side::B,
        Side::B => Side::A,
    };
    let Some(far) = st.leg(to_side).cloned() else {
        respond_local(st, 481, &[]);
        return;
    };
    if far.remote_tag.is_none() && method != Method::Prack && method != Method::Update {
        respond_local(st, 491, &[]);
        return;
    }
    if st.phase == Phase::Ending {
        respond_local(st, 481, &[]);
        return;
    }
    // Relay: the same method on the far leg, in its dialog, with its CSeq (PRACK maps its RAck).
    let mut leg = far;
    let method_bytes = env.msg.method_bytes().unwrap_or_default().to_vec();
    leg.local_cseq += 1;
    let cseq_far = leg.local_cseq;
    let branch = ids::new_branch(st.shard);
    let mut b = leg.request(&st.ctx.me, &method_bytes, cseq_far, &branch);
    if matches!(
        method,
        Method::Invite | Method::Update | Method::Subscribe | Method::Notify | Method::Refer
    ) {
        b.header(
            HeaderName::Contact,
            st.ctx.me.contact(leg.transport).as_bytes(),
        );
    }
    if method == Method::Prack
        && let Some(Ok(rack)) = env.msg.rack()
    {
        {
            let inv_cseq = st.current().map_or(1, |a| {
                a.invite
                    .msg
                    .cseq()
                    .and_then(|c| c.ok())
                    .map_or(1, |c| c.seq)
            });
            b.header_fmt(
                HeaderName::RAck,
                format_args!("{} {} INVITE", rack.rseq, inv_cseq),
            );
        }
    }
    if method == Method::Refer {
        b.copy_headers(&env.msg, HeaderName::ReferTo);
        b.copy_headers(&env.msg, HeaderName::ReferredBy);
    }
    relay_request_parts(&mut b, &env.msg, &[]);
    if let Some(l) = st.leg_mut(to_side) {
        l.local_cseq = cseq_far;
    }
    match st.send_request(myself, to_side, b.build()) {
        Some(client) => st.relays.push(Relay {
            span: {
                let parent = if to_side == Side::A {
                    &st.a_span
                } else {
                    st.current().map_or(&st.span, |a| &a.span)
                };
                tracing::info_span!(
                    parent: parent,
                    "sip.transaction",
                    sip.method = %String::from_utf8_lossy(&method_bytes),
                    sip.relayed_from = if side == Side::A { "A" } else { "B" },
                    sip.status = tracing::field::Empty,
                )
            },
            client,
            from: side,
            server: key,
            request: env,
            invite_cseq: (method == Method::Invite).then_some(cseq_far),
        }),
        None => respond_local(st, 503, &[]),
    }
}

/// A number as it goes into a trace: as is, or only its last two digits when redaction is on.
fn traced_number(ctx: &NodeCtx, n: &str) -> String {
    if !ctx.redact_numbers || n.len() <= 2 {
        return n.to_owned();
    }
    format!("{}{}", "*".repeat(n.len() - 2), &n[n.len() - 2..])
}

/// The root span of a call (parented to `traceparent` when the call continues another node's trace).
fn call_span(
    ctx: &NodeCtx,
    call_id: &str,
    shard: u16,
    inbound: &str,
    called: &str,
    calling: &str,
    traceparent: Option<&str>,
) -> tracing::Span {
    let span = tracing::info_span!(
        parent: None,
        "call",
        sip.call_id = call_id,
        call.shard = shard,
        call.node = ctx.shards.node_id(),
        call.inbound_trunk = inbound,
        call.called = traced_number(ctx, called).as_str(),
        call.calling = traced_number(ctx, calling).as_str(),
        call.gateway = tracing::field::Empty,
        call.b_call_id = tracing::field::Empty,
        call.failovers = tracing::field::Empty,
        sip.status = tracing::field::Empty,
        call.restored = tracing::field::Empty,
    );
    if let Some(tp) = traceparent {
        crate::trace::set_parent(&span, tp);
    }
    span
}

/// Spawns the actor for a new call.
pub async fn spawn(args: DialogArgs) -> Result<ActorRef<DialogMsg>, ractor::SpawnErr> {
    let (actor, _handle) =
        Actor::spawn(None, DialogActor, DialogStart::New(Box::new(args))).await?;
    Ok(actor)
}

/// Rebuilds a confirmed call from its replicated record (failover, drain).
pub async fn spawn_restored(
    ctx: Arc<NodeCtx>,
    record: DialogRecord,
) -> Result<ActorRef<DialogMsg>, ractor::SpawnErr> {
    let (actor, _handle) = Actor::spawn(
        None,
        DialogActor,
        DialogStart::Restored(ctx, Box::new(record)),
    )
    .await?;
    Ok(actor)
}

/// Why a record cannot be carried on here.
#[derive(Debug, thiserror::Error)]
enum RestoreError {
    #[error("dialog record names trunk {0:?}, which the configuration no longer has")]
    UnknownTrunk(String),
    #[error("dialog record has a malformed address {0:?}")]
    BadAddress(String),
}

fn leg_from_record(r: &LegRecord) -> Result<Leg, RestoreError> {
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
        transport: if r.transport == "tcp" {
            Transport::Tcp
        } else {
            Transport::Udp
        },
        local_cseq: r.local_cseq.saturating_add(CSEQ_SKIP),
        remote_cseq: 0,
    })
}

fn restored(
    ctx: Arc<NodeCtx>,
    rec: DialogRecord,
    myself: ActorRef<DialogMsg>,
) -> Result<Call, ActorProcessingErr> {
    let config = ctx.config();
    let inbound = config
        .trunk(&rec.inbound)
        .cloned()
        .ok_or_else(|| RestoreError::UnknownTrunk(rec.inbound.clone()))?;
    let a = leg_from_record(&rec.a)?;
    let b = leg_from_record(&rec.b)?;
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
    let invite = Envelope::outgoing(
        b.request(&ctx.me, b"INVITE", 1, &branch).build(),
        b.peer,
        b.transport,
    )
    .ok_or_else(|| ActorProcessingErr::from("cannot rebuild the INVITE"))?;
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
        .and_then(|t| ctx.gateways.try_acquire(t).then(|| t.name.clone()));
    ctx.count_inbound(&inbound.name);
    Ok(Call {
        span,
        a_span,
        shard: rec.shard,
        inbound,
        a_cseq_invite: 0,
        a_key,
        a_invite: None,
        phase: Phase::Confirmed,
        plan: Vec::new(),
        next_candidate: 0,
        attempts: vec![Attempt {
            span: b_span,
            tx_span: tracing::Span::none(),
            leg: b,
            trunk: rec.trunk.clone(),
            invite,
            key,
            number: 1,
            got_100: true,
            got_18x: true,
            cancel_sent: false,
            abandoned: false,
            answered: true,
            settled: true,
        }],
        history: vec![(rec.trunk.clone(), "restored on this node".into())],
        called: String::new(),
        calling: String::new(),
        a_final_sent: true,
        a_2xx: None,
        a_answered: true,
        answered_after: None,
        pdd_recorded: true,
        ack_b: None,
        relays: Vec::new(),
        pending_ack_b: Vec::new(),
        pending_ack_a: Vec::new(),
        bye_keys: Vec::new(),
        started: Instant::now(),
        last_status: 200,
        gateway_active,
        session_refresh: None,
        stored: true,
        store_retry: false,
        ended: false,
        a,
        ctx,
    })
}
