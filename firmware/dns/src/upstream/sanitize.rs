//! What an upstream answer must be before it is used: the ID, the question
//! and the rcode are checked ([`check_response`]); then only the records on
//! the question's CNAME chain (plus one in-bailiwick SOA for negative answers)
//! are kept, TTLs capped, and the answer encoded for replay ([`sanitize`]).
//! NS, additional and out-of-bailiwick records are dropped here, so they can
//! reach neither the client nor the cache.

use super::AttemptError;
use crate::wire::{self, Answer};
use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use std::time::Instant;

/// Cache at most this long, whatever the TTL says.
pub const MAX_TTL: u32 = 86_400;
/// Negative answers at most this long.
pub const MAX_NEG_TTL: u32 = 3_600;
/// Longest CNAME chain followed.
const MAX_CHAIN: usize = 12;

/// Parse `bytes` and check it answers exactly the query sent (`id`, `qname`,
/// `qtype`, class IN); NOERROR and NXDOMAIN pass, other rcodes are
/// [`AttemptError::Rcode`] (the next upstream is tried).
pub(super) fn check_response(
    bytes: &[u8],
    id: u16,
    qname: &Name,
    qtype: u16,
) -> Result<Message, AttemptError> {
    if bytes.len() < 12 || u16::from_be_bytes([bytes[0], bytes[1]]) != id {
        return Err(AttemptError::Bad);
    }
    let m = Message::from_vec(bytes).map_err(|_| AttemptError::Bad)?;
    if m.metadata.message_type != MessageType::Response || m.metadata.op_code != OpCode::Query {
        return Err(AttemptError::Bad);
    }
    if m.queries.len() != 1 {
        return Err(AttemptError::Bad);
    }
    let q = &m.queries[0];
    if u16::from(q.query_type()) != qtype
        || q.query_class() != DNSClass::IN
        || !q.name().eq_ignore_root(qname)
    {
        return Err(AttemptError::Bad);
    }
    match m.metadata.response_code {
        ResponseCode::NoError | ResponseCode::NXDomain => Ok(m),
        _ => Err(AttemptError::Rcode),
    }
}

/// Keep only what answers the question; compute the cache TTL; encode for replay.
pub(super) fn sanitize(m: &Message, qname: &Name, qtype: u16) -> Result<Answer, AttemptError> {
    let rt = RecordType::from(qtype);
    let mut kept: Vec<Record> = Vec::new();
    let mut chain: Vec<Name> = Vec::new();
    let mut cur = qname.clone();
    // Follow CNAMEs from the question name (bounded, loop-safe).
    if rt != RecordType::CNAME {
        while chain.len() < MAX_CHAIN {
            let next = m.answers.iter().find_map(|r| match &r.data {
                RData::CNAME(c) if r.dns_class == DNSClass::IN && r.name.eq_ignore_root(&cur) => {
                    Some((r, c.0.clone()))
                }
                _ => None,
            });
            let Some((r, target)) = next else { break };
            if target.eq_ignore_root(qname) || chain.iter().any(|c| c.eq_ignore_root(&target)) {
                break;
            }
            kept.push(r.clone());
            chain.push(target.clone());
            cur = target;
        }
    }
    let mut finals = 0;
    for r in &m.answers {
        if r.dns_class == DNSClass::IN && r.record_type() == rt && r.name.eq_ignore_root(&cur) {
            kept.push(r.clone());
            finals += 1;
        }
    }
    let rcode = m.metadata.response_code;
    let negative = finals == 0;
    let mut authority: Vec<Record> = Vec::new();
    if negative {
        // One SOA, for a zone that contains the last name of the chain.
        if let Some(r) = m.authorities.iter().find(|r| {
            r.dns_class == DNSClass::IN && matches!(r.data, RData::SOA(_)) && r.name.zone_of(&cur)
        }) {
            let mut r = r.clone();
            if let RData::SOA(soa) = &r.data {
                r.ttl = r.ttl.min(soa.minimum).min(MAX_NEG_TTL);
            }
            authority.push(r);
        }
    }
    for r in kept.iter_mut() {
        r.ttl = r.ttl.min(MAX_TTL);
    }
    let mut ttl = kept
        .iter()
        .chain(&authority)
        .map(|r| r.ttl)
        .min()
        .unwrap_or(0);
    if negative && authority.is_empty() {
        ttl = 0; // RFC 2308: no SOA, no negative caching.
    }
    if rcode == ResponseCode::NXDomain && finals > 0 {
        return Err(AttemptError::Bad);
    }
    let mut out = Message::new(0, MessageType::Response, OpCode::Query);
    out.metadata.response_code = rcode;
    out.add_query(Query::query(qname.to_lowercase(), rt));
    let (an, ns) = (kept.len(), authority.len());
    out.add_answers(kept);
    out.add_authorities(authority);
    let bytes = out.to_vec().map_err(|_| AttemptError::Bad)?;
    let qlen = wire_len(qname) + 4;
    let base = 12 + qlen;
    if bytes.len() < base || bytes.len() > u16::MAX as usize {
        return Err(AttemptError::Bad);
    }
    let ttl_at = wire::ttl_positions(&bytes, base, an + ns).ok_or(AttemptError::Bad)?;
    Ok(Answer {
        rcode: u16::from(rcode) as u8,
        an: an as u16,
        ns: ns as u16,
        body_len: (bytes.len() - base) as u16,
        body: {
            let mut b = Vec::with_capacity(bytes.len() - base + 2 * ttl_at.len());
            b.extend_from_slice(&bytes[base..]);
            for (p, _) in &ttl_at {
                b.extend_from_slice(&((p - base) as u16).to_be_bytes());
            }
            b.into_boxed_slice()
        },
        ttl,
        chain: chain
            .iter()
            .map(|n| lower_wire(n).into_boxed_slice())
            .collect(),
        stored: Instant::now(),
    })
}

/// Wire length of a name including the root label.
fn wire_len(n: &Name) -> usize {
    n.iter().map(|l| l.len() + 1).sum::<usize>() + 1
}

/// Lowercase wire form without the root label.
pub fn lower_wire(n: &Name) -> Vec<u8> {
    let mut v = Vec::with_capacity(wire_len(n));
    for l in n.iter() {
        v.push(l.len() as u8);
        v.extend(l.iter().map(|b| b.to_ascii_lowercase()));
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::rr::rdata::{A, CNAME, NS, SOA};

    fn n(s: &str) -> Name {
        Name::from_ascii(s).unwrap()
    }

    fn resp(q: &str, rcode: ResponseCode) -> Message {
        let mut m = Message::new(9, MessageType::Response, OpCode::Query);
        m.metadata.response_code = rcode;
        m.add_query(Query::query(n(q), RecordType::A));
        m
    }

    #[test]
    fn keeps_only_the_chain() {
        let mut m = resp("www.a.test.", ResponseCode::NoError);
        m.add_answer(Record::from_rdata(
            n("www.a.test."),
            300,
            RData::CNAME(CNAME(n("edge.cdn.test."))),
        ));
        m.add_answer(Record::from_rdata(
            n("edge.cdn.test."),
            120,
            RData::A(A::new(192, 0, 2, 1)),
        ));
        // Out of bailiwick: another name, and glue-like additional data.
        m.add_answer(Record::from_rdata(
            n("victim.test."),
            9999,
            RData::A(A::new(6, 6, 6, 6)),
        ));
        m.add_authority(Record::from_rdata(
            n("test."),
            9999,
            RData::NS(NS(n("evil.example."))),
        ));
        m.add_additional(Record::from_rdata(
            n("evil.example."),
            9999,
            RData::A(A::new(6, 6, 6, 6)),
        ));
        let a = sanitize(&m, &n("www.a.test."), 1).unwrap();
        assert_eq!((a.an, a.ns), (2, 0));
        assert_eq!(a.ttl, 120);
        assert_eq!(a.chain.len(), 1);
        assert_eq!(&*a.chain[0], b"\x04edge\x03cdn\x04test");
        assert!(!a.body.windows(4).any(|w| w == [6, 6, 6, 6]));
    }

    #[test]
    fn negative_ttl_from_soa() {
        let mut m = resp("nx.a.test.", ResponseCode::NXDomain);
        let soa = SOA::new(n("ns.a.test."), n("h.a.test."), 1, 2, 3, 4, 30);
        m.add_authority(Record::from_rdata(
            n("a.test."),
            600,
            RData::SOA(soa.clone()),
        ));
        let a = sanitize(&m, &n("nx.a.test."), 1).unwrap();
        assert_eq!((a.rcode, a.an, a.ns, a.ttl), (3, 0, 1, 30));
        // SOA of an unrelated zone: dropped, and the answer is not cached.
        let mut m = resp("nx.a.test.", ResponseCode::NXDomain);
        m.add_authority(Record::from_rdata(n("other.test."), 600, RData::SOA(soa)));
        let a = sanitize(&m, &n("nx.a.test."), 1).unwrap();
        assert_eq!((a.ns, a.ttl), (0, 0));
    }

    #[test]
    fn cname_loop_is_bounded() {
        let mut m = resp("a.test.", ResponseCode::NoError);
        m.add_answer(Record::from_rdata(
            n("a.test."),
            60,
            RData::CNAME(CNAME(n("b.test."))),
        ));
        m.add_answer(Record::from_rdata(
            n("b.test."),
            60,
            RData::CNAME(CNAME(n("a.test."))),
        ));
        let a = sanitize(&m, &n("a.test."), 1).unwrap();
        assert_eq!(a.chain.len(), 1);
    }
}
