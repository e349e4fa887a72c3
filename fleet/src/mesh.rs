//! The management mesh (docs/metrics.md): trust anchors for the nodes'
//! metrics endpoints, scraper certificates, and scraping a node.
//!
//! An anchor is a CA key (ECDSA P-256, `<keys>/mesh-anchor-<name>.key.pem`,
//! 0600) and its self-signed certificate. Every live anchor's certificate is
//! published in one bundle, `mesh/anchors.pem`, signed by the `configs`
//! role; nodes take it at their next fleet poll and swap their anchors
//! without a restart. Rotation: `anchor init NEW`, issue from it, `anchor
//! retire OLD` (removed from the bundle, its key destroyed). The publisher's
//! list of anchors is `<repo>/inventory/mesh-anchors.json` (not published).
//!
//! `metrics` scrapes a node over TLS with a scraper certificate and pins the
//! node: the server's certificate must carry the ed25519 identity key the
//! inventory holds for that node id, and the handshake must be signed by it.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use palisade_update::fleet::{valid_name, valid_node_id, CONFIGS, MESH_ANCHORS_TARGET};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::trust::parse_key32;
use crate::{hex, repo_err, write_atomic, write_private, Expiries, Fleet, FleetError, Report};

fn input(what: impl std::fmt::Display) -> FleetError {
    FleetError::Input(what.to_string())
}

/// One live anchor in the publisher's list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnchorEntry {
    pub name: String,
    /// The CA certificate (PEM).
    pub cert_pem: String,
    /// SHA-256 of the certificate's DER, hex.
    pub sha256: String,
    /// Unix seconds.
    pub created: i64,
    pub not_after: i64,
}

/// `<repo>/inventory/mesh-anchors.json`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnchorList {
    pub anchors: Vec<AnchorEntry>,
}

fn now() -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc()
}

/// The CA's parameters; rebuilt identically to issue (the subject must
/// match the anchor certificate's).
fn ca_params(name: &str) -> rcgen::CertificateParams {
    let mut p = rcgen::CertificateParams::default();
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.distinguished_name
        .push(rcgen::DnType::OrganizationName, "palisade fleet");
    p.distinguished_name.push(
        rcgen::DnType::CommonName,
        format!("palisade mesh anchor {name}"),
    );
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
    p.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    p
}

impl Fleet {
    fn anchors_path(&self) -> PathBuf {
        self.repo.join("inventory").join("mesh-anchors.json")
    }

    /// The anchor key's path.
    pub fn anchor_key_path(&self, name: &str) -> PathBuf {
        self.keys.join(format!("mesh-anchor-{name}.key.pem"))
    }

    /// The publisher's list of live anchors.
    pub fn anchor_list(&self) -> Result<AnchorList, FleetError> {
        let p = self.anchors_path();
        match std::fs::read(&p) {
            Ok(b) => {
                serde_json::from_slice(&b).map_err(|e| repo_err(format!("{}: {e}", p.display())))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(AnchorList::default()),
            Err(e) => Err(repo_err(format!("{}: {e}", p.display()))),
        }
    }

    fn save_anchor_list(&self, l: &AnchorList) -> Result<(), FleetError> {
        let p = self.anchors_path();
        std::fs::create_dir_all(p.parent().expect("has a parent"))
            .map_err(|e| repo_err(format!("{}: {e}", p.display())))?;
        let mut b = serde_json::to_vec_pretty(l).map_err(|e| FleetError::Other(e.to_string()))?;
        b.push(b'\n');
        write_atomic(&p, &b)
    }

    /// Publish the bundle of every live anchor (configs role).
    async fn publish_anchors(
        &self,
        l: &AnchorList,
        exp: Expiries,
    ) -> Result<Option<u64>, FleetError> {
        let mut bundle = String::new();
        for a in &l.anchors {
            bundle.push_str(&a.cert_pem);
        }
        palisade_update::mesh::parse_anchors(bundle.as_bytes())
            .map_err(|e| FleetError::Other(format!("anchor bundle: {e}")))?;
        let r = self
            .put_targets(
                CONFIGS.name,
                vec![(MESH_ANCHORS_TARGET.to_string(), bundle.into_bytes())],
                &[],
                exp,
            )
            .await?;
        Ok(r.map(|c| c.roles[CONFIGS.name].signed.version.get()))
    }

    /// `mesh anchor init NAME`: a new CA key and certificate, published in
    /// the bundle beside the anchors already there. Run again after a
    /// failed publish, it publishes the existing anchor.
    pub async fn mesh_anchor_init(&self, name: &str, exp: Expiries) -> Result<Report, FleetError> {
        if !valid_name(name) {
            return Err(input(format!(
                "anchor name {name:?}: 1-64 of a-z, 0-9, '-'"
            )));
        }
        let mut list = self.anchor_list()?;
        let key_path = self.anchor_key_path(name);
        if !list.anchors.iter().any(|a| a.name == name) {
            if key_path.exists() {
                return Err(repo_err(format!(
                    "{} exists but the anchor is not in {}; remove the key or choose another name",
                    key_path.display(),
                    self.anchors_path().display()
                )));
            }
            let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
                .map_err(|e| FleetError::Other(format!("key: {e}")))?;
            let mut p = ca_params(name);
            let t = now();
            p.not_before = t - time::Duration::hours(1);
            p.not_after = t + time::Duration::days(5 * 365);
            let cert = p
                .self_signed(&key)
                .map_err(|e| FleetError::Other(format!("anchor certificate: {e}")))?;
            std::fs::create_dir_all(&self.keys)
                .map_err(|e| repo_err(format!("{}: {e}", self.keys.display())))?;
            write_private(&key_path, key.serialize_pem().as_bytes(), false)?;
            list.anchors.push(AnchorEntry {
                name: name.to_string(),
                cert_pem: cert.pem(),
                sha256: hex(&Sha256::digest(cert.der())),
                created: t.unix_timestamp(),
                not_after: p.not_after.unix_timestamp(),
            });
            self.save_anchor_list(&list)?;
        }
        let v = self.publish_anchors(&list, exp).await?;
        let names: Vec<&str> = list.anchors.iter().map(|a| a.name.as_str()).collect();
        Ok(Report {
            text: format!(
                "anchor {name} ready; {MESH_ANCHORS_TARGET} holds {} anchor(s): {}{}",
                names.len(),
                names.join(", "),
                v.map(|v| format!(" (configs version {v})"))
                    .unwrap_or_else(|| " (unchanged)".into())
            ),
            json: json!({"ok": true, "anchor": name, "anchors": names, "configs_version": v, "key": key_path}),
        })
    }

    /// `mesh anchor retire NAME`: off the bundle (republished), key destroyed.
    /// The last anchor cannot be retired: init its successor first.
    pub async fn mesh_anchor_retire(
        &self,
        name: &str,
        exp: Expiries,
    ) -> Result<Report, FleetError> {
        let mut list = self.anchor_list()?;
        if !list.anchors.iter().any(|a| a.name == name) {
            return Err(input(format!(
                "no anchor {name:?} (see `mesh anchor list`)"
            )));
        }
        if list.anchors.len() == 1 {
            return Err(input(format!(
                "{name} is the only anchor: `mesh anchor init` its successor first, then retire it"
            )));
        }
        list.anchors.retain(|a| a.name != name);
        let v = self.publish_anchors(&list, exp).await?;
        self.save_anchor_list(&list)?;
        let key_path = self.anchor_key_path(name);
        if let Ok(m) = std::fs::metadata(&key_path) {
            // Overwrite, then unlink: a retired anchor issues nothing again.
            let _ = std::fs::write(&key_path, vec![0u8; m.len() as usize]);
            std::fs::remove_file(&key_path)
                .map_err(|e| repo_err(format!("{}: {e}", key_path.display())))?;
        }
        let names: Vec<&str> = list.anchors.iter().map(|a| a.name.as_str()).collect();
        Ok(Report {
            text: format!(
                "anchor {name} retired; {MESH_ANCHORS_TARGET} holds {}",
                names.join(", ")
            ),
            json: json!({"ok": true, "retired": name, "anchors": names, "configs_version": v}),
        })
    }

    /// `mesh anchor list`.
    pub fn mesh_anchor_list(&self) -> Result<Report, FleetError> {
        let list = self.anchor_list()?;
        let mut text = String::new();
        for a in &list.anchors {
            text.push_str(&format!(
                "{}  sha256 {}  key {}\n",
                a.name,
                &a.sha256[..16],
                if self.anchor_key_path(&a.name).exists() {
                    "present"
                } else {
                    "not here"
                }
            ));
        }
        if list.anchors.is_empty() {
            text.push_str("no mesh anchors (mesh anchor init NAME)\n");
        }
        Ok(Report {
            text: text.trim_end().to_string(),
            json: json!({"ok": true, "anchors": list.anchors.iter().map(|a| json!({"name": a.name, "sha256": a.sha256, "created": a.created, "not_after": a.not_after})).collect::<Vec<_>>()}),
        })
    }

    /// `mesh cert issue`: a short-lived client certificate for a scraper,
    /// `<out>/<name>.crt.pem` and `<out>/<name>.key.pem` (0600).
    pub fn mesh_cert_issue(
        &self,
        anchor: &str,
        name: &str,
        lifetime: Duration,
        not_before: Option<i64>,
        out: &Path,
    ) -> Result<Report, FleetError> {
        if !valid_name(name) {
            return Err(input(format!(
                "scraper name {name:?}: 1-64 of a-z, 0-9, '-'"
            )));
        }
        if !self.anchor_list()?.anchors.iter().any(|a| a.name == anchor) {
            return Err(input(format!(
                "no live anchor {anchor:?} (see `mesh anchor list`)"
            )));
        }
        let kp = self.anchor_key_path(anchor);
        let pem =
            std::fs::read_to_string(&kp).map_err(|e| repo_err(format!("{}: {e}", kp.display())))?;
        let ca_key = rcgen::KeyPair::from_pem(&pem)
            .map_err(|e| repo_err(format!("{}: {e}", kp.display())))?;
        let issuer = rcgen::Issuer::new(ca_params(anchor), ca_key);
        let (cert, key) = issue(name, lifetime, not_before, &issuer)?;
        std::fs::create_dir_all(out).map_err(|e| input(format!("{}: {e}", out.display())))?;
        let (cp, kp) = (
            out.join(format!("{name}.crt.pem")),
            out.join(format!("{name}.key.pem")),
        );
        write_private(&kp, key.as_bytes(), true)?;
        write_atomic(&cp, cert.as_bytes())?;
        Ok(Report {
            text: format!(
                "issued {} (anchor {anchor}, valid {} s), key {}",
                cp.display(),
                lifetime.as_secs(),
                kp.display()
            ),
            json: json!({"ok": true, "cert": cp, "key": kp, "anchor": anchor, "lifetime_secs": lifetime.as_secs()}),
        })
    }
}

/// A client certificate (PEM) and its key (PEM) for `name`, valid from
/// `not_before` (Unix seconds; default now) for `lifetime`.
pub fn issue<S: rcgen::SigningKey>(
    name: &str,
    lifetime: Duration,
    not_before: Option<i64>,
    issuer: &rcgen::Issuer<'_, S>,
) -> Result<(String, String), FleetError> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|e| FleetError::Other(format!("key: {e}")))?;
    let mut p = rcgen::CertificateParams::new(vec![format!("{name}.scraper.palisade")])
        .map_err(|e| input(format!("name {name}: {e}")))?;
    p.distinguished_name.push(
        rcgen::DnType::CommonName,
        format!("palisade scraper {name}"),
    );
    p.is_ca = rcgen::IsCa::ExplicitNoCa;
    p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    p.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
    let from = match not_before {
        Some(t) => time::OffsetDateTime::from_unix_timestamp(t)
            .map_err(|e| input(format!("not before: {e}")))?,
        None => now(),
    };
    p.not_before = from;
    p.not_after = from + time::Duration::seconds(lifetime.as_secs() as i64);
    let cert = p
        .signed_by(&key, issuer)
        .map_err(|e| FleetError::Other(format!("certificate: {e}")))?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// Accepts exactly one server key: the node's enrolled ed25519 identity.
/// Names and dates do not matter; the key is the node.
#[derive(Debug)]
struct PinnedNode {
    key: [u8; 32],
}

/// The ed25519 key in a certificate's SubjectPublicKeyInfo.
fn ed25519_key(der: &[u8]) -> Option<Vec<u8>> {
    let (_, c) = x509_parser::parse_x509_certificate(der).ok()?;
    let spki = c.public_key();
    (spki.algorithm.algorithm.to_id_string() == "1.3.101.112")
        .then(|| spki.subject_public_key.data.to_vec())
}

impl ServerCertVerifier for PinnedNode {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match ed25519_key(end_entity) {
            Some(k) if k == self.key => Ok(ServerCertVerified::assertion()),
            _ => Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            )),
        }
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls13RequiredForQuic,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        _: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        if dss.scheme != SignatureScheme::ED25519 {
            return Err(rustls::Error::PeerMisbehaved(
                rustls::PeerMisbehaved::SignedHandshakeWithUnadvertisedSigScheme,
            ));
        }
        aws_lc_rs::signature::UnparsedPublicKey::new(&aws_lc_rs::signature::ED25519, &self.key)
            .verify(message, dss.signature())
            .map(|()| HandshakeSignatureValid::assertion())
            .map_err(|_| rustls::Error::InvalidCertificate(rustls::CertificateError::BadSignature))
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }
}

/// What `metrics` needs to reach a node.
pub struct Scrape {
    pub node: String,
    pub addr: SocketAddr,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// One TLS connection to a node's metrics endpoint.
struct Conn {
    tls: rustls::StreamOwned<rustls::ClientConnection, TcpStream>,
}

const MAX_BODY: usize = 4 << 20;

impl Conn {
    fn open(
        cfg: &Arc<rustls::ClientConfig>,
        node: &str,
        addr: SocketAddr,
    ) -> Result<Conn, FleetError> {
        let tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .map_err(|e| FleetError::Other(format!("{addr}: {e}")))?;
        tcp.set_read_timeout(Some(Duration::from_secs(15))).ok();
        tcp.set_write_timeout(Some(Duration::from_secs(15))).ok();
        let name = ServerName::try_from(format!("{node}.node.palisade"))
            .map_err(|e| input(format!("node {node}: {e}")))?;
        let c = rustls::ClientConnection::new(cfg.clone(), name)
            .map_err(|e| FleetError::Other(e.to_string()))?;
        let mut tls = rustls::StreamOwned::new(c, tcp);
        // Handshake now, so a refusal is reported as one.
        while tls.conn.is_handshaking() {
            tls.conn
                .complete_io(&mut tls.sock)
                .map_err(|e| FleetError::Other(format!("TLS handshake with {addr}: {e}")))?;
        }
        Ok(Conn { tls })
    }

    /// GET /metrics on this connection (kept open unless `close`).
    fn get(&mut self, close: bool) -> Result<String, FleetError> {
        let req = format!(
            "GET /metrics HTTP/1.1\r\nHost: palisade\r\nConnection: {}\r\n\r\n",
            if close { "close" } else { "keep-alive" }
        );
        let io = |e: std::io::Error| FleetError::Other(format!("metrics request: {e}"));
        self.tls.write_all(req.as_bytes()).map_err(io)?;
        self.tls.flush().map_err(io)?;
        // Head, then a Content-Length body (what palisaded sends).
        let mut buf = Vec::new();
        let mut byte = [0u8; 4096];
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            if buf.len() > 64 << 10 {
                return Err(FleetError::Other(
                    "metrics response: header too long".into(),
                ));
            }
            let n = self.tls.read(&mut byte).map_err(io)?;
            if n == 0 {
                return Err(FleetError::Other(
                    "metrics: the node closed the connection (no valid certificate?)".into(),
                ));
            }
            buf.extend_from_slice(&byte[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
        let status = head.split_whitespace().nth(1).unwrap_or("");
        if status != "200" {
            return Err(FleetError::Other(format!("metrics: HTTP {status}")));
        }
        let len: usize = head
            .lines()
            .find_map(|l| {
                l.split_once(':')
                    .filter(|(k, _)| k.eq_ignore_ascii_case("content-length"))
                    .map(|(_, v)| v.trim().parse().ok())
            })
            .flatten()
            .ok_or_else(|| FleetError::Other("metrics response: no Content-Length".into()))?;
        if len > MAX_BODY {
            return Err(FleetError::Other(format!(
                "metrics response: {len} bytes, at most {MAX_BODY}"
            )));
        }
        let mut body = buf[head_end..].to_vec();
        while body.len() < len {
            let n = self.tls.read(&mut byte).map_err(io)?;
            if n == 0 {
                break;
            }
            body.extend_from_slice(&byte[..n]);
        }
        body.truncate(len);
        String::from_utf8(body).map_err(|e| FleetError::Other(format!("metrics response: {e}")))
    }
}

impl Fleet {
    fn client_config(&self, s: &Scrape) -> Result<Arc<rustls::ClientConfig>, FleetError> {
        if !valid_node_id(&s.node) {
            return Err(input(format!(
                "node id {:?}: 16 lowercase hex digits",
                s.node
            )));
        }
        let inv = self.inventory()?;
        let n = inv
            .nodes
            .iter()
            .find(|n| n.id == s.node)
            .ok_or_else(|| input(format!("node {} is not in the inventory", s.node)))?;
        let key = parse_key32(&n.public_key, "inventory public key")?;
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&s.cert)
            .and_then(|i| i.collect::<Result<Vec<_>, _>>())
            .map_err(|e| input(format!("{}: {e}", s.cert.display())))?;
        if certs.is_empty() {
            return Err(input(format!("{}: no certificate", s.cert.display())));
        }
        let pk = PrivateKeyDer::from_pem_file(&s.key)
            .map_err(|e| input(format!("{}: {e}", s.key.display())))?;
        let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| FleetError::Other(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PinnedNode { key }))
        .with_client_auth_cert(certs, pk)
        .map_err(|e| input(format!("client certificate: {e}")))?;
        Ok(Arc::new(cfg))
    }

    /// `metrics`: scrape a node's endpoint (see the module docs). JSON: the
    /// parsed samples.
    pub fn metrics(&self, s: &Scrape) -> Result<Report, FleetError> {
        let cfg = self.client_config(s)?;
        let body = Conn::open(&cfg, &s.node, s.addr)?.get(true)?;
        Ok(Report {
            json: json!({"ok": true, "node": s.node, "samples": parse_samples(&body)}),
            text: body.trim_end().to_string(),
        })
    }

    /// `metrics --bench N`: N scrapes each on a new connection (TLS
    /// handshake included), then N on one kept-alive connection; round trip
    /// times in milliseconds (median, min, max).
    pub fn metrics_bench(&self, s: &Scrape, n: usize) -> Result<Report, FleetError> {
        let cfg = self.client_config(s)?;
        let mut fresh = Vec::with_capacity(n);
        for _ in 0..n {
            let t = Instant::now();
            Conn::open(&cfg, &s.node, s.addr)?.get(true)?;
            fresh.push(t.elapsed().as_secs_f64() * 1e3);
        }
        let mut reused = Vec::with_capacity(n);
        let mut c = Conn::open(&cfg, &s.node, s.addr)?;
        for _ in 0..n {
            let t = Instant::now();
            c.get(false)?;
            reused.push(t.elapsed().as_secs_f64() * 1e3);
        }
        let stats = |v: &mut Vec<f64>| {
            v.sort_by(|a, b| a.total_cmp(b));
            json!({"n": v.len(), "median_ms": v[v.len() / 2], "min_ms": v[0], "max_ms": v[v.len() - 1]})
        };
        let (f, r) = (stats(&mut fresh), stats(&mut reused));
        Ok(Report {
            text: format!(
                "new connection (TLS handshake + scrape): median {:.2} ms (min {:.2}, max {:.2}); kept-alive: median {:.2} ms (min {:.2}, max {:.2}); n = {n}",
                f["median_ms"].as_f64().unwrap_or(0.0),
                f["min_ms"].as_f64().unwrap_or(0.0),
                f["max_ms"].as_f64().unwrap_or(0.0),
                r["median_ms"].as_f64().unwrap_or(0.0),
                r["min_ms"].as_f64().unwrap_or(0.0),
                r["max_ms"].as_f64().unwrap_or(0.0)
            ),
            json: json!({"ok": true, "new_connection": f, "kept_alive": r}),
        })
    }
}

/// OpenMetrics text -> `[{name, labels, value}]` (comments skipped).
pub fn parse_samples(text: &str) -> Vec<Value> {
    let mut out = Vec::new();
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let (series, value) = match line.rsplit_once(' ') {
            Some(x) => x,
            None => continue,
        };
        let (name, labels) = match series.split_once('{') {
            Some((n, rest)) => (n, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        let mut l = serde_json::Map::new();
        for kv in split_labels(labels) {
            if let Some((k, v)) = kv.split_once('=') {
                l.insert(
                    k.to_string(),
                    Value::String(v.trim_matches('"').replace("\\\"", "\"")),
                );
            }
        }
        let v = value
            .parse::<f64>()
            .ok()
            .map(Value::from)
            .unwrap_or(Value::String(value.to_string()));
        out.push(json!({"name": name, "labels": l, "value": v}));
    }
    out
}

/// `a="x",b="y,z"` -> [`a="x"`, `b="y,z"`] (commas inside quotes kept).
fn split_labels(s: &str) -> Vec<&str> {
    let (mut out, mut start, mut quoted, mut esc) = (Vec::new(), 0, false, false);
    for (i, c) in s.char_indices() {
        match c {
            '\\' if quoted => esc = !esc,
            '"' if !esc => quoted = !quoted,
            ',' if !quoted => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => esc = false,
        }
    }
    if start < s.len() {
        out.push(&s[start..]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_parse_with_labels() {
        let t = "# HELP x y\npalisade_health{check=\"dns\"} 1\npalisade_build_info{version=\"0.1.0\",slot=\"a,b\"} 1\npalisade_peers_configured 2.0\n# EOF\n";
        let s = parse_samples(t);
        assert_eq!(s.len(), 3);
        assert_eq!(s[0]["labels"]["check"], "dns");
        assert_eq!(s[1]["labels"]["slot"], "a,b");
        assert_eq!(s[2]["value"], 2.0);
    }
}
