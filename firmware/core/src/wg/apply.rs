//! The only code that talks to WireGuard: wireguard-control's kernel
//! (netlink) or userspace (UAPI socket) backend.

use super::{Endpoint, ObservedDevice, ObservedPeer, PeerChange, WgPlan};
use crate::config::{PrivateKey, PublicKey, WgBackend};
use ipnet::IpNet;
use std::sync::Mutex;
use wireguard_control::{Backend, Device, DeviceUpdate, InterfaceName, PeerConfigBuilder};

#[derive(Debug, thiserror::Error)]
pub enum WgError {
    #[error("'{0}' is not a valid interface name")]
    Name(String),
    #[error("reading WireGuard interface {iface}: {source}")]
    Observe { iface: String, source: std::io::Error },
    #[error("configuring WireGuard interface {iface}: {source}")]
    Configure { iface: String, source: std::io::Error },
    #[error("peer {peer} on {iface}: {source}")]
    Peer { iface: String, peer: PublicKey, source: std::io::Error },
    #[error("deleting WireGuard interface {iface}: {source}")]
    Delete { iface: String, source: crate::netlink::NetlinkError },
}

/// Side effects on a WireGuard interface. [`KernelWg`] is real;
/// [`RecordingWg`] keeps state in memory for unit tests of callers.
pub trait WgControl: Send + Sync {
    fn observe(&self, iface: &str) -> Result<ObservedDevice, WgError>;
    fn apply(&self, iface: &str, plan: &WgPlan, key: &PrivateKey) -> Result<(), WgError>;
    /// Delete the interface (not just down): its peers, sessions and key go
    /// with it. Returns whether it existed. For the revoked lockdown.
    fn delete(&self, iface: &str) -> Result<bool, WgError>;
    /// Set the persistent keepalive of each of `peers` (0: off). Turned
    /// from off to on, WireGuard sends a keepalive at once on the current
    /// session. After an uplink switch this carries the node's new source
    /// address to clients, which roam to it without a new handshake.
    fn set_keepalive(&self, _iface: &str, _peers: &[PublicKey], _secs: u16) -> Result<(), WgError> {
        Ok(())
    }
}

/// Peers per netlink/UAPI request. Each peer is still its own entry (no
/// replace-peers); batching only saves round trips.
const BATCH: usize = 256;

/// Joins the parts of a peer that the kernel split over several netlink
/// messages of one dump. A peer whose allowed IPs do not fit in the rest of
/// a message continues in the next one as an entry with the same key and
/// the remaining allowed IPs, and nothing else (wireguard-tools' `wg` joins
/// them; wireguard-control 2.0 lists them as separate peers). Unjoined, a
/// split peer looked like two, each missing some addresses, and every
/// reconcile pass at 10k peers "fixed" dozens of peers that were fine.
pub(crate) fn merge_split_peers(peers: Vec<ObservedPeer>) -> Vec<ObservedPeer> {
    let mut out: Vec<ObservedPeer> = Vec::with_capacity(peers.len());
    for p in peers {
        match out.last_mut() {
            Some(last) if last.public_key == p.public_key => {
                last.allowed_ips.extend(p.allowed_ips);
                last.preshared_key = last.preshared_key.or(p.preshared_key);
                last.endpoint = last.endpoint.or(p.endpoint);
                last.last_handshake = last.last_handshake.or(p.last_handshake);
                last.rx_bytes += p.rx_bytes;
                last.tx_bytes += p.tx_bytes;
            }
            _ => out.push(p),
        }
    }
    out
}

pub struct KernelWg {
    backend: Backend,
}

impl KernelWg {
    pub fn new(backend: WgBackend) -> KernelWg {
        KernelWg {
            backend: match backend {
                WgBackend::Kernel => Backend::Kernel,
                WgBackend::Userspace => Backend::Userspace,
            },
        }
    }
}

fn ifname(iface: &str) -> Result<InterfaceName, WgError> {
    iface.parse().map_err(|_| WgError::Name(iface.to_string()))
}

fn builder(change: &PeerChange) -> PeerConfigBuilder {
    match change {
        PeerChange::Add(p) => {
            // No replace-allowed-ips flag: the peer is new, and on wireguard-go
            // that flag walks the whole allowed-ips trie (quadratic at 10k peers).
            let mut b = PeerConfigBuilder::new(&p.public_key.to_wg());
            for ip in p.allowed_ips() {
                b = b.add_allowed_ip(ip.addr(), ip.prefix_len());
            }
            if let Some(psk) = &p.preshared_key {
                b = b.set_preshared_key(psk.to_wg());
            }
            b
        }
        PeerChange::Remove(k) => PeerConfigBuilder::new(&k.to_wg()).remove(),
        PeerChange::Update { public_key, allowed_ips, preshared_key } => {
            let mut b = PeerConfigBuilder::new(&public_key.to_wg());
            if let Some(ips) = allowed_ips {
                b = b.replace_allowed_ips();
                for ip in ips {
                    b = b.add_allowed_ip(ip.addr(), ip.prefix_len());
                }
            }
            match preshared_key {
                Some(Some(k)) => b = b.set_preshared_key(k.to_wg()),
                Some(None) => b = b.unset_preshared_key(),
                None => {}
            }
            b
        }
    }
}

impl WgControl for KernelWg {
    fn observe(&self, iface: &str) -> Result<ObservedDevice, WgError> {
        let name = ifname(iface)?;
        let dev = match self.backend {
            // wireguard-control lists userspace interfaces by macOS-style
            // `.name` files, which wireguard-go on Linux does not write: a
            // UAPI socket that cannot be reached means "no interface".
            Backend::Userspace => match Device::get(&name, self.backend) {
                Ok(d) => d,
                Err(e) if matches!(e.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused) => {
                    return Ok(ObservedDevice::default())
                }
                Err(source) => return Err(WgError::Observe { iface: iface.into(), source }),
            },
            _ => {
                return super::genl::observe(&name.as_str_lossy())
                    .map_err(|e| WgError::Observe { iface: iface.into(), source: std::io::Error::other(e.to_string()) })
            }
        };
        let peers = dev
            .peers
            .into_iter()
            .map(|p| ObservedPeer {
                public_key: PublicKey(p.config.public_key.0),
                allowed_ips: p
                    .config
                    .allowed_ips
                    .iter()
                    .filter_map(|a| IpNet::new(a.address, a.cidr).ok())
                    .collect(),
                preshared_key: p.config.preshared_key.map(|k| k.0),
                endpoint: p.config.endpoint.map(Endpoint),
                last_handshake: p.stats.last_handshake_time,
                rx_bytes: p.stats.rx_bytes,
                tx_bytes: p.stats.tx_bytes,
            })
            .collect();
        let peers = merge_split_peers(peers);
        Ok(ObservedDevice {
            exists: true,
            public_key: dev.public_key.map(|k| PublicKey(k.0)),
            listen_port: dev.listen_port,
            peers,
        })
    }

    fn apply(&self, iface: &str, plan: &WgPlan, key: &PrivateKey) -> Result<(), WgError> {
        let name = ifname(iface)?;
        if plan.create_interface || plan.set_private_key || plan.set_listen_port.is_some() {
            let mut u = DeviceUpdate::new();
            if plan.create_interface || plan.set_private_key {
                u = u.set_private_key(key.to_wg());
            }
            if let Some(port) = plan.set_listen_port {
                u = u.set_listen_port(port);
            }
            u.apply(&name, self.backend)
                .map_err(|source| WgError::Configure { iface: iface.into(), source })?;
        }
        for chunk in plan.peers.chunks(BATCH) {
            let u = DeviceUpdate::new().add_peers(&chunk.iter().map(builder).collect::<Vec<_>>());
            if u.apply(&name, self.backend).is_err() {
                // Find the peer that failed; the others still get applied.
                for c in chunk {
                    DeviceUpdate::new().add_peer(builder(c)).apply(&name, self.backend).map_err(|source| {
                        WgError::Peer { iface: iface.into(), peer: *c.public_key(), source }
                    })?;
                }
            }
        }
        Ok(())
    }

    fn set_keepalive(&self, iface: &str, peers: &[PublicKey], secs: u16) -> Result<(), WgError> {
        let name = ifname(iface)?;
        for chunk in peers.chunks(BATCH) {
            let b: Vec<PeerConfigBuilder> = chunk
                .iter()
                .map(|k| PeerConfigBuilder::new(&k.to_wg()).set_persistent_keepalive_interval(secs))
                .collect();
            DeviceUpdate::new()
                .add_peers(&b)
                .apply(&name, self.backend)
                .map_err(|source| WgError::Configure { iface: iface.into(), source })?;
        }
        Ok(())
    }

    fn delete(&self, iface: &str) -> Result<bool, WgError> {
        ifname(iface)?;
        let existed = crate::netlink::delete_link(iface).map_err(|source| WgError::Delete { iface: iface.into(), source })?;
        if self.backend == Backend::Userspace {
            // wireguard-go exits when its tun device goes and removes its UAPI
            // socket; one left behind (a killed process) would still name the
            // interface, so it goes too.
            for dir in ["/var/run/wireguard", "/run/wireguard"] {
                let sock = std::path::Path::new(dir).join(format!("{iface}.sock"));
                match std::fs::remove_file(&sock) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                        return Err(WgError::Configure { iface: iface.into(), source: e });
                    }
                    _ => {}
                }
            }
        }
        Ok(existed)
    }
}

/// In-memory WireGuard interface: applies plans to its own state and records
/// them. For unit tests of callers and for `palisade plan`-style dry runs.
#[derive(Default)]
pub struct RecordingWg {
    pub state: Mutex<ObservedDevice>,
    pub applied: Mutex<Vec<WgPlan>>,
    /// How many times an existing interface was deleted.
    pub deleted: Mutex<usize>,
    /// Every added peer is a connected client: endpoint, fresh handshake, traffic.
    connected: bool,
}

impl RecordingWg {
    /// A fake whose peers behave as connected clients: each added peer gets an
    /// endpoint (198.51.100.(10 + n):(40000 + n), n = its position), a
    /// handshake at the time it was added and non-zero counters. For tests
    /// that must show a client-identifying value exists before proving it
    /// never leaks.
    pub fn with_connected_clients() -> RecordingWg {
        RecordingWg { connected: true, ..Default::default() }
    }
}

impl WgControl for RecordingWg {
    fn observe(&self, _iface: &str) -> Result<ObservedDevice, WgError> {
        Ok(self.state.lock().expect("poisoned").clone())
    }

    fn apply(&self, _iface: &str, plan: &WgPlan, key: &PrivateKey) -> Result<(), WgError> {
        let mut s = self.state.lock().expect("poisoned");
        s.exists = true;
        if plan.set_private_key || plan.create_interface {
            s.public_key = Some(key.public_key());
        }
        if let Some(p) = plan.set_listen_port {
            s.listen_port = Some(p);
        }
        // Removals and re-additions in one sweep: per-change retains would
        // make a 10k-peer plan quadratic in the fake.
        let gone: std::collections::HashSet<PublicKey> = plan
            .peers
            .iter()
            .filter_map(|c| match c {
                PeerChange::Remove(k) => Some(*k),
                PeerChange::Add(p) => Some(p.public_key),
                PeerChange::Update { .. } => None,
            })
            .collect();
        if !gone.is_empty() {
            s.peers.retain(|p| !gone.contains(&p.public_key));
        }
        for c in &plan.peers {
            match c {
                PeerChange::Remove(_) => {}
                PeerChange::Add(p) => {
                    let n = s.peers.len() as u8;
                    let client = self.connected.then(|| {
                        let ip = std::net::Ipv4Addr::new(198, 51, 100, 10u8.saturating_add(n));
                        Endpoint(std::net::SocketAddr::new(ip.into(), 40000 + u16::from(n)))
                    });
                    s.peers.push(ObservedPeer {
                        public_key: p.public_key,
                        allowed_ips: p.allowed_ips(),
                        preshared_key: p.preshared_key.as_ref().map(|k| k.to_wg().0),
                        endpoint: client,
                        last_handshake: client.map(|_| std::time::SystemTime::now()),
                        rx_bytes: if client.is_some() { 1480 } else { 0 },
                        tx_bytes: if client.is_some() { 920 } else { 0 },
                    })
                }
                PeerChange::Update { public_key, allowed_ips, preshared_key } => {
                    if let Some(o) = s.peers.iter_mut().find(|o| o.public_key == *public_key) {
                        if let Some(ips) = allowed_ips {
                            o.allowed_ips = ips.clone();
                        }
                        if let Some(k) = preshared_key {
                            o.preshared_key = k.as_ref().map(|k| k.to_wg().0);
                        }
                    }
                }
            }
        }
        self.applied.lock().expect("poisoned").push(plan.clone());
        Ok(())
    }

    fn delete(&self, _iface: &str) -> Result<bool, WgError> {
        let mut s = self.state.lock().expect("poisoned");
        let existed = s.exists;
        *s = ObservedDevice::default();
        *self.deleted.lock().expect("poisoned") += usize::from(existed);
        Ok(existed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(key: u8, ips: &[&str], stats: bool) -> ObservedPeer {
        ObservedPeer {
            public_key: PublicKey([key; 32]),
            allowed_ips: ips.iter().map(|i| i.parse().unwrap()).collect(),
            preshared_key: stats.then_some([9; 32]),
            endpoint: stats.then(|| Endpoint("203.0.113.7:51820".parse().unwrap())),
            last_handshake: stats.then_some(std::time::UNIX_EPOCH + std::time::Duration::from_secs(5)),
            rx_bytes: if stats { 100 } else { 0 },
            tx_bytes: if stats { 200 } else { 0 },
        }
    }

    #[test]
    fn a_peer_split_over_two_netlink_messages_is_one_peer() {
        // Peer 2's first part ends one message, its second part (key and the
        // rest of its allowed IPs only) starts the next.
        let dump = vec![
            part(1, &["10.66.0.2/32", "fd66::2/128"], true),
            part(2, &["10.66.0.3/32"], true),
            part(2, &["fd66::3/128"], false),
            part(3, &["10.66.0.4/32", "fd66::4/128"], true),
        ];
        let merged = merge_split_peers(dump);
        assert_eq!(merged.len(), 3);
        assert_eq!(merged[1].allowed_ips, vec!["10.66.0.3/32".parse::<IpNet>().unwrap(), "fd66::3/128".parse().unwrap()]);
        assert_eq!(merged[1].preshared_key, Some([9; 32]));
        assert!(merged[1].endpoint.is_some() && merged[1].last_handshake.is_some());
        assert_eq!((merged[1].rx_bytes, merged[1].tx_bytes), (100, 200));
        assert_eq!(merged[0], part(1, &["10.66.0.2/32", "fd66::2/128"], true));
        assert_eq!(merged[2], part(3, &["10.66.0.4/32", "fd66::4/128"], true));
    }
}
