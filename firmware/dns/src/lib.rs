//! Palisade's filtering DNS resolver: block/allow lists compiled
//! into a compact matcher, per-tier policy keyed by the client's tunnel
//! address, a bounded cache, plain/TCP/DoT/DoH upstreams with failover, and
//! aggregate counters only. See docs/dns.md.
//!
//! Layers: [`wire`] (strict query parser, answer builders), [`filter`] and
//! [`policy`] (lists and tiers), [`upstream`] (forwarding with sanitising),
//! [`engine`] (the request path, cache, counters, reload by atomic swap),
//! [`server`] (UDP/TCP sockets with IP_FREEBIND), [`logging`] (hickory pin).

pub mod engine;
pub mod filter;
pub mod logging;
pub mod policy;
pub mod server;
pub mod upstream;
pub mod wire;

pub use engine::{Engine, EngineConfig, EngineError, Outcome};
/// Re-exported so the daemon hook needs no direct dependency.
pub use ipnet;
pub use server::Server;
