//! TCP: an accept loop, one reader task and one writer task per connection, and a table of open
//! connections keyed by the peer's address so that responses and later requests reuse them (RFC 3261
//! §18.2.2, RFC 5923-style reuse). Connections are bounded in number, closed after an idle timeout, and
//! answer RFC 5626 CRLF keep-alive pings. A framing error closes only that connection.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use super::{
    FrontDoorStats, Inbound, Screened, Transport, TransportConfig, TransportError, overload_answer,
    screen,
};
use crate::check::{Rejection, rejection_response};
use crate::framing::{Frame, PONG, StreamFramer};

/// Queue depth of one connection's writer.
const WRITE_QUEUE: usize = 1024;

/// The shared connection table and settings.
#[derive(Clone, Debug)]
pub struct TcpPool {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: TransportConfig,
    conns: Mutex<HashMap<SocketAddr, mpsc::Sender<Bytes>>>,
    tx: mpsc::Sender<Inbound>,
    stats: Arc<FrontDoorStats>,
    shutdown: tokio::sync::watch::Receiver<bool>,
}

impl TcpPool {
    pub(crate) fn new(
        config: TransportConfig,
        tx: mpsc::Sender<Inbound>,
        stats: Arc<FrontDoorStats>,
        shutdown: tokio::sync::watch::Receiver<bool>,
    ) -> TcpPool {
        TcpPool {
            inner: Arc::new(Inner {
                config,
                conns: Mutex::new(HashMap::new()),
                tx,
                stats,
                shutdown,
            }),
        }
    }

    /// How many connections are open.
    pub fn open_connections(&self) -> usize {
        self.inner.conns.lock().map(|c| c.len()).unwrap_or(0)
    }

    pub(crate) async fn accept_loop(self, listener: tokio::net::TcpListener) {
        let mut shutdown = self.inner.shutdown.clone();
        loop {
            let (stream, peer) = tokio::select! {
                r = listener.accept() => match r {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::debug!(error = %e, "tcp accept error");
                        // EMFILE and friends: back off briefly instead of spinning.
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = shutdown.changed() => break,
            };
            if self.open_connections() >= self.inner.config.max_connections {
                tracing::debug!(%peer, "tcp connection refused: limit reached");
                drop(stream);
                continue;
            }
            self.adopt(stream, peer);
        }
    }

    /// Registers a connection and starts its reader and writer.
    fn adopt(&self, stream: TcpStream, peer: SocketAddr) -> mpsc::Sender<Bytes> {
        let _ = stream.set_nodelay(true);
        let (rd, wr) = stream.into_split();
        let (wtx, wrx) = mpsc::channel::<Bytes>(WRITE_QUEUE);
        if let Ok(mut c) = self.inner.conns.lock() {
            c.insert(peer, wtx.clone());
        }
        tokio::spawn(writer(wr, wrx));
        let pool = self.clone();
        let wtx2 = wtx.clone();
        tokio::spawn(async move {
            pool.reader(rd, peer, wtx2).await;
            if let Ok(mut c) = pool.inner.conns.lock() {
                c.remove(&peer);
            }
        });
        wtx
    }

    async fn reader(
        &self,
        mut rd: tokio::net::tcp::OwnedReadHalf,
        peer: SocketAddr,
        wtx: mpsc::Sender<Bytes>,
    ) {
        let cfg = &self.inner.config;
        let mut framer = StreamFramer::new(cfg.limits);
        let mut shutdown = self.inner.shutdown.clone();
        loop {
            // Drain every complete frame before reading more.
            loop {
                match framer.next_frame() {
                    Ok(None) => break,
                    Ok(Some(Frame::Ping)) => {
                        let _ = wtx.try_send(Bytes::from_static(PONG));
                    }
                    Ok(Some(Frame::Message(msg))) => self.deliver(msg, peer, &wtx),
                    Ok(Some(Frame::Fatal(msg))) => {
                        if let Some(d) = msg.defect() {
                            let rej = Rejection {
                                status: d.status(),
                                reason: "Framing Error",
                                extra: Vec::new(),
                            };
                            if let Some(answer) = rejection_response(
                                &msg,
                                &rej,
                                Some(&crate::ids::new_tag(0)),
                                Some(peer),
                            ) {
                                let _ = wtx.try_send(answer);
                            }
                        }
                        self.inner
                            .stats
                            .parse_errors
                            .fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                    Err(e) => {
                        self.inner
                            .stats
                            .parse_errors
                            .fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(%peer, error = %e, "tcp framing error, closing");
                        return;
                    }
                }
            }
            let buf = framer.buffer();
            buf.reserve(8192);
            let read = tokio::select! {
                r = tokio::time::timeout(cfg.tcp_idle_timeout, rd.read_buf(buf)) => r,
                _ = shutdown.changed() => return,
            };
            match read {
                Ok(Ok(0)) | Ok(Err(_)) => return,
                Ok(Ok(_)) => {}
                Err(_) => {
                    tracing::debug!(%peer, "tcp connection idle, closing");
                    return;
                }
            }
        }
    }

    fn deliver(&self, msg: crate::SipMessage, peer: SocketAddr, wtx: &mpsc::Sender<Bytes>) {
        self.inner.stats.traffic.count_in(&msg);
        match screen(Ok(msg), peer) {
            Screened::Pass(msg) => {
                let is_request = msg.is_request();
                let inbound = Inbound {
                    msg,
                    source: peer,
                    transport: Transport::Tcp,
                };
                if let Err(
                    mpsc::error::TrySendError::Full(i) | mpsc::error::TrySendError::Closed(i),
                ) = self.inner.tx.try_send(inbound)
                {
                    if is_request && super::is_new_call(&i.msg) {
                        self.inner.stats.overloaded.fetch_add(1, Ordering::Relaxed);
                        if let Some(a) =
                            overload_answer(&i.msg, peer, self.inner.config.retry_after_secs)
                        {
                            let _ = wtx.try_send(a);
                        }
                    } else {
                        self.inner
                            .stats
                            .dropped_responses
                            .fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            Screened::Answer(a) => {
                self.inner.stats.rejected.fetch_add(1, Ordering::Relaxed);
                let _ = wtx.try_send(a);
            }
            Screened::Drop(why) => {
                self.inner
                    .stats
                    .parse_errors
                    .fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%peer, why, "dropped tcp message");
            }
        }
    }

    /// Sends on the open connection to `dest`; when there is none, connects in the background and sends
    /// then (a failure is logged; the transaction layer's timers notice the silence).
    pub fn send_now(&self, dest: SocketAddr, bytes: Bytes) -> Result<(), TransportError> {
        let existing = self
            .inner
            .conns
            .lock()
            .ok()
            .and_then(|c| c.get(&dest).cloned());
        match existing {
            Some(w) if !w.is_closed() => w.try_send(bytes).map_err(|_| TransportError::Busy),
            _ => {
                let pool = self.clone();
                tokio::spawn(async move {
                    if let Err(e) = pool.send(dest, bytes).await {
                        tracing::debug!(%dest, error = %e, "tcp send failed");
                    }
                });
                Ok(())
            }
        }
    }

    /// Sends on the connection to `dest`, opening one when there is none.
    pub async fn send(&self, dest: SocketAddr, bytes: Bytes) -> Result<(), TransportError> {
        let existing = self
            .inner
            .conns
            .lock()
            .ok()
            .and_then(|c| c.get(&dest).cloned());
        let wtx = match existing {
            Some(w) if !w.is_closed() => w,
            _ => {
                if self.open_connections() >= self.inner.config.max_connections {
                    return Err(TransportError::TooManyConnections);
                }
                let stream = tokio::time::timeout(
                    self.inner.config.tcp_connect_timeout,
                    TcpStream::connect(dest),
                )
                .await
                .map_err(|_| TransportError::ConnectTimeout)?
                .map_err(|e| TransportError::Io(e.kind()))?;
                self.adopt(stream, dest)
            }
        };
        wtx.try_send(bytes).map_err(|_| TransportError::Busy)
    }
}

async fn writer(mut wr: tokio::net::tcp::OwnedWriteHalf, mut rx: mpsc::Receiver<Bytes>) {
    while let Some(b) = rx.recv().await {
        if wr.write_all(&b).await.is_err() {
            break;
        }
    }
    let _ = wr.shutdown().await;
}
