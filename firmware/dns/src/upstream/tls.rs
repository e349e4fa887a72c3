//! TLS client setup shared by DNS-over-TLS and DNS-over-HTTPS: rustls with
//! the ring provider, the Mozilla roots (webpki-roots) plus an optional PEM
//! CA file per upstream, and the name the certificate must carry.

use super::UpstreamError;
use palisade_core::config::DnsUpstreamSection;
use rustls::pki_types::ServerName;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

/// A verified TLS client for one upstream: connector (roots, ALPN) and the
/// name checked in the certificate.
pub(super) struct TlsClient {
    connector: TlsConnector,
    name: ServerName<'static>,
    /// `tls_name`, as configured (DoH sends it as the HTTP authority).
    host: String,
}

impl TlsClient {
    /// Build from the upstream's `tls_name` and `ca_file`, offering `alpn`
    /// in order of preference.
    pub(super) fn new(u: &DnsUpstreamSection, alpn: &[&[u8]]) -> Result<TlsClient, UpstreamError> {
        let host = u
            .tls_name
            .clone()
            .ok_or(UpstreamError::NoTlsName { addr: u.address })?;
        let name = ServerName::try_from(host.clone()).map_err(|_| UpstreamError::BadTlsName {
            addr: u.address,
            name: host.clone(),
        })?;
        Ok(TlsClient {
            connector: TlsConnector::from(config(u, alpn)?),
            name,
            host,
        })
    }

    pub(super) fn host(&self) -> &str {
        &self.host
    }

    /// TCP connect to `addr`, then the TLS handshake (certificate and name
    /// verified).
    pub(super) async fn connect(&self, addr: SocketAddr) -> std::io::Result<TlsStream<TcpStream>> {
        let tcp = TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        self.connector.connect(self.name.clone(), tcp).await
    }
}

fn config(
    u: &DnsUpstreamSection,
    alpn: &[&[u8]],
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
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(cfg))
}
