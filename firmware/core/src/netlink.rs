//! Links, addresses and default routes over rtnetlink, synchronously: the one
//! path both the link applier (`link`, the tunnel) and init (the uplinks) use.
//!
//! Each call opens its own `NETLINK_ROUTE` socket, sends one request and
//! reads the answer up to its ACK or NLMSG_DONE, so no reply can belong to
//! another request. Messages are built and parsed with netlink-packet-route
//! (already in the graph through wireguard-control).
//!
//! [`Change`] is the unit planners emit: a pure plan is a `Vec<Change>`, and
//! [`Change::apply`] performs one.

use std::fmt;
use std::io;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, Ordering};

use ipnet::IpNet;
use netlink_packet_core::{
    NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_DUMP_INTR,
    NLM_F_REPLACE, NLM_F_REQUEST,
};
use netlink_packet_route::address::{
    AddressAttribute, AddressHeaderFlags, AddressMessage, AddressScope,
};
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

/// What a netlink call was doing when it failed (errors name it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    ReadLink,
    ListAddresses,
    ListRoutes,
    SetUp,
    SetDown,
    SetMtu(u32),
    DeleteLink,
    ReplaceAddress(IpNet),
    ReplaceDefaultRoute { gateway: IpAddr, metric: u32 },
    DeleteDefaultRoute { gateway: IpAddr, metric: u32 },
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Op::ReadLink => write!(f, "read link"),
            Op::ListAddresses => write!(f, "list addresses"),
            Op::ListRoutes => write!(f, "list routes"),
            Op::SetUp => write!(f, "set link up"),
            Op::SetDown => write!(f, "set link down"),
            Op::SetMtu(m) => write!(f, "set mtu {m}"),
            Op::DeleteLink => write!(f, "delete link"),
            Op::ReplaceAddress(a) => write!(f, "add address {a}"),
            Op::ReplaceDefaultRoute { gateway, metric } => {
                write!(f, "replace default route via {gateway} metric {metric}")
            }
            Op::DeleteDefaultRoute { gateway, metric } => {
                write!(f, "delete default route via {gateway} metric {metric}")
            }
        }
    }
}

/// A failed netlink call, naming the interface and the operation.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    /// The interface does not exist (ENODEV).
    #[error("{op} on {dev}: no such interface")]
    NoSuchInterface { dev: String, op: Op },
    /// The kernel refused the request; `detail` is its extended-ACK message
    /// when it gave one (e.g. "Nexthop has invalid gateway").
    #[error("{op} on {dev}: {source}{}", detail.as_deref().map(|d| format!(": {d}")).unwrap_or_default())]
    Kernel {
        dev: String,
        op: Op,
        #[source]
        source: io::Error,
        detail: Option<String>,
    },
    /// The netlink socket itself failed (open, send, receive).
    #[error("{op} on {dev}: netlink socket: {source}")]
    Socket {
        dev: String,
        op: Op,
        #[source]
        source: io::Error,
    },
    /// The kernel answered with something this module cannot read.
    #[error("{op} on {dev}: unexpected netlink reply: {detail}")]
    Reply { dev: String, op: Op, detail: String },
}

impl NetlinkError {
    /// The kernel's errno, when the kernel refused the request.
    pub fn errno(&self) -> Option<i32> {
        match self {
            NetlinkError::NoSuchInterface { .. } => Some(libc::ENODEV),
            NetlinkError::Kernel { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }
}

/// A link's state as the kernel reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkState {
    pub index: u32,
    /// Administratively up (IFF_UP), whatever the carrier.
    pub up: bool,
    pub mtu: u32,
    /// The link has carrier (IFF_LOWER_UP): a cable, a peer, a radio link.
    pub lower_up: bool,
}

/// Duplicate address detection for a new IPv6 address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dad {
    /// IFA_F_NODAD: usable at once. For links without neighbours to
    /// collide with (the WireGuard tunnel).
    Skip,
    /// The kernel's default (DAD where the link does neighbour discovery).
    Kernel,
}

/// A default route as the kernel reports it (main table).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DefaultRoute {
    pub gateway: IpAddr,
    pub metric: u32,
}

/// Why one request failed, before it is tied to an interface and operation.
enum Fail {
    Socket(io::Error),
    Kernel(io::Error, Option<String>),
    Reply(String),
}

impl Fail {
    fn at(self, dev: &str, op: Op) -> NetlinkError {
        let dev = dev.to_string();
        match self {
            Fail::Kernel(e, _) if e.raw_os_error() == Some(libc::ENODEV) => {
                NetlinkError::NoSuchInterface { dev, op }
            }
            Fail::Kernel(source, detail) => NetlinkError::Kernel {
                dev,
                op,
                source,
                detail,
            },
            Fail::Socket(source) => NetlinkError::Socket { dev, op, source },
            Fail::Reply(detail) => NetlinkError::Reply { dev, op, detail },
        }
    }
}

/// Receive buffer. A dump datagram is at most 32 KiB (the kernel caps its
/// dump allocation there); a bigger reply is reported, never read cut short.
const RECV_BUF: usize = 64 * 1024;
/// A dump that a concurrent change interrupted is retried this often.
const DUMP_TRIES: usize = 3;
/// NLMSGERR_ATTR_MSG: the extended-ACK error string.
const NLMSGERR_ATTR_MSG: u16 = 1;

/// Sequence numbers start high, as iproute2's (the time) do: the kernel
/// copies a request's number into the notifications it causes, and
/// wireguard-go's route listener takes notifications numbered 1..=65536 for
/// answers to its own queries and ignores them. A default route moved with
/// a small number would leave its sticky source address on the old uplink.
static SEQ: AtomicU32 = AtomicU32::new(1 << 24);

/// One request; returns the messages the kernel sent before its ACK (or, for
/// a dump, before NLMSG_DONE), and whether a dump was interrupted.
fn transact(
    msg: RouteNetlinkMessage,
    flags: u16,
) -> Result<(Vec<RouteNetlinkMessage>, bool), Fail> {
    let dump = flags & NLM_F_DUMP == NLM_F_DUMP;
    let mut socket = Socket::new(NETLINK_ROUTE).map_err(Fail::Socket)?;
    socket.bind_auto().map_err(Fail::Socket)?;
    socket
        .connect(&SocketAddr::new(0, 0))
        .map_err(Fail::Socket)?;
    // Error messages from the kernel, without an echo of the request.
    // Both are optional kernel features: without them errors lack detail.
    let _ = socket.set_ext_ack(true);
    let _ = socket.set_cap_ack(true);

    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    let mut req = NetlinkMessage::from(msg);
    req.header.flags = NLM_F_REQUEST | if dump { flags } else { flags | NLM_F_ACK };
    req.header.sequence_number = seq;
    req.finalize();
    let mut out = vec![0; req.buffer_len()];
    req.serialize(&mut out);
    let sent = socket.send(&out, 0).map_err(Fail::Socket)?;
    if sent != out.len() {
        return Err(Fail::Reply(format!("sent {sent} of {} bytes", out.len())));
    }

    let mut replies = Vec::new();
    let mut interrupted = false;
    let mut buf: Vec<u8> = Vec::with_capacity(RECV_BUF);
    loop {
        buf.clear();
        let n = socket
            .recv(&mut buf, libc::MSG_TRUNC)
            .map_err(Fail::Socket)?;
        if n > buf.len() {
            return Err(Fail::Reply(format!(
                "a {n}-byte datagram exceeds the {RECV_BUF}-byte buffer"
            )));
        }
        let mut off = 0;
        while off < buf.len() {
            let m = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&buf[off..])
                .map_err(|e| Fail::Reply(format!("{e:#}")))?;
            let len = m.header.length as usize;
            if len == 0 {
                return Err(Fail::Reply("zero-length message".into()));
            }
            off += (len + 3) & !3;
            if m.header.sequence_number != seq {
                continue; // not ours (cannot happen on a fresh socket; cheap to check)
            }
            interrupted |= m.header.flags & NLM_F_DUMP_INTR != 0;
            match m.payload {
                NetlinkPayload::InnerMessage(inner) => replies.push(inner),
                NetlinkPayload::Error(e) => match e.code {
                    Some(code) => {
                        let detail = ext_ack_message(m.header.flags, &e.header);
                        return Err(Fail::Kernel(
                            io::Error::from_raw_os_error(-code.get()),
                            detail,
                        ));
                    }
                    None if !dump => return Ok((replies, interrupted)),
                    None => {}
                },
                NetlinkPayload::Done(d) if d.code != 0 => {
                    return Err(Fail::Kernel(io::Error::from_raw_os_error(-d.code), None));
                }
                NetlinkPayload::Done(_) => return Ok((replies, interrupted)),
                NetlinkPayload::Overrun(_) => return Err(Fail::Reply("overrun".into())),
                _ => {}
            }
        }
    }
}

/// The extended-ACK error string in an NLMSG_ERROR payload (after the code):
/// the request's header (all of the request unless NLM_F_CAPPED), then
/// attributes when NLM_F_ACK_TLVS is set.
fn ext_ack_message(flags: u16, payload: &[u8]) -> Option<String> {
    const NLM_F_CAPPED: u16 = 0x100;
    const NLM_F_ACK_TLVS: u16 = 0x200;
    if flags & NLM_F_ACK_TLVS == 0 {
        return None;
    }
    let echoed = if flags & NLM_F_CAPPED != 0 {
        16
    } else {
        u32::from_ne_bytes(payload.get(0..4)?.try_into().ok()?) as usize
    };
    let mut rest = payload.get(echoed.checked_add(3)? & !3..)?;
    while rest.len() >= 4 {
        let len = u16::from_ne_bytes([rest[0], rest[1]]) as usize;
        let kind = u16::from_ne_bytes([rest[2], rest[3]]) & 0x3fff;
        if len < 4 || len > rest.len() {
            return None;
        }
        if kind == NLMSGERR_ATTR_MSG {
            let s = &rest[4..len];
            let s = s.split(|&c| c == 0).next().unwrap_or_default();
            return Some(String::from_utf8_lossy(s).into_owned());
        }
        rest = rest.get((len + 3) & !3..).unwrap_or_default();
    }
    None
}

fn request(msg: RouteNetlinkMessage, flags: u16) -> Result<Vec<RouteNetlinkMessage>, Fail> {
    transact(msg, flags).map(|(r, _)| r)
}

fn dump(msg: RouteNetlinkMessage) -> Result<Vec<RouteNetlinkMessage>, Fail> {
    for _ in 0..DUMP_TRIES {
        let (replies, interrupted) = transact(msg.clone(), NLM_F_DUMP)?;
        if !interrupted {
            return Ok(replies);
        }
    }
    Err(Fail::Reply(format!(
        "dump interrupted by concurrent changes {DUMP_TRIES} times"
    )))
}

/// The state of `dev`, or `None` when there is no such interface.
pub fn link_state(dev: &str) -> Result<Option<LinkState>, NetlinkError> {
    let mut msg = LinkMessage::default();
    msg.attributes.push(LinkAttribute::IfName(dev.to_string()));
    let replies = match request(RouteNetlinkMessage::GetLink(msg), 0) {
        Ok(r) => r,
        Err(e) => {
            return match e.at(dev, Op::ReadLink) {
                NetlinkError::NoSuchInterface { .. } => Ok(None),
                e => Err(e),
            }
        }
    };
    let link = replies
        .into_iter()
        .find_map(|r| match r {
            RouteNetlinkMessage::NewLink(l) => Some(l),
            _ => None,
        })
        .ok_or_else(|| Fail::Reply("no link message".into()).at(dev, Op::ReadLink))?;
    let mtu = link
        .attributes
        .iter()
        .find_map(|a| match a {
            LinkAttribute::Mtu(m) => Some(*m),
            _ => None,
        })
        .ok_or_else(|| Fail::Reply("link without IFLA_MTU".into()).at(dev, Op::ReadLink))?;
    Ok(Some(LinkState {
        index: link.header.index,
        up: link.header.flags.contains(LinkFlags::Up),
        mtu,
        lower_up: link.header.flags.contains(LinkFlags::LowerUp),
    }))
}

/// The state of `dev`; a missing interface is an error naming `op`.
fn existing(dev: &str, op: &Op) -> Result<LinkState, NetlinkError> {
    link_state(dev)?.ok_or_else(|| NetlinkError::NoSuchInterface {
        dev: dev.to_string(),
        op: op.clone(),
    })
}

fn set_link(dev: &str, op: Op, edit: impl FnOnce(&mut LinkMessage)) -> Result<(), NetlinkError> {
    let index = existing(dev, &op)?.index;
    let mut msg = LinkMessage::default();
    msg.header.index = index;
    edit(&mut msg);
    request(RouteNetlinkMessage::SetLink(msg), 0)
        .map(|_| ())
        .map_err(|e| e.at(dev, op))
}

/// Set `dev` administratively up or down.
pub fn set_up(dev: &str, up: bool) -> Result<(), NetlinkError> {
    set_link(dev, if up { Op::SetUp } else { Op::SetDown }, |m| {
        m.header.change_mask = LinkFlags::Up;
        m.header.flags = if up {
            LinkFlags::Up
        } else {
            LinkFlags::empty()
        };
    })
}

/// Set the MTU of `dev`.
pub fn set_mtu(dev: &str, mtu: u32) -> Result<(), NetlinkError> {
    set_link(dev, Op::SetMtu(mtu), |m| {
        m.attributes.push(LinkAttribute::Mtu(mtu))
    })
}

/// Delete `dev` (the revoked lockdown deletes the tunnel; a userspace
/// WireGuard exits when its tun device goes). Returns whether it existed.
pub fn delete_link(dev: &str) -> Result<bool, NetlinkError> {
    let Some(state) = link_state(dev)? else {
        return Ok(false);
    };
    let mut msg = LinkMessage::default();
    msg.header.index = state.index;
    match request(RouteNetlinkMessage::DelLink(msg), 0) {
        Ok(_) => Ok(true),
        // Gone between the read and the delete: deleted all the same.
        Err(e) => match e.at(dev, Op::DeleteLink) {
            NetlinkError::NoSuchInterface { .. } => Ok(false),
            e => Err(e),
        },
    }
}

/// The addresses (with prefix length) on `dev`, both families, every scope
/// (as `ip addr show dev` lists them).
pub fn addresses(dev: &str) -> Result<Vec<IpNet>, NetlinkError> {
    let op = Op::ListAddresses;
    let index = existing(dev, &op)?.index;
    let mut msg = AddressMessage::default();
    msg.header.index = index; // a hint: older kernels dump every interface
    let replies = dump(RouteNetlinkMessage::GetAddress(msg)).map_err(|e| e.at(dev, op.clone()))?;
    let mut out = Vec::new();
    for r in replies {
        let RouteNetlinkMessage::NewAddress(a) = r else {
            continue;
        };
        if a.header.index != index {
            continue;
        }
        // IFA_LOCAL is the interface's own address; IFA_ADDRESS is the peer
        // on point-to-point links, and the only one IPv6 usually sends.
        let local = a.attributes.iter().find_map(|x| match x {
            AddressAttribute::Local(ip) => Some(*ip),
            _ => None,
        });
        let address = a.attributes.iter().find_map(|x| match x {
            AddressAttribute::Address(ip) => Some(*ip),
            _ => None,
        });
        let Some(ip) = local.or(address) else {
            continue;
        };
        let net = IpNet::new(ip, a.header.prefix_len).map_err(|_| {
            Fail::Reply(format!("prefix /{} for {ip}", a.header.prefix_len)).at(dev, op.clone())
        })?;
        out.push(net);
    }
    Ok(out)
}

/// Add `address` to `dev`, or update it if it is there (NLM_F_REPLACE:
/// idempotent, like `ip addr replace`).
pub fn replace_address(dev: &str, address: IpNet, dad: Dad) -> Result<(), NetlinkError> {
    let op = Op::ReplaceAddress(address);
    let index = existing(dev, &op)?.index;
    let mut msg = AddressMessage::default();
    msg.header.family = family(address.addr());
    msg.header.prefix_len = address.prefix_len();
    msg.header.scope = AddressScope::Universe;
    msg.header.index = index;
    if address.addr().is_ipv6() && dad == Dad::Skip {
        msg.header.flags = AddressHeaderFlags::Nodad;
    }
    // As iproute2 sends it: local and address equal (no peer).
    msg.attributes.push(AddressAttribute::Local(address.addr()));
    msg.attributes
        .push(AddressAttribute::Address(address.addr()));
    request(
        RouteNetlinkMessage::NewAddress(msg),
        NLM_F_CREATE | NLM_F_REPLACE,
    )
    .map(|_| ())
    .map_err(|e| e.at(dev, op))
}

/// A default route via `gateway` out of interface `index` with `metric`
/// in the main table (unicast), for replace and delete alike.
fn default_route_msg(gateway: IpAddr, index: u32, metric: u32) -> RouteMessage {
    let mut msg = RouteMessage::default();
    msg.header.address_family = family(gateway);
    msg.header.destination_prefix_length = 0;
    msg.header.table = RouteHeader::RT_TABLE_MAIN;
    msg.header.kind = RouteType::Unicast;
    msg.attributes.push(RouteAttribute::Gateway(RouteAddress::from(gateway)));
    msg.attributes.push(RouteAttribute::Oif(index));
    msg.attributes.push(RouteAttribute::Priority(metric));
    msg
}

/// Install or replace the default route of `gateway`'s family through `dev`
/// with `metric` (main table; replaces the route with the same metric, like
/// `ip route replace default via .. dev .. metric ..`).
pub fn replace_default_route(dev: &str, gateway: IpAddr, metric: u32) -> Result<(), NetlinkError> {
    let op = Op::ReplaceDefaultRoute { gateway, metric };
    let index = existing(dev, &op)?.index;
    let mut msg = default_route_msg(gateway, index, metric);
    msg.header.protocol = RouteProtocol::Boot;
    msg.header.scope = RouteScope::Universe;
    request(
        RouteNetlinkMessage::NewRoute(msg),
        NLM_F_CREATE | NLM_F_REPLACE,
    )
    .map(|_| ())
    .map_err(|e| e.at(dev, op))
}

/// Delete the default route via `gateway` on `dev` with `metric` (main
/// table). A route that is already gone is not an error.
pub fn delete_default_route(dev: &str, gateway: IpAddr, metric: u32) -> Result<(), NetlinkError> {
    let op = Op::DeleteDefaultRoute { gateway, metric };
    let index = existing(dev, &op)?.index;
    let mut msg = default_route_msg(gateway, index, metric);
    msg.header.scope = RouteScope::NoWhere;
    match request(RouteNetlinkMessage::DelRoute(msg), 0) {
        Ok(_) => Ok(()),
        Err(Fail::Kernel(e, _)) if e.raw_os_error() == Some(libc::ESRCH) => Ok(()),
        Err(e) => Err(e.at(dev, op)),
    }
}

/// The default routes (main table, both families) that leave through `dev`.
pub fn default_routes(dev: &str) -> Result<Vec<DefaultRoute>, NetlinkError> {
    let op = Op::ListRoutes;
    let index = existing(dev, &op)?.index;
    let mut out = Vec::new();
    for fam in [AddressFamily::Inet, AddressFamily::Inet6] {
        let mut msg = RouteMessage::default();
        msg.header.address_family = fam;
        for r in dump(RouteNetlinkMessage::GetRoute(msg)).map_err(|e| e.at(dev, op.clone()))? {
            let RouteNetlinkMessage::NewRoute(r) = r else {
                continue;
            };
            let table = r
                .attributes
                .iter()
                .find_map(|a| match a {
                    RouteAttribute::Table(t) => Some(*t),
                    _ => None,
                })
                .unwrap_or(u32::from(r.header.table));
            if r.header.destination_prefix_length != 0
                || table != u32::from(RouteHeader::RT_TABLE_MAIN)
                || r.header.kind != RouteType::Unicast
            {
                continue;
            }
            let mut oif = None;
            let mut gateway = None;
            let mut metric = 0;
            for a in &r.attributes {
                match a {
                    RouteAttribute::Oif(i) => oif = Some(*i),
                    RouteAttribute::Gateway(RouteAddress::Inet(g)) => {
                        gateway = Some(IpAddr::V4(*g))
                    }
                    RouteAttribute::Gateway(RouteAddress::Inet6(g)) => {
                        gateway = Some(IpAddr::V6(*g))
                    }
                    RouteAttribute::Priority(p) => metric = *p,
                    _ => {}
                }
            }
            if let (Some(i), Some(gateway)) = (oif, gateway) {
                if i == index {
                    out.push(DefaultRoute { gateway, metric });
                }
            }
        }
    }
    Ok(out)
}

/// A socket subscribed to the kernel's link and address notifications
/// (RTMGRP_LINK, RTMGRP_IPV4_IFADDR, RTMGRP_IPV6_IFADDR): carrier changes,
/// links going up or down, addresses added or removed (DHCP). The messages
/// are not parsed: a caller re-reads the state it cares about.
pub struct Watch(Socket);

impl Watch {
    pub fn new() -> io::Result<Watch> {
        const RTMGRP_LINK: u32 = 0x1;
        const RTMGRP_IPV4_IFADDR: u32 = 0x10;
        const RTMGRP_IPV6_IFADDR: u32 = 0x100;
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.bind(&SocketAddr::new(0, RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR))?;
        Ok(Watch(socket))
    }

    /// Block until the kernel sends a notification (or the socket overran,
    /// which means the same: something changed).
    pub fn wait(&mut self) -> io::Result<()> {
        let mut buf: Vec<u8> = Vec::with_capacity(RECV_BUF);
        match self.0.recv(&mut buf, 0) {
            Ok(_) => Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

fn family(ip: IpAddr) -> AddressFamily {
    if ip.is_ipv6() {
        AddressFamily::Inet6
    } else {
        AddressFamily::Inet
    }
}

/// One change to a link, an address or a route: what planners emit.
/// `Display` reads like the equivalent `ip` command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    SetUp {
        dev: String,
        up: bool,
    },
    SetMtu {
        dev: String,
        mtu: u32,
    },
    ReplaceAddress {
        dev: String,
        address: IpNet,
        dad: Dad,
    },
    ReplaceDefaultRoute {
        dev: String,
        gateway: IpAddr,
        metric: u32,
    },
    DeleteDefaultRoute {
        dev: String,
        gateway: IpAddr,
        metric: u32,
    },
}

impl Change {
    /// Perform it against the kernel.
    pub fn apply(&self) -> Result<(), NetlinkError> {
        match self {
            Change::SetUp { dev, up } => set_up(dev, *up),
            Change::SetMtu { dev, mtu } => set_mtu(dev, *mtu),
            Change::ReplaceAddress { dev, address, dad } => replace_address(dev, *address, *dad),
            Change::ReplaceDefaultRoute {
                dev,
                gateway,
                metric,
            } => replace_default_route(dev, *gateway, *metric),
            Change::DeleteDefaultRoute {
                dev,
                gateway,
                metric,
            } => delete_default_route(dev, *gateway, *metric),
        }
    }
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Change::SetUp { dev, up } => {
                write!(f, "link set {dev} {}", if *up { "up" } else { "down" })
            }
            Change::SetMtu { dev, mtu } => write!(f, "link set {dev} mtu {mtu}"),
            Change::ReplaceAddress { dev, address, dad } => {
                write!(f, "addr replace {address} dev {dev}")?;
                if address.addr().is_ipv6() && *dad == Dad::Skip {
                    write!(f, " nodad")?;
                }
                Ok(())
            }
            Change::ReplaceDefaultRoute {
                dev,
                gateway,
                metric,
            } => {
                let fam = if gateway.is_ipv6() { "-6" } else { "-4" };
                write!(
                    f,
                    "{fam} route replace default via {gateway} dev {dev} metric {metric}"
                )
            }
            Change::DeleteDefaultRoute {
                dev,
                gateway,
                metric,
            } => {
                let fam = if gateway.is_ipv6() { "-6" } else { "-4" };
                write!(
                    f,
                    "{fam} route delete default via {gateway} dev {dev} metric {metric}"
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_read_like_ip_commands() {
        let c = [
            Change::SetUp {
                dev: "wg0".into(),
                up: true,
            },
            Change::SetMtu {
                dev: "wg0".into(),
                mtu: 1420,
            },
            Change::ReplaceAddress {
                dev: "wg0".into(),
                address: "fd00::1/64".parse().unwrap(),
                dad: Dad::Skip,
            },
            Change::ReplaceAddress {
                dev: "wg0".into(),
                address: "10.0.0.1/24".parse().unwrap(),
                dad: Dad::Skip,
            },
            Change::ReplaceDefaultRoute {
                dev: "eth0".into(),
                gateway: "2001:db8::1".parse().unwrap(),
                metric: 100,
            },
        ];
        let s: Vec<String> = c.iter().map(Change::to_string).collect();
        assert_eq!(
            s,
            [
                "link set wg0 up",
                "link set wg0 mtu 1420",
                "addr replace fd00::1/64 dev wg0 nodad",
                "addr replace 10.0.0.1/24 dev wg0",
                "-6 route replace default via 2001:db8::1 dev eth0 metric 100",
            ]
        );
    }

    #[test]
    fn errors_name_interface_operation_and_kernel_detail() {
        let e = Fail::Kernel(
            io::Error::from_raw_os_error(libc::ENETUNREACH),
            Some("Nexthop has invalid gateway".into()),
        )
        .at(
            "eth0",
            Op::ReplaceDefaultRoute {
                gateway: "192.0.2.1".parse().unwrap(),
                metric: 0,
            },
        );
        let s = e.to_string();
        assert!(
            s.starts_with("replace default route via 192.0.2.1 metric 0 on eth0: "),
            "{s}"
        );
        assert!(s.ends_with("(os error 101): Nexthop has invalid gateway"), "{s}");
        assert_eq!(e.errno(), Some(libc::ENETUNREACH));
        let e = Fail::Kernel(io::Error::from_raw_os_error(libc::ENODEV), None).at("wg9", Op::SetUp);
        assert!(matches!(e, NetlinkError::NoSuchInterface { .. }));
        assert_eq!(e.to_string(), "set link up on wg9: no such interface");
    }

    #[test]
    fn ext_ack_message_is_read_from_capped_and_uncapped_errors() {
        // Capped: the 16-byte request header, then NLMSGERR_ATTR_MSG.
        let mut p = vec![0u8; 16];
        let msg = b"Invalid prefix\0";
        p.extend_from_slice(&((4 + msg.len()) as u16).to_ne_bytes());
        p.extend_from_slice(&NLMSGERR_ATTR_MSG.to_ne_bytes());
        p.extend_from_slice(msg);
        assert_eq!(
            ext_ack_message(0x300, &p).as_deref(),
            Some("Invalid prefix")
        );
        assert_eq!(
            ext_ack_message(0x100, &p),
            None,
            "no NLM_F_ACK_TLVS, no message"
        );
        // Uncapped: the whole 20-byte request, length in its first word.
        let mut u = 20u32.to_ne_bytes().to_vec();
        u.resize(20, 0);
        u.extend_from_slice(&p[16..]);
        assert_eq!(
            ext_ack_message(0x200, &u).as_deref(),
            Some("Invalid prefix")
        );
        // Truncated or lying lengths read as no message, never a panic.
        assert_eq!(ext_ack_message(0x300, &p[..19]), None);
        let mut bad = p.clone();
        bad[16] = 0xff;
        assert_eq!(ext_ack_message(0x300, &bad), None);
        assert_eq!(ext_ack_message(0x200, &[0xff, 0xff, 0xff, 0x7f]), None);
    }
}
