//! A caller's SIP exchanges below its calls: in-dialog requests and ACKs built from a dialog, one
//! client transaction over UDP (sent, retransmitted from T1, given up after the timeout), and
//! what arrives on the socket: responses handed to their waiting transaction (a retransmitted 2xx
//! ACKed again), the far side's requests answered (a BYE ends the call, a re-INVITE moves its RTP).

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use medpool_sip::message::builder::{MessageBuilder, reason_phrase, response_to};
use medpool_sip::{HeaderName, Method, SipMessage};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::state::{Dialog, Inner, TimedOut, lock};
use crate::rtp::read_sdp;
use crate::sdp;
use crate::uas::T2;

impl Inner {
    pub(super) fn dialog_request(
        &self,
        method: Method,
        dialog: &Dialog,
        branch: &str,
        call_id: &str,
        from_tag: &str,
        cseq: u32,
    ) -> MessageBuilder {
        let mut b = MessageBuilder::request_method(method, &dialog.remote_target);
        b.header(HeaderName::Via, &self.via(branch))
            .header(HeaderName::MaxForwards, b"70");
        for r in &dialog.routes {
            b.header(HeaderName::Route, r);
        }
        b.header(HeaderName::From, &self.our_from(from_tag))
            .header(HeaderName::To, &dialog.to)
            .header(HeaderName::CallId, call_id.as_bytes())
            .header_fmt(HeaderName::CSeq, format_args!("{cseq} {}", method.as_str()));
        b
    }

    /// The ACK of a 2xx (RFC 3261 §13.2.2.4): a new transaction in the dialog.
    pub(super) fn ack_2xx(
        &self,
        call_id: &str,
        from_tag: &str,
        dialog: &Dialog,
        cseq: u32,
        index: usize,
    ) -> (Bytes, SocketAddr) {
        let branch = self.branch(index, cseq, "a");
        let mut b = MessageBuilder::request_method(Method::Ack, &dialog.remote_target);
        b.header(HeaderName::Via, &self.via(&branch))
            .header(HeaderName::MaxForwards, b"70");
        for r in &dialog.routes {
            b.header(HeaderName::Route, r);
        }
        b.header(HeaderName::From, &self.our_from(from_tag))
            .header(HeaderName::To, &dialog.to)
            .header(HeaderName::CallId, call_id.as_bytes())
            .header_fmt(HeaderName::CSeq, format_args!("{cseq} ACK"));
        (b.build(), dialog.dest)
    }

    /// The ACK of a non-2xx final (RFC 3261 §17.1.1.3): same branch, To of the answer.
    pub(super) fn ack_non_2xx(
        &self,
        resp: &SipMessage,
        ruri: &[u8],
        branch: &str,
        cseq: u32,
        dest: SocketAddr,
    ) -> (Bytes, SocketAddr) {
        let mut b = MessageBuilder::request_method(Method::Ack, ruri);
        b.header(HeaderName::Via, &self.via(branch))
            .header(HeaderName::MaxForwards, b"70")
            .copy_headers(resp, HeaderName::From)
            .copy_headers(resp, HeaderName::To)
            .copy_headers(resp, HeaderName::CallId)
            .header_fmt(HeaderName::CSeq, format_args!("{cseq} ACK"));
        (b.build(), dest)
    }

    /// One client transaction over UDP: send, retransmit, wait for the final answer.
    pub(super) async fn transact(
        &self,
        branch: &str,
        bytes: Bytes,
        dest: SocketAddr,
        invite: bool,
    ) -> Result<(SipMessage, SocketAddr), TimedOut> {
        let (tx, mut rx) = mpsc::channel(16);
        lock(&self.waiters).insert(branch.as_bytes().to_vec(), tx);
        let deadline = Instant::now() + self.cfg.timeout;
        let mut interval = self.cfg.t1;
        let _ = self.sock.send_to(&bytes, dest).await;
        let mut next = Instant::now() + interval;
        let result = loop {
            match tokio::time::timeout_at(next.min(deadline), rx.recv()).await {
                Ok(Some((m, from))) => match m.status() {
                    Some(s) if s >= 200 => break Ok((m, from)),
                    _ if invite => next = deadline,
                    _ => {
                        interval = T2;
                        next = Instant::now() + interval;
                    }
                },
                Ok(None) => break Err(TimedOut),
                Err(_) if Instant::now() >= deadline => break Err(TimedOut),
                Err(_) => {
                    let _ = self.sock.send_to(&bytes, dest).await;
                    interval = if invite {
                        interval * 2
                    } else {
                        (interval * 2).min(T2)
                    };
                    next = Instant::now() + interval;
                }
            }
        };
        lock(&self.waiters).remove(branch.as_bytes());
        result
    }

    pub(super) async fn receive(self: Arc<Self>) {
        let mut buf = vec![0u8; 65_535];
        loop {
            let Ok((n, from)) = self.sock.recv_from(&mut buf).await else {
                continue;
            };
            let Ok(msg) = SipMessage::parse(Bytes::copy_from_slice(&buf[..n])) else {
                tracing::debug!(%from, "caller: unparseable datagram dropped");
                continue;
            };
            if msg.defect().is_some() {
                continue;
            }
            if msg.is_request() {
                self.on_request(msg, from).await;
            } else {
                self.on_response(msg, from).await;
            }
        }
    }

    async fn on_response(&self, msg: SipMessage, from: SocketAddr) {
        let waiter = msg
            .top_branch()
            .and_then(|b| lock(&self.waiters).get(b).cloned());
        if let Some(tx) = waiter {
            let _ = tx.try_send((msg, from));
            return;
        }
        // A final answer to an INVITE whose transaction is over: its ACK was lost; send it again.
        let Some(Ok(cseq)) = msg.cseq() else { return };
        if cseq.method != Method::Invite || msg.status().is_none_or(|s| s < 200) {
            return;
        }
        let Some(Ok(call_id)) = msg.call_id() else {
            return;
        };
        let ack = {
            let calls = lock(&self.calls);
            calls
                .by_id
                .get(call_id)
                .and_then(|i| calls.list.get(*i))
                .and_then(|c| c.last_ack.clone())
                .filter(|(seq, _, _)| *seq == cseq.seq)
        };
        if let Some((_, bytes, dest)) = ack {
            let _ = self.sock.send_to(&bytes, dest).await;
        }
    }

    async fn on_request(&self, req: SipMessage, from: SocketAddr) {
        if self.uas.replay(&req).await {
            return;
        }
        let Some(method) = req.method() else { return };
        let call = req
            .call_id()
            .and_then(Result::ok)
            .and_then(|id| lock(&self.calls).by_id.get(id).copied());
        if method == Method::Ack {
            self.uas.ack(&req);
            if let Some(i) = call
                && !req.body().is_empty()
            {
                self.media_answered(i, req.body());
            }
            return;
        }
        let in_dialog = req.to_tag().is_some();
        let status = match (method, call) {
            (Method::Options, _) => 200,
            (_, None) if in_dialog => 481,
            (Method::Bye, Some(i)) => {
                if let Some(c) = lock(&self.calls).list.get_mut(i) {
                    c.record.ended_by_far_side = true;
                }
                self.media_ended(i);
                200
            }
            (_, Some(i)) => {
                if let Some(c) = lock(&self.calls).list.get_mut(i) {
                    c.record.far_requests += 1;
                }
                200
            }
            (_, None) => 481,
        };
        let mut b = response_to(
            &req,
            status,
            reason_phrase(status).as_bytes(),
            Some("spx"),
            Some(from),
        );
        if method == Method::Invite && status == 200 {
            let (index, version) = {
                let mut calls = lock(&self.calls);
                match call.and_then(|i| calls.list.get_mut(i)) {
                    Some(c) => {
                        c.sdp_version += 1;
                        (c.record.index, c.sdp_version)
                    }
                    None => (0, 1),
                }
            };
            let body = match call {
                Some(_) => self.media_sdp(index, version, read_sdp(req.body()), req.body()),
                None => sdp::audio(self.cfg.seed, version, self.local.ip(), 10_000),
            };
            b.header(HeaderName::Contact, &self.contact())
                .body(sdp::CONTENT_TYPE, body);
        }
        self.uas.answer(&req, from, b.build()).await;
    }
}
