//! The DNS resolver as a palisaded subsystem: listens on the node's tunnel addresses, port 53,
//! UDP and TCP (IP_FREEBIND: it may start before the WireGuard address
//! exists), answers only sources inside the tunnel prefixes, and applies the
//! tier of the peer that owns the source address.
//!
//! `reload` swaps lists, tiers, upstreams and the peer -> tier map atomically
//! and follows a change of the tunnel addresses; on error the running policy
//! stays. Logs carry no name and no address.
//!
//! [`canary`] is the health probe: palisaded asks its own resolver, from the
//! node's tunnel address, for a `localhost` name the resolver answers itself
//! (RFC 6761), so the check needs no upstream and proves the tunnel-side
//! listener answers tunnel sources. Supervision (restart with backoff,
//! status) is in `dns_supervisor.rs`.

use anyhow::Context;
use palisade_core::config::NodeSpec;
use palisade_dns::{Engine, EngineConfig, Server};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

/// The resolver's port on the tunnel addresses.
pub const DNS_PORT: u16 = 53;

pub struct DnsService {
    engine: Option<Arc<Engine>>,
    server: Option<Server>,
    /// The cache is sized at start: a change needs a restart.
    cache_entries: usize,
}

/// What the resolver needs from the node spec.
pub fn engine_config(spec: &NodeSpec) -> EngineConfig {
    let mut clients = Vec::new();
    for p in spec.peers.values() {
        for a in [p.v4.map(IpAddr::V4), p.v6.map(IpAddr::V6)]
            .into_iter()
            .flatten()
        {
            clients.push((a, p.tier.clone()));
        }
    }
    let allowed = vec![
        palisade_dns::ipnet::IpNet::V4(spec.wg.address_v4.trunc()),
        palisade_dns::ipnet::IpNet::V6(spec.wg.address_v6.trunc()),
    ];
    let mut cfg = EngineConfig::new(spec.dns.clone(), allowed);
    cfg.clients = clients;
    cfg
}

/// The addresses to listen on: the node's own tunnel addresses only.
pub fn listen_addrs(spec: &NodeSpec) -> Vec<SocketAddr> {
    vec![
        SocketAddr::new(IpAddr::V4(spec.wg.address_v4.addr()), DNS_PORT),
        SocketAddr::new(IpAddr::V6(spec.wg.address_v6.addr()), DNS_PORT),
    ]
}

impl DnsService {
    /// Compile the lists (on the blocking pool: a big list must not hold up
    /// the runtime that serves cache misses) and start listening. With
    /// `[dns] enabled = false` nothing listens (and `stats` says so).
    pub async fn start(spec: &NodeSpec) -> anyhow::Result<DnsService> {
        if !spec.dns.enabled {
            tracing::info!("dns: disabled in the node config");
            return Ok(DnsService {
                engine: None,
                server: None,
                cache_entries: spec.dns.cache_entries,
            });
        }
        let t0 = std::time::Instant::now();
        let cfg = engine_config(spec);
        let engine = tokio::task::spawn_blocking(move || Engine::new(&cfg))
            .await
            .context("dns: the policy compiler panicked")?
            .context("dns: cannot load the [dns] policy")?;
        let engine = Arc::new(engine);
        let addrs = listen_addrs(spec);
        let server = Server::start(engine.clone(), &addrs)
            .context("dns: cannot bind the tunnel addresses")?;
        tracing::info!(
            tiers = spec.dns.tiers.len(),
            upstreams = spec.dns.upstreams.len(),
            load_ms = t0.elapsed().as_millis() as u64,
            "dns: resolver listening on the tunnel addresses"
        );
        Ok(DnsService {
            engine: Some(engine),
            server: Some(server),
            cache_entries: spec.dns.cache_entries,
        })
    }

    /// Does applying `spec` need a stop and a fresh start (the resolver is
    /// enabled or disabled, or the cache size changed) rather than a reload?
    pub fn needs_restart(&self, spec: &NodeSpec) -> bool {
        self.is_running() != spec.dns.enabled
            || (spec.dns.enabled && self.cache_entries != spec.dns.cache_entries)
    }

    /// Apply a new spec: lists (recompiling only changed files), tiers,
    /// upstreams, the peer -> tier map, block mode, rate limit, and the
    /// listening addresses. Atomic; on error the old state keeps serving.
    /// Enabling or disabling the resolver, and the cache size, need a restart
    /// of the service (stop + start; see [`DnsService::needs_restart`]).
    ///
    /// Blocks while lists compile: call it from the blocking pool. It holds
    /// no lock that queries take (see `palisade_dns::Engine::reload`).
    pub fn reload(&self, spec: &NodeSpec) -> anyhow::Result<()> {
        let (Some(engine), Some(server)) = (&self.engine, &self.server) else {
            anyhow::ensure!(
                !spec.dns.enabled,
                "dns: enabling the resolver needs a restart of the DNS service"
            );
            return Ok(());
        };
        engine
            .reload(&engine_config(spec))
            .context("dns: reload rejected, keeping the running policy")?;
        server
            .set_listen(&listen_addrs(spec))
            .context("dns: cannot bind the new tunnel addresses")?;
        Ok(())
    }

    /// Aggregate counters only (queries, blocked, cache hits, upstream
    /// failures, per tier, list sizes). No names, no addresses.
    pub fn stats(&self) -> serde_json::Value {
        match &self.engine {
            Some(e) => {
                let mut v = e.stats();
                v["enabled"] = serde_json::Value::Bool(true);
                v
            }
            None => serde_json::json!({ "enabled": false }),
        }
    }

    /// The query latency histogram of the running resolver.
    pub fn latency(&self) -> Option<palisade_dns::engine::LatencySnapshot> {
        self.engine.as_ref().map(|e| e.latency())
    }

    /// True once the resolver is listening.
    pub fn is_running(&self) -> bool {
        self.server.is_some()
    }

    /// Close the listeners (queries in flight finish).
    pub async fn stop(&self) {
        if let Some(s) = &self.server {
            s.stop().await;
        }
    }
}

/// The canary's question: a `localhost` name, answered by the resolver
/// itself (RFC 6761), so no upstream is involved.
pub const CANARY_NAME: &str = "palisade-health.localhost";

/// Why a canary query failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CanaryError {
    /// The source address (the node's tunnel address) is on no interface:
    /// WireGuard is not configured yet. Not the resolver's fault.
    NoSource(String),
    /// No answer, or a wrong one: the resolver's fault.
    NoAnswer(String),
}

impl CanaryError {
    /// True when the failure says something about the resolver itself.
    pub fn resolver_fault(&self) -> bool {
        matches!(self, CanaryError::NoAnswer(_))
    }
}

impl std::fmt::Display for CanaryError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CanaryError::NoSource(m) | CanaryError::NoAnswer(m) => f.write_str(m),
        }
    }
}

/// One canary round: for each listening address (the node's tunnel
/// addresses), a UDP query for [`CANARY_NAME`] from that same address (a
/// tunnel source, so the resolver's source check applies as to a client)
/// must get `127.0.0.1` back within `timeout`. The socket is bound without
/// IP_FREEBIND: a tunnel address that is on no interface fails the bind
/// ([`CanaryError::NoSource`]) instead of sending anything off the node.
/// Returns the slowest round trip.
pub async fn canary(
    listen: &[SocketAddr],
    timeout: std::time::Duration,
) -> Result<std::time::Duration, CanaryError> {
    let mut slowest = std::time::Duration::ZERO;
    for (i, server) in listen.iter().enumerate() {
        let rtt = canary_one(*server, timeout, i as u16).await?;
        slowest = slowest.max(rtt);
    }
    Ok(slowest)
}

async fn canary_one(
    server: SocketAddr,
    timeout: std::time::Duration,
    salt: u16,
) -> Result<std::time::Duration, CanaryError> {
    let fam = if server.is_ipv4() { "IPv4" } else { "IPv6" };
    let sock = tokio::net::UdpSocket::bind(SocketAddr::new(server.ip(), 0))
        .await
        .map_err(|e| {
            CanaryError::NoSource(format!(
                "the tunnel {fam} address is not usable as a source ({e})"
            ))
        })?;
    // An ID that differs per round; a stale answer to an earlier round is ignored.
    let id = (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .subsec_nanos() as u16)
        ^ salt.rotate_left(8);
    let q = canary_query(id);
    let t0 = std::time::Instant::now();
    sock.send_to(&q, server)
        .await
        .map_err(|e| CanaryError::NoAnswer(format!("cannot send the {fam} canary query: {e}")))?;
    let mut buf = [0u8; 512];
    loop {
        let left = timeout.saturating_sub(t0.elapsed());
        let (n, from) = match tokio::time::timeout(left, sock.recv_from(&mut buf)).await {
            Err(_) => {
                return Err(CanaryError::NoAnswer(format!(
                    "no answer on the tunnel {fam} address within {} ms",
                    timeout.as_millis()
                )))
            }
            Ok(Err(e)) => return Err(CanaryError::NoAnswer(format!("{fam} canary: {e}"))),
            Ok(Ok(r)) => r,
        };
        if from != server || n < 2 || buf[..2] != id.to_be_bytes() {
            continue;
        }
        return match canary_answer_ok(&buf[..n], &q) {
            true => Ok(t0.elapsed()),
            false => Err(CanaryError::NoAnswer(format!(
                "wrong answer to the {fam} canary query"
            ))),
        };
    }
}

/// `CANARY_NAME` IN A, recursion desired, no EDNS.
fn canary_query(id: u16) -> Vec<u8> {
    let mut q = Vec::with_capacity(48);
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[1, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
    for l in CANARY_NAME.split('.') {
        q.push(l.len() as u8);
        q.extend_from_slice(l.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q
}

/// A response to `q` (same ID and question), NOERROR, one answer whose data
/// is 127.0.0.1 (the resolver's own `localhost` answer).
fn canary_answer_ok(r: &[u8], q: &[u8]) -> bool {
    r.len() >= q.len() + 4
        && r[..2] == q[..2]
        && r[2] & 0x80 != 0
        && r[3] & 0x0f == 0
        && r[6..8] == [0, 1]
        && r[12..q.len()] == q[12..]
        && r[r.len() - 4..] == [127, 0, 0, 1]
}

#[cfg(test)]
mod dns_tests {
    use super::*;

    #[test]
    fn config_from_example_spec() {
        let text = include_str!("../../../configs/node.toml");
        let cfg =
            palisade_core::config::NodeConfig::from_str(text, std::path::Path::new("node.toml"))
                .unwrap();
        let spec = cfg
            .validate(std::path::Path::new("node.toml"), text)
            .unwrap();
        let ec = engine_config(&spec);
        assert_eq!(ec.allowed_sources.len(), 2);
        assert!(ec
            .allowed_sources
            .iter()
            .any(|n| n.contains(&"10.66.0.2".parse::<IpAddr>().unwrap())));
        assert!(!ec
            .allowed_sources
            .iter()
            .any(|n| n.contains(&"203.0.113.10".parse::<IpAddr>().unwrap())));
        assert!(ec
            .clients
            .contains(&("fd66::3".parse().unwrap(), Some("family".into()))));
        assert_eq!(listen_addrs(&spec)[0], "10.66.0.1:53".parse().unwrap());
    }

    #[test]
    fn canary_query_and_answer_check() {
        let q = canary_query(0x1234);
        assert_eq!(&q[..4], &[0x12, 0x34, 1, 0]);
        assert!(q.windows(10).any(|w| w == b"\x09localhost"));
        let mut r = q.clone();
        r[2] |= 0x80;
        r[7] = 1;
        r.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 127, 0, 0, 1]);
        assert!(canary_answer_ok(&r, &q));
        let mut other_id = r.clone();
        other_id[1] ^= 1;
        assert!(!canary_answer_ok(&other_id, &q));
        let mut servfail = r.clone();
        servfail[3] |= 2;
        assert!(!canary_answer_ok(&servfail, &q));
        let mut wrong_addr = r.clone();
        *wrong_addr.last_mut().unwrap() = 2;
        assert!(!canary_answer_ok(&wrong_addr, &q));
        assert!(!canary_answer_ok(&q, &q), "a query is not an answer");
    }
}
