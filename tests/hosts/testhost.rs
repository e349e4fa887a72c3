//! `pal-testhost`: the one tiny server every test host runs.
//!
//! `pal-testhost serve --log FILE SPEC...` where SPEC is `tcp:ADDR`, `udp:ADDR`
//! or `http-dir:ADDR:DIR` (e.g. `tcp:[::]:80`, `udp:0.0.0.0:7`,
//! `http-dir:[::]:8000:/tmp/x/repo`). It prints `ready` on stdout once every
//! listener is bound.
//!
//! - TCP: reads an HTTP-ish request (up to the blank line, 1 s at most) and answers
//!   `HTTP/1.0 200 OK` whose body is the peer's address as the host saw it.
//! - UDP: answers each datagram with `<peer address> <payload>`.
//! - http-dir: a read-only static file server for DIR (an update repository
//!   mirror): HTTP/1.1 `GET`/`HEAD` of regular files under DIR with
//!   Content-Length, one request per connection. `..`, `.`, empty or
//!   backslashed components, `%` escapes, directories and symlinks resolving
//!   outside DIR are 404; no listings, no redirects. Logged as
//!   `http-dir <local> <peer> <status> <path>`.
//!
//! Every connection and datagram is appended to the log file
//! (`tcp <local> <peer>` / `udp <local-port> <peer> <payload>`), so a test can
//! prove that a packet did NOT arrive at the receiver, not merely that no answer
//! came back. Test addresses only: this program never runs on a node.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::{Arc, Mutex};
use std::time::Duration;

fn canonical(ip: IpAddr) -> IpAddr {
    ip.to_canonical()
}

fn log_line(log: &Mutex<std::fs::File>, line: &str) {
    let mut f = log.lock().unwrap_or_else(|e| e.into_inner());
    let _ = f.write_all(format!("{line}\n").as_bytes());
}

fn serve_tcp(l: TcpListener, log: Arc<Mutex<std::fs::File>>) {
    for s in l.incoming() {
        let Ok(s) = s else { continue };
        let log = log.clone();
        std::thread::spawn(move || handle_tcp(s, &log));
    }
}

/// The connection's (local, peer) addresses as logged (IPv4-mapped shown as IPv4).
fn ends(s: &TcpStream) -> (String, String) {
    let peer = s
        .peer_addr()
        .map(|a| canonical(a.ip()).to_string())
        .unwrap_or_default();
    let local = s
        .local_addr()
        .map(|a| SocketAddr::new(canonical(a.ip()), a.port()).to_string())
        .unwrap_or_default();
    (local, peer)
}

fn handle_tcp(mut s: TcpStream, log: &Mutex<std::fs::File>) {
    let (local, peer) = ends(&s);
    log_line(log, &format!("tcp {local} {peer}"));
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    while buf.len() < 16 * 1024 && !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    // `GET /big`: the peer address, a newline, then 1 MiB (bulk transfer / MTU tests).
    let mut body = peer.clone().into_bytes();
    if buf.starts_with(b"GET /big ") {
        body.push(b'\n');
        body.extend(std::iter::repeat_n(b'x', 1 << 20));
    }
    let head = format!(
        "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = s.write_all(head.as_bytes());
    let _ = s.write_all(&body);
}

fn serve_http_dir(l: TcpListener, root: Arc<std::path::PathBuf>, log: Arc<Mutex<std::fs::File>>) {
    for s in l.incoming() {
        let Ok(s) = s else { continue };
        let (log, root) = (log.clone(), root.clone());
        std::thread::spawn(move || handle_http_dir(s, &root, &log));
    }
}

/// The file under `root` that `path` names, if it is a regular file that
/// resolves (symlinks followed) inside `root`.
fn resolve(root: &std::path::Path, path: &str) -> Option<std::path::PathBuf> {
    let rel = path.strip_prefix('/')?;
    if rel.contains(['%', '\\', '\0']) {
        return None;
    }
    let mut p = root.to_path_buf();
    for c in rel.split('/') {
        if c.is_empty() || c == "." || c == ".." {
            return None;
        }
        p.push(c);
    }
    let real = p.canonicalize().ok()?;
    (real.starts_with(root) && real.is_file()).then_some(real)
}

fn handle_http_dir(mut s: TcpStream, root: &std::path::Path, log: &Mutex<std::fs::File>) {
    let (local, peer) = ends(&s);
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    while buf.len() < 16 * 1024 && !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let head = String::from_utf8_lossy(&buf);
    let mut parts = head.lines().next().unwrap_or("").split(' ');
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    let file = match method {
        "GET" | "HEAD" => resolve(root, path),
        _ => None,
    };
    let body = file.and_then(|f| std::fs::read(f).ok());
    let status = match (&body, method) {
        (Some(_), _) => "200 OK",
        (None, "GET" | "HEAD") => "404 Not Found",
        (None, _) => "405 Method Not Allowed",
    };
    log_line(
        log,
        &format!("http-dir {local} {peer} {} {path}", &status[..3]),
    );
    let len = body.as_ref().map_or(0, Vec::len);
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/octet-stream\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n"
    );
    let _ = s.write_all(head.as_bytes());
    if let (Some(b), "GET") = (&body, method) {
        let _ = s.write_all(b);
    }
}

/// `ADDR:DIR`: the shortest prefix that is a socket address, then the rest.
fn split_addr_dir(spec: &str) -> Option<(SocketAddr, &str)> {
    spec.match_indices(':').find_map(|(i, _)| {
        let addr = spec[..i].parse().ok()?;
        Some((addr, &spec[i + 1..]))
    })
}

fn serve_udp(u: UdpSocket, log: Arc<Mutex<std::fs::File>>) {
    let port = u.local_addr().map(|a| a.port()).unwrap_or(0);
    let mut buf = [0u8; 2048];
    loop {
        let Ok((n, from)) = u.recv_from(&mut buf) else {
            continue;
        };
        let payload = String::from_utf8_lossy(&buf[..n]).replace(['\n', '\r'], " ");
        let peer = canonical(from.ip());
        log_line(&log, &format!("udp {port} {peer} {payload}"));
        let _ = u.send_to(format!("{peer} {payload}").as_bytes(), from);
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 3 || args[0] != "serve" || args[1] != "--log" {
        eprintln!("usage: pal-testhost serve --log FILE tcp:ADDR|udp:ADDR|http-dir:ADDR:DIR...");
        std::process::exit(2);
    }
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&args[2])
        .unwrap_or_else(|e| {
            eprintln!("pal-testhost: cannot open log {}: {e}", args[2]);
            std::process::exit(1)
        });
    let log = Arc::new(Mutex::new(file));
    let mut threads = Vec::new();
    for spec in &args[3..] {
        let (kind, addr) = spec.split_once(':').unwrap_or(("", ""));
        if kind == "http-dir" {
            let Some((addr, dir)) = split_addr_dir(addr) else {
                eprintln!("pal-testhost: bad spec {spec} (http-dir:ADDR:DIR)");
                std::process::exit(2)
            };
            let root = std::path::Path::new(dir)
                .canonicalize()
                .unwrap_or_else(|e| {
                    eprintln!("pal-testhost: http-dir {dir}: {e}");
                    std::process::exit(2)
                });
            let l = TcpListener::bind(addr).unwrap_or_else(|e| {
                eprintln!("pal-testhost: bind tcp {addr}: {e}");
                std::process::exit(1)
            });
            let log = log.clone();
            threads.push(std::thread::spawn(move || {
                serve_http_dir(l, Arc::new(root), log)
            }));
            continue;
        }
        let addr: SocketAddr = addr.parse().unwrap_or_else(|e| {
            eprintln!("pal-testhost: bad address in {spec}: {e}");
            std::process::exit(2)
        });
        let log = log.clone();
        match kind {
            "tcp" => {
                let l = TcpListener::bind(addr).unwrap_or_else(|e| {
                    eprintln!("pal-testhost: bind tcp {addr}: {e}");
                    std::process::exit(1)
                });
                threads.push(std::thread::spawn(move || serve_tcp(l, log)));
            }
            "udp" => {
                let u = UdpSocket::bind(addr).unwrap_or_else(|e| {
                    eprintln!("pal-testhost: bind udp {addr}: {e}");
                    std::process::exit(1)
                });
                threads.push(std::thread::spawn(move || serve_udp(u, log)));
            }
            _ => {
                eprintln!(
                    "pal-testhost: bad spec {spec} (tcp:ADDR, udp:ADDR or http-dir:ADDR:DIR)"
                );
                std::process::exit(2)
            }
        }
    }
    println!("ready");
    let _ = std::io::stdout().flush();
    for t in threads {
        let _ = t.join();
    }
}
