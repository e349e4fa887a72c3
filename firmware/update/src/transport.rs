//! How the node fetches repository files: [`NodeTransport`], a
//! [`tough::Transport`] for `file://` (tough's `FilesystemTransport`: USB
//! copies, tests), `http://` and `https://` (hyper HTTP/1.1 over a tokio
//! `TcpStream`, tokio-rustls with the ring provider for https).
//!
//! Nothing here is trusted: tough verifies every byte against signed metadata
//! (lengths, hashes, signatures). The transport only keeps a slow or hostile
//! server from holding the node: a connect timeout, a deadline for the
//! response head, an idle timeout per body read, a total deadline per fetch,
//! and a hard cap on body size on top of tough's signed lengths. Redirects are
//! not followed (a 3xx is an error like any non-200); a 404 is
//! `TransportErrorKind::FileNotFound`, which TUF needs (root rotation probes
//! `N+1.root.json`).

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper::client::conn::http1;
use hyper::header::{HOST, USER_AGENT};
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::{timeout, timeout_at, Instant};
use tough::{
    async_trait, FilesystemTransport, Transport, TransportError, TransportErrorKind,
    TransportStream,
};
use url::{Host, Url};

/// Hard cap on one response body (4 GiB): larger than any slot image we ship,
/// small enough that a hostile server cannot stream forever. tough enforces
/// the signed lengths below this.
pub const MAX_BODY: u64 = 4 << 30;

/// Default total deadline for one fetch (an image over a slow uplink).
pub const DEFAULT_TOTAL_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// Why a [`NodeTransport`] could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TransportSetupError {
    /// The CA bundle named in the config is unreadable or holds no usable
    /// certificate.
    #[error("CA file {path}: {msg}; give a PEM file with the repository server's CA certificate(s), or remove ca_file to use the public roots")]
    Ca { path: PathBuf, msg: String },
    /// rustls refused the configuration (should not happen with ring).
    #[error("TLS setup: {0}")]
    Tls(#[from] rustls::Error),
}

/// The node's repository transport (see the module docs).
#[derive(Clone)]
pub struct NodeTransport {
    tls: tokio_rustls::TlsConnector,
    connect_timeout: Duration,
    idle_timeout: Duration,
    total_timeout: Duration,
    max_body: u64,
}

impl std::fmt::Debug for NodeTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeTransport")
            .field("connect_timeout", &self.connect_timeout)
            .field("idle_timeout", &self.idle_timeout)
            .field("total_timeout", &self.total_timeout)
            .field("max_body", &self.max_body)
            .finish_non_exhaustive()
    }
}

impl NodeTransport {
    /// A transport whose https trust is the PEM bundle `ca_file` if given
    /// (only those roots: a private repository server), else the Mozilla roots
    /// (webpki-roots). `timeout` bounds connecting, waiting for the response
    /// head, and each read of the body; the whole fetch is bounded by
    /// [`DEFAULT_TOTAL_TIMEOUT`] (see [`NodeTransport::total_timeout`]).
    pub fn new(ca_file: Option<&Path>, timeout: Duration) -> Result<Self, TransportSetupError> {
        let mut roots = rustls::RootCertStore::empty();
        match ca_file {
            None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
            Some(path) => {
                use rustls::pki_types::pem::PemObject;
                let err = |msg: String| TransportSetupError::Ca {
                    path: path.to_path_buf(),
                    msg,
                };
                let certs = rustls::pki_types::CertificateDer::pem_file_iter(path)
                    .map_err(|e| err(e.to_string()))?;
                for c in certs {
                    roots
                        .add(c.map_err(|e| err(e.to_string()))?)
                        .map_err(|e| err(e.to_string()))?;
                }
                if roots.is_empty() {
                    return Err(err("no certificate in file".into()));
                }
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(NodeTransport {
            tls: tokio_rustls::TlsConnector::from(Arc::new(cfg)),
            connect_timeout: timeout,
            idle_timeout: timeout,
            total_timeout: DEFAULT_TOTAL_TIMEOUT,
            max_body: MAX_BODY,
        })
    }

    /// Set the total deadline of one fetch (connect to last byte).
    #[must_use]
    pub fn total_timeout(mut self, total: Duration) -> Self {
        self.total_timeout = total;
        self
    }

    /// Set the hard cap on one response body.
    #[must_use]
    pub fn max_body(mut self, max: u64) -> Self {
        self.max_body = max;
        self
    }

    async fn fetch_http(&self, url: Url) -> Result<TransportStream, TransportError> {
        let deadline = Instant::now() + self.total_timeout;
        let other = |e: Box<dyn std::error::Error + Send + Sync>| {
            TransportError::new_with_cause(TransportErrorKind::Other, url.as_str(), e)
        };
        let https = url.scheme() == "https";
        let port = url
            .port_or_known_default()
            .ok_or_else(|| other("URL has no port".into()))?;
        let host = url.host().ok_or_else(|| other("URL has no host".into()))?;
        let connect = async {
            match &host {
                Host::Domain(d) => TcpStream::connect((*d, port)).await,
                Host::Ipv4(a) => TcpStream::connect((*a, port)).await,
                Host::Ipv6(a) => TcpStream::connect((*a, port)).await,
            }
        };
        let tcp = timeout(self.connect_timeout.min(self.total_timeout), connect)
            .await
            .map_err(|_| {
                other(format!("connect timed out after {:?}", self.connect_timeout).into())
            })?
            .map_err(|e| other(e.into()))?;
        let _ = tcp.set_nodelay(true);
        let authority = match url.port() {
            Some(p) => format!("{}:{p}", url.host_str().unwrap_or_default()),
            None => url.host_str().unwrap_or_default().to_string(),
        };
        let mut path = url.path().to_string();
        if let Some(q) = url.query() {
            path.push('?');
            path.push_str(q);
        }
        let req = Request::get(path)
            .header(HOST, authority)
            .header(USER_AGENT, "palisade-update")
            .body(Empty::<Bytes>::new())
            .map_err(|e| other(e.into()))?;
        if https {
            let name = match &host {
                Host::Domain(d) => ServerName::try_from(d.to_string()),
                Host::Ipv4(a) => Ok(ServerName::from(std::net::IpAddr::V4(*a))),
                Host::Ipv6(a) => Ok(ServerName::from(std::net::IpAddr::V6(*a))),
            }
            .map_err(|e| other(e.into()))?;
            let tls = timeout_at(deadline, self.tls.connect(name, tcp))
                .await
                .map_err(|_| other("TLS handshake timed out".into()))?
                .map_err(|e| other(e.into()))?;
            self.exchange(url.clone(), tls, req, deadline).await
        } else {
            self.exchange(url.clone(), tcp, req, deadline).await
        }
    }

    /// One HTTP/1.1 GET on `io`; the body is streamed through a channel by a
    /// task that enforces the idle timeout, the deadline and the size cap.
    async fn exchange<IO>(
        &self,
        url: Url,
        io: IO,
        req: Request<Empty<Bytes>>,
        deadline: Instant,
    ) -> Result<TransportStream, TransportError>
    where
        IO: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let other = |e: Box<dyn std::error::Error + Send + Sync>| {
            TransportError::new_with_cause(TransportErrorKind::Other, url.as_str(), e)
        };
        let head_deadline = deadline.min(Instant::now() + self.idle_timeout);
        let (mut sender, conn) = http1::Builder::new()
            .max_buf_size(64 * 1024)
            .handshake(TokioIo::new(io))
            .await
            .map_err(|e| other(e.into()))?;
        let conn_task = tokio::spawn(async move {
            let _ = conn.await;
        });
        let resp = match timeout_at(head_deadline, sender.send_request(req)).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                conn_task.abort();
                return Err(other(e.into()));
            }
            Err(_) => {
                conn_task.abort();
                return Err(other("no response head before the timeout".into()));
            }
        };
        let status = resp.status();
        if status != StatusCode::OK {
            conn_task.abort();
            let kind = if status == StatusCode::NOT_FOUND {
                TransportErrorKind::FileNotFound
            } else {
                TransportErrorKind::Other
            };
            return Err(TransportError::new_with_cause(
                kind,
                url.as_str(),
                format!("HTTP status {status} (redirects are not followed)"),
            ));
        }
        let (tx, rx) = mpsc::channel::<Result<Bytes, TransportError>>(8);
        let idle = self.idle_timeout;
        let max = self.max_body;
        tokio::spawn(async move {
            let mut body = resp.into_body();
            let mut total: u64 = 0;
            loop {
                let step = deadline.min(Instant::now() + idle);
                let frame = match timeout_at(step, body.frame()).await {
                    Err(_) => Err("body read timed out".to_string()),
                    Ok(None) => break,
                    Ok(Some(Err(e))) => Err(e.to_string()),
                    Ok(Some(Ok(f))) => Ok(f),
                };
                let item = match frame {
                    Ok(f) => match f.into_data() {
                        Ok(data) => {
                            total = total.saturating_add(data.len() as u64);
                            if total > max {
                                Err(format!("response body larger than {max} bytes"))
                            } else {
                                Ok(data)
                            }
                        }
                        Err(_) => continue, // trailers
                    },
                    Err(e) => Err(e),
                };
                let stop = item.is_err();
                let item = item.map_err(|e| {
                    TransportError::new_with_cause(TransportErrorKind::Other, url.as_str(), e)
                });
                if tx.send(item).await.is_err() || stop {
                    break;
                }
            }
            conn_task.abort();
        });
        Ok(Box::pin(ChannelStream(rx)))
    }
}

/// The receiving end of a body task as the `Stream` tough wants.
struct ChannelStream(mpsc::Receiver<Result<Bytes, TransportError>>);

impl futures_core::Stream for ChannelStream {
    type Item = Result<Bytes, TransportError>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.0.poll_recv(cx)
    }
}

#[async_trait]
impl Transport for NodeTransport {
    async fn fetch(&self, url: Url) -> Result<TransportStream, TransportError> {
        match url.scheme() {
            "file" => FilesystemTransport.fetch(url).await,
            "http" | "https" => self.fetch_http(url).await,
            _ => Err(TransportError::new(
                TransportErrorKind::UnsupportedUrlScheme,
                url,
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;
    use std::io::{Read, Write};

    /// A one-shot HTTP server on loopback answering `resp` to one request.
    fn one_shot(resp: &'static [u8]) -> std::net::SocketAddr {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        std::thread::spawn(move || {
            if let Ok((mut s, _)) = l.accept() {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf);
                let _ = s.write_all(resp);
            }
        });
        addr
    }

    async fn get(t: &NodeTransport, url: String) -> Result<Vec<u8>, TransportError> {
        let mut s = t.fetch(Url::parse(&url).unwrap()).await?;
        let mut out = Vec::new();
        while let Some(c) = s.next().await {
            out.extend_from_slice(&c?);
        }
        Ok(out)
    }

    fn transport() -> NodeTransport {
        NodeTransport::new(None, Duration::from_secs(2)).unwrap()
    }

    #[tokio::test]
    async fn ok_body() {
        let a = one_shot(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello");
        assert_eq!(
            get(&transport(), format!("http://{a}/x")).await.unwrap(),
            b"hello"
        );
    }

    #[tokio::test]
    async fn not_found_is_file_not_found() {
        let a = one_shot(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n");
        let e = get(&transport(), format!("http://{a}/x"))
            .await
            .unwrap_err();
        assert_eq!(e.kind(), TransportErrorKind::FileNotFound);
    }

    #[tokio::test]
    async fn redirect_not_followed() {
        let a = one_shot(
            b"HTTP/1.1 302 Found\r\nLocation: http://127.0.0.1:1/\r\nContent-Length: 0\r\n\r\n",
        );
        let e = get(&transport(), format!("http://{a}/x"))
            .await
            .unwrap_err();
        assert_eq!(e.kind(), TransportErrorKind::Other);
    }

    #[tokio::test]
    async fn body_cap() {
        let a = one_shot(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n0123456789");
        let t = transport().max_body(4);
        assert!(get(&t, format!("http://{a}/x")).await.is_err());
    }

    #[tokio::test]
    async fn silent_server_times_out() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let a = l.local_addr().unwrap();
        let hold = std::thread::spawn(move || {
            let c = l.accept();
            std::thread::sleep(Duration::from_millis(800));
            drop(c);
        });
        let t = NodeTransport::new(None, Duration::from_millis(200)).unwrap();
        let e = get(&t, format!("http://{a}/x")).await.unwrap_err();
        assert_eq!(e.kind(), TransportErrorKind::Other);
        hold.join().unwrap();
    }

    #[tokio::test]
    async fn refused_connection_is_an_error() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let a = l.local_addr().unwrap();
        drop(l);
        assert!(get(&transport(), format!("http://{a}/x")).await.is_err());
    }

    #[test]
    fn bad_ca_file() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("ca.pem");
        std::fs::write(&p, "not a pem").unwrap();
        assert!(matches!(
            NodeTransport::new(Some(&p), Duration::from_secs(1)),
            Err(TransportSetupError::Ca { .. })
        ));
    }
}
