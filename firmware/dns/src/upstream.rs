//! Upstream resolvers: plain UDP (TCP on truncation), TCP, DNS-over-TLS and
//! DNS-over-HTTPS (HTTP/1.1 POST, RFC 8484; rustls, certificate and name
//! verified; connections kept alive and pooled), tried in order with failover,
//! fail-closed (every upstream down: the caller answers SERVFAIL; no query
//! ever leaves by another path).
//!
//! Responses are untrusted: the ID, the question and the source (connected
//! sockets) must match, and only the records on the CNAME chain of the
//! question (plus an in-bailiwick SOA for negative answers) are kept; NS,
//! additional and out-of-bailiwick records are dropped, so they can neither
//! reach the client nor the cache.

use crate::wire::{self, Answer};
use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use hickory_proto::serialize::binary::BinDecodable;
use palisade_core::config::{DnsUpstreamProtocol, DnsUpstreamSection};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

/// Longest time one upstream gets for one query.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_millis(1500);
/// An upstream that failed is skipped (unless all are down) for this long.
const HOLD_DOWN: Duration = Duration::from_secs(5);
/// Cache at most this long, whatever the TTL says.
pub const MAX_TTL: u32 = 86_400;
/// Negative answers at most this long.
pub const MAX_NEG_TTL: u32 = 3_600;
const MAX_CHAIN: usize = 12;
const POOL: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("upstream {addr}: protocols tls and https need tls_name")]
    NoTlsName { addr: SocketAddr },
    #[error("upstream {addr}: bad tls_name: {name}")]
    BadTlsName { addr: SocketAddr, name: String },
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
    Udp,
    Tcp,
    Tls {
        connector: TlsConnector,
        name: rustls::pki_types::ServerName<'static>,
    },
    Https {
        connector: TlsConnector,
        name: rustls::pki_types::ServerName<'static>,
        host: String,
        path: String,
    },
}

enum Conn {
    Tcp(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

struct Upstream {
    addr: SocketAddr,
    transport: Transport,
    idle: Mutex<Vec<Conn>>,
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

fn tls_config(
    u: &DnsUpstreamSection,
    alpn: &[u8],
) -> Result<Arc<rustls::ClientConfig>, UpstreamError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = &u.ca_file {
        use rustls::pki_types::pem::PemObject;
        let ca_err = |msg: String| UpstreamError::Ca {
            addr: u.address,
            path: path.clone(),
            msg,
        };
        let certs = rustls::pki_types::CertificateDer::pem_file_iter(path)
            .map_err(|e| ca_err(e.to_string()))?;
        let mut n = 0;
        for c in certs {
            let c = c.map_err(|e| ca_err(e.to_string()))?;
            roots.add(c).map_err(|e| ca_err(e.to_string()))?;
            n += 1;
        }
        if n == 0 {
            return Err(ca_err("no certificate in file".into()));
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|source| UpstreamError::Tls {
            addr: u.address,
            source,
        })?
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![alpn.to_vec()];
    Ok(Arc::new(cfg))
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
                DnsUpstreamProtocol::Udp => Transport::Udp,
                DnsUpstreamProtocol::Tcp => Transport::Tcp,
                DnsUpstreamProtocol::Tls | DnsUpstreamProtocol::Https => {
                    let host = u
                        .tls_name
                        .clone()
                        .ok_or(UpstreamError::NoTlsName { addr: u.address })?;
                    let name =
                        rustls::pki_types::ServerName::try_from(host.clone()).map_err(|_| {
                            UpstreamError::BadTlsName {
                                addr: u.address,
                                name: host.clone(),
                            }
                        })?;
                    if u.protocol == DnsUpstreamProtocol::Tls {
                        Transport::Tls {
                            connector: TlsConnector::from(tls_config(u, b"dot")?),
                            name,
                        }
                    } else {
                        let path = u.path.clone().unwrap_or_else(|| "/dns-query".into());
                        if !path.starts_with('/')
                            || path.chars().any(|c| c.is_whitespace() || c.is_control())
                        {
                            return Err(UpstreamError::BadTlsName {
                                addr: u.address,
                                name: path,
                            });
                        }
                        let connector = TlsConnector::from(tls_config(u, b"http/1.1")?);
                        Transport::Https {
                            connector,
                            name,
                            host,
                            path,
                        }
                    }
                }
            };
            list.push(Upstream {
                addr: u.address,
                transport,
                idle: Mutex::new(Vec::new()),
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
            match self.attempt(u, &qname, qtype).await {
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
        qtype: u16,
    ) -> Result<Answer, AttemptError> {
        let id = random_u16();
        let mut msg = Message::new(id, MessageType::Query, OpCode::Query);
        msg.metadata.recursion_desired = true;
        msg.add_query(Query::query(qname.clone(), RecordType::from(qtype)));
        let mut edns = hickory_proto::op::Edns::new();
        edns.set_max_payload(wire::OUR_UDP_SIZE);
        msg.set_edns(edns);
        let bytes = msg.to_vec().map_err(|_| AttemptError::Bad)?;
        let deadline = tokio::time::Instant::now() + self.timeout;
        let resp = match &u.transport {
            Transport::Udp => {
                let r = udp_exchange(u.addr, &bytes, id, qname, qtype, deadline).await?;
                if r.metadata.truncation {
                    self.stream_exchange(u, &bytes, id, qname, qtype, deadline)
                        .await?
                } else {
                    r
                }
            }
            _ => {
                self.stream_exchange(u, &bytes, id, qname, qtype, deadline)
                    .await?
            }
        };
        sanitize(&resp, qname, qtype)
    }

    async fn stream_exchange(
        &self,
        u: &Upstream,
        query: &[u8],
        id: u16,
        qname: &Name,
        qtype: u16,
        deadline: tokio::time::Instant,
    ) -> Result<Message, AttemptError> {
        // A pooled connection may have been closed by the server: one retry
        // on a fresh connection.
        for fresh in [false, true] {
            let pooled = if fresh {
                None
            } else {
                u.idle.lock().unwrap_or_else(|e| e.into_inner()).pop()
            };
            let was_pooled = pooled.is_some();
            let mut conn = match pooled {
                Some(c) => c,
                None => tokio::time::timeout_at(deadline, connect(u))
                    .await
                    .map_err(|_| AttemptError::Timeout)??,
            };
            let r = match (&mut conn, &u.transport) {
                (Conn::Tls(s), Transport::Https { host, path, .. }) => {
                    doh_exchange(s.as_mut(), host, path, query, deadline).await
                }
                (Conn::Tcp(s), _) => framed_exchange(s, query, deadline).await.map(|b| (b, true)),
                (Conn::Tls(s), _) => framed_exchange(s.as_mut(), query, deadline)
                    .await
                    .map(|b| (b, true)),
            };
            match r {
                Ok((bytes, reusable)) => {
                    let m = check_response(&bytes, id, qname, qtype)?;
                    let mut idle = u.idle.lock().unwrap_or_else(|e| e.into_inner());
                    if reusable && idle.len() < POOL {
                        idle.push(conn);
                    }
                    return Ok(m);
                }
                Err(e) if was_pooled && e != AttemptError::Timeout => continue,
                Err(e) => return Err(e),
            }
        }
        Err(AttemptError::Io)
    }
}

async fn connect(u: &Upstream) -> Result<Conn, AttemptError> {
    let tcp = TcpStream::connect(u.addr).await?;
    tcp.set_nodelay(true)?;
    match &u.transport {
        Transport::Tls { connector, name }
        | Transport::Https {
            connector, name, ..
        } => {
            let s = connector.connect(name.clone(), tcp).await?;
            Ok(Conn::Tls(Box::new(s)))
        }
        _ => Ok(Conn::Tcp(tcp)),
    }
}

/// Largest HTTP response head we read from a DoH server.
const MAX_HTTP_HEAD: usize = 8192;

/// One RFC 8484 POST over HTTP/1.1 (keep-alive). Returns the DNS message and
/// whether the connection may be reused.
async fn doh_exchange<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    host: &str,
    path: &str,
    query: &[u8],
    deadline: tokio::time::Instant,
) -> Result<(Vec<u8>, bool), AttemptError> {
    let fut = async {
        let mut out = format!(
            "POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/dns-message\r\n\
             Accept: application/dns-message\r\nContent-Length: {}\r\n\r\n",
            query.len()
        )
        .into_bytes();
        out.extend_from_slice(query);
        s.write_all(&out).await?;
        s.flush().await?;
        let mut buf = Vec::with_capacity(1024);
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            if buf.len() > MAX_HTTP_HEAD {
                return Err(AttemptError::Bad);
            }
            let mut chunk = [0u8; 1024];
            let n = s.read(&mut chunk).await?;
            if n == 0 {
                return Err(AttemptError::Io);
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = std::str::from_utf8(&buf[..head_end]).map_err(|_| AttemptError::Bad)?;
        let mut lines = head.split("\r\n");
        let status = lines.next().unwrap_or_default();
        let mut parts = status.split(' ');
        let (version, code) = (
            parts.next().unwrap_or_default(),
            parts.next().unwrap_or_default(),
        );
        if !version.starts_with("HTTP/1.") || code != "200" {
            return Err(AttemptError::Rcode);
        }
        let mut len = None;
        let mut reusable = version == "HTTP/1.1";
        for l in lines {
            let Some((k, v)) = l.split_once(':') else {
                continue;
            };
            let (k, v) = (k.trim(), v.trim());
            if k.eq_ignore_ascii_case("content-length") {
                len = v.parse::<usize>().ok();
            } else if k.eq_ignore_ascii_case("transfer-encoding") {
                return Err(AttemptError::Bad); // chunked DNS answers: not supported
            } else if k.eq_ignore_ascii_case("connection") && v.eq_ignore_ascii_case("close") {
                reusable = false;
            } else if k.eq_ignore_ascii_case("content-type")
                && !v.starts_with("application/dns-message")
            {
                return Err(AttemptError::Bad);
            }
        }
        let len = len
            .filter(|l| (12..=65535).contains(l))
            .ok_or(AttemptError::Bad)?;
        let mut body = buf.split_off(head_end);
        if body.len() > len {
            return Err(AttemptError::Bad); // pipelined junk after the answer
        }
        let have = body.len();
        body.resize(len, 0);
        s.read_exact(&mut body[have..]).await?;
        Ok((body, reusable))
    };
    tokio::time::timeout_at(deadline, fut)
        .await
        .map_err(|_| AttemptError::Timeout)?
}

async fn framed_exchange<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    query: &[u8],
    deadline: tokio::time::Instant,
) -> Result<Vec<u8>, AttemptError> {
    let fut = async {
        let mut out = Vec::with_capacity(query.len() + 2);
        out.extend_from_slice(&(query.len() as u16).to_be_bytes());
        out.extend_from_slice(query);
        s.write_all(&out).await?;
        s.flush().await?;
        let len = s.read_u16().await? as usize;
        if len < 12 {
            return Err(AttemptError::Bad);
        }
        let mut buf = vec![0u8; len];
        s.read_exact(&mut buf).await?;
        Ok(buf)
    };
    tokio::time::timeout_at(deadline, fut)
        .await
        .map_err(|_| AttemptError::Timeout)?
}

async fn udp_exchange(
    addr: SocketAddr,
    query: &[u8],
    id: u16,
    qname: &Name,
    qtype: u16,
    deadline: tokio::time::Instant,
) -> Result<Message, AttemptError> {
    let bind: SocketAddr = if addr.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    }
    .parse()
    .expect("static");
    // A fresh socket per query: a random source port from the kernel, and
    // `connect` makes the kernel drop datagrams from any other source.
    let sock = UdpSocket::bind(bind).await?;
    sock.connect(addr).await?;
    sock.send(query).await?;
    let mut buf = vec![0u8; 4096];
    loop {
        let n = tokio::time::timeout_at(deadline, sock.recv(&mut buf))
            .await
            .map_err(|_| AttemptError::Timeout)??;
        // A datagram with the wrong ID or question is ignored (it may be a
        // spoofing attempt); keep waiting for the real answer until the deadline.
        match check_response(&buf[..n], id, qname, qtype) {
            Ok(m) => return Ok(m),
            Err(AttemptError::Rcode) => return Err(AttemptError::Rcode),
            Err(_) => continue,
        }
    }
}

fn check_response(
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

fn random_u16() -> u16 {
    use rand_core::RngCore;
    let mut b = [0u8; 2];
    rand_core::OsRng.fill_bytes(&mut b);
    u16::from_be_bytes(b)
}

/// Keep only what answers the question; compute the cache TTL; encode for replay.
fn sanitize(m: &Message, qname: &Name, qtype: u16) -> Result<Answer, AttemptError> {
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
