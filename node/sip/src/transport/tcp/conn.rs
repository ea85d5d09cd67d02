//! An adopted connection: its entry in the table, its reader and writer tasks, and the writer
//! (one write at most `write_timeout` long; a peer that does not read is reset).

use super::*;

impl TcpPool {
    /// Registers a TCP connection and starts its reader and writer.
    pub(super) fn adopt_tcp(
        &self,
        stream: TcpStream,
        peer: SocketAddr,
        slot: SlotGuard,
    ) -> mpsc::Sender<Bytes> {
        let _ = stream.set_nodelay(true);
        let (rd, wr) = stream.into_split();
        self.adopt(rd, wr, |w| reset(w.as_ref()), peer, slot, None)
    }

    /// Registers a TLS connection (handshake done) and starts its reader and writer.
    pub(super) fn adopt_tls(
        &self,
        stream: tokio_rustls::TlsStream<TcpStream>,
        sock: Option<socket2::Socket>,
        peer: SocketAddr,
        slot: SlotGuard,
        info: Arc<PeerTls>,
    ) -> mpsc::Sender<Bytes> {
        let (rd, wr) = tokio::io::split(stream);
        let reset = move |_: &_| {
            if let Some(s) = &sock {
                let _ = s.set_linger(Some(Duration::ZERO));
            }
        };
        self.adopt(rd, wr, reset, peer, slot, Some(info))
    }

    /// Registers a connection and starts its reader and writer.
    fn adopt<R, W>(
        &self,
        rd: R,
        wr: W,
        reset: impl Fn(&W) + Send + 'static,
        peer: SocketAddr,
        slot: SlotGuard,
        tls: Option<Arc<PeerTls>>,
    ) -> mpsc::Sender<Bytes>
    where
        R: AsyncRead + Unpin + Send + 'static,
        W: AsyncWrite + Unpin + Send + 'static,
    {
        let (wtx, wrx) = mpsc::channel::<Bytes>(WRITE_QUEUE);
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let live = Arc::new(Live {
            id,
            peer,
            tls,
            alias: Mutex::new(None),
            closed: watch::Sender::new(false),
            slot,
        });
        if let Ok(mut c) = self.inner.conns.lock() {
            c.insert(
                peer,
                Conn {
                    id,
                    tx: wtx.clone(),
                    tls: live.tls.clone(),
                },
            );
        }
        tokio::spawn(writer(wr, reset, wrx, live.clone()));
        let pool = self.clone();
        let wtx2 = wtx.clone();
        tokio::spawn(async move {
            pool.reader(rd, &live, wtx2).await;
            // New sends open a new connection; the writer sends what is queued, then closes.
            live.forget();
        });
        wtx
    }
}

/// Writes what the connection's queue holds, one write at most `write_timeout` long. Ends when the
/// queue's senders are all gone (then closes gracefully), or at once when the connection is closed,
/// a write fails or takes too long (then resets it: a peer that does not read gets no more of the
/// node's memory or time).
async fn writer<W: AsyncWrite + Unpin>(
    mut wr: W,
    reset: impl Fn(&W),
    mut rx: mpsc::Receiver<Bytes>,
    live: Arc<Live>,
) {
    let limit = live.inner().config.tcp.write_timeout;
    let mut closed = live.closed.subscribe();
    let abort = loop {
        let bytes = tokio::select! {
            biased;
            _ = closed.wait_for(|c| *c) => break true,
            b = rx.recv() => match b {
                Some(b) => b,
                None => break false,
            },
        };
        let write = async {
            wr.write_all(&bytes).await?;
            wr.flush().await
        };
        match tokio::time::timeout(limit, write).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => break true,
            Err(_) => {
                live.inner()
                    .tcp_stats
                    .closed_write_timeout
                    .fetch_add(1, Ordering::Relaxed);
                tracing::debug!(peer = %live.peer, "tcp write timed out (the peer does not read), resetting");
                break true;
            }
        }
    };
    if abort {
        reset(&wr);
    } else {
        let _ = tokio::time::timeout(limit, wr.shutdown()).await;
    }
    live.forget();
    live.close();
}
