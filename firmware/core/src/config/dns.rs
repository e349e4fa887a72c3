//! The `[dns]` section of the node config (file format only; the resolver
//! itself lives in the `palisade-dns` crate, which palisaded feeds from this).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DnsSection {
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Upstreams, tried in order with failover. Empty: every query gets SERVFAIL.
    #[serde(default, rename = "upstream")]
    pub upstreams: Vec<DnsUpstreamSection>,
    #[serde(default)]
    pub block_mode: DnsBlockMode,
    /// Maximum number of cached answers.
    #[serde(default = "default_cache_entries")]
    pub cache_entries: usize,
    /// `*.name` wildcards need at least this many labels in `name` (guards against `*.com`).
    #[serde(default = "default_min_wildcard_depth")]
    pub min_wildcard_depth: usize,
    /// Time one upstream gets for one query before the next is tried.
    #[serde(default = "default_upstream_timeout_ms")]
    pub upstream_timeout_ms: u64,
    /// Per-client queries per second (token bucket, memory only). 0 disables.
    #[serde(default = "default_rate_limit")]
    pub rate_limit_qps: u32,
    /// Named lists (block or allow), referenced by tiers.
    #[serde(default, rename = "list")]
    pub lists: BTreeMap<String, DnsListSection>,
    /// Tiers name their lists; a peer's `tier` selects one. `default` applies to
    /// peers without a tier.
    #[serde(default, rename = "tier")]
    pub tiers: BTreeMap<String, DnsTierSection>,
}

impl Default for DnsSection {
    fn default() -> Self {
        DnsSection {
            enabled: true,
            upstreams: Vec::new(),
            block_mode: DnsBlockMode::default(),
            cache_entries: default_cache_entries(),
            min_wildcard_depth: default_min_wildcard_depth(),
            upstream_timeout_ms: default_upstream_timeout_ms(),
            rate_limit_qps: default_rate_limit(),
            lists: BTreeMap::new(),
            tiers: BTreeMap::new(),
        }
    }
}

fn yes() -> bool {
    true
}
fn default_cache_entries() -> usize {
    65_536
}
fn default_min_wildcard_depth() -> usize {
    2
}
fn default_upstream_timeout_ms() -> u64 {
    1500
}
fn default_rate_limit() -> u32 {
    200
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum DnsBlockMode {
    #[default]
    Nxdomain,
    /// 0.0.0.0 / :: answers.
    Null,
    Refused,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DnsUpstreamSection {
    pub address: SocketAddr,
    /// How the upstream is reached (default `udp`).
    #[serde(default)]
    pub protocol: DnsUpstreamProtocol,
    /// Name verified in the upstream's certificate (tls / https).
    #[serde(default)]
    pub tls_name: Option<String>,
    /// Extra PEM CA file trusted for this upstream (tests use a local CA).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// DoH only: the URL path of the DNS endpoint (default `/dns-query`).
    #[serde(default)]
    pub path: Option<String>,
}

/// The transport of one upstream. An unknown value is refused by the parser
/// (file, line, field).
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Hash, Default)]
#[serde(rename_all = "lowercase")]
pub enum DnsUpstreamProtocol {
    /// Plain DNS over UDP (retried over TCP when the answer is truncated).
    #[default]
    Udp,
    /// Plain DNS over TCP.
    Tcp,
    /// DNS-over-TLS (RFC 7858); needs `tls_name`.
    Tls,
    /// DNS-over-HTTPS (RFC 8484); needs `tls_name`.
    Https,
}

impl DnsUpstreamProtocol {
    /// True for the protocols that verify a certificate (`tls`, `https`).
    pub fn uses_tls(self) -> bool {
        matches!(self, DnsUpstreamProtocol::Tls | DnsUpstreamProtocol::Https)
    }
}

impl std::fmt::Display for DnsUpstreamProtocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DnsUpstreamProtocol::Udp => "udp",
            DnsUpstreamProtocol::Tcp => "tcp",
            DnsUpstreamProtocol::Tls => "tls",
            DnsUpstreamProtocol::Https => "https",
        })
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DnsListSection {
    /// List file (hosts, plain domains or adblock syntax, detected per line).
    pub path: PathBuf,
    /// `true`: an allowlist (wins over block lists in the same tier).
    #[serde(default)]
    pub allow: bool,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct DnsTierSection {
    /// Names of `[dns.list.*]` entries applied to this tier.
    #[serde(default)]
    pub lists: Vec<String>,
}
