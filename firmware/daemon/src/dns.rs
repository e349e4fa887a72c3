//! The DNS resolver as a palisaded subsystem (hook agreed in
//! HELPERS-INTERFACES.md): listens on the node's tunnel addresses, port 53,
//! UDP and TCP (IP_FREEBIND: it may start before the WireGuard address
//! exists), answers only sources inside the tunnel prefixes, and applies the
//! tier of the peer that owns the source address.
//!
//! `reload` swaps lists, tiers, upstreams and the peer -> tier map atomically
//! and follows a change of the tunnel addresses; on error the running policy
//! stays. Logs carry no name and no address.

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
    /// Compile the lists and start listening. With `[dns] enabled = false`
    /// nothing listens (and `stats` says so).
    pub async fn start(spec: &NodeSpec) -> anyhow::Result<DnsService> {
        if !spec.dns.enabled {
            tracing::info!("dns: disabled in the node config");
            return Ok(DnsService {
                engine: None,
                server: None,
            });
        }
        let t0 = std::time::Instant::now();
        let engine = Arc::new(
            Engine::new(&engine_config(spec)).context("dns: cannot load the [dns] policy")?,
        );
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
        })
    }

    /// Apply a new spec: lists (recompiling only changed files), tiers,
    /// upstreams, the peer -> tier map, block mode, rate limit, and the
    /// listening addresses. Atomic; on error the old state keeps serving.
    /// Enabling or disabling the resolver, and the cache size, need a restart
    /// of the service (stop + start).
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

    /// True once the resolver is running (for the health gate).
    #[allow(dead_code)]
    pub fn is_running(&self) -> bool {
        self.server.is_some()
    }

    pub async fn stop(self) {
        if let Some(s) = self.server {
            s.stop().await;
        }
    }
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
}
