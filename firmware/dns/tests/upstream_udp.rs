//! The UDP upstream path against a scripted upstream on loopback (a test
//! host: 127.0.0.1, plus 127.0.0.5 as the spoofer): identical concurrent
//! misses make one upstream query; upstream IDs and source ports are random
//! and sockets are reused a bounded number of times; answers with the wrong
//! ID, the wrong question or from another source are not used.

mod common;

use common::*;
use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{Name, RData, Record, RecordType};
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::UdpSocket;

/// One query as the upstream saw it.
#[derive(Debug, Clone)]
struct Seen {
    port: u16,
    id: u16,
    name: String,
    qtype: RecordType,
}

#[derive(Clone, Copy)]
enum Mode {
    /// Answer 192.0.2.1 after the delay.
    Delay(Duration),
    /// First the spoofs (wrong ID; wrong question; right ID and question
    /// from 127.0.0.5 and from another port of 127.0.0.1, all with
    /// 203.0.113.66), then the real answer 192.0.2.1 after 100 ms.
    Spoofed,
}

struct Upstream {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn answer(q: &Message, id: u16, name: &Name, ip: [u8; 4]) -> Vec<u8> {
    let mut r = Message::new(id, MessageType::Response, OpCode::Query);
    r.metadata.recursion_desired = q.metadata.recursion_desired;
    r.metadata.recursion_available = true;
    let qt = q.queries[0].query_type();
    r.add_query(Query::query(name.clone(), qt));
    if qt == RecordType::A {
        r.add_answer(Record::from_rdata(
            name.clone(),
            60,
            RData::A(A::new(ip[0], ip[1], ip[2], ip[3])),
        ));
    }
    r.to_vec().unwrap()
}

async fn upstream(mode: Mode) -> Upstream {
    let sock = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
    let addr = sock.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s2 = seen.clone();
    let task = tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        while let Ok((n, src)) = sock.recv_from(&mut buf).await {
            let Ok(q) = Message::from_vec(&buf[..n]) else {
                continue;
            };
            let qn = q.queries[0].name().clone();
            s2.lock().unwrap().push(Seen {
                port: src.port(),
                id: q.metadata.id,
                name: qn.to_ascii().to_lowercase(),
                qtype: q.queries[0].query_type(),
            });
            let sock = sock.clone();
            tokio::spawn(async move {
                let id = q.metadata.id;
                match mode {
                    Mode::Delay(d) => tokio::time::sleep(d).await,
                    Mode::Spoofed => {
                        let evil = [203, 0, 113, 66];
                        let _ = sock
                            .send_to(&answer(&q, id.wrapping_add(1), &qn, evil), src)
                            .await;
                        let other = Name::from_ascii("other.test.").unwrap();
                        let _ = sock.send_to(&answer(&q, id, &other, evil), src).await;
                        for from in ["127.0.0.5:0", "127.0.0.1:0"] {
                            let s = UdpSocket::bind(from).await.unwrap();
                            let _ = s.send_to(&answer(&q, id, &qn, evil), src).await;
                        }
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
                let _ = sock
                    .send_to(&answer(&q, id, &qn, [192, 0, 2, 1]), src)
                    .await;
            });
        }
    });
    Upstream { addr, seen, task }
}

/// A query with EDNS and the DO bit as given.
fn query_do(name: &str, qtype: RecordType, dnssec_ok: bool, id: u16) -> Vec<u8> {
    let mut m = Message::new(id, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
    let mut e = Edns::new();
    e.set_max_payload(1232);
    e.set_dnssec_ok(dnssec_ok);
    m.set_edns(e);
    m.to_vec().unwrap()
}

async fn ask_do(
    server: SocketAddr,
    name: &str,
    qtype: RecordType,
    dnssec_ok: bool,
    id: u16,
) -> Message {
    let r = raw(
        server,
        BASIC,
        &query_do(name, qtype, dnssec_ok, id),
        Duration::from_secs(5),
    )
    .await
    .expect("an answer");
    let m = Message::from_vec(&r).unwrap();
    assert_eq!(m.metadata.id, id);
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identical_concurrent_misses_make_one_upstream_query() {
    let up = upstream(Mode::Delay(Duration::from_millis(300))).await;
    let addr = up.addr;
    let b = bed_with(|c, _| c.dns.upstreams = vec![upstream_cfg(addr)]).await;
    // 20 clients ask the same name at once, 10 ask it with DO set, 10 ask
    // another type: three upstream queries, every client answered.
    let mut asks = Vec::new();
    for i in 0..40u16 {
        let (qtype, dnssec_ok) = match i % 4 {
            0 | 1 => (RecordType::A, false),
            2 => (RecordType::A, true),
            _ => (RecordType::AAAA, false),
        };
        asks.push(tokio::spawn(ask_do(
            b.addr,
            "same.test.",
            qtype,
            dnssec_ok,
            100 + i,
        )));
    }
    for (i, a) in asks.into_iter().enumerate() {
        let m = a.await.unwrap();
        assert_eq!(rcode(&m), 0, "client {i}");
        if i % 4 != 3 {
            assert_eq!(addrs(&m), ["192.0.2.1"], "client {i}");
        }
    }
    let seen = up.seen.lock().unwrap().clone();
    let by: HashMap<(String, RecordType), usize> = seen.iter().fold(HashMap::new(), |mut m, s| {
        *m.entry((s.name.clone(), s.qtype)).or_default() += 1;
        m
    });
    assert_eq!(
        by.get(&("same.test.".into(), RecordType::A)),
        Some(&2),
        "one upstream query per DO value: {seen:?}"
    );
    assert_eq!(
        by.get(&("same.test.".into(), RecordType::AAAA)),
        Some(&1),
        "{seen:?}"
    );
    assert_eq!(seen.len(), 3, "{seen:?}");
    assert_eq!(b.engine.stats()["coalesced"], 37);
    // Once answered, the name is cached: no query at all.
    ask_do(b.addr, "same.test.", RecordType::A, false, 7).await;
    assert_eq!(up.seen.lock().unwrap().len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_ids_and_ports_are_random_and_sockets_are_reused() {
    let up = upstream(Mode::Delay(Duration::ZERO)).await;
    let addr = up.addr;
    let b = bed_with(|c, _| c.dns.upstreams = vec![upstream_cfg(addr)]).await;
    let n = 320usize;
    for i in 0..n {
        let m = ask_do(
            b.addr,
            &format!("n{i}.test."),
            RecordType::A,
            false,
            i as u16,
        )
        .await;
        assert_eq!(addrs(&m), ["192.0.2.1"]);
    }
    let seen = up.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), n);
    // IDs: 16 random bits each; 320 draws of 65536 collide about once.
    let ids: HashSet<u16> = seen.iter().map(|s| s.id).collect();
    assert!(
        ids.len() >= n - 8,
        "{} distinct IDs in {n} queries",
        ids.len()
    );
    let steps: HashSet<u16> = seen
        .windows(2)
        .map(|w| w[1].id.wrapping_sub(w[0].id))
        .collect();
    assert!(
        steps.len() > n / 2,
        "IDs follow a pattern: {} distinct steps",
        steps.len()
    );
    // Ports: each socket carries at most UDP_SOCKET_USES queries, then a new
    // one (a new kernel-chosen random port) takes over; sockets are reused.
    let uses = palisade_dns::upstream::UDP_SOCKET_USES as usize;
    let mut per_port: HashMap<u16, usize> = HashMap::new();
    for s in &seen {
        *per_port.entry(s.port).or_default() += 1;
    }
    assert!(
        per_port.values().all(|c| *c <= uses),
        "a port carried more than {uses} queries: {per_port:?}"
    );
    assert!(
        per_port.len() >= n / uses && per_port.len() < n / 4,
        "{} ports for {n} sequential queries",
        per_port.len()
    );
    let mut ports: Vec<u16> = per_port.keys().copied().collect();
    ports.sort_unstable();
    let spread = ports.last().unwrap() - ports.first().unwrap();
    assert!(
        spread > 1000,
        "ports not spread over the ephemeral range: {ports:?}"
    );
    let steps: HashSet<u16> = seen
        .windows(2)
        .filter(|w| w[0].port != w[1].port)
        .map(|w| w[1].port.wrapping_sub(w[0].port))
        .collect();
    assert!(steps.len() > 2, "ports follow a pattern: {ports:?}");
    assert_eq!(
        b.engine.stats()["upstream_udp_sockets"].as_u64().unwrap() as usize,
        per_port.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spoofed_answers_are_not_used() {
    let up = upstream(Mode::Spoofed).await;
    let addr = up.addr;
    let b = bed_with(|c, _| c.dns.upstreams = vec![upstream_cfg(addr)]).await;
    for i in 0..5u16 {
        let name = format!("s{i}.test.");
        let m = ask_do(b.addr, &name, RecordType::A, false, i).await;
        assert_eq!(
            addrs(&m),
            ["192.0.2.1"],
            "{name}: the spoofed answer was used"
        );
        // And what was cached is the real answer.
        let m = ask_do(b.addr, &name, RecordType::A, false, 100 + i).await;
        assert_eq!(
            addrs(&m),
            ["192.0.2.1"],
            "{name}: the spoofed answer was cached"
        );
    }
    assert_eq!(
        up.seen.lock().unwrap().len(),
        5,
        "one query per name, answered by the real upstream"
    );
}

fn upstream_cfg(addr: SocketAddr) -> palisade_core::config::DnsUpstreamSection {
    common::upstream(addr, Proto::Udp)
}
