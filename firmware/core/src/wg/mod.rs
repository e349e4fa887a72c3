//! WireGuard: a pure diff of observed vs desired peers ([`plan`]) and a thin
//! applier ([`WgControl`]) that changes one peer at a time.
//!
//! The diff never asks to replace all peers: a peer whose configuration is
//! unchanged gets no operation at all, so its session and handshake survive
//! every reload.

mod apply;
mod genl;

pub use apply::{KernelWg, RecordingWg, WgControl, WgError};

use crate::config::{NodeSpec, PeerSpec, PresharedKey, PublicKey};
use ipnet::IpNet;
use std::collections::BTreeMap;
use std::fmt;
use std::time::SystemTime;

/// A client endpoint address. Display and Debug redact it: it must never
/// reach a log, the control socket or the disk.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Endpoint(pub std::net::SocketAddr);

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}
impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// One peer as the interface reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct ObservedPeer {
    pub public_key: PublicKey,
    pub allowed_ips: Vec<IpNet>,
    pub preshared_key: Option<[u8; 32]>,
    pub endpoint: Option<Endpoint>,
    pub last_handshake: Option<SystemTime>,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
}

/// The interface as observed: `None` fields mean "not set".
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ObservedDevice {
    pub exists: bool,
    pub public_key: Option<PublicKey>,
    pub listen_port: Option<u16>,
    pub peers: Vec<ObservedPeer>,
}

/// One change to one peer.
#[derive(Debug, Clone, PartialEq)]
pub enum PeerChange {
    Add(PeerSpec),
    Remove(PublicKey),
    /// Replace this peer's AllowedIPs and/or its preshared key; the session stays.
    Update {
        public_key: PublicKey,
        allowed_ips: Option<Vec<IpNet>>,
        preshared_key: Option<Option<PresharedKey>>,
    },
}

impl PeerChange {
    pub fn public_key(&self) -> &PublicKey {
        match self {
            PeerChange::Add(p) => &p.public_key,
            PeerChange::Remove(k) => k,
            PeerChange::Update { public_key, .. } => public_key,
        }
    }
}

impl fmt::Display for PeerChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PeerChange::Add(p) => {
                let ips: Vec<String> = p.allowed_ips().iter().map(|n| n.to_string()).collect();
                write!(f, "+ peer {} ({}) allowed-ips {}", p.public_key, p.name, ips.join(","))
            }
            PeerChange::Remove(k) => write!(f, "- peer {k}"),
            PeerChange::Update { public_key, allowed_ips, preshared_key } => {
                write!(f, "~ peer {public_key}")?;
                if let Some(ips) = allowed_ips {
                    let ips: Vec<String> = ips.iter().map(|n| n.to_string()).collect();
                    write!(f, " allowed-ips {}", ips.join(","))?;
                }
                match preshared_key {
                    Some(Some(_)) => write!(f, " preshared-key (set)"),
                    Some(None) => write!(f, " preshared-key (removed)"),
                    None => Ok(()),
                }
            }
        }
    }
}

/// Interface-level changes (key, port) plus the per-peer changes.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct WgPlan {
    pub create_interface: bool,
    pub set_private_key: bool,
    pub set_listen_port: Option<u16>,
    pub peers: Vec<PeerChange>,
}

impl WgPlan {
    pub fn is_empty(&self) -> bool {
        !self.create_interface && !self.set_private_key && self.set_listen_port.is_none() && self.peers.is_empty()
    }
}

/// Whether the kernel's allowed IPs of a peer are exactly the spec's /32
/// and /128 (as sets), without allocating: this runs for every peer on
/// every pass.
fn same_ips(have: &[IpNet], want: &PeerSpec) -> bool {
    let w4 = want.v4.map(|a| IpNet::V4(ipnet::Ipv4Net::new(a, 32).expect("32 is a valid prefix")));
    let w6 = want.v6.map(|a| IpNet::V6(ipnet::Ipv6Net::new(a, 128).expect("128 is a valid prefix")));
    have.iter().all(|n| Some(*n) == w4 || Some(*n) == w6)
        && w4.is_none_or(|w| have.contains(&w))
        && w6.is_none_or(|w| have.contains(&w))
}

/// Diff observed peers against the desired ones. Pure; empty when nothing changed.
/// Output order is deterministic: removals first (so a moved address is free
/// before it is given to another peer), then updates and additions by key.
/// One walk over both in key order (the desired peers are sorted; the
/// observed ones are sorted here).
pub fn diff_peers(observed: &[ObservedPeer], desired: &BTreeMap<PublicKey, PeerSpec>) -> Vec<PeerChange> {
    let mut have: Vec<&ObservedPeer> = observed.iter().collect();
    have.sort_by_key(|p| p.public_key);
    have.dedup_by_key(|p| p.public_key);
    let mut removes = Vec::new();
    let mut others = Vec::new();
    let mut have = have.into_iter().peekable();
    for (k, want) in desired {
        while let Some(h) = have.next_if(|h| h.public_key < *k) {
            removes.push(PeerChange::Remove(h.public_key));
        }
        match have.next_if(|h| h.public_key == *k) {
            None => others.push(PeerChange::Add(want.clone())),
            Some(h) => {
                let ips = (!same_ips(&h.allowed_ips, want)).then(|| want.allowed_ips());
                let want_psk = want.preshared_key.as_ref().map(|k| k.to_wg().0);
                let have_psk = h.preshared_key.filter(|k| *k != [0u8; 32]);
                let psk = (want_psk != have_psk).then(|| want.preshared_key.clone());
                if ips.is_some() || psk.is_some() {
                    others.push(PeerChange::Update { public_key: *k, allowed_ips: ips, preshared_key: psk });
                }
            }
        }
    }
    removes.extend(have.map(|h| PeerChange::Remove(h.public_key)));
    removes.extend(others);
    removes
}

/// The whole WireGuard plan for a spec, given what the interface looks like.
pub fn plan(observed: &ObservedDevice, spec: &NodeSpec, node_public_key: &PublicKey) -> WgPlan {
    WgPlan {
        create_interface: !observed.exists,
        set_private_key: observed.public_key.as_ref() != Some(node_public_key),
        set_listen_port: (observed.listen_port != Some(spec.wg.listen_port)).then_some(spec.wg.listen_port),
        peers: diff_peers(&observed.peers, &spec.peers),
    }
}

#[cfg(test)]
mod tests;
