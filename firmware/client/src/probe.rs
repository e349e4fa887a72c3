//! The health probe: a DNS query for `localhost.` (answered by the node's
//! resolver itself, RFC 6761, never forwarded upstream) to the node's tunnel
//! address, so an answer proves the tunnel and the node both work.

use std::io;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

/// The query (header + question `localhost. IN A`), recursion desired.
pub fn query(id: u16) -> Vec<u8> {
    let mut q = Vec::with_capacity(27);
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    q.push(9);
    q.extend_from_slice(b"localhost");
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q
}

/// Whether `msg` is a response to query `id` (any response code: the node
/// answered).
pub fn is_answer(msg: &[u8], id: u16) -> bool {
    msg.len() >= 12 && msg[..2] == id.to_be_bytes() && msg[2] & 0x80 != 0
}

/// One probe socket, reused (one per address family of the resolver).
pub struct Prober {
    sock: UdpSocket,
    id: u16,
}

impl Prober {
    pub fn new(family_of: IpAddr) -> io::Result<Prober> {
        let bind: SocketAddr = if family_of.is_ipv4() {
            "0.0.0.0:0".parse()
        } else {
            "[::]:0".parse()
        }
        .expect("literal address");
        Ok(Prober {
            sock: UdpSocket::bind(bind)?,
            id: 0,
        })
    }

    /// Query the resolver at `to` port 53; true when it answered within
    /// `timeout`. A send error (no route while the interface changes) is a
    /// missing answer, not a failure of the client.
    pub fn probe(&mut self, to: IpAddr, timeout: Duration) -> bool {
        self.id = self.id.wrapping_add(1);
        let id = self.id;
        if self
            .sock
            .send_to(&query(id), SocketAddr::new(to, 53))
            .is_err()
        {
            return false;
        }
        let end = Instant::now() + timeout;
        let mut buf = [0u8; 512];
        loop {
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() || self.sock.set_read_timeout(Some(left)).is_err() {
                return false;
            }
            match self.sock.recv_from(&mut buf) {
                Ok((n, from)) if from.ip() == to && is_answer(&buf[..n], id) => return true,
                Ok(_) => continue,
                Err(_) => return false,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_bytes() {
        assert_eq!(
            query(0x1234),
            [
                0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 9, b'l', b'o', b'c', b'a', b'l', b'h',
                b'o', b's', b't', 0, 0, 1, 0, 1
            ]
        );
        let mut resp = query(7);
        resp[2] |= 0x80;
        assert!(is_answer(&resp, 7));
        assert!(!is_answer(&resp, 8));
        assert!(!is_answer(&query(7), 7), "a query is not an answer");
        assert!(!is_answer(&resp[..5], 7));
    }
}
