//! Prometheus metrics (`prometheus-client`), served as text on `--metrics-listen` at `/metrics`.
//! Everything is read at scrape time from the counters the libraries already keep (atomics; no lock on
//! a call path): calls by trunk and gateway, SIP traffic by method and status class, retransmissions,
//! front-door refusals, gateway health, post-dial delay, and — in a pool — Raft term, leader,
//! commit/applied, shards owned, lease, forwarding and dialog-record replication.
//!
//! Inside, one family of metrics a file: `calls`, `sip`, `gateways`, `media`, `pool`, written with
//! `family`'s helpers; `endpoint` serves them over HTTP.

mod calls;
mod endpoint;
mod family;
mod gateways;
mod media;
mod pool;
mod sip;

use std::sync::Arc;

use medpool_b2bua::node::NodeCtx;
use medpool_cluster::pool::Pool;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::registry::Registry;

pub use endpoint::{MAX_SCRAPES, SCRAPE_TIMEOUT, serve};

/// Reads the node (and pool) at scrape time.
#[derive(Debug)]
pub struct NodeCollector {
    ctx: Arc<NodeCtx>,
    pool: Option<Arc<Pool>>,
}

impl Collector for NodeCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let ctx = &self.ctx;
        calls::encode(&mut e, ctx)?;
        sip::encode(&mut e, ctx)?;
        gateways::encode(&mut e, ctx)?;
        if let Some(media) = &ctx.media {
            media::encode(&mut e, media, &ctx.stats)?;
        }
        // The pool.
        if let Some(pool) = &self.pool {
            pool::encode(&mut e, pool)?;
        }
        Ok(())
    }
}

/// A registry with the node collector.
pub fn registry(ctx: Arc<NodeCtx>, pool: Option<Arc<Pool>>) -> Registry {
    let mut r = Registry::default();
    r.register_collector(Box::new(NodeCollector { ctx, pool }));
    r
}
