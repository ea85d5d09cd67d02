//! The internal port's accept loop: at most [`MAX_CONNECTIONS`] connections at once (the next
//! accept waits for one to close), a growing pause after an accept error (out of file descriptors:
//! no busy loop), and with TLS material a handshake of at most [`HANDSHAKE_TIMEOUT`] in its own task
//! (a slow or silent client holds only its own slot). What comes out is a stream of connections
//! for tonic's `serve_with_incoming`; each holds its slot until it is dropped.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::Stream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tonic::transport::server::Connected;

use crate::tls::InternalTls;

/// Most connections open at once on the internal port (a pool has a few nodes, each with a few
/// connections to each other).
pub const MAX_CONNECTIONS: usize = 256;
/// Longest TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest pause after an accept error (the pause doubles from 10 ms).
pub const MAX_ACCEPT_BACKOFF: Duration = Duration::from_secs(1);

/// An accepted connection holding its slot.
pub struct Capped<S> {
    inner: S,
    _slot: OwnedSemaphorePermit,
}

impl<S: Connected> Connected for Capped<S> {
    type ConnectInfo = S::ConnectInfo;
    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Capped<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Capped<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// A TLS connection accepted by the internal port.
pub type TlsConn = tokio_rustls::server::TlsStream<TcpStream>;

type Incoming<S> = Pin<Box<dyn Stream<Item = Result<Capped<S>, std::io::Error>> + Send>>;

/// Accepts one connection at a time (waiting for a free slot first), pausing after errors.
async fn accept(
    listener: &TcpListener,
    slots: &Arc<Semaphore>,
    backoff: &mut Duration,
) -> Option<(TcpStream, OwnedSemaphorePermit)> {
    let slot = slots.clone().acquire_owned().await.ok()?;
    loop {
        match listener.accept().await {
            Ok((s, _)) => {
                *backoff = Duration::from_millis(10);
                let _ = s.set_nodelay(true);
                return Some((s, slot));
            }
            Err(e) => {
                tracing::warn!(error = %e, pause_ms = backoff.as_millis() as u64, "internal port: accept failed");
                tokio::time::sleep(*backoff).await;
                *backoff = (*backoff * 2).min(MAX_ACCEPT_BACKOFF);
            }
        }
    }
}

fn stream_of<S: Send + 'static>(rx: mpsc::Receiver<Capped<S>>) -> Incoming<S> {
    Box::pin(futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|c| (Ok(c), rx))
    }))
}

/// Plain TCP connections (loopback, or `--insecure-internal`).
pub fn plain(listener: TcpListener) -> Incoming<TcpStream> {
    plain_capped(listener, MAX_CONNECTIONS)
}

fn plain_capped(listener: TcpListener, max: usize) -> Incoming<TcpStream> {
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(async move {
        let slots = Arc::new(Semaphore::new(max));
        let mut backoff = Duration::from_millis(10);
        loop {
            let next = tokio::select! {
                c = accept(&listener, &slots, &mut backoff) => c,
                // The server stopped (it dropped the stream).
                () = tx.closed() => return,
            };
            let Some((s, slot)) = next else { return };
            if tx
                .send(Capped {
                    inner: s,
                    _slot: slot,
                })
                .await
                .is_err()
            {
                return;
            }
        }
    });
    stream_of(rx)
}

/// Mutual-TLS connections: the handshake (client certificate chained to the pool CA) in its own
/// task; a failed handshake is logged at debug and its connection dropped.
pub fn tls(listener: TcpListener, material: Arc<InternalTls>) -> Incoming<TlsConn> {
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(async move {
        let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        let mut backoff = Duration::from_millis(10);
        loop {
            let next = tokio::select! {
                c = accept(&listener, &slots, &mut backoff) => c,
                () = tx.closed() => return,
            };
            let Some((s, slot)) = next else { return };
            let peer = s.peer_addr().ok();
            let acceptor = tokio_rustls::TlsAcceptor::from(material.server_config());
            let tx = tx.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(s)).await {
                    Ok(Ok(conn)) => {
                        let _ = tx
                            .send(Capped {
                                inner: conn,
                                _slot: slot,
                            })
                            .await;
                    }
                    Ok(Err(e)) => {
                        tracing::debug!(?peer, error = %e, "internal port: TLS handshake refused")
                    }
                    Err(_) => tracing::debug!(?peer, "internal port: TLS handshake timed out"),
                }
            });
        }
    });
    stream_of(rx)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use futures_util::StreamExt;

    use super::*;

    #[tokio::test]
    async fn a_connection_beyond_the_cap_waits_for_a_slot() {
        let listener = TcpListener::bind("127.0.151.240:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut incoming = plain_capped(listener, 2);
        let mut clients = Vec::new();
        for _ in 0..3 {
            clients.push(TcpStream::connect(addr).await.unwrap());
        }
        let first = incoming.next().await.unwrap().unwrap();
        let _second = incoming.next().await.unwrap().unwrap();
        // The third is connected (the kernel's backlog) but not handed to the server.
        let third = tokio::time::timeout(Duration::from_millis(200), incoming.next()).await;
        assert!(third.is_err(), "a third connection beyond a cap of 2");
        // A slot frees when a connection is dropped.
        drop(first);
        let third = tokio::time::timeout(Duration::from_secs(5), incoming.next()).await;
        assert!(matches!(third, Ok(Some(Ok(_)))));
    }
}
