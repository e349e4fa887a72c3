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
                let present = Device::list(self.backend)
                    .map_err(|source| WgError::Observe { iface: iface.into(), source })?
                    .contains(&name);
                if !present {
                    return Ok(ObservedDevice::default());
                }
                Device::get(&name, self.backend).map_err(|source| WgError::Observe { iface: iface.into(), source })?
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
