//! Asking the other nodes' admin APIs (fan-out): a call, a gateway view or a status lives on one
//! node, and any node answers for the pool. Each node is asked in parallel with a short timeout;
//! one that does not answer is *unavailable* (reported in the reply), never a failure of the
//! request. Channels are cached per address and reconnect by themselves.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;

use medpool_proto::admin::medpool_admin_client::MedpoolAdminClient;
use tonic::Status;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

use super::auth::{AddToken, Token};

/// An admin client of another node (with our token).
pub type PeerClient = MedpoolAdminClient<InterceptedService<Channel, AddToken>>;

/// What a fan-out gathered.
#[derive(Debug)]
pub struct Gathered<T> {
    /// Answers, by node.
    pub answers: Vec<(u64, T)>,
    /// Nodes that did not answer in time or could not be reached.
    pub unavailable: Vec<u64>,
    /// Nodes that answered with an error.
    pub errors: Vec<(u64, Status)>,
}

/// The other nodes' admin APIs.
#[derive(Debug)]
pub struct Peers {
    token: Option<Token>,
    tls: Option<ClientTlsConfig>,
    timeout: Duration,
    channels: Mutex<BTreeMap<String, Channel>>,
}

impl Peers {
    /// Clients with `token`, over TLS when `tls` is given, waiting `timeout` for each answer.
    pub fn new(token: Option<Token>, tls: Option<ClientTlsConfig>, timeout: Duration) -> Peers {
        Peers {
            token,
            tls,
            timeout,
            channels: Mutex::new(BTreeMap::new()),
        }
    }

    /// The client of the node whose admin API is at `addr` (`host:port`).
    pub fn client(&self, addr: &str) -> Option<PeerClient> {
        let cached = self.channels.lock().ok().and_then(|c| c.get(addr).cloned());
        let channel = match cached {
            Some(c) => c,
            None => {
                let scheme = if self.tls.is_some() { "https" } else { "http" };
                let mut ep = Endpoint::from_shared(format!("{scheme}://{addr}"))
                    .ok()?
                    .connect_timeout(self.timeout)
                    .tcp_nodelay(true);
                if let Some(tls) = &self.tls {
                    ep = ep.tls_config(tls.clone()).ok()?;
                }
                let c = ep.connect_lazy();
                if let Ok(mut m) = self.channels.lock() {
                    m.insert(addr.to_owned(), c.clone());
                }
                c
            }
        };
        Some(MedpoolAdminClient::with_interceptor(
            channel,
            AddToken(self.token.clone()),
        ))
    }

    /// Asks every node of `nodes` (`(id, admin address)`) in parallel.
    pub async fn gather<T, F, Fut>(&self, nodes: Vec<(u64, String)>, ask: F) -> Gathered<T>
    where
        F: Fn(PeerClient) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        self.gather_within(self.timeout, nodes, ask).await
    }

    async fn gather_within<T, F, Fut>(
        &self,
        timeout: Duration,
        nodes: Vec<(u64, String)>,
        ask: F,
    ) -> Gathered<T>
    where
        F: Fn(PeerClient) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let calls = nodes.into_iter().map(|(id, addr)| {
            let client = self.client(&addr);
            let fut = client.map(&ask);
            async move {
                let Some(fut) = fut else {
                    return (id, None);
                };
                match tokio::time::timeout(timeout, fut).await {
                    Ok(r) => (id, Some(r)),
                    Err(_) => (id, None),
                }
            }
        });
        let mut out = Gathered {
            answers: Vec::new(),
            unavailable: Vec::new(),
            errors: Vec::new(),
        };
        for (id, r) in futures_util::future::join_all(calls).await {
            match r {
                Some(Ok(answer)) => out.answers.push((id, answer.into_inner())),
                Some(Err(s))
                    if matches!(
                        s.code(),
                        tonic::Code::Unavailable
                            | tonic::Code::DeadlineExceeded
                            | tonic::Code::Cancelled
                    ) =>
                {
                    out.unavailable.push(id);
                }
                Some(Err(s)) => out.errors.push((id, s)),
                None => out.unavailable.push(id),
            }
        }
        out
    }

    /// Asks one node, waiting up to `timeout`: its answer, its error, or `Err(None)` when it could
    /// not be reached in time.
    pub async fn ask<T, F, Fut>(
        &self,
        node: u64,
        addr: &str,
        timeout: Duration,
        ask: F,
    ) -> Result<T, Option<Status>>
    where
        F: Fn(PeerClient) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let mut g = self
            .gather_within(timeout, vec![(node, addr.to_owned())], ask)
            .await;
        if let Some((_, t)) = g.answers.pop() {
            return Ok(t);
        }
        Err(g.errors.pop().map(|(_, s)| s))
    }
}
