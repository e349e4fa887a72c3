//! DNS-over-HTTPS (RFC 8484): `POST` of `application/dns-message` with hyper
//! over a verified TLS connection (see [`super::tls`]). The client offers
//! `h2` and `http/1.1` in ALPN: a server that picks `h2` gets one
//! multiplexed connection per upstream, shared by every query in flight; one
//! that picks `http/1.1` (or no ALPN) gets keep-alive connections, up to
//! [`POOL`] idle ones kept. A pooled connection that turns out closed is
//! replaced once per query.
//!
//! Limits: the whole exchange (connect, handshake, request, answer) has the
//! attempt's deadline; response heads are capped at 8 KiB; the body must be
//! `200`, `application/dns-message`, 12 to 65535 bytes, checked from
//! `Content-Length` before anything is read and enforced while reading
//! (HTTP/2 and chunked bodies may come without a length).

use super::tls::TlsClient;
use super::{Ask, AttemptError, UpstreamError, POOL};
use hickory_proto::op::Message;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Bytes;
use hyper::client::conn::{http1, http2};
use hyper::header::{HeaderValue, ACCEPT, CONTENT_LENGTH, CONTENT_TYPE, HOST};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

const DNS_MESSAGE: &str = "application/dns-message";
/// Largest DNS message (and so DoH body) accepted.
const MAX_BODY: usize = 65_535;
/// Largest response head (HTTP/1.1 status line and headers, HTTP/2 header list).
const MAX_HEAD: usize = 8192;

type H1 = http1::SendRequest<Full<Bytes>>;
type H2 = http2::SendRequest<Full<Bytes>>;

enum Sender {
    H1(H1),
    H2(H2),
}

/// Connections made so far, by the protocol the server chose in ALPN.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DohConnections {
    /// Connections that negotiated HTTP/2.
    pub h2: u64,
    /// Connections on HTTP/1.1 (the server chose `http/1.1` or no ALPN).
    pub http1: u64,
}

/// The DoH client of one upstream.
pub(super) struct Doh {
    addr: SocketAddr,
    tls: TlsClient,
    /// HTTP/2 request target (`https://tls_name/path`).
    uri_h2: Uri,
    /// HTTP/1.1 request target (origin form, the path) and `Host`.
    uri_h1: Uri,
    host: HeaderValue,
    /// The shared HTTP/2 connection, when the server speaks it.
    h2: Mutex<Option<H2>>,
    /// Idle HTTP/1.1 connections.
    h1: Mutex<Vec<H1>>,
    /// Serialises connecting while the server may speak HTTP/2, so a burst
    /// of misses opens one connection, not one each.
    connecting: tokio::sync::Mutex<()>,
    /// The last connection negotiated HTTP/1.1: connect without the lock.
    speaks_h1: AtomicBool,
    conns_h2: AtomicU64,
    conns_h1: AtomicU64,
}

impl Doh {
    /// `path`: absolute, no whitespace or control characters (checked here).
    pub(super) fn new(
        addr: SocketAddr,
        tls: TlsClient,
        path: String,
    ) -> Result<Doh, UpstreamError> {
        let bad_path = || UpstreamError::BadPath {
            addr,
            path: path.clone(),
        };
        if !path.starts_with('/') || path.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(bad_path());
        }
        // The authority is the name the certificate carries (an IPv6
        // literal in brackets), without the port, as before HTTP/2.
        let authority = match tls.host().parse::<std::net::Ipv6Addr>() {
            Ok(_) => format!("[{}]", tls.host()),
            Err(_) => tls.host().to_string(),
        };
        let uri_h2 = Uri::builder()
            .scheme("https")
            .authority(authority.as_str())
            .path_and_query(path.as_str())
            .build()
            .map_err(|_| bad_path())?;
        let uri_h1 = Uri::builder()
            .path_and_query(path.as_str())
            .build()
            .map_err(|_| bad_path())?;
        let host = HeaderValue::from_str(&authority).map_err(|_| bad_path())?;
        Ok(Doh {
            addr,
            tls,
            uri_h2,
            uri_h1,
            host,
            h2: Mutex::new(None),
            h1: Mutex::new(Vec::new()),
            connecting: tokio::sync::Mutex::new(()),
            speaks_h1: AtomicBool::new(false),
            conns_h2: AtomicU64::new(0),
            conns_h1: AtomicU64::new(0),
        })
    }

    pub(super) fn connections(&self) -> DohConnections {
        DohConnections {
            h2: self.conns_h2.load(Ordering::Relaxed),
            http1: self.conns_h1.load(Ordering::Relaxed),
        }
    }

    /// One query and its answer, checked against the question asked.
    pub(super) async fn exchange(
        &self,
        ask: &Ask<'_>,
    ) -> Result<Message, AttemptError> {
        let (query, deadline) = (ask.query, ask.deadline);
        let body = Bytes::copy_from_slice(query);
        let fut = async {
            // A pooled connection may have been closed by the server: one
            // retry on a fresh connection.
            for fresh in [false, true] {
                let pooled = if fresh { None } else { self.pooled() };
                let was_pooled = pooled.is_some();
                let mut sender = match pooled {
                    Some(s) => s,
                    None if fresh => self.connect().await?,
                    None => self.connect_shared().await?,
                };
                match self.post(&mut sender, body.clone()).await {
                    Ok(answer) => {
                        self.give_back(sender);
                        return ask.check(&answer);
                    }
                    Err(AttemptError::Io) if was_pooled => continue,
                    Err(e) => return Err(e),
                }
            }
            Err(AttemptError::Io)
        };
        tokio::time::timeout_at(deadline, fut)
            .await
            .map_err(|_| AttemptError::Timeout)?
    }

    /// The shared HTTP/2 connection, else an idle HTTP/1.1 one.
    fn pooled(&self) -> Option<Sender> {
        {
            let mut h2 = self.h2.lock().unwrap_or_else(|e| e.into_inner());
            match h2.as_ref() {
                Some(s) if !s.is_closed() => return Some(Sender::H2(s.clone())),
                Some(_) => *h2 = None,
                None => {}
            }
        }
        let mut idle = self.h1.lock().unwrap_or_else(|e| e.into_inner());
        while let Some(s) = idle.pop() {
            if !s.is_closed() {
                return Some(Sender::H1(s));
            }
        }
        None
    }

    fn give_back(&self, sender: Sender) {
        // HTTP/2: the connection stays in `self.h2`; this clone just goes.
        if let Sender::H1(s) = sender {
            let mut idle = self.h1.lock().unwrap_or_else(|e| e.into_inner());
            if !s.is_closed() && idle.len() < POOL {
                idle.push(s);
            }
        }
    }

    /// A new connection, unless another query is making one to a server that
    /// may speak HTTP/2: then wait for it and share it.
    async fn connect_shared(&self) -> Result<Sender, AttemptError> {
        if self.speaks_h1.load(Ordering::Relaxed) {
            return self.connect().await;
        }
        let guard = self.connecting.lock().await;
        if let Some(s) = self.pooled() {
            return Ok(s);
        }
        if self.speaks_h1.load(Ordering::Relaxed) {
            // The connection made meanwhile was HTTP/1.1: no sharing to wait for.
            drop(guard);
            return self.connect().await;
        }
        let s = self.connect().await;
        drop(guard);
        s
    }

    /// TCP, TLS (ALPN `h2`, `http/1.1`), then the HTTP handshake the server
    /// chose. An HTTP/2 connection becomes the shared one.
    async fn connect(&self) -> Result<Sender, AttemptError> {
        let tls = self.tls.connect(self.addr).await?;
        let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2".as_slice());
        let io = TokioIo::new(tls);
        if h2 {
            let (send, conn) = http2::Builder::new(TokioExecutor::new())
                .max_header_list_size(MAX_HEAD as u32)
                .handshake(io)
                .await
                .map_err(|_| AttemptError::Io)?;
            // Runs until the server closes it or every sender is dropped
            // (the upstream list was replaced).
            tokio::spawn(async move {
                let _ = conn.await;
            });
            self.conns_h2.fetch_add(1, Ordering::Relaxed);
            self.speaks_h1.store(false, Ordering::Relaxed);
            *self.h2.lock().unwrap_or_else(|e| e.into_inner()) = Some(send.clone());
            Ok(Sender::H2(send))
        } else {
            let (send, conn) = http1::Builder::new()
                .max_header_size(MAX_HEAD)
                .max_buf_size(2 * MAX_HEAD)
                .handshake(io)
                .await
                .map_err(|_| AttemptError::Io)?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            self.conns_h1.fetch_add(1, Ordering::Relaxed);
            self.speaks_h1.store(true, Ordering::Relaxed);
            Ok(Sender::H1(send))
        }
    }

    /// One POST; the body of a `200 application/dns-message` answer.
    /// Connection-level failures are [`AttemptError::Io`] (retried once on a
    /// fresh connection when the connection was pooled); a bad answer is
    /// `Bad`, an HTTP error status `Rcode`.
    async fn post(&self, sender: &mut Sender, query: Bytes) -> Result<Vec<u8>, AttemptError> {
        let io = |_| AttemptError::Io;
        let request = |uri: &Uri| {
            let mut r = Request::builder()
                .method(Method::POST)
                .uri(uri.clone())
                .header(CONTENT_TYPE, DNS_MESSAGE)
                .header(ACCEPT, DNS_MESSAGE);
            if uri.authority().is_none() {
                r = r.header(HOST, self.host.clone());
            }
            r.body(Full::new(query.clone()))
                .map_err(|_| AttemptError::Bad)
        };
        let resp = match sender {
            Sender::H2(s) => {
                s.ready().await.map_err(io)?;
                s.send_request(request(&self.uri_h2)?).await.map_err(io)?
            }
            Sender::H1(s) => {
                s.ready().await.map_err(io)?;
                s.send_request(request(&self.uri_h1)?).await.map_err(io)?
            }
        };
        if resp.status() != StatusCode::OK {
            return Err(AttemptError::Rcode);
        }
        let h = resp.headers();
        let is_dns = h
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| {
                v.len() >= DNS_MESSAGE.len()
                    && v[..DNS_MESSAGE.len()].eq_ignore_ascii_case(DNS_MESSAGE)
            });
        if !is_dns {
            return Err(AttemptError::Bad);
        }
        if let Some(len) = h.get(CONTENT_LENGTH) {
            let len = len
                .to_str()
                .ok()
                .and_then(|v| v.parse::<usize>().ok())
                .ok_or(AttemptError::Bad)?;
            if !(12..=MAX_BODY).contains(&len) {
                return Err(AttemptError::Bad);
            }
        }
        let body = Limited::new(resp.into_body(), MAX_BODY)
            .collect()
            .await
            .map_err(|e| {
                if e.is::<LengthLimitError>() {
                    AttemptError::Bad
                } else {
                    AttemptError::Io
                }
            })?
            .to_bytes();
        if body.len() < 12 {
            return Err(AttemptError::Bad);
        }
        Ok(body.to_vec())
    }
}
