//! The kernel WireGuard device read over generic netlink, walked in place.
//!
//! Every reconcile pass reads the whole device (a dump of every peer). At
//! 10k peers, wireguard-control's read (a link dump to find the device, a
//! family lookup, then the device dump parsed into owned values per
//! attribute) took a quarter of a reload's time in the guest
//! (bench/reconcile/run.sh). Here the family id is looked up once, the
//! device dump is requested by name (ENODEV: no such device), and each
//! peer's attributes are read from the datagram directly. A dump that the
//! kernel marks interrupted (the device changed meanwhile) is read again.
//!
//! The layout is the kernel's `include/uapi/linux/wireguard.h`.

use super::{Endpoint, ObservedDevice, ObservedPeer};
use crate::config::PublicKey;
use crate::nlraw::{self, cstr, nul, NlError, NLM_F_DUMP, NLM_F_DUMP_INTR};
use ipnet::IpNet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::sync::OnceLock;
use std::time::{Duration, UNIX_EPOCH};

const NETLINK_GENERIC: isize = 16;
const GENL_ID_CTRL: u16 = 0x10;
const CTRL_CMD_GETFAMILY: u8 = 3;
const CTRL_ATTR_FAMILY_ID: u16 = 1;
const CTRL_ATTR_FAMILY_NAME: u16 = 2;

const WG_CMD_GET_DEVICE: u8 = 0;
const WG_GENL_VERSION: u8 = 1;
const WGDEVICE_A_IFNAME: u16 = 2;
const WGDEVICE_A_PUBLIC_KEY: u16 = 4;
const WGDEVICE_A_LISTEN_PORT: u16 = 6;
const WGDEVICE_A_PEERS: u16 = 8;
const WGPEER_A_PUBLIC_KEY: u16 = 1;
const WGPEER_A_PRESHARED_KEY: u16 = 2;
const WGPEER_A_ENDPOINT: u16 = 4;
const WGPEER_A_LAST_HANDSHAKE_TIME: u16 = 6;
const WGPEER_A_RX_BYTES: u16 = 7;
const WGPEER_A_TX_BYTES: u16 = 8;
const WGPEER_A_ALLOWEDIPS: u16 = 9;
const WGALLOWEDIP_A_FAMILY: u16 = 1;
const WGALLOWEDIP_A_IPADDR: u16 = 2;
const WGALLOWEDIP_A_CIDR_MASK: u16 = 3;

const TRIES: usize = 5;

/// The wireguard family's id, once the module has registered it.
static FAMILY: OnceLock<u16> = OnceLock::new();

fn family(sock: &netlink_sys::Socket) -> Result<Option<u16>, NlError> {
    if let Some(id) = FAMILY.get() {
        return Ok(Some(*id));
    }
    let mut id = None;
    let name = nul("wireguard");
    let r = nlraw::request(sock, GENL_ID_CTRL, 0, &[CTRL_CMD_GETFAMILY, 1, 0, 0], &[(CTRL_ATTR_FAMILY_NAME, &name)], |_, _, body| {
        for a in nlraw::attrs(body.get(4..).unwrap_or_default()) {
            let (t, v) = a?;
            if t == CTRL_ATTR_FAMILY_ID && v.len() >= 2 {
                id = Some(u16::from_ne_bytes([v[0], v[1]]));
            }
        }
        Ok(())
    });
    match r {
        // No wireguard family: the module is not loaded, so no device exists.
        Err(NlError::Errno(e)) if e == libc::ENOENT => Ok(None),
        Err(e) => Err(e),
        Ok(_) => {
            let id = id.ok_or_else(|| NlError::Io("the wireguard family's reply has no id".into()))?;
            Ok(Some(*FAMILY.get_or_init(|| id)))
        }
    }
}

fn u16_ne(v: &[u8]) -> Option<u16> {
    Some(u16::from_ne_bytes(v.get(..2)?.try_into().ok()?))
}

fn u64_ne(v: &[u8]) -> Option<u64> {
    Some(u64::from_ne_bytes(v.get(..8)?.try_into().ok()?))
}

fn key(v: &[u8]) -> Option<[u8; 32]> {
    v.get(..32)?.try_into().ok()
}

/// A `struct sockaddr_in` or `sockaddr_in6` (port in network order).
fn sockaddr(v: &[u8]) -> Option<SocketAddr> {
    let fam = u16_ne(v)?;
    let port = u16::from_be_bytes(v.get(2..4)?.try_into().ok()?);
    match fam as i32 {
        libc::AF_INET => {
            let a: [u8; 4] = v.get(4..8)?.try_into().ok()?;
            Some(SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::from(a), port)))
        }
        libc::AF_INET6 => {
            let flow = u32::from_be_bytes(v.get(4..8)?.try_into().ok()?);
            let a: [u8; 16] = v.get(8..24)?.try_into().ok()?;
            let scope = u32::from_ne_bytes(v.get(24..28)?.try_into().ok()?);
            Some(SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::from(a), port, flow, scope)))
        }
        _ => None,
    }
}

fn allowed_ip(v: &[u8]) -> Result<Option<IpNet>, NlError> {
    let (mut fam, mut addr, mut cidr) = (None, None, None);
    for a in nlraw::attrs(v) {
        let (t, v) = a?;
        match t {
            WGALLOWEDIP_A_FAMILY => fam = u16_ne(v),
            WGALLOWEDIP_A_IPADDR => addr = Some(v),
            WGALLOWEDIP_A_CIDR_MASK => cidr = v.first().copied(),
            _ => {}
        }
    }
    let (Some(fam), Some(addr), Some(cidr)) = (fam, addr, cidr) else { return Ok(None) };
    let ip = match (fam as i32, addr.len()) {
        (libc::AF_INET, 4) => IpAddr::from(<[u8; 4]>::try_from(addr).expect("4 bytes")),
        (libc::AF_INET6, 16) => IpAddr::from(<[u8; 16]>::try_from(addr).expect("16 bytes")),
        _ => return Ok(None),
    };
    Ok(IpNet::new(ip, cidr).ok())
}

fn peer(v: &[u8]) -> Result<ObservedPeer, NlError> {
    let mut p = ObservedPeer {
        public_key: PublicKey([0; 32]),
        allowed_ips: Vec::new(),
        preshared_key: None,
        endpoint: None,
        last_handshake: None,
        rx_bytes: 0,
        tx_bytes: 0,
    };
    let mut has_key = false;
    for a in nlraw::attrs(v) {
        let (t, v) = a?;
        match t {
            WGPEER_A_PUBLIC_KEY => {
                if let Some(k) = key(v) {
                    p.public_key = PublicKey(k);
                    has_key = true;
                }
            }
            WGPEER_A_PRESHARED_KEY => p.preshared_key = key(v),
            WGPEER_A_ENDPOINT => p.endpoint = sockaddr(v).map(Endpoint),
            WGPEER_A_LAST_HANDSHAKE_TIME => {
                // struct __kernel_timespec: i64 seconds, i64 nanoseconds; zero is "never".
                let (s, n) = (u64_ne(v).unwrap_or(0), v.get(8..).and_then(u64_ne).unwrap_or(0));
                if (s, n) != (0, 0) {
                    p.last_handshake = Some(UNIX_EPOCH + Duration::new(s, n.min(999_999_999) as u32));
                }
            }
            WGPEER_A_RX_BYTES => p.rx_bytes = u64_ne(v).unwrap_or(0),
            WGPEER_A_TX_BYTES => p.tx_bytes = u64_ne(v).unwrap_or(0),
            WGPEER_A_ALLOWEDIPS => {
                for ip in nlraw::attrs(v) {
                    if let Some(net) = allowed_ip(ip?.1)? {
                        p.allowed_ips.push(net);
                    }
                }
            }
            _ => {}
        }
    }
    if !has_key {
        return Err(NlError::Io("a peer without its public key in the device dump".into()));
    }
    Ok(p)
}

enum Read {
    Done(ObservedDevice),
    Retry,
}

fn read_once(sock: &netlink_sys::Socket, family: u16, iface: &str) -> Result<Read, NlError> {
    let name = nul(iface);
    let mut dev = ObservedDevice { exists: true, ..Default::default() };
    let mut interrupted = false;
    let r = nlraw::request(sock, family, NLM_F_DUMP, &[WG_CMD_GET_DEVICE, WG_GENL_VERSION, 0, 0], &[(WGDEVICE_A_IFNAME, &name)], |_, flags, body| {
        interrupted |= flags & NLM_F_DUMP_INTR != 0;
        for a in nlraw::attrs(body.get(4..).unwrap_or_default()) {
            let (t, v) = a?;
            match t {
                WGDEVICE_A_IFNAME if cstr(v) != iface.as_bytes() => {
                    return Err(NlError::Io(format!("the dump of {iface} names another device")));
                }
                WGDEVICE_A_PUBLIC_KEY => dev.public_key = key(v).map(PublicKey),
                WGDEVICE_A_LISTEN_PORT => dev.listen_port = u16_ne(v),
                WGDEVICE_A_PEERS => {
                    for p in nlraw::attrs(v) {
                        dev.peers.push(peer(p?.1)?);
                    }
                }
                _ => {}
            }
        }
        Ok(())
    });
    match r {
        Ok(done) if interrupted || done & NLM_F_DUMP_INTR != 0 => Ok(Read::Retry),
        Ok(_) => {
            dev.peers = super::apply::merge_split_peers(dev.peers);
            Ok(Read::Done(dev))
        }
        // No such device, or a device of that name that is not WireGuard.
        Err(NlError::Errno(e)) if e == libc::ENODEV || e == libc::EOPNOTSUPP => Ok(Read::Done(ObservedDevice::default())),
        Err(e) => Err(e),
    }
}

/// The device `iface` as the kernel has it; not there: `exists: false`.
pub(super) fn observe(iface: &str) -> Result<ObservedDevice, NlError> {
    let sock = nlraw::socket(NETLINK_GENERIC)?;
    let Some(family) = family(&sock)? else { return Ok(ObservedDevice::default()) };
    for _ in 0..TRIES {
        if let Read::Done(dev) = read_once(&sock, family, iface)? {
            return Ok(dev);
        }
    }
    Err(NlError::Io(format!("{iface} changed during each of {TRIES} reads")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put_nested(out: &mut Vec<u8>, t: u16, inner: &[u8]) {
        nlraw::put_attr(out, t | 0x8000, inner);
    }

    /// A peer as the kernel lays it out (wireguard.h), read back.
    #[test]
    fn reads_a_peer_as_the_kernel_writes_it() {
        let mut ips = Vec::new();
        for (fam, addr, cidr) in [(libc::AF_INET as u16, vec![10, 66, 0, 2], 32u8), (libc::AF_INET6 as u16, vec![0xfd, 0x66, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2], 128)] {
            let mut one = Vec::new();
            nlraw::put_attr(&mut one, WGALLOWEDIP_A_FAMILY, &fam.to_ne_bytes());
            nlraw::put_attr(&mut one, WGALLOWEDIP_A_IPADDR, &addr);
            nlraw::put_attr(&mut one, WGALLOWEDIP_A_CIDR_MASK, &[cidr]);
            put_nested(&mut ips, 0, &one);
        }
        let mut sa = vec![0u8; 16];
        sa[..2].copy_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
        sa[2..4].copy_from_slice(&51820u16.to_be_bytes());
        sa[4..8].copy_from_slice(&[192, 0, 2, 7]);
        let mut ts = Vec::new();
        ts.extend_from_slice(&1_700_000_000u64.to_ne_bytes());
        ts.extend_from_slice(&5u64.to_ne_bytes());
        let mut p = Vec::new();
        nlraw::put_attr(&mut p, WGPEER_A_PUBLIC_KEY, &[7; 32]);
        nlraw::put_attr(&mut p, WGPEER_A_PRESHARED_KEY, &[0; 32]);
        nlraw::put_attr(&mut p, WGPEER_A_ENDPOINT, &sa);
        nlraw::put_attr(&mut p, WGPEER_A_LAST_HANDSHAKE_TIME, &ts);
        nlraw::put_attr(&mut p, WGPEER_A_RX_BYTES, &11u64.to_ne_bytes());
        nlraw::put_attr(&mut p, WGPEER_A_TX_BYTES, &12u64.to_ne_bytes());
        put_nested(&mut p, WGPEER_A_ALLOWEDIPS, &ips);
        let got = peer(&p).unwrap();
        assert_eq!(got.public_key, PublicKey([7; 32]));
        assert_eq!(got.allowed_ips, vec!["10.66.0.2/32".parse::<IpNet>().unwrap(), "fd66::2/128".parse().unwrap()]);
        assert_eq!(got.preshared_key, Some([0; 32]));
        assert_eq!(got.endpoint.map(|e| e.0), Some("192.0.2.7:51820".parse().unwrap()));
        assert_eq!(got.last_handshake, Some(UNIX_EPOCH + Duration::new(1_700_000_000, 5)));
        assert_eq!((got.rx_bytes, got.tx_bytes), (11, 12));

        // Never handshaken: no time. No key: an error.
        let mut q = Vec::new();
        nlraw::put_attr(&mut q, WGPEER_A_PUBLIC_KEY, &[8; 32]);
        nlraw::put_attr(&mut q, WGPEER_A_LAST_HANDSHAKE_TIME, &[0; 16]);
        assert_eq!(peer(&q).unwrap().last_handshake, None);
        let mut r = Vec::new();
        nlraw::put_attr(&mut r, WGPEER_A_RX_BYTES, &1u64.to_ne_bytes());
        assert!(peer(&r).is_err());
    }

    #[test]
    fn sockaddr_in6() {
        let mut sa = vec![0u8; 28];
        sa[..2].copy_from_slice(&(libc::AF_INET6 as u16).to_ne_bytes());
        sa[2..4].copy_from_slice(&443u16.to_be_bytes());
        sa[8..24].copy_from_slice(&"2001:db8::9".parse::<Ipv6Addr>().unwrap().octets());
        assert_eq!(sockaddr(&sa), Some("[2001:db8::9]:443".parse().unwrap()));
        assert_eq!(sockaddr(&[0; 16]), None);
    }
}
