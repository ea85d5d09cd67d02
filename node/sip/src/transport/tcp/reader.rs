//! A connection's reader: framing with the message and idle timeouts, CRLF keep-alives, each
//! request's admission (source policy, TLS client check, rate budget), RFC 5923 aliases, and
//! delivery to the node.

use super::*;

/// Why a reader stopped waiting.
#[derive(Clone, Copy, Debug)]
enum Wait {
    /// For the rest of a message begun.
    Message,
    /// For a next message.
    Idle,
}

impl TcpPool {
    /// A stream that cannot be framed: a parse error, and its connection closed for it.
    fn count_framing_close(&self) {
        self.inner
            .stats
            .parse_errors
            .fetch_add(1, Ordering::Relaxed);
        self.inner
            .tcp_stats
            .closed_framing
            .fetch_add(1, Ordering::Relaxed);
    }

    pub(super) async fn reader(
        &self,
        mut rd: impl AsyncRead + Unpin,
        live: &Live,
        wtx: mpsc::Sender<Bytes>,
    ) {
        let peer = live.peer;
        let limits = self.inner.config.tcp;
        let mut framer = StreamFramer::new(self.inner.config.limits);
        let mut shutdown = self.inner.shutdown.clone();
        let mut closed = live.closed.subscribe();
        let mut last_complete = Instant::now();
        let mut message_since: Option<Instant> = None;
        let mut budget = ConnBudget::default();
        loop {
            // Drain every complete frame before reading more.
            let mut completed = false;
            loop {
                match framer.next_frame() {
                    Ok(None) => break,
                    Ok(Some(Frame::Ping)) => {
                        completed = true;
                        let _ = wtx.try_send(Bytes::from_static(PONG));
                    }
                    Ok(Some(Frame::Message(msg))) => {
                        completed = true;
                        self.deliver(msg, live, &wtx, &mut budget);
                    }
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
                        self.count_framing_close();
                        return;
                    }
                    Err(e) => {
                        self.count_framing_close();
                        tracing::debug!(%peer, error = %e, "tcp framing error, closing");
                        return;
                    }
                }
            }
            // The clocks: a message begun must end within `message_timeout` of its first byte; with
            // none begun, the next must come within `idle_timeout` of the last complete one.
            let now = Instant::now();
            if completed {
                last_complete = now;
            }
            message_since = match (framer.in_message(), message_since) {
                (false, _) => None,
                (true, Some(since)) if !completed => Some(since),
                (true, _) => Some(now),
            };
            let idle_end = last_complete + limits.idle_timeout;
            let (deadline, waiting) = match message_since {
                Some(since) if since + limits.message_timeout < idle_end => {
                    (since + limits.message_timeout, Wait::Message)
                }
                _ => (idle_end, Wait::Idle),
            };
            let buf = framer.buffer();
            buf.reserve(8192);
            let read = tokio::select! {
                r = tokio::time::timeout_at(deadline, rd.read_buf(buf)) => r,
                _ = shutdown.changed() => {
                    live.close();
                    return;
                }
                _ = closed.wait_for(|c| *c) => return,
            };
            match read {
                Ok(Ok(0)) | Ok(Err(_)) => return,
                Ok(Ok(_)) => {}
                Err(_) => {
                    let counter = match waiting {
                        Wait::Message => &self.inner.tcp_stats.closed_message_timeout,
                        Wait::Idle => &self.inner.tcp_stats.closed_idle,
                    };
                    counter.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(%peer, ?waiting, "tcp connection timed out, closing");
                    return;
                }
            }
        }
    }

    fn deliver(
        &self,
        msg: crate::SipMessage,
        live: &Live,
        wtx: &mpsc::Sender<Bytes>,
        budget: &mut ConnBudget,
    ) {
        let peer = live.peer;
        self.inner.stats.traffic.count_in(&msg);
        if msg.is_request() && !self.admit_request(&msg, peer, live.tls.as_deref(), wtx, budget) {
            return;
        }
        if msg.is_request() {
            self.alias(&msg, live, wtx);
        }
        match screen(Ok(msg), peer) {
            Screened::Pass(msg) => {
                let is_request = msg.is_request();
                let inbound = Inbound {
                    msg,
                    source: peer,
                    transport: self.inner.transport,
                    tls: live.tls.clone(),
                };
                if let Err(
                    mpsc::error::TrySendError::Full(i) | mpsc::error::TrySendError::Closed(i),
                ) = self.inner.tx.try_send(inbound)
                {
                    if is_request && crate::transport::is_new_call(&i.msg) {
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

    /// The source gate for a request on a connection (the trunk check before anything is queued,
    /// as over UDP): an unknown source's request is dropped, or answered 403 on its own connection
    /// (over TCP an answer cannot be reflected to a third party); a known source's new request
    /// takes a token from its trunk's budget, kept per connection (connections per address are
    /// capped), and over it is answered 503 with Retry-After. Whether the request may be queued.
    ///
    /// Over TLS, an address with client-certificate rules ([`TlsSide::set_client_rules`]) is
    /// served only when the connection's certificate meets one (then without a budget: the
    /// address is in no source policy, see the user's trunks), else answered 403 on the
    /// connection whatever the unknown-source policy.
    fn admit_request(
        &self,
        msg: &crate::SipMessage,
        peer: SocketAddr,
        tls: Option<&PeerTls>,
        wtx: &mpsc::Sender<Bytes>,
        budget: &mut ConnBudget,
    ) -> bool {
        let gate = &self.inner.stats.gate;
        if let Some(side) = &self.inner.tls {
            match side.check_client_cached(peer.ip(), tls, &mut budget.1) {
                ClientCheck::NoRule => {}
                ClientCheck::Admitted => return true,
                ClientCheck::Refused => {
                    self.forbid(msg, peer, wtx);
                    return false;
                }
            }
        }
        let policy = self.inner.config.gate.current();
        match policy.classify(peer) {
            SourceClass::Unlimited => true,
            SourceClass::Unknown(how) => {
                gate.unknown.fetch_add(1, Ordering::Relaxed);
                if how == UnknownPolicy::Reject {
                    self.forbid(msg, peer, wtx);
                }
                false
            }
            SourceClass::Known(entry) => {
                if !crate::transport::starts_something_new(msg) {
                    return true;
                }
                let Some(b) = policy.budget(entry) else {
                    return true;
                };
                let now = self.inner.started.elapsed();
                let bucket = match &mut budget.0 {
                    Some((e, bucket)) if *e == entry => bucket,
                    slot => &mut slot.insert((entry, Bucket::new(b, now))).1,
                };
                if bucket.try_take(now) {
                    return true;
                }
                gate.rate_limited.fetch_add(1, Ordering::Relaxed);
                if let Some(a) = overload_answer(msg, peer, self.inner.config.retry_after_secs) {
                    let _ = wtx.try_send(a);
                }
                false
            }
        }
    }

    /// RFC 5923: a request whose top Via carries `alias` with a sent-by at the connection's own
    /// IP (another port) makes the connection serve requests to that address too, once per
    /// connection. Another IP is not taken (nothing here proves the peer owns it).
    fn alias(&self, msg: &crate::SipMessage, live: &Live, wtx: &mpsc::Sender<Bytes>) {
        let Some(Ok(via)) = msg.top_via() else {
            return;
        };
        if via.params.get("alias").is_none() {
            return;
        }
        let Some(ip) = std::str::from_utf8(via.host)
            .ok()
            .and_then(|h| h.trim_matches(['[', ']']).parse::<IpAddr>().ok())
        else {
            return;
        };
        let default_port = if self.inner.transport == Transport::Tls {
            5061
        } else {
            5060
        };
        let at = SocketAddr::new(ip, via.port.unwrap_or(default_port));
        if ip != live.peer.ip() || at == live.peer {
            return;
        }
        let Ok(mut alias) = live.alias.lock() else {
            return;
        };
        if alias.is_some() {
            return;
        }
        *alias = Some(at);
        if let Ok(mut c) = self.inner.conns.lock() {
            c.insert(
                at,
                Conn {
                    id: live.id,
                    tx: wtx.clone(),
                    tls: live.tls.clone(),
                },
            );
        }
    }

    /// Answers 403 on the connection (not to an ACK, nor when no answer can be built).
    fn forbid(&self, msg: &crate::SipMessage, peer: SocketAddr, wtx: &mpsc::Sender<Bytes>) {
        if msg.method() == Some(crate::Method::Ack) || !crate::check::can_answer(msg) {
            return;
        }
        let tag = crate::ids::new_tag(0);
        let answer = response_to(msg, 403, b"Forbidden", Some(&tag), Some(peer)).build();
        self.inner.stats.traffic.count_out(&answer);
        if wtx.try_send(answer).is_ok() {
            self.inner
                .stats
                .gate
                .forbidden
                .fetch_add(1, Ordering::Relaxed);
        }
    }
}
