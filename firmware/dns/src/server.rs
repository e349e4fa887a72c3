//! Sockets: UDP and TCP on the given addresses only (IP_FREEBIND, so the
//! tunnel address may appear later). UDP is served by one blocking thread per
//! core on SO_REUSEPORT sockets, batching with recvmmsg/sendmmsg (cache hits
//! and blocks are answered on that thread, with no task or allocation beyond
//! the reply); cache misses and TCP run on the tokio runtime.

use crate::engine::{Engine, Outcome};
use nix::sys::socket::{
    recvmmsg, sendmmsg, ControlMessage, MsgFlags, MultiHeaders, SockaddrStorage,
};
use socket2::{Domain, Protocol, Socket, Type};
use std::io::{self, IoSlice, IoSliceMut};
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

/// Idle time allowed between queries on a TCP connection.
pub const TCP_IDLE: Duration = Duration::from_secs(10);
/// Time allowed to deliver one query once its length arrived (slow clients).
pub const TCP_BODY: Duration = Duration::from_secs(3);
/// TCP connections open at once, all clients together.
pub const TCP_MAX_CONNS: usize = 256;
/// TCP connections open at once from one client address: one client (one
/// peer's tunnel address) cannot take every slot.
pub const TCP_MAX_CONNS_PER_CLIENT: usize = 16;
const TCP_MAX_QUERIES: usize = 1000;
const POLL: Duration = Duration::from_millis(200);

struct Listener {
    addr: SocketAddr,
    bound: SocketAddr,
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
    tcp_stop: watch::Sender<bool>,
    tcp: tokio::task::JoinHandle<()>,
}

/// The resolver's listeners. Create inside a tokio runtime.
pub struct Server {
    engine: Arc<Engine>,
    rt: tokio::runtime::Handle,
    listeners: Mutex<Vec<Listener>>,
    udp_threads: usize,
}

fn udp_socket(addr: SocketAddr) -> io::Result<Socket> {
    let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    s.set_reuse_port(true)?;
    if addr.is_ipv4() {
        s.set_freebind_v4(true)?;
    } else {
        s.set_only_v6(true)?;
        s.set_freebind_v6(true)?;
    }
    let _ = s.set_recv_buffer_size(4 << 20);
    s.bind(&addr.into())?;
    s.set_read_timeout(Some(POLL))?;
    Ok(s)
}

fn tcp_listener(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    s.set_reuse_address(true)?;
    if addr.is_ipv4() {
        s.set_freebind_v4(true)?;
    } else {
        s.set_only_v6(true)?;
        s.set_freebind_v6(true)?;
    }
    s.bind(&addr.into())?;
    s.listen(128)?;
    s.set_nonblocking(true)?;
    Ok(s.into())
}

impl Server {
    /// Listen on `addrs` (UDP and TCP each). Port 0 picks one port, the
    /// same for UDP and TCP; see [`Server::local_addrs`].
    pub fn start(engine: Arc<Engine>, addrs: &[SocketAddr]) -> io::Result<Server> {
        let threads = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
            .clamp(1, 8);
        let s = Server {
            engine,
            rt: tokio::runtime::Handle::current(),
            listeners: Mutex::new(Vec::new()),
            udp_threads: threads,
        };
        s.set_listen(addrs)?;
        Ok(s)
    }

    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    /// The bound addresses (after port 0 was resolved).
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|l| l.bound)
            .collect()
    }

    /// Follow a change of addresses: bind the new ones, close the old ones.
    /// On error, listeners already open stay open.
    pub fn set_listen(&self, addrs: &[SocketAddr]) -> io::Result<()> {
        let mut ls = self.listeners.lock().unwrap_or_else(|e| e.into_inner());
        let mut keep = Vec::new();
        for l in ls.drain(..) {
            if addrs.contains(&l.addr) {
                keep.push(l);
            } else {
                l.stop_now();
            }
        }
        *ls = keep;
        for a in addrs {
            if ls.iter().any(|l| l.addr == *a) {
                continue;
            }
            ls.push(self.listen(*a)?);
        }
        Ok(())
    }

    fn listen(&self, addr: SocketAddr) -> io::Result<Listener> {
        let first = udp_socket(addr)?;
        let bound = first
            .local_addr()?
            .as_socket()
            .ok_or_else(|| io::Error::other("no socket address"))?;
        let mut socks = vec![first];
        for _ in 1..self.udp_threads {
            socks.push(udp_socket(bound)?);
        }
        let tcp = tcp_listener(bound)?;
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for (i, s) in socks.into_iter().enumerate() {
            let sock: Arc<UdpSocket> = Arc::new(s.into());
            let engine = self.engine.clone();
            let stop = stop.clone();
            let rt = self.rt.clone();
            threads.push(
                std::thread::Builder::new()
                    .name(format!("dns-udp-{i}"))
                    .spawn(move || udp_loop(sock, engine, rt, stop))?,
            );
        }
        let (tcp_stop, rx) = watch::channel(false);
        let _guard = self.rt.enter();
        let listener = tokio::net::TcpListener::from_std(tcp)?;
        let tcp = self.rt.spawn(tcp_accept(listener, self.engine.clone(), rx));
        Ok(Listener {
            addr,
            bound,
            stop,
            threads,
            tcp_stop,
            tcp,
        })
    }

    /// Close every listener and wait for the UDP threads.
    pub async fn stop(&self) {
        let ls: Vec<Listener> = self
            .listeners
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
            .collect();
        let mut threads = Vec::new();
        for mut l in ls {
            threads.append(&mut l.threads);
            l.stop_now();
        }
        let _ = tokio::task::spawn_blocking(move || {
            for t in threads {
                let _ = t.join();
            }
        })
        .await;
    }
}

impl Listener {
    fn stop_now(self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.tcp_stop.send(true);
        self.tcp.abort();
        // Threads notice the flag within POLL; they are detached here.
    }
}

/// Datagrams taken per `recvmmsg` and replies sent per `sendmmsg`: under
/// load one system call moves a batch; when idle it returns with one packet.
const BATCH: usize = 32;
/// Largest query accepted over UDP (bigger datagrams are truncated by the
/// kernel and then fail parsing: FORMERR).
const MAX_UDP_QUERY: usize = 4096;

fn to_socket_addr(a: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = a.as_sockaddr_in() {
        return Some(SocketAddr::V4((*v4).into()));
    }
    a.as_sockaddr_in6().map(|v6| SocketAddr::V6((*v6).into()))
}

fn udp_loop(
    sock: Arc<UdpSocket>,
    engine: Arc<Engine>,
    rt: tokio::runtime::Handle,
    stop: Arc<AtomicBool>,
) {
    let fd = sock.as_raw_fd();
    let mut bufs = vec![[0u8; MAX_UDP_QUERY]; BATCH];
    let mut rhdrs = MultiHeaders::<SockaddrStorage>::preallocate(BATCH, None);
    let mut shdrs = MultiHeaders::<SockaddrStorage>::preallocate(BATCH, None);
    let mut got: Vec<(usize, Option<SockaddrStorage>)> = Vec::with_capacity(BATCH);
    let mut replies: Vec<Vec<u8>> = Vec::with_capacity(BATCH);
    let mut dests: Vec<Option<SockaddrStorage>> = Vec::with_capacity(BATCH);
    while !stop.load(Ordering::Relaxed) {
        got.clear();
        {
            let mut iovs: Vec<[IoSliceMut<'_>; 1]> = bufs
                .iter_mut()
                .map(|b| [IoSliceMut::new(&mut b[..])])
                .collect();
            // MSG_WAITFORONE: block (up to SO_RCVTIMEO) for the first datagram,
            // then take whatever else is queued without waiting.
            match recvmmsg(
                fd,
                &mut rhdrs,
                iovs.iter_mut(),
                MsgFlags::MSG_WAITFORONE,
                None,
            ) {
                Ok(res) => got.extend(res.map(|r| (r.bytes, r.address))),
                // Timeouts (stop-flag polling), interrupts, and ICMP errors
                // from earlier sends surfacing here: none is fatal.
                Err(_) => continue,
            }
        }
        for (i, (n, addr)) in got.iter().enumerate() {
            let Some(src) = addr.as_ref().and_then(to_socket_addr) else {
                continue;
            };
            match engine.handle(&bufs[i][..*n], src.ip(), false) {
                Outcome::Reply(r) => {
                    replies.push(r);
                    dests.push(*addr);
                }
                Outcome::Drop => {}
                Outcome::Resolve(p) => {
                    let sock = sock.clone();
                    let engine = engine.clone();
                    rt.spawn(async move {
                        let r = engine.resolve(p).await;
                        let _ = sock.send_to(&r, src);
                    });
                }
            }
        }
        if replies.is_empty() {
            continue;
        }
        let sent = {
            let slices: Vec<[IoSlice<'_>; 1]> = replies.iter().map(|r| [IoSlice::new(r)]).collect();
            let no_cmsgs: [ControlMessage<'_>; 0] = [];
            sendmmsg(
                fd,
                &mut shdrs,
                slices.iter(),
                &dests[..],
                no_cmsgs,
                MsgFlags::empty(),
            )
            .map(|r| r.count())
            .unwrap_or(0)
        };
        // A partial batch (socket buffer full, an error on one reply): send
        // the rest one by one; UDP is best effort, failures are dropped.
        for (r, d) in replies.iter().zip(&dests).skip(sent) {
            if let Some(dst) = d.as_ref().and_then(to_socket_addr) {
                let _ = sock.send_to(r, dst);
            }
        }
        replies.clear();
        dests.clear();
    }
}

async fn tcp_accept(
    listener: tokio::net::TcpListener,
    engine: Arc<Engine>,
    stop: watch::Receiver<bool>,
) {
    let conns = Arc::new(tokio::sync::Semaphore::new(TCP_MAX_CONNS));
    let per_client = Arc::new(Mutex::new(std::collections::HashMap::<IpAddr, usize>::new()));
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        // Not from the tunnel: close at once, before reading anything.
        if !engine.source_allowed(peer.ip()) {
            engine
                .counters
                .foreign_source
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            continue;
        }
        // Over a limit: close at once (the client retries or uses UDP).
        let Some(slot) = ClientSlot::take(&per_client, peer.ip()) else {
            engine
                .counters
                .tcp_over_limit
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            continue;
        };
        let Ok(permit) = conns.clone().try_acquire_owned() else {
            continue;
        };
        let engine = engine.clone();
        let mut stop = stop.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let _slot = slot;
            tokio::select! {
                _ = tcp_conn(stream, peer.ip(), engine) => {}
                _ = stop.wait_for(|s| *s) => {}
            }
        });
    }
}

/// One of a client address's TCP slots; given back on drop. The map holds
/// only addresses with open connections (an entry goes with its last slot).
struct ClientSlot {
    map: Arc<Mutex<std::collections::HashMap<IpAddr, usize>>>,
    ip: IpAddr,
}

impl ClientSlot {
    fn take(
        map: &Arc<Mutex<std::collections::HashMap<IpAddr, usize>>>,
        ip: IpAddr,
    ) -> Option<ClientSlot> {
        let mut m = map.lock().unwrap_or_else(|e| e.into_inner());
        let n = m.entry(ip).or_insert(0);
        if *n >= TCP_MAX_CONNS_PER_CLIENT {
            return None;
        }
        *n += 1;
        Some(ClientSlot {
            map: map.clone(),
            ip,
        })
    }
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut m = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = m.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.ip);
            }
        }
    }
}

async fn tcp_conn(mut s: tokio::net::TcpStream, src: std::net::IpAddr, engine: Arc<Engine>) {
    let _ = s.set_nodelay(true);
    for _ in 0..TCP_MAX_QUERIES {
        let len = match tokio::time::timeout(TCP_IDLE, s.read_u16()).await {
            Ok(Ok(l)) => l as usize,
            _ => return,
        };
        if len < 12 {
            return; // length garbage: nothing useful can follow
        }
        let mut buf = vec![0u8; len];
        match tokio::time::timeout(TCP_BODY, s.read_exact(&mut buf)).await {
            Ok(Ok(_)) => {}
            _ => return,
        }
        let reply = match engine.handle(&buf, src, true) {
            Outcome::Reply(r) => r,
            // Dropped (a response, rate limited): end the connection.
            Outcome::Drop => return,
            Outcome::Resolve(p) => engine.resolve(p).await,
        };
        let mut out = Vec::with_capacity(reply.len() + 2);
        out.extend_from_slice(&(reply.len() as u16).to_be_bytes());
        out.extend_from_slice(&reply);
        match tokio::time::timeout(TCP_BODY, s.write_all(&out)).await {
            Ok(Ok(())) => {}
            _ => return,
        }
    }
}
