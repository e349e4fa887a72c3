//! Packet capture without tcpdump: an AF_PACKET socket in a namespace sees
//! every frame on every interface there. Tests use it to prove that packets
//! to given destinations never left the node (a capture on the uplink side),
//! and raw ICMP sockets to prove that no redirect reached a client.

use crate::ns::Netns;
use socket2::{Domain, Protocol, Socket, Type};
use std::collections::BTreeSet;
use std::io::Read;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant};

/// Destination addresses of every IPv4/IPv6 frame seen in `ns` while `during`
/// runs (plus `tail` afterwards, for packets still in flight).
pub fn destinations_seen<T: Send>(ns: &Netns, tail: Duration, during: impl FnOnce() -> T + Send) -> anyhow::Result<(BTreeSet<IpAddr>, T)> {
    let sock = ns.enter(|| -> std::io::Result<Socket> {
        // ETH_P_ALL in network byte order.
        let s = Socket::new(Domain::PACKET, Type::RAW, Some(Protocol::from(0x0003u16.to_be() as i32)))?;
        s.set_read_timeout(Some(Duration::from_millis(50)))?;
        Ok(s)
    })??;
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (seen, out) = std::thread::scope(|s| {
        let reader = s.spawn(|| {
            let mut seen = BTreeSet::new();
            let mut buf = vec![0u8; 65536];
            let mut deadline: Option<Instant> = None;
            loop {
                if deadline.is_none() && stop.load(std::sync::atomic::Ordering::SeqCst) {
                    deadline = Some(Instant::now() + tail);
                }
                if deadline.is_some_and(|d| Instant::now() > d) {
                    break;
                }
                if let Ok(n) = (&sock).read(&mut buf) {
                    if let Some(a) = frame_destination(&buf[..n]) {
                        seen.insert(a);
                    }
                }
            }
            seen
        });
        let out = during();
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        (reader.join().expect("capture thread"), out)
    });
    Ok((seen, out))
}

/// The destination address of an Ethernet frame carrying IPv4 or IPv6.
pub fn frame_destination(f: &[u8]) -> Option<IpAddr> {
    let ethertype = u16::from_be_bytes([*f.get(12)?, *f.get(13)?]);
    match ethertype {
        0x0800 => {
            let d: [u8; 4] = f.get(30..34)?.try_into().ok()?;
            Some(IpAddr::V4(Ipv4Addr::from(d)))
        }
        0x86dd => {
            let d: [u8; 16] = f.get(38..54)?.try_into().ok()?;
            Some(IpAddr::V6(Ipv6Addr::from(d)))
        }
        _ => None,
    }
}

/// ICMP (v4) and ICMPv6 message types that reached `ns` while `during` ran.
/// Returns `(icmpv4 types, icmpv6 types)`.
pub fn icmp_types_seen<T: Send>(ns: &Netns, tail: Duration, during: impl FnOnce() -> T + Send) -> anyhow::Result<(Vec<u8>, Vec<u8>, T)> {
    let (s4, s6) = ns.enter(|| -> std::io::Result<(Socket, Socket)> {
        let s4 = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::ICMPV4))?;
        let s6 = Socket::new(Domain::IPV6, Type::RAW, Some(Protocol::ICMPV6))?;
        s4.set_read_timeout(Some(Duration::from_millis(20)))?;
        s6.set_read_timeout(Some(Duration::from_millis(20)))?;
        Ok((s4, s6))
    })??;
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        let reader = s.spawn(|| {
            let (mut t4, mut t6) = (Vec::new(), Vec::new());
            let mut buf = vec![0u8; 65536];
            let mut deadline: Option<Instant> = None;
            loop {
                if deadline.is_none() && stop.load(std::sync::atomic::Ordering::SeqCst) {
                    deadline = Some(Instant::now() + tail);
                }
                if deadline.is_some_and(|d| Instant::now() > d) {
                    break;
                }
                // IPv4 raw sockets deliver the IP header; IPv6 ones do not.
                if let Ok(n) = (&s4).read(&mut buf) {
                    let ihl = usize::from(buf[0] & 0x0f) * 4;
                    if n > ihl {
                        t4.push(buf[ihl]);
                    }
                }
                if let Ok(n) = (&s6).read(&mut buf) {
                    if n > 0 {
                        t6.push(buf[0]);
                    }
                }
            }
            (t4, t6)
        });
        let out = during();
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let (t4, t6) = reader.join().expect("capture thread");
        Ok((t4, t6, out))
    })
}
