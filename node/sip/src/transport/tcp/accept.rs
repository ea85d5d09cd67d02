//! The accept loop: admission of each connection before any byte is read, with backoff on
//! accept errors, and the server side of the TLS handshake.

use super::*;

impl TcpPool {
    pub(crate) async fn accept_loop(self, listener: tokio::net::TcpListener) {
        let mut shutdown = self.inner.shutdown.clone();
        let mut backoff = ACCEPT_BACKOFF_MIN;
        loop {
            let (stream, peer) = tokio::select! {
                r = listener.accept() => match r {
                    Ok(x) => {
                        backoff = ACCEPT_BACKOFF_MIN;
                        x
                    }
                    Err(e) => {
                        self.inner.tcp_stats.accept_errors.fetch_add(1, Ordering::Relaxed);
                        if is_connection_error(&e) {
                            tracing::debug!(error = %e, "tcp accept error");
                            continue;
                        }
                        // EMFILE and friends: wait (longer each time in a row) instead of spinning.
                        tracing::warn!(error = %e, backoff_ms = backoff.as_millis() as u64, "tcp accept failed, backing off");
                        tokio::select! {
                            () = tokio::time::sleep(backoff) => {}
                            _ = shutdown.changed() => break,
                        }
                        backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
                        continue;
                    }
                },
                _ = shutdown.changed() => break,
            };
            let policy = self.inner.config.gate.current();
            let has_rules = self
                .inner
                .tls
                .as_ref()
                .is_some_and(|t| t.has_rules(peer.ip()));
            if !policy.knows_ip(peer.ip()) && !has_rules && policy.unknown() == UnknownPolicy::Drop
            {
                // No trunk on that address, and unknown sources get nothing: not even a connection.
                self.inner
                    .stats
                    .gate
                    .unknown
                    .fetch_add(1, Ordering::Relaxed);
                reset(&stream);
                continue;
            }
            let admitted = self
                .inner
                .admission
                .lock()
                .map_err(|_| Refusal::InboundFull)
                .and_then(|mut a| a.admit_inbound(peer.ip(), &self.inner.config.tcp));
            match admitted {
                Ok(slot) => {
                    let guard = self.guard(slot);
                    match &self.inner.tls {
                        None => {
                            self.adopt_tcp(stream, peer, guard);
                        }
                        Some(tls) => {
                            let pool = self.clone();
                            let tls = tls.clone();
                            tokio::spawn(async move {
                                pool.accept_tls(&tls, stream, peer, guard).await;
                            });
                        }
                    }
                }
                Err(why) => {
                    self.inner.tcp_stats.refused(why);
                    tracing::debug!(%peer, %why, "tcp connection refused");
                    reset(&stream);
                }
            }
        }
    }

    /// The server side of a TLS handshake on an accepted connection, within `message_timeout`
    /// (the slot stays held meanwhile and is given back if it fails).
    async fn accept_tls(
        &self,
        tls: &TlsSide,
        stream: TcpStream,
        peer: SocketAddr,
        slot: SlotGuard,
    ) {
        let _ = stream.set_nodelay(true);
        let sock = dup(&stream);
        let acceptor = tokio_rustls::TlsAcceptor::from(tls.material().server_config());
        let mut shutdown = self.inner.shutdown.clone();
        let label = tls.label(peer.ip());
        let done = tokio::select! {
            r = tokio::time::timeout(self.inner.config.tcp.message_timeout, acceptor.accept(stream)) => r,
            _ = shutdown.changed() => return,
        };
        match done {
            Ok(Ok(s)) => {
                tls.count(label, true, HandshakeResult::Ok);
                let info = Arc::new(PeerTls::of(s.get_ref().1));
                self.adopt_tls(tokio_rustls::TlsStream::Server(s), sock, peer, slot, info);
            }
            Ok(Err(e)) => {
                tls.count(label, true, HandshakeResult::Failed);
                tracing::debug!(%peer, error = %e, "tls handshake failed");
            }
            Err(_) => {
                tls.count(label, true, HandshakeResult::Timeout);
                tracing::debug!(%peer, "tls handshake not finished in time, closing");
                if let Some(s) = &sock {
                    let _ = s.set_linger(Some(Duration::ZERO));
                }
            }
        }
    }
}
