//! Node configuration: the TOML file format, strict parsing, validation, and
//! the validated [`NodeSpec`] every planner works from.
//!
//! Parsing ([`NodeConfig::from_str`]) is separate from reading a file
//! ([`load`]) and from validation ([`NodeConfig::validate`]). Every error names
//! the file, the line and the field that was wrong.

mod dns;
mod keys;
mod loader;
mod validate;

pub use dns::{
    DnsBlockMode, DnsListSection, DnsSection, DnsTierSection, DnsUpstreamProtocol, DnsUpstreamSection,
};
pub use keys::{KeyError, PresharedKey, PrivateKey, PublicKey};
pub use loader::{LoadStats, Loaded, Loader};
pub use validate::{default_blocked, NodeSpec, PeerSpec};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::{Path, PathBuf};

/// The node config file, as written by an operator (`configs/*.toml`).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    pub node: NodeSection,
    #[serde(default, rename = "uplink")]
    pub uplinks: Vec<UplinkSection>,
    pub wireguard: WireguardSection,
    #[serde(default, rename = "peer")]
    pub peers: Vec<PeerSection>,
    #[serde(default)]
    pub egress: EgressSection,
    #[serde(default)]
    pub management: ManagementSection,
    #[serde(default)]
    pub dns: DnsSection,
    #[serde(default)]
    pub update: UpdateSection,
    #[serde(default)]
    pub uplink_health: UplinkHealthSection,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NodeSection {
    /// Short node name, shown in status and client configs.
    pub name: String,
    #[serde(default)]
    pub region: String,
    /// Public host name or address clients use as their endpoint (client configs only).
    #[serde(default)]
    pub public_endpoint: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct UplinkSection {
    /// Kernel interface name, e.g. `eth0`.
    pub interface: String,
    /// Static addresses with prefix length (`203.0.113.10/24`). Empty with `dhcp = true`.
    #[serde(default)]
    pub addresses: Vec<IpNet>,
    #[serde(default)]
    pub gateway_v4: Option<std::net::Ipv4Addr>,
    #[serde(default)]
    pub gateway_v6: Option<std::net::Ipv6Addr>,
    #[serde(default)]
    pub dhcp: bool,
    /// Lower is preferred when several uplinks are configured.
    #[serde(default)]
    pub priority: u32,
    /// Block clients from the uplink's own on-link prefixes (the node's
    /// neighbours on the provider's LAN: other tenants, the router's admin
    /// side). Set false only where that LAN is meant to be reachable.
    #[serde(default = "yes")]
    pub block_on_link: bool,
    /// Addresses probed (ICMP echo) through this uplink only; the uplink is
    /// healthy while one of them answers (docs/failover.md). Empty: carrier
    /// and address only.
    #[serde(default)]
    pub probe_targets: Vec<std::net::IpAddr>,
}

/// `[uplink_health]`: how uplinks are probed and when the default route
/// moves between them (docs/failover.md).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct UplinkHealthSection {
    /// Milliseconds between probe rounds (one echo to each target per round).
    #[serde(default = "default_probe_interval")]
    pub interval_ms: u64,
    /// Milliseconds an echo may take; at most `interval_ms`.
    #[serde(default = "default_probe_timeout")]
    pub timeout_ms: u64,
    /// Failed rounds in a row that make an uplink unhealthy.
    #[serde(default = "default_fall")]
    pub fall: u32,
    /// Answered rounds in a row that make an unhealthy uplink healthy again.
    #[serde(default = "default_rise")]
    pub rise: u32,
    /// Seconds a recovered, preferred uplink must stay healthy before the
    /// default route returns to it, and the least time between two returns:
    /// a flapping link moves clients at most once per period.
    #[serde(default = "default_hold_down")]
    pub hold_down_secs: u64,
}

impl Default for UplinkHealthSection {
    fn default() -> Self {
        UplinkHealthSection {
            interval_ms: default_probe_interval(),
            timeout_ms: default_probe_timeout(),
            fall: default_fall(),
            rise: default_rise(),
            hold_down_secs: default_hold_down(),
        }
    }
}

fn default_probe_interval() -> u64 {
    500
}
fn default_probe_timeout() -> u64 {
    400
}
fn default_fall() -> u32 {
    3
}
fn default_rise() -> u32 {
    3
}
fn default_hold_down() -> u64 {
    30
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum WgBackend {
    /// Kernel WireGuard through netlink (the node image).
    #[default]
    Kernel,
    /// A userspace implementation (wireguard-go) through its UAPI socket.
    Userspace,
}

impl fmt::Display for WgBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            WgBackend::Kernel => "kernel",
            WgBackend::Userspace => "userspace",
        })
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WireguardSection {
    #[serde(default = "default_wg_interface")]
    pub interface: String,
    #[serde(default = "default_listen_port")]
    pub listen_port: u16,
    /// The node's own tunnel address; its prefix is the IPv4 tunnel prefix.
    pub address_v4: IpNet,
    /// The node's own tunnel address; its prefix is the IPv6 tunnel prefix.
    pub address_v6: IpNet,
    /// Private key file, relative to the state directory unless absolute.
    /// Generated in process on first start (mode 0600) when absent.
    #[serde(default = "default_key_file")]
    pub private_key_file: PathBuf,
    #[serde(default)]
    pub backend: WgBackend,
    /// A globally routed IPv6 prefix for clients: when set, IPv6 is routed, not NAT66'd.
    #[serde(default)]
    pub routed_prefix_v6: Option<IpNet>,
    #[serde(default = "default_mtu")]
    pub mtu: u32,
}

fn default_wg_interface() -> String {
    "wg0".into()
}
fn default_listen_port() -> u16 {
    51820
}
fn default_key_file() -> PathBuf {
    PathBuf::from("wg0.key")
}
fn default_mtu() -> u32 {
    1420
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PeerSection {
    /// Operator's label for the peer (never a person's identity; shown in `peers list`).
    pub name: String,
    pub public_key: String,
    /// Exactly one IPv4 /32 and/or one IPv6 /128 inside the tunnel prefixes.
    pub addresses: Vec<IpNet>,
    #[serde(default)]
    pub tier: Option<String>,
    #[serde(default)]
    pub preshared_key: Option<String>,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
    Icmp,
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Icmp => "icmp",
        })
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AllowRule {
    pub cidr: IpNet,
    /// Absent: every protocol.
    #[serde(default)]
    pub protocol: Option<Protocol>,
    /// Destination ports; empty: every port. Needs `protocol` tcp or udp.
    #[serde(default)]
    pub ports: Vec<u16>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct EgressSection {
    /// Replaces the default blocked list when present (see [`default_blocked`]).
    #[serde(default)]
    pub blocked: Option<Vec<IpNet>>,
    /// Added to the blocked list (default or given).
    #[serde(default)]
    pub extra_blocked: Vec<IpNet>,
    /// Exceptions that win over `blocked`.
    #[serde(default)]
    pub allow: Vec<AllowRule>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ManagementSection {
    /// Source prefixes of the management mesh; only they may reach node services.
    #[serde(default)]
    pub mesh: Vec<IpNet>,
    /// TCP ports of node services reachable from the mesh (SSH, metrics, API).
    #[serde(default = "default_mgmt_ports")]
    pub ports: Vec<u16>,
    /// The metrics endpoint (Prometheus text over mutual TLS, docs/metrics.md):
    /// an address the node holds on an uplink, with a port of `ports`.
    /// Absent: no endpoint.
    #[serde(default)]
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// PEM bundle of the CA certificates scrapers' certificates must chain
    /// to, relative to the state directory unless absolute. A fleet
    /// repository's `mesh/anchors.pem` takes precedence over it.
    #[serde(default = "default_metrics_anchors")]
    pub metrics_anchors_file: PathBuf,
    /// Longest lifetime (notAfter - notBefore) of a scraper's certificate:
    /// `90s`, `30m`, `24h`, `7d`.
    #[serde(default = "default_metrics_lifetime")]
    pub metrics_max_cert_lifetime: String,
}

impl Default for ManagementSection {
    fn default() -> Self {
        ManagementSection {
            mesh: Vec::new(),
            ports: default_mgmt_ports(),
            metrics_listen: None,
            metrics_anchors_file: default_metrics_anchors(),
            metrics_max_cert_lifetime: default_metrics_lifetime(),
        }
    }
}

impl ManagementSection {
    /// `metrics_max_cert_lifetime` as a duration; `None` if it does not parse.
    pub fn max_cert_lifetime(&self) -> Option<std::time::Duration> {
        parse_duration(&self.metrics_max_cert_lifetime)
    }
}

fn default_metrics_anchors() -> PathBuf {
    PathBuf::from("mesh-anchors.pem")
}

fn default_metrics_lifetime() -> String {
    "24h".into()
}

/// `<n>s`, `<n>m`, `<n>h` or `<n>d` (a positive whole number and one unit).
pub fn parse_duration(s: &str) -> Option<std::time::Duration> {
    let s = s.trim();
    let unit = s.chars().last()?;
    let mult = match unit {
        's' => 1,
        'm' => 60,
        'h' => 3600,
        'd' => 86_400,
        _ => return None,
    };
    let n: u64 = s[..s.len() - 1].parse().ok()?;
    if n == 0 {
        return None;
    }
    Some(std::time::Duration::from_secs(n.checked_mul(mult)?))
}

fn default_mgmt_ports() -> Vec<u16> {
    vec![22, 9100]
}

/// `[update]`: where the node pulls signed updates from (docs/updates.md).
/// Without `repository` the node never updates by itself; `palisade update
/// apply` still works with a repository URL.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct UpdateSection {
    /// Base URL of the TUF repository (`http://`, `https://` or `file://`);
    /// metadata under `metadata/`, targets under `targets/`.
    #[serde(default)]
    pub repository: Option<String>,
    /// Seconds between polls (a random 0..20 % is added to each).
    #[serde(default = "default_update_poll")]
    pub poll_secs: u64,
    /// Install by the signed rollout schedule. `false`: only `palisade update apply`.
    #[serde(default = "default_true")]
    pub auto: bool,
    /// PEM CA bundle for an `https://` repository (default: the Web PKI roots).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

impl Default for UpdateSection {
    fn default() -> Self {
        UpdateSection { repository: None, poll_secs: default_update_poll(), auto: true, ca_file: None }
    }
}

fn default_update_poll() -> u64 {
    300
}

fn default_true() -> bool {
    true
}

/// Where an error was found: file, line (1-based, when known) and field path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub file: PathBuf,
    pub line: Option<usize>,
    pub field: String,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(l) = self.line {
            write!(f, ":{l}")?;
        }
        if !self.field.is_empty() {
            write!(f, ": {}", self.field)?;
        }
        Ok(())
    }
}

/// A config that cannot be used. Nothing is applied when one is returned.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{at}: {message}")]
    Syntax { at: Location, message: String },
    #[error("{at}: {message}")]
    Invalid { at: Location, message: String },
    #[error("config has {} errors:\n{}", .0.len(), .0.iter().map(|e| format!("  {e}")).collect::<Vec<_>>().join("\n"))]
    Many(Vec<ConfigError>),
}

impl NodeConfig {
    /// Parse TOML text. `file` is used only to name the source in errors.
    pub fn from_str(text: &str, file: &Path) -> Result<NodeConfig, ConfigError> {
        toml::from_str::<NodeConfig>(text).map_err(|e| {
            let line = e.span().map(|s| line_of(text, s.start));
            let field = e.span().map(|s| field_at(text, s.start)).unwrap_or_default();
            ConfigError::Syntax {
                at: Location { file: file.to_path_buf(), line, field },
                message: e.message().to_string(),
            }
        })
    }
}

/// Read and parse a config file (no validation).
pub fn read(path: &Path) -> Result<(NodeConfig, String), ConfigError> {
    let text = read_text(path)?;
    let cfg = NodeConfig::from_str(&text, path)?;
    Ok((cfg, text))
}

/// Read, parse and validate a node config plus the peers file the CLI
/// maintains (`peers_file`, optional), into the desired state.
pub fn load(path: &Path, peers_file: Option<&Path>) -> Result<NodeSpec, ConfigError> {
    let peers = match peers_file {
        Some(pf) if pf.exists() => Some((pf, read_text(pf)?)),
        _ => None,
    };
    load_with_peers(path, peers.as_ref().map(|(p, t)| (*p, t.as_str())))
}

/// Like [`load`], with the peers file's text given (a candidate not yet
/// written); errors in it name `peers.0`.
pub fn load_with_peers(path: &Path, peers: Option<(&Path, &str)>) -> Result<NodeSpec, ConfigError> {
    load_texts(path, read_text(path)?, peers)
}

/// A file's text; an error names the file.
pub(crate) fn read_text(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })
}

/// Like [`load_with_peers`], with node.toml's text given too (already read
/// from `path`).
pub(crate) fn load_texts(path: &Path, text: String, peers: Option<(&Path, &str)>) -> Result<NodeSpec, ConfigError> {
    let mut cfg = NodeConfig::from_str(&text, path)?;
    let mut sources = vec![(path.to_path_buf(), text, cfg.peers.len())];
    if let Some((pf, ptext)) = peers {
        let more = parse_peers(ptext, pf)?;
        sources.push((pf.to_path_buf(), ptext.to_string(), more.len()));
        cfg.peers.extend(more);
    }
    cfg.validate_with_sources(&sources)
}

/// A node config given as text rather than read from a file (the fleet
/// repository's `nodes/<id>/config.toml`), plus peers given as values (the
/// node's client grants). Validated exactly like [`load`]: errors in the
/// text name `source` and the line; errors in `peers` name `peers_source`
/// and the peer by its name (they have no text, so no line).
pub fn load_from_text(source: &Path, text: &str, peers: &[PeerSection], peers_source: &Path) -> Result<NodeSpec, ConfigError> {
    let mut cfg = NodeConfig::from_str(text, source)?;
    let mut sources = vec![(source.to_path_buf(), text.to_string(), cfg.peers.len())];
    if !peers.is_empty() {
        sources.push((peers_source.to_path_buf(), String::new(), peers.len()));
        cfg.peers.extend_from_slice(peers);
    }
    cfg.validate_with_sources(&sources)
}

/// The peers file written by `palisade peers add`: `[[peer]]` tables only.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct PeersFile {
    #[serde(default, rename = "peer")]
    pub peers: Vec<PeerSection>,
}

pub fn read_peers_file(path: &Path) -> Result<(Vec<PeerSection>, String), ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
    let peers = parse_peers(&text, path)?;
    Ok((peers, text))
}

/// Parse a peers file's text (`file` names it in errors).
pub fn parse_peers(text: &str, file: &Path) -> Result<Vec<PeerSection>, ConfigError> {
    let pf: PeersFile = toml::from_str(text).map_err(|e| ConfigError::Syntax {
        at: Location {
            file: file.to_path_buf(),
            line: e.span().map(|s| line_of(text, s.start)),
            field: e.span().map(|s| field_at(text, s.start)).unwrap_or_default(),
        },
        message: e.message().to_string(),
    })?;
    Ok(pf.peers)
}

pub(crate) fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].bytes().filter(|b| *b == b'\n').count() + 1
}

/// The field a parser error at `offset` is about, as far as the text shows it:
/// `table.key` for a `key = value` line (the table from the nearest header
/// above), the table for a header line, empty for anything else (a value
/// continued over several lines, a malformed header).
pub(crate) fn field_at(text: &str, offset: usize) -> String {
    let offset = offset.min(text.len());
    let start = text[..offset].rfind('\n').map_or(0, |i| i + 1);
    let header = |l: &str| -> Option<String> {
        let l = l.trim();
        let inner = l.strip_prefix("[[").and_then(|r| r.strip_suffix("]]"));
        let inner = inner.or_else(|| l.strip_prefix('[').and_then(|r| r.strip_suffix(']')))?;
        let inner = inner.trim();
        (!inner.is_empty() && inner.chars().all(|c| c.is_ascii_alphanumeric() || "._-\"".contains(c)))
            .then(|| inner.to_string())
    };
    let bare_key = |k: &str| !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
    let line = text[start..].lines().next().unwrap_or_default();
    let line = line.split(" #").next().unwrap_or_default();
    if let Some(h) = header(line) {
        return h;
    }
    let Some(key) = line.split_once('=').map(|(k, _)| k.trim()).filter(|k| bare_key(k)) else {
        return String::new();
    };
    let table = text[..start].lines().rev().find_map(header);
    match table {
        Some(t) => format!("{t}.{key}"),
        None => key.to_string(),
    }
}

#[cfg(test)]
mod tests;
