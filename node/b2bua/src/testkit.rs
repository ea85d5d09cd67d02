//! A node without sockets, for unit tests on paused time: the real transaction layer, registry and
//! actors over a [`Wire`] that is a channel. A test plays every peer: it hands the node what a
//! caller or a gateway sends ([`TestNode::receive`]) and reads what the node sent
//! ([`TestNode::sent`]).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use medpool_sip::message::builder::{MessageBuilder, response_to};
use medpool_sip::transport::{FrontDoorStats, Transport, TransportError};
use medpool_sip::{HeaderName, Method, SipMessage};
use tokio::sync::mpsc;

use crate::cluster::{NoRelay, SingleNode};
use crate::config::{PoolConfig, Side};
use crate::ctx::{CtxQueues, CtxSettings, Me, NodeCtx};
use crate::gateways::GatewayHandle;
use crate::txlayer::{Envelope, Wire, client_key, server_key};

/// A message the node put on the wire.
#[derive(Debug)]
pub(crate) struct Sent {
    pub msg: SipMessage,
    pub to: SocketAddr,
}

/// A wire that is a bounded channel.
#[derive(Debug)]
pub(crate) struct ChannelWire {
    tx: mpsc::Sender<Sent>,
    stats: FrontDoorStats,
}

impl Wire for ChannelWire {
    fn send_now(
        &self,
        _transport: Transport,
        dest: SocketAddr,
        bytes: Bytes,
    ) -> Result<(), TransportError> {
        let msg = SipMessage::parse(bytes).expect("the node sent an unparseable message");
        self.tx
            .try_send(Sent { msg, to: dest })
            .map_err(|_| TransportError::Busy)
    }
    fn stats(&self) -> &FrontDoorStats {
        &self.stats
    }
}

/// The caller (trunk "pbx") and the two gateways of [`CONFIG`].
pub(crate) const PBX: &str = "127.0.9.1:5060";
pub(crate) const GW1: &str = "127.0.9.21:5060";
pub(crate) const GW2: &str = "127.0.9.22:5060";
/// The node's own address.
pub(crate) const NODE: &str = "127.0.9.100:5060";

/// A pbx, two gateways in priority order, no OPTIONS probes.
pub(crate) const CONFIG: &str = r#"
[node]
max_tries = 3
[[trunk]]
name = "pbx"
address = "127.0.9.1"
side = "internal"
usages = ["outbound"]
[[trunk]]
name = "gw1"
address = "127.0.9.21"
side = "gateway"
options_interval_ms = 0
[[trunk]]
name = "gw2"
address = "127.0.9.22"
side = "gateway"
options_interval_ms = 0
[[route]]
name = "out"
usage = "outbound"
pattern = ".*"
trunks = [{ trunk = "gw1", priority = 1 }, { trunk = "gw2", priority = 2 }]
"#;

/// A node context over a channel wire, with the single-node pool.
pub(crate) struct TestNode {
    pub ctx: Arc<NodeCtx>,
    pub pool: Arc<SingleNode>,
    sent: mpsc::Receiver<Sent>,
    queues: CtxQueues,
}

pub(crate) fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

impl TestNode {
    /// A node context with its supervisor and its gateway table (no prober actors: no OPTIONS),
    /// signalling only (no media relay).
    pub(crate) async fn new() -> TestNode {
        Self::with(CONFIG, None).await
    }

    /// A node context with configuration `config` and the media relay `media`.
    pub(crate) async fn with(config: &str, media: Option<crate::media::MediaRuntime>) -> TestNode {
        let pool = Arc::new(SingleNode::new(1024));
        Self::with_pool(config, media, pool.clone(), pool).await
    }

    /// A node context whose shard ownership is `shards` (e.g. a shard that moves), keeping its
    /// records in `pool` (which several test nodes may share, as the pool's nodes share records).
    pub(crate) async fn with_pool(
        config: &str,
        media: Option<crate::media::MediaRuntime>,
        shards: Arc<dyn crate::cluster::ShardOwnership>,
        pool: Arc<SingleNode>,
    ) -> TestNode {
        let (tx, sent) = mpsc::channel(1024);
        let wire = Arc::new(ChannelWire {
            tx,
            stats: FrontDoorStats::default(),
        });
        let settings = CtxSettings {
            me: Me {
                hostport: NODE.to_owned(),
                local: NODE.to_owned(),
                ..Default::default()
            },
            timers: Default::default(),
            max_transactions: 10_000,
            queue: 1024,
            lanes: 1,
            trusted_forwarders: Vec::new(),
            redact_numbers: false,
            gate: Default::default(),
            media,
            dns: Arc::new(crate::dns::Directory::new(Err(
                "no DNS in unit tests".into()
            ))),
        };
        let config = PoolConfig::from_toml_str(config, "test.toml").unwrap();
        let (ctx, queues) = NodeCtx::new(
            settings,
            wire,
            config,
            shards,
            pool.clone(),
            Arc::new(NoRelay),
        );
        crate::supervisor::start(&ctx).await.unwrap();
        for trunk in ctx
            .config()
            .trunks
            .iter()
            .filter(|t| t.side == Side::Gateway)
        {
            ctx.gateways.insert(Arc::new(GatewayHandle::new(trunk)));
        }
        TestNode {
            ctx,
            pool,
            sent,
            queues,
        }
    }

    /// The node receives `bytes` from `from` over UDP (as its dispatcher would hand them to the
    /// transaction layer), and handles what the transaction layer passes up to it.
    pub(crate) async fn receive(&mut self, bytes: Bytes, from: &str) {
        let msg = SipMessage::parse(bytes).unwrap();
        let env = Envelope {
            msg: msg.clone(),
            peer: addr(from),
            transport: Transport::Udp,
            via: None,
            traceparent: None,
            trying_sent: false,
        };
        if msg.is_request() {
            let is_ack = msg.method() == Some(Method::Ack);
            let _ = self
                .ctx
                .driver
                .on_request(server_key(&msg).unwrap(), is_ack, env, false);
        } else {
            let status = msg.status().unwrap();
            self.ctx
                .driver
                .on_response(client_key(&msg).unwrap(), status, env);
        }
        while let Ok(ev) = self.queues.core.try_recv() {
            crate::node::handle_core(&self.ctx, ev).await;
        }
    }

    /// The next message the node sends (within `within` of virtual time).
    pub(crate) async fn sent(&mut self, within: Duration) -> Option<Sent> {
        tokio::time::timeout(within, self.sent.recv())
            .await
            .ok()
            .flatten()
    }

    /// The next message to `to` that is a request of `method` (or a response of `status` when
    /// `method` is None), skipping anything else; panics after 60 s of virtual time.
    pub(crate) async fn expect(&mut self, to: &str, what: Expect) -> SipMessage {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let Some(s) = self.sent(left).await else {
                panic!("{what:?} to {to} was not sent");
            };
            let hit = match what {
                Expect::Request(m) => s.msg.method() == Some(m),
                Expect::Status(st) => s.msg.status() == Some(st),
            };
            if hit && s.to == addr(to) {
                return s.msg;
            }
        }
    }

    /// Waits (virtual time) until no call is registered.
    pub(crate) async fn calls_end(&self) {
        for _ in 0..600 {
            if self.ctx.active_calls() == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("calls still up: {}", self.ctx.active_calls());
    }
}

/// What a test waits for.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Expect {
    Request(Method),
    Status(u16),
}

/// A new call's INVITE from the pbx.
pub(crate) fn invite(call_id: &str) -> Bytes {
    invite_with(call_id, b"v=0\r\n")
}

/// A new call's INVITE from the pbx with `sdp` as its body (empty: none, a late offer).
pub(crate) fn invite_with(call_id: &str, sdp: &[u8]) -> Bytes {
    let mut b = MessageBuilder::request_method(Method::Invite, b"sip:+15550100@127.0.9.100");
    b.header(
        HeaderName::Via,
        format!("SIP/2.0/UDP {PBX};branch=z9hG4bK-{call_id}").as_bytes(),
    )
    .header(HeaderName::MaxForwards, b"70")
    .header(
        HeaderName::From,
        format!("<sip:alice@{PBX}>;tag=a-{call_id}").as_bytes(),
    )
    .header(HeaderName::To, b"<sip:+15550100@127.0.9.100>")
    .header(HeaderName::CallId, call_id.as_bytes())
    .header(HeaderName::CSeq, b"1 INVITE")
    .header(HeaderName::Contact, format!("<sip:alice@{PBX}>").as_bytes());
    if !sdp.is_empty() {
        b.body(b"application/sdp", Bytes::copy_from_slice(sdp));
    }
    b.build()
}

/// A request's response from a peer at `contact`, with `tag` as its To tag and `extra` headers.
pub(crate) fn answer(
    req: &SipMessage,
    status: u16,
    tag: &str,
    contact: &str,
    extra: &[(HeaderName, &[u8])],
) -> Bytes {
    let mut b = response_to(req, status, b"X", Some(tag), None);
    b.header(HeaderName::Contact, format!("<sip:{contact}>").as_bytes());
    for (h, v) in extra {
        b.header(*h, v);
    }
    b.build()
}

/// A dialog as a peer sees it: its From and To values (its own tag in From) and the Call-ID.
pub(crate) struct PeerDialog<'a> {
    pub from: &'a [u8],
    pub to: &'a [u8],
    pub call_id: &'a [u8],
}

/// A request from the peer at `via` in dialog `d`.
pub(crate) fn in_dialog(
    method: Method,
    ruri: &str,
    via: &str,
    branch: &str,
    d: &PeerDialog<'_>,
    cseq: u32,
) -> Bytes {
    let PeerDialog { from, to, call_id } = *d;
    let name = method.as_str();
    let mut b = MessageBuilder::request_method(method, ruri.as_bytes());
    b.header(
        HeaderName::Via,
        format!("SIP/2.0/UDP {via};branch={branch}").as_bytes(),
    )
    .header(HeaderName::MaxForwards, b"70")
    .header(HeaderName::From, from)
    .header(HeaderName::To, to)
    .header(HeaderName::CallId, call_id)
    .header_fmt(HeaderName::CSeq, format_args!("{cseq} {name}"));
    b.build()
}
