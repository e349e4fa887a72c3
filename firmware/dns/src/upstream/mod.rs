//! Upstream resolvers, tried in order with failover, fail-closed (every
//! upstream down: the caller answers SERVFAIL; no query ever leaves by another
//! path).
//!
//! This module owns the list of upstreams, their hold-downs and the order in
//! which they are tried; each transport lives in its own module:
//! `udp` (pooled connected sockets, random ports, TCP retry on truncation), `tcp`
//! (length-framed TCP and DNS-over-TLS, pooled), `doh` (DNS-over-HTTPS,
//! RFC 8484, HTTP/2 or HTTP/1.1 with hyper), `tls` (rustls client setup
//! shared by DoT and DoH).
//!
//! Responses are untrusted (`sanitize`): the ID, the question and the
//! source (connected sockets) must match, and only the records on the CNAME
//! chain of the question (plus an in-bailiwick SOA for negative answers) are
//! kept; NS, additional and out-of-bailiwick records are dropped, so they can
//! neither reach the client nor the cache.

mod doh;
mod sanitize;
mod tcp;
mod tls;
mod udp;

pub use doh::DohConnections;
pub use udp::SOCKET_USES as UDP_SOCKET_USES;
pub use sanitize::{lower_wire, MAX_NEG_TTL, MAX_TTL};

use crate::wire::{self, Answer};
use hickory_proto::op::Message;
use hickory_proto::rr::Name;
use hickory_proto::serialize::binary::BinDecodable;
use palisade_core::config::{DnsUpstreamProtocol, DnsUpstreamSection};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Longest time one upstream gets for one query.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_millis(1500);
/// An upstream that failed is skipped (unless all are down) for this long.
const HOLD_DOWN: Duration = Duration::from_secs(5);
/// Idle connections kept per upstream (TCP, DoT, DoH over HTTP/1.1; DoH over
/// HTTP/2 shares one connection).
const POOL: usize = 8;

/// An upstream that cannot be set up (the config is refused).
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("upstream {addr}: protocols tls and https need tls_name")]
    NoTlsName { addr: SocketAddr },
    #[error("upstream {addr}: bad tls_name: {name}")]
    BadTlsName { addr: SocketAddr, name: String },
    #[error(
        "upstream {addr}: bad DoH path {path:?} (an absolute path such as /dns-query, no spaces)"
    )]
    BadPath { addr: SocketAddr, path: String },
    #[error("upstream {addr}: cannot read CA file {path}: {msg}")]
    Ca {
        addr: SocketAddr,
        path: std::path::PathBuf,
        msg: String,
    },
    #[error("upstream {addr}: TLS setup: {source}")]
    Tls {
        addr: SocketAddr,
        #[source]
        source: rustls::Error,
    },
}

/// Why a resolution failed (no detail about the name: these are counted, and
/// may be logged).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    #[error("no upstream configured")]
    NoUpstream,
    #[error("every upstream failed")]
    AllFailed,
}

/// One question on its way to an upstream: the encoded query, its ID and
/// question (every answer is checked against them) and the attempt's deadline.
pub(super) struct Ask<'a> {
    query: &'a [u8],
    id: u16,
    qname: &'a Name,
    qtype: u16,
    deadline: tokio::time::Instant,
}

impl Ask<'_> {
    /// Parse and check an answer to this question.
    fn check(&self, bytes: &[u8]) -> Result<Message, AttemptError> {
        sanitize::check_response(bytes, self.id, self.qname, self.qtype)
    }
}

/// Why one attempt at one upstream failed (the next upstream is tried).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
enum AttemptError {
    #[error("timeout")]
    Timeout,
    #[error("i/o")]
    Io,
    #[error("bad response")]
    Bad,
    #[error("upstream error rcode")]
    Rcode,
}

impl From<std::io::Error> for AttemptError {
    fn from(_: std::io::Error) -> Self {
        AttemptError::Io
    }
}

enum Transport {
    /// UDP, with the TCP retry for truncated answers.
    Udp(udp::UdpPool, tcp::Framed),
    /// TCP or DNS-over-TLS.
    Framed(tcp::Framed),
    Https(Box<doh::Doh>),
}

struct Upstream {
    transport: Transport,
    /// Milliseconds since `epoch` until which this upstream is held down.
    down_until: AtomicU64,
}

/// The configured upstreams, in order.
pub struct Upstreams {
    list: Vec<Upstream>,
    epoch: Instant,
    timeout: Duration,
    errors: AtomicU64,
}

impl Upstreams {
    pub fn new(cfg: &[DnsUpstreamSection]) -> Result<Upstreams, UpstreamError> {
        Upstreams::with_timeout(cfg, ATTEMPT_TIMEOUT)
    }

    pub fn with_timeout(
        cfg: &[DnsUpstreamSection],
        timeout: Duration,
    ) -> Result<Upstreams, UpstreamError> {
        let mut list = Vec::new();
        for u in cfg {
            let transport = match u.protocol {
                DnsUpstreamProtocol::Udp => Transport::Udp(udp::UdpPool::new(u.address), tcp::Framed::new(u.address, None)),
                DnsUpstreamProtocol::Tcp => Transport::Framed(tcp::Framed::new(u.address, None)),
                DnsUpstreamProtocol::Tls => {
                    let tls = tls::TlsClient::new(u, &[b"dot"])?;
                    Transport::Framed(tcp::Framed::new(u.address, Some(tls)))
                }
                DnsUpstreamProtocol::Https => {
                    let path = u.path.clone().unwrap_or_else(|| "/dns-query".into());
                    let tls = tls::TlsClient::new(u, &[b"h2", b"http/1.1"])?;
                    Transport::Https(Box::new(doh::Doh::new(u.address, tls, path)?))
                }
            };
            list.push(Upstream {
                transport,
                down_until: AtomicU64::new(0),
            });
        }
        Ok(Upstreams {
            list,
            epoch: Instant::now(),
            timeout,
            errors: AtomicU64::new(0),
        })
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// Failed attempts so far (all upstreams).
    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }

    /// UDP sockets opened so far (all `udp` upstreams): each carries up to
    /// [`UDP_SOCKET_USES`] queries, one at a time.
    pub fn udp_sockets(&self) -> u64 {
        self.list.iter().map(|u| if let Transport::Udp(p, _) = &u.transport { p.opened() } else { 0 }).sum()
    }

    /// DNS-over-HTTPS connections made so far (all `https` upstreams), by
    /// the HTTP version the server chose.
    pub fn doh_connections(&self) -> DohConnections {
        let mut c = DohConnections::default();
        for u in &self.list {
            if let Transport::Https(d) = &u.transport {
                let d = d.connections();
                c.h2 += d.h2;
                c.http1 += d.http1;
            }
        }
        c
    }

    /// Resolve `name` (lowercase wire, no root label) / `qtype` upstream.
    pub async fn resolve(&self, name: &[u8], qtype: u16) -> Result<Answer, ResolveError> {
        if self.list.is_empty() {
            return Err(ResolveError::NoUpstream);
        }
        let mut wire_name = Vec::with_capacity(name.len() + 1);
        wire_name.extend_from_slice(name);
        wire_name.push(0);
        let qname = Name::from_bytes(&wire_name).map_err(|_| ResolveError::AllFailed)?;
        let now_ms = self.epoch.elapsed().as_millis() as u64;
        // Healthy upstreams first, in configured order; held-down ones last.
        let mut order: Vec<&Upstream> = self
            .list
            .iter()
            .filter(|u| u.down_until.load(Ordering::Relaxed) <= now_ms)
            .collect();
        order.extend(
            self.list
                .iter()
                .filter(|u| u.down_until.load(Ordering::Relaxed) > now_ms),
        );
        for u in order {
            match self.attempt(u, &qname, &wire_name, qtype).await {
                Ok(a) => {
                    u.down_until.store(0, Ordering::Relaxed);
                    return Ok(a);
                }
                Err(_) => {
                    self.errors.fetch_add(1, Ordering::Relaxed);
                    let until = self.epoch.elapsed() + HOLD_DOWN;
                    u.down_until
                        .store(until.as_millis() as u64, Ordering::Relaxed);
                }
            }
        }
        Err(ResolveError::AllFailed)
    }

    async fn attempt(
        &self,
        u: &Upstream,
        qname: &Name,
        wire_name: &[u8],
        qtype: u16,
    ) -> Result<Answer, AttemptError> {
        let id = random_u16();
        let bytes = encode_query(id, wire_name, qtype);
        let ask = Ask { query: &bytes, id, qname, qtype, deadline: tokio::time::Instant::now() + self.timeout };
        let resp = match &u.transport {
            Transport::Udp(pool, tcp) => {
                let r = pool.exchange(&ask).await?;
                if r.metadata.truncation {
                    tcp.exchange(&ask).await?
                } else {
                    r
                }
            }
            Transport::Framed(f) => f.exchange(&ask).await?,
            Transport::Https(d) => d.exchange(&ask).await?,
        };
        sanitize::sanitize(&resp, qname, qtype)
    }
}

/// The query for `wire_name` (uncompressed wire form, root label included) /
/// `qtype`, class IN: recursion desired, one question, and an OPT record
/// offering [`wire::OUR_UDP_SIZE`] (EDNS version 0, no DO bit). The same
/// bytes hickory's encoder writes for that message (a test compares them),
/// without building one per miss.
fn encode_query(id: u16, wire_name: &[u8], qtype: u16) -> Vec<u8> {
    let mut q = Vec::with_capacity(12 + wire_name.len() + 4 + 11);
    q.extend_from_slice(&id.to_be_bytes());
    // Flags: a standard query with RD; QDCOUNT 1, ANCOUNT 0, NSCOUNT 0, ARCOUNT 1.
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 1]);
    q.extend_from_slice(wire_name);
    q.extend_from_slice(&qtype.to_be_bytes());
    q.extend_from_slice(&1u16.to_be_bytes());
    // OPT: root name, type 41, class = UDP payload size, TTL 0 (extended
    // rcode, version, flags), no options.
    q.push(0);
    q.extend_from_slice(&41u16.to_be_bytes());
    q.extend_from_slice(&wire::OUR_UDP_SIZE.to_be_bytes());
    q.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
    q
}

fn random_u16() -> u16 {
    use rand_core::RngCore;
    let mut b = [0u8; 2];
    rand_core::OsRng.fill_bytes(&mut b);
    u16::from_be_bytes(b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::{Edns, MessageType, OpCode, Query};
    use hickory_proto::rr::RecordType;

    /// What the miss path sent before `encode_query`: hickory's encoding of
    /// the same message.
    fn hickory_query(id: u16, name: &Name, qtype: u16) -> Vec<u8> {
        let mut msg = Message::new(id, MessageType::Query, OpCode::Query);
        msg.metadata.recursion_desired = true;
        msg.add_query(Query::query(name.clone(), RecordType::from(qtype)));
        let mut edns = Edns::new();
        edns.set_max_payload(wire::OUR_UDP_SIZE);
        msg.set_edns(edns);
        msg.to_vec().unwrap()
    }

    #[test]
    fn encoded_query_is_byte_for_byte_hickorys() {
        let names: [&[u8]; 4] = [
            b"\x07example\x03com\x00",
            b"\x00",
            b"\x01a\x02bc\x03def\x0ctwelve-chars\x00",
            b"\x3fxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\x03net\x00",
        ];
        for (i, wire_name) in names.iter().enumerate() {
            let name = Name::from_bytes(wire_name).unwrap();
            for qtype in [1u16, 28, 16, 65, 255, 0xfffe] {
                let id = 0x1234u16.wrapping_mul(i as u16 + 1) ^ qtype;
                let ours = encode_query(id, wire_name, qtype);
                assert_eq!(ours, hickory_query(id, &name, qtype), "{name} type {qtype}");
                // And it parses back to the question asked.
                let m = Message::from_bytes(&ours).unwrap();
                assert_eq!(m.metadata.id, id);
                assert_eq!(m.queries[0].name(), &name);
                assert_eq!(u16::from(m.queries[0].query_type()), qtype);
                assert_eq!(m.edns.as_ref().map(|e| e.max_payload()), Some(wire::OUR_UDP_SIZE));
            }
        }
    }
}
