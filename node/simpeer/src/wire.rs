//! What a simulated peer sends and receives SIP on: a UDP socket, or SIP over TLS through
//! medpool-sip's own TLS transport (Debian's SIPp is built without TLS, so the tests' TLS peers are
//! these).
//!
//! [`Wire::send_to`] and [`Wire::recv_from`] look the same on both, so the caller, the gateway
//! and [`crate::uas`] do not care which it is; what differs is written into the messages by
//! [`Wire::via`] (`SIP/2.0/TLS ...;alias` over TLS: RFC 5923, so that the node sends its requests
//! back on the connection the peer opened) and [`Wire::uri`] (`sips:` or `;transport=tls`).
//! Over TLS the peer listens for connections on its local address and answers every request on
//! the connection it came on.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use medpool_sip::transport::tls::{TlsFiles, TlsMaterial, TlsPeer};
use medpool_sip::transport::{self, Inbound, TlsListen, Transport, TransportConfig, Transports};
use tokio::net::UdpSocket;
use tokio::sync::{Mutex, mpsc, watch};

use crate::error::{SimpeerError, bind_udp};

/// How a peer speaks TLS: its own certificate (presented to the node, which may require it:
/// mutual TLS), the CA it verifies the node with, and the name it expects the node's certificate
/// to carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsOptions {
    /// The peer's certificate (PEM).
    pub cert: PathBuf,
    /// Its key (PEM).
    pub key: PathBuf,
    /// The CA the node's certificate must chain to (PEM).
    pub ca: PathBuf,
    /// The name the node's certificate must be valid for (and SNI); `None`: the node's IP address.
    pub server_name: Option<String>,
    /// Use `sips:` URIs (RFC 3261 §26.2) instead of `sip:...;transport=tls`.
    pub sips: bool,
}

/// The TLS side of a wire.
pub struct TlsWire {
    transports: Transports,
    inbound: Mutex<mpsc::Receiver<Inbound>>,
    local: SocketAddr,
    sips: bool,
    _stop: watch::Sender<bool>,
}

impl std::fmt::Debug for TlsWire {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsWire")
            .field("local", &self.local)
            .finish_non_exhaustive()
    }
}

/// A peer's SIP socket: UDP, or TLS connections.
#[derive(Debug)]
pub enum Wire {
    /// One UDP socket.
    Udp(UdpSocket),
    /// TLS: a listener on the local address, connections to and from the node.
    Tls(TlsWire),
}

impl Wire {
    /// A UDP socket on `bind`.
    pub async fn udp(bind: SocketAddr) -> Result<Wire, SimpeerError> {
        Ok(Wire::Udp(bind_udp(bind).await?))
    }

    /// A TLS listener on `bind` (port 0: any), connecting to the node as `opts` say. The TLS
    /// transport also binds UDP and TCP on `bind`'s IP (any port), unused.
    pub async fn tls(
        bind: SocketAddr,
        opts: &TlsOptions,
        target: Option<SocketAddr>,
    ) -> Result<Wire, SimpeerError> {
        let material = TlsMaterial::load(TlsFiles {
            cert: opts.cert.clone(),
            key: opts.key.clone(),
            ca: Some(opts.ca.clone()),
        })?;
        let (stop, rx) = watch::channel(false);
        let config = TransportConfig {
            listen: SocketAddr::new(bind.ip(), 0),
            tls: Some(TlsListen {
                listen: Some(bind),
                material,
            }),
            ..TransportConfig::default()
        };
        let running = transport::start(config, rx)
            .await
            .map_err(|source| SimpeerError::Bind { addr: bind, source })?;
        let local = running.transports.tls_local().unwrap_or(bind);
        if let (Some(target), Some(name), Some(pool)) = (
            target,
            opts.server_name.as_deref(),
            running.transports.tls(),
        ) && let (Ok(name), Some(side)) = (
            rustls::pki_types::ServerName::try_from(name.to_owned()),
            pool.tls(),
        ) {
            side.set_peers(
                [(
                    target,
                    TlsPeer {
                        name,
                        ca: None,
                        label: "node".to_owned(),
                    },
                )],
                [],
            );
        }
        Ok(Wire::Tls(TlsWire {
            transports: running.transports,
            inbound: Mutex::new(running.inbound),
            local,
            sips: opts.sips,
            _stop: stop,
        }))
    }

    /// The address peers reach it on (the UDP socket's, or the TLS listener's).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        match self {
            Wire::Udp(s) => s.local_addr(),
            Wire::Tls(t) => Ok(t.local),
        }
    }

    /// Whether it is TLS.
    pub fn is_tls(&self) -> bool {
        matches!(self, Wire::Tls(_))
    }

    /// Sends one message to `dest` (over TLS: on the connection to `dest`, opened if needed).
    pub async fn send_to(&self, bytes: &[u8], dest: SocketAddr) -> std::io::Result<usize> {
        match self {
            Wire::Udp(s) => s.send_to(bytes, dest).await,
            Wire::Tls(t) => t
                .transports
                .send(Transport::Tls, dest, Bytes::copy_from_slice(bytes))
                .await
                .map(|()| bytes.len())
                .map_err(|e| std::io::Error::other(e.to_string())),
        }
    }

    /// Receives one message and where it came from (over TLS: the connection's peer address).
    pub async fn recv_from(&self, buf: &mut [u8]) -> std::io::Result<(usize, SocketAddr)> {
        match self {
            Wire::Udp(s) => s.recv_from(buf).await,
            Wire::Tls(t) => {
                let Some(i) = t.inbound.lock().await.recv().await else {
                    return Err(std::io::Error::other("transport stopped"));
                };
                let bytes = i.msg.as_bytes();
                let n = bytes.len().min(buf.len());
                buf[..n].copy_from_slice(&bytes[..n]);
                Ok((n, i.source))
            }
        }
    }

    /// A Via value for `branch` sent from `local`.
    pub fn via(&self, branch: &str) -> Vec<u8> {
        match self {
            Wire::Udp(s) => format!(
                "SIP/2.0/UDP {};branch={branch};rport",
                s.local_addr()
                    .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
            )
            .into_bytes(),
            Wire::Tls(t) => {
                format!("SIP/2.0/TLS {};branch={branch};rport;alias", t.local).into_bytes()
            }
        }
    }

    /// A URI for `user` at `host` (`sip:user@host`, over TLS `sips:user@host` or
    /// `sip:user@host;transport=tls`).
    pub fn uri(&self, user: &str, host: SocketAddr) -> String {
        match self {
            Wire::Udp(_) => format!("sip:{user}@{host}"),
            Wire::Tls(t) if t.sips => format!("sips:{user}@{host}"),
            Wire::Tls(_) => format!("sip:{user}@{host};transport=tls"),
        }
    }
}

/// A wire shared by a peer's tasks.
pub type SharedWire = Arc<Wire>;
