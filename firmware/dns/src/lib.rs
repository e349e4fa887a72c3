//! Palisade's filtering DNS resolver (issue 3): block/allow lists compiled
//! into a compact matcher, per-tier policy keyed by the client's tunnel
//! address, a bounded cache, plain/TCP/DoT upstreams with failover, and
//! aggregate counters only. See docs/dns.md.

pub mod filter;
pub mod policy;
