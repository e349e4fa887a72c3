//! DNS over a byte stream with the two-byte length prefix (RFC 1035 4.2.2,
//! RFC 7766): plain TCP (also the retry of a truncated UDP answer) and
//! DNS-over-TLS (RFC 7858). Connections are pooled per upstream.

use super::tls::TlsClient;
use super::{Ask, AttemptError, POOL};
use hickory_proto::op::Message;
use std::net::SocketAddr;
use std::sync::Mutex;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

enum Stream {
    Tcp(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

/// Length-framed exchanges with one upstream over pooled connections (at
/// most [`POOL`] idle ones kept).
pub(super) struct Framed {
    addr: SocketAddr,
    /// Some: DNS-over-TLS; None: plain TCP.
    tls: Option<TlsClient>,
    idle: Mutex<Vec<Stream>>,
}

impl Framed {
    pub(super) fn new(addr: SocketAddr, tls: Option<TlsClient>) -> Framed {
        Framed {
            addr,
            tls,
            idle: Mutex::new(Vec::new()),
        }
    }

    async fn connect(&self) -> Result<Stream, AttemptError> {
        match &self.tls {
            Some(t) => Ok(Stream::Tls(Box::new(t.connect(self.addr).await?))),
            None => {
                let tcp = TcpStream::connect(self.addr).await?;
                tcp.set_nodelay(true)?;
                Ok(Stream::Tcp(tcp))
            }
        }
    }

    /// One query and its answer, checked against the question asked.
    pub(super) async fn exchange(
        &self,
        ask: &Ask<'_>,
    ) -> Result<Message, AttemptError> {
        let (query, deadline) = (ask.query, ask.deadline);
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
                None => tokio::time::timeout_at(deadline, self.connect())
                    .await
                    .map_err(|_| AttemptError::Timeout)??,
            };
            let r = match &mut conn {
                Stream::Tcp(s) => framed_exchange(s, query, deadline).await,
                Stream::Tls(s) => framed_exchange(s.as_mut(), query, deadline).await,
            };
            match r {
                Ok(bytes) => {
                    let m = ask.check(&bytes)?;
                    let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
                    if idle.len() < POOL {
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
