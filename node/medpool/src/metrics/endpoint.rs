//! The `/metrics` endpoint: a tiny HTTP/1.1 server that answers `GET /metrics` with the registry
//! encoded as Prometheus text, bounded in connections, request size and time.

use std::net::SocketAddr;
use std::sync::Arc;

use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Scrapes served at once; a connection beyond them is closed at accept.
pub const MAX_SCRAPES: usize = 16;
/// Time one scrape may take, reading the request and writing the answer together.
pub const SCRAPE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Serves `GET /metrics` (Prometheus text format) until the process ends. Tiny HTTP/1.1: one
/// request per connection, bounded request size, at most [`MAX_SCRAPES`] connections at once, each
/// cut off after [`SCRAPE_TIMEOUT`]; failed accepts (EMFILE, ...) are retried with a growing backoff.
pub async fn serve(addr: SocketAddr, registry: Arc<Registry>) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    tokio::spawn(accept_loop(listener, registry));
    Ok(local)
}

async fn accept_loop(listener: tokio::net::TcpListener, registry: Arc<Registry>) {
    use medpool_sip::transport::tcp::{
        ACCEPT_BACKOFF_MAX, ACCEPT_BACKOFF_MIN, is_connection_error,
    };
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_SCRAPES));
    let mut backoff = ACCEPT_BACKOFF_MIN;
    loop {
        let sock = match listener.accept().await {
            Ok((sock, _)) => {
                backoff = ACCEPT_BACKOFF_MIN;
                sock
            }
            Err(e) if is_connection_error(&e) => continue,
            Err(e) => {
                tracing::warn!(error = %e, backoff_ms = backoff.as_millis() as u64, "metrics accept failed, backing off");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::debug!("metrics connection refused: {MAX_SCRAPES} scrapes in progress");
            continue;
        };
        let registry = registry.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(SCRAPE_TIMEOUT, scrape(sock, &registry)).await;
            drop(slot);
        });
    }
}

/// Reads one request (at most 4 KiB of head) and answers it.
async fn scrape(mut sock: tokio::net::TcpStream, registry: &Registry) {
    let mut buf = vec![0u8; 4096];
    let mut n = 0;
    while n < buf.len() {
        match sock.read(&mut buf[n..]).await {
            Ok(0) | Err(_) => return,
            Ok(k) => n += k,
        }
        if buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
            break;
        }
    }
    let req = String::from_utf8_lossy(&buf[..n]);
    let (status, body) = if req.starts_with("GET /metrics ") {
        let mut out = String::new();
        match prometheus_client::encoding::text::encode(&mut out, registry) {
            Ok(()) => ("200 OK", out),
            Err(_) => ("500 Internal Server Error", String::new()),
        }
    } else {
        ("404 Not Found", "not found\n".to_owned())
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = sock.write_all(head.as_bytes()).await;
    let _ = sock.write_all(body.as_bytes()).await;
}
