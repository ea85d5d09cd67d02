//! The transaction layer's I/O ([`SipIo`]): it sends through the [`Wire`] (or through the pool node a
//! forwarded request came in on), builds ACKs for non-2xx finals, and hands every event up to its
//! owner through the [`Registry`] — or to the node, as a [`CoreEvent`], when no one owns it yet.

use std::sync::Arc;

use bytes::Bytes;
use medpool_sip::message::builder::MessageBuilder;
use medpool_sip::transaction::{
    ClientKey, Outcome, ServerKey, TransactionIo, TransactionKey, TransmitError, TuEvent,
};
use medpool_sip::transport::Transport;
use medpool_sip::{HeaderName, Method, SipMessage};
use tokio::sync::mpsc;

use super::events::{CallEvent, CoreEvent, Owner, ProbeEvent, Side};
use super::{Envelope, Registry, Reply, Wire};
use crate::cluster::Relay;

/// Whether `response` is a 2xx to an INVITE on a leg we created (a Call-ID we minted).
fn is_our_invite_2xx(status: u16, response: &SipMessage) -> bool {
    (200..300).contains(&status)
        && response
            .cseq()
            .and_then(|c| c.ok())
            .is_some_and(|c| c.method == Method::Invite)
        && response
            .call_id()
            .and_then(|c| c.ok())
            .is_some_and(|c| medpool_sip::ids::shard_in(c).is_some())
    // Whether this pool really minted it is checked where it is acted on (the node counts
    // forged look-alikes there).
}

/// The transaction layer's I/O: sends through the wire, routes events through the registry.
pub struct SipIo {
    wire: Arc<dyn Wire>,
    registry: Arc<Registry>,
    /// One queue per dispatcher lane.
    core: Vec<mpsc::Sender<CoreEvent>>,
    relay: Arc<dyn Relay>,
}

impl std::fmt::Debug for SipIo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SipIo").finish_non_exhaustive()
    }
}

impl SipIo {
    /// I/O over `wire`, routing with `registry`, unrouted requests to `core`: one queue per
    /// dispatcher lane, an event to the lane of its message's Call-ID (the lane the message came
    /// in on), so a lane's dispatcher handles the events of its calls in order.
    pub fn new(
        wire: Arc<dyn Wire>,
        registry: Arc<Registry>,
        core: Vec<mpsc::Sender<CoreEvent>>,
        relay: Arc<dyn Relay>,
    ) -> SipIo {
        SipIo {
            wire,
            registry,
            core,
            relay,
        }
    }
}

impl SipIo {
    /// Hands `event` to the dispatcher of its message's lane; false when that queue is full.
    /// Sends `bytes` to `peer`, or through pool node `via` when the message came in there.
    fn send(
        &self,
        via: Option<u64>,
        transport: Transport,
        peer: std::net::SocketAddr,
        bytes: Bytes,
    ) -> Result<(), TransmitError> {
        if let Some(via) = via {
            return if self.relay.send_via(via, bytes, peer, transport.as_lower()) {
                Ok(())
            } else {
                Err(TransmitError)
            };
        }
        self.wire
            .send_now(transport, peer, bytes)
            .map_err(|_| TransmitError)
    }

    fn to_core(&self, event: CoreEvent) -> bool {
        let msg = match &event {
            CoreEvent::Unrouted { env, .. } | CoreEvent::OrphanAnswer { env } => &env.msg,
        };
        let lane = medpool_sip::transport::lanes::lane_of(msg, self.core.len());
        self.core
            .get(lane)
            .is_some_and(|q| q.try_send(event).is_ok())
    }
}

impl TransactionIo<Envelope, Reply> for SipIo {
    fn transmit(&self, _key: &ClientKey, m: &Envelope) -> Result<(), TransmitError> {
        self.send(m.via, m.transport, m.peer, m.msg.bytes())
    }

    fn transmit_response(&self, _key: &ServerKey, r: &Reply) -> Result<(), TransmitError> {
        self.send(r.via, r.transport, r.peer, r.bytes.clone())
    }

    fn build_ack(&self, request: &Envelope, response: &Envelope) -> Envelope {
        let req = &request.msg;
        let mut b = MessageBuilder::request_method(
            Method::Ack,
            req.request_uri_bytes().unwrap_or_default(),
        );
        if let Some(Ok(v)) = req.top_via() {
            b.header(HeaderName::Via, v.raw);
        }
        b.header(HeaderName::MaxForwards, b"70");
        b.copy_headers(req, HeaderName::Route);
        b.copy_headers(req, HeaderName::From);
        b.copy_headers(&response.msg, HeaderName::To);
        b.copy_headers(req, HeaderName::CallId);
        let seq = req.cseq().and_then(|c| c.ok()).map_or(1, |c| c.seq);
        b.header_fmt(HeaderName::CSeq, format_args!("{seq} ACK"));
        let bytes = b.build();
        Envelope::outgoing(bytes, request.peer, request.transport)
            .unwrap_or_else(|| request.clone())
    }

    fn deliver(&self, event: TuEvent<Envelope>) {
        use CallEvent as E;
        match event {
            TuEvent::Request { key, request } => {
                let method = request.msg.method();
                if method == Some(Method::Cancel) {
                    let invite = key.invite_key_for_cancel();
                    let call = invite.as_ref().and_then(|k| self.registry.invite_owner(k));
                    if let Some(call) = call {
                        let _ = call.send_message(E::Cancel { key, env: request });
                        return;
                    }
                } else if request.msg.to_tag().is_some()
                    && let Some((call, side)) = self.registry.dialog_for(&request.msg)
                {
                    let _ = call.send_message(E::Request {
                        side,
                        key,
                        env: request,
                    });
                    return;
                }
                if !self.to_core(CoreEvent::Unrouted { key, env: request }) {
                    tracing::warn!(
                        "dispatcher queue full: request dropped (its sender will retransmit)"
                    );
                }
            }
            TuEvent::Ack { ack, .. } => {
                if let Some((call, side)) = self.registry.dialog_for(&ack.msg) {
                    let _ = call.send_message(E::Ack { side, env: ack });
                }
            }
            TuEvent::Response {
                key,
                status,
                response,
            } => {
                let owner = self.registry.client_owner(&key);
                match owner {
                    Some(Owner::Dialog(a)) => {
                        // Its call may have stopped meanwhile (its shard moved): a 2xx then has no
                        // one to ACK it but the node.
                        let orphan =
                            is_our_invite_2xx(status, &response.msg).then(|| response.clone());
                        let sent = a.send_message(E::Response {
                            key,
                            status,
                            env: response,
                        });
                        if sent.is_err()
                            && let Some(env) = orphan
                        {
                            let _ = self.to_core(CoreEvent::OrphanAnswer { env });
                        }
                    }
                    Some(Owner::Gateway(g)) => {
                        let _ = g.send_message(ProbeEvent::Answer { key, status });
                    }
                    None if is_our_invite_2xx(status, &response.msg) => {
                        let _ = self.to_core(CoreEvent::OrphanAnswer { env: response });
                    }
                    None => {}
                }
            }
            TuEvent::StrayResponse {
                status, response, ..
            } => {
                // A 2xx retransmitted after its transaction ended: the dialog ACKs it again; when no
                // dialog knows it any more, the node ACKs it and hangs the leg up.
                if (200..300).contains(&status) {
                    match self.registry.dialog_for(&response.msg) {
                        Some((call, Side::B)) => {
                            let _ = call.send_message(E::StrayAnswer { env: response });
                        }
                        Some(_) => {}
                        None if is_our_invite_2xx(status, &response.msg) => {
                            let _ = self.to_core(CoreEvent::OrphanAnswer { env: response });
                        }
                        None => {}
                    }
                }
            }
            TuEvent::Terminated { key, outcome } => match key {
                TransactionKey::Client(k) => match self.registry.remove_client(&k) {
                    Some(Owner::Dialog(a)) => {
                        let _ = a.send_message(E::ClientEnded { key: k, outcome });
                    }
                    Some(Owner::Gateway(g)) if outcome != Outcome::Completed => {
                        let _ = g.send_message(ProbeEvent::Failed { key: k });
                    }
                    _ => {}
                },
                TransactionKey::Server(k) => {
                    if k.is_invite() {
                        self.registry.remove_invite(&k);
                    }
                }
            },
        }
    }
}
