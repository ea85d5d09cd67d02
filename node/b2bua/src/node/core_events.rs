//! What the transaction layer raises that no call takes ([`CoreEvent`]): a request outside any
//! dialog or call known here — OPTIONS answered, a new INVITE admitted (node and trunk capacity,
//! calls per second, shard ownership) and handed to a new call actor, other methods refused, an
//! unknown dialog 481 — and a 2xx to one of our INVITEs that no call knows any more (ACKed and hung
//! up, towards its own trunk only).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use medpool_sip::{HeaderName, Method, ids};

use crate::config::PoolConfig;
use crate::ctx::NodeCtx;
use crate::dialog::{self, DialogArgs, leg::local_response};
use crate::txlayer::{CoreEvent, Envelope};

fn respond(
    ctx: &NodeCtx,
    key: &medpool_sip::transaction::ServerKey,
    env: &Envelope,
    status: u16,
    extra: &[(HeaderName, &[u8])],
) {
    let bytes = local_response(env, status, Some(&ids::new_tag(0)), extra);
    let _ = ctx.driver.respond(key, status, env.reply(bytes));
}

pub(crate) async fn handle_core(ctx: &Arc<NodeCtx>, ev: CoreEvent) {
    match ev {
        CoreEvent::Unrouted { key, env } => unrouted(ctx, key, env).await,
        CoreEvent::OrphanAnswer { env } => orphan_answer(ctx, &env),
    }
}

/// ACKs a 2xx to one of our INVITEs that no call knows any more (its call ended or moved before
/// the gateway answered: an abandoned attempt whose late answer outlived its call) and hangs the
/// leg up, so that it is not left up at the gateway. A resent copy is only ACKed again. Only a 2xx
/// whose Call-ID this pool minted (its MAC holds) and that came from a trunk is acted on, and only
/// towards that trunk ([`orphan_target`]): a forged 2xx cannot make the node send to a third party.
fn orphan_answer(ctx: &NodeCtx, env: &Envelope) {
    let Some(mut leg) = dialog::leg::Leg::from_answer(&env.msg, env.peer, env.transport) else {
        return;
    };
    if !ids::is_minted_call_id(&leg.call_id) {
        ctx.stats.forged_answers.fetch_add(1, Ordering::Relaxed);
        return;
    }
    let Some(target) = orphan_target(&ctx.config(), &ctx.dns, env.peer, leg.next_hop()) else {
        ctx.stats.forged_answers.fetch_add(1, Ordering::Relaxed);
        return;
    };
    let shard = ids::shard_in(&leg.call_id).unwrap_or(0);
    if ctx.shards.recently_taken(shard) {
        // Its call may still be on its way here (a late record of the old owner): the gateway
        // resends its 2xx for 32 s, and a later copy finds the call, or is hung up then.
        return;
    }
    let ack = leg
        .request(&ctx.me, b"ACK", leg.local_cseq, &ids::new_branch(shard))
        .build();
    let _ = ctx.transports.send_now(leg.transport, target, ack);
    if !ctx.first_orphan_answer(&leg.call_id) {
        return;
    }
    ctx.stats.orphan_answers.fetch_add(1, Ordering::Relaxed);
    tracing::info!(
        call_id = %String::from_utf8_lossy(&leg.call_id),
        "a gateway answered a leg no call knows any more: ACK and BYE"
    );
    leg.local_cseq += 1;
    let mut bye = leg.request(&ctx.me, b"BYE", leg.local_cseq, &ids::new_branch(shard));
    bye.header(
        HeaderName::Reason,
        b"SIP;cause=200;text=\"Call completed elsewhere\"",
    );
    if let Some(env) = Envelope::outgoing(bye.build(), target, leg.transport)
        && let Some(key) = crate::txlayer::client_key_of_request(&env.msg)
    {
        let _ = ctx
            .driver
            .start_client(key, env, leg.transport.is_reliable());
    }
}

/// Where the ACK and BYE for an orphan 2xx that came `from` may go: its `next_hop` (Contact or
/// Record-Route) when that is an address of the same trunk, else back where it came from; nowhere
/// when it came from no trunk.
pub(super) fn orphan_target(
    config: &PoolConfig,
    dns: &crate::dns::Directory,
    from: SocketAddr,
    next_hop: SocketAddr,
) -> Option<SocketAddr> {
    let trunk_of = |ip: std::net::IpAddr| dns.trunk_of_ip(config, ip);
    let came_from = trunk_of(from.ip())?;
    if trunk_of(next_hop.ip()) == Some(came_from) {
        Some(next_hop)
    } else {
        Some(from)
    }
}

async fn unrouted(ctx: &Arc<NodeCtx>, key: medpool_sip::transaction::ServerKey, env: Envelope) {
    let msg = &env.msg;
    let allow = medpool_sip::check::ALLOWED_METHODS.as_bytes();
    let in_dialog = msg.to_tag().is_some();
    match msg.method() {
        Some(Method::Invite) if !in_dialog => new_call(ctx, key, env).await,
        Some(Method::Options) if !in_dialog => respond(
            ctx,
            &key,
            &env,
            200,
            &[
                (HeaderName::Allow, allow),
                (HeaderName::Accept, b"application/sdp"),
                (HeaderName::Supported, b"100rel, timer"),
            ],
        ),
        Some(Method::Register | Method::Subscribe | Method::Publish | Method::Message)
            if !in_dialog =>
        {
            respond(ctx, &key, &env, 405, &[(HeaderName::Allow, allow)])
        }
        Some(Method::Ack) => {}
        _ if in_dialog
            && !env.transport.is_reliable()
            && ctx
                .shards
                .recently_taken(ids::shard_of(msg, ctx.shards.shard_count())) =>
        {
            // This node took the call's shard over moments ago: its record may still be on its way
            // (the old owner answered it just before a partition and retries the write). No 481,
            // which would end the call at the far side: over UDP the far side retransmits, and a
            // later copy finds the call once its record is here.
            tracing::debug!(
                "in-dialog request for a call not (yet) known on a newly taken shard: no answer"
            );
            ctx.driver.abandon(&key);
        }
        _ => respond(ctx, &key, &env, 481, &[]),
    }
}

async fn new_call(ctx: &Arc<NodeCtx>, key: medpool_sip::transaction::ServerKey, env: Envelope) {
    let config = ctx.config();
    let retry = config.node.retry_after.to_string();
    let busy: &[(HeaderName, &[u8])] = &[(HeaderName::RetryAfter, retry.as_bytes())];
    let msg = &env.msg;
    let Some(Ok(call_id)) = msg.call_id() else {
        return;
    };
    if ctx.registry.is_our_leg_b(call_id) {
        respond(ctx, &key, &env, 482, &[]);
        return;
    }
    let Some(inbound) = ctx
        .dns
        .trunk_for_source(&config, env.peer.ip(), env.peer.port())
        .and_then(|t| crate::config::SharedTrunk::of(&config, t))
    else {
        respond(ctx, &key, &env, 403, &[]);
        return;
    };
    if ctx.draining.load(Ordering::Relaxed) || ctx.active_calls() >= config.node.max_calls as usize
    {
        ctx.stats
            .calls_refused_capacity
            .fetch_add(1, Ordering::Relaxed);
        respond(ctx, &key, &env, 503, busy);
        return;
    }
    // The inbound trunk's own capacity.
    if let Some(max) = inbound.max_calls {
        let full = ctx
            .inbound_calls
            .lock()
            .map(|m| m.get(&inbound.name).copied().unwrap_or(0) >= max)
            .unwrap_or(false);
        if full {
            ctx.stats
                .calls_refused_capacity
                .fetch_add(1, Ordering::Relaxed);
            respond(ctx, &key, &env, 503, busy);
            return;
        }
    }
    // ... and its calls per second.
    if let Some(cps) = inbound.max_cps {
        let now = ctx.epoch.elapsed();
        let allowed = ctx
            .inbound_cps
            .lock()
            .map(|mut m| {
                m.entry(inbound.name.clone())
                    .or_insert_with(|| crate::health::TokenBucket::for_cps(cps))
                    .try_take(now)
            })
            .unwrap_or(true);
        if !allowed {
            ctx.stats
                .calls_refused_capacity
                .fetch_add(1, Ordering::Relaxed);
            respond(ctx, &key, &env, 503, busy);
            return;
        }
    }
    // Its Call-ID's shard, or one this node chose for it (`NodeCtx::new_call_shard`).
    let shard = ctx.new_call_shard(msg, env.via.is_some());
    if !ctx.shards.may_act(shard) {
        // The shard moved away between the ingress (which found this node acting for it) and
        // here. In a planned move over UDP the INVITE is left to its retransmission, which the
        // ingress then sends to the new owner; otherwise nobody can take it now (503).
        if !env.transport.is_reliable() && ctx.shards.hands_over() {
            tracing::debug!(
                shard,
                "new call on a shard that just moved away: left to its retransmission"
            );
            ctx.stats.held_for_takeover.fetch_add(1, Ordering::Relaxed);
            ctx.driver.abandon(&key);
            return;
        }
        respond(ctx, &key, &env, 503, busy);
        return;
    }
    if let Ok(mut m) = ctx.inbound_calls.lock() {
        *m.entry(inbound.name.clone()).or_insert(0) += 1;
    }
    let inbound_name = inbound.name.clone();
    let args = DialogArgs {
        ctx: ctx.clone(),
        key: key.clone(),
        env: env.clone(),
        inbound,
        shard,
    };
    let began = tokio::time::Instant::now();
    // Not awaited: the actor starts on whichever worker is free while the dispatcher goes on.
    let spawned = dialog::spawn(args);
    ctx.stats.stages.call_start.observe(began.elapsed());
    match spawned {
        Ok(_actor) => {
            ctx.stats.calls_started.fetch_add(1, Ordering::Relaxed);
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot start a call");
            ctx.call_ended(&inbound_name, 500, Duration::ZERO);
            respond(ctx, &key, &env, 500, &[]);
        }
    }
}
