//! Probes the matrix kinds ([`crate::matrix::Kind`]) lack. Each runs in the
//! caller's namespace: call it inside [`crate::Netns::enter`].

use crate::probe::Outcome;
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// One's-complement sum over 16-bit words (the Internet checksum, RFC 1071).
fn csum(parts: &[&[u8]]) -> u16 {
    let mut sum: u32 = 0;
    let mut odd: Option<u8> = None;
    for part in parts {
        for &b in part.iter() {
            match odd.take() {
                None => odd = Some(b),
                Some(hi) => sum += u32::from(u16::from_be_bytes([hi, b])),
            }
        }
    }
    if let Some(hi) = odd {
        sum += u32::from(u16::from_be_bytes([hi, 0]));
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// A 20-byte TCP header (no options, no payload) with a correct checksum.
pub fn tcp_segment(src: IpAddr, dst: SocketAddr, sport: u16, seq: u32, flags: u8) -> Vec<u8> {
    let mut h = Vec::with_capacity(20);
    h.extend_from_slice(&sport.to_be_bytes());
    h.extend_from_slice(&dst.port().to_be_bytes());
    h.extend_from_slice(&seq.to_be_bytes());
    h.extend_from_slice(&0x0102_0304u32.to_be_bytes()); // ack number
    h.push(5 << 4); // data offset: 5 words
    h.push(flags);
    h.extend_from_slice(&4096u16.to_be_bytes()); // window
    h.extend_from_slice(&[0, 0, 0, 0]); // checksum, urgent pointer
    let len = (h.len() as u16).to_be_bytes();
    let c = match (src, dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => csum(&[
            &s.octets(),
            &d.octets(),
            &[0, crate::capture::PROTO_TCP],
            &len,
            &h,
        ]),
        (IpAddr::V6(s), IpAddr::V6(d)) => csum(&[
            &s.octets(),
            &d.octets(),
            &[0, 0],
            &len,
            &[0, 0, 0, crate::capture::PROTO_TCP],
            &h,
        ]),
        _ => 0,
    };
    h[16..18].copy_from_slice(&c.to_be_bytes());
    h
}

/// Send one hand-made TCP segment from `src` (an address of this namespace) to
/// `dst` through a raw socket: the kernel adds the IP header, nothing else
/// touches it (no connection, so conntrack judges it on its flags alone).
pub fn send_tcp(
    src: IpAddr,
    dst: SocketAddr,
    sport: u16,
    seq: u32,
    flags: u8,
) -> Result<(), String> {
    let dom = if dst.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    let s = Socket::new(dom, Type::RAW, Some(Protocol::TCP)).map_err(|e| e.to_string())?;
    s.bind(&SockAddr::from(SocketAddr::new(src, 0)))
        .map_err(|e| format!("bind {src}: {e}"))?;
    let seg = tcp_segment(src, dst, sport, seq, flags);
    // Raw sockets take the protocol, not a port, in the address: use 0.
    s.send_to(&seg, &SockAddr::from(SocketAddr::new(dst.ip(), 0)))
        .map(|_| ())
        .map_err(|e| format!("send to {dst}: {e}"))
}

/// One datagram from exactly `src` (address and port, e.g. a DHCP server's
/// port 67) to `dst`, waiting for an answer. An ICMP port unreachable comes
/// back as [`Outcome::Refused`]: proof that the datagram was delivered to a
/// host that has no socket on that port.
pub fn udp_from(src: SocketAddr, dst: SocketAddr, payload: &[u8], timeout: Duration) -> Outcome {
    crate::probe::udp_exchange_from(Some(src), dst, payload, timeout)
}

/// One ICMP echo from source address `src` (busybox `ping -I`).
pub fn ping_from(src: IpAddr, dst: IpAddr, timeout: Duration) -> Outcome {
    let secs = timeout.as_secs().max(1).to_string();
    let fam = if dst.is_ipv4() { "-4" } else { "-6" };
    match std::process::Command::new("busybox")
        .args([
            "ping",
            fam,
            "-c",
            "1",
            "-W",
            &secs,
            "-I",
            &src.to_string(),
            &dst.to_string(),
        ])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
    {
        Ok(st) if st.success() => Outcome::Answered("echo".into()),
        Ok(_) => Outcome::Timeout,
        Err(e) => Outcome::Error(format!("busybox ping: {e}")),
    }
}

/// Send one ICMP redirect (IPv4 type 5) or ICMPv6 redirect (type 137) to
/// `dst` from this namespace's own stack, as the node's kernel would send
/// one: the output chain must drop it whatever produced it. The body names
/// `target` as the better first hop (IPv4: the gateway field).
pub fn send_redirect(dst: IpAddr, target: IpAddr) -> Result<(), String> {
    let dst_sa = SockAddr::from(SocketAddr::new(dst, 0));
    match (dst, target) {
        (IpAddr::V4(d), IpAddr::V4(t)) => {
            let s = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::ICMPV4)).map_err(|e| e.to_string())?;
            // type 5 code 1 (host redirect), checksum, gateway, then the
            // offending datagram's IP header and 8 bytes (a UDP header).
            let mut m = vec![5u8, 1, 0, 0];
            m.extend_from_slice(&t.octets());
            let mut ip = vec![0x45, 0, 0, 28, 0, 0, 0x40, 0, 64, 17, 0, 0];
            ip.extend_from_slice(&t.octets());
            ip.extend_from_slice(&d.octets());
            m.extend_from_slice(&ip);
            m.extend_from_slice(&[0x9c, 0x40, 0, 7, 0, 8, 0, 0]);
            let c = csum(&[&m]);
            m[2..4].copy_from_slice(&c.to_be_bytes());
            s.send_to(&m, &dst_sa).map(|_| ()).map_err(|e| format!("send ICMP redirect to {d}: {e}"))
        }
        (IpAddr::V6(d), IpAddr::V6(t)) => {
            let s = Socket::new(Domain::IPV6, Type::RAW, Some(Protocol::ICMPV6)).map_err(|e| e.to_string())?;
            // Neighbour discovery messages carry hop limit 255.
            let _ = s.set_multicast_hops_v6(255);
            let _ = s.set_unicast_hops_v6(255);
            // type 137 code 0, checksum (the kernel fills it for ICMPv6),
            // reserved, target, destination.
            let mut m = vec![137u8, 0, 0, 0, 0, 0, 0, 0];
            m.extend_from_slice(&t.octets());
            m.extend_from_slice(&d.octets());
            s.send_to(&m, &dst_sa).map(|_| ()).map_err(|e| format!("send ICMPv6 redirect to {d}: {e}"))
        }
        _ => Err(format!("{dst} and {target} are of different families")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcp_checksum_verifies() {
        // Summing a segment with its checksum over the pseudo-header gives 0.
        let src: IpAddr = "10.66.0.2".parse().unwrap();
        let dst: SocketAddr = "203.0.113.80:80".parse().unwrap();
        let seg = tcp_segment(src, dst, 40000, 1, 0x13);
        let (IpAddr::V4(s), IpAddr::V4(d)) = (src, dst.ip()) else {
            unreachable!()
        };
        let len = (seg.len() as u16).to_be_bytes();
        assert_eq!(csum(&[&s.octets(), &d.octets(), &[0, 6], &len, &seg]), 0);
        let src6: IpAddr = "fd66::2".parse().unwrap();
        let dst6: SocketAddr = "[2001:db8:113::80]:80".parse().unwrap();
        let seg6 = tcp_segment(src6, dst6, 40000, 1, 0x13);
        let (IpAddr::V6(s), IpAddr::V6(d)) = (src6, dst6.ip()) else {
            unreachable!()
        };
        let len = (seg6.len() as u16).to_be_bytes();
        assert_eq!(
            csum(&[
                &s.octets(),
                &d.octets(),
                &[0, 0],
                &len,
                &[0, 0, 0, 6],
                &seg6
            ]),
            0
        );
    }
}
