//! Gateway health and load, per node: one GatewayActor per gateway trunk sends SIP OPTIONS every
//! interval and folds the answers (and the INVITE outcomes calls report) into the pure hysteresis of
//! [`crate::health`]; the [`Gateways`] table publishes each gateway's state in atomics that routing
//! reads without a round trip ([`crate::health::HealthView`]), and counts active calls and CPS against
//! the trunk's capacity.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use medpool_sip::message::builder::MessageBuilder;
use medpool_sip::transaction::ClientKey;
use medpool_sip::transport::Transport;
use medpool_sip::{HeaderName, Method, ids};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::time::Instant;

use crate::config::{Side, Trunk};
use crate::health::{
    GatewayView, HealthState, HealthView, InviteOutcome, ProbeOutcome, TokenBucket, Transition,
    on_invite, on_probe,
};
use crate::node::NodeCtx;
use crate::sipcore::{Envelope, Owner};

/// An operator's choice for a gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminState {
    /// In service.
    Enabled,
    /// No new calls; existing calls continue (drain and disable behave the same for new calls).
    Disabled,
}

/// Shared, lock-free state of one gateway on this node.
#[derive(Debug)]
pub struct GatewayHandle {
    /// The trunk's name.
    pub name: String,
    up: AtomicBool,
    enabled: AtomicBool,
    active: AtomicU32,
    max_calls: Option<u32>,
    cps: Option<Mutex<TokenBucket>>,
    epoch: Instant,
    /// Last OPTIONS round trip in microseconds (0 = none yet).
    pub last_rtt_us: AtomicU64,
    /// Last OPTIONS answer status (0 = none / timeout).
    pub last_status: AtomicU32,
    /// Consecutive failures.
    pub failures: AtomicU32,
    actor: Mutex<Option<ActorRef<GatewayMsg>>>,
}

impl GatewayHandle {
    fn new(trunk: &Trunk) -> GatewayHandle {
        GatewayHandle {
            name: trunk.name.clone(),
            up: AtomicBool::new(true),
            enabled: AtomicBool::new(true),
            active: AtomicU32::new(0),
            max_calls: trunk.max_calls,
            cps: trunk.max_cps.map(|c| Mutex::new(TokenBucket::for_cps(c))),
            epoch: Instant::now(),
            last_rtt_us: AtomicU64::new(0),
            last_status: AtomicU32::new(0),
            failures: AtomicU32::new(0),
            actor: Mutex::new(None),
        }
    }
    /// Whether the gateway is up (health).
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }
    /// Whether an operator allows new calls.
    pub fn is_enabled(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }
    /// Active calls through it on this node.
    pub fn active_calls(&self) -> u32 {
        self.active.load(Ordering::Relaxed)
    }
    fn view(&self) -> GatewayView {
        let active = self.active_calls();
        let full = self.max_calls.is_some_and(|m| active >= m);
        let no_token = self
            .cps
            .as_ref()
            .and_then(|b| b.lock().ok().map(|b| !b.has_token(self.epoch.elapsed())))
            .unwrap_or(false);
        GatewayView {
            up: self.is_up(),
            enabled: self.is_enabled(),
            active_calls: active,
            at_capacity: full || no_token,
        }
    }
}

/// Every gateway of this node, by trunk name.
#[derive(Debug, Default)]
pub struct Gateways {
    table: std::sync::RwLock<BTreeMap<String, Arc<GatewayHandle>>>,
}

impl HealthView for Gateways {
    fn view(&self, trunk: &str) -> GatewayView {
        self.get(trunk).map(|h| h.view()).unwrap_or_default()
    }
}

impl Gateways {
    /// The handle of a trunk.
    pub fn get(&self, trunk: &str) -> Option<Arc<GatewayHandle>> {
        self.table.read().ok().and_then(|t| t.get(trunk).cloned())
    }
    /// Every handle.
    pub fn all(&self) -> Vec<Arc<GatewayHandle>> {
        self.table
            .read()
            .map(|t| t.values().cloned().collect())
            .unwrap_or_default()
    }
    /// Takes one call slot (capacity and CPS) on a trunk; false when it is full.
    pub fn try_acquire(&self, trunk: &Trunk) -> bool {
        let Some(h) = self.get(&trunk.name) else {
            return true; // not a gateway we track (e.g. an internal trunk as target)
        };
        if !h.is_enabled() {
            return false;
        }
        if let Some(m) = h.max_calls
            && h.active_calls() >= m
        {
            return false;
        }
        if let Some(b) = &h.cps
            && let Ok(mut b) = b.lock()
            && !b.try_take(h.epoch.elapsed())
        {
            return false;
        }
        h.active.fetch_add(1, Ordering::Relaxed);
        true
    }
    /// Gives a call slot back.
    pub fn release(&self, trunk: &str) {
        if let Some(h) = self.get(trunk) {
            let _ = h
                .active
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                    Some(v.saturating_sub(1))
                });
        }
    }
    /// A call reports how an INVITE to the gateway went (passive health).
    pub fn invite_outcome(&self, trunk: &str, outcome: InviteOutcome) {
        if let Some(h) = self.get(trunk)
            && let Ok(a) = h.actor.lock()
            && let Some(a) = a.as_ref()
        {
            let _ = a.cast(GatewayMsg::Invite(outcome));
        }
    }
    /// Enables or disables new calls to a gateway.
    pub fn set_admin(&self, trunk: &str, state: AdminState) -> bool {
        match self.get(trunk) {
            Some(h) => {
                h.enabled
                    .store(state == AdminState::Enabled, Ordering::Relaxed);
                true
            }
            None => false,
        }
    }
}

/// Messages of a GatewayActor.
#[derive(Debug)]
pub enum GatewayMsg {
    /// Time to probe.
    Probe,
    /// The probe with this key was answered.
    ProbeAnswer {
        /// The OPTIONS transaction.
        key: ClientKey,
        /// Status.
        status: u16,
    },
    /// The probe's transaction failed (transport error or Timer F).
    ProbeFailed {
        /// The OPTIONS transaction.
        key: ClientKey,
    },
    /// No answer within the probe timeout.
    ProbeTimeout {
        /// Probe sequence number.
        seq: u64,
    },
    /// A call's INVITE outcome.
    Invite(InviteOutcome),
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
            *a = Some(myself.clone());
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
                let transport = match st.trunk.transport {
                    crate::config::Transport::Udp => Transport::Udp,
                    crate::config::Transport::Tcp => Transport::Tcp,
                };
                let peer = std::net::SocketAddr::new(ip, st.trunk.port);
                let host = match ip {
                    std::net::IpAddr::V6(v6) => format!("[{v6}]:{}", st.trunk.port),
                    std::net::IpAddr::V4(v4) => format!("{v4}:{}", st.trunk.port),
                };
                st.seq += 1;
                st.cseq += 1;
                let me = &st.ctx.me;
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
                    .add_client(key.clone(), Owner::Gateway(myself.clone()));
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
            GatewayMsg::ProbeAnswer { key, status } => {
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
            GatewayMsg::ProbeFailed { key } => {
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
        }
        Ok(())
    }
}

/// Builds the gateway table for a configuration and starts one actor per gateway trunk.
pub async fn start_all(ctx: &Arc<NodeCtx>, trunks: &[Trunk]) -> Result<(), ractor::SpawnErr> {
    for trunk in trunks.iter().filter(|t| t.side == Side::Gateway) {
        let handle = Arc::new(GatewayHandle::new(trunk));
        if let Ok(mut t) = ctx.gateways.table.write() {
            t.insert(trunk.name.clone(), handle.clone());
        }
        Actor::spawn(
            None,
            GatewayActor,
            GatewayArgs {
                ctx: ctx.clone(),
                trunk: trunk.clone(),
                handle,
            },
        )
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
            if !new.contains_key(name)
                && let Ok(mut t) = ctx.gateways.table.write()
            {
                t.remove(name);
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
        if let Ok(mut t) = ctx.gateways.table.write() {
            t.insert(name.clone(), handle.clone());
        }
        Actor::spawn(
            None,
            GatewayActor,
            GatewayArgs {
                ctx: ctx.clone(),
                trunk: trunk.clone(),
                handle,
            },
        )
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
