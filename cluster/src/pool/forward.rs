//! SIP forwarding between nodes: a message received for a shard another node owns (or an answer
//! that must leave from another node's socket) goes over one ordered, bounded queue per peer, and
//! from there over one long-lived gRPC stream (`ForwardStream`) to that peer: no request and
//! answer per message, and never only one message in flight. A peer that does not serve the
//! stream (a node of an older version during a rolling upgrade) is sent one `Forward` per message.

use std::time::Duration;

use medpool_proto::cluster::SipForward;
use medpool_proto::cluster::cluster_client::ClusterClient;
use tokio::sync::mpsc;
use tonic::transport::Channel;

use crate::stats::{Rpc, STATS};
use crate::typ::NodeId;

use super::Pool;

/// Messages waiting for a peer: when a peer is slow, SIP messages are dropped (and retransmitted by
/// their senders) rather than queued without limit.
const QUEUE: usize = 4096;
/// Messages handed to one stream and not yet written by it.
const STREAM_QUEUE: usize = 256;
/// A stream that ended with an error is reopened after this pause (the peer may be down: a stream
/// per message would only spin).
const REOPEN_AFTER: Duration = Duration::from_millis(100);
/// A unary forward waits at most this long.
const UNARY_TIMEOUT: Duration = Duration::from_secs(1);

impl Pool {
    /// Sends a SIP message to another node (fire and forget; SIP retransmits on loss).
    pub fn forward(&self, node: NodeId, msg: SipForward) -> bool {
        let existing = self
            .forwarders
            .lock()
            .ok()
            .and_then(|f| f.get(&node).cloned());
        let tx = match existing {
            Some(tx) if !tx.is_closed() => tx,
            _ => {
                let Some(c) = self.client_for(node) else {
                    return false;
                };
                let (tx, rx) = mpsc::channel::<SipForward>(QUEUE);
                tokio::spawn(forwarder(node, c, rx));
                if let Ok(mut f) = self.forwarders.lock() {
                    f.insert(node, tx.clone());
                }
                tx
            }
        };
        tx.try_send(msg).is_ok()
    }
}

/// Sends what arrives on `rx` to `node`, on a stream while the peer serves one, else unary. Ends
/// when the pool drops the queue's sender.
async fn forwarder(
    node: NodeId,
    client: ClusterClient<Channel>,
    mut rx: mpsc::Receiver<SipForward>,
) {
    let mut held: Option<SipForward> = None;
    loop {
        match stream_until_broken(node, &client, &mut rx, &mut held).await {
            StreamEnd::QueueClosed => return,
            StreamEnd::Broken => tokio::time::sleep(REOPEN_AFTER).await,
            StreamEnd::Unsupported => break,
        }
    }
    tracing::debug!(
        node,
        "peer serves no forward stream: one forward per message"
    );
    if let Some(m) = held.take() {
        unary(client.clone(), m).await;
    }
    while let Some(m) = rx.recv().await {
        unary(client.clone(), m).await;
    }
}

/// How a stream ended.
enum StreamEnd {
    /// The pool dropped the queue: the forwarder ends.
    QueueClosed,
    /// The stream failed (the peer restarted, the connection broke): open another.
    Broken,
    /// The peer does not know `ForwardStream`.
    Unsupported,
}

/// Opens one stream to `node` and writes the queue into it until the stream breaks. A message
/// taken from the queue but not written (the stream had just closed) is kept in `held` for the
/// next stream.
async fn stream_until_broken(
    node: NodeId,
    client: &ClusterClient<Channel>,
    rx: &mut mpsc::Receiver<SipForward>,
    held: &mut Option<SipForward>,
) -> StreamEnd {
    // Nothing is opened before there is something to send.
    let first = match held.take() {
        Some(m) => m,
        None => match rx.recv().await {
            Some(m) => m,
            None => return StreamEnd::QueueClosed,
        },
    };
    let (stx, srx) = mpsc::channel::<SipForward>(STREAM_QUEUE);
    let body =
        futures_util::stream::unfold(
            srx,
            |mut srx| async move { srx.recv().await.map(|m| (m, srx)) },
        );
    let mut c = client.clone();
    let mut call = tokio::spawn(async move { c.forward_stream(body).await });
    STATS.rpc(Rpc::Forward, true);
    let mut next = Some(first);
    loop {
        let msg = match next.take() {
            Some(m) => m,
            None => tokio::select! {
                m = rx.recv() => match m {
                    Some(m) => m,
                    None => return StreamEnd::QueueClosed,
                },
                ended = &mut call => return stream_ended(node, ended),
            },
        };
        let started = tokio::time::Instant::now();
        let bytes = msg.message.len() as u64;
        if let Err(mpsc::error::SendError(m)) = stx.send(msg).await {
            *held = Some(m);
            return stream_ended(node, call.await);
        }
        STATS.forward_out.since(1, bytes, started);
    }
}

fn stream_ended(
    node: NodeId,
    ended: Result<
        Result<tonic::Response<medpool_proto::cluster::ForwardAck>, tonic::Status>,
        tokio::task::JoinError,
    >,
) -> StreamEnd {
    match ended {
        Ok(Err(s)) if s.code() == tonic::Code::Unimplemented => StreamEnd::Unsupported,
        Ok(Err(s)) => {
            tracing::debug!(node, status = %s, "forward stream ended; reopened");
            StreamEnd::Broken
        }
        _ => StreamEnd::Broken,
    }
}

async fn unary(mut client: ClusterClient<Channel>, msg: SipForward) {
    let started = tokio::time::Instant::now();
    let bytes = msg.message.len() as u64;
    STATS.rpc(Rpc::Forward, true);
    let sent = tokio::time::timeout(UNARY_TIMEOUT, client.forward(msg)).await;
    STATS.forward_out.since(1, bytes, started);
    if sent.is_err() {
        tracing::debug!("forward timed out");
    }
}
