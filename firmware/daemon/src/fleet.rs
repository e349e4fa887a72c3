//! Fleet trust on the node (docs/fleet.md): the node's identity, enrolment
//! (serial console or config drive), and the fleet task that pulls the
//! node's desired state from the signed repository and applies it.
//!
//! - Identity: an ed25519 key made on the node at first boot (state store,
//!   `identity`); the node id is derived from its public key.
//! - Enrolment: accepted only while the node is not enrolled, from the
//!   serial console's line protocol ([`spawn_console`]) or from
//!   `enrol.json` in the state directory (copied there from a config drive).
//! - The fleet task polls the repository every `poll` (minus up to 20 %
//!   jitter, so the interval never exceeds it), verifies config, grants,
//!   issuer keys, revocations and lists through their owning roles, keeps
//!   the verified state in the store, and applies it through the engine
//!   (hot: unchanged peers keep their sessions). Grants expire on the
//!   node's own clock, online or not. A revoked node locks itself down and
//!   stays locked down across reboots until it is enrolled again.
//!
//! Nothing client-identifying is logged: grant counts, never keys.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use palisade_core::config::PeerSection;
use palisade_core::reconcile::FleetConfig;
use palisade_update::enrol::{self, Responder};
use palisade_update::fleet::{config_target, EnrolmentBundle};
use palisade_update::identity::Identity;
use palisade_update::repo::{ClientConfig, Repo, RepoError, RepoSource};
use palisade_update::store::{FileStore, Key, Store};
use palisade_update::sync::{self, Evaluated, FleetState, Verifier};
use serde_json::{json, Value};
use tokio::sync::Notify;

use crate::supervisor::{blocking, Dns, Shared};

/// The enrolment bundle from a config drive, in the state directory.
pub const STATE_ENROL_BUNDLE: &str = "enrol.json";
/// Where verified DNS lists from the repository are kept (tmpfs).
pub const LISTS_DIR: &str = "lists";

/// The fleet subsystem's state.
pub struct Fleet {
    store: FileStore,
    state_dir: PathBuf,
    run_dir: PathBuf,
    identity: Mutex<Identity>,
    poll: Duration,
    status: Mutex<FleetStatus>,
    verifier: Mutex<Verifier>,
    /// Fingerprint of what was last given to the engine (config text and
    /// peers), so an unchanged poll costs no re-validation.
    applied: Mutex<Option<[u8; 32]>>,
    /// The refusals logged since the last clean round (each is logged
    /// once, not on every poll).
    logged: Mutex<std::collections::BTreeSet<(String, String)>>,
    wake: Notify,
}

#[derive(Debug, Default, Clone)]
struct FleetStatus {
    last_check: Option<String>,
    last_error: Option<(String, String)>,
    config: Option<Value>,
    grants_active: usize,
    grants_rejected: usize,
    next_expiry: Option<i64>,
    lists: Vec<String>,
    /// Unix time of the last round that fetched and verified the repository.
    last_ok_unix: Option<i64>,
    /// Refusals recorded since palisaded started (metrics).
    refusals: u64,
    /// The repository's metrics trust anchors (`mesh/anchors.pem`), verified.
    mesh_anchors: Option<bytes::Bytes>,
}

/// Aggregate fleet figures for the metrics endpoint.
#[derive(Debug, Clone, Default)]
pub struct FleetFigures {
    pub enrolled: bool,
    pub revoked: bool,
    pub last_ok_unix: Option<i64>,
    pub refusals: u64,
    pub grants_active: usize,
    pub grants_rejected: usize,
}

fn now_unix() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

fn rfc3339(unix: i64) -> String {
    chrono::DateTime::from_timestamp(unix, 0).map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)).unwrap_or_default()
}

/// `poll` minus a jitter of 0..20 %: a fleet does not poll in step, and no
/// interval is longer than `poll` (the 60 s revocation bound holds).
fn jittered_down(poll: Duration) -> Duration {
    let mut b = [0u8; 2];
    let _ = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut b));
    let frac = u16::from_le_bytes(b) as f64 / u16::MAX as f64;
    poll.saturating_sub(poll.mul_f64(0.2 * frac))
}

fn sha256(parts: &[&[u8]]) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p);
    }
    h.finalize().into()
}

impl Fleet {
    /// Opens the store and the identity (made on first boot).
    pub fn open(state_dir: &Path, run_dir: &Path, poll: Duration) -> anyhow::Result<Arc<Fleet>> {
        use anyhow::Context;
        let store = FileStore::open(&state_dir.join("store")).context("opening the state store")?;
        let (identity, created) = Identity::load_or_create(&store).context("node identity")?;
        if created {
            tracing::info!("fleet: identity created: node {}", identity.node_id());
        }
        tracing::info!("fleet: node {} identity key {}", identity.node_id(), identity.public_key_b64());
        Ok(Arc::new(Fleet {
            store,
            state_dir: state_dir.to_path_buf(),
            run_dir: run_dir.to_path_buf(),
            identity: Mutex::new(identity),
            poll,
            status: Mutex::new(FleetStatus::default()),
            verifier: Mutex::new(Verifier::default()),
            applied: Mutex::new(None),
            logged: Mutex::new(Default::default()),
            wake: Notify::new(),
        }))
    }

    pub fn node_id(&self) -> String {
        self.identity.lock().expect("identity poisoned").node_id()
    }

    fn enrolment(&self) -> Option<EnrolmentBundle> {
        match enrol::enrolment(&self.store) {
            Ok(b) => b,
            Err(e) => {
                tracing::error!("fleet: {e}");
                None
            }
        }
    }

    pub fn is_revoked(&self) -> bool {
        matches!(self.store.get(Key::Revoked), Ok(Some(_)))
    }

    /// `palisade identity`.
    pub fn identity_json(&self) -> Value {
        let id = self.identity.lock().expect("identity poisoned");
        let b = self.enrolment();
        json!({
            "node_id": id.node_id(),
            "public_key": id.public_key_b64(),
            "enrolled": b.is_some(),
            "revoked": self.is_revoked(),
            "name": b.as_ref().map(|b| b.name.clone()),
            "region": b.as_ref().map(|b| b.region.clone()),
        })
    }

    /// `palisade fleet status`.
    pub fn status_json(&self) -> Value {
        let s = self.status.lock().expect("status poisoned").clone();
        let b = self.enrolment();
        json!({
            "node_id": self.node_id(),
            "enrolled": b.is_some(),
            "revoked": self.is_revoked(),
            "repository": b.as_ref().and_then(|b| b.repositories.first().cloned()),
            "poll_secs": self.poll.as_secs(),
            "last_check": s.last_check,
            "last_error": s.last_error.map(|(k, m)| json!({"kind": k, "message": m})),
            "config": s.config,
            "grants": {
                "active": s.grants_active,
                "rejected": s.grants_rejected,
                "next_expiry": s.next_expiry.map(rfc3339),
            },
            "lists": s.lists,
        })
    }

    /// What the metrics endpoint shows of the fleet subsystem.
    pub fn figures(&self) -> FleetFigures {
        let s = self.status.lock().expect("status poisoned");
        FleetFigures {
            enrolled: self.enrolment().is_some(),
            revoked: self.is_revoked(),
            last_ok_unix: s.last_ok_unix,
            refusals: s.refusals,
            grants_active: s.grants_active,
            grants_rejected: s.grants_rejected,
        }
    }

    /// The metrics trust anchors from the repository (PEM, verified), if it
    /// publishes them; they take precedence over the node's anchors file.
    pub fn mesh_anchors(&self) -> Option<bytes::Bytes> {
        if self.is_revoked() {
            return None;
        }
        self.status.lock().expect("status poisoned").mesh_anchors.clone()
    }

    /// The node's identity key, for the metrics endpoint's certificate.
    pub fn with_identity<T>(&self, f: impl FnOnce(&Identity) -> T) -> T {
        f(&self.identity.lock().expect("identity poisoned"))
    }

    /// Accept an enrolment (serial console or config drive).
    fn accept(&self, bundle: &EnrolmentBundle) -> Result<(), enrol::EnrolRefusal> {
        let id = self.identity.lock().expect("identity poisoned");
        enrol::accept(&self.store, &id, bundle)?;
        drop(id);
        self.enrolled(bundle);
        Ok(())
    }

    /// After an enrolment was saved: the fleet root for the repository
    /// clients, then wake the fleet task.
    fn enrolled(&self, bundle: &EnrolmentBundle) {
        if let Err(e) = self.write_fleet_root(bundle) {
            tracing::error!("fleet: {e}");
        }
        tracing::info!("fleet: enrolled as {} (region {}), node {}", bundle.name, bundle.region, self.node_id());
        self.wake.notify_one();
    }

    /// The bundle's fleet root where both repository clients read their
    /// trust anchor (`fleet-root.json` on the state partition).
    fn write_fleet_root(&self, bundle: &EnrolmentBundle) -> Result<PathBuf, String> {
        let root = self.state_dir.join(crate::update::STATE_FLEET_ROOT);
        let bytes = serde_json::to_vec_pretty(&bundle.fleet_root).map_err(|e| format!("fleet root: {e}"))?;
        write_atomic(&root, &bytes).map_err(|e| format!("writing {}: {e}", root.display()))?;
        Ok(root)
    }

    /// An enrolment bundle left in the state directory by a config drive.
    fn enrol_from_state(&self) {
        let path = self.state_dir.join(STATE_ENROL_BUNDLE);
        let Ok(bytes) = std::fs::read(&path) else { return };
        let r = serde_json::from_slice::<EnrolmentBundle>(&bytes)
            .map_err(|e| format!("invalid: {e}"))
            .and_then(|b| self.accept(&b).map_err(|r| format!("{}: {}", r.kind, r.reason)));
        match r {
            Ok(()) => tracing::info!("fleet: enrolment from {} accepted", path.display()),
            Err(e) => tracing::error!("fleet: enrolment from {} refused: {e}", path.display()),
        }
        // Consumed either way: a refused bundle is not retried on every boot.
        let _ = std::fs::remove_file(&path);
    }

    /// Factory reset of the fleet state: the node forgets its enrolment and
    /// its fleet state and gets a new identity; it can then be enrolled
    /// again. A revoked node stays locked down until that enrolment.
    pub fn factory_reset(&self) -> Result<String, String> {
        enrol::factory_reset_enrolment(&self.store).map_err(|e| e.to_string())?;
        Identity::wipe(&self.store).map_err(|e| e.to_string())?;
        let (id, _) = Identity::load_or_create(&self.store).map_err(|e| e.to_string())?;
        let node = id.node_id();
        *self.identity.lock().expect("identity poisoned") = id;
        *self.applied.lock().expect("applied poisoned") = None;
        let _ = std::fs::remove_file(self.state_dir.join(crate::update::STATE_FLEET_ROOT));
        tracing::warn!("fleet: factory reset: enrolment and fleet state cleared; new identity node {node}");
        Ok(node)
    }

    /// Record a refusal; logged when it differs from the one before (an
    /// unreachable repository is not logged on every poll).
    fn set_error(&self, kind: &str, message: String) {
        let e = (kind.to_string(), message);
        if self.logged.lock().expect("logged poisoned").insert(e.clone()) {
            tracing::warn!("fleet: refused: {}: {}", e.0, e.1);
        }
        let mut s = self.status.lock().expect("status poisoned");
        s.refusals += 1;
        s.last_error = Some(e);
    }

    /// A new round: no refusal yet.
    fn clear_error(&self) {
        self.status.lock().expect("status poisoned").last_error = None;
    }

    /// After a round without refusals: say so once after refusals.
    fn round_ok(&self) {
        if self.status.lock().expect("status poisoned").last_error.is_some() {
            return;
        }
        let mut logged = self.logged.lock().expect("logged poisoned");
        if !logged.is_empty() {
            let kinds: std::collections::BTreeSet<&str> = logged.iter().map(|(k, _)| k.as_str()).collect();
            tracing::info!("fleet: repository accepted again (after {})", kinds.into_iter().collect::<Vec<_>>().join(", "));
            logged.clear();
        }
    }

    /// The fleet task: never returns.
    pub async fn run(self: Arc<Self>, engine: Shared, dns: Dns, hb: crate::board::Heartbeat) {
        if self.is_revoked() {
            tracing::warn!("fleet: this node is revoked; it stays stopped until it is enrolled again");
            self.lock_down(&engine, &dns).await;
        }
        self.enrol_from_state();
        // Serve the last verified state before the first poll: a reboot with
        // the repository unreachable keeps serving.
        if self.enrolment().is_some() && !self.is_revoked() {
            match FleetState::load(&self.store) {
                Ok(Some(state)) => {
                    tracing::info!("fleet: serving the last verified fleet state");
                    self.apply(&engine, &dns, &state).await;
                }
                Ok(None) => {}
                Err(e) => self.set_error("io", e.to_string()),
            }
        }
        loop {
            hb.tick();
            let delay = self.step(&engine, &dns).await;
            hb.park();
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = self.wake.notified() => {}
            }
        }
    }

    /// One round; returns the time to the next.
    async fn step(&self, engine: &Shared, dns: &Dns) -> Duration {
        if self.enrolment().is_none() {
            // Not enrolled: a bundle from a config drive (or put in the
            // state directory) is looked for every few seconds; the serial
            // console's enrolment wakes us.
            self.enrol_from_state();
        }
        let Some(bundle) = self.enrolment() else {
            return Duration::from_secs(5);
        };
        if self.is_revoked() {
            return Duration::from_secs(3600);
        }
        self.unlock_if_enrolled(engine, dns).await;
        let node_id = self.node_id();
        let previous = FleetState::load(&self.store).ok().flatten();
        match self.fetch(&bundle, &node_id, previous.as_ref()).await {
            Ok((state, shadowed)) => {
                {
                    let mut s = self.status.lock().expect("status poisoned");
                    s.last_check = Some(rfc3339(now_unix()));
                    s.last_ok_unix = Some(now_unix());
                }
                self.clear_error();
                if !shadowed.is_empty() {
                    self.set_error("wrong-role", format!("{}; those listings are ignored, the owning roles' targets are used (a key signing outside its paths: rotate it)", shadowed.join("; ")));
                }
                if !previous.as_ref().is_some_and(|p| p.same_targets(&state)) {
                    if let Err(e) = state.save(&self.store) {
                        self.set_error("io", format!("keeping the verified state: {e}"));
                    }
                }
                self.apply(engine, dns, &state).await;
                self.round_ok();
            }
            Err(e) => {
                self.status.lock().expect("status poisoned").last_check = Some(rfc3339(now_unix()));
                // Grants still expire offline: evaluate the kept state. The
                // round's refusal is the repository's (set last).
                if let Some(state) = previous {
                    self.apply(engine, dns, &state).await;
                }
                self.set_error(e.kind(), e.to_string());
            }
        }
        let wait = jittered_down(self.poll);
        let expiry = self.status.lock().expect("status poisoned").next_expiry;
        match expiry {
            Some(at) => {
                let until = Duration::from_secs((at - now_unix()).max(0) as u64 + 1);
                wait.min(until)
            }
            None => wait,
        }
    }

    /// Fetch and verify this node's fleet state; with it, the listings of
    /// its targets by roles that do not own them (ignored, reported).
    async fn fetch(&self, bundle: &EnrolmentBundle, node_id: &str, previous: Option<&FleetState>) -> Result<(FleetState, Vec<String>), RepoError> {
        let ca = match &bundle.ca_pem {
            Some(pem) => {
                let p = self.run_dir.join("fleet-ca.pem");
                write_atomic(&p, pem.as_bytes()).map_err(|e| RepoError::Io { path: p.clone(), source: e })?;
                Some(p)
            }
            None => None,
        };
        // The enrolment is the source of the trust anchor: restore the file
        // if it is gone (say, a power cut right after the enrolment).
        let mut trusted_root = self.state_dir.join(crate::update::STATE_FLEET_ROOT);
        if !trusted_root.is_file() {
            trusted_root = self.write_fleet_root(bundle).map_err(|detail| RepoError::Config { detail })?;
        }
        let cfg = ClientConfig {
            trusted_root,
            datastore: self.state_dir.join("tuf").join("fleet"),
            ca_file: ca,
            timeout: Duration::from_secs(20),
        };
        let mut last = None;
        for url in &bundle.repositories {
            let base = match url::Url::parse(url) {
                Ok(u) => u,
                Err(e) => {
                    last = Some(RepoError::Config { detail: format!("repository URL {url}: {e}") });
                    continue;
                }
            };
            let r = async {
                let src = RepoSource::from_base(&base)?;
                let repo = Repo::load(&src, &cfg).await?;
                let state = sync::fetch(&repo, node_id, previous, now_unix()).await?;
                Ok((state, shadowing(&repo, node_id)))
            }
            .await;
            match r {
                Ok(s) => return Ok(s),
                // Only an unreachable mirror moves on to the next one: a
                // refusal (signature, rollback, role) is the answer.
                Err(e @ RepoError::Unreachable { .. }) => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or(RepoError::Config { detail: "the enrolment names no repository".into() }))
    }

    /// Evaluate `state` now and bring the node in line with it.
    async fn apply(&self, engine: &Shared, dns: &Dns, state: &FleetState) {
        let node_id = self.node_id();
        let checked = std::time::Instant::now();
        let ev: Evaluated = {
            let mut v = self.verifier.lock().expect("verifier poisoned");
            v.evaluate(state, &node_id, now_unix())
        };
        let checked = checked.elapsed();
        if ev.revoked_self {
            tracing::warn!("fleet: node {node_id} revoked by the fleet; tunnel down, keys wiped, firewall drop-all, DNS off");
            // Forget the enrolment and the identity first, then record the
            // revocation: whatever reports "revoked" also sees them gone.
            if let Err(e) = enrol::factory_reset_enrolment(&self.store) {
                tracing::error!("fleet: clearing the enrolment: {e}");
            }
            if let Err(e) = Identity::wipe(&self.store) {
                tracing::error!("fleet: wiping the identity key: {e}");
            }
            let _ = std::fs::remove_file(self.state_dir.join(crate::update::STATE_FLEET_ROOT));
            *self.applied.lock().expect("applied poisoned") = None;
            // A fresh identity, so the node can be enrolled again (as a new
            // node: the revoked id stays revoked).
            match Identity::load_or_create(&self.store) {
                Ok((id, _)) => {
                    tracing::info!("fleet: new identity node {} (not enrolled)", id.node_id());
                    *self.identity.lock().expect("identity poisoned") = id;
                }
                Err(e) => tracing::error!("fleet: new identity: {e}"),
            }
            if let Err(e) = self.store.put(Key::Revoked, b"{}") {
                tracing::error!("fleet: recording the revocation: {e}");
            }
            self.lock_down(engine, dns).await;
            return;
        }
        {
            let mut s = self.status.lock().expect("status poisoned");
            s.grants_active = ev.peers.len();
            s.grants_rejected = ev.rejected.len();
            s.next_expiry = ev.next_expiry;
            s.lists = ev.lists.keys().cloned().collect();
            if s.mesh_anchors != ev.mesh_anchors {
                tracing::info!("fleet: mesh trust anchors {} (metrics)", if ev.mesh_anchors.is_some() { "from the repository" } else { "not in the repository" });
            }
            s.mesh_anchors = ev.mesh_anchors.clone();
        }
        let Some(text) = ev.config_text.clone() else {
            return;
        };
        let lists_changed = match self.write_lists(&ev.lists) {
            Ok(changed) => changed,
            Err(e) => {
                self.set_error("io", format!("writing DNS lists: {e}"));
                false
            }
        };
        let peers: Vec<PeerSection> = ev
            .peers
            .iter()
            .map(|g| PeerSection {
                name: format!("grant-{}", g.jti),
                public_key: g.public_key_b64(),
                addresses: g.addresses.clone(),
                tier: g.tier.clone(),
                preshared_key: None,
            })
            .collect();
        let fp = {
            let keys: Vec<&[u8]> = peers.iter().flat_map(|p| [p.name.as_bytes(), p.public_key.as_bytes()]).collect();
            let addrs = format!("{:?}", peers.iter().map(|p| (&p.addresses, &p.tier)).collect::<Vec<_>>());
            let mut parts = vec![text.as_bytes(), addrs.as_bytes()];
            parts.extend(keys);
            sha256(&parts)
        };
        if *self.applied.lock().expect("applied poisoned") == Some(fp) {
            if lists_changed {
                if let Err(e) = crate::supervisor::sync_dns(engine, dns).await {
                    self.set_error("invalid", format!("DNS lists: {e}"));
                }
            }
            return;
        }
        let cfg = FleetConfig { source: PathBuf::from(format!("fleet:{}", config_target(&node_id))), text, peers };
        let started = std::time::Instant::now();
        // One grant the config cannot take (an address outside the tunnel
        // prefix, a low-order key, an address another grant holds) must not
        // hold back the others, revocations included: without it, the rest
        // is applied and the refusal reported.
        let (cfg, invalid) = match tokio::task::spawn_blocking(move || without_invalid_grants(cfg)).await {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => return self.set_error("invalid-config", e.to_string()),
            Err(e) => return self.set_error("invalid-config", format!("validating: {e}")),
        };
        if invalid > 0 {
            self.set_error("invalid-grant", format!("{invalid} grant(s) the node config cannot take (outside the tunnel prefixes, a bad key, or an address or key another grant holds); the others are applied"));
        }
        let n = cfg.peers.len();
        match blocking(engine, move |e| e.set_fleet(Some(cfg))).await {
            Ok(r) => {
                *self.applied.lock().expect("applied poisoned") = Some(fp);
                let sha = state.config.as_ref().map(|b| b.sha256.clone()).unwrap_or_default();
                self.status.lock().expect("status poisoned").config = Some(json!({
                    "sha256": sha,
                    "role_version": state.config.as_ref().map(|b| b.role_version),
                    "applied_at": rfc3339(now_unix()),
                }));
                tracing::info!(
                    "fleet: config {} applied, {n} grant(s) active, {} rejected, {} peer change(s); grants checked in {} ms, applied in {} ms",
                    &sha[..sha.len().min(12)],
                    ev.rejected.len(),
                    r.wg_peer_changes,
                    checked.as_millis(),
                    started.elapsed().as_millis()
                );
                if let Err(e) = crate::supervisor::sync_dns(engine, dns).await {
                    self.set_error("invalid", format!("DNS: {e}"));
                }
            }
            Err(e) => self.set_error("invalid-config", e.to_string()),
        }
    }

    /// Write verified lists to the run directory (atomically, each); true
    /// when any changed. A list whose content is not a list is not
    /// written: the resolver keeps the previous one.
    fn write_lists(&self, lists: &BTreeMap<String, bytes::Bytes>) -> std::io::Result<bool> {
        let dir = self.run_dir.join(LISTS_DIR);
        std::fs::create_dir_all(&dir)?;
        let mut changed = false;
        for (name, bytes) in lists {
            let p = dir.join(format!("{name}.txt"));
            if std::fs::read(&p).ok().as_deref() == Some(&bytes[..]) {
                continue;
            }
            if let Err(why) = check_list(bytes) {
                self.set_error("invalid", format!("DNS list {name}: {why}; the resolver keeps the previous list"));
                continue;
            }
            write_atomic(&p, bytes)?;
            changed = true;
        }
        Ok(changed)
    }

    async fn lock_down(&self, engine: &Shared, dns: &Dns) {
        let r = blocking(engine, |e| {
            let r = e.set_revoked(true);
            // The fleet's config and grants are forgotten: a later
            // enrolment starts from the node's own config.
            let _ = e.set_fleet(None);
            r
        })
        .await;
        crate::supervisor::log_report("revoked", &r);
        dns.shutdown().await;
    }

    /// Enrolled again after a revocation: leave the lockdown.
    async fn unlock_if_enrolled(&self, engine: &Shared, dns: &Dns) {
        if self.is_revoked() || !blocking(engine, |e| e.revoked()).await {
            return;
        }
        let r = blocking(engine, |e| e.set_revoked(false)).await;
        crate::supervisor::log_report("enrolled again", &r);
        tracing::info!("fleet: enrolled again; the lockdown is lifted");
        if let Err(e) = crate::supervisor::sync_dns(engine, dns).await {
            tracing::error!("fleet: DNS: {e}");
        }
    }

    /// Handle one line from the serial console; the reply to write, if any.
    fn console_line(&self, responder: &mut Responder, line: &str) -> Option<String> {
        let id = self.identity.lock().expect("identity poisoned");
        let (reply, accepted) = responder.handle_line(line, &self.store, &id)?;
        drop(id);
        if let Some(b) = accepted {
            self.enrolled(&b);
        }
        Some(reply)
    }
}

/// This node's targets as listed by roles that do not own them.
fn shadowing(repo: &Repo, node_id: &str) -> Vec<String> {
    use palisade_update::fleet::{grants_target, CONFIGS, GRANTS, JWKS_TARGET, REVOCATIONS, REVOKED_TARGET};
    let mut out = Vec::new();
    for (role, name) in [
        (CONFIGS, config_target(node_id)),
        (CONFIGS, grants_target(node_id)),
        (GRANTS, JWKS_TARGET.to_string()),
        (REVOCATIONS, REVOKED_TARGET.to_string()),
    ] {
        let others = repo.other_signers(role, &name);
        if !others.is_empty() {
            out.push(format!("{name} is also signed by {} (owned by {})", others.join(", "), role.name));
        }
    }
    out
}

/// A DNS list must be text the resolver can use: UTF-8 without NUL bytes,
/// and when it has entries at all, some the list parser accepts.
fn check_list(bytes: &[u8]) -> Result<(), String> {
    let text = std::str::from_utf8(bytes).map_err(|e| format!("not UTF-8 text ({e})"))?;
    if text.contains('\0') {
        return Err("contains NUL bytes".into());
    }
    let c = palisade_dns::filter::compile_str(text, false, 2);
    if c.stats.rejected_lines > 0 && c.stats.block_names + c.stats.allow_names == 0 {
        return Err(format!("none of its {} entries parses as a name", c.stats.rejected_lines));
    }
    Ok(())
}

/// `cfg` without the grants its validation refuses (and the number
/// dropped); an error when the config itself is invalid. The common case,
/// everything valid, costs one validation.
fn without_invalid_grants(mut cfg: FleetConfig) -> Result<(FleetConfig, usize), palisade_core::config::ConfigError> {
    if cfg.spec().is_ok() {
        return Ok((cfg, 0));
    }
    let peers = std::mem::take(&mut cfg.peers);
    // The config alone must stand.
    cfg.spec()?;
    let before = peers.len();
    let mut keys = std::collections::HashSet::new();
    let mut addresses = std::collections::HashSet::new();
    let mut kept = Vec::with_capacity(before);
    let mut one = FleetConfig { source: cfg.source.clone(), text: cfg.text.clone(), peers: Vec::with_capacity(1) };
    for p in peers {
        // Taken once: the first grant holding a key or an address keeps it.
        if !keys.insert(p.public_key.clone()) || p.addresses.iter().any(|a| addresses.contains(a)) {
            continue;
        }
        one.peers = vec![p];
        if one.spec().is_ok() {
            let p = one.peers.pop().expect("one peer");
            addresses.extend(p.addresses.iter().copied());
            kept.push(p);
        }
    }
    cfg.peers = kept;
    // The survivors together (names are unique: grant ids).
    cfg.spec()?;
    let dropped = before - cfg.peers.len();
    Ok((cfg, dropped))
}

/// Replace `path` with `bytes` (0600): a synced temporary file renamed over
/// it, then the directory synced, so a power cut leaves the old or the new.
fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("new");
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    match path.parent() {
        Some(d) => std::fs::File::open(d)?.sync_all(),
        None => Ok(()),
    }
}

/// The serial console device from the kernel command line (`console=ttyS0,115200`:
/// the last `console=` naming a serial port).
pub fn console_device(cmdline: &crate::init::Cmdline) -> Option<PathBuf> {
    cmdline
        .all("console")
        .into_iter()
        .rev()
        .map(|v| v.split(',').next().unwrap_or_default().to_string())
        .find(|d| d.starts_with("ttyS") || d.starts_with("ttyAMA") || d.starts_with("ttyUSB"))
        .map(|d| PathBuf::from("/dev").join(d))
}

/// Serve the enrolment line protocol on the serial console `dev`, in a
/// thread of its own (blocking reads). Input is switched to non-canonical,
/// no echo; output processing stays as it is, so the console's log lines
/// are unchanged.
pub fn spawn_console(fleet: Arc<Fleet>, dev: PathBuf) {
    std::thread::Builder::new()
        .name("enrol-console".into())
        .spawn(move || {
            let mut backoff = Duration::from_secs(1);
            loop {
                if let Err(e) = serve_console(&fleet, &dev) {
                    tracing::warn!("fleet: serial console {}: {e}", dev.display());
                }
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        })
        .expect("spawning the console thread");
}

fn serve_console(fleet: &Fleet, dev: &Path) -> std::io::Result<()> {
    use nix::sys::termios::{self, InputFlags, LocalFlags, SetArg};
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new().read(true).write(true).custom_flags(libc_o_noctty()).open(dev)?;
    let mut t = termios::tcgetattr(&f).map_err(std::io::Error::from)?;
    t.local_flags.remove(LocalFlags::ICANON | LocalFlags::ECHO | LocalFlags::ECHONL | LocalFlags::ISIG | LocalFlags::IEXTEN);
    // No software flow control: an XOFF from the other end must not stop
    // the console, which every boot message and log line goes through.
    t.input_flags.remove(InputFlags::IXON);
    t.control_chars[termios::SpecialCharacterIndices::VMIN as usize] = 1;
    t.control_chars[termios::SpecialCharacterIndices::VTIME as usize] = 0;
    termios::tcsetattr(&f, SetArg::TCSANOW, &t).map_err(std::io::Error::from)?;
    tracing::info!("fleet: enrolment protocol on {}", dev.display());
    let mut responder = Responder::new();
    enrol::serve_lines(&mut f, |line| fleet.console_line(&mut responder, line))
}

fn libc_o_noctty() -> i32 {
    nix::fcntl::OFlag::O_NOCTTY.bits()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_never_exceeds_the_interval() {
        for _ in 0..200 {
            let d = jittered_down(Duration::from_secs(60));
            assert!(d <= Duration::from_secs(60) && d >= Duration::from_secs(48), "{d:?}");
        }
    }

    #[test]
    fn lists_are_checked_before_they_replace_the_running_one() {
        assert!(check_list(b"||ads.example.test^\n0.0.0.0 adult.example.test\n").is_ok());
        assert!(check_list(b"# only comments\n\n").is_ok());
        assert!(check_list(b"\xff\xfe binary").unwrap_err().contains("UTF-8"));
        assert!(check_list(b"a\0b").unwrap_err().contains("NUL"));
        assert!(check_list(b"<html><body>404 not found</body></html>\n").unwrap_err().contains("parses"));
    }

    #[test]
    fn one_bad_grant_does_not_hold_back_the_others() {
        use palisade_core::config::PrivateKey;
        let text = include_str!("../../../configs/node.toml").to_string();
        let key = || PrivateKey::generate().public_key().to_base64();
        let peer = |name: &str, k: String, a: &str| PeerSection {
            name: name.into(),
            public_key: k,
            addresses: vec![a.parse().unwrap()],
            tier: None,
            preshared_key: None,
        };
        let source = PathBuf::from("fleet:nodes/x/config.toml");
        let all_good = FleetConfig { source: source.clone(), text: text.clone(), peers: vec![peer("grant-a", key(), "10.66.0.9/32")] };
        let (cfg, dropped) = without_invalid_grants(all_good).unwrap();
        assert_eq!((cfg.peers.len(), dropped), (1, 0));

        let shared = key();
        let mixed = FleetConfig {
            source: source.clone(),
            text: text.clone(),
            peers: vec![
                peer("grant-good", key(), "10.66.0.9/32"),
                peer("grant-outside", key(), "192.0.2.1/32"),
                peer("grant-same-address", key(), "10.66.0.9/32"),
                peer("grant-key-1", shared.clone(), "10.66.0.10/32"),
                peer("grant-key-2", shared, "10.66.0.11/32"),
                peer("grant-good-2", key(), "10.66.0.12/32"),
            ],
        };
        let (cfg, dropped) = without_invalid_grants(mixed).unwrap();
        let names: Vec<&str> = cfg.peers.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["grant-good", "grant-key-1", "grant-good-2"]);
        assert_eq!(dropped, 3);
        assert!(cfg.spec().is_ok());

        // A config that is itself invalid is refused whatever the grants.
        let broken = FleetConfig { source, text: text.replace("listen_port = 51820", "listen_port = \"x\""), peers: vec![] };
        assert!(without_invalid_grants(broken).is_err());
    }

    #[test]
    fn console_from_cmdline() {
        let c = crate::init::Cmdline::parse("console=tty0 console=ttyS0,115200 quiet");
        assert_eq!(console_device(&c), Some(PathBuf::from("/dev/ttyS0")));
        let c = crate::init::Cmdline::parse("console=tty0 quiet");
        assert_eq!(console_device(&c), None);
    }
}
