//! Plain DNS over UDP: a fresh socket (random source port) per query,
//! connected to the upstream so the kernel drops datagrams from any other
//! source; datagrams with the wrong ID or question are ignored, not fatal.

use super::{Ask, AttemptError};
use hickory_proto::op::Message;
use std::net::SocketAddr;
use tokio::net::UdpSocket;

/// Send the query to `addr` and wait until the deadline for the matching answer.
pub(super) async fn exchange(addr: SocketAddr, ask: &Ask<'_>) -> Result<Message, AttemptError> {
    let (query, deadline) = (ask.query, ask.deadline);
    let bind: SocketAddr = if addr.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    }
    .parse()
    .expect("static");
    let sock = UdpSocket::bind(bind).await?;
    sock.connect(addr).await?;
    sock.send(query).await?;
    let mut buf = vec![0u8; 4096];
    loop {
        let n = tokio::time::timeout_at(deadline, sock.recv(&mut buf))
            .await
            .map_err(|_| AttemptError::Timeout)??;
        // A datagram with the wrong ID or question is ignored (it may be a
        // spoofing attempt); keep waiting for the real answer until the deadline.
        match ask.check(&buf[..n]) {
            Ok(m) => return Ok(m),
            Err(AttemptError::Rcode) => return Err(AttemptError::Rcode),
            Err(_) => continue,
        }
    }
}
