//! The node's SIP core between the transports and the actors: the transaction layer (one
//! [`medpool_sip::transaction::Driver`] per node), the [`Envelope`] it carries, and the [`Registry`]
//! that routes transaction events to the actor that owns them (a DialogActor or a GatewayActor).
//!
//! ```text
//! transports ─Inbound─► node dispatcher ─► Driver (retransmissions, absorption, timers)
//!                                              │ TuEvent (SipIo::deliver)
//!                      ┌───────────────────────┼────────────────────────────┐
//!                      ▼                       ▼                            ▼
//!        Registry: client key → actor   in-dialog (Call-ID, tag) → actor   anything new → dispatcher
//! ```
//! Transaction state lives here, per node; dialog state lives in the DialogActor. A transaction is
//! not replicated: a call's confirmed dialog is (see [`crate::cluster`]).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;

use bytes::Bytes;
use medpool_sip::message::builder::MessageBuilder;
use medpool_sip::transaction::{
    ClientKey, Driver, Outcome, RequestParts, ServerKey, TransactionIo, TransactionKey,
    TransmitError, TuEvent,
};
use medpool_sip::transport::{Transport, Transports, response_target};
use medpool_sip::{HeaderName, Method, SipMessage};
use ractor::ActorRef;
use tokio::sync::mpsc;

use crate::dialog::DialogMsg;
use crate::gateway::GatewayMsg;

/// A message with the peer it came from or goes to.
#[derive(Clone, Debug)]
pub struct Envelope {
    /// The message.
    pub msg: SipMessage,
    /// Source (received) or destination (sent).
    pub peer: SocketAddr,
    /// Transport.
    pub transport: Transport,
    /// The pool node that received the message from the network (when another node forwarded it to
    /// us); answers to it are sent through that node.
    pub via: Option<u64>,
    /// W3C trace context the message arrived with (set on forwarded messages).
    pub traceparent: Option<String>,
}

impl Envelope {
    /// Wraps bytes we built (parsed back so the transaction layer and ACK building can read them).
    pub fn outgoing(bytes: Bytes, peer: SocketAddr, transport: Transport) -> Option<Envelope> {
        match SipMessage::parse(bytes) {
            Ok(msg) => Some(Envelope {
                msg,
                peer,
                transport,
                via: None,
                traceparent: None,
            }),
            Err(e) => {
                tracing::error!(error = %e, "built an unparseable message");
                None
            }
        }
    }

    /// An answer to this (received) request: to its reply address, through the node it came in on.
    pub fn reply(&self, bytes: Bytes) -> Option<Envelope> {
        let mut e = Envelope::outgoing(bytes, self.reply_peer(), self.transport)?;
        e.via = self.via;
        Some(e)
    }

    /// Where responses to this (received) request go (RFC 3261 §18.2.2).
    pub fn reply_peer(&self) -> SocketAddr {
        match self.transport {
            Transport::Tcp => self.peer,
            Transport::Udp => match self.msg.top_via() {
                Some(Ok(v)) => response_target(&v, self.peer),
                _ => self.peer,
            },
        }
    }
}

/// The node's transaction layer.
pub type TxDriver = Driver<Envelope, std::sync::Arc<SipIo>>;

/// The server-transaction key of a received request.
pub fn server_key(msg: &SipMessage) -> Option<ServerKey> {
    let via = msg.top_via()?.ok()?;
    let cseq = msg.cseq()?.ok()?;
    let sent_by_owned;
    let sent_by: &[u8] = match via.port {
        Some(p) => {
            sent_by_owned = [via.host, b":", p.to_string().as_bytes()].concat();
            &sent_by_owned
        }
        None => via.host,
    };
    Some(ServerKey::from_request(&RequestParts {
        method: msg.method_bytes()?,
        branch: via.branch(),
        sent_by,
        request_uri: msg.request_uri_bytes()?,
        call_id: msg.call_id()?.ok()?,
        from_tag: msg.from_tag(),
        to_tag: msg.to_tag(),
        cseq: cseq.seq,
    }))
}

/// The client-transaction key of a received response (top Via branch + CSeq method).
pub fn client_key(msg: &SipMessage) -> Option<ClientKey> {
    let branch = msg.top_branch()?;
    let cseq = msg.cseq()?.ok()?;
    Some(ClientKey::new(branch, cseq.method_bytes))
}

/// Who owns a client transaction.
#[derive(Clone, Debug)]
pub enum Owner {
    /// A call.
    Dialog(ActorRef<DialogMsg>),
    /// A gateway's OPTIONS probe.
    Gateway(ActorRef<GatewayMsg>),
}

/// Routing maps from SIP identifiers to actors. One mutex; every operation is a hash lookup.
#[derive(Debug, Default)]
pub struct Registry {
    maps: Mutex<Maps>,
}

#[derive(Debug, Default)]
struct Maps {
    clients: HashMap<ClientKey, Owner>,
    invites: HashMap<ServerKey, ActorRef<DialogMsg>>,
    leg_a: HashMap<Vec<u8>, ActorRef<DialogMsg>>,
    leg_b: HashMap<Vec<u8>, ActorRef<DialogMsg>>,
    by_shard: HashMap<u16, HashMap<ractor::ActorId, ActorRef<DialogMsg>>>,
}

fn leg_a_key(call_id: &[u8], remote_tag: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(call_id.len() + remote_tag.len() + 1);
    k.extend_from_slice(call_id);
    k.push(0);
    k.extend_from_slice(remote_tag);
    k
}

impl Registry {
    fn with<R>(&self, f: impl FnOnce(&mut Maps) -> R) -> R {
        match self.maps.lock() {
            Ok(mut m) => f(&mut m),
            Err(poisoned) => f(&mut poisoned.into_inner()),
        }
    }
    /// Routes responses of client transaction `key` to `owner`.
    pub fn add_client(&self, key: ClientKey, owner: Owner) {
        self.with(|m| m.clients.insert(key, owner));
    }
    /// Forgets a client transaction.
    pub fn remove_client(&self, key: &ClientKey) -> Option<Owner> {
        self.with(|m| m.clients.remove(key))
    }
    /// Whether client transaction `key` is one of this node's gateway probes (OPTIONS): their
    /// answers belong to this node, whatever shard their branch names.
    pub fn is_probe(&self, key: &ClientKey) -> bool {
        self.with(|m| matches!(m.clients.get(key), Some(Owner::Gateway(_))))
    }
    /// Whether client transaction `key` is this node's (a probe or a call's request).
    pub fn has_client(&self, key: &ClientKey) -> bool {
        self.with(|m| m.clients.contains_key(key))
    }
    /// Routes CANCELs of this INVITE server transaction, and requests of leg A, to `actor`.
    pub fn add_call(
        &self,
        invite: ServerKey,
        call_id: &[u8],
        remote_tag: &[u8],
        shard: u16,
        actor: ActorRef<DialogMsg>,
    ) {
        self.with(|m| {
            m.invites.insert(invite, actor.clone());
            m.by_shard
                .entry(shard)
                .or_default()
                .insert(actor.get_id(), actor.clone());
            m.leg_a.insert(leg_a_key(call_id, remote_tag), actor);
        });
    }
    /// Whether a call with this leg-A Call-ID and caller tag is here.
    pub fn has_call(&self, call_id: &[u8], remote_tag: &[u8]) -> bool {
        self.with(|m| m.leg_a.contains_key(&leg_a_key(call_id, remote_tag)))
    }
    /// The calls of a shard.
    pub fn calls_of(&self, shard: u16) -> Vec<ActorRef<DialogMsg>> {
        self.with(|m| {
            m.by_shard
                .get(&shard)
                .map(|c| c.values().cloned().collect())
                .unwrap_or_default()
        })
    }
    /// Routes leg B (our Call-ID) to `actor`.
    pub fn add_leg_b(&self, call_id: &[u8], actor: ActorRef<DialogMsg>) {
        self.with(|m| m.leg_b.insert(call_id.to_vec(), actor));
    }
    /// Forgets a leg B.
    pub fn remove_leg_b(&self, call_id: &[u8]) {
        self.with(|m| m.leg_b.remove(call_id));
    }
    /// Forgets a call's leg A and INVITE.
    pub fn remove_call(
        &self,
        invite: &ServerKey,
        call_id: &[u8],
        remote_tag: &[u8],
        shard: u16,
        actor: ractor::ActorId,
    ) {
        self.with(|m| {
            m.invites.remove(invite);
            m.leg_a.remove(&leg_a_key(call_id, remote_tag));
            if let Some(c) = m.by_shard.get_mut(&shard) {
                c.remove(&actor);
                if c.is_empty() {
                    m.by_shard.remove(&shard);
                }
            }
        });
    }
    /// Whether `call_id` is one of our own leg-B Call-IDs (a call looping back to us).
    pub fn is_our_leg_b(&self, call_id: &[u8]) -> bool {
        self.with(|m| m.leg_b.contains_key(call_id))
    }
    /// How many calls are registered.
    pub fn calls(&self) -> usize {
        self.with(|m| m.leg_a.len())
    }
    fn dialog_for(&self, msg: &SipMessage) -> Option<(ActorRef<DialogMsg>, Side)> {
        let call_id = msg.call_id()?.ok()?;
        self.with(|m| {
            if let Some(a) = m.leg_b.get(call_id) {
                return Some((a.clone(), Side::B));
            }
            let tag = if msg.is_request() {
                msg.from_tag()
            } else {
                msg.to_tag()
            }?;
            m.leg_a
                .get(&leg_a_key(call_id, tag))
                .map(|a| (a.clone(), Side::A))
        })
    }
}

/// Which leg a message belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// The caller's side.
    A,
    /// The side we called.
    B,
}

/// Work for the node dispatcher: requests no actor owns yet.
#[derive(Debug)]
pub enum CoreEvent {
    /// A request that created a server transaction but matches no dialog: a new INVITE, an
    /// out-of-dialog OPTIONS, an unknown dialog (481), an unmatched CANCEL (481).
    Unrouted {
        /// Its server transaction.
        key: ServerKey,
        /// The request.
        env: Envelope,
    },
    /// A 2xx to an INVITE of ours (its Call-ID is one we minted) that no call knows any more: its
    /// call ended, or moved, before the gateway answered. The node ACKs it and hangs the leg up.
    OrphanAnswer {
        /// The response.
        env: Envelope,
    },
}

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
}

/// The transaction layer's I/O: sends through the transports, routes events through the registry.
pub struct SipIo {
    transports: Transports,
    registry: std::sync::Arc<Registry>,
    core: mpsc::Sender<CoreEvent>,
    relay: std::sync::Arc<dyn crate::cluster::Relay>,
}

impl std::fmt::Debug for SipIo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SipIo").finish_non_exhaustive()
    }
}

impl SipIo {
    /// I/O over `transports`, routing with `registry`, unrouted requests to `core`.
    pub fn new(
        transports: Transports,
        registry: std::sync::Arc<Registry>,
        core: mpsc::Sender<CoreEvent>,
        relay: std::sync::Arc<dyn crate::cluster::Relay>,
    ) -> SipIo {
        SipIo {
            transports,
            registry,
            core,
            relay,
        }
    }
}

impl TransactionIo<Envelope> for SipIo {
    fn transmit(&self, _key: &TransactionKey, m: &Envelope) -> Result<(), TransmitError> {
        if let Some(via) = m.via {
            let t = if m.transport == Transport::Tcp {
                "tcp"
            } else {
                "udp"
            };
            return if self.relay.send_via(via, m.msg.bytes(), m.peer, t) {
                Ok(())
            } else {
                Err(TransmitError)
            };
        }
        self.transports
            .send_now(m.transport, m.peer, m.msg.bytes())
            .map_err(|_| TransmitError)
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
        use crate::dialog::DialogMsg as D;
        match event {
            TuEvent::Request { key, request } => {
                let method = request.msg.method();
                if method == Some(Method::Cancel) {
                    let invite = key.invite_key_for_cancel();
                    let actor = invite
                        .as_ref()
                        .and_then(|k| self.registry.with(|m| m.invites.get(k).cloned()));
                    if let Some(actor) = actor {
                        let _ = actor.cast(D::Cancel { key, env: request });
                        return;
                    }
                } else if request.msg.to_tag().is_some()
                    && let Some((actor, side)) = self.registry.dialog_for(&request.msg)
                {
                    let _ = actor.cast(D::Request {
                        side,
                        key,
                        env: request,
                    });
                    return;
                }
                if self
                    .core
                    .try_send(CoreEvent::Unrouted { key, env: request })
                    .is_err()
                {
                    tracing::warn!(
                        "dispatcher queue full: request dropped (its sender will retransmit)"
                    );
                }
            }
            TuEvent::Ack { ack, .. } => {
                if let Some((actor, side)) = self.registry.dialog_for(&ack.msg) {
                    let _ = actor.cast(D::Ack { side, env: ack });
                }
            }
            TuEvent::Response {
                key,
                status,
                response,
            } => {
                let owner = self.registry.with(|m| m.clients.get(&key).cloned());
                match owner {
                    Some(Owner::Dialog(a)) => {
                        // Its call may have stopped meanwhile (its shard moved): a 2xx then has no
                        // one to ACK it but the node.
                        let orphan =
                            is_our_invite_2xx(status, &response.msg).then(|| response.clone());
                        let sent = a.cast(D::Response {
                            key,
                            status,
                            env: response,
                        });
                        if sent.is_err()
                            && let Some(env) = orphan
                        {
                            let _ = self.core.try_send(CoreEvent::OrphanAnswer { env });
                        }
                    }
                    Some(Owner::Gateway(g)) => {
                        let _ = g.cast(GatewayMsg::ProbeAnswer { key, status });
                    }
                    None if is_our_invite_2xx(status, &response.msg) => {
                        let _ = self
                            .core
                            .try_send(CoreEvent::OrphanAnswer { env: response });
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
                        Some((actor, Side::B)) => {
                            let _ = actor.cast(D::StrayAnswer { env: response });
                        }
                        Some(_) => {}
                        None if is_our_invite_2xx(status, &response.msg) => {
                            let _ = self
                                .core
                                .try_send(CoreEvent::OrphanAnswer { env: response });
                        }
                        None => {}
                    }
                }
            }
            TuEvent::Terminated { key, outcome } => match key {
                TransactionKey::Client(k) => match self.registry.remove_client(&k) {
                    Some(Owner::Dialog(a)) => {
                        let _ = a.cast(D::ClientEnded { key: k, outcome });
                    }
                    Some(Owner::Gateway(g)) if outcome != Outcome::Completed => {
                        let _ = g.cast(GatewayMsg::ProbeFailed { key: k });
                    }
                    _ => {}
                },
                TransactionKey::Server(k) => {
                    if k.is_invite() {
                        self.registry.with(|m| m.invites.remove(&k));
                    }
                }
            },
        }
    }
}

/// The client-transaction key of a request we are about to send (our top Via branch + method).
pub fn client_key_of_request(msg: &SipMessage) -> Option<ClientKey> {
    let branch = msg.top_branch()?;
    Some(ClientKey::new(branch, msg.method_bytes()?))
}

impl Registry {
    /// Every call's actor (for shutdown and admin).
    pub fn call_actors(&self) -> Vec<ActorRef<DialogMsg>> {
        self.with(|m| m.invites.values().cloned().collect::<Vec<_>>())
            .into_iter()
            .chain(self.with(|m| m.leg_a.values().cloned().collect::<Vec<_>>()))
            .fold(Vec::new(), |mut v, a| {
                if !v
                    .iter()
                    .any(|x: &ActorRef<DialogMsg>| x.get_id() == a.get_id())
                {
                    v.push(a);
                }
                v
            })
    }
}
