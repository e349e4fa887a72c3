//! Raw netlink for the two hot reads of every reconcile pass: the
//! firewall's drift check (`firewall::nfnl`, NETLINK_NETFILTER) and the
//! WireGuard device dump (`wg::genl`, generic netlink). Each reads a large
//! dump and keeps a few attributes, so attributes are walked in place
//! (borrowed slices) instead of being parsed into owned values per
//! attribute, which is what the general-purpose netlink crates do.

use netlink_sys::{Socket, SocketAddr};
use std::sync::atomic::{AtomicU32, Ordering};

pub const NLM_F_REQUEST: u16 = 0x1;
pub const NLM_F_DUMP: u16 = 0x300;
pub const NLM_F_DUMP_INTR: u16 = 0x10;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLA_TYPE_MASK: u16 = 0x3fff;
/// Receive buffer: larger than any dump datagram the kernel sends (it caps
/// them at 32 KiB).
const RECV_BUF: usize = 1 << 17;

static SEQ: AtomicU32 = AtomicU32::new(1);

#[derive(Debug)]
pub enum NlError {
    /// The socket failed, or a reply did not parse.
    Io(String),
    /// The kernel answered with this errno.
    Errno(i32),
}

impl std::fmt::Display for NlError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NlError::Io(m) => f.write_str(m),
            NlError::Errno(e) => write!(f, "{}", std::io::Error::from_raw_os_error(*e)),
        }
    }
}

fn io(msg: impl std::fmt::Display) -> NlError {
    NlError::Io(msg.to_string())
}

/// A socket of `protocol`, bound and connected to the kernel.
pub fn socket(protocol: isize) -> Result<Socket, NlError> {
    let mut sock = Socket::new(protocol).map_err(|e| io(format!("socket: {e}")))?;
    sock.bind_auto().map_err(|e| io(format!("bind: {e}")))?;
    sock.connect(&SocketAddr::new(0, 0)).map_err(|e| io(format!("connect: {e}")))?;
    Ok(sock)
}

/// Append attribute `t` with payload `v` (padded to 4 bytes).
pub fn put_attr(out: &mut Vec<u8>, t: u16, v: &[u8]) {
    let len = 4 + v.len();
    out.extend_from_slice(&(len as u16).to_ne_bytes());
    out.extend_from_slice(&t.to_ne_bytes());
    out.extend_from_slice(v);
    out.resize((out.len() + 3) & !3, 0);
}

/// A string attribute's payload: the bytes and a NUL.
pub fn nul(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

/// An NLA_STRING payload without its NUL.
pub fn cstr(v: &[u8]) -> &[u8] {
    v.split(|b| *b == 0).next().unwrap_or_default()
}

/// The attributes of `b` in place: (type without the nested/byte-order
/// flags, payload). An attribute that overruns `b` is an error.
pub fn attrs(mut b: &[u8]) -> impl Iterator<Item = Result<(u16, &[u8]), NlError>> {
    std::iter::from_fn(move || {
        if b.len() < 4 {
            return None;
        }
        let len = u16::from_ne_bytes([b[0], b[1]]) as usize;
        let t = u16::from_ne_bytes([b[2], b[3]]) & NLA_TYPE_MASK;
        if len < 4 || len > b.len() {
            b = &[];
            return Some(Err(io(format!("attribute {t} of length {len} overruns its message"))));
        }
        let v = &b[4..len];
        b = &b[((len + 3) & !3).min(b.len())..];
        Some(Ok((t, v)))
    })
}

/// One request of type `kind` with `flags`, its family header and
/// attributes; every reply message up to NLMSG_DONE (or, without
/// NLM_F_DUMP, the first) goes to `each` as (type, flags, body). Returns
/// the flags of NLMSG_DONE (a dump's NLM_F_DUMP_INTR can be set on it
/// alone). An error reply ends it with [`NlError::Errno`].
pub fn request(
    sock: &Socket,
    kind: u16,
    flags: u16,
    header: &[u8],
    attributes: &[(u16, &[u8])],
    mut each: impl FnMut(u16, u16, &[u8]) -> Result<(), NlError>,
) -> Result<u16, NlError> {
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    let mut req = vec![0u8; 16];
    req.extend_from_slice(header);
    for (t, v) in attributes {
        put_attr(&mut req, *t, v);
    }
    let len = req.len() as u32;
    req[0..4].copy_from_slice(&len.to_ne_bytes());
    req[4..6].copy_from_slice(&kind.to_ne_bytes());
    req[6..8].copy_from_slice(&(NLM_F_REQUEST | flags).to_ne_bytes());
    req[8..12].copy_from_slice(&seq.to_ne_bytes());
    let sent = sock.send(&req, 0).map_err(|e| io(format!("send: {e}")))?;
    if sent != req.len() {
        return Err(io(format!("sent {sent} of {} bytes", req.len())));
    }
    let dump = flags & NLM_F_DUMP == NLM_F_DUMP;
    let mut buf: Vec<u8> = Vec::with_capacity(RECV_BUF);
    loop {
        buf.clear();
        let n = sock.recv(&mut buf, libc::MSG_TRUNC).map_err(|e| io(format!("receive: {e}")))?;
        if n > buf.len() {
            return Err(io(format!("a {n}-byte datagram exceeds the {RECV_BUF}-byte buffer")));
        }
        let mut b = &buf[..];
        while b.len() >= 16 {
            let mlen = u32::from_ne_bytes([b[0], b[1], b[2], b[3]]) as usize;
            let mtype = u16::from_ne_bytes([b[4], b[5]]);
            let mflags = u16::from_ne_bytes([b[6], b[7]]);
            let mseq = u32::from_ne_bytes([b[8], b[9], b[10], b[11]]);
            if mlen < 16 || mlen > b.len() {
                return Err(io(format!("message of length {mlen} overruns its datagram")));
            }
            let body = &b[16..mlen];
            b = &b[((mlen + 3) & !3).min(b.len())..];
            if mseq != seq {
                continue;
            }
            match mtype {
                NLMSG_DONE => return Ok(mflags),
                NLMSG_ERROR => {
                    let code = body.get(..4).map(|c| i32::from_ne_bytes([c[0], c[1], c[2], c[3]])).unwrap_or(0);
                    if code == 0 {
                        if dump {
                            continue;
                        }
                        return Ok(mflags);
                    }
                    return Err(NlError::Errno(-code));
                }
                t => {
                    each(t, mflags, body)?;
                    if !dump {
                        return Ok(mflags);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_round_trip_and_overruns_are_errors() {
        let mut b = Vec::new();
        put_attr(&mut b, 1, b"abc");
        put_attr(&mut b, 0x8002, &[7; 8]); // the nested flag is masked off
        let got: Vec<(u16, Vec<u8>)> = attrs(&b).map(|a| a.map(|(t, v)| (t, v.to_vec()))).collect::<Result<_, _>>().unwrap();
        assert_eq!(got, vec![(1, b"abc".to_vec()), (2, vec![7; 8])]);
        b[0] = 200;
        assert!(attrs(&b).next().unwrap().is_err());
        assert_eq!(cstr(&nul("wg0")), b"wg0");
    }
}
