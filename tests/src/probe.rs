//! Real-packet probes, run from inside a namespace (see [`crate::Netns::enter`]).
//!
//! A probe reports what happened ([`Outcome`]) instead of a bool, so a test can
//! tell "dropped" (timeout) from "rejected" (RST / ICMP error) from "answered".

use socket2::{Domain, Protocol as SockProto, SockAddr, Socket, Type};
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::time::Duration;

/// What a probe saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// An answer came back; the payload (HTTP body, UDP echo).
    Answered(String),
    /// The connection was established (TCP probes that do not read).
    Connected,
    /// Actively refused (TCP RST or ICMP port/admin unreachable).
    Refused,
    /// Nothing came back before the deadline: dropped somewhere.
    Timeout,
    /// Any other local error (no route, address not available...).
    Error(String),
}

impl Outcome {
    pub fn reached(&self) -> bool {
        matches!(self, Outcome::Answered(_) | Outcome::Connected)
    }
}

fn classify(e: &std::io::Error) -> Outcome {
    use std::io::ErrorKind::*;
    match e.kind() {
        TimedOut | WouldBlock => Outcome::Timeout,
        ConnectionRefused => Outcome::Refused,
        _ => match e.raw_os_error() {
            // EHOSTUNREACH / ENETUNREACH from an ICMP error or a reject: an answer, not a drop.
            Some(113) | Some(101) => Outcome::Refused,
            _ => Outcome::Error(e.to_string()),
        },
    }
}

/// A socket for `dst`, bound to `src` when given (port 0: any port).
fn socket_from(src: Option<SocketAddr>, dst: SocketAddr, ty: Type, proto: SockProto) -> std::io::Result<Socket> {
    let s = Socket::new(Domain::for_address(dst), ty, Some(proto))?;
    if let Some(src) = src {
        // Freebind: a spoofing probe may use a source the host does not own.
        // Transparent: the route lookup accepts a non-local source (root only).
        // Reuse: a chosen port may still be in TIME_WAIT or bound elsewhere.
        if src.is_ipv4() {
            s.set_freebind_v4(true).ok();
            s.set_ip_transparent_v4(true).ok();
        } else {
            s.set_freebind_v6(true).ok();
            s.set_ip_transparent_v6(true).ok();
        }
        s.set_reuse_address(true).ok();
        s.bind(&SockAddr::from(src))?;
    }
    Ok(s)
}

fn tcp_socket(src: Option<IpAddr>, dst: SocketAddr) -> std::io::Result<Socket> {
    socket_from(src.map(|ip| SocketAddr::new(ip, 0)), dst, Type::STREAM, SockProto::TCP)
}

/// TCP connect (optionally from source address `src`) with a timeout.
pub fn tcp_connect(src: Option<IpAddr>, dst: SocketAddr, timeout: Duration) -> Outcome {
    let s = match tcp_socket(src, dst) {
        Ok(s) => s,
        Err(e) => return Outcome::Error(e.to_string()),
    };
    match s.connect_timeout(&SockAddr::from(dst), timeout) {
        Ok(()) => Outcome::Connected,
        Err(e) => classify(&e),
    }
}

/// HTTP/1.0 GET / to `dst`; `Answered(body)` when a response came back.
pub fn http_get(src: Option<IpAddr>, dst: SocketAddr, timeout: Duration) -> Outcome {
    http_get_path(src, dst, "/", timeout)
}

/// HTTP/1.0 GET `path` (pal-testhost serves `/big`: 1 MiB after the address line).
/// `timeout` bounds the connect and each read.
pub fn http_get_path(
    src: Option<IpAddr>,
    dst: SocketAddr,
    path: &str,
    timeout: Duration,
) -> Outcome {
    let s = match tcp_socket(src, dst) {
        Ok(s) => s,
        Err(e) => return Outcome::Error(e.to_string()),
    };
    if let Err(e) = s.connect_timeout(&SockAddr::from(dst), timeout) {
        return classify(&e);
    }
    let mut s: std::net::TcpStream = s.into();
    let _ = s.set_read_timeout(Some(timeout));
    let _ = s.set_write_timeout(Some(timeout));
    let host = match dst.ip() {
        IpAddr::V4(a) => a.to_string(),
        IpAddr::V6(a) => format!("[{a}]"),
    };
    if let Err(e) = s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n").as_bytes()) {
        return classify(&e);
    }
    let mut resp = Vec::new();
    if let Err(e) = s.read_to_end(&mut resp) {
        if resp.is_empty() {
            return classify(&e);
        }
    }
    let text = String::from_utf8_lossy(&resp);
    match text.split_once("\r\n\r\n") {
        Some((head, body)) if head.starts_with("HTTP/1.") => Outcome::Answered(body.to_string()),
        _ => Outcome::Error(format!("not an HTTP response: {text:?}")),
    }
}

fn udp_socket(src: Option<SocketAddr>, dst: SocketAddr) -> std::io::Result<UdpSocket> {
    socket_from(src, dst, Type::DGRAM, SockProto::UDP).map(Into::into)
}

/// Send one datagram (optionally from `src`) and wait for one answer.
pub fn udp_exchange(
    src: Option<IpAddr>,
    dst: SocketAddr,
    payload: &[u8],
    timeout: Duration,
) -> Outcome {
    udp_exchange_from(src.map(|ip| SocketAddr::new(ip, 0)), dst, payload, timeout)
}

/// Like [`udp_exchange`] from exactly `src` (address and port) when given.
/// An ICMP port unreachable comes back as [`Outcome::Refused`]: proof that
/// the datagram was delivered to a host with no socket on that port.
pub fn udp_exchange_from(
    src: Option<SocketAddr>,
    dst: SocketAddr,
    payload: &[u8],
    timeout: Duration,
) -> Outcome {
    let u = match udp_socket(src, dst) {
        Ok(u) => u,
        Err(e) => return Outcome::Error(e.to_string()),
    };
    let _ = u.set_read_timeout(Some(timeout));
    if let Err(e) = u.connect(dst) {
        return Outcome::Error(e.to_string());
    }
    if let Err(e) = u.send(payload) {
        return classify(&e);
    }
    let mut buf = [0u8; 4096];
    match u.recv(&mut buf) {
        Ok(n) => Outcome::Answered(String::from_utf8_lossy(&buf[..n]).into_owned()),
        Err(e) => classify(&e),
    }
}

/// Fire one datagram and do not wait (for spoofing tests: the receiver's log tells).
pub fn udp_send(src: Option<IpAddr>, dst: SocketAddr, payload: &[u8]) -> Result<(), String> {
    let u = udp_socket(src.map(|ip| SocketAddr::new(ip, 0)), dst).map_err(|e| e.to_string())?;
    u.send_to(payload, dst)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// One ICMP echo (busybox ping, run in the caller's namespace: call it inside
/// [`crate::Netns::enter`]). `Answered("echo")` on a reply; `Timeout` only when
/// ping says it sent the request and got nothing back; anything else (no
/// busybox, no permission, no route, a bad address) is an `Error` with ping's
/// own message, so a broken probe can never pass as "dropped".
pub fn ping(dst: IpAddr, timeout: Duration) -> Outcome {
    let secs = timeout.as_secs().max(1).to_string();
    let fam = if dst.is_ipv4() { "-4" } else { "-6" };
    match std::process::Command::new("busybox")
        .args(["ping", fam, "-c", "1", "-W", &secs, &dst.to_string()])
        .stdin(std::process::Stdio::null())
        .output()
    {
        Ok(o) => classify_ping(
            o.status.success(),
            o.status.code(),
            &String::from_utf8_lossy(&o.stdout),
            &String::from_utf8_lossy(&o.stderr),
        ),
        Err(e) => Outcome::Error(format!("busybox ping: {e}")),
    }
}

/// What a `busybox ping -c 1` run means (exit status 1 is both "no reply" and
/// every error, so the statistics line decides).
fn classify_ping(success: bool, code: Option<i32>, stdout: &str, stderr: &str) -> Outcome {
    let sent_none_back = stdout
        .lines()
        .any(|l| l.starts_with("1 packets transmitted, 0 packets received"));
    let got_one = stdout
        .lines()
        .any(|l| l.starts_with("1 packets transmitted, 1 packets received"));
    match (success, got_one, sent_none_back) {
        (true, true, _) => Outcome::Answered("echo".into()),
        (false, _, true) if stderr.trim().is_empty() => Outcome::Timeout,
        _ => Outcome::Error(format!(
            "busybox ping: exit {code:?}: {}{}",
            stderr.trim(),
            if stderr.trim().is_empty() { stdout.trim() } else { "" }
        )),
    }
}

/// A minimal DNS query (A or AAAA, RD set) for `name`, with transaction id `id`.
pub fn dns_query(name: &str, qtype: u16, id: u16) -> Vec<u8> {
    let mut q = Vec::with_capacity(32 + name.len());
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.trim_end_matches('.').split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.push(0);
    q.extend_from_slice(&qtype.to_be_bytes());
    q.extend_from_slice(&1u16.to_be_bytes());
    q
}

/// The parts of a DNS answer the tests look at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsAnswer {
    pub id: u16,
    pub rcode: u8,
    /// A and AAAA records in the answer section.
    pub addrs: Vec<IpAddr>,
}

/// Parse a DNS response (enough for A/AAAA answers; follows compression pointers
/// only to skip names).
pub fn parse_dns(msg: &[u8]) -> Option<DnsAnswer> {
    if msg.len() < 12 || msg[2] & 0x80 == 0 {
        return None;
    }
    let id = u16::from_be_bytes([msg[0], msg[1]]);
    let rcode = msg[3] & 0x0f;
    let qd = u16::from_be_bytes([msg[4], msg[5]]) as usize;
    let an = u16::from_be_bytes([msg[6], msg[7]]) as usize;
    let mut i = 12;
    fn skip_name(m: &[u8], mut i: usize) -> Option<usize> {
        loop {
            let l = *m.get(i)? as usize;
            if l == 0 {
                return Some(i + 1);
            }
            if l & 0xc0 == 0xc0 {
                return Some(i + 2);
            }
            i += 1 + l;
        }
    }
    for _ in 0..qd {
        i = skip_name(msg, i)? + 4;
    }
    let mut addrs = Vec::new();
    for _ in 0..an {
        i = skip_name(msg, i)?;
        let t = u16::from_be_bytes([*msg.get(i)?, *msg.get(i + 1)?]);
        let len = u16::from_be_bytes([*msg.get(i + 8)?, *msg.get(i + 9)?]) as usize;
        let data = msg.get(i + 10..i + 10 + len)?;
        match (t, len) {
            (1, 4) => addrs.push(IpAddr::from(<[u8; 4]>::try_from(data).ok()?)),
            (28, 16) => addrs.push(IpAddr::from(<[u8; 16]>::try_from(data).ok()?)),
            _ => {}
        }
        i += 10 + len;
    }
    Some(DnsAnswer { id, rcode, addrs })
}

/// One DNS query over UDP; `Ok(answer)` or the probe outcome when none came back.
pub fn dns_udp(
    server: SocketAddr,
    name: &str,
    qtype: u16,
    timeout: Duration,
) -> Result<DnsAnswer, Outcome> {
    let id = (std::process::id() as u16) ^ 0x5a5a;
    let u = udp_socket(None, server).map_err(|e| Outcome::Error(e.to_string()))?;
    let _ = u.set_read_timeout(Some(timeout));
    u.connect(server)
        .map_err(|e| Outcome::Error(e.to_string()))?;
    u.send(&dns_query(name, qtype, id))
        .map_err(|e| classify(&e))?;
    let mut buf = [0u8; 4096];
    let n = u.recv(&mut buf).map_err(|e| classify(&e))?;
    match parse_dns(&buf[..n]) {
        Some(a) if a.id == id => Ok(a),
        _ => Err(Outcome::Error("malformed or mismatched DNS answer".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_query_roundtrips_through_parser_shape() {
        let q = dns_query("allowed.example.test", 1, 7);
        assert_eq!(&q[..2], &[0, 7]);
        assert_eq!(q[12], 7); // "allowed"
                              // A query is not a response: the parser must refuse it.
        assert!(parse_dns(&q).is_none());
    }

    /// Real busybox 1.35 outputs (captured in namespaces on this machine).
    #[test]
    fn ping_tells_a_timeout_from_an_error() {
        let reply = "PING 127.0.0.1 (127.0.0.1): 56 data bytes\n64 bytes from 127.0.0.1: seq=0 ttl=64 time=0.179 ms\n\n--- 127.0.0.1 ping statistics ---\n1 packets transmitted, 1 packets received, 0% packet loss\nround-trip min/avg/max = 0.179/0.179/0.179 ms\n";
        assert_eq!(
            classify_ping(true, Some(0), reply, ""),
            Outcome::Answered("echo".into())
        );
        let silent = "PING 10.250.0.2 (10.250.0.2): 56 data bytes\n\n--- 10.250.0.2 ping statistics ---\n1 packets transmitted, 0 packets received, 100% packet loss\n";
        assert_eq!(classify_ping(false, Some(1), silent, ""), Outcome::Timeout);
        let head = "PING 10.250.0.2 (10.250.0.2): 56 data bytes\n";
        for err in [
            "ping: permission denied (are you root?)\n",
            "ping: sendto: Network is unreachable\n",
            "ping: bad address 'nosuchhost'\n",
        ] {
            let o = classify_ping(false, Some(1), head, err);
            assert!(
                matches!(&o, Outcome::Error(m) if m.contains(err.trim())),
                "{err}: {o:?}"
            );
        }
        // Exit 0 without a received reply, or an exit code without output: errors.
        assert!(matches!(
            classify_ping(true, Some(0), "", ""),
            Outcome::Error(_)
        ));
        assert!(matches!(
            classify_ping(false, None, "", ""),
            Outcome::Error(_)
        ));
    }

    #[test]
    fn parses_an_a_answer_with_compression() {
        let mut m = dns_query("a.test", 1, 9);
        m[2] |= 0x80; // QR
        m[7] = 1; // ANCOUNT
        m.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 203, 0, 113, 80]);
        let a = parse_dns(&m).unwrap();
        assert_eq!(a.id, 9);
        assert_eq!(a.rcode, 0);
        assert_eq!(a.addrs, vec!["203.0.113.80".parse::<IpAddr>().unwrap()]);
    }
}
