//! A lane's dispatcher: takes each message of its lane — from the main listener, a trunk port or
//! another node of the pool — and decides, with the pure ingress rules, whether this node handles
//! it, forwards it to its shard's owner (or to the node still setting its call up), or answers it
//! statelessly (403, 503); what it handles goes to the transaction layer, and the core events
//! that raises are handled before the next message.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use medpool_sip::transport::{Inbound, Transports, overload_answer};
use medpool_sip::{Method, ids};
use tokio::sync::{mpsc, watch};

use super::core_events::handle_core;
use crate::cluster::ForwardMeta;
use crate::ctx::{Forwarded, NodeCtx};
use crate::dialog::leg::local_response;
use crate::ingress::{Arrival, Ingress, Ownership, ingress, real_source, unowned};
use crate::txlayer::{CoreEvent, Envelope, client_key, server_key};

/// Hands what a trunk port received to the dispatcher, with the port, until the node stops.
pub(super) async fn tag_arrivals(
    port: u16,
    mut inbound: mpsc::Receiver<Inbound>,
    to: mpsc::Sender<(u16, Inbound)>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            m = inbound.recv() => match m {
                // A full dispatcher queue holds this port's queue, whose listener then answers
                // 503 or drops, as the main listener's does.
                Some(inb) => if to.send((port, inb)).await.is_err() { return },
                None => return,
            },
        }
    }
}

/// What the trunk ports received (tagged with the port), and their transports.
pub(super) struct Arrivals {
    pub(super) rx: mpsc::Receiver<(u16, Inbound)>,
    pub(super) transports: std::collections::BTreeMap<u16, Transports>,
}

/// One lane's dispatcher: its share of the main listener's messages, of the trunk ports' and of
/// the forwarded ones, and the core events they raise, until the node stops.
pub(super) async fn dispatch(
    ctx: Arc<NodeCtx>,
    transports: Transports,
    mut inbound: mpsc::Receiver<Inbound>,
    mut arrivals: Arrivals,
    mut forwarded: mpsc::Receiver<Forwarded>,
    mut core_rx: mpsc::Receiver<CoreEvent>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            biased;
            _ = stop.changed() => break,
            Some(ev) = core_rx.recv() => handle_core(&ctx, ev).await,
            Some(f) = forwarded.recv() => {
                let began = tokio::time::Instant::now();
                let origin = Origin { via: f.via, meta: f.meta, taken_back: f.via.is_none() };
                feed(&ctx, &transports, f.inbound, origin, None).await;
                while let Ok(ev) = core_rx.try_recv() {
                    handle_core(&ctx, ev).await;
                }
                ctx.stats.stages.dispatch.observe(began.elapsed());
            }
            Some(inb) = inbound.recv() => {
                let began = tokio::time::Instant::now();
                ctx.stats.stages.queue_depth.observe_count(inbound.len());
                feed(&ctx, &transports, inb, Origin::default(), None).await;
                // Requests the transaction layer just passed up are handled before the next message, so
                // a CANCEL never overtakes the INVITE it cancels.
                while let Ok(ev) = core_rx.try_recv() {
                    handle_core(&ctx, ev).await;
                }
                ctx.stats.stages.dispatch.observe(began.elapsed());
            }
            Some((port, inb)) = arrivals.rx.recv() => {
                let on = arrivals.transports.get(&port).unwrap_or(&transports);
                feed(&ctx, on, inb, Origin::default(), Some(port)).await;
                while let Ok(ev) = core_rx.try_recv() {
                    handle_core(&ctx, ev).await;
                }
            }
            else => break,
        }
    }
}

/// Sends a stateless answer to a message received here or forwarded to us.
async fn answer(
    ctx: &NodeCtx,
    transports: &Transports,
    inb: &Inbound,
    via: Option<u64>,
    bytes: bytes::Bytes,
) {
    match via {
        Some(node) => {
            let env = Envelope {
                msg: inb.msg.clone(),
                peer: inb.source,
                transport: inb.transport,
                via,
                traceparent: None,
                trying_sent: false,
            };
            ctx.relay
                .send_via(node, bytes, env.reply_peer(), inb.transport.as_lower());
        }
        None => {
            let _ = transports.send_response(inb, bytes).await;
        }
    }
}

/// Where a message handed to [`feed`] comes from, besides its socket.
#[derive(Debug, Default)]
struct Origin {
    /// The pool node that received it from the network, when another node forwarded it here.
    via: Option<u64>,
    /// What came with it from that node.
    meta: ForwardMeta,
    /// A new-call INVITE this node received, answered 100 Trying and forwarded, sent back by its
    /// owner (which could not take it then): its source was checked when it first came in.
    taken_back: bool,
}

/// Takes one message received on the main listener (`port` `None`) or a trunk port, or forwarded
/// by another node of the pool (`origin.via`), `transports` being those it arrived on.
async fn feed(
    ctx: &Arc<NodeCtx>,
    transports: &Transports,
    mut inb: Inbound,
    origin: Origin,
    port: Option<u16>,
) {
    let Origin {
        via,
        meta,
        taken_back,
    } = origin;
    let traceparent = meta.traceparent.clone();
    let config = ctx.config();
    // Through a trusted L7 forwarder, the port a message reached is the forwarder's choice.
    let direct = via.is_none() && !taken_back && !ctx.trusted_forwarders.contains(&inb.source.ip());
    if via.is_none() && !taken_back {
        inb.source = real_source(&inb.msg, inb.source, &ctx.trusted_forwarders);
    }
    // Peers are checked by the node that received the message; forwarded messages were checked there.
    // A trunk with a port of its own starts things (new calls, OPTIONS, ...) only on that port:
    // elsewhere its new requests (sent to the node directly) are a stranger's. What belongs to a
    // dialog or a transaction already known is taken on any port (it names its call).
    // A trunk that requires a client certificate is only itself over TLS (the TLS door checked the
    // certificate); its address over UDP or TCP, or named by a forwarder, is not enough.
    let known = via.is_some()
        || taken_back
        || ctx
            .dns
            .trunk_for_source(&config, inb.source.ip(), inb.source.port())
            .is_some_and(|t| {
                (!direct
                    || !medpool_sip::transport::starts_something_new(&inb.msg)
                    || ctx.me.bound(t.local_port) == port)
                    && (!t.tls.requires_client_cert()
                        || (inb.transport == medpool_sip::transport::Transport::Tls
                            && inb.tls.is_some()))
            });
    if !known && inb.msg.is_request() {
        ctx.stats.refused_sources.fetch_add(1, Ordering::Relaxed);
    }
    let arrival = Arrival {
        is_request: inb.msg.is_request(),
        is_ack: inb.msg.method() == Some(Method::Ack),
        new_call: inb.msg.method() == Some(Method::Invite) && inb.msg.to_tag().is_none(),
        reliable: inb.transport.is_reliable(),
        forwarded: via.is_some(),
        known_source: known,
        // Answers to this node's own gateway probes are node-local: every node probes every
        // gateway, so they are never forwarded to the owner of the shard their branch names.
        // So are answers to any client transaction of this node (a call in set-up whose shard just
        // moved away ends here, and needs its gateway's answers to do so).
        own_answer: known
            && !inb.msg.is_request()
            && client_key(&inb.msg).is_some_and(|k| ctx.registry.has_client(&k)),
    };
    // Any node, any message: act only for shards this node owns under a valid lease; forward the rest.
    // A new call from the network may be set up here in a shard this node acts for
    // (`[node] local_calls`, `NodeCtx::new_call_shard`).
    let shard = if !known {
        0
    } else if arrival.new_call && via.is_none() {
        ctx.new_call_shard(&inb.msg, false)
    } else {
        ids::shard_of(&inb.msg, ctx.shards.shard_count())
    };
    let me = ctx.shards.node_id();
    let may_act = known && ctx.shards.may_act(shard);
    // A call in set-up here is handled here whatever its shard (it lingers after a hand-over), and
    // so is a request without a To tag (a CANCEL, an INVITE sent again) of any call here: a call set
    // up in a shard of this node's choice (`local_calls`) is not in its Call-ID's shard.
    let setting_up = known
        && !may_act
        && inb.msg.is_request()
        && inb.msg.call_id().and_then(Result::ok).is_some_and(|c| {
            ctx.set_ups.holds(c)
                || (inb.msg.to_tag().is_none()
                    && inb
                        .msg
                        .from_tag()
                        .is_some_and(|tag| ctx.registry.has_call(c, tag)))
        });
    // A call the shard's previous owner still sets up is finished there: its messages go there.
    if may_act
        && !arrival.own_answer
        && let Some(holder) = lingering_holder(ctx, &inb, shard, me)
    {
        // A new-call INVITE of a call the holder sets up is a retransmission (its first copy came
        // before the hand-over and was answered then): no 100 from here, the holder's transaction
        // absorbs it. Marked as it came (the holder sends no 100 for a marked one either).
        let trying_sent = arrival.new_call && (taken_back || (via.is_some() && meta.trying_sent));
        let sent = ctx.relay.forward_for(
            via.unwrap_or(me),
            holder,
            shard,
            inb.msg.bytes(),
            inb.source,
            transport_name(&inb),
            ForwardMeta {
                traceparent: traceparent.clone(),
                trying_sent,
                bounces: meta.bounces,
                checked: inb.msg.is_checked(),
            },
        );
        if sent {
            ctx.stats.sent_to_lingering.fetch_add(1, Ordering::Relaxed);
            return;
        }
        // The holder cannot be reached (it died, and its calls in set-up with it): handled here.
        ctx.stats.forward_failures.fetch_add(1, Ordering::Relaxed);
    }
    let ownership = if !known || arrival.own_answer || may_act || setting_up {
        Ownership {
            may_act: true,
            owner: None,
            me,
            taking_over: false,
        }
    } else {
        Ownership {
            may_act: false,
            owner: ctx.shards.owner(shard),
            me,
            taking_over: ctx.shards.taking_over(shard),
        }
    };
    let mut decision = ingress(&arrival, config.node.unknown_source, &ownership);
    // Sent back too often: its owners could not take it for ~16 s; the caller is told to come back.
    if taken_back && meta.bounces > crate::ctx::MAX_BOUNCES && decision != Ingress::HandleHere {
        decision = Ingress::Refuse503;
    }
    if let Ingress::ForwardTo(owner) = decision {
        // 100 Trying from here, the owner sending none (one crossing less a call), when the owner
        // understands it. An INVITE taken back had its 100 when it first came in. Not while this
        // node stops: it may be gone before the owner's answers come back through it, and a caller
        // answered 100 would not retransmit (to a node still up, through the Service address); the
        // owner's own 100 comes back through here only while this node is still up to send it.
        let trying_sent = arrival.new_call
            && (taken_back
                || (!ctx.draining.load(Ordering::Relaxed) && ctx.relay.understands_trying(owner)));
        if let Some(first_copy) = forward(ctx, &inb, shard, owner, meta.bounces, trying_sent) {
            // Only the first copy: a 100 for a retransmission could reach the caller after the
            // owner's 18x (a strict caller takes that for an unexpected message). A caller whose
            // first 100 was lost retransmits until the owner's first 18x, each copy absorbed by
            // the owner's transaction.
            if trying_sent && !taken_back && first_copy {
                send_trying(ctx, transports, &inb).await;
            }
            return;
        }
        // The owner's queue is full or it cannot be reached (it is restarting: its connection is
        // being made again): counted. A new call over UDP is left to its retransmission, 500 ms
        // on, which is forwarded again (a 503 here ended calls in rolling restarts); over TCP
        // nothing is resent, so it is handled as if nobody could take it (503).
        ctx.stats.forward_failures.fetch_add(1, Ordering::Relaxed);
        decision = if arrival.new_call && !arrival.reliable {
            Ingress::Drop
        } else {
            unowned(&arrival, &ownership)
        };
    }
    // A new-call INVITE whose caller was answered 100 (by the node that forwarded it here, or by
    // this node, which took it back from its owner) is not retransmitted: what would be dropped or
    // held, waiting for a retransmission, goes back to that node to be fed again later.
    let answered_100 = arrival.new_call && (taken_back || (via.is_some() && meta.trying_sent));
    if answered_100 && matches!(decision, Ingress::Drop | Ingress::HoldForHandOver) {
        let back = match via {
            Some(v) => ctx.bounce(v, &inb, meta.bounces),
            None => ctx.take_back(inb, meta.bounces.saturating_add(1)),
        };
        if !back {
            ctx.stats.forward_failures.fetch_add(1, Ordering::Relaxed);
        }
        return;
    }
    match decision {
        Ingress::HandleHere => {}
        Ingress::ForwardTo(_) | Ingress::Drop => return,
        Ingress::Refuse403 => {
            let env = Envelope {
                msg: inb.msg.clone(),
                peer: inb.source,
                transport: inb.transport,
                via: None,
                traceparent: traceparent.clone(),
                trying_sent: false,
            };
            let bytes = local_response(&env, 403, Some(&ids::new_tag(0)), &[]);
            answer(ctx, transports, &inb, None, bytes).await;
            return;
        }
        Ingress::HoldForHandOver => {
            // This node is taking the shard over (behind its hand-over fence, normally a few ms):
            // the caller's retransmission, 500 ms on, finds it acting.
            ctx.stats.held_for_takeover.fetch_add(1, Ordering::Relaxed);
            return;
        }
        Ingress::Refuse503 => {
            if let Some(a) = overload_answer(&inb.msg, inb.source, config.node.retry_after) {
                answer(ctx, transports, &inb, via, a).await;
            }
            return;
        }
    }
    if inb.msg.is_request() {
        let Some(key) = server_key(&inb.msg) else {
            return;
        };
        let is_ack = inb.msg.method() == Some(Method::Ack);
        let reliable = inb.transport.is_reliable();
        let env = Envelope {
            msg: inb.msg.clone(),
            peer: inb.source,
            transport: inb.transport,
            via,
            traceparent: traceparent.clone(),
            // Its caller has its 100 (from the node that forwarded it, or from here when it was
            // taken back): the call sends none.
            trying_sent: arrival.new_call && (taken_back || (via.is_some() && meta.trying_sent)),
        };
        if ctx.driver.on_request(key, is_ack, env, reliable).is_err()
            && medpool_sip::transport::is_new_call(&inb.msg)
            && let Some(a) = overload_answer(&inb.msg, inb.source, config.node.retry_after)
        {
            answer(ctx, transports, &inb, via, a).await;
        }
    } else {
        let Some(key) = client_key(&inb.msg) else {
            return;
        };
        let status = inb.msg.status().unwrap_or(0);
        let env = Envelope {
            msg: inb.msg,
            peer: inb.source,
            transport: inb.transport,
            via,
            traceparent,
            trying_sent: false,
        };
        ctx.driver.on_response(key, status, env);
    }
}

/// "udp" or "tcp", as the pool's forwarding names a message's transport.
fn transport_name(inb: &Inbound) -> &'static str {
    if inb.transport.is_reliable() {
        "tcp"
    } else {
        "udp"
    }
}

/// The node still setting up the call `inb` belongs to, when that is the shard's previous owner
/// (this node took the shard over while the call was in set-up there) and no call or transaction
/// here knows the message (see [`crate::handover::route`]).
fn lingering_holder(ctx: &NodeCtx, inb: &Inbound, shard: u16, me: u64) -> Option<u64> {
    let call_id = inb.msg.call_id().and_then(Result::ok)?;
    let is_request = inb.msg.is_request();
    let facts = crate::handover::Facts {
        is_request,
        call_id,
        shard,
        known_here: false,
        me,
    };
    // The table first: it is empty but in the seconds after a hand-over.
    let crate::handover::Route::Holder(holder) =
        crate::handover::route(&ctx.elsewhere, &facts, tokio::time::Instant::now())
    else {
        return None;
    };
    // Answers to transactions here were handled as this node's own (`own_answer`); a request of
    // a call here (rebuilt from the record the holder handed over) stays here.
    let known_here = is_request
        && (ctx.registry.is_our_leg_b(call_id)
            || inb
                .msg
                .from_tag()
                .is_some_and(|tag| ctx.registry.has_call(call_id, tag)));
    (!known_here).then_some(holder)
}

/// Answers a new-call INVITE this node received from the network and handed to another node
/// 100 Trying (RFC 3261 §8.2.6.1: hop by hop, it stops the caller's retransmissions), from the
/// socket or connection it came in on; the node handling it sends none. Only its first copy (see
/// `feed`).
async fn send_trying(ctx: &NodeCtx, transports: &Transports, inb: &Inbound) {
    let env = Envelope {
        msg: inb.msg.clone(),
        peer: inb.source,
        transport: inb.transport,
        via: None,
        traceparent: None,
        trying_sent: false,
    };
    let trying = local_response(&env, 100, None, &[]);
    ctx.stats
        .trying_for_forwarded
        .fetch_add(1, Ordering::Relaxed);
    let _ = transports.send_response(inb, trying).await;
}

/// Hands a message to the owner of its shard (marked `trying_sent`: a new-call INVITE answered 100
/// Trying here; `bounces`: how many times its owners sent it back); `None` when it cannot be
/// delivered, else whether it is the first copy of a new-call INVITE forwarded from here.
fn forward(
    ctx: &NodeCtx,
    inb: &Inbound,
    shard: u16,
    owner: u64,
    bounces: u32,
    trying_sent: bool,
) -> Option<bool> {
    let t = inb.transport.as_lower();
    // A short span on the receiving node; the owner's spans continue its trace.
    let span = tracing::info_span!(
        "sip.forward",
        sip.method = inb
            .msg
            .method_bytes()
            .map(String::from_utf8_lossy)
            .unwrap_or_default()
            .as_ref(),
        sip.status = inb.msg.status().unwrap_or(0),
        shard,
        owner,
        node = ctx.shards.node_id(),
    );
    let meta = ForwardMeta {
        traceparent: crate::trace::traceparent(&span),
        trying_sent,
        bounces,
        checked: inb.msg.is_checked(),
    };
    if ctx
        .relay
        .forward(owner, shard, inb.msg.bytes(), inb.source, t, meta)
    {
        ctx.stats.forwarded.fetch_add(1, Ordering::Relaxed);
        Some(ctx.note_relayed_invite(inb, owner, bounces, trying_sent))
    } else {
        None
    }
}
