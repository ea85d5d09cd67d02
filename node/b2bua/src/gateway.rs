//! The GatewayActor: one per gateway trunk on each node. It sends SIP OPTIONS every interval and
//! folds the answers (and the INVITE outcomes calls report) into the pure hysteresis of
//! [`crate::health`], then publishes the result in the gateway's [`GatewayHandle`] in the
//! [`Gateways`] table ([`crate::gateways`], re-exported here).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use medpool_sip::message::builder::MessageBuilder;
use medpool_sip::transaction::ClientKey;
use medpool_sip::{HeaderName, Method, ids};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::time::Instant;

use crate::config::{Side, Trunk};
use crate::ctx::NodeCtx;
pub use crate::gateways::{AdminState, GatewayHandle, Gateways};
use crate::health::{HealthState, InviteOutcome, ProbeOutcome, Transition, on_invite, on_probe};
use crate::txlayer::{ClientOwner, Envelope, ProbeEvent};

/// Messages of a GatewayActor.
#[derive(Debug)]
pub enum GatewayMsg {
    /// Time to probe.
    Probe,
    /// An answer to, or the failure of, a probe (from the transaction layer).
    Tx(ProbeEvent),
    /// No answer within the probe timeout.
    ProbeTimeout {
        /// Probe sequence number.
        seq: u64,
    },
    /// A call's INVITE outcome.
    Invite(InviteOutcome),
    /// Test hook: the prober panics (to show its supervisor restarts it).
    #[cfg(test)]
    PanicForTest,
}

impl From<ProbeEvent> for GatewayMsg {
    fn from(e: ProbeEvent) -> Self {
        GatewayMsg::Tx(e)
    }
}

impl TryFrom<GatewayMsg> for ProbeEvent {
    type Error = GatewayMsg;
    fn try_from(m: GatewayMsg) -> Result<Self, GatewayMsg> {
        match m {
            GatewayMsg::Tx(e) => Ok(e),
            other => Err(other),
        }
    }
}

impl From<InviteOutcome> for GatewayMsg {
    fn from(o: InviteOutcome) -> Self {
        GatewayMsg::Invite(o)
    }
}

impl TryFrom<GatewayMsg> for InviteOutcome {
    type Error = GatewayMsg;
    fn try_from(m: GatewayMsg) -> Result<Self, GatewayMsg> {
        match m {
            GatewayMsg::Invite(o) => Ok(o),
            other => Err(other),
        }
    }
}

/// Arguments of a GatewayActor.
pub struct GatewayArgs {
    /// The node.
    pub ctx: Arc<NodeCtx>,
    /// The trunk.
    pub trunk: Trunk,
    /// Its handle in the table.
    pub handle: Arc<GatewayHandle>,
}

/// The actor.
pub struct GatewayActor;

/// Its state.
pub struct GatewayState {
    ctx: Arc<NodeCtx>,
    trunk: Trunk,
    handle: Arc<GatewayHandle>,
    health: HealthState,
    seq: u64,
    outstanding: Option<(ClientKey, u64, Instant)>,
    cseq: u32,
    call_id: String,
}

impl GatewayState {
    fn apply(&mut self, t: Option<Transition>) {
        self.handle.up.store(self.health.up, Ordering::Relaxed);
        self.handle
            .failures
            .store(self.health.consecutive_failures, Ordering::Relaxed);
        match t {
            Some(Transition::WentDown) => {
                tracing::warn!(gateway = %self.trunk.name, "gateway down");
                self.ctx.gateway_changed(&self.trunk.name, false);
            }
            Some(Transition::WentUp) => {
                tracing::info!(gateway = %self.trunk.name, "gateway up");
                self.ctx.gateway_changed(&self.trunk.name, true);
            }
            None => {}
        }
    }

    fn probe_timeout(&self) -> Duration {
        self.trunk
            .options_interval()
            .unwrap_or(Duration::from_secs(5))
            .clamp(Duration::from_millis(300), Duration::from_secs(5))
    }
}

impl Actor for GatewayActor {
    type Msg = GatewayMsg;
    type State = GatewayState;
    type Arguments = GatewayArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<GatewayMsg>,
        args: GatewayArgs,
    ) -> Result<GatewayState, ActorProcessingErr> {
        if let Ok(mut a) = args.handle.actor.lock() {
            *a = Some(myself.get_derived());
        }
        if let Some(interval) = args.trunk.options_interval() {
            drop(myself.send_interval(interval, || GatewayMsg::Probe));
            let _ = myself.cast(GatewayMsg::Probe);
        }
        Ok(GatewayState {
            ctx: args.ctx,
            call_id: ids::new_call_id(0),
            trunk: args.trunk,
            handle: args.handle,
            health: HealthState::default(),
            seq: 0,
            outstanding: None,
            cseq: 0,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<GatewayMsg>,
        msg: GatewayMsg,
        st: &mut GatewayState,
    ) -> Result<(), ActorProcessingErr> {
        let (down, up) = (st.trunk.down_after, st.trunk.up_after);
        match msg {
            GatewayMsg::Probe => {
                if st.outstanding.is_some() {
                    return Ok(()); // the previous probe is still within its timeout
                }
                let Some(ip) = st.trunk.address.ip() else {
                    return Ok(());
                };
                let transport = crate::config::sip_transport(st.trunk.transport);
                let peer = std::net::SocketAddr::new(ip, st.trunk.port);
                let host = match ip {
                    std::net::IpAddr::V6(v6) => format!("[{v6}]:{}", st.trunk.port),
                    std::net::IpAddr::V4(v4) => format!("{v4}:{}", st.trunk.port),
                };
                st.seq += 1;
                st.cseq += 1;
                // From the trunk's own port when it has one (M:N trunking).
                let me = st.ctx.me.on(st.trunk.local_port);
                let branch = ids::new_branch(0);
                let mut b = MessageBuilder::request_method(
                    Method::Options,
                    format!("sip:{host}").as_bytes(),
                );
                b.header(HeaderName::Via, me.local_via(transport, &branch).as_bytes())
                    .header(HeaderName::MaxForwards, b"70")
                    .header_fmt(
                        HeaderName::From,
                        format_args!("<sip:medpool@{}>;tag={}", me.local, ids::new_tag(0)),
                    )
                    .header_fmt(HeaderName::To, format_args!("<sip:{host}>"))
                    .header(HeaderName::CallId, st.call_id.as_bytes())
                    .header_fmt(HeaderName::CSeq, format_args!("{} OPTIONS", st.cseq))
                    .header(HeaderName::Accept, b"application/sdp");
                let Some(env) = Envelope::outgoing(b.build(), peer, transport) else {
                    return Ok(());
                };
                let key = ClientKey::new(branch.as_bytes(), b"OPTIONS");
                st.ctx
                    .registry
                    .add_client(key.clone(), ClientOwner::Gateway(myself.get_derived()));
                if st
                    .ctx
                    .driver
                    .start_client(key.clone(), env, transport.is_reliable())
                    .is_err()
                {
                    st.ctx.registry.remove_client(&key);
                    return Ok(());
                }
                let seq = st.seq;
                st.outstanding = Some((key, seq, Instant::now()));
                drop(
                    myself.send_after(st.probe_timeout(), move || GatewayMsg::ProbeTimeout { seq }),
                );
            }
            GatewayMsg::Tx(ProbeEvent::Answer { key, status }) => {
                if status < 200 {
                    return Ok(());
                }
                if let Some((k, _, sent)) = &st.outstanding
                    && *k == key
                {
                    st.handle
                        .last_rtt_us
                        .store(sent.elapsed().as_micros() as u64, Ordering::Relaxed);
                    st.handle
                        .last_status
                        .store(u32::from(status), Ordering::Relaxed);
                    st.outstanding = None;
                    let (h, t) = on_probe(st.health, ProbeOutcome::Answered(status), down, up);
                    st.health = h;
                    st.apply(t);
                }
            }
            GatewayMsg::Tx(ProbeEvent::Failed { key }) => {
                if st.outstanding.as_ref().is_some_and(|(k, _, _)| *k == key) {
                    st.outstanding = None;
                    st.handle.last_status.store(0, Ordering::Relaxed);
                    let (h, t) = on_probe(st.health, ProbeOutcome::TransportError, down, up);
                    st.health = h;
                    st.apply(t);
                }
            }
            GatewayMsg::ProbeTimeout { seq } => {
                if st.outstanding.as_ref().is_some_and(|(_, s, _)| *s == seq) {
                    st.outstanding = None;
                    st.handle.last_status.store(0, Ordering::Relaxed);
                    let (h, t) = on_probe(st.health, ProbeOutcome::Timeout, down, up);
                    st.health = h;
                    st.apply(t);
                }
            }
            GatewayMsg::Invite(outcome) => {
                let (h, t) = on_invite(st.health, outcome, down, up);
                st.health = h;
                st.apply(t);
            }
            #[cfg(test)]
            GatewayMsg::PanicForTest => panic!("a panic planted by a test"),
        }
        Ok(())
    }
}

/// Starts a new prober for a gateway whose prober died (its health starts over, as after a
/// configuration change; its call count and operator state are the handle's and carry on).
pub(crate) async fn restart(ctx: &Arc<NodeCtx>, handle: Arc<GatewayHandle>) {
    let Some(trunk) = ctx.config().trunk(&handle.name).cloned() else {
        return; // removed from the configuration meanwhile
    };
    if let Err(e) = spawn(GatewayArgs {
        ctx: ctx.clone(),
        trunk,
        handle,
    })
    .await
    {
        tracing::error!(error = %e, "cannot restart a gateway prober");
    }
}

/// Starts a GatewayActor, linked to the node's supervisor (when it has one).
pub(crate) async fn spawn(args: GatewayArgs) -> Result<ActorRef<GatewayMsg>, ractor::SpawnErr> {
    let (actor, _handle) = match args.ctx.supervisor() {
        Some(sup) => Actor::spawn_linked(None, GatewayActor, args, sup).await?,
        None => Actor::spawn(None, GatewayActor, args).await?,
    };
    Ok(actor)
}

/// Builds the gateway table for a configuration and starts one actor per gateway trunk.
pub async fn start_all(ctx: &Arc<NodeCtx>, trunks: &[Trunk]) -> Result<(), ractor::SpawnErr> {
    for trunk in trunks.iter().filter(|t| t.side == Side::Gateway) {
        let handle = Arc::new(GatewayHandle::new(trunk));
        ctx.gateways.insert(handle.clone());
        spawn(GatewayArgs {
            ctx: ctx.clone(),
            trunk: trunk.clone(),
            handle,
        })
        .await?;
    }
    Ok(())
}

/// Brings the gateway actors in line with a new configuration: a gateway trunk that is new, or whose
/// address, probing or thresholds changed, gets a fresh actor (its health starts up again, its call
/// count carries over); a trunk that is gone is stopped and forgotten. Unchanged gateways keep their
/// actor and state.
pub async fn reconcile(
    ctx: &Arc<NodeCtx>,
    old: &[Trunk],
    new: &[Trunk],
) -> Result<(), ractor::SpawnErr> {
    let gateways = |ts: &[Trunk]| -> BTreeMap<String, Trunk> {
        ts.iter()
            .filter(|t| t.side == Side::Gateway)
            .map(|t| (t.name.clone(), t.clone()))
            .collect()
    };
    let (old, new) = (gateways(old), gateways(new));
    for (name, trunk) in &old {
        if new.get(name) != Some(trunk)
            && let Some(h) = ctx.gateways.get(name)
        {
            if let Ok(a) = h.actor.lock()
                && let Some(a) = a.as_ref()
            {
                a.stop(Some("configuration changed".into()));
            }
            if !new.contains_key(name) {
                ctx.gateways.remove(name);
            }
        }
    }
    for (name, trunk) in &new {
        if old.get(name) == Some(trunk) {
            continue;
        }
        let handle = Arc::new(GatewayHandle::new(trunk));
        if let Some(prev) = ctx.gateways.get(name) {
            handle.active.store(prev.active_calls(), Ordering::Relaxed);
            handle.enabled.store(prev.is_enabled(), Ordering::Relaxed);
        }
        ctx.gateways.insert(handle.clone());
        spawn(GatewayArgs {
            ctx: ctx.clone(),
            trunk: trunk.clone(),
            handle,
        })
        .await?;
    }
    Ok(())
}

/// Stops every GatewayActor.
pub fn stop_all(ctx: &NodeCtx) {
    for h in ctx.gateways.all() {
        if let Ok(a) = h.actor.lock()
            && let Some(a) = a.as_ref()
        {
            a.stop(None);
        }
    }
}
