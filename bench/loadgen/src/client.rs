//! One simulated client: a boringtun tunnel, a smoltcp interface with one TCP
//! and one UDP socket, and the flows it runs (DNS, UDP echo, HTTP over TCP).

use boringtun::noise::{Tunn, TunnResult};
use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::phy::{Device, DeviceCapabilities, Medium};
use smoltcp::socket::{tcp, udp};
use smoltcp::time::Instant as SInstant;
use smoltcp::wire::{HardwareAddress, IpAddress, IpCidr, IpEndpoint};
use std::collections::VecDeque;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

/// The tunnel MTU of the bed's clients.
pub const MTU: usize = 1420;
const UDP_LOCAL_PORT: u16 = 40000;
const DNS_TIMEOUT: Duration = Duration::from_secs(2);
const ECHO_TIMEOUT: Duration = Duration::from_secs(2);
/// A TCP flow with no byte for this long is aborted and counted failed.
const TCP_STALL: Duration = Duration::from_secs(30);

/// Packets between boringtun and smoltcp: `rx` from the tunnel into the
/// stack, `tx` from the stack to the tunnel.
#[derive(Default)]
pub struct QueueDev {
    pub rx: VecDeque<Vec<u8>>,
    pub tx: VecDeque<Vec<u8>>,
}

pub struct RxTok(Vec<u8>);
pub struct TxTok<'a>(&'a mut VecDeque<Vec<u8>>);

impl smoltcp::phy::RxToken for RxTok {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

impl smoltcp::phy::TxToken for TxTok<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut b = vec![0u8; len];
        let r = f(&mut b);
        self.0.push_back(b);
        r
    }
}

impl Device for QueueDev {
    type RxToken<'a> = RxTok;
    type TxToken<'a> = TxTok<'a>;

    fn receive(&mut self, _t: SInstant) -> Option<(RxTok, TxTok<'_>)> {
        let p = self.rx.pop_front()?;
        Some((RxTok(p), TxTok(&mut self.tx)))
    }

    fn transmit(&mut self, _t: SInstant) -> Option<TxTok<'_>> {
        Some(TxTok(&mut self.tx))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut c = DeviceCapabilities::default();
        c.medium = Medium::Ip;
        c.max_transmission_unit = MTU;
        c
    }
}

/// Where a client is in its life.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Phase {
    /// Waiting for its slot in the handshake ramp.
    Waiting,
    /// Initiation sent at the instant; no session yet.
    Handshaking(Instant),
    /// Session up.
    Up,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum TcpFlow {
    Idle,
    /// Connect issued; request not yet sent.
    Connecting(Instant),
    /// Request sent; reading the answer until the server closes.
    Reading(Instant),
}

/// Per-client counters for the report.
#[derive(Debug, Default, Clone)]
pub struct ClientStats {
    /// Application bytes received (HTTP answers and UDP echoes).
    pub goodput_bytes: u64,
    /// When the session first came up.
    pub up_at: Option<Instant>,
    pub handshake_latency: Option<Duration>,
    /// Rounds started (each one `Flows::interval` of scheduled time).
    pub rounds: u32,
}

/// Flow settings shared by every client.
#[derive(Debug, Clone)]
pub struct Flows {
    pub dns: SocketAddr,
    pub web: SocketAddr,
    pub echo: SocketAddr,
    pub http_path: String,
    pub udp_size: usize,
    /// Distinct names the clients cycle through (under canary.example.test).
    pub dns_names: u32,
    pub interval: Duration,
    pub tcp_window: usize,
}

/// Events a client reports to the run's aggregate counters.
#[derive(Debug, Default)]
pub struct Agg {
    pub initiations: u64,
    pub cookie_replies: u64,
    pub decap_errors: u64,
    pub expired: u64,
    pub dns_sent: u64,
    pub dns_ok: u64,
    pub dns_timeouts: u64,
    pub dns_latency_ms: Vec<f64>,
    pub echo_sent: u64,
    pub echo_ok: u64,
    pub echo_lost: u64,
    pub echo_rtt_ms: Vec<f64>,
    pub tcp_started: u64,
    pub tcp_done: u64,
    pub tcp_failed: u64,
    pub tx_datagrams: u64,
    pub rx_datagrams: u64,
    pub send_errors: u64,
}

pub struct Client {
    pub index: u32,
    pub tunn: Tunn,
    pub sock: mio::net::UdpSocket,
    pub phase: Phase,
    pub stats: ClientStats,
    pub wake: Instant,
    iface: Interface,
    dev: QueueDev,
    sockets: SocketSet<'static>,
    tcp: SocketHandle,
    udp: SocketHandle,
    tcp_flow: TcpFlow,
    tcp_seq: u16,
    request_sent: bool,
    dns_pending: Option<(u16, Instant)>,
    dns_seq: u32,
    echo_pending: Option<Instant>,
    next_round: Option<Instant>,
    /// Flows start at this instant (all clients up, or the ramp's deadline).
    flows_from: Option<Instant>,
    /// No round starts after this (its answers could not come back in time).
    last_round_by: Option<Instant>,
    t0: Instant,
}

/// An IPv4 socket address as smoltcp's endpoint (the run validated IPv4).
fn ep(a: SocketAddr) -> IpEndpoint {
    let ip = match a.ip() {
        std::net::IpAddr::V4(v) => v,
        std::net::IpAddr::V6(_) => Ipv4Addr::UNSPECIFIED,
    };
    IpEndpoint::new(IpAddress::Ipv4(ip), a.port())
}

impl Client {
    pub fn new(
        index: u32,
        tunn: Tunn,
        sock: mio::net::UdpSocket,
        v4: Ipv4Addr,
        node_v4: Ipv4Addr,
        flows: &Flows,
        t0: Instant,
    ) -> Client {
        let mut dev = QueueDev::default();
        let mut cfg = Config::new(HardwareAddress::Ip);
        cfg.random_seed = u64::from(index).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0x5eed;
        let now = SInstant::from_micros(t0.elapsed().as_micros() as i64);
        let mut iface = Interface::new(cfg, &mut dev, now);
        iface.update_ip_addrs(|a| {
            let _ = a.push(IpCidr::new(IpAddress::Ipv4(v4), 16));
        });
        let _ = iface.routes_mut().add_default_ipv4_route(node_v4);
        let mut sockets = SocketSet::new(Vec::with_capacity(2));
        let tcp = sockets.add(tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0; flows.tcp_window]),
            tcp::SocketBuffer::new(vec![0; 256]),
        ));
        let mut u = udp::Socket::new(
            udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 4], vec![0; 4096]),
            udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 4], vec![0; 4096]),
        );
        u.bind(UDP_LOCAL_PORT).expect("bind a fresh UDP socket");
        let udp = sockets.add(u);
        Client {
            index,
            tunn,
            sock,
            phase: Phase::Waiting,
            stats: ClientStats::default(),
            wake: t0,
            iface,
            dev,
            sockets,
            tcp,
            udp,
            tcp_flow: TcpFlow::Idle,
            tcp_seq: 0,
            request_sent: false,
            dns_pending: None,
            dns_seq: 0,
            echo_pending: None,
            next_round: None,
            flows_from: None,
            last_round_by: None,
            t0,
        }
    }

    fn send(&self, pkt: &[u8], agg: &mut Agg) {
        if pkt.len() == 148 && pkt[0] == 1 {
            agg.initiations += 1;
        }
        match self.sock.send(pkt) {
            Ok(_) => agg.tx_datagrams += 1,
            Err(_) => agg.send_errors += 1,
        }
    }

    /// Send the first handshake initiation.
    pub fn initiate(&mut self, now: Instant, buf: &mut [u8], agg: &mut Agg) {
        if let TunnResult::WriteToNetwork(p) = self.tunn.format_handshake_initiation(buf, false) {
            let p: &[u8] = p;
            self.send(p, agg);
        }
        self.phase = Phase::Handshaking(now);
    }

    /// Flows begin at `at` (after the ramp), first round after `jitter`;
    /// no round starts after `last_round_by`.
    pub fn start_flows(&mut self, at: Instant, jitter: Duration, last_round_by: Instant) {
        self.flows_from = Some(at);
        self.last_round_by = Some(last_round_by);
        self.next_round = Some(at + jitter);
    }

    /// One datagram from the node.
    pub fn on_datagram(
        &mut self,
        now: Instant,
        data: &[u8],
        from: std::net::IpAddr,
        buf: &mut [u8],
        agg: &mut Agg,
    ) {
        agg.rx_datagrams += 1;
        if data.first() == Some(&3) && data.len() == 64 {
            agg.cookie_replies += 1;
        }
        let mut first = true;
        loop {
            let src: &[u8] = if first { data } else { &[] };
            let res = self.tunn.decapsulate(Some(from), src, buf);
            first = false;
            match res {
                TunnResult::WriteToNetwork(p) => {
                    let p: &[u8] = p;
                    self.send(p, agg);
                    continue;
                }
                TunnResult::WriteToTunnelV4(p, _) => self.dev.rx.push_back(p.to_vec()),
                TunnResult::WriteToTunnelV6(_, _) => {}
                TunnResult::Err(_) => agg.decap_errors += 1,
                TunnResult::Done => {}
            }
            break;
        }
        if let Phase::Handshaking(since) = self.phase {
            if self.tunn.time_since_last_handshake().is_some() {
                self.phase = Phase::Up;
                self.stats.up_at = Some(now);
                self.stats.handshake_latency = Some(now - since);
            }
        }
    }

    /// Timers, flows and the stack; sends what the stack emits. Sets `wake`.
    pub fn step(
        &mut self,
        now: Instant,
        flows: &Flows,
        buf: &mut [u8],
        agg: &mut Agg,
        scratch: &mut [u8],
    ) {
        match self.tunn.update_timers(buf) {
            TunnResult::WriteToNetwork(p) => {
                let p: &[u8] = p;
                self.send(p, agg);
            }
            TunnResult::Err(boringtun::noise::errors::WireGuardError::ConnectionExpired) => {
                agg.expired += 1;
                // Keep trying while the run lasts (a fresh initiation).
                if self.phase != Phase::Up {
                    self.initiate(now, buf, agg);
                }
            }
            _ => {}
        }
        let mut next = now + Duration::from_millis(1000 + u64::from(self.index % 97));
        if self.phase == Phase::Up && self.flows_from.is_some_and(|f| now >= f) {
            let sn = SInstant::from_micros((now - self.t0).as_micros() as i64);
            self.iface.poll(sn, &mut self.dev, &mut self.sockets);
            self.app(now, flows, agg, scratch);
            self.iface.poll(sn, &mut self.dev, &mut self.sockets);
            if let Some(d) = self.iface.poll_delay(sn, &self.sockets) {
                next = next.min(now + Duration::from_micros(d.total_micros().max(1000)));
            }
            if let Some(r) = self.next_round {
                next = next.min(r.max(now + Duration::from_millis(1)));
            }
            if let Some((_, t)) = self.dns_pending {
                next = next.min(t + DNS_TIMEOUT);
            }
            if let Some(t) = self.echo_pending {
                next = next.min(t + ECHO_TIMEOUT);
            }
        } else {
            // Before flows: drop whatever the tunnel delivered.
            self.dev.rx.clear();
        }
        while let Some(pkt) = self.dev.tx.pop_front() {
            if let TunnResult::WriteToNetwork(p) = self.tunn.encapsulate(&pkt, buf) {
                let p: &[u8] = p;
                self.send(p, agg);
            }
        }
        self.wake = next;
    }

    fn app(&mut self, now: Instant, flows: &Flows, agg: &mut Agg, scratch: &mut [u8]) {
        // UDP answers: DNS from the resolver, echoes from the web host.
        let dns_ep = ep(flows.dns);
        loop {
            let u = self.sockets.get_mut::<udp::Socket>(self.udp);
            let Ok((n, meta)) = u.recv_slice(scratch) else {
                break;
            };
            if meta.endpoint == dns_ep {
                if let Some((id, t)) = self.dns_pending {
                    if n >= 4
                        && u16::from_be_bytes([scratch[0], scratch[1]]) == id
                        && scratch[2] & 0x80 != 0
                    {
                        agg.dns_ok += 1;
                        agg.dns_latency_ms.push((now - t).as_secs_f64() * 1e3);
                        self.dns_pending = None;
                    }
                }
            } else if let Some(t) = self.echo_pending.take() {
                agg.echo_ok += 1;
                agg.echo_rtt_ms.push((now - t).as_secs_f64() * 1e3);
                self.stats.goodput_bytes += n as u64;
            }
        }
        if let Some((_, t)) = self.dns_pending {
            if now >= t + DNS_TIMEOUT {
                agg.dns_timeouts += 1;
                self.dns_pending = None;
            }
        }
        if let Some(t) = self.echo_pending {
            if now >= t + ECHO_TIMEOUT {
                agg.echo_lost += 1;
                self.echo_pending = None;
            }
        }
        self.tcp_step(now, flows, agg, scratch);
        // A new round: one DNS query, one echo, one HTTP GET (if the last ended).
        if self.next_round.is_some_and(|r| now >= r) && self.last_round_by.is_some_and(|l| now > l)
        {
            self.next_round = None;
        }
        if self.next_round.is_some_and(|r| now >= r) {
            self.next_round = Some(now + flows.interval);
            self.stats.rounds += 1;
            if self.dns_pending.is_none() {
                self.dns_seq = self.dns_seq.wrapping_add(1);
                let id = (self.index as u16) ^ (self.dns_seq as u16).rotate_left(7);
                let name_ix = (self.index.wrapping_mul(31).wrapping_add(self.dns_seq))
                    % flows.dns_names.max(1);
                let q = dns_query(id, &format!("n{name_ix}.canary.example.test"));
                let u = self.sockets.get_mut::<udp::Socket>(self.udp);
                if u.send_slice(&q, dns_ep).is_ok() {
                    agg.dns_sent += 1;
                    self.dns_pending = Some((id, now));
                }
            }
            if self.echo_pending.is_none() && flows.udp_size > 0 {
                let mut payload = format!("pal-loadgen {} ", self.dns_seq).into_bytes();
                payload.resize(flows.udp_size, b'x');
                let u = self.sockets.get_mut::<udp::Socket>(self.udp);
                if u.send_slice(&payload, ep(flows.echo)).is_ok() {
                    agg.echo_sent += 1;
                    self.echo_pending = Some(now);
                }
            }
            if self.tcp_flow == TcpFlow::Idle && !flows.http_path.is_empty() {
                let s = self.sockets.get_mut::<tcp::Socket>(self.tcp);
                if s.state() != tcp::State::Closed {
                    s.abort();
                }
                self.tcp_seq = self.tcp_seq.wrapping_add(1);
                let port = 20000 + self.tcp_seq % 20000;
                if s.connect(self.iface.context(), ep(flows.web), port).is_ok() {
                    agg.tcp_started += 1;
                    self.tcp_flow = TcpFlow::Connecting(now);
                    self.request_sent = false;
                }
            }
        }
    }

    fn tcp_step(&mut self, now: Instant, flows: &Flows, agg: &mut Agg, scratch: &mut [u8]) {
        let s = self.sockets.get_mut::<tcp::Socket>(self.tcp);
        match self.tcp_flow {
            TcpFlow::Idle => {}
            TcpFlow::Connecting(since) | TcpFlow::Reading(since) => {
                if !self.request_sent && s.may_send() {
                    let req = format!("GET {} HTTP/1.0\r\nHost: loadgen\r\n\r\n", flows.http_path);
                    if s.send_slice(req.as_bytes()).is_ok() {
                        self.request_sent = true;
                        self.tcp_flow = TcpFlow::Reading(now);
                    }
                }
                let mut progressed = false;
                while s.can_recv() {
                    match s.recv_slice(scratch) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            self.stats.goodput_bytes += n as u64;
                            progressed = true;
                        }
                    }
                }
                if progressed {
                    self.tcp_flow = TcpFlow::Reading(now);
                }
                let state = s.state();
                if self.request_sent
                    && !s.may_recv()
                    && matches!(
                        state,
                        tcp::State::CloseWait
                            | tcp::State::TimeWait
                            | tcp::State::Closing
                            | tcp::State::LastAck
                    )
                {
                    s.close();
                    agg.tcp_done += 1;
                    self.tcp_flow = TcpFlow::Idle;
                } else if state == tcp::State::Closed {
                    agg.tcp_failed += 1;
                    self.tcp_flow = TcpFlow::Idle;
                } else if now >= since + TCP_STALL {
                    s.abort();
                    agg.tcp_failed += 1;
                    self.tcp_flow = TcpFlow::Idle;
                }
            }
        }
    }
}

/// A recursive A query for `name` with `id`.
pub fn dns_query(id: u16, name: &str) -> Vec<u8> {
    let mut q = Vec::with_capacity(12 + name.len() + 6);
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.split('.').filter(|l| !l.is_empty()) {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_query_wire_format() {
        let q = dns_query(0x1234, "a.bc.");
        assert_eq!(
            q,
            [0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1, b'a', 2, b'b', b'c', 0, 0, 1, 0, 1]
        );
    }
}
