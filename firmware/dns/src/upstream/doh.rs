//! DNS-over-HTTPS (RFC 8484): POST of `application/dns-message` over
//! HTTP/1.1 keep-alive on a verified TLS connection; connections pooled.

use super::sanitize::check_response;
use super::tls::TlsClient;
use super::{AttemptError, POOL};
use hickory_proto::op::Message;
use hickory_proto::rr::Name;
use std::net::SocketAddr;
use std::sync::Mutex;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// The DoH client of one upstream.
pub(super) struct Doh {
    addr: SocketAddr,
    tls: TlsClient,
    path: String,
    idle: Mutex<Vec<TlsStream<TcpStream>>>,
}

impl Doh {
    pub(super) fn new(addr: SocketAddr, tls: TlsClient, path: String) -> Doh {
        Doh {
            addr,
            tls,
            path,
            idle: Mutex::new(Vec::new()),
        }
    }

    /// One query and its answer, checked against `id` and the question.
    pub(super) async fn exchange(
        &self,
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
                self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop()
            };
            let was_pooled = pooled.is_some();
            let mut conn = match pooled {
                Some(c) => c,
                None => tokio::time::timeout_at(deadline, self.tls.connect(self.addr))
                    .await
                    .map_err(|_| AttemptError::Timeout)??,
            };
            let r = doh_exchange(&mut conn, self.tls.host(), &self.path, query, deadline).await;
            match r {
                Ok((bytes, reusable)) => {
                    let m = check_response(&bytes, id, qname, qtype)?;
                    let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
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
