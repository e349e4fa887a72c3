//! Resource limits and locally answered names:
//! - one client cannot take every DNS-over-TCP slot;
//! - a reload that is still compiling its lists does not hold up queries
//!   (cache misses included);
//! - `localhost` is answered by the resolver itself (RFC 6761), never
//!   forwarded: palisaded's health canary relies on it.

mod common;

use common::*;
use hickory_proto::rr::RecordType;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn tcp_from(src: &str, server: SocketAddr) -> tokio::net::TcpStream {
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind(format!("{src}:0").parse().unwrap()).unwrap();
    sock.connect(server).await.unwrap()
}

/// True when the server has closed `s` (EOF or reset), false while it is open.
async fn closed(s: &mut tokio::net::TcpStream) -> bool {
    let mut b = [0u8; 1];
    match tokio::time::timeout(Duration::from_millis(20), s.read(&mut b)).await {
        Ok(Ok(0)) | Ok(Err(_)) => true,
        Ok(Ok(_)) => panic!("unsolicited data on an idle DNS connection"),
        Err(_) => false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_client_cannot_take_every_tcp_slot() {
    let b = bed().await;
    // A greedy client opens more idle connections than the whole server allows.
    let mut greedy = Vec::new();
    for _ in 0..300 {
        greedy.push(tcp_from("127.0.0.20", b.addr).await);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut open = 0;
    for s in &mut greedy {
        if !closed(s).await {
            open += 1;
        }
    }
    assert!(
        open <= palisade_dns::server::TCP_MAX_CONNS_PER_CLIENT,
        "one client holds {open} TCP connections"
    );
    assert!(
        open >= 1,
        "the greedy client's first connections are served"
    );
    // Everyone else is still served over TCP, while the greedy ones stay open.
    let t0 = Instant::now();
    let m = ask_tcp(b.addr, "www.test.", RecordType::A).await;
    assert_eq!(addrs(&m), ["192.0.2.80"]);
    let mut other = tcp_from(FAMILY, b.addr).await;
    let q = query("www.test.", RecordType::A, false);
    let mut framed = (q.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(&q);
    other.write_all(&framed).await.unwrap();
    let len = tokio::time::timeout(Duration::from_secs(2), other.read_u16())
        .await
        .expect("answered")
        .expect("not closed");
    assert!(len >= 12);
    assert!(t0.elapsed() < Duration::from_secs(2));
    assert!(b.engine.stats()["tcp_over_limit"].as_u64().unwrap() >= 1);
}

/// Unblocks a reader waiting on the FIFO when the test ends early, so a
/// failing test does not hang.
struct FifoGuard(std::path::PathBuf);

impl Drop for FifoGuard {
    fn drop(&mut self) {
        use std::os::unix::fs::OpenOptionsExt;
        const O_NONBLOCK: i32 = 0o4000;
        let _ = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(O_NONBLOCK)
            .open(&self.0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_compiling_lists_does_not_hold_up_queries() {
    let b = bed().await;
    // A list that cannot be read until the test says so: the reload blocks
    // in the middle of compiling it (a FIFO opens only once a writer comes).
    let fifo = b.dir.path().join("slow.txt");
    let st = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(st.success());
    let _guard = FifoGuard(fifo.clone());
    let mut cfg = b.cfg.clone();
    cfg.dns.lists.get_mut("ads").unwrap().path = fifo.clone();
    let engine = b.engine.clone();
    let reload = std::thread::spawn(move || engine.reload(&cfg).map_err(|e| e.to_string()));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!reload.is_finished());
    // Meanwhile: cache misses (upstream), hits and blocks on the old policy.
    let t0 = Instant::now();
    for (name, qtype) in [
        ("www.test.", RecordType::A),
        ("v6.test.", RecordType::AAAA),
        ("ttl1.test.", RecordType::A),
        ("nope.test.", RecordType::A),
        ("www.test.", RecordType::A),
    ] {
        ask(b.addr, BASIC, name, qtype).await;
    }
    assert_eq!(
        rcode(&ask(b.addr, BASIC, "ads.test.", RecordType::A).await),
        3
    );
    ask_tcp(b.addr, "www.test.", RecordType::MX).await;
    let s = b.engine.stats();
    assert_eq!(
        s["policy_loads"].as_u64(),
        Some(1),
        "still the first policy"
    );
    assert!(
        t0.elapsed() < Duration::from_secs(2),
        "queries waited for the reload: {:?}",
        t0.elapsed()
    );
    assert!(!reload.is_finished(), "the reload is still compiling");
    // Let the list through: the reload finishes and the new list applies.
    std::fs::write(&fifo, "slow-blocked.test\n").unwrap();
    assert_eq!(reload.join().unwrap(), Ok(()));
    let m = ask(b.addr, BASIC, "slow-blocked.test.", RecordType::A).await;
    assert_eq!((rcode(&m), ede(&m)), (3, Some(15)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn localhost_is_answered_locally() {
    let b = bed().await;
    let before = b.auth.queries();
    let m = ask(b.addr, BASIC, "localhost.", RecordType::A).await;
    assert_eq!((rcode(&m), addrs(&m)), (0, vec!["127.0.0.1".to_string()]));
    assert!(m.metadata.authoritative);
    let m = ask(b.addr, FAMILY, "Canary.LocalHost.", RecordType::AAAA).await;
    assert_eq!((rcode(&m), addrs(&m)), (0, vec!["::1".to_string()]));
    assert_eq!(m.queries[0].name().to_ascii(), "Canary.LocalHost.");
    // Other types: an immediate negative answer (NODATA).
    let m = ask(b.addr, NO_TIER, "localhost.", RecordType::MX).await;
    assert_eq!((rcode(&m), m.answers.len()), (0, 0));
    // Not a suffix match on a label boundary: forwarded as usual.
    let m = ask(b.addr, BASIC, "notlocalhost.", RecordType::A).await;
    assert_eq!(rcode(&m), 3);
    assert_eq!(
        b.auth.queries(),
        before + 1,
        "only notlocalhost. went upstream"
    );
    assert_eq!(b.engine.stats()["local"].as_u64(), Some(3));
}
