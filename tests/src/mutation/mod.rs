//! Tools for the firewall mutation check (tests/tests/netns_mutation.rs) and for
//! any test that must prove a packet did or did not cross the node:
//!
//! - packet captures come from [`crate::capture`];
//! - [`craft`]: probes the matrix kinds lack — hand-made TCP segments (e.g. an
//!   out-of-state SYN|FIN|ACK, which conntrack calls invalid), UDP from a chosen
//!   source address and port, ping from a chosen source address;
//! - [`ruleset`]: the live `inet palisade` table read back with rule handles,
//!   restored atomically, one rule deleted, and the destinations its blocked
//!   sets and drop rules cover.

pub mod craft;
pub mod ruleset;
