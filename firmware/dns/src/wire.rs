//! The request path on the wire: a strict, allocation-free parser for client
//! queries and the builders for every answer the resolver gives without
//! asking upstream (errors, blocks, RFC 8482, `localhost`, cache hits).
//!
//! Client queries are parsed here, not with hickory-proto, because this is
//! the hot path (one parse per query at 100k+ QPS) and because a query needs
//! far less than a general message parser: exactly one question, no
//! compression, at most one OPT record. Anything else is refused before any
//! allocation. Upstream responses (untrusted too, but off the hot path) are
//! parsed with hickory-proto in `upstream.rs`. The fuzz target checks that
//! every query this parser accepts is also a valid message for hickory.

use std::time::Instant;

pub const TYPE_A: u16 = 1;
pub const TYPE_NS: u16 = 2;
pub const TYPE_CNAME: u16 = 5;
pub const TYPE_SOA: u16 = 6;
pub const TYPE_HINFO: u16 = 13;
pub const TYPE_AAAA: u16 = 28;
pub const TYPE_OPT: u16 = 41;
pub const TYPE_IXFR: u16 = 251;
pub const TYPE_AXFR: u16 = 252;
pub const TYPE_ANY: u16 = 255;
pub const CLASS_IN: u16 = 1;

pub const RCODE_NOERROR: u8 = 0;
pub const RCODE_FORMERR: u8 = 1;
pub const RCODE_SERVFAIL: u8 = 2;
pub const RCODE_NXDOMAIN: u8 = 3;
pub const RCODE_NOTIMP: u8 = 4;
pub const RCODE_REFUSED: u8 = 5;
/// Extended RCODE BADVERS (16): low 4 bits in the header, high 8 in OPT.
pub const RCODE_BADVERS: u16 = 16;

/// RFC 8914 Extended DNS Error option code and the info codes we use.
pub const EDNS_EDE: u16 = 15;
pub const EDE_BLOCKED: u16 = 15;
pub const EDE_NO_REACHABLE_AUTHORITY: u16 = 22;

/// Our advertised EDNS UDP payload size (DNS flag day 2020).
pub const OUR_UDP_SIZE: u16 = 1232;
/// TTL of synthesised answers (null blocks, RFC 8482 HINFO).
pub const SYNTH_TTL: u32 = 60;

const FLAG_QR: u16 = 0x8000;
const FLAG_AA: u16 = 0x0400;
const FLAG_TC: u16 = 0x0200;
const FLAG_RD: u16 = 0x0100;
const FLAG_RA: u16 = 0x0080;
const FLAG_CD: u16 = 0x0010;

/// EDNS information of a query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Edns {
    pub udp_size: u16,
    pub dnssec_ok: bool,
}

/// A parsed client query. Borrows the packet; the lowercase name is copied
/// into a fixed buffer (no heap).
pub struct Query<'a> {
    pub id: u16,
    /// The request flags (RD and CD are echoed).
    pub flags: u16,
    /// The question exactly as received: qname (with root label), qtype, qclass.
    pub question: &'a [u8],
    pub qtype: u16,
    pub qclass: u16,
    pub edns: Option<Edns>,
    lower: [u8; 255],
    lower_len: u8,
}

impl std::fmt::Debug for Query<'_> {
    // The queried name is client data: never printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Query {{ qtype: {}, name: [redacted] }}", self.qtype)
    }
}

impl Query<'_> {
    /// Lowercase wire form of the name without the root label (empty for the
    /// root itself).
    #[inline]
    pub fn name(&self) -> &[u8] {
        &self.lower[..self.lower_len as usize]
    }

    /// Largest response the client accepts over UDP.
    pub fn udp_limit(&self) -> usize {
        match self.edns {
            Some(e) => (e.udp_size.clamp(512, OUR_UDP_SIZE)) as usize,
            None => 512,
        }
    }
}

/// Why a packet was not accepted as a query.
#[derive(Debug, PartialEq, Eq)]
pub enum Reject {
    /// Not worth an answer (too short to carry an ID, or a response: answering
    /// responses invites reflection loops).
    Drop,
    /// Answer with this message (FORMERR, NOTIMP, BADVERS).
    Reply(Vec<u8>),
}

fn header_only(id: u16, req_flags: u16, rcode: u8) -> Vec<u8> {
    let mut b = Vec::with_capacity(12);
    let opcode = req_flags & 0x7800;
    let flags = FLAG_QR | opcode | (req_flags & FLAG_RD) | FLAG_RA | u16::from(rcode & 0xf);
    b.extend_from_slice(&id.to_be_bytes());
    b.extend_from_slice(&flags.to_be_bytes());
    b.extend_from_slice(&[0; 8]);
    b
}

#[inline]
fn be16(b: &[u8], i: usize) -> u16 {
    u16::from_be_bytes([b[i], b[i + 1]])
}

/// Parse a client query strictly. See the module doc for what is refused.
pub fn parse_query(msg: &[u8]) -> Result<Query<'_>, Reject> {
    if msg.len() < 12 {
        return Err(Reject::Drop);
    }
    let id = be16(msg, 0);
    let flags = be16(msg, 2);
    if flags & FLAG_QR != 0 {
        return Err(Reject::Drop);
    }
    let formerr = || Reject::Reply(header_only(id, flags, RCODE_FORMERR));
    if flags & 0x7800 != 0 {
        return Err(Reject::Reply(header_only(id, flags, RCODE_NOTIMP)));
    }
    let (qd, an, ns, ar) = (be16(msg, 4), be16(msg, 6), be16(msg, 8), be16(msg, 10));
    if qd != 1 || an != 0 || ns != 0 || ar > 1 {
        return Err(formerr());
    }
    let mut lower = [0u8; 255];
    let mut pos = 12usize;
    let mut lower_len = 0usize;
    loop {
        let Some(&l) = msg.get(pos) else {
            return Err(formerr());
        };
        if l == 0 {
            pos += 1;
            break;
        }
        // No compression pointers (or extended label types) in a question:
        // nothing to point back to, and no loop is possible.
        if l & 0xc0 != 0 {
            return Err(formerr());
        }
        let l = l as usize;
        if lower_len + 1 + l + 1 > 255 || pos + 1 + l > msg.len() {
            return Err(formerr());
        }
        lower[lower_len] = l as u8;
        for (d, s) in lower[lower_len + 1..lower_len + 1 + l]
            .iter_mut()
            .zip(&msg[pos + 1..pos + 1 + l])
        {
            *d = s.to_ascii_lowercase();
        }
        lower_len += 1 + l;
        pos += 1 + l;
    }
    if pos + 4 > msg.len() {
        return Err(formerr());
    }
    let qtype = be16(msg, pos);
    let qclass = be16(msg, pos + 2);
    pos += 4;
    let question = &msg[12..pos];
    let mut edns = None;
    if ar == 1 {
        // Exactly one OPT: root owner, type 41, well-formed options.
        if msg.len() < pos + 11 || msg[pos] != 0 || be16(msg, pos + 1) != TYPE_OPT {
            return Err(formerr());
        }
        let udp_size = be16(msg, pos + 3);
        let version = msg[pos + 6];
        let eflags = be16(msg, pos + 7);
        let rdlen = be16(msg, pos + 9) as usize;
        let rd = pos + 11;
        if rd + rdlen != msg.len() {
            return Err(formerr());
        }
        let mut o = rd;
        while o < rd + rdlen {
            if o + 4 > rd + rdlen {
                return Err(formerr());
            }
            let olen = be16(msg, o + 2) as usize;
            o += 4 + olen;
        }
        if o != rd + rdlen {
            return Err(formerr());
        }
        if version != 0 {
            let mut r = header_only(id, flags, (RCODE_BADVERS & 0xf) as u8);
            r[11] = 1;
            push_opt(&mut r, (RCODE_BADVERS >> 4) as u8, None);
            return Err(Reject::Reply(r));
        }
        edns = Some(Edns {
            udp_size,
            dnssec_ok: eflags & 0x8000 != 0,
        });
        pos = rd + rdlen;
    }
    if pos != msg.len() {
        return Err(formerr());
    }
    Ok(Query {
        id,
        flags,
        question,
        qtype,
        qclass,
        edns,
        lower,
        lower_len: lower_len as u8,
    })
}

/// Append an OPT record (our payload size, extended rcode bits, optional
/// Extended DNS Error). The caller counts it in ARCOUNT.
fn push_opt(b: &mut Vec<u8>, ext_rcode: u8, ede: Option<(u16, &str)>) {
    b.push(0);
    b.extend_from_slice(&TYPE_OPT.to_be_bytes());
    b.extend_from_slice(&OUR_UDP_SIZE.to_be_bytes());
    b.extend_from_slice(&[ext_rcode, 0, 0, 0]);
    match ede {
        Some((code, text)) => {
            let olen = 2 + text.len();
            b.extend_from_slice(&((4 + olen) as u16).to_be_bytes());
            b.extend_from_slice(&EDNS_EDE.to_be_bytes());
            b.extend_from_slice(&(olen as u16).to_be_bytes());
            b.extend_from_slice(&code.to_be_bytes());
            b.extend_from_slice(text.as_bytes());
        }
        None => b.extend_from_slice(&[0, 0]),
    }
}

/// Start a response to `q`: header (counts filled by [`finish`]) and the
/// question as the client sent it.
fn begin(q: &Query<'_>, rcode: u8, cap: usize) -> Vec<u8> {
    let mut b = Vec::with_capacity(cap);
    let flags = FLAG_QR | (q.flags & (FLAG_RD | FLAG_CD)) | FLAG_RA | u16::from(rcode & 0xf);
    b.extend_from_slice(&q.id.to_be_bytes());
    b.extend_from_slice(&flags.to_be_bytes());
    b.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0]);
    b.extend_from_slice(q.question);
    b
}

fn set_counts(b: &mut [u8], an: u16, ns: u16, ar: u16) {
    b[6..8].copy_from_slice(&an.to_be_bytes());
    b[8..10].copy_from_slice(&ns.to_be_bytes());
    b[10..12].copy_from_slice(&ar.to_be_bytes());
}

/// Close a response: OPT if the client used EDNS, and truncation to `limit`
/// (header + question + OPT with TC set) when the records do not fit.
fn finish(
    q: &Query<'_>,
    mut b: Vec<u8>,
    an: u16,
    ns: u16,
    ede: Option<(u16, &str)>,
    limit: usize,
) -> Vec<u8> {
    let mut ar = 0;
    if q.edns.is_some() {
        push_opt(&mut b, 0, ede);
        ar = 1;
    }
    set_counts(&mut b, an, ns, ar);
    if b.len() > limit {
        let mut t = begin(q, b[3] & 0xf, 64);
        t[2] |= (FLAG_TC >> 8) as u8;
        let mut ar = 0;
        if q.edns.is_some() {
            push_opt(&mut t, 0, None);
            ar = 1;
        }
        set_counts(&mut t, 0, 0, ar);
        return t;
    }
    b
}

/// An answer with no records (errors, NXDOMAIN/REFUSED blocks).
pub fn empty(q: &Query<'_>, rcode: u8, ede: Option<(u16, &str)>, limit: usize) -> Vec<u8> {
    let b = begin(q, rcode, 64);
    finish(q, b, 0, 0, ede, limit)
}

/// A null-address block: 0.0.0.0 for A, :: for AAAA, no data otherwise.
pub fn null_block(q: &Query<'_>, limit: usize) -> Vec<u8> {
    let mut b = begin(q, RCODE_NOERROR, 96);
    let rdata: &[u8] = match q.qtype {
        TYPE_A => &[0; 4],
        TYPE_AAAA => &[0; 16],
        _ => &[],
    };
    let mut an = 0;
    if !rdata.is_empty() {
        push_rr_at_qname(&mut b, q.qtype, SYNTH_TTL, rdata);
        an = 1;
    }
    finish(q, b, an, 0, Some((EDE_BLOCKED, "Blocked")), limit)
}

/// RFC 8482: answer ANY with one synthesised HINFO record.
pub fn any_hinfo(q: &Query<'_>, limit: usize) -> Vec<u8> {
    let mut b = begin(q, RCODE_NOERROR, 96);
    push_rr_at_qname(&mut b, TYPE_HINFO, SYNTH_TTL, b"\x07RFC8482\x00");
    finish(q, b, 1, 0, None, limit)
}

/// Is the (lowercase wire form) name `localhost` or a name under it?
/// RFC 6761 section 6.3: such names are answered by the resolver itself and
/// never sent to an authoritative server.
pub fn is_localhost(name: &[u8]) -> bool {
    const LOCALHOST: &[u8] = b"\x09localhost";
    let mut pos = 0;
    while pos < name.len() {
        if &name[pos..] == LOCALHOST {
            return true;
        }
        pos += 1 + name[pos] as usize;
    }
    false
}

/// The local answer for a `localhost` name (RFC 6761): A 127.0.0.1, AAAA ::1,
/// an empty NOERROR answer for other types. Authoritative (AA).
pub fn localhost(q: &Query<'_>, limit: usize) -> Vec<u8> {
    let mut b = begin(q, RCODE_NOERROR, 96);
    b[2] |= (FLAG_AA >> 8) as u8;
    const V6_LOOPBACK: [u8; 16] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
    let rdata: &[u8] = match q.qtype {
        TYPE_A => &[127, 0, 0, 1],
        TYPE_AAAA => &V6_LOOPBACK,
        _ => &[],
    };
    let mut an = 0;
    if !rdata.is_empty() {
        push_rr_at_qname(&mut b, q.qtype, SYNTH_TTL, rdata);
        an = 1;
    }
    finish(q, b, an, 0, None, limit)
}

fn push_rr_at_qname(b: &mut Vec<u8>, rtype: u16, ttl: u32, rdata: &[u8]) {
    b.extend_from_slice(&[0xc0, 12]);
    b.extend_from_slice(&rtype.to_be_bytes());
    b.extend_from_slice(&CLASS_IN.to_be_bytes());
    b.extend_from_slice(&ttl.to_be_bytes());
    b.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
    b.extend_from_slice(rdata);
}

/// An upstream answer ready to be replayed: the records after the question,
/// encoded for a question of the same length at offset 12 (compression
/// pointers stay valid whatever the case of the client's name), and where
/// each TTL sits so it can be aged.
#[derive(Debug)]
pub struct Answer {
    pub rcode: u8,
    pub an: u16,
    pub ns: u16,
    /// The records, then (from `body_len`) the big-endian u16 offsets of
    /// each record's TTL in them: one allocation per cached answer.
    pub body: Box<[u8]>,
    pub body_len: u16,
    /// Seconds this answer may be served from the cache (0: never cached).
    pub ttl: u32,
    /// CNAME targets in the chain (lowercase wire, no root label): checked
    /// against the client's tier on every use (CNAME cloaking).
    pub chain: Box<[Box<[u8]>]>,
    pub stored: Instant,
}

impl Answer {
    /// Seconds left, or `None` once expired.
    pub fn remaining(&self, now: Instant) -> Option<u32> {
        let age = now.saturating_duration_since(self.stored).as_secs();
        (age < u64::from(self.ttl)).then(|| self.ttl - age as u32)
    }

    /// Approximate heap bytes, for the cache's weight.
    pub fn weight_bytes(&self) -> usize {
        self.body.len()
            + self.chain.iter().map(|c| c.len() + 16).sum::<usize>()
            + 96
    }
}

/// Replay `a` to `q`, TTLs aged by the time since it was stored.
pub fn from_answer(q: &Query<'_>, a: &Answer, now: Instant, limit: usize) -> Vec<u8> {
    let age = now
        .saturating_duration_since(a.stored)
        .as_secs()
        .min(u64::from(u32::MAX)) as u32;
    let mut b = begin(q, a.rcode, 12 + q.question.len() + a.body.len() + 40);
    let base = b.len();
    let (records, offsets) = a.body.split_at(a.body_len as usize);
    b.extend_from_slice(records);
    for at in offsets.chunks_exact(2) {
        let i = base + u16::from_be_bytes([at[0], at[1]]) as usize;
        let ttl = u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        b[i..i + 4].copy_from_slice(&ttl.saturating_sub(age).to_be_bytes());
    }
    finish(q, b, a.an, a.ns, None, limit)
}

/// Skip a (possibly compressed) name starting at `pos` in `msg`; returns the
/// position after it. Bounded: at most 128 labels, pointers end the name.
pub fn skip_name(msg: &[u8], mut pos: usize) -> Option<usize> {
    for _ in 0..128 {
        let l = *msg.get(pos)?;
        match l & 0xc0 {
            0 if l == 0 => return Some(pos + 1),
            0 => pos += 1 + l as usize,
            0xc0 => return (pos + 2 <= msg.len()).then_some(pos + 2),
            _ => return None,
        }
    }
    None
}

/// TTL positions of `count` records starting at `pos` in a message we encoded.
pub fn ttl_positions(msg: &[u8], mut pos: usize, count: usize) -> Option<Vec<(usize, u32)>> {
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        pos = skip_name(msg, pos)?;
        if pos + 10 > msg.len() {
            return None;
        }
        let ttl = u32::from_be_bytes(msg[pos + 4..pos + 8].try_into().ok()?);
        out.push((pos + 4, ttl));
        let rdlen = be16(msg, pos + 8) as usize;
        pos += 10 + rdlen;
        if pos > msg.len() {
            return None;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A query for `name` (text) with optional EDNS.
    pub fn query(id: u16, name: &str, qtype: u16, edns: bool) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&id.to_be_bytes());
        b.extend_from_slice(&[1, 0, 0, 1, 0, 0, 0, 0, 0, u8::from(edns)]);
        for l in name.split('.').filter(|l| !l.is_empty()) {
            b.push(l.len() as u8);
            b.extend_from_slice(l.as_bytes());
        }
        b.push(0);
        b.extend_from_slice(&qtype.to_be_bytes());
        b.extend_from_slice(&CLASS_IN.to_be_bytes());
        if edns {
            b.extend_from_slice(&[0, 0, 41, 4, 208, 0, 0, 0x80, 0, 0, 0]);
        }
        b
    }

    fn rcode(r: &[u8]) -> u8 {
        r[3] & 0xf
    }

    #[test]
    fn localhost_names_on_label_boundaries_only() {
        let wire = |t: &str| {
            let q = query(1, t, TYPE_A, false);
            parse_query(&q).map(|q| q.name().to_vec()).unwrap()
        };
        for yes in ["localhost", "LocalHost", "a.localhost", "x.y.LOCALHOST"] {
            assert!(is_localhost(&wire(yes)), "{yes}");
        }
        for no in ["notlocalhost", "localhost.example", "localhostx", "", "host"] {
            assert!(!is_localhost(&wire(no)), "{no}");
        }
        let q = query(7, "a.localhost", TYPE_AAAA, true);
        let q = parse_query(&q).unwrap();
        let r = localhost(&q, 512);
        assert_eq!(rcode(&r), RCODE_NOERROR);
        assert_eq!(r[2] & 0x04, 0x04, "AA");
        assert_eq!(&r[6..8], &[0, 1], "one answer");
        assert!(r.windows(16).any(|w| w == [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]));
    }

    #[test]
    fn parses_a_plain_query() {
        let m = query(0x1234, "WwW.Example.COM", TYPE_A, true);
        let q = parse_query(&m).unwrap();
        assert_eq!(q.id, 0x1234);
        assert_eq!(q.name(), b"\x03www\x07example\x03com");
        assert_eq!(
            q.edns,
            Some(Edns {
                udp_size: 1232,
                dnssec_ok: true
            })
        );
        assert_eq!(q.udp_limit(), 1232);
        // Case of the question is echoed as sent.
        let r = empty(&q, RCODE_NXDOMAIN, Some((EDE_BLOCKED, "Blocked")), 512);
        assert_eq!(&r[12..12 + q.question.len()], q.question);
        assert_eq!(rcode(&r), RCODE_NXDOMAIN);
        let parsed = hickory_proto::op::Message::from_vec(&r).unwrap();
        let ede = parsed.edns.as_ref().unwrap().options().as_ref();
        assert!(!ede.is_empty(), "EDE present");
    }

    #[test]
    fn malformed_queries() {
        let good = query(7, "a.test", TYPE_A, false);
        let reply_rcode = |m: &[u8]| match parse_query(m) {
            Err(Reject::Reply(r)) => Some(rcode(&r)),
            Err(Reject::Drop) => None,
            Ok(_) => Some(255),
        };
        assert_eq!(reply_rcode(&good[..11]), None, "shorter than a header");
        let mut qr = good.clone();
        qr[2] |= 0x80;
        assert_eq!(reply_rcode(&qr), None, "responses are dropped");
        for qd in [0u8, 2] {
            let mut m = good.clone();
            m[5] = qd;
            assert_eq!(reply_rcode(&m), Some(RCODE_FORMERR), "qdcount {qd}");
        }
        assert_eq!(
            reply_rcode(&good[..good.len() - 1]),
            Some(RCODE_FORMERR),
            "truncated"
        );
        let mut ptr = good[..12].to_vec();
        ptr.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1]);
        assert_eq!(reply_rcode(&ptr), Some(RCODE_FORMERR), "compression loop");
        let mut ptr = good[..12].to_vec();
        ptr.extend_from_slice(&[1, b'a', 0xc0, 0xff, 0, 1, 0, 1]);
        assert_eq!(
            reply_rcode(&ptr),
            Some(RCODE_FORMERR),
            "pointer out of range"
        );
        let mut long = good[..12].to_vec();
        for _ in 0..5 {
            long.push(63);
            long.extend_from_slice(&[b'x'; 63]);
        }
        long.extend_from_slice(&[0, 0, 1, 0, 1]);
        assert_eq!(reply_rcode(&long), Some(RCODE_FORMERR), "name > 255");
        let mut trailing = good.clone();
        trailing.push(0);
        assert_eq!(
            reply_rcode(&trailing),
            Some(RCODE_FORMERR),
            "trailing bytes"
        );
        let mut opt = query(7, "a.test", TYPE_A, true);
        let n = opt.len();
        opt[n - 1] = 5; // rdlen 5 with no data
        assert_eq!(reply_rcode(&opt), Some(RCODE_FORMERR), "bad OPT length");
        let mut opt = query(7, "a.test", TYPE_A, true);
        opt.truncate(opt.len() - 2);
        opt.extend_from_slice(&[0, 4, 0, 15, 0, 9]); // option claims 9 bytes, has 0
        assert_eq!(reply_rcode(&opt), Some(RCODE_FORMERR), "bad option length");
        let mut opt = query(7, "a.test", TYPE_A, true);
        let i = opt.len() - 11;
        opt[i] = 1; // non-root owner
        assert_eq!(reply_rcode(&opt), Some(RCODE_FORMERR), "OPT owner not root");
        let mut v1 = query(7, "a.test", TYPE_A, true);
        let i = v1.len() - 5;
        v1[i] = 1; // EDNS version 1
        match parse_query(&v1) {
            Err(Reject::Reply(r)) => {
                let m = hickory_proto::op::Message::from_vec(&r).unwrap();
                assert_eq!(u16::from(m.metadata.response_code), RCODE_BADVERS);
            }
            _ => panic!("BADVERS expected"),
        }
        let mut upd = good.clone();
        upd[2] |= 5 << 3;
        assert_eq!(reply_rcode(&upd), Some(RCODE_NOTIMP), "UPDATE");
        assert_eq!(reply_rcode(&good), Some(255));
    }

    #[test]
    fn null_block_and_any() {
        let m = query(1, "x.test", TYPE_AAAA, false);
        let q = parse_query(&m).unwrap();
        let r = null_block(&q, 512);
        let p = hickory_proto::op::Message::from_vec(&r).unwrap();
        assert_eq!(p.answers.len(), 1);
        assert_eq!(p.answers[0].data.to_string(), "::");
        let m = query(1, "x.test", TYPE_ANY, true);
        let q = parse_query(&m).unwrap();
        let p = hickory_proto::op::Message::from_vec(&any_hinfo(&q, 512)).unwrap();
        assert_eq!(p.answers.len(), 1);
        assert_eq!(u16::from(p.answers[0].record_type()), TYPE_HINFO);
    }

    #[test]
    fn truncates_to_limit() {
        let m = query(1, "x.test", TYPE_A, false);
        let q = parse_query(&m).unwrap();
        let mut body = Vec::new();
        for i in 0..60u8 {
            body.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 10, 0, 0, i]);
        }
        let a = Answer {
            rcode: 0,
            an: 60,
            ns: 0,
            body_len: body.len() as u16,
            body: body.into(),
            ttl: 60,
            chain: Box::new([]),
            stored: Instant::now(),
        };
        let r = from_answer(&q, &a, Instant::now(), 512);
        assert!(r.len() <= 512 && r[2] & 0x02 != 0, "TC set");
        let r = from_answer(&q, &a, Instant::now(), 65535);
        assert_eq!(
            hickory_proto::op::Message::from_vec(&r)
                .unwrap()
                .answers
                .len(),
            60
        );
    }
}
