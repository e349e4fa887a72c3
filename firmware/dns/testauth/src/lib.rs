//! A small authoritative server for the zone `test.`, used by the integration
//! tests and the benchmark as the resolver's real upstream on loopback (UDP,
//! TCP and optionally DNS-over-TLS and HTTP/1.1 DNS-over-HTTPS). Test
//! support only: not part of palisade-dns, never on the node.
//!
//! Names (all under `test.`):
//! - `*.miss.test` A 192.0.2.1 (any label: the benchmark's cache misses)
//! - `www.test` A 192.0.2.80, `ttl1.test` A (TTL 1), `v6.test` AAAA 2001:db8::80
//! - `cloak.test` CNAME `tracker.cdn.test`, which has A 192.0.2.66
//! - `poison.test` A 192.0.2.7 plus out-of-bailiwick `victim.test` A 6.6.6.6
//!   in the answer and additional sections and a bogus NS
//! - `spoof.test`: first a reply with a wrong ID carrying A 6.6.6.6, then the
//!   real answer A 192.0.2.8
//! - `big.test`: 40 TXT records (truncated over UDP, complete over TCP)
//! - `slow.test`: never answered
//! - `servfail.test`: SERVFAIL
//! - `victim.test` A 192.0.2.9
//! - anything else: NXDOMAIN with the zone SOA (minimum 30)

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, CNAME, NS, SOA, TXT};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};

/// Queries received (all transports).
#[derive(Default)]
pub struct AuthStats {
    pub queries: AtomicU64,
}

pub struct TestAuthority {
    pub udp: SocketAddr,
    pub tcp: SocketAddr,
    pub tls: Option<SocketAddr>,
    /// DNS-over-HTTPS (HTTP/1.1, POST /dns-query; hostile paths: see
    /// `serve_doh`), with the same TLS config.
    pub doh: Option<SocketAddr>,
    pub stats: Arc<AuthStats>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for TestAuthority {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn n(s: &str) -> Name {
    Name::from_ascii(s).expect("static name")
}

/// What to send back for one query: zero, one or two messages.
fn answer(query: &Message) -> Vec<Message> {
    let mut r = Message::new(query.metadata.id, MessageType::Response, OpCode::Query);
    r.metadata.authoritative = true;
    r.metadata.recursion_desired = query.metadata.recursion_desired;
    let Some(q) = query.queries.first() else {
        r.metadata.response_code = ResponseCode::FormErr;
        return vec![r];
    };
    r.add_query(q.clone());
    let name = q.name().to_lowercase();
    let text = name.to_ascii();
    let text = text.trim_end_matches('.');
    let qt = q.query_type();
    let rec = |owner: &Name, ttl: u32, d: RData| Record::from_rdata(owner.clone(), ttl, d);
    let soa = || {
        rec(
            &n("test."),
            300,
            RData::SOA(SOA::new(
                n("ns.test."),
                n("hostmaster.test."),
                1,
                3600,
                600,
                86400,
                30,
            )),
        )
    };
    let a = |o: u8| RData::A(A::new(192, 0, 2, o));
    match text {
        "slow.test" => return vec![],
        "servfail.test" => {
            r.metadata.response_code = ResponseCode::ServFail;
            return vec![r];
        }
        "www.test" if qt == RecordType::A => {
            r.add_answer(rec(q.name(), 300, a(80)));
        }
        "ttl1.test" if qt == RecordType::A => {
            r.add_answer(rec(q.name(), 1, a(81)));
        }
        "victim.test" if qt == RecordType::A => {
            r.add_answer(rec(q.name(), 300, a(9)));
        }
        "v6.test" if qt == RecordType::AAAA => {
            r.add_answer(rec(
                q.name(),
                300,
                RData::AAAA(AAAA::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x80)),
            ));
        }
        "cloak.test" => {
            r.add_answer(rec(
                q.name(),
                300,
                RData::CNAME(CNAME(n("tracker.cdn.test."))),
            ));
            if qt == RecordType::A {
                r.add_answer(rec(&n("tracker.cdn.test."), 300, a(66)));
            }
        }
        "tracker.cdn.test" if qt == RecordType::A => {
            r.add_answer(rec(q.name(), 300, a(66)));
        }
        "poison.test" if qt == RecordType::A => {
            r.add_answer(rec(q.name(), 300, a(7)));
            r.add_answer(rec(&n("victim.test."), 86400, RData::A(A::new(6, 6, 6, 6))));
            r.add_authority(rec(&n("test."), 86400, RData::NS(NS(n("evil.example.")))));
            r.add_additional(rec(&n("victim.test."), 86400, RData::A(A::new(6, 6, 6, 6))));
        }
        "spoof.test" if qt == RecordType::A => {
            let mut fake = r.clone();
            fake.metadata.id ^= 0x5a5a;
            fake.add_answer(rec(q.name(), 86400, RData::A(A::new(6, 6, 6, 6))));
            r.add_answer(rec(q.name(), 300, a(8)));
            return vec![fake, r];
        }
        "big.test" if qt == RecordType::TXT => {
            for i in 0..40 {
                r.add_answer(rec(
                    q.name(),
                    300,
                    RData::TXT(TXT::new(vec![format!("{i:02}-{}", "x".repeat(40))])),
                ));
            }
        }
        t if t.ends_with(".miss.test") && qt == RecordType::A => {
            r.add_answer(rec(q.name(), 3600, a(1)));
        }
        "www.test" | "ttl1.test" | "victim.test" | "v6.test" | "tracker.cdn.test"
        | "poison.test" | "spoof.test" | "big.test" => {
            r.add_authority(soa());
        }
        t if t.ends_with(".miss.test") => {
            r.add_authority(soa());
        }
        _ => {
            r.metadata.response_code = ResponseCode::NXDomain;
            r.add_authority(soa());
        }
    }
    vec![r]
}

fn respond(bytes: &[u8], udp: bool) -> Vec<Vec<u8>> {
    let Ok(q) = Message::from_vec(bytes) else {
        return vec![];
    };
    let limit = if udp {
        q.edns
            .as_ref()
            .map(|e| e.max_payload().max(512))
            .unwrap_or(512) as usize
    } else {
        65535
    };
    let mut msgs = answer(&q);
    if !udp && msgs.len() > 1 {
        // Spoofed datagrams are a UDP thing; a stream carries the real answer.
        msgs.drain(..msgs.len() - 1);
    }
    msgs.into_iter()
        .filter_map(|m| {
            let v = m.to_vec().ok()?;
            if v.len() > limit {
                let mut t = Message::new(m.metadata.id, MessageType::Response, OpCode::Query);
                t.metadata.truncation = true;
                t.metadata.authoritative = true;
                t.add_queries(m.queries.clone());
                return t.to_vec().ok();
            }
            Some(v)
        })
        .collect()
}

/// A UDP socket and a TCP listener on the same port. With port 0 the kernel
/// picks the UDP port, and that port may already be in use for TCP (another
/// test's connection or listener): then try another, a bounded number of
/// times. A fixed port is tried once.
async fn bind_udp_and_tcp(bind: SocketAddr) -> std::io::Result<(UdpSocket, TcpListener)> {
    let tries = if bind.port() == 0 { 32 } else { 1 };
    let mut last = None;
    for _ in 0..tries {
        let udp = UdpSocket::bind(bind).await?;
        match TcpListener::bind(udp.local_addr()?).await {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.expect("at least one try"))
}

impl TestAuthority {
    /// Start on `bind` (port 0: any). With `tls`, also serve DoT on another
    /// port with this rustls server config.
    pub async fn start(
        bind: SocketAddr,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> std::io::Result<TestAuthority> {
        let (udp, tcp) = bind_udp_and_tcp(bind).await?;
        let udp_addr = udp.local_addr()?;
        let udp = Arc::new(udp);
        let tcp_addr = tcp.local_addr()?;
        let stats = Arc::new(AuthStats::default());
        let mut tasks = Vec::new();
        for _ in 0..2 {
            let (udp, stats) = (udp.clone(), stats.clone());
            tasks.push(tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                while let Ok((len, src)) = udp.recv_from(&mut buf).await {
                    stats.queries.fetch_add(1, Ordering::Relaxed);
                    for r in respond(&buf[..len], true) {
                        let _ = udp.send_to(&r, src).await;
                    }
                }
            }));
        }
        let st = stats.clone();
        tasks.push(tokio::spawn(async move {
            while let Ok((s, _)) = tcp.accept().await {
                tokio::spawn(serve_stream(s, st.clone()));
            }
        }));
        let (mut tls_addr, mut doh_addr) = (None, None);
        if let Some(cfg) = tls {
            let (addr, task) = tls_listener(bind, cfg.clone(), stats.clone(), serve_doh).await?;
            doh_addr = Some(addr);
            tasks.push(task);
            let (addr, task) = tls_listener(bind, cfg, stats.clone(), serve_stream).await?;
            tls_addr = Some(addr);
            tasks.push(task);
        }
        Ok(TestAuthority {
            udp: udp_addr,
            tcp: tcp_addr,
            tls: tls_addr,
            doh: doh_addr,
            stats,
            tasks,
        })
    }

    pub fn queries(&self) -> u64 {
        self.stats.queries.load(Ordering::Relaxed)
    }
}

/// A TLS listener on a fresh port of `bind`'s address: every accepted,
/// handshaken connection is served by `serve` on its own task.
async fn tls_listener<F, Fut>(
    bind: SocketAddr,
    cfg: Arc<rustls::ServerConfig>,
    stats: Arc<AuthStats>,
    serve: F,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)>
where
    F: Fn(tokio_rustls::server::TlsStream<tokio::net::TcpStream>, Arc<AuthStats>) -> Fut + Send + Sync + Copy + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let l = TcpListener::bind(SocketAddr::new(bind.ip(), 0)).await?;
    let addr = l.local_addr()?;
    let acceptor = tokio_rustls::TlsAcceptor::from(cfg);
    let task = tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let (acceptor, st) = (acceptor.clone(), stats.clone());
            tokio::spawn(async move {
                if let Ok(s) = acceptor.accept(s).await {
                    serve(s, st).await;
                }
            });
        }
    });
    Ok((addr, task))
}

async fn serve_stream<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    mut s: S,
    stats: Arc<AuthStats>,
) {
    loop {
        let Ok(len) = s.read_u16().await else { return };
        let mut buf = vec![0u8; len as usize];
        if s.read_exact(&mut buf).await.is_err() {
            return;
        }
        stats.queries.fetch_add(1, Ordering::Relaxed);
        for r in respond(&buf, false) {
            let mut out = (r.len() as u16).to_be_bytes().to_vec();
            out.extend_from_slice(&r);
            if s.write_all(&out).await.is_err() {
                return;
            }
        }
    }
}

/// HTTP/1.1 DoH (no ALPN, so no HTTP/2): `POST /dns-query` with a
/// Content-Length body answers; other paths serve hostile answers for the
/// client's limits:
/// - `/garbage`: 200 `application/dns-message`, 24 bytes that are no DNS answer
/// - `/wrong-type`: 200 `text/html` carrying the real answer
/// - `/huge-length`: 200 with `Content-Length: 1000000000` and no body
/// - `/endless`: 200, chunked, up to 1 MiB of body until the client hangs up
///
/// anything else: 404.
async fn serve_doh<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    mut s: S,
    stats: Arc<AuthStats>,
) {
    let mut buf = Vec::new();
    loop {
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 1024];
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
            if buf.len() > 16384 {
                return;
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
        let len = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.trim()
                    .eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse::<usize>().ok())?
            })
            .unwrap_or(0);
        let mut body = buf.split_off(head_end);
        buf.clear();
        while body.len() < len {
            let mut chunk = [0u8; 1024];
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => body.extend_from_slice(&chunk[..n]),
            }
        }
        buf = body.split_off(len);
        let request_line = head.lines().next().unwrap_or_default();
        let path = match request_line.split(' ').collect::<Vec<_>>()[..] {
            ["POST", path, "HTTP/1.1"] => path,
            _ => "",
        };
        if !path.is_empty() {
            stats.queries.fetch_add(1, Ordering::Relaxed);
        }
        let reply = respond(&body, false).pop();
        let ok = |ctype: &str, r: &[u8]| {
            let mut o = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\n\r\n",
                r.len()
            )
            .into_bytes();
            o.extend_from_slice(r);
            o
        };
        let out = match (path, reply) {
            ("/dns-query", Some(r)) => ok("application/dns-message", &r),
            ("/wrong-type", Some(r)) => ok("text/html", &r),
            ("/garbage", _) => ok("application/dns-message", &[0xee; 24]),
            ("/huge-length", _) => {
                b"HTTP/1.1 200 OK\r\nContent-Type: application/dns-message\r\nContent-Length: 1000000000\r\n\r\n".to_vec()
            }
            ("/endless", _) => {
                let head = b"HTTP/1.1 200 OK\r\nContent-Type: application/dns-message\r\nTransfer-Encoding: chunked\r\n\r\n";
                if s.write_all(head).await.is_err() {
                    return;
                }
                let mut chunk = b"1000\r\n".to_vec();
                chunk.extend_from_slice(&[0xee; 0x1000]);
                chunk.extend_from_slice(b"\r\n");
                for _ in 0..256 {
                    if s.write_all(&chunk).await.is_err() {
                        return;
                    }
                }
                return;
            }
            _ => b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n".to_vec(),
        };
        if s.write_all(&out).await.is_err() {
            return;
        }
    }
}
