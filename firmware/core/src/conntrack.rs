//! Conntrack over ctnetlink (NETLINK_NETFILTER): drop the NAT mappings that
//! point at an address the node no longer sends from.
//!
//! When the default route moves to another uplink while the old one stays
//! up (a silent black hole), a masqueraded flow's conntrack entry keeps its
//! old source address: its packets would leave the new uplink with the old
//! uplink's address and their answers would never come back. Deleting those
//! entries makes the next packet of each flow take a fresh mapping on the
//! new uplink. (A link that goes down loses its entries in the kernel by
//! itself; this covers the case where it does not.)
//!
//! Messages are built and read by hand: a dump of the table, then one
//! delete per matching entry, by its original tuple (as `conntrack -D`
//! does; Linux 6.1 cannot flush by tuple filter).

use std::io;
use std::net::IpAddr;

use netlink_sys::{protocols::NETLINK_NETFILTER, Socket, SocketAddr};

const NFNL_SUBSYS_CTNETLINK: u16 = 1;
const IPCTNL_MSG_CT_GET: u16 = 1;
const IPCTNL_MSG_CT_DELETE: u16 = 2;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_DUMP: u16 = 0x300;
const CTA_TUPLE_ORIG: u16 = 1;
const CTA_TUPLE_REPLY: u16 = 2;
const CTA_ZONE: u16 = 18;
const CTA_TUPLE_IP: u16 = 1;
const CTA_IP_V4_SRC: u16 = 1;
const CTA_IP_V4_DST: u16 = 2;
const CTA_IP_V6_SRC: u16 = 3;
const CTA_IP_V6_DST: u16 = 4;
const NLA_TYPE_MASK: u16 = 0x3fff;
const RECV_BUF: usize = 64 * 1024;

/// A ctnetlink call that failed.
#[derive(Debug, thiserror::Error)]
pub enum ConntrackError {
    #[error("conntrack {op}: netlink socket: {source}")]
    Socket { op: &'static str, source: io::Error },
    #[error("conntrack {op}: the kernel refused: {source}")]
    Kernel { op: &'static str, source: io::Error },
    #[error("conntrack {op}: unexpected reply: {detail}")]
    Reply { op: &'static str, detail: String },
}

/// The attributes of one netlink attribute stream: (type, payload, whole
/// attribute with its header).
fn attrs(mut b: &[u8]) -> Vec<(u16, &[u8], &[u8])> {
    let mut out = Vec::new();
    while b.len() >= 4 {
        let len = u16::from_ne_bytes([b[0], b[1]]) as usize;
        let kind = u16::from_ne_bytes([b[2], b[3]]) & NLA_TYPE_MASK;
        if len < 4 || len > b.len() {
            break;
        }
        out.push((kind, &b[4..len], &b[..len]));
        b = b.get((len + 3) & !3..).unwrap_or_default();
    }
    out
}

fn find(b: &[u8], kind: u16) -> Option<(&[u8], &[u8])> {
    attrs(b)
        .into_iter()
        .find(|a| a.0 == kind)
        .map(|a| (a.1, a.2))
}

fn ip_of(tuple: &[u8], v4: u16, v6: u16) -> Option<IpAddr> {
    let (ip, _) = find(tuple, CTA_TUPLE_IP)?;
    if let Some((a, _)) = find(ip, v4) {
        return Some(IpAddr::from(<[u8; 4]>::try_from(a).ok()?));
    }
    let (a, _) = find(ip, v6)?;
    Some(IpAddr::from(<[u8; 16]>::try_from(a).ok()?))
}

/// One conntrack entry as the dump shows it, reduced to what the match and
/// the delete need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub family: u8,
    pub orig_src: Option<IpAddr>,
    pub reply_dst: Option<IpAddr>,
    /// CTA_TUPLE_ORIG and CTA_ZONE as sent by the kernel (sent back to delete).
    orig_attr: Vec<u8>,
    zone_attr: Vec<u8>,
}

impl Entry {
    /// Parse the payload of one IPCTNL_MSG_CT_NEW message (after the netlink header).
    pub fn parse(payload: &[u8]) -> Option<Entry> {
        let family = *payload.first()?;
        let body = payload.get(4..)?;
        let (orig, orig_attr) = find(body, CTA_TUPLE_ORIG)?;
        let reply = find(body, CTA_TUPLE_REPLY).map(|r| r.0);
        Some(Entry {
            family,
            orig_src: ip_of(orig, CTA_IP_V4_SRC, CTA_IP_V6_SRC),
            reply_dst: reply.and_then(|r| ip_of(r, CTA_IP_V4_DST, CTA_IP_V6_DST)),
            orig_attr: orig_attr.to_vec(),
            zone_attr: find(body, CTA_ZONE)
                .map(|z| z.1.to_vec())
                .unwrap_or_default(),
        })
    }

    /// Source-NATed onto one of `addrs`: answers come back to that address,
    /// and the flow did not start there (the node's own flows stay).
    pub fn nated_to(&self, addrs: &[IpAddr]) -> bool {
        match (self.orig_src, self.reply_dst) {
            (Some(s), Some(d)) => s != d && addrs.contains(&d),
            _ => false,
        }
    }
}

fn message(kind: u16, flags: u16, seq: u32, family: u8, body: &[u8]) -> Vec<u8> {
    let len = 16 + 4 + body.len();
    let mut m = Vec::with_capacity(len);
    m.extend_from_slice(&(len as u32).to_ne_bytes());
    m.extend_from_slice(&((NFNL_SUBSYS_CTNETLINK << 8) | kind).to_ne_bytes());
    m.extend_from_slice(&flags.to_ne_bytes());
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    // nfgenmsg: family, version (NFNETLINK_V0), resource id (big endian).
    m.extend_from_slice(&[family, 0, 0, 0]);
    m.extend_from_slice(body);
    m
}

fn socket(op: &'static str) -> Result<Socket, ConntrackError> {
    let mut s =
        Socket::new(NETLINK_NETFILTER).map_err(|source| ConntrackError::Socket { op, source })?;
    s.bind_auto()
        .map_err(|source| ConntrackError::Socket { op, source })?;
    s.connect(&SocketAddr::new(0, 0))
        .map_err(|source| ConntrackError::Socket { op, source })?;
    Ok(s)
}

/// Send one request; hand each reply message (type, payload) to `each`
/// until the ACK or NLMSG_DONE.
fn transact(
    op: &'static str,
    req: &[u8],
    seq: u32,
    mut each: impl FnMut(u16, &[u8]),
) -> Result<(), ConntrackError> {
    let s = socket(op)?;
    s.send(req, 0)
        .map_err(|source| ConntrackError::Socket { op, source })?;
    let mut buf: Vec<u8> = Vec::with_capacity(RECV_BUF);
    loop {
        buf.clear();
        let n = s
            .recv(&mut buf, libc::MSG_TRUNC)
            .map_err(|source| ConntrackError::Socket { op, source })?;
        if n > buf.len() {
            return Err(ConntrackError::Reply {
                op,
                detail: format!("a {n}-byte datagram exceeds the buffer"),
            });
        }
        let mut off = 0;
        while off + 16 <= buf.len() {
            let len = u32::from_ne_bytes(buf[off..off + 4].try_into().expect("4 bytes")) as usize;
            let kind = u16::from_ne_bytes([buf[off + 4], buf[off + 5]]);
            let mseq = u32::from_ne_bytes(buf[off + 8..off + 12].try_into().expect("4 bytes"));
            if len < 16 || off + len > buf.len() {
                return Err(ConntrackError::Reply {
                    op,
                    detail: format!("message length {len}"),
                });
            }
            let payload = &buf[off + 16..off + len];
            off += (len + 3) & !3;
            if mseq != seq {
                continue;
            }
            match kind {
                NLMSG_DONE => return Ok(()),
                NLMSG_ERROR => {
                    let code = payload
                        .get(..4)
                        .map(|c| i32::from_ne_bytes(c.try_into().expect("4 bytes")))
                        .unwrap_or(0);
                    if code == 0 {
                        return Ok(());
                    }
                    return Err(ConntrackError::Kernel {
                        op,
                        source: io::Error::from_raw_os_error(-code),
                    });
                }
                _ => each(kind, payload),
            }
        }
    }
}

static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(1);

/// Every conntrack entry (both families).
pub fn dump() -> Result<Vec<Entry>, ConntrackError> {
    let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let req = message(
        IPCTNL_MSG_CT_GET,
        NLM_F_REQUEST | NLM_F_DUMP,
        seq,
        libc::AF_UNSPEC as u8,
        &[],
    );
    let mut out = Vec::new();
    transact("dump", &req, seq, |_, p| out.extend(Entry::parse(p)))?;
    Ok(out)
}

/// Delete one entry by its original tuple. An entry already gone is fine.
pub fn delete(e: &Entry) -> Result<(), ConntrackError> {
    let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut body = e.orig_attr.clone();
    while !body.len().is_multiple_of(4) {
        body.push(0);
    }
    body.extend_from_slice(&e.zone_attr);
    let req = message(
        IPCTNL_MSG_CT_DELETE,
        NLM_F_REQUEST | NLM_F_ACK,
        seq,
        e.family,
        &body,
    );
    match transact("delete", &req, seq, |_, _| {}) {
        Err(ConntrackError::Kernel { source, .. })
            if source.raw_os_error() == Some(libc::ENOENT) =>
        {
            Ok(())
        }
        r => r,
    }
}

/// Delete every entry source-NATed onto one of `addrs`; returns how many.
pub fn flush_nated_to(addrs: &[IpAddr]) -> Result<usize, ConntrackError> {
    if addrs.is_empty() {
        return Ok(0);
    }
    let mut n = 0;
    for e in dump()?.iter().filter(|e| e.nated_to(addrs)) {
        delete(e)?;
        n += 1;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attr(kind: u16, payload: &[u8]) -> Vec<u8> {
        let mut a = Vec::new();
        a.extend_from_slice(&((4 + payload.len()) as u16).to_ne_bytes());
        a.extend_from_slice(&kind.to_ne_bytes());
        a.extend_from_slice(payload);
        while !a.len().is_multiple_of(4) {
            a.push(0);
        }
        a
    }

    fn tuple(src: [u8; 4], dst: [u8; 4]) -> Vec<u8> {
        let ip = [attr(CTA_IP_V4_SRC, &src), attr(CTA_IP_V4_DST, &dst)].concat();
        let proto = attr(1, &[17]);
        [attr(0x8000 | CTA_TUPLE_IP, &ip), attr(0x8000 | 2, &proto)].concat()
    }

    #[test]
    fn parses_a_masqueraded_entry_and_matches_its_nat_address() {
        // Client 10.66.0.2 -> web 203.0.113.80, masqueraded to 192.0.2.2.
        let orig = attr(
            0x8000 | CTA_TUPLE_ORIG,
            &tuple([10, 66, 0, 2], [203, 0, 113, 80]),
        );
        let reply = attr(
            0x8000 | CTA_TUPLE_REPLY,
            &tuple([203, 0, 113, 80], [192, 0, 2, 2]),
        );
        let payload = [vec![libc::AF_INET as u8, 0, 0, 0], orig.clone(), reply].concat();
        let e = Entry::parse(&payload).unwrap();
        assert_eq!(e.orig_src, Some("10.66.0.2".parse().unwrap()));
        assert_eq!(e.reply_dst, Some("192.0.2.2".parse().unwrap()));
        assert_eq!(e.orig_attr, orig);
        assert!(e.nated_to(&["192.0.2.2".parse().unwrap()]));
        assert!(!e.nated_to(&["198.51.100.2".parse().unwrap()]));
        // The node's own flow from that address is not a NAT mapping.
        let own = [
            vec![libc::AF_INET as u8, 0, 0, 0],
            attr(
                0x8000 | CTA_TUPLE_ORIG,
                &tuple([192, 0, 2, 2], [203, 0, 113, 80]),
            ),
            attr(
                0x8000 | CTA_TUPLE_REPLY,
                &tuple([203, 0, 113, 80], [192, 0, 2, 2]),
            ),
        ]
        .concat();
        assert!(!Entry::parse(&own)
            .unwrap()
            .nated_to(&["192.0.2.2".parse().unwrap()]));
        // Truncated input parses to nothing, never panics.
        for n in 0..payload.len() {
            let _ = Entry::parse(&payload[..n]);
        }
    }
}
