//! The repository client over https:// from a loopback server whose
//! certificate comes from a throwaway CA (rcgen): trusted through `ca_file`,
//! refused with the public roots, refused for a certificate naming another
//! host. The server terminates TLS (tokio-rustls, ring) in front of the plain
//! static file server of `common::serve`. Loopback only.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use palisade_update::repo::{ClientConfig, Repo, RepoError, RepoSource};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tempfile::TempDir;
use tokio::net::{TcpListener, TcpStream};
use url::Url;

const BOARD: &str = "qemu-x86_64";
const IMG: &str = "images/qemu-x86_64/1.0.0.img";
const POLICY: &[u8] = br#"{"version":"1.0.0","start":"2030-01-01T00:00:00Z","waves":3,"soak_minutes":60,"window":{"start":"02:00","minutes":120}}"#;

/// A throwaway CA (PEM) and a server config for a certificate it signs for
/// `names` (a name that parses as an IP address becomes an IP SAN).
fn pki(names: &[&str]) -> (String, Arc<rustls::ServerConfig>) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let cert = rcgen::CertificateParams::new(names)
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    let server = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![CertificateDer::from(cert.der().to_vec())],
        PrivateKeyDer::Pkcs8(key.serialize_der().into()),
    )
    .unwrap();
    (ca.pem(), Arc::new(server))
}

/// Serve `dir` over https on 127.0.0.1 (kernel-chosen port): each TLS
/// connection is decrypted here and piped to a `common::serve` server (which
/// reads the request line, answers 200 with Content-Length or 404, and
/// closes). Returns the port.
async fn serve_tls(dir: &Path, tls: Arc<rustls::ServerConfig>) -> u16 {
    let plain = serve(dir);
    let backend = (plain.host_str().unwrap().to_string(), plain.port().unwrap());
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = l.accept().await {
            let (acceptor, backend) = (acceptor.clone(), backend.clone());
            tokio::spawn(async move {
                // A refused handshake ends here; the client reports it.
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut up = TcpStream::connect((backend.0.as_str(), backend.1))
                    .await
                    .unwrap();
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut up).await;
            });
        }
    });
    port
}

/// A signed repository with one image and a rollout policy, the CA file, and
/// a scratch dir for datastores.
struct Fx {
    _tmp: TempDir,
    base: PathBuf,
    repo: PathBuf,
    img: Vec<u8>,
}

impl Fx {
    async fn new() -> Fx {
        let tmp = TempDir::new().unwrap();
        let base = tmp.path().to_path_buf();
        let (repo, keys) = (base.join("repo"), base.join("keys"));
        gen_keys(&keys);
        init(&repo, &keys).await;
        let img: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        publish(
            &repo,
            &keys,
            &[(IMG, &img), ("rollout.json", POLICY)],
            1,
            hours(24),
        )
        .await;
        Fx {
            _tmp: tmp,
            base,
            repo,
            img,
        }
    }

    /// Start an https server for `names`; the CA PEM is written to `ca.pem`.
    async fn server(&self, names: &[&str]) -> u16 {
        let (ca_pem, tls) = pki(names);
        std::fs::write(self.ca(), ca_pem).unwrap();
        serve_tls(&self.repo, tls).await
    }

    fn ca(&self) -> PathBuf {
        self.base.join("ca.pem")
    }

    fn cfg(&self, ds: &str, ca_file: Option<PathBuf>) -> ClientConfig {
        ClientConfig {
            trusted_root: self.repo.join("metadata/1.root.json"),
            datastore: self.base.join("ds").join(ds),
            ca_file,
            timeout: Duration::from_secs(5),
        }
    }
}

fn source(host: &str, port: u16) -> RepoSource {
    RepoSource::from_base(&Url::parse(&format!("https://{host}:{port}/")).unwrap()).unwrap()
}

/// A refusal of the TLS handshake: unreachable, and the message says why.
fn assert_tls_refusal(e: &RepoError, why: &str) {
    assert_eq!(e.kind(), "unreachable", "{e}");
    let msg = e.to_string();
    assert!(msg.contains("certificate"), "{msg}");
    assert!(msg.contains(why), "{msg}");
}

#[tokio::test]
async fn https_with_ca_file() {
    let fx = Fx::new().await;
    let port = fx.server(&["localhost", "127.0.0.1"]).await;
    // By name (DNS SAN) and by address (IP SAN).
    for host in ["localhost", "127.0.0.1"] {
        let repo = Repo::load(&source(host, port), &fx.cfg(host, Some(fx.ca())))
            .await
            .unwrap();
        let p = repo.rollout().await.unwrap().unwrap();
        assert_eq!((p.waves, p.soak_minutes), (3, 60));
        let images = repo.images(BOARD);
        assert_eq!(images.len(), 1);
        let mut p = |_d: u64, _t: u64| {};
        let got = repo.fetch_image(&images[0], 1 << 20, &mut p).await.unwrap();
        assert_eq!(got.as_bytes(), &fx.img[..]);
        assert_eq!(got.sha256(), sha256(&fx.img));
    }
}

#[tokio::test]
async fn public_roots_refuse_private_ca() {
    let fx = Fx::new().await;
    let port = fx.server(&["localhost", "127.0.0.1"]).await;
    let e = Repo::load(&source("localhost", port), &fx.cfg("pub", None))
        .await
        .expect_err("a private CA is not in the public roots");
    assert_tls_refusal(&e, "UnknownIssuer");
}

#[tokio::test]
async fn certificate_for_another_name_is_refused() {
    let fx = Fx::new().await;
    let port = fx.server(&["other.test"]).await;
    let e = Repo::load(&source("localhost", port), &fx.cfg("name", Some(fx.ca())))
        .await
        .expect_err("the certificate does not name localhost");
    assert_tls_refusal(&e, "not valid for name \"localhost\"");
}
