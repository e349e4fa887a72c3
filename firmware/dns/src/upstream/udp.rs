//! Plain DNS over UDP: a fresh socket (random source port) per query,
//! connected to the upstream so the kernel drops datagrams from any other
//! source; datagrams with the wrong ID or question are ignored, not fatal.

use super::sanitize::check_response;
use super::AttemptError;
use hickory_proto::op::Message;
use hickory_proto::rr::Name;
use std::net::SocketAddr;
use tokio::net::UdpSocket;

/// Send `query` to `addr` and wait until `deadline` for the matching answer.
pub(super) async fn exchange(
    addr: SocketAddr,
    query: &[u8],
    id: u16,
    qname: &Name,
    qtype: u16,
    deadline: tokio::time::Instant,
) -> Result<Message, AttemptError> {
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
        match check_response(&buf[..n], id, qname, qtype) {
            Ok(m) => return Ok(m),
            Err(AttemptError::Rcode) => return Err(AttemptError::Rcode),
            Err(_) => continue,
        }
    }
}
