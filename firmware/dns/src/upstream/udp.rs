//! Plain DNS over UDP from a pool of connected sockets per upstream.
//!
//! A socket carries one query at a time. Each is bound to port 0, so the
//! kernel picks a random ephemeral source port (never a fixed one), and
//! connected to the upstream, so the kernel drops datagrams from any other
//! source address or port. Every answer must carry the query's random ID
//! and its question; anything else is ignored (a spoofing attempt or a late
//! answer to an earlier query) until the deadline. A socket goes back to the
//! pool only after a clean exchange, and is closed after [`SOCKET_USES`]
//! queries, so source ports keep changing; one whose query timed out or
//! failed is closed at once.

use super::{Ask, AttemptError};
use hickory_proto::op::Message;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use tokio::net::UdpSocket;

/// Idle sockets kept per upstream (more are opened while more queries are
/// in flight; the surplus is closed as they finish).
const IDLE: usize = 64;
/// Queries per socket before it is closed (and a new random port used).
pub const SOCKET_USES: u32 = 32;

struct Pooled {
    sock: UdpSocket,
    uses: u32,
    /// The socket's receive buffer (allocated once, not per query).
    buf: Box<[u8]>,
}

/// The sockets of one UDP upstream.
pub(super) struct UdpPool {
    addr: SocketAddr,
    idle: Mutex<Vec<Pooled>>,
    opened: AtomicU64,
}

impl UdpPool {
    pub(super) fn new(addr: SocketAddr) -> UdpPool {
        UdpPool { addr, idle: Mutex::new(Vec::new()), opened: AtomicU64::new(0) }
    }

    /// Sockets opened so far.
    pub(super) fn opened(&self) -> u64 {
        self.opened.load(Ordering::Relaxed)
    }

    async fn open(&self) -> std::io::Result<Pooled> {
        let bind: SocketAddr = if self.addr.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }.parse().expect("static");
        let sock = UdpSocket::bind(bind).await?;
        sock.connect(self.addr).await?;
        self.opened.fetch_add(1, Ordering::Relaxed);
        Ok(Pooled { sock, uses: 0, buf: vec![0u8; 4096].into_boxed_slice() })
    }

    /// Send the query and wait until the deadline for the matching answer.
    pub(super) async fn exchange(&self, ask: &Ask<'_>) -> Result<Message, AttemptError> {
        let idle = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let mut p = match idle {
            Some(p) => p,
            None => self.open().await?,
        };
        // Whatever arrived since the last exchange (a duplicate answer) is
        // stale: drop it before sending.
        while p.sock.try_recv(&mut p.buf).is_ok() {}
        p.uses += 1;
        let r = exchange_on(&p.sock, ask, &mut p.buf).await;
        if r.is_ok() && p.uses < SOCKET_USES {
            let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
            if idle.len() < IDLE {
                idle.push(p);
            }
        }
        r
    }
}

async fn exchange_on(sock: &UdpSocket, ask: &Ask<'_>, buf: &mut [u8]) -> Result<Message, AttemptError> {
    sock.send(ask.query).await?;
    loop {
        let n = tokio::time::timeout_at(ask.deadline, sock.recv(buf)).await.map_err(|_| AttemptError::Timeout)??;
        // A datagram with the wrong ID or question is ignored (it may be a
        // spoofing attempt); keep waiting for the real answer until the deadline.
        match ask.check(&buf[..n]) {
            Ok(m) => return Ok(m),
            Err(AttemptError::Rcode) => return Err(AttemptError::Rcode),
            Err(_) => continue,
        }
    }
}
