//! Receiving a batch of datagrams from one socket with one system call (`recvmmsg`, Linux), and
//! knowing from a short batch that the socket's queue is empty, so the caller needs no further
//! receive that fails with `EAGAIN` before it waits again: one system call per received packet
//! instead of two at the packet rates of RTP (one packet per socket every 20 ms).
//!
//! Also where a relay socket is registered with the I/O driver for reads only: tokio's own UDP
//! socket asks for write readiness too, and then every datagram sent wakes the driver once more
//! when the kernel frees it (`EPOLLOUT` on each freed send buffer). Sends never wait for
//! readiness: a full send buffer drops the datagram, counted.
//!
//! The only `unsafe` of the crate is here: the `recvmmsg` call, reading the kernel's socket
//! addresses, and the registration (tokio asks its caller to promise the descriptor stays open
//! while registered, which owning the socket does). Elsewhere (not Linux) a batch is one
//! `recv_from`.

#![allow(unsafe_code)]

use std::io;
use std::net::{SocketAddr, UdpSocket};

use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

/// A relay socket: non-blocking, registered for read readiness only.
pub(crate) type RelaySocket = AsyncFd<UdpSocket>;

/// Makes `socket` non-blocking and registers it for read readiness. Must be called inside a
/// tokio runtime.
pub(crate) fn register_readable(socket: UdpSocket) -> io::Result<RelaySocket> {
    socket.set_nonblocking(true)?;
    // SAFETY: the AsyncFd owns the socket, so its descriptor stays open and the same for as long
    // as it is registered (it is deregistered before the socket closes, on drop).
    unsafe { AsyncFd::register_with_interest(socket, Interest::READABLE) }
        .map_err(|e| e.into_parts().1)
}

/// Largest datagram relayed; a datagram that fills the buffer may have been truncated and is
/// dropped as malformed.
pub const MAX_DATAGRAM: usize = 2048;
/// Datagrams one [`RecvBatch::recv`] takes at most.
pub(crate) const BATCH: usize = 8;

/// Buffers for one batch (reused: one per relay worker thread, never per session).
pub(crate) struct RecvBatch {
    bufs: Box<[[u8; MAX_DATAGRAM]; BATCH]>,
    /// Per datagram: its length, its source, whether it filled the buffer (possibly truncated).
    meta: [(usize, Option<SocketAddr>, bool); BATCH],
}

impl std::fmt::Debug for RecvBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecvBatch").finish_non_exhaustive()
    }
}

impl Default for RecvBatch {
    fn default() -> Self {
        RecvBatch {
            bufs: Box::new([[0; MAX_DATAGRAM]; BATCH]),
            meta: [(0, None, false); BATCH],
        }
    }
}

/// One received datagram of a batch.
pub(crate) struct Datagram<'a> {
    /// Its buffer, the datagram first (writable: forwarding rewrites in place, and SRTP
    /// protection appends its tag after it).
    pub(crate) buf: &'a mut [u8],
    /// The datagram's length in `buf`.
    pub(crate) len: usize,
    /// Where it came from (`None`: an address family the relay does not use).
    pub(crate) src: Option<SocketAddr>,
    /// It filled the buffer: it may have been truncated.
    pub(crate) truncated: bool,
}

impl RecvBatch {
    /// Datagram `i` of the last batch received (`i` < what [`RecvBatch::recv`] returned).
    pub(crate) fn get(&mut self, i: usize) -> Datagram<'_> {
        let (len, src, truncated) = self.meta[i];
        Datagram {
            buf: &mut self.bufs[i][..],
            len,
            src,
            truncated,
        }
    }

    /// Receives up to [`BATCH`] datagrams from `socket` without blocking; `WouldBlock` when none
    /// was queued. Fewer than [`BATCH`] means the queue was empty when the call returned.
    #[cfg(target_os = "linux")]
    pub(crate) fn recv(&mut self, socket: &UdpSocket) -> io::Result<usize> {
        use std::mem::{MaybeUninit, size_of};
        use std::os::fd::AsRawFd;
        let fd = socket.as_raw_fd();
        // SAFETY: all-zero is a valid value of these plain C structs (integers and null pointers).
        let mut addrs: [libc::sockaddr_storage; BATCH] =
            unsafe { MaybeUninit::zeroed().assume_init() };
        let mut iovs: [libc::iovec; BATCH] = unsafe { MaybeUninit::zeroed().assume_init() };
        let mut msgs: [libc::mmsghdr; BATCH] = unsafe { MaybeUninit::zeroed().assume_init() };
        for i in 0..BATCH {
            iovs[i].iov_base = self.bufs[i].as_mut_ptr().cast();
            iovs[i].iov_len = MAX_DATAGRAM;
            let h = &mut msgs[i].msg_hdr;
            h.msg_name = (&mut addrs[i] as *mut libc::sockaddr_storage).cast();
            h.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            h.msg_iov = &mut iovs[i];
            h.msg_iovlen = 1;
        }
        // SAFETY: every header points at a live buffer of the length it states (this batch's
        // buffers, addresses and iovecs, all outliving the call); the kernel writes at most that.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                msgs.as_mut_ptr(),
                BATCH as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let n = n as usize;
        for i in 0..n.min(BATCH) {
            let len = (msgs[i].msg_len as usize).min(MAX_DATAGRAM);
            let truncated = len == MAX_DATAGRAM || msgs[i].msg_hdr.msg_flags & libc::MSG_TRUNC != 0;
            let src = sockaddr(&addrs[i], msgs[i].msg_hdr.msg_namelen);
            self.meta[i] = (len, src, truncated);
        }
        Ok(n.min(BATCH))
    }

    /// One datagram per call where `recvmmsg` does not exist; never reports a short batch.
    #[cfg(not(target_os = "linux"))]
    pub(crate) fn recv(&mut self, socket: &UdpSocket) -> io::Result<usize> {
        let (len, src) = socket.recv_from(&mut self.bufs[0])?;
        self.meta[0] = (len, Some(src), len == MAX_DATAGRAM);
        Ok(BATCH)
    }
}

/// The socket address the kernel wrote (IPv4 or IPv6).
#[cfg(target_os = "linux")]
fn sockaddr(s: &libc::sockaddr_storage, len: libc::socklen_t) -> Option<SocketAddr> {
    use std::mem::size_of;
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV4, SocketAddrV6};
    match i32::from(s.ss_family) {
        libc::AF_INET if len as usize >= size_of::<libc::sockaddr_in>() => {
            // SAFETY: the family says the storage holds a sockaddr_in, which it is large
            // enough for and aligned for (sockaddr_storage is aligned for every address).
            let a = unsafe { &*(s as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)),
                u16::from_be(a.sin_port),
            )))
        }
        libc::AF_INET6 if len as usize >= size_of::<libc::sockaddr_in6>() => {
            // SAFETY: as above, for sockaddr_in6.
            let a = unsafe { &*(s as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(a.sin6_addr.s6_addr),
                u16::from_be(a.sin6_port),
                a.sin6_flowinfo,
                a.sin6_scope_id,
            )))
        }
        _ => None,
    }
}
