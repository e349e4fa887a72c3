//! Packet capture inside a namespace without tcpdump: one AF_PACKET socket
//! (SOCK_DGRAM, every protocol, every interface of the namespace) read on a
//! thread until [`Capture::stop`]. The socket belongs to the namespace it was
//! made in, so it sees exactly that namespace's interfaces: in the bed's
//! internet namespace that is every frame the node's uplink sends or receives.

use crate::ns::Netns;
use anyhow::{Context, Result};
use socket2::{Domain, Protocol, Socket, Type};
use std::io::Read;
use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// ETH_P_ALL in network byte order, as socket(2) wants it for AF_PACKET.
const ETH_P_ALL_BE: i32 = 0x0300;

pub const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_ICMPV6: u8 = 58;

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// A running capture (stopped and joined on drop).
#[derive(Debug)]
pub struct Capture {
    stop: Arc<AtomicBool>,
    packets: Arc<Mutex<Vec<Packet>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Capture {
    /// Start capturing every IPv4/IPv6 packet on every interface of `ns`
    /// (frames seen twice, e.g. on a bridge port and the bridge, appear twice).
    pub fn start(ns: &Netns) -> Result<Capture> {
        let sock = ns
            .enter(|| {
                Socket::new(
                    Domain::PACKET,
                    Type::DGRAM,
                    Some(Protocol::from(ETH_P_ALL_BE)),
                )
            })?
            .with_context(|| format!("AF_PACKET socket in {}", ns.name()))?;
        sock.set_read_timeout(Some(Duration::from_millis(20)))?;
        let _ = sock.set_recv_buffer_size(4 << 20);
        let stop = Arc::new(AtomicBool::new(false));
        let packets = Arc::new(Mutex::new(Vec::new()));
        let (st, pk) = (stop.clone(), packets.clone());
        let thread = std::thread::spawn(move || {
            let mut s = sock;
            let mut buf = vec![0u8; 65536];
            // After stop, keep draining what is already queued until the socket
            // is idle (bounded, in case traffic never pauses).
            let mut after_stop = 0u32;
            loop {
                let stopping = st.load(Ordering::SeqCst);
                match s.read(&mut buf) {
                    Ok(n) => {
                        if let Some(p) = Packet::parse(&buf[..n]) {
                            pk.lock().unwrap_or_else(|e| e.into_inner()).push(p);
                        }
                        if stopping {
                            after_stop += 1;
                            if after_stop > 10_000 {
                                break;
                            }
                        }
                    }
                    Err(_) if stopping => break,
                    Err(_) => {}
                }
            }
        });
        Ok(Capture {
            stop,
            packets,
            thread: Some(thread),
        })
    }

    /// Stop and return every packet seen.
    pub fn stop(mut self) -> Vec<Packet> {
        self.finish();
        std::mem::take(&mut *self.packets.lock().unwrap_or_else(|e| e.into_inner()))
    }

    fn finish(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.finish();
    }
}

/// One IPv4 or IPv6 packet: addresses, the transport protocol and its bytes.
/// IPv6 extension headers are not followed (the probes never send any).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub proto: u8,
    pub l4: Vec<u8>,
}

impl Packet {
    /// Parse a network-layer packet; `None` for anything else (ARP, truncated).
    pub fn parse(b: &[u8]) -> Option<Packet> {
        match b.first()? >> 4 {
            4 => {
                let ihl = usize::from(b[0] & 0x0f) * 4;
                let total = usize::from(u16::from_be_bytes([*b.get(2)?, *b.get(3)?]));
                if ihl < 20 || total < ihl || b.len() < total {
                    return None;
                }
                let src = Ipv4Addr::from(<[u8; 4]>::try_from(&b[12..16]).ok()?);
                let dst = Ipv4Addr::from(<[u8; 4]>::try_from(&b[16..20]).ok()?);
                Some(Packet {
                    src: src.into(),
                    dst: dst.into(),
                    proto: b[9],
                    l4: b[ihl..total].to_vec(),
                })
            }
            6 => {
                if b.len() < 40 {
                    return None;
                }
                let plen = usize::from(u16::from_be_bytes([b[4], b[5]]));
                let end = (40 + plen).min(b.len());
                let src = Ipv6Addr::from(<[u8; 16]>::try_from(&b[8..24]).ok()?);
                let dst = Ipv6Addr::from(<[u8; 16]>::try_from(&b[24..40]).ok()?);
                Some(Packet {
                    src: src.into(),
                    dst: dst.into(),
                    proto: b[6],
                    l4: b[40..end].to_vec(),
                })
            }
            _ => None,
        }
    }

    /// Source and destination port (TCP, UDP).
    pub fn ports(&self) -> Option<(u16, u16)> {
        if self.proto != PROTO_TCP && self.proto != PROTO_UDP {
            return None;
        }
        let l = &self.l4;
        Some((
            u16::from_be_bytes([*l.first()?, *l.get(1)?]),
            u16::from_be_bytes([*l.get(2)?, *l.get(3)?]),
        ))
    }

    /// TCP flags byte (FIN 0x01, SYN 0x02, RST 0x04, PSH 0x08, ACK 0x10, URG 0x20).
    pub fn tcp_flags(&self) -> Option<u8> {
        (self.proto == PROTO_TCP).then(|| self.l4.get(13).copied())?
    }

    /// TCP sequence number.
    pub fn tcp_seq(&self) -> Option<u32> {
        if self.proto != PROTO_TCP {
            return None;
        }
        Some(u32::from_be_bytes(self.l4.get(4..8)?.try_into().ok()?))
    }

    /// The MSS option of a TCP segment, if it carries one.
    pub fn tcp_mss(&self) -> Option<u16> {
        if self.proto != PROTO_TCP {
            return None;
        }
        let off = usize::from(self.l4.get(12)? >> 4) * 4;
        let opts = self.l4.get(20..off)?;
        let mut i = 0;
        while i < opts.len() {
            match opts[i] {
                0 => return None,
                1 => i += 1,
                kind => {
                    let len = usize::from(*opts.get(i + 1)?);
                    if len < 2 {
                        return None;
                    }
                    if kind == 2 && len == 4 {
                        return Some(u16::from_be_bytes([*opts.get(i + 2)?, *opts.get(i + 3)?]));
                    }
                    i += len;
                }
            }
        }
        None
    }

    /// ICMP (v4) or ICMPv6 type.
    pub fn icmp_type(&self) -> Option<u8> {
        (self.proto == PROTO_ICMP || self.proto == PROTO_ICMPV6)
            .then(|| self.l4.first().copied())?
    }

    /// UDP payload.
    pub fn udp_payload(&self) -> Option<&[u8]> {
        (self.proto == PROTO_UDP).then(|| self.l4.get(8..))?
    }
}

/// Destination addresses of every packet seen in `ns` while `during` runs,
/// and for `tail` after it (packets still in flight).
pub fn destinations_seen<T>(ns: &Netns, tail: Duration, during: impl FnOnce() -> T) -> Result<(BTreeSet<IpAddr>, T)> {
    let cap = Capture::start(ns)?;
    let out = during();
    std::thread::sleep(tail);
    Ok((cap.stop().into_iter().map(|p| p.dst).collect(), out))
}

/// ICMP and ICMPv6 message types seen in `ns` while `during` runs (and for
/// `tail` after it): `(icmp types, icmpv6 types, what during returned)`.
pub fn icmp_types_seen<T>(ns: &Netns, tail: Duration, during: impl FnOnce() -> T) -> Result<(Vec<u8>, Vec<u8>, T)> {
    let cap = Capture::start(ns)?;
    let out = during();
    std::thread::sleep(tail);
    let pkts = cap.stop();
    let of = |proto: u8| pkts.iter().filter(|p| p.proto == proto).filter_map(Packet::icmp_type).collect();
    Ok((of(PROTO_ICMP), of(PROTO_ICMPV6), out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_v4_syn_with_mss() {
        let mut p = vec![0x45, 0, 0, 44, 0, 0, 0x40, 0, 64, 6, 0, 0];
        p.extend_from_slice(&[10, 66, 0, 2, 203, 0, 113, 80]);
        // TCP: sport 40000, dport 80, seq 7, ack 0, doff 6, SYN, win, csum, urg, MSS 1460
        p.extend_from_slice(&[0x9c, 0x40, 0, 80, 0, 0, 0, 7, 0, 0, 0, 0, 0x60, 0x02]);
        p.extend_from_slice(&[0xff, 0xff, 0, 0, 0, 0, 2, 4, 0x05, 0xb4]);
        let pk = Packet::parse(&p).unwrap();
        assert_eq!(pk.src, "10.66.0.2".parse::<IpAddr>().unwrap());
        assert_eq!(pk.ports(), Some((40000, 80)));
        assert_eq!(pk.tcp_flags(), Some(TCP_SYN));
        assert_eq!(pk.tcp_seq(), Some(7));
        assert_eq!(pk.tcp_mss(), Some(1460));
        assert_eq!(Packet::parse(&[0x00, 0x01, 0x08, 0x00]), None);
    }
}
