//! Caps on a request's size per internal RPC, applied to the HTTP/2 body before tonic decodes
//! anything ([`BodyCapLayer`] on the internal server): AppendEntries up to
//! [`MAX_MESSAGE`], a streamed snapshot up to [`MAX_SNAPSHOT`] in all, a write up to
//! [`MAX_WRITE`], the stream of forwarded SIP nothing in all (each of its messages is capped),
//! everything else [`MAX_SMALL`]. A body that grows past its cap ends the request
//! with an error (nothing of it is handled). The handlers then check the finer caps of each field
//! (crate::admit).

use std::task::{Context, Poll};

use http_body_util::Limited;
use tonic::body::Body;
use tower_service::Service;

use crate::grpc::MAX_WRITE;
use crate::network::{MAX_MESSAGE, MAX_SMALL, MAX_SNAPSHOT};

/// gRPC's framing of one message (flag and length).
const FRAME: usize = 5;

/// The most bytes a request body of the internal RPC at `path` may carry.
pub fn cap_of(path: &str) -> usize {
    match path.rsplit('/').next() {
        Some("AppendEntries") => MAX_MESSAGE + FRAME,
        // The chunks' data, plus their framing and the header (far less than MAX_SMALL).
        Some("InstallSnapshot") => MAX_SNAPSHOT + MAX_SMALL,
        Some("ClientWrite") => MAX_WRITE + FRAME,
        // One long-lived stream per peer of forwarded SIP: it has no end to cap. Each message in
        // it is capped where it is decoded (the server's MAX_MESSAGE, as an AppendEntries) and
        // then checked (`grpc::check_forward`: 64 KiB of SIP). Under MAX_SMALL in all, a stream
        // ended every 4 MiB — every ~4 s at 1,500 calls/s — and the messages in flight with it.
        Some("ForwardStream") => usize::MAX,
        _ => MAX_SMALL + FRAME,
    }
}

/// Wraps the internal service so that each request body is capped by [`cap_of`] its path.
#[derive(Debug, Clone, Copy, Default)]
pub struct BodyCapLayer;

impl<S> tower_layer::Layer<S> for BodyCapLayer {
    type Service = BodyCap<S>;
    fn layer(&self, inner: S) -> BodyCap<S> {
        BodyCap { inner }
    }
}

/// See [`BodyCapLayer`].
#[derive(Debug, Clone)]
pub struct BodyCap<S> {
    inner: S,
}

impl<S> Service<http::Request<Body>> for BodyCap<S>
where
    S: Service<http::Request<Limited<Body>>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let cap = cap_of(req.uri().path());
        self.inner.call(req.map(|b| Limited::new(b, cap)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_rpc_has_its_cap() {
        let p = |m: &str| cap_of(&format!("/medpool.cluster.v1.Cluster/{m}"));
        assert_eq!(p("Vote"), MAX_SMALL + FRAME);
        assert_eq!(p("Forward"), MAX_SMALL + FRAME);
        assert_eq!(p("ForwardStream"), usize::MAX);
        assert_eq!(p("ClientWrite"), MAX_WRITE + FRAME);
        assert_eq!(p("AppendEntries"), MAX_MESSAGE + FRAME);
        assert!(p("InstallSnapshot") > MAX_SNAPSHOT);
        assert_eq!(cap_of("/unknown"), MAX_SMALL + FRAME);
    }
}
