//! The metrics endpoint (docs/metrics.md): Prometheus/OpenMetrics text
//! (prometheus-client), served over mutual TLS (rustls) on
//! `[management] metrics_listen` only: an address the node holds on an
//! uplink, reachable from the management mesh (the firewall admits the
//! management ports from `management.mesh` sources only; the tunnel side
//! reaches nothing but DNS and ping).
//!
//! Every figure is an aggregate: counts, sums and health, never a peer key,
//! a client address or a queried name. Values are read on each scrape from
//! what the engine, the resolver, the update and fleet subsystems already
//! keep (the sources of `palisade status`).
//!
//! Client certificates must chain to one of the mesh trust anchors (several
//! at once, so anchors rotate): the fleet repository's `mesh/anchors.pem`
//! when it publishes one, else the node's `metrics_anchors_file`. A change
//! of either is picked up at the next connection, without a restart.
//! Certificates that live longer than `metrics_max_cert_lifetime` are
//! refused at the handshake. The server's certificate is self-signed by the
//! node's ed25519 identity key, so a scraper pins the node by the public key
//! the fleet enrolled.

use crate::dns_supervisor::DnsSupervisor;
use crate::fleet::Fleet;
use crate::supervisor::{blocking, Shared};
use crate::update::Updater;
use bytes::Bytes;
use http_body_util::Full;
use palisade_core::reconcile::Report;
use palisade_update::store::{BootCount, FileStore};
use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;

/// Reconcile passes, passes with errors, and the last firewall apply time
/// (recorded by the supervisor's `log_report`, read on scrape).
static PASSES: AtomicU64 = AtomicU64::new(0);
static PASS_ERRORS: AtomicU64 = AtomicU64::new(0);
static FW_APPLY_US: AtomicU64 = AtomicU64::new(0);
static FW_APPLIES: AtomicU64 = AtomicU64::new(0);
/// TLS handshakes refused (no certificate, unknown anchor, expired, too long-lived).
static REFUSED: AtomicU64 = AtomicU64::new(0);

/// At most this many scrapes at once.
const MAX_CONNS: usize = 8;
/// A handshake must finish within this.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// A connection (kept alive for several scrapes) ends after this.
const CONN_TIMEOUT: Duration = Duration::from_secs(120);

/// Count one reconcile pass (any: start, reload, timer, peer change).
pub fn record_pass(r: &Report) {
    PASSES.fetch_add(1, Relaxed);
    if !r.errors.is_empty() {
        PASS_ERRORS.fetch_add(1, Relaxed);
    }
    if r.firewall_applied {
        FW_APPLY_US.store(r.firewall_apply_us, Relaxed);
        FW_APPLIES.fetch_add(1, Relaxed);
    }
}

/// What the endpoint reads from.
#[derive(Clone)]
pub struct Ctx {
    pub engine: Shared,
    pub dns: Arc<DnsSupervisor>,
    pub updates: Option<Arc<Updater>>,
    pub fleet: Option<Arc<Fleet>>,
    pub state_dir: PathBuf,
    /// The slot this system booted from, when no update subsystem says so.
    pub booted_slot: Option<String>,
}

/// The endpoint's settings from the node config.
#[derive(Debug, Clone, PartialEq)]
struct Settings {
    listen: SocketAddr,
    anchors_file: PathBuf,
    max_lifetime: Duration,
}

/// The metrics task: counts this boot, then follows the config's
/// `metrics_listen` (checked every 2 s): binds, serves, rebinds on change.
pub async fn run(ctx: Ctx) {
    let boot_count = count_boot(&ctx.state_dir);
    if ctx.fleet.is_none() {
        tracing::error!("metrics: no node identity (the state store could not be opened); the endpoint cannot serve");
    }
    let ctx = Arc::new((ctx, boot_count));
    let mut current: Option<(Settings, tokio::task::JoinHandle<()>)> = None;
    let mut last_error: Option<String> = None;
    loop {
        let want = blocking(&ctx.0.engine, |e| {
            let m = &e.spec()?.management;
            Some(Settings {
                listen: m.metrics_listen?,
                anchors_file: m.metrics_anchors_file.clone(),
                max_lifetime: m.max_cert_lifetime()?,
            })
        })
        .await;
        let same = match (&current, &want) {
            (Some((s, t)), Some(w)) => s == w && !t.is_finished(),
            (None, None) => true,
            _ => false,
        };
        if !same {
            if let Some((s, t)) = current.take() {
                t.abort();
                tracing::info!("metrics: stopped serving on {}", s.listen);
            }
            if let Some(w) = want {
                match TcpListener::bind(w.listen).await {
                    Ok(l) => {
                        last_error = None;
                        match Anchors::load(&ctx.0, &w) {
                            Ok(a) => tracing::info!("metrics: serving on {} (mTLS, {} anchor(s))", w.listen, a.count),
                            Err(e) => tracing::warn!("metrics: serving on {} (mTLS, 0 anchor(s): {e}; every scraper is refused until there are anchors)", w.listen),
                        }
                        let t = tokio::spawn(serve(l, ctx.clone(), w.clone()));
                        current = Some((w, t));
                    }
                    Err(e) => {
                        // The address may not be up yet (uplinks come up at
                        // boot); retried every 2 s, logged once.
                        let msg = format!("metrics: cannot listen on {}: {e}; retrying", w.listen);
                        if last_error.as_deref() != Some(&msg) {
                            tracing::warn!("{msg}");
                            last_error = Some(msg);
                        }
                    }
                }
            }
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// Count this boot once (the kernel's boot id), not per supervisor restart.
fn count_boot(state_dir: &Path) -> Option<u64> {
    let id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    let store = match FileStore::open(&state_dir.join("store")) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("metrics: boot count: {e}");
            return None;
        }
    };
    match BootCount::record(&store, id.trim()) {
        Ok(n) => Some(n),
        Err(e) => {
            tracing::error!("metrics: boot count: {e}");
            None
        }
    }
}

/// The trust anchors in force and where they came from.
struct Anchors {
    pem: Vec<u8>,
    count: usize,
}

impl Anchors {
    /// The repository's anchors if the fleet publishes them, else the file.
    fn load(ctx: &Ctx, s: &Settings) -> Result<Anchors, String> {
        let pem = match ctx.fleet.as_ref().and_then(|f| f.mesh_anchors()) {
            Some(b) => b.to_vec(),
            None => {
                let p = if s.anchors_file.is_absolute() {
                    s.anchors_file.clone()
                } else {
                    ctx.state_dir.join(&s.anchors_file)
                };
                let meta = std::fs::metadata(&p).map_err(|e| format!("{}: {e}", p.display()))?;
                if meta.len() > palisade_update::mesh::MAX_ANCHORS_BYTES {
                    return Err(format!(
                        "{}: larger than {} bytes",
                        p.display(),
                        palisade_update::mesh::MAX_ANCHORS_BYTES
                    ));
                }
                std::fs::read(&p).map_err(|e| format!("{}: {e}", p.display()))?
            }
        };
        let count = palisade_update::mesh::parse_anchors(&pem)
            .map_err(|e| e.to_string())?
            .len();
        Ok(Anchors { pem, count })
    }
}

/// The TLS config, rebuilt when the anchors or the identity change.
struct Tls {
    key: Option<(Vec<u8>, [u8; 32])>,
    config: Option<Arc<rustls::ServerConfig>>,
    last_error: Option<String>,
}

impl Tls {
    fn current(&mut self, ctx: &Ctx, s: &Settings) -> Option<Arc<rustls::ServerConfig>> {
        let fleet = ctx.fleet.as_ref()?;
        let anchors = match Anchors::load(ctx, s) {
            Ok(a) => a,
            Err(e) => {
                let msg = format!("metrics: no usable trust anchors ({e}); refusing every scraper");
                if self.last_error.as_deref() != Some(&msg) {
                    tracing::warn!("{msg}");
                    self.last_error = Some(msg);
                }
                self.config = None;
                self.key = None;
                return None;
            }
        };
        let pubkey = fleet.with_identity(|i| i.public_key());
        let key = (anchors.pem.clone(), pubkey);
        if self.key.as_ref() == Some(&key) {
            return self.config.clone();
        }
        match fleet.with_identity(|i| server_config(i, &anchors.pem, s.max_lifetime)) {
            Ok(c) => {
                if self.key.is_some() {
                    tracing::info!(
                        "metrics: trust anchors changed: {} anchor(s)",
                        anchors.count
                    );
                }
                self.last_error = None;
                self.config = Some(Arc::new(c));
                self.key = Some(key);
            }
            Err(e) => {
                tracing::error!("metrics: TLS setup: {e}");
                self.config = None;
                self.key = None;
            }
        }
        self.config.clone()
    }
}

async fn serve(listener: TcpListener, ctx: Arc<(Ctx, Option<u64>)>, settings: Settings) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNS));
    let tls = Arc::new(Mutex::new(Tls {
        key: None,
        config: None,
        last_error: None,
    }));
    loop {
        // The peer address is dropped at once: it is never logged or kept.
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            continue;
        };
        let (ctx, tls, settings) = (ctx.clone(), tls.clone(), settings.clone());
        tokio::spawn(async move {
            let _permit = permit;
            // Anchors are read (file, or the fleet's verified bundle) and the
            // TLS config rebuilt if they changed: off the runtime's threads.
            let cfg = {
                let (c, s) = (ctx.0.clone(), settings.clone());
                tokio::task::spawn_blocking(move || {
                    tls.lock().expect("tls poisoned").current(&c, &s)
                })
                .await
                .ok()
                .flatten()
            };
            let Some(cfg) = cfg else { return };
            let acceptor = tokio_rustls::TlsAcceptor::from(cfg);
            let stream =
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(s)) => s,
                    _ => {
                        REFUSED.fetch_add(1, Relaxed);
                        return;
                    }
                };
            let svc = hyper::service::service_fn(
                move |req: hyper::Request<hyper::body::Incoming>| {
                    let ctx = ctx.clone();
                    async move { Ok::<_, std::convert::Infallible>(respond(req, &ctx.0, ctx.1).await) }
                },
            );
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc);
            let _ = tokio::time::timeout(CONN_TIMEOUT, conn).await;
        });
    }
}

async fn respond(
    req: hyper::Request<hyper::body::Incoming>,
    ctx: &Ctx,
    boots: Option<u64>,
) -> hyper::Response<Full<Bytes>> {
    let reply = |code: u16, ctype: &str, body: String| {
        hyper::Response::builder()
            .status(code)
            .header("content-type", ctype)
            .body(Full::new(Bytes::from(body)))
            .expect("static response parts")
    };
    if req.method() != hyper::Method::GET || req.uri().path() != "/metrics" {
        return reply(404, "text/plain", "not found: GET /metrics\n".into());
    }
    let text = collect(ctx, boots).await;
    reply(
        200,
        "application/openmetrics-text; version=1.0.0; charset=utf-8",
        text,
    )
}

/// A histogram given as a snapshot (the resolver keeps its own buckets).
#[derive(Debug)]
struct Snapshot(palisade_dns::engine::LatencySnapshot);

impl EncodeMetric for Snapshot {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        // prometheus-client accumulates: give it per-bucket counts, +Inf last.
        let mut prev = 0;
        let mut b: Vec<(f64, u64)> = self
            .0
            .buckets
            .iter()
            .map(|(le, cum)| {
                let n = cum - prev;
                prev = *cum;
                (*le, n)
            })
            .collect();
        b.push((f64::MAX, self.0.count.saturating_sub(prev)));
        encoder.encode_histogram::<NoLabelSet>(self.0.sum_seconds, self.0.count, &b, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

fn gauge(r: &mut Registry, name: &str, help: &str, v: f64) {
    let g = Gauge::<f64, AtomicU64>::default();
    g.set(v);
    r.register(name, help, g);
}

fn counter(r: &mut Registry, name: &str, help: &str, v: u64) {
    let c: Counter = Counter::default();
    c.inc_by(v);
    r.register(name, help, c);
}

fn b(v: bool) -> f64 {
    if v {
        1.0
    } else {
        0.0
    }
}

/// Read every source and encode the registry (OpenMetrics text).
pub async fn collect(ctx: &Ctx, boots: Option<u64>) -> String {
    let status = blocking(&ctx.engine, |e| e.status()).await;
    let dns_status = ctx.dns.status();
    let dns_stats = ctx.dns.stats().ok();
    let latency = ctx.dns.latency();
    let update = ctx.updates.as_ref().map(|u| u.status());
    let fleet = ctx.fleet.as_ref().map(|f| f.figures());

    let mut reg = Registry::with_prefix("palisade");
    let version = update
        .as_ref()
        .and_then(|u| u["installed"].as_str())
        .unwrap_or(env!("CARGO_PKG_VERSION"))
        .to_string();
    let slot = update
        .as_ref()
        .and_then(|u| u["booted_slot"].as_str().map(str::to_string))
        .or_else(|| ctx.booted_slot.clone())
        .unwrap_or_else(|| "none".into());
    let board = update
        .as_ref()
        .and_then(|u| u["board"].as_str())
        .unwrap_or("unknown")
        .to_string();
    reg.register(
        "build",
        "Version, booted slot and board of this node",
        Info::new(vec![
            ("version".to_string(), version),
            ("slot".to_string(), slot),
            ("board".to_string(), board),
        ]),
    );
    if let Some(up) = std::fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<f64>().ok())
    {
        gauge(
            &mut reg,
            "uptime_seconds",
            "Seconds since the node booted",
            up,
        );
    }
    if let Some(n) = boots {
        counter(
            &mut reg,
            "boots",
            "Boots of this node (counted once per kernel boot, kept in the state store)",
            n,
        );
    }

    let wg = &status["wireguard"];
    let health: Family<Vec<(String, String)>, Gauge<f64, AtomicU64>> = Family::default();
    let checks = [
        ("wireguard", wg["up"].as_bool().unwrap_or(false)),
        (
            "firewall",
            status["firewall"]["verified"].as_bool().unwrap_or(false),
        ),
        ("dns", dns_status["answering"].as_bool().unwrap_or(false)),
    ];
    for (check, ok) in checks {
        health
            .get_or_create(&vec![("check".to_string(), check.to_string())])
            .set(b(ok));
    }
    reg.register("health", "Health checks (1 healthy, 0 not): wireguard up, firewall verified, DNS answering its canary", health);
    {
        use crate::uplink::{ACTIVE_RANK, CONFIGURED, HEALTHY, SWITCHES};
        gauge(&mut reg, "uplinks_configured", "Uplinks in the node config", CONFIGURED.load(Relaxed) as f64);
        gauge(&mut reg, "uplinks_healthy", "Uplinks healthy now (carrier, address, probes answered)", HEALTHY.load(Relaxed) as f64);
        gauge(&mut reg, "uplink_active_rank", "Preference rank of the uplink holding the default route (0: the preferred one; -1: none yet)", ACTIVE_RANK.load(Relaxed) as f64);
        counter(&mut reg, "uplink_switches", "Times the default route moved to another uplink since palisaded started", SWITCHES.load(Relaxed));
    }
    gauge(
        &mut reg,
        "forwarding",
        "Forwarding on (0: failing closed)",
        b(status["forwarding"].as_bool().unwrap_or(false)),
    );

    counter(
        &mut reg,
        "reconcile_passes",
        "Reconcile passes since palisaded started",
        PASSES.load(Relaxed),
    );
    counter(
        &mut reg,
        "reconcile_errors",
        "Reconcile passes that reported errors",
        PASS_ERRORS.load(Relaxed),
    );
    counter(
        &mut reg,
        "firewall_applies",
        "Firewall table transactions applied",
        FW_APPLIES.load(Relaxed),
    );
    gauge(
        &mut reg,
        "firewall_last_apply_seconds",
        "Duration of the last firewall transaction (check, apply, read-back)",
        FW_APPLY_US.load(Relaxed) as f64 / 1e6,
    );

    let n = |v: &serde_json::Value| v.as_u64().unwrap_or(0);
    gauge(
        &mut reg,
        "peers_configured",
        "Peers in the node's desired state",
        n(&wg["peers_configured"]) as f64,
    );
    gauge(
        &mut reg,
        "peers_recent_handshake",
        "Peers with a handshake in the last 180 s",
        n(&wg["peers_active_3min"]) as f64,
    );
    counter(
        &mut reg,
        "wireguard_rx_bytes",
        "Bytes received from all peers (sum, current peers)",
        n(&wg["rx_bytes_total"]),
    );
    counter(
        &mut reg,
        "wireguard_tx_bytes",
        "Bytes sent to all peers (sum, current peers)",
        n(&wg["tx_bytes_total"]),
    );

    if let Some(d) = &dns_stats {
        if d["enabled"].as_bool() == Some(true) {
            for (key, name, help) in [
                ("queries", "dns_queries", "DNS queries answered or resolved"),
                ("blocked", "dns_blocked", "DNS queries blocked by a list"),
                ("cache_hits", "dns_cache_hits", "DNS cache hits"),
                ("cache_misses", "dns_cache_misses", "DNS cache misses"),
                (
                    "upstream_failures",
                    "dns_upstream_failures",
                    "Queries no upstream answered (SERVFAIL)",
                ),
                ("servfail", "dns_servfail", "SERVFAIL answers"),
                (
                    "rate_limited",
                    "dns_rate_limited",
                    "Queries dropped by the rate limit",
                ),
                (
                    "refused",
                    "dns_refused",
                    "Queries refused (class, zone transfer)",
                ),
                ("malformed", "dns_malformed", "Malformed queries"),
            ] {
                counter(&mut reg, name, help, n(&d[key]));
            }
            gauge(
                &mut reg,
                "dns_cache_entries",
                "Entries in the DNS cache",
                n(&d["cache_entries"]) as f64,
            );
        }
    }
    if let Some(l) = latency {
        reg.register(
            "dns_query_duration_seconds",
            "Time from a query's arrival to its answer",
            Snapshot(l),
        );
    }

    if let Some(u) = &update {
        let phase = u["phase_text"].as_str().unwrap_or("unknown");
        // The phase's first word: `idle`, `downloading`, `trial`... (the rest
        // names versions, which are in the build info and the journal).
        let phase = phase
            .split(|c: char| !c.is_ascii_alphanumeric() && c != '-' && c != '_')
            .next()
            .unwrap_or("unknown")
            .to_lowercase();
        reg.register(
            "update_phase",
            "The update journal's phase",
            Info::new(vec![("phase".to_string(), phase)]),
        );
        gauge(
            &mut reg,
            "update_busy",
            "An install is running or queued",
            b(u["busy"].as_bool().unwrap_or(false)),
        );
    }
    if let Some(f) = &fleet {
        gauge(
            &mut reg,
            "fleet_enrolled",
            "Enrolled in a fleet",
            b(f.enrolled),
        );
        gauge(
            &mut reg,
            "fleet_revoked",
            "Revoked by the fleet",
            b(f.revoked),
        );
        if let Some(t) = f.last_ok_unix {
            gauge(
                &mut reg,
                "fleet_last_sync_timestamp_seconds",
                "Unix time of the last verified fleet sync",
                t as f64,
            );
        }
        counter(
            &mut reg,
            "fleet_refusals",
            "Fleet sync refusals since palisaded started",
            f.refusals,
        );
        gauge(
            &mut reg,
            "fleet_grants_active",
            "Client grants in force",
            f.grants_active as f64,
        );
        gauge(
            &mut reg,
            "fleet_grants_rejected",
            "Client grants not taken (expired, revoked, invalid)",
            f.grants_rejected as f64,
        );
    }
    counter(
        &mut reg,
        "metrics_handshakes_refused",
        "TLS handshakes on this endpoint that were refused",
        REFUSED.load(Relaxed),
    );

    let mut out = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &reg) {
        tracing::error!("metrics: encoding: {e}");
    }
    out
}

/// The server side of the mTLS: the node's identity key and a self-signed
/// certificate over it; client certificates verified against `anchors_pem`
/// with a lifetime cap.
fn server_config(
    id: &palisade_update::identity::Identity,
    anchors_pem: &[u8],
    max_lifetime: Duration,
) -> Result<rustls::ServerConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in palisade_update::mesh::parse_anchors(anchors_pem).map_err(|e| e.to_string())? {
        roots.add(c).map_err(|e| e.to_string())?;
    }
    let inner = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .map_err(|e| format!("client verifier: {e}"))?;
    let verifier = Arc::new(LifetimeCap {
        inner,
        max: max_lifetime,
    });
    let (cert, key) = node_certificate(id)?;
    rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![cert], key)
        .map_err(|e| format!("server certificate: {e}"))
}

/// A certificate for the node's identity key (ed25519), self-signed by it;
/// subject and DNS name: the node id.
pub fn node_certificate(
    id: &palisade_update::identity::Identity,
) -> Result<(CertificateDer<'static>, PrivateKeyDer<'static>), String> {
    let pkcs8 = PrivatePkcs8KeyDer::from(id.pkcs8_der().to_vec());
    let kp = rcgen::KeyPair::from_pkcs8_der_and_sign_algo(&pkcs8, &rcgen::PKCS_ED25519)
        .map_err(|e| format!("identity key: {e}"))?;
    let node = id.node_id();
    let mut p = rcgen::CertificateParams::new(vec![format!("{node}.node.palisade")])
        .map_err(|e| e.to_string())?;
    p.distinguished_name
        .push(rcgen::DnType::CommonName, format!("palisade node {node}"));
    // Validity: rcgen's default (1975..4096). The scraper pins the key,
    // not a CA or a date: the identity key is the node.
    let cert = p
        .self_signed(&kp)
        .map_err(|e| format!("self-signing: {e}"))?;
    Ok((cert.der().clone(), PrivateKeyDer::Pkcs8(pkcs8)))
}

/// The WebPKI client verifier plus a cap on the certificate's lifetime
/// (notAfter - notBefore): short-lived certificates only.
#[derive(Debug)]
struct LifetimeCap {
    inner: Arc<dyn ClientCertVerifier>,
    max: Duration,
}

fn lifetime(der: &[u8]) -> Option<i64> {
    let (_, c) = x509_parser::parse_x509_certificate(der).ok()?;
    let v = c.validity();
    Some(v.not_after.timestamp() - v.not_before.timestamp())
}

impl ClientCertVerifier for LifetimeCap {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        match lifetime(end_entity) {
            Some(l) if l >= 0 && (l as u64) <= self.max.as_secs() => {}
            Some(_) => {
                return Err(rustls::Error::InvalidCertificate(
                    rustls::CertificateError::Other(rustls::OtherError(Arc::new(TooLong(
                        self.max,
                    )))),
                ));
            }
            None => {
                return Err(rustls::Error::InvalidCertificate(
                    rustls::CertificateError::BadEncoding,
                ))
            }
        }
        self.inner
            .verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

#[derive(Debug)]
struct TooLong(Duration);

impl std::fmt::Display for TooLong {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "client certificate lives longer than {} s",
            self.0.as_secs()
        )
    }
}

impl std::error::Error for TooLong {}
