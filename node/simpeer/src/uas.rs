//! Answering requests the way a UAS's transaction layer does (RFC 3261 §17.2), shared by the
//! [`crate::Gateway`] and the [`crate::Caller`]:
//! - where answers go ([`ResponseRouting`]);
//! - a retransmitted request gets the answer already sent for it, not a second one;
//! - a 2xx to an INVITE is retransmitted (T1 doubling up to T2) until its ACK arrives or 64·T1 pass.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use crate::wire::Wire;
use bytes::Bytes;
use medpool_sip::{Method, SipMessage};
use tokio::task::AbortHandle;

/// RFC 3261 T1.
pub const T1: Duration = Duration::from_millis(500);
/// RFC 3261 T2.
pub const T2: Duration = Duration::from_secs(4);

/// Answers remembered for retransmitted requests (oldest forgotten first).
const ANSWER_CACHE: usize = 16_384;
/// 2xx answers being retransmitted at most at once.
const MAX_PENDING_ACKS: usize = 65_536;

/// Where a peer sends its answers over UDP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ResponseRouting {
    /// RFC 3261 §18.2.2 with RFC 3581, as real gateways do: to the request's source address (at the
    /// source port when the Via asks for `rport`, else at the sent-by port). A pool node's request
    /// is answered straight to that node.
    #[default]
    Source,
    /// To the top Via's sent-by `host:port`, ignoring where the datagram came from. With nodes that
    /// advertise the Service address, answers go back through the forwarder.
    ViaSentBy,
}

/// The server side of a peer: answers, replays and 2xx retransmission on one socket.
#[derive(Debug)]
pub struct Uas {
    sock: Arc<Wire>,
    routing: ResponseRouting,
    answers: Mutex<AnswerCache>,
    pending_acks: Arc<Mutex<HashMap<AckKey, AbortHandle>>>,
}

/// (Call-ID, CSeq number) of an INVITE whose 2xx awaits its ACK.
type AckKey = (Vec<u8>, u32);
/// (top Via branch, CSeq method) of a server transaction.
type TxKey = (Vec<u8>, Method);

#[derive(Debug, Default)]
struct AnswerCache {
    map: HashMap<TxKey, (Bytes, SocketAddr)>,
    order: VecDeque<TxKey>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn tx_key(req: &SipMessage) -> Option<TxKey> {
    let branch = req.top_branch()?.to_vec();
    let method = req.cseq()?.ok()?.method;
    Some((branch, method))
}

fn ack_key(m: &SipMessage) -> Option<AckKey> {
    let call_id = m.call_id()?.ok()?.to_vec();
    let seq = m.cseq()?.ok()?.seq;
    Some((call_id, seq))
}

impl Uas {
    /// A UAS answering on `sock`.
    pub fn new(sock: Arc<Wire>, routing: ResponseRouting) -> Uas {
        Uas {
            sock,
            routing,
            answers: Mutex::new(AnswerCache::default()),
            pending_acks: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// Where the answer to `req`, received from `source`, goes.
    pub fn destination(&self, req: &SipMessage, source: SocketAddr) -> SocketAddr {
        let Some(Ok(via)) = req.top_via() else {
            return source;
        };
        if self.sock.is_tls() {
            // Over a connection, answers go back on it (RFC 3261 §18.2.2).
            return source;
        }
        match self.routing {
            ResponseRouting::Source => medpool_sip::transport::response_target(&via, source),
            ResponseRouting::ViaSentBy => std::str::from_utf8(via.host)
                .ok()
                .map(|h| h.trim_start_matches('[').trim_end_matches(']'))
                .and_then(|h| h.parse::<IpAddr>().ok())
                .map_or_else(
                    || medpool_sip::transport::response_target(&via, source),
                    |ip| SocketAddr::new(ip, via.port.unwrap_or(5060)),
                ),
        }
    }

    /// If `req` is a retransmission of a request already answered, sends that answer again and
    /// returns true.
    pub async fn replay(&self, req: &SipMessage) -> bool {
        let Some(key) = tx_key(req) else {
            return false;
        };
        let cached = lock(&self.answers).map.get(&key).cloned();
        match cached {
            Some((bytes, dest)) => {
                let _ = self.sock.send_to(&bytes, dest).await;
                true
            }
            None => false,
        }
    }

    /// Sends an answer to `req` (received from `source`) and remembers it for retransmissions; a
    /// 2xx to an INVITE is retransmitted until [`Uas::ack`] sees its ACK.
    pub async fn answer(&self, req: &SipMessage, source: SocketAddr, bytes: Bytes) {
        let dest = self.destination(req, source);
        if let Some(key) = tx_key(req) {
            let mut cache = lock(&self.answers);
            if cache
                .map
                .insert(key.clone(), (bytes.clone(), dest))
                .is_none()
            {
                cache.order.push_back(key);
                while cache.order.len() > ANSWER_CACHE {
                    if let Some(old) = cache.order.pop_front() {
                        cache.map.remove(&old);
                    }
                }
            }
        }
        let _ = self.sock.send_to(&bytes, dest).await;
        let is_2xx_to_invite = req.method() == Some(Method::Invite)
            && SipMessage::parse(bytes.clone())
                .ok()
                .and_then(|m| m.status())
                .is_some_and(|s| (200..300).contains(&s));
        if is_2xx_to_invite && let Some(key) = ack_key(req) {
            self.retransmit_until_ack(key, bytes, dest);
        }
    }

    fn retransmit_until_ack(&self, key: AckKey, bytes: Bytes, dest: SocketAddr) {
        let mut pending = lock(&self.pending_acks);
        if pending.len() >= MAX_PENDING_ACKS || pending.contains_key(&key) {
            return;
        }
        let sock = Arc::clone(&self.sock);
        let table = Arc::clone(&self.pending_acks);
        let task_key = key.clone();
        let task = tokio::spawn(async move {
            let mut interval = T1;
            let mut waited = Duration::ZERO;
            while waited < T1 * 64 {
                tokio::time::sleep(interval).await;
                waited += interval;
                let _ = sock.send_to(&bytes, dest).await;
                interval = (interval * 2).min(T2);
            }
            lock(&table).remove(&task_key);
        });
        pending.insert(key, task.abort_handle());
    }

    /// An ACK arrived: stop retransmitting the 2xx it acknowledges.
    pub fn ack(&self, ack: &SipMessage) {
        if let Some(key) = ack_key(ack)
            && let Some(task) = lock(&self.pending_acks).remove(&key)
        {
            task.abort();
        }
    }

    /// How many 2xx answers still await their ACK.
    pub fn awaiting_ack(&self) -> usize {
        lock(&self.pending_acks).len()
    }
}

impl Drop for Uas {
    fn drop(&mut self) {
        for (_, task) in lock(&self.pending_acks).drain() {
            task.abort();
        }
    }
}
