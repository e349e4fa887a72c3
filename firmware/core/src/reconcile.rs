//! The reconciler: desired state (config + peers file) -> planners ->
//! appliers. Idempotent; runs on every change and on a timer, so drift (a
//! flushed table, a deleted peer, a changed key) is repaired.
//!
//! A config that fails validation is refused and the last good spec keeps
//! being enforced.
//!
//! The desired state comes from the config file and the peers file, or,
//! once the node is enrolled, from the fleet repository ([`Engine::set_fleet`]).
//! A node the fleet revoked ([`Engine::set_revoked`]) is locked down: the
//! lockdown table, forwarding off, no WireGuard interface and no key.

use crate::config::{self, ConfigError, Loaded, NodeSpec, PeerSection, PeersFile, PrivateKey};
use crate::firewall::{self, Firewall};
use crate::wg::{self, WgControl, WgPlan};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::Serialize;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

/// Every filesystem location the engine uses, passed in (tests use a temp dir).
#[derive(Debug, Clone)]
pub struct Paths {
    pub state_dir: PathBuf,
    pub config: PathBuf,
    pub peers_file: PathBuf,
    pub proc_sys: PathBuf,
}

impl Paths {
    pub fn new(state_dir: &Path, config: Option<&Path>) -> Paths {
        Paths {
            state_dir: state_dir.to_path_buf(),
            config: config.map(Path::to_path_buf).unwrap_or_else(|| state_dir.join("node.toml")),
            peers_file: state_dir.join("peers.toml"),
            proc_sys: PathBuf::from("/proc/sys"),
        }
    }

    /// The node's WireGuard private key file (the state partition's `wg0.key`
    /// unless the config names another).
    pub fn key_file(&self, spec: &NodeSpec) -> PathBuf {
        self.state_dir.join(&spec.wg.private_key_file)
    }
}

/// Why an engine request was refused. Every variant leaves the running
/// state as it was.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The config (or the peers file with the change applied) is invalid;
    /// `running` says whether a last good config keeps running.
    #[error("{error}{}", if *.running { "\nconfig refused; the last good config keeps running" } else { "" })]
    Config { error: ConfigError, running: bool },
    #[error("private key {path}: {source}")]
    Key { path: PathBuf, source: crate::config::KeyError },
    #[error("private key {path}: {source}")]
    KeyFile { path: PathBuf, source: std::io::Error },
    #[error("wireguard: {0}")]
    Wg(#[from] crate::wg::WgError),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("cannot write the peers file: {0}")]
    Serialize(#[from] toml::ser::Error),
    #[error("no peer named '{0}'")]
    NoSuchPeer(String),
    #[error("peer '{peer}' is defined in {config}; remove it there and run `palisade reload`")]
    PeerInConfig { peer: String, config: PathBuf },
    #[error("tunnel prefix {0} is full")]
    PrefixFull(Ipv4Net),
    #[error("no valid config loaded yet")]
    NotLoaded,
    /// Peers are changed in the fleet repository, not on the node.
    #[error("peers of this node come from the fleet repository — use `palisade-fleet grant issue/revoke`")]
    FleetManaged,
}

impl EngineError {
    /// The stable kind the control protocol carries.
    pub fn kind(&self) -> crate::control::ErrorKind {
        use crate::control::ErrorKind;
        match self {
            EngineError::Config { .. } | EngineError::PrefixFull(_) => ErrorKind::InvalidConfig,
            EngineError::NoSuchPeer(_) | EngineError::PeerInConfig { .. } => ErrorKind::NotFound,
            EngineError::NotLoaded => ErrorKind::Unavailable,
            EngineError::FleetManaged => ErrorKind::FleetManaged,
            EngineError::Key { .. } | EngineError::KeyFile { .. } | EngineError::Wg(_) | EngineError::Io { .. } | EngineError::Serialize(_) => ErrorKind::System,
        }
    }
}

/// Desired state from the fleet repository: the node's config text and its
/// peers (from its client grants), in place of node.toml and peers.toml.
#[derive(Debug, Clone, PartialEq)]
pub struct FleetConfig {
    /// Names the config text in errors, e.g. `fleet:nodes/<id>/config.toml`.
    pub source: PathBuf,
    pub text: String,
    pub peers: Vec<PeerSection>,
}

/// What errors in a [`FleetConfig`]'s peers name as their source.
pub const FLEET_PEERS_SOURCE: &str = "fleet:grants";

/// The `fail_closed` reason while the node is revoked.
pub const REVOKED_REASON: &str = "node revoked by the fleet";

impl FleetConfig {
    /// Validate into a spec, exactly as a config file would be.
    pub fn spec(&self) -> Result<NodeSpec, ConfigError> {
        config::load_from_text(&self.source, &self.text, &self.peers, Path::new(FLEET_PEERS_SOURCE))
    }
}

/// What one reconcile pass did. Counts only.
#[derive(Debug, Clone, Serialize, Default, PartialEq)]
pub struct Report {
    pub wg_peer_changes: usize,
    pub wg_interface_changed: bool,
    pub link_changes: usize,
    pub firewall_applied: bool,
    /// The live table differed from the one we loaded (someone changed it).
    pub firewall_drift: bool,
    /// The verified table is live: forwarding is on and the tunnel is up.
    /// False means fail-closed: forwarding off, tunnel link down.
    pub firewall_verified: bool,
    pub sysctl_changes: usize,
    pub errors: Vec<String>,
    pub duration_us: u64,
    /// Time the firewall transaction took (check, apply, read-back), when
    /// this pass applied the table; 0 otherwise.
    pub firewall_apply_us: u64,
}

pub struct Engine {
    pub paths: Paths,
    wg: Box<dyn WgControl>,
    fw: Box<dyn Firewall>,
    /// Whether to touch interface addresses and sysctls (off in unit tests).
    manage_host: bool,
    spec: Option<NodeSpec>,
    key: Option<PrivateKey>,
    fw_rules: Option<firewall::Ruleset>,
    fw_fingerprint: Option<String>,
    /// Why the node is failing closed (the firewall is not verified), if it is.
    fail_closed: Option<String>,
    /// Desired state from the fleet repository instead of the files.
    fleet: Option<FleetConfig>,
    /// Revoked by the fleet: locked down until re-enrolled.
    revoked: bool,
    /// Reloads of the files parse and check only what changed.
    loader: config::Loader,
    pub last: Option<(SystemTime, Report)>,
    pub last_config_error: Option<String>,
}

impl Engine {
    pub fn new(paths: Paths, wg: Box<dyn WgControl>, fw: Box<dyn Firewall>, manage_host: bool) -> Engine {
        Engine {
            paths,
            wg,
            fw,
            manage_host,
            spec: None,
            key: None,
            fw_rules: None,
            fw_fingerprint: None,
            fail_closed: Some("no valid config loaded yet".into()),
            fleet: None,
            revoked: false,
            loader: config::Loader::default(),
            last: None,
            last_config_error: None,
        }
    }

    pub fn spec(&self) -> Option<&NodeSpec> {
        self.spec.as_ref()
    }

    /// The peers with a live session: an endpoint and a handshake within
    /// `within` (for keepalives after an uplink switch). None while revoked
    /// or failing closed.
    pub fn live_peers(&mut self, within: Duration) -> Result<Vec<config::PublicKey>, EngineError> {
        let Some(spec) = self.spec.as_ref() else { return Ok(Vec::new()) };
        if self.revoked || self.fail_closed.is_some() {
            return Ok(Vec::new());
        }
        let now = SystemTime::now();
        let observed = self.wg.observe(&spec.wg.interface)?;
        Ok(observed
            .peers
            .iter()
            .filter(|p| p.endpoint.is_some())
            .filter(|p| p.last_handshake.and_then(|t| now.duration_since(t).ok()).is_some_and(|age| age <= within))
            .map(|p| p.public_key)
            .collect())
    }

    /// Set the persistent keepalive of `peers` that are still configured
    /// (see [`WgControl::set_keepalive`]).
    pub fn set_keepalive(&mut self, peers: &[config::PublicKey], secs: u16) -> Result<(), EngineError> {
        let Some(spec) = self.spec.as_ref() else { return Ok(()) };
        let still: Vec<config::PublicKey> = peers.iter().filter(|k| spec.peers.contains_key(k)).copied().collect();
        self.wg.set_keepalive(&spec.wg.interface, &still, secs)?;
        Ok(())
    }

    /// The desired state from its source: the fleet config when there is
    /// one, else the config file and the peers file.
    fn load(&self) -> Result<NodeSpec, ConfigError> {
        match &self.fleet {
            Some(f) => f.spec(),
            None => config::load(&self.paths.config, Some(&self.paths.peers_file)),
        }
    }

    /// Whether the desired state comes from the fleet repository.
    pub fn fleet_managed(&self) -> bool {
        self.fleet.is_some()
    }

    /// Desired state from the fleet repository instead of the config file
    /// and the peers file. Validated exactly like a file (errors name the
    /// source and line); a refused one changes nothing and the running spec
    /// stays. `None` goes back to the files (validated the same way: if they
    /// are refused, the node stays fleet-managed). Applied hot: peers whose
    /// configuration is unchanged get no operation, so their sessions stay.
    pub fn set_fleet(&mut self, cfg: Option<FleetConfig>) -> Result<Report, EngineError> {
        let spec = match &cfg {
            Some(f) => f.spec(),
            None => config::load(&self.paths.config, Some(&self.paths.peers_file)),
        };
        match spec {
            Ok(spec) => {
                self.fleet = cfg;
                self.last_config_error = None;
                self.install(spec)
            }
            Err(error) => {
                self.last_config_error = Some(error.to_string());
                Err(EngineError::Config { error, running: self.spec.is_some() })
            }
        }
    }

    /// Whether the node is revoked (locked down).
    pub fn revoked(&self) -> bool {
        self.revoked
    }

    /// Revoke (lock down) or un-revoke the node. While revoked every pass
    /// enforces the lockdown: the lockdown table (`firewall::render_lockdown`,
    /// read back and repaired like the normal one), forwarding off, the
    /// WireGuard interface deleted and the private key file destroyed. The
    /// tunnel never comes back while revoked; `reload` and `set_fleet` store
    /// the spec without applying it. Leaving (on re-enrolment) installs the
    /// stored spec with a new key (the old one is gone).
    pub fn set_revoked(&mut self, revoked: bool) -> Report {
        let was = self.revoked;
        self.revoked = revoked;
        if revoked || !was {
            // Dropping the key zeroes it.
            if revoked {
                self.key = None;
            }
            return self.reconcile();
        }
        self.fail_closed = Some("no valid config loaded yet".into());
        match self.spec.clone() {
            Some(spec) => match self.install(spec) {
                Ok(r) => r,
                Err(e) => {
                    // No key: the lockdown table stays; the next reload retries.
                    let msg = e.to_string();
                    self.fail_closed = Some(format!("{msg}; the lockdown table stays until a key can be made"));
                    let r = Report { errors: vec![msg], ..Default::default() };
                    self.last = Some((SystemTime::now(), r.clone()));
                    r
                }
            },
            None => self.reconcile(),
        }
    }

    /// Re-read the config. On error nothing changes: the last good spec stays
    /// in force and the error is returned (and kept for `status`). While
    /// fleet-managed this re-validates the fleet config (node.toml and
    /// peers.toml are not read).
    pub fn reload(&mut self) -> Result<Report, EngineError> {
        let loaded = match &self.fleet {
            Some(f) => f.spec().map(|s| Loaded::Changed(Box::new(s))),
            None => self.loader.load(&self.paths.config, Some(&self.paths.peers_file)),
        };
        match loaded {
            Ok(Loaded::Unchanged) if self.spec.is_some() && (self.key.is_some() || self.revoked) => {
                // The running spec is that of these very texts.
                self.last_config_error = None;
                Ok(self.reconcile())
            }
            Ok(Loaded::Unchanged) => {
                // Nothing runs them (cannot happen: install forgets them);
                // load them as new.
                self.loader.forget();
                self.reload()
            }
            Ok(Loaded::Changed(spec)) => {
                self.last_config_error = None;
                let r = self.install(*spec);
                if r.is_ok() && self.fleet.is_none() {
                    self.loader.commit();
                }
                r
            }
            Err(error) => {
                self.last_config_error = Some(error.to_string());
                Err(EngineError::Config { error, running: self.spec.is_some() })
            }
        }
    }

    fn install(&mut self, spec: NodeSpec) -> Result<Report, EngineError> {
        // Whatever the source, the loader's kept texts no longer describe
        // the running spec (reload keeps them again after this returns).
        self.loader.forget();
        if self.revoked {
            // Stored for re-enrolment; no key is loaded or made.
            self.spec = Some(spec);
            self.key = None;
            return Ok(self.reconcile());
        }
        let key_path = self.paths.key_file(&spec);
        let key = PrivateKey::load_or_generate(&key_path).map_err(|source| EngineError::KeyFile { path: key_path.clone(), source })?;
        self.key = Some(key);
        self.spec = Some(spec);
        Ok(self.reconcile())
    }

    /// One idempotent pass over WireGuard, link, sysctls and firewall.
    pub fn reconcile(&mut self) -> Report {
        if self.revoked {
            return self.reconcile_lockdown();
        }
        let started = Instant::now();
        let mut r = Report::default();
        let (Some(spec), Some(key)) = (self.spec.as_ref(), self.key.as_ref()) else {
            r.errors.push("no valid config loaded yet".into());
            return r;
        };

        // Firewall first: isolation must be in place before the tunnel passes
        // traffic, and forwarding follows the verified table, never the other
        // way round.
        let facts = if self.manage_host { observe_uplinks(spec) } else { firewall::HostFacts::default() };
        let rules = firewall::render(spec, &facts);
        let (verified, fail_closed) = match enforce_table(self.fw.as_ref(), &mut self.fw_rules, &mut self.fw_fingerprint, rules, &mut r) {
            Ok(()) => (true, None),
            Err(msg) => (false, Some(format!("{msg}; forwarding is off and the tunnel is down until a verified table is live"))),
        };
        self.fail_closed = fail_closed;

        if self.manage_host {
            match crate::sysctl::apply(&self.paths.proc_sys, &firewall::sysctls(spec, verified)) {
                Ok(n) => r.sysctl_changes = n,
                Err(e) => {
                    r.errors.push(e.to_string());
                    if verified {
                        // A setting isolation depends on did not take: do not
                        // bring the tunnel up on top of it, and take back the
                        // forwarding that may already be on (best effort; the
                        // tunnel goes down below either way).
                        self.fail_closed = Some(format!("{e}; forwarding is off and the tunnel is down until it is set"));
                        let _ = crate::sysctl::apply(&self.paths.proc_sys, &firewall::sysctls(spec, false));
                    }
                }
            }
        }
        let tunnel_up = verified && self.fail_closed.is_none();
        r.firewall_verified = tunnel_up;
        if self.manage_host && !tunnel_up {
            // Down before anything else touches the interface.
            if let Err(e) = crate::link::set_down(&spec.wg.interface) {
                r.errors.push(format!("link: {e}"));
            }
        }

        // While failing closed the interface carries no peers at all: a
        // link that is down stops the kernel backend, but a userspace
        // backend (wireguard-go) still completes handshakes on a down link.
        // The peers come back with the verified table (their sessions were
        // dead meanwhile anyway).
        let closed;
        let wanted = if tunnel_up {
            spec
        } else {
            closed = NodeSpec { peers: Default::default(), ..spec.clone() };
            &closed
        };
        match self.wg.observe(&spec.wg.interface) {
            Ok(obs) => {
                let plan = wg::plan(&obs, wanted, &key.public_key());
                r.wg_interface_changed = plan.create_interface || plan.set_private_key || plan.set_listen_port.is_some();
                r.wg_peer_changes = plan.peers.len();
                if !plan.is_empty() {
                    if let Err(e) = self.wg.apply(&spec.wg.interface, &plan, key) {
                        r.errors.push(format!("wireguard: {e}"));
                    }
                }
            }
            Err(e) => r.errors.push(format!("wireguard: {e}")),
        }

        if self.manage_host {
            match crate::link::ensure_tunnel(spec, tunnel_up) {
                Ok(n) => r.link_changes = n,
                Err(e) => r.errors.push(format!("link: {e}")),
            }
        }
        r.duration_us = started.elapsed().as_micros() as u64;
        self.last = Some((SystemTime::now(), r.clone()));
        r
    }

    /// One pass of the revoked lockdown: the lockdown table (verified, drift
    /// repaired), forwarding off, the tunnel deleted, the key file destroyed.
    /// Idempotent; needs no spec for the table and forwarding (the interface
    /// and the key file are named by the stored spec, when there is one).
    fn reconcile_lockdown(&mut self) -> Report {
        let started = Instant::now();
        let mut r = Report::default();
        self.key = None;
        self.fail_closed = Some(REVOKED_REASON.into());
        // The table first: nothing passes from here on, whatever else fails.
        let _ = enforce_table(self.fw.as_ref(), &mut self.fw_rules, &mut self.fw_fingerprint, firewall::render_lockdown(), &mut r);
        if self.manage_host {
            let settings = match &self.spec {
                Some(spec) => firewall::sysctls(spec, false),
                None => firewall::forwarding_off(),
            };
            match crate::sysctl::apply(&self.paths.proc_sys, &settings) {
                Ok(n) => r.sysctl_changes = n,
                Err(e) => r.errors.push(e.to_string()),
            }
        }
        if let Some(spec) = &self.spec {
            match self.wg.delete(&spec.wg.interface) {
                Ok(existed) => r.wg_interface_changed = existed,
                Err(e) => r.errors.push(format!("wireguard: {e}")),
            }
            let key_path = self.paths.key_file(spec);
            if let Err(e) = destroy_file(&key_path) {
                r.errors.push(format!("private key {}: {e}", key_path.display()));
            }
        }
        r.duration_us = started.elapsed().as_micros() as u64;
        self.last = Some((SystemTime::now(), r.clone()));
        r
    }

    /// What a reload would change, from the pure planners, touching nothing.
    /// While revoked a reload applies nothing, and the plan says so.
    pub fn plan(&self) -> Result<Vec<String>, EngineError> {
        let spec = self.load().map_err(|error| EngineError::Config { error, running: false })?;
        if self.revoked {
            return Ok(vec![format!("= {REVOKED_REASON}: the lockdown stays; a reload stores the config and applies nothing")]);
        }
        let mut out = Vec::new();
        let node_pub = match &self.key {
            Some(k) => k.public_key(),
            // Plan touches nothing: read an existing key file, but never
            // create one (a throwaway key makes the plan say "set key").
            None => {
                let path = self.paths.key_file(&spec);
                match std::fs::read_to_string(&path) {
                    Ok(text) => PrivateKey::from_base64(&text).map_err(|source| EngineError::Key { path: path.clone(), source })?.public_key(),
                    Err(_) => PrivateKey::generate().public_key(),
                }
            }
        };
        let obs = self.wg.observe(&spec.wg.interface)?;
        let p: WgPlan = wg::plan(&obs, &spec, &node_pub);
        if p.create_interface {
            out.push(format!("+ interface {}", spec.wg.interface));
        }
        if p.set_private_key && !p.create_interface {
            out.push("~ interface private key".into());
        }
        if let Some(port) = p.set_listen_port {
            out.push(format!("~ listen port {port}"));
        }
        out.extend(p.peers.iter().map(|c| c.to_string()));
        let facts = if self.manage_host { observe_uplinks(&spec) } else { firewall::HostFacts::default() };
        let rules = firewall::render(&spec, &facts);
        let live_matches = matches!((self.fw.fingerprint(), &self.fw_fingerprint), (Ok(Some(l)), Some(f)) if l == *f);
        if self.fw_rules.as_ref() != Some(&rules) || !live_matches {
            out.push(format!("~ firewall table inet {} (reload)", firewall::TABLE));
        }
        Ok(out)
    }

    /// Add a peer to the peers file, validated together with the config.
    /// Addresses are allocated from the tunnel prefixes when not given.
    pub fn add_peer(&mut self, mut peer: PeerSection) -> Result<Report, EngineError> {
        if self.fleet_managed() {
            return Err(EngineError::FleetManaged);
        }
        let spec = self.load().map_err(|error| EngineError::Config { error, running: self.spec.is_some() })?;
        if peer.addresses.is_empty() {
            peer.addresses = allocate(&spec)?;
        }
        let mut file = read_peers(&self.paths.peers_file)?;
        file.peers.push(peer);
        self.write_peers_checked(&file)
    }

    /// Remove a peer (by name or public key) from the peers file.
    pub fn remove_peer(&mut self, which: &str) -> Result<Report, EngineError> {
        if self.fleet_managed() {
            return Err(EngineError::FleetManaged);
        }
        let mut file = read_peers(&self.paths.peers_file)?;
        let before = file.peers.len();
        file.peers.retain(|p| p.name != which && p.public_key != which);
        if file.peers.len() == before {
            let in_config = self.spec.as_ref().is_some_and(|s| s.peers.values().any(|p| p.name == which || p.public_key.to_base64() == which));
            return Err(if in_config {
                EngineError::PeerInConfig { peer: which.to_string(), config: self.paths.config.clone() }
            } else {
                EngineError::NoSuchPeer(which.to_string())
            });
        }
        self.write_peers_checked(&file)
    }

    /// Validate config + candidate peers file (errors name peers.toml and
    /// its lines), then atomically replace the peers file (write a synced
    /// temporary file, rename) and reconcile. A refused candidate writes
    /// nothing.
    fn write_peers_checked(&mut self, file: &PeersFile) -> Result<Report, EngineError> {
        let text = toml::to_string_pretty(file)?;
        let spec = config::load_with_peers(&self.paths.config, Some((&self.paths.peers_file, &text)))
            .map_err(|error| EngineError::Config { error, running: self.spec.is_some() })?;
        let tmp = self.paths.peers_file.with_extension("toml.new");
        write_synced(&tmp, text.as_bytes()).map_err(|source| EngineError::Io { path: tmp.clone(), source })?;
        if let Err(source) = std::fs::rename(&tmp, &self.paths.peers_file) {
            let _ = std::fs::remove_file(&tmp);
            return Err(EngineError::Io { path: self.paths.peers_file.clone(), source });
        }
        self.last_config_error = None;
        self.install(spec)
    }

    /// Operator view of the node. Aggregates only: no endpoints, no per-peer activity.
    pub fn status(&self) -> serde_json::Value {
        let active = self.spec.as_ref().and_then(|s| self.wg.observe(&s.wg.interface).ok()).map(|o| {
            let now = SystemTime::now();
            let recent = o
                .peers
                .iter()
                .filter(|p| p.last_handshake.is_some_and(|t| now.duration_since(t).unwrap_or_default() < Duration::from_secs(180)))
                .count();
            // Sums over every peer: the only traffic figures exported.
            let rx: u64 = o.peers.iter().map(|p| p.rx_bytes).sum();
            let tx: u64 = o.peers.iter().map(|p| p.tx_bytes).sum();
            (o.exists, o.peers.len(), recent, rx, tx)
        });
        let fw_live = self.fw.fingerprint();
        let fw_error = fw_live.as_ref().err().map(|e| e.to_string());
        let fw_live = fw_live.ok().flatten();
        let table_live = fw_live.is_some() && fw_live == self.fw_fingerprint;
        let verified = table_live && self.fail_closed.is_none();
        serde_json::json!({
            "node": self.spec.as_ref().map(|s| serde_json::json!({"name": s.node.name, "region": s.node.region})),
            "version": env!("CARGO_PKG_VERSION"),
            "config_error": self.last_config_error,
            "config_source": if self.fleet.is_some() { "fleet" } else { "files" },
            "revoked": self.revoked,
            "wireguard": self.spec.as_ref().map(|s| serde_json::json!({
                "interface": s.wg.interface,
                "backend": s.wg.backend.to_string(),
                "listen_port": s.wg.listen_port,
                "public_key": self.key.as_ref().map(|k| k.public_key().to_base64()),
                "address_v4": s.wg.address_v4.to_string(),
                "address_v6": s.wg.address_v6.to_string(),
                "up": active.map(|a| a.0).unwrap_or(false),
                "peers_configured": s.peers.len(),
                "peers_on_interface": active.map(|a| a.1),
                "peers_active_3min": active.map(|a| a.2),
                "rx_bytes_total": active.map(|a| a.3),
                "tx_bytes_total": active.map(|a| a.4),
            })),
            "firewall": {
                "table": format!("inet {}", firewall::TABLE),
                "loaded": fw_live.is_some(),
                // Revoked: whether the lockdown table is the live one.
                "verified": if self.revoked { table_live } else { verified },
                "mode": if self.revoked { "lockdown" } else { "normal" },
                "error": fw_error,
            },
            // Forwarding and the tunnel follow the verified table; when it is
            // not live the node fails closed and this says why.
            "forwarding": verified,
            "fail_closed": if self.revoked { Some(REVOKED_REASON.to_string()) } else if verified { None } else {
                Some(self.fail_closed.clone().unwrap_or_else(|| "the live firewall table differs from the verified one; the next reconcile pass restores it".into()))
            },
            "last_reconcile": self.last.as_ref().map(|(t, r)| serde_json::json!({
                "unix_time": t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_secs(),
                "report": r,
            })),
        })
    }

    pub fn peers(&self) -> serde_json::Value {
        let Some(spec) = &self.spec else { return serde_json::json!([]) };
        let mut v: Vec<_> = spec
            .peers
            .values()
            .map(|p| {
                serde_json::json!({
                    "name": p.name,
                    "public_key": p.public_key.to_base64(),
                    "addresses": p.allowed_ips().iter().map(|n| n.to_string()).collect::<Vec<_>>(),
                    "tier": p.tier,
                    "preshared_key": p.preshared_key.is_some(),
                })
            })
            .collect();
        v.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
        serde_json::Value::Array(v)
    }

    /// What a client needs for its wg-quick config (its private key is not
    /// known to the node; the CLI fills it in).
    pub fn client_config(&self, which: &str) -> Result<serde_json::Value, EngineError> {
        let (Some(spec), Some(key)) = (self.spec.as_ref(), self.key.as_ref()) else {
            return Err(EngineError::NotLoaded);
        };
        let p = spec
            .peers
            .values()
            .find(|p| p.name == which || p.public_key.to_base64() == which)
            .ok_or_else(|| EngineError::NoSuchPeer(which.to_string()))?;
        let endpoint = spec.node.public_endpoint.clone().unwrap_or_else(|| {
            let addr = spec.uplinks.iter().flat_map(|u| u.addresses.iter()).find(|a| a.addr().is_ipv4());
            match addr {
                Some(a) => format!("{}:{}", a.addr(), spec.wg.listen_port),
                None => format!("<node-address>:{}", spec.wg.listen_port),
            }
        });
        Ok(serde_json::json!({
            "name": p.name,
            "addresses": p.allowed_ips().iter().map(|n| n.to_string()).collect::<Vec<_>>(),
            "dns": [spec.wg.address_v4.addr().to_string(), spec.wg.address_v6.addr().to_string()],
            "server_public_key": key.public_key().to_base64(),
            "preshared_key": p.preshared_key.as_ref().map(|k| k.to_base64().to_string()),
            "endpoint": endpoint,
            "mtu": spec.wg.mtu,
        }))
    }
}

/// The addresses the uplinks have now (DHCP, SLAAC): their on-link
/// prefixes are blocked for clients. An uplink that cannot be read
/// contributes its configured addresses only.
fn observe_uplinks(spec: &NodeSpec) -> firewall::HostFacts {
    let mut facts = firewall::HostFacts::default();
    for u in spec.uplinks.iter().filter(|u| u.block_on_link) {
        if let Ok(addrs) = crate::link::addresses(&u.interface) {
            facts.uplink_addresses.extend(addrs.into_iter().map(|a| (u.interface.clone(), a)));
        }
    }
    facts
}

/// Make `rules` the live table unless it already is (the live fingerprint
/// is the one loaded and the render is unchanged): apply, read back,
/// verify. Records drift and the apply in `r`; on failure forgets the
/// stored table and returns the message (also pushed to `r.errors`).
fn enforce_table(
    fw: &dyn Firewall,
    fw_rules: &mut Option<firewall::Ruleset>,
    fw_fingerprint: &mut Option<String>,
    rules: firewall::Ruleset,
    r: &mut Report,
) -> Result<(), String> {
    let live = fw.fingerprint();
    let in_force = match (&live, &*fw_fingerprint) {
        (Ok(Some(l)), Some(f)) if l == f => fw_rules.as_ref() == Some(&rules),
        (Ok(Some(_)), Some(_)) | (Ok(None), Some(_)) => {
            r.firewall_drift = true;
            false
        }
        _ => false,
    };
    if in_force {
        return Ok(());
    }
    let started = Instant::now();
    match fw.apply(&rules) {
        Ok(fp) => {
            *fw_fingerprint = Some(fp);
            *fw_rules = Some(rules);
            r.firewall_applied = true;
            r.firewall_apply_us = started.elapsed().as_micros() as u64;
            Ok(())
        }
        Err(e) => {
            *fw_fingerprint = None;
            *fw_rules = None;
            let msg = format!("firewall: {e}");
            r.errors.push(msg.clone());
            Err(msg)
        }
    }
}

/// Overwrite a secret file with zeros, sync, unlink, sync the directory.
/// A missing file is already destroyed.
fn destroy_file(path: &Path) -> std::io::Result<()> {
    let len = match std::fs::metadata(path) {
        Ok(m) => m.len(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    {
        let mut f = std::fs::OpenOptions::new().write(true).open(path)?;
        f.write_all(&vec![0u8; usize::try_from(len).unwrap_or(0).min(1 << 20)])?;
        f.sync_all()?;
    }
    std::fs::remove_file(path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

fn read_peers(path: &Path) -> Result<PeersFile, EngineError> {
    if !path.exists() {
        return Ok(PeersFile::default());
    }
    config::read_peers_file(path)
        .map(|(peers, _)| PeersFile { peers })
        .map_err(|error| EngineError::Config { error, running: true })
}

fn write_synced(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut f = std::fs::File::create(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// The lowest free host address in each tunnel prefix (same host index in
/// both families when possible).
pub fn allocate(spec: &NodeSpec) -> Result<Vec<IpNet>, EngineError> {
    let used4: std::collections::HashSet<_> = spec.peers.values().filter_map(|p| p.v4).collect();
    let used6: std::collections::HashSet<_> = spec.peers.values().filter_map(|p| p.v6).collect();
    let net4 = spec.wg.address_v4.trunc();
    let net6 = spec.wg.address_v6.trunc();
    let base4 = u32::from(net4.network());
    let base6 = u128::from(net6.network());
    let size4 = 1u64 << (32 - net4.prefix_len());
    for i in 2..size4.saturating_sub(1) {
        let a4 = std::net::Ipv4Addr::from(base4 + i as u32);
        let a6 = std::net::Ipv6Addr::from(base6 + i as u128);
        if a4 == spec.wg.address_v4.addr() || used4.contains(&a4) || used6.contains(&a6) || a6 == spec.wg.address_v6.addr() {
            continue;
        }
        return Ok(vec![
            IpNet::V4(Ipv4Net::new(a4, 32).expect("valid")),
            IpNet::V6(Ipv6Net::new(a6, 128).expect("valid")),
        ]);
    }
    Err(EngineError::PrefixFull(net4))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::firewall::RecordingFirewall;
    use crate::wg::RecordingWg;

    fn engine(dir: &Path) -> Engine {
        std::fs::write(dir.join("node.toml"), include_str!("../../../configs/node.toml")).unwrap();
        Engine::new(Paths::new(dir, None), Box::new(RecordingWg::default()), Box::new(RecordingFirewall::default()), false)
    }

    #[test]
    fn reload_converges_and_second_pass_does_nothing() {
        let d = tempfile::tempdir().unwrap();
        let mut e = engine(d.path());
        let r = e.reload().unwrap();
        assert!(r.firewall_applied && r.wg_interface_changed);
        assert_eq!(r.wg_peer_changes, 2);
        let r2 = e.reconcile();
        assert_eq!(r2, Report { duration_us: r2.duration_us, firewall_verified: true, ..Default::default() });
        assert!(e.plan().unwrap().is_empty());
    }

    /// A reload of unchanged files keeps the running spec and still makes a
    /// pass; an edit is picked up; after a spec installed another way (here
    /// `peers add`), files equal to those of an earlier reload are loaded again.
    #[test]
    fn reload_of_unchanged_files_keeps_the_spec_and_a_change_of_source_forgets_them() {
        let d = tempfile::tempdir().unwrap();
        let mut e = engine(d.path());
        let pf = d.path().join("peers.toml");
        let k1 = PrivateKey::generate().public_key().to_base64();
        let t1 = format!("[[peer]]\nname = \"a\"\npublic_key = \"{k1}\"\naddresses = [\"10.66.0.9/32\"]\n");
        std::fs::write(&pf, &t1).unwrap();
        assert_eq!(e.reload().unwrap().wg_peer_changes, 3);
        let r = e.reload().unwrap();
        assert_eq!((r.wg_peer_changes, r.firewall_verified), (0, true), "{r:?}");
        assert_eq!(e.spec().unwrap().peers.len(), 3);
        std::fs::write(&pf, t1.replace("10.66.0.9/32", "10.66.0.10/32")).unwrap();
        assert_eq!(e.reload().unwrap().wg_peer_changes, 1, "the moved peer");
        std::fs::write(&pf, &t1).unwrap();
        assert_eq!(e.reload().unwrap().wg_peer_changes, 1, "moved back");
        let k2 = PrivateKey::generate().public_key().to_base64();
        e.add_peer(PeerSection { name: "b".into(), public_key: k2, addresses: vec![], tier: None, preshared_key: None }).unwrap();
        assert_eq!(e.spec().unwrap().peers.len(), 4);
        std::fs::write(&pf, &t1).unwrap();
        let r = e.reload().unwrap();
        assert_eq!(r.wg_peer_changes, 1, "the file is that of the earlier reload, not of the running spec: {r:?}");
        assert_eq!(e.spec().unwrap().peers.len(), 3);
    }

    #[test]
    fn failed_firewall_fails_closed_and_recovers_by_itself() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("node.toml"), include_str!("../../../configs/node.toml")).unwrap();
        let fw = RecordingFirewall::default();
        let refuse = fw.refuse.clone();
        refuse.store(true, std::sync::atomic::Ordering::SeqCst);
        let mut e = Engine::new(Paths::new(d.path(), None), Box::new(RecordingWg::default()), Box::new(fw), false);
        let r = e.reload().unwrap();
        assert!(!r.firewall_verified && !r.firewall_applied, "{r:?}");
        assert!(r.errors.iter().any(|x| x.contains("refused by the test")), "{r:?}");
        assert_eq!(r.wg_peer_changes, 0, "no peer is configured while failing closed");
        let st = e.status();
        assert_eq!(st["forwarding"], false);
        assert_eq!(st["firewall"]["verified"], false);
        let why = st["fail_closed"].as_str().unwrap();
        assert!(why.contains("refused by the test") && why.contains("forwarding is off"), "{why}");
        // Still failing: still closed, and it keeps trying.
        assert!(!e.reconcile().firewall_verified);
        refuse.store(false, std::sync::atomic::Ordering::SeqCst);
        let r = e.reconcile();
        assert!(r.firewall_applied && r.firewall_verified, "{r:?}");
        assert_eq!(r.wg_peer_changes, 2, "the peers come back with the verified table");
        let st = e.status();
        assert_eq!(st["forwarding"], true);
        assert!(st["fail_closed"].is_null(), "{st}");
    }

    #[test]
    fn plan_before_any_reload_creates_no_key_file() {
        let d = tempfile::tempdir().unwrap();
        let e = engine(d.path());
        let lines = e.plan().unwrap();
        assert!(lines.iter().any(|l| l.starts_with("+ interface")), "{lines:?}");
        assert!(!d.path().join("wg0.key").exists(), "plan must not write the node key");
    }

    #[test]
    fn bad_config_keeps_last_good_state() {
        let d = tempfile::tempdir().unwrap();
        let mut e = engine(d.path());
        e.reload().unwrap();
        let good = e.spec().unwrap().clone();
        std::fs::write(d.path().join("node.toml"), "[node]\nname = 'x'\n").unwrap();
        let err = e.reload().unwrap_err();
        assert_eq!(err.kind(), crate::control::ErrorKind::InvalidConfig);
        let err = err.to_string();
        assert!(err.contains("node.toml") && err.contains("last good config keeps running"), "{err}");
        assert_eq!(e.spec().unwrap(), &good);
        assert!(e.status()["config_error"].is_string());
    }

    #[test]
    fn peers_add_remove_persist_and_refuse_bad_input() {
        let d = tempfile::tempdir().unwrap();
        let mut e = engine(d.path());
        e.reload().unwrap();
        let k = PrivateKey::generate().public_key().to_base64();
        let r = e
            .add_peer(PeerSection { name: "new".into(), public_key: k.clone(), addresses: vec![], tier: None, preshared_key: None })
            .unwrap();
        assert_eq!(r.wg_peer_changes, 1, "only the new peer is touched");
        let saved = std::fs::read_to_string(d.path().join("peers.toml")).unwrap();
        assert!(saved.contains(&k) && saved.contains("10.66.0.4/32"), "{saved}");
        // Duplicate key: refused, file unchanged, no temp file left.
        let err = e
            .add_peer(PeerSection { name: "dup".into(), public_key: k.clone(), addresses: vec![], tier: None, preshared_key: None })
            .unwrap_err();
        assert_eq!(err.kind(), crate::control::ErrorKind::InvalidConfig);
        let err = err.to_string();
        // The error names the real file and the candidate's line, though
        // nothing was written.
        assert!(err.contains("duplicate public key") && err.contains("peers.toml:") && !err.contains("peers.toml.new"), "{err}");
        assert_eq!(std::fs::read_to_string(d.path().join("peers.toml")).unwrap(), saved);
        assert!(!d.path().join("peers.toml.new").exists());
        let r = e.remove_peer("new").unwrap();
        assert_eq!(r.wg_peer_changes, 1);
        let err = e.remove_peer("laptop-1").unwrap_err();
        assert_eq!(err.kind(), crate::control::ErrorKind::NotFound);
        assert!(err.to_string().contains("node.toml"), "{err}");
        assert!(matches!(e.remove_peer("nobody").unwrap_err(), EngineError::NoSuchPeer(n) if n == "nobody"));
    }

    #[test]
    fn status_and_client_config_hold_no_endpoints() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("node.toml"), include_str!("../../../configs/node.toml")).unwrap();
        let wg = RecordingWg::with_connected_clients();
        let mut e = Engine::new(Paths::new(d.path(), None), Box::new(wg), Box::new(RecordingFirewall::default()), false);
        let r = e.reload().unwrap();
        // Both clients are connected: endpoints known, handshakes fresh, so a
        // leak of either would show below.
        let iface = e.spec().unwrap().wg.interface.clone();
        let seen = e.wg.observe(&iface).unwrap();
        let endpoints: Vec<String> = seen.peers.iter().filter_map(|p| p.endpoint.map(|x| x.0.ip().to_string())).collect();
        assert_eq!(endpoints.len(), 2, "{seen:?}");
        let s = e.status();
        assert_eq!(s["wireguard"]["peers_active_3min"], 2, "{s}");
        assert!(s.to_string().contains("\"peers_configured\":2"), "{s}");

        let c = e.client_config("laptop-1").unwrap();
        assert_eq!(c["addresses"][0], "10.66.0.2/32");
        assert_eq!(c["endpoint"], "203.0.113.10:51820");
        let r2 = e.reconcile();
        let outputs = [
            ("status", s.to_string()),
            ("peers", e.peers().to_string()),
            ("plan", e.plan().unwrap().join("\n")),
            ("client-config laptop-1", c.to_string()),
            ("client-config phone-1", e.client_config("phone-1").unwrap().to_string()),
            ("reload report", serde_json::to_string(&r).unwrap()),
            ("reconcile report", serde_json::to_string(&r2).unwrap()),
            ("reload report (Debug)", format!("{r:?}")),
        ];
        for (what, text) in &outputs {
            for ep in &endpoints {
                assert!(!text.contains(ep.as_str()), "{what} holds client endpoint {ep}: {text}");
            }
        }
    }

    /// Shares a fake with the test while the engine owns it.
    struct Shared<T>(std::sync::Arc<T>);

    impl<T: WgControl> WgControl for Shared<T> {
        fn observe(&self, iface: &str) -> Result<wg::ObservedDevice, wg::WgError> {
            self.0.observe(iface)
        }
        fn apply(&self, iface: &str, plan: &WgPlan, key: &PrivateKey) -> Result<(), wg::WgError> {
            self.0.apply(iface, plan, key)
        }
        fn delete(&self, iface: &str) -> Result<bool, wg::WgError> {
            self.0.delete(iface)
        }
    }

    impl<T: Firewall> Firewall for Shared<T> {
        fn apply(&self, rules: &firewall::Ruleset) -> Result<String, firewall::FirewallError> {
            self.0.apply(rules)
        }
        fn fingerprint(&self) -> Result<Option<String>, firewall::FirewallError> {
            self.0.fingerprint()
        }
    }

    type Fakes = (std::sync::Arc<RecordingWg>, std::sync::Arc<RecordingFirewall>);

    fn shared_engine(dir: &Path) -> (Engine, Fakes) {
        std::fs::write(dir.join("node.toml"), include_str!("../../../configs/node.toml")).unwrap();
        let wg = std::sync::Arc::new(RecordingWg::default());
        let fw = std::sync::Arc::new(RecordingFirewall::default());
        let e = Engine::new(Paths::new(dir, None), Box::new(Shared(wg.clone())), Box::new(Shared(fw.clone())), false);
        (e, (wg, fw))
    }

    /// The example config split as the fleet carries it: the text without
    /// `[[peer]]` tables, and the peers as values (from grants).
    fn fleet_example() -> FleetConfig {
        let text = include_str!("../../../configs/node.toml");
        let (head, rest) = text.split_at(text.find("[[peer]]").unwrap());
        let tail = &rest[rest.find("[egress]").unwrap()..];
        let peers = config::parse_peers(&rest[..rest.find("[egress]").unwrap()], Path::new("x")).unwrap();
        FleetConfig { source: PathBuf::from("fleet:nodes/0123456789abcdef/config.toml"), text: format!("{head}{tail}"), peers }
    }

    fn peer(name: &str, key: [u8; 32], addr: &str) -> PeerSection {
        let key = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, key);
        PeerSection { name: name.into(), public_key: key, addresses: vec![addr.parse().unwrap()], tier: None, preshared_key: None }
    }

    #[test]
    fn fleet_config_replaces_the_files_hot_and_is_validated_like_them() {
        let d = tempfile::tempdir().unwrap();
        let (mut e, (wg, _fw)) = shared_engine(d.path());
        e.reload().unwrap();
        let applied = wg.applied.lock().unwrap().len();
        // The same desired state from the fleet: nothing to do, sessions stay.
        let r = e.set_fleet(Some(fleet_example())).unwrap();
        assert!(e.fleet_managed());
        assert_eq!((r.wg_peer_changes, r.wg_interface_changed), (0, false), "{r:?}");
        assert_eq!(wg.applied.lock().unwrap().len(), applied, "no WireGuard operation at all");
        assert_eq!(e.status()["config_source"], "fleet");

        // node.toml is no longer read: breaking it changes nothing.
        std::fs::write(d.path().join("node.toml"), "garbage = [").unwrap();
        e.reload().expect("reload re-validates the fleet config, not node.toml");
        assert!(e.plan().unwrap().is_empty(), "{:?}", e.plan());

        // One more grant: exactly one peer change.
        let mut f = fleet_example();
        f.peers.push(peer("grant-3", [7; 32], "10.66.0.9/32"));
        let r = e.set_fleet(Some(f.clone())).unwrap();
        assert_eq!((r.wg_peer_changes, r.wg_interface_changed), (1, false), "{r:?}");
        let good = e.spec().unwrap().clone();

        // A bad text is refused with its source and line; nothing changes.
        let mut bad = f.clone();
        bad.text = bad.text.replace("listen_port = 51820", "listen_port = 0");
        let err = e.set_fleet(Some(bad)).unwrap_err();
        assert_eq!(err.kind(), crate::control::ErrorKind::InvalidConfig);
        let msg = err.to_string();
        assert!(msg.contains("fleet:nodes/0123456789abcdef/config.toml:16: wireguard.listen_port"), "{msg}");
        assert!(msg.contains("last good config keeps running"), "{msg}");
        assert_eq!(e.spec().unwrap(), &good);
        // A bad grant names the grants and the peer.
        let mut bad = f.clone();
        bad.peers.push(peer("grant-4", [8; 32], "10.66.0.9/32"));
        let msg = e.set_fleet(Some(bad)).unwrap_err().to_string();
        assert!(msg.contains("fleet:grants: peer 'grant-4'.addresses: 10.66.0.9/32 overlaps the AllowedIPs of peer 'grant-3'"), "{msg}");
        assert_eq!(e.spec().unwrap(), &good);
        e.reload().expect("the refused candidates did not replace the stored fleet config");
        assert_eq!(e.spec().unwrap(), &good);

        // Peers are the fleet's.
        let err = e.add_peer(peer("local", [9; 32], "10.66.0.10/32")).unwrap_err();
        assert_eq!(err.kind(), crate::control::ErrorKind::FleetManaged);
        assert!(err.to_string().contains("palisade-fleet grant issue/revoke"), "{err}");
        assert_eq!(e.remove_peer("laptop-1").unwrap_err().kind(), crate::control::ErrorKind::FleetManaged);
        assert!(!d.path().join("peers.toml").exists());

        // Back to the files: refused while they are broken (still fleet), then taken.
        assert!(e.set_fleet(None).unwrap_err().to_string().contains("node.toml"));
        assert!(e.fleet_managed());
        std::fs::write(d.path().join("node.toml"), include_str!("../../../configs/node.toml")).unwrap();
        let r = e.set_fleet(None).unwrap();
        assert!(!e.fleet_managed());
        assert_eq!(r.wg_peer_changes, 1, "grant-3 goes: {r:?}");
    }

    /// 10k peers through set_fleet with the fake backends. Prints the time;
    /// no timed assertion (the machine decides), but validation and the
    /// diff must stay linear-ish for this to finish in well under a second
    /// in release.
    #[test]
    fn set_fleet_with_10k_peers() {
        let d = tempfile::tempdir().unwrap();
        let (mut e, (wg, _fw)) = shared_engine(d.path());
        e.reload().unwrap();
        let mut f = fleet_example();
        for i in 0..10_000u32 {
            let mut k = [0x5au8; 32];
            k[..4].copy_from_slice(&i.to_be_bytes());
            let host = 10 + i;
            let mut p = peer(&format!("grant-{i}"), k, &format!("10.66.{}.{}/32", host >> 8, host & 0xff));
            p.addresses.push(format!("fd66::{:x}/128", host).parse().unwrap());
            f.peers.push(p);
        }
        let t = Instant::now();
        let r = e.set_fleet(Some(f.clone())).unwrap();
        let first = t.elapsed();
        assert_eq!(r.wg_peer_changes, 10_000, "{:?}", r.errors);
        assert_eq!(wg.observe("wg0").unwrap().peers.len(), 10_002);
        // The same again, one grant gone: one change.
        f.peers.remove(5_000);
        let t = Instant::now();
        let r = e.set_fleet(Some(f)).unwrap();
        let second = t.elapsed();
        assert_eq!((r.wg_peer_changes, r.wg_interface_changed), (1, false));
        // A refused 10k candidate is refused as fast (errors are located lazily).
        let mut bad = fleet_example();
        bad.peers = (0..10_000u32).map(|i| peer(&format!("dup-{i}"), [0x33; 32], &format!("10.66.1.{}/32", 2 + i % 200))).collect();
        let t = Instant::now();
        let err = e.set_fleet(Some(bad)).unwrap_err();
        let refused = t.elapsed();
        assert!(err.to_string().contains("duplicate public key"), "{}", &err.to_string()[..200]);
        eprintln!("set_fleet 10k peers: first {first:?}, one removed {second:?}, refused candidate {refused:?}");
    }

    #[test]
    fn revoked_locks_down_destroys_the_key_and_stays_down() {
        let d = tempfile::tempdir().unwrap();
        let (mut e, (wg, fw)) = shared_engine(d.path());
        e.reload().unwrap();
        let key_file = d.path().join("wg0.key");
        let old_key = std::fs::read_to_string(&key_file).unwrap();
        assert!(wg.observe("wg0").unwrap().exists);

        let r = e.set_revoked(true);
        assert!(e.revoked());
        assert!(r.firewall_applied && r.wg_interface_changed && r.errors.is_empty(), "{r:?}");
        assert!(!r.firewall_verified, "forwarding is off");
        assert!(!wg.observe("wg0").unwrap().exists, "the interface is deleted");
        assert_eq!(*wg.deleted.lock().unwrap(), 1);
        assert!(!key_file.exists(), "the key file is destroyed");
        assert_eq!(fw.fingerprint().unwrap().unwrap(), firewall::render_lockdown().script());
        let st = e.status();
        assert_eq!(st["revoked"], true);
        assert_eq!(st["forwarding"], false);
        assert_eq!(st["fail_closed"], REVOKED_REASON);
        assert_eq!(st["firewall"]["mode"], "lockdown");
        assert_eq!(st["firewall"]["verified"], true, "the lockdown table is the live one: {st}");
        assert!(st["wireguard"]["public_key"].is_null());

        // Idempotent, and drift is repaired with the lockdown table.
        let r = e.reconcile();
        assert!(!r.firewall_applied && !r.wg_interface_changed && r.errors.is_empty(), "{r:?}");
        *fw.live.lock().unwrap() = Some("flushed by someone".into());
        let r = e.reconcile();
        assert!(r.firewall_drift && r.firewall_applied, "{r:?}");
        assert_eq!(fw.fingerprint().unwrap().unwrap(), firewall::render_lockdown().script());

        // Reload and a new fleet config are stored, never applied.
        let mut f = fleet_example();
        f.peers.push(peer("grant-3", [7; 32], "10.66.0.9/32"));
        e.reload().unwrap();
        e.set_fleet(Some(f)).unwrap();
        assert!(e.reconcile().errors.is_empty());
        assert!(!wg.observe("wg0").unwrap().exists, "the tunnel never comes back while revoked");
        assert!(!key_file.exists(), "no key is made while revoked");
        assert_eq!(e.spec().unwrap().peers.len(), 3, "the spec is stored");
        assert!(e.plan().unwrap()[0].contains(REVOKED_REASON));

        // Re-enrolled: a new key, the normal table, the tunnel with the stored spec.
        let r = e.set_revoked(false);
        assert!(r.firewall_applied && r.firewall_verified && r.errors.is_empty(), "{r:?}");
        let new_key = std::fs::read_to_string(&key_file).unwrap();
        assert_ne!(new_key, old_key, "a new key after re-enrolment");
        let obs = wg.observe("wg0").unwrap();
        assert!(obs.exists && obs.peers.len() == 3, "{obs:?}");
        let st = e.status();
        assert_eq!((st["revoked"].clone(), st["forwarding"].clone()), (serde_json::json!(false), serde_json::json!(true)), "{st}");
        assert_eq!(st["firewall"]["mode"], "normal");
    }

    #[test]
    fn revoked_before_any_config_still_locks_down() {
        let d = tempfile::tempdir().unwrap();
        let (mut e, (wg, fw)) = shared_engine(d.path());
        let r = e.set_revoked(true);
        assert!(r.firewall_applied, "{r:?}");
        assert_eq!(fw.fingerprint().unwrap().unwrap(), firewall::render_lockdown().script());
        // A key file left from before (the daemon restarted) goes once the spec names it.
        std::fs::write(d.path().join("wg0.key"), PrivateKey::generate().public_key().to_base64()).unwrap();
        e.reload().unwrap();
        assert!(!d.path().join("wg0.key").exists());
        assert!(!wg.observe("wg0").unwrap().exists);
        assert_eq!(e.status()["fail_closed"], REVOKED_REASON);
    }

}
