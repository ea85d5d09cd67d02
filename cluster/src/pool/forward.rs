//! SIP forwarding between nodes: a message received for a shard another node owns (or an answer
//! that must leave from another node's socket) goes over one ordered, bounded queue per peer, and
//! from there over one long-lived gRPC stream (`ForwardStream`) to that peer: no request and
//! answer per message, and never only one message in flight. The stream's body reads the peer's
//! queue itself, so a message goes from the sender to the h2 connection without a task of its own
//! in between. A peer that does not serve the stream (a node of an older version during a rolling
//! upgrade) is sent one `Forward` per message.

use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::StreamExt;

use medpool_proto::cluster::SipForward;
use medpool_proto::cluster::cluster_client::ClusterClient;
use tokio::sync::mpsc;
use tonic::transport::Channel;

use crate::stats::{Rpc, STATS};
use crate::typ::NodeId;

use super::{Pool, PoolSink};

/// Messages waiting for a peer: when a peer is slow, SIP messages are dropped (and retransmitted by
/// their senders) rather than queued without limit.
const QUEUE: usize = 4096;
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
                tokio::spawn(forwarder(node, c, rx, self.sink()));
                if let Ok(mut f) = self.forwarders.lock() {
                    f.insert(node, tx.clone());
                }
                tx
            }
        };
        tx.try_send(msg).is_ok()
    }

    /// Whether `node` understands a new-call INVITE marked `trying_sent` (it sends no 100 for it
    /// and sends back what it cannot take): its last answer or INVITE sent back through this node
    /// said so (`understands_trying`). Unknown until then, and false again once a message of its
    /// says otherwise (it was restarted with an older version): a node of the previous version
    /// would drop a marked INVITE whose caller no longer retransmits.
    pub fn understands_trying(&self, node: NodeId) -> bool {
        self.trying_peers
            .read()
            .is_ok_and(|peers| peers.contains(&node))
    }

    /// Notes what a message `node` sent this node says of it (see [`Pool::understands_trying`]):
    /// only answers and INVITEs sent back, whose `via_node` is always their sender.
    pub(crate) fn note_forward_from(&self, msg: &SipForward) {
        if !(msg.send || msg.bounce)
            || self.understands_trying(msg.via_node) == msg.understands_trying
        {
            return;
        }
        if let Ok(mut peers) = self.trying_peers.write() {
            if msg.understands_trying {
                peers.insert(msg.via_node);
            } else {
                peers.remove(&msg.via_node);
            }
        }
    }
}

/// A peer's queue, shared by the forwarder and the body of the stream open to that peer. The lock
/// is held only inside one poll (never across an await), so a stream that broke and whose body
/// has not been dropped yet cannot keep the queue from the next one.
type Queue = Arc<Mutex<mpsc::Receiver<SipForward>>>;

/// The next message of the queue (`None`: the pool dropped the sender).
fn poll_queue(queue: &Queue, cx: &mut Context<'_>) -> Poll<Option<SipForward>> {
    match queue.lock() {
        Ok(mut rx) => rx.poll_recv(cx),
        // A poisoned lock: a poll panicked; the queue is gone for good.
        Err(_) => Poll::Ready(None),
    }
}

/// Sends what arrives on `rx` to `node`, on a stream while the peer serves one, else unary. Ends
/// when the pool drops the queue's sender. Each break is told to `sink` (the node: what it
/// forwarded and must not lose, it sends again).
async fn forwarder(
    node: NodeId,
    client: ClusterClient<Channel>,
    rx: mpsc::Receiver<SipForward>,
    sink: Option<Arc<dyn PoolSink>>,
) {
    let queue: Queue = Arc::new(Mutex::new(rx));
    let held = loop {
        match stream_until_broken(node, &client, &queue).await {
            StreamEnd::QueueClosed => return,
            StreamEnd::Broken => {
                if let Some(s) = &sink {
                    s.forward_lost(node);
                }
                tokio::time::sleep(REOPEN_AFTER).await;
            }
            StreamEnd::Unsupported(first) => break first,
        }
    };
    tracing::debug!(
        node,
        "peer serves no forward stream: one forward per message"
    );
    unary(client.clone(), held).await;
    while let Some(m) = std::future::poll_fn(|cx| poll_queue(&queue, cx)).await {
        unary(client.clone(), m).await;
    }
}

/// How a stream ended.
enum StreamEnd {
    /// The pool dropped the queue: the forwarder ends.
    QueueClosed,
    /// The stream failed (the peer restarted, the connection broke): open another.
    Broken,
    /// The peer does not know `ForwardStream`; the stream's first message, to be sent unary.
    Unsupported(SipForward),
}

/// Opens one stream to `node` once there is a message to send, and lets the stream's body read the
/// queue itself until the stream breaks: a message goes from the sender's `try_send` to the h2
/// connection without waking this task (one hand-off a message fewer than a forwarder task that
/// copies the queue into the stream; at low rates, where nothing batches, each hand-off is a
/// wake-up). Messages the body took but the stream did not deliver are lost (SIP retransmits).
async fn stream_until_broken(
    node: NodeId,
    client: &ClusterClient<Channel>,
    queue: &Queue,
) -> StreamEnd {
    // Nothing is opened before there is something to send.
    let Some(first) = std::future::poll_fn(|cx| poll_queue(queue, cx)).await else {
        return StreamEnd::QueueClosed;
    };
    let copy = first.clone();
    let q = queue.clone();
    let rest = futures_util::stream::poll_fn(move |cx| poll_queue(&q, cx));
    let body = futures_util::stream::once(std::future::ready(first))
        .chain(rest)
        .inspect(|m| {
            STATS
                .forward_out
                .record(1, m.message.len() as u64, Duration::ZERO)
        });
    STATS.rpc(Rpc::Forward, true);
    let mut c = client.clone();
    match c.forward_stream(body).await {
        Err(s) if s.code() == tonic::Code::Unimplemented => StreamEnd::Unsupported(copy),
        Err(s) => {
            tracing::debug!(node, status = %s, "forward stream ended; reopened");
            StreamEnd::Broken
        }
        // The body ends only when the queue is closed; the next wait for a first message says so.
        Ok(_) => StreamEnd::Broken,
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
