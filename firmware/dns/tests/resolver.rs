//! The resolver against a real upstream on loopback (the test authority):
//! resolution, caching, filtering per tier, CNAME cloaking, block modes,
//! hostile upstreams, failover and fail-closed, bad input, TCP, rate limits.

mod common;

use common::*;
use hickory_proto::rr::RecordType;
use palisade_core::config::DnsBlockMode;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const NXDOMAIN: u16 = 3;
const SERVFAIL: u16 = 2;
const REFUSED: u16 = 5;
const FORMERR: u16 = 1;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resolves_and_caches_with_ttl() {
    let b = bed().await;
    let m = ask(b.addr, BASIC, "www.test.", RecordType::A).await;
    assert_eq!(rcode(&m), 0);
    assert_eq!(addrs(&m), ["192.0.2.80"]);
    assert!(m.metadata.recursion_available);
    let upstream_queries = b.auth.queries();
    // Second time, different case (0x20 style): from the cache, name echoed as asked.
    let m = ask(b.addr, FAMILY, "WWW.Test.", RecordType::A).await;
    assert_eq!(addrs(&m), ["192.0.2.80"]);
    assert_eq!(m.queries[0].name().to_ascii(), "WWW.Test.");
    assert!(m.answers[0].ttl <= 300 && m.answers[0].ttl >= 298);
    assert_eq!(
        b.auth.queries(),
        upstream_queries,
        "answered from the cache"
    );
    // AAAA, and a TTL of 1 expires.
    let m = ask(b.addr, BASIC, "v6.test.", RecordType::AAAA).await;
    assert_eq!(addrs(&m), ["2001:db8::80"]);
    ask(b.addr, BASIC, "ttl1.test.", RecordType::A).await;
    let n = b.auth.queries();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    ask(b.addr, BASIC, "ttl1.test.", RecordType::A).await;
    assert_eq!(b.auth.queries(), n + 1, "expired entry asked again");
    let s = b.engine.stats();
    assert!(s["cache_hits"].as_u64().unwrap() >= 1);
    assert!(s["cache_misses"].as_u64().unwrap() >= 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn negative_answers_are_cached() {
    let b = bed().await;
    let m = ask(b.addr, BASIC, "nope.test.", RecordType::A).await;
    assert_eq!(rcode(&m), NXDOMAIN);
    assert_eq!(m.authorities.len(), 1, "SOA kept for negative caching");
    let n = b.auth.queries();
    let m = ask(b.addr, BASIC, "nope.test.", RecordType::A).await;
    assert_eq!(rcode(&m), NXDOMAIN);
    assert_eq!(b.auth.queries(), n);
    // NODATA too.
    let m = ask(b.addr, BASIC, "www.test.", RecordType::MX).await;
    assert_eq!((rcode(&m), m.answers.len()), (0, 0));
    let n = b.auth.queries();
    ask(b.addr, BASIC, "www.test.", RecordType::MX).await;
    assert_eq!(b.auth.queries(), n);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocks_per_tier_with_allowlists_and_ede() {
    let b = bed().await;
    let n = b.auth.queries();
    for name in ["ads.test.", "x.y.ads.test.", "Tracker.CDN.test."] {
        let m = ask(b.addr, BASIC, name, RecordType::A).await;
        assert_eq!(rcode(&m), NXDOMAIN, "{name}");
        assert_eq!(ede(&m), Some(15), "EDE Blocked on {name}");
    }
    assert_eq!(b.auth.queries(), n, "blocked names never go upstream");
    // @@ exception and allowlist win (they go upstream, where they do not exist).
    for name in ["ok.ads.test.", "allowed.ads.test."] {
        let m = ask(b.addr, BASIC, name, RecordType::A).await;
        assert_eq!(rcode(&m), NXDOMAIN);
        assert_eq!(
            ede(&m),
            None,
            "{name} is not blocked, NXDOMAIN comes from upstream"
        );
    }
    // The allowlist is only in the basic tier.
    assert_eq!(
        ede(&ask(b.addr, FAMILY, "allowed.ads.test.", RecordType::A).await),
        Some(15)
    );
    // family-only entries and wildcards.
    assert_eq!(
        ede(&ask(b.addr, FAMILY, "adult.test.", RecordType::A).await),
        Some(15)
    );
    assert_eq!(
        ede(&ask(b.addr, BASIC, "adult.test.", RecordType::A).await),
        None
    );
    assert_eq!(
        ede(&ask(b.addr, FAMILY, "a.wild.test.", RecordType::A).await),
        Some(15)
    );
    assert_eq!(
        ede(&ask(b.addr, FAMILY, "wild.test.", RecordType::A).await),
        None
    );
    // A client with no tier (and no default tier) is not filtered.
    assert_eq!(
        ede(&ask(b.addr, NO_TIER, "ads.test.", RecordType::A).await),
        None
    );
    let s = b.engine.stats();
    assert!(s["tiers"]["basic"]["blocked"].as_u64().unwrap() >= 3);
    assert!(s["tiers"]["family"]["blocked"].as_u64().unwrap() >= 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cname_cloaking_is_blocked() {
    let b = bed().await;
    // cloak.test is allowed, but its CNAME target tracker.cdn.test is blocked.
    let m = ask(b.addr, BASIC, "cloak.test.", RecordType::A).await;
    assert_eq!((rcode(&m), ede(&m)), (NXDOMAIN, Some(15)));
    // Also when the chain comes from the cache, and only for tiers that block it.
    let m = ask(b.addr, FAMILY, "cloak.test.", RecordType::A).await;
    assert_eq!(ede(&m), Some(15));
    let m = ask(b.addr, NO_TIER, "cloak.test.", RecordType::A).await;
    assert_eq!(addrs(&m), ["tracker.cdn.test.", "192.0.2.66"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn block_modes_and_reload() {
    let b = bed().await;
    let mut cfg = b.cfg.clone();
    cfg.dns.block_mode = DnsBlockMode::Null;
    b.engine.reload(&cfg).unwrap();
    let m = ask(b.addr, BASIC, "ads.test.", RecordType::A).await;
    assert_eq!((rcode(&m), addrs(&m)), (0, vec!["0.0.0.0".to_string()]));
    assert_eq!(ede(&m), Some(15));
    let m = ask(b.addr, BASIC, "ads.test.", RecordType::AAAA).await;
    assert_eq!(addrs(&m), ["::"]);
    cfg.dns.block_mode = DnsBlockMode::Refused;
    b.engine.reload(&cfg).unwrap();
    let m = ask(b.addr, BASIC, "ads.test.", RecordType::A).await;
    assert_eq!((rcode(&m), ede(&m)), (REFUSED, Some(15)));
    // A list change is picked up; a broken config keeps the old policy.
    std::fs::write(b.dir.path().join("ads.txt"), "||ads.test^\nnewly.test\n").unwrap();
    b.engine.reload(&cfg).unwrap();
    assert_eq!(
        rcode(&ask(b.addr, BASIC, "newly.test.", RecordType::A).await),
        REFUSED
    );
    let mut broken = cfg.clone();
    broken.dns.lists.get_mut("ads").unwrap().path = b.dir.path().join("missing.txt");
    assert!(b.engine.reload(&broken).is_err());
    assert_eq!(
        rcode(&ask(b.addr, BASIC, "newly.test.", RecordType::A).await),
        REFUSED
    );
    // Tier map change: the basic client moves to family.
    let mut moved = cfg.clone();
    moved.clients[0].1 = Some("family".into());
    b.engine.reload(&moved).unwrap();
    assert_eq!(
        ede(&ask(b.addr, BASIC, "adult.test.", RecordType::A).await),
        Some(15)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_gets_rfc8482_answer() {
    let b = bed().await;
    let n = b.auth.queries();
    let m = ask(b.addr, BASIC, "www.test.", RecordType::ANY).await;
    assert_eq!(m.answers.len(), 1);
    assert_eq!(m.answers[0].record_type(), RecordType::HINFO);
    assert!(m.answers[0].data.to_string().contains("RFC8482"));
    assert_eq!(b.auth.queries(), n);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_upstream_does_not_poison() {
    let b = bed().await;
    let m = ask(b.addr, BASIC, "poison.test.", RecordType::A).await;
    assert_eq!(
        addrs(&m),
        ["192.0.2.7"],
        "out-of-bailiwick records stripped"
    );
    assert!(m.authorities.is_empty() && m.additionals.is_empty());
    let m = ask(b.addr, BASIC, "victim.test.", RecordType::A).await;
    assert_eq!(
        addrs(&m),
        ["192.0.2.9"],
        "victim.test not taken from poison.test's answer"
    );
    // A reply with the wrong ID is ignored; the real one is used and cached.
    let m = ask(b.addr, BASIC, "spoof.test.", RecordType::A).await;
    assert_eq!(addrs(&m), ["192.0.2.8"]);
    let m = ask(b.addr, FAMILY, "spoof.test.", RecordType::A).await;
    assert_eq!(addrs(&m), ["192.0.2.8"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_and_fail_closed() {
    // A black hole: bound, never answers.
    let hole = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let hole_addr = hole.local_addr().unwrap();
    let b = bed_with(|c, auth| {
        c.dns.upstreams = vec![upstream(hole_addr, Proto::Udp), upstream(auth.udp, Proto::Udp)];
    })
    .await;
    let m = ask(b.addr, BASIC, "www.test.", RecordType::A).await;
    assert_eq!(addrs(&m), ["192.0.2.80"], "second upstream used");
    // Upstream SERVFAIL is not passed on as an answer to cache; with only
    // dead upstreams, the client gets SERVFAIL (fail closed).
    let mut cfg = b.cfg.clone();
    cfg.dns.upstreams = vec![upstream(hole_addr, Proto::Udp), upstream(hole_addr, Proto::Tcp)];
    b.engine.reload(&cfg).unwrap();
    let m = ask(b.addr, BASIC, "www2.test.", RecordType::A).await;
    assert_eq!(rcode(&m), SERVFAIL);
    assert!(b.engine.stats()["upstream_failures"].as_u64().unwrap() >= 1);
    let m = ask(b.addr, BASIC, "servfail.test.", RecordType::A).await;
    assert_eq!(rcode(&m), SERVFAIL);
    // No upstream at all: SERVFAIL too.
    cfg.dns.upstreams.clear();
    b.engine.reload(&cfg).unwrap();
    assert_eq!(
        rcode(&ask(b.addr, BASIC, "x.miss.test.", RecordType::A).await),
        SERVFAIL
    );
    drop(hole);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncation_and_tcp() {
    let b = bed().await;
    // 40 TXT records: the authority truncates over UDP, the resolver retries
    // over TCP; our UDP answer is truncated, the TCP one complete.
    let m = ask(b.addr, BASIC, "big.test.", RecordType::TXT).await;
    assert!(m.metadata.truncation && m.answers.is_empty());
    let m = ask_tcp(b.addr, "big.test.", RecordType::TXT).await;
    assert_eq!(m.answers.len(), 40);
    let m = ask_tcp(b.addr, "www.test.", RecordType::A).await;
    assert_eq!(addrs(&m), ["192.0.2.80"]);
    // TCP with a tcp upstream.
    let b2 = bed_with(|c, auth| c.dns.upstreams = vec![upstream(auth.tcp, Proto::Tcp)]).await;
    let m = ask(b2.addr, BASIC, "www.test.", RecordType::A).await;
    assert_eq!(addrs(&m), ["192.0.2.80"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_input_then_next_query_works() {
    let b = bed().await;
    let good = query("www.test.", RecordType::A, false);
    let mut cases: Vec<(&str, Vec<u8>, Option<u16>)> = Vec::new();
    cases.push(("short", good[..5].to_vec(), None));
    let mut qr = good.clone();
    qr[2] |= 0x80;
    cases.push(("QR=1", qr, None));
    for qd in [0u8, 2] {
        let mut m = good.clone();
        m[5] = qd;
        cases.push(("qdcount", m, Some(FORMERR)));
    }
    cases.push(("truncated", good[..good.len() - 3].to_vec(), Some(FORMERR)));
    let mut lp = good[..12].to_vec();
    lp.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1]);
    cases.push(("compression loop", lp, Some(FORMERR)));
    let mut oob = good[..12].to_vec();
    oob.extend_from_slice(&[1, b'a', 0xc3, 0xff, 0, 1, 0, 1]);
    cases.push(("pointer out of range", oob, Some(FORMERR)));
    let mut opt = query("www.test.", RecordType::A, true);
    let n = opt.len();
    opt[n - 1] = 40;
    cases.push(("bad OPT rdlen", opt, Some(FORMERR)));
    let mut two_opt = query("www.test.", RecordType::A, true);
    two_opt[11] = 2;
    let tail = two_opt[two_opt.len() - 11..].to_vec();
    two_opt.extend_from_slice(&tail);
    cases.push(("two OPT", two_opt, Some(FORMERR)));
    for (what, msg, want) in cases {
        let r = raw(b.addr, BASIC, &msg, Duration::from_millis(300)).await;
        match want {
            None => assert!(r.is_none(), "{what}: dropped"),
            Some(rc) => {
                let r = r.unwrap_or_else(|| panic!("{what}: an answer"));
                assert_eq!(u16::from(r[3] & 0xf), rc, "{what}");
                assert_eq!(&r[..2], &msg[..2], "{what}: id echoed");
            }
        }
        let m = ask(b.addr, BASIC, "www.test.", RecordType::A).await;
        assert_eq!(addrs(&m), ["192.0.2.80"], "after {what}");
    }
    assert!(b.engine.stats()["malformed"].as_u64().unwrap() >= 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_garbage_and_slow_clients() {
    let b = bed().await;
    // A length below a DNS header: the connection is closed.
    let mut s = tokio::net::TcpStream::connect(b.addr).await.unwrap();
    s.write_all(&[0, 3, 1, 2, 3]).await.unwrap();
    let mut buf = [0u8; 16];
    let r = tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf))
        .await
        .unwrap();
    assert!(matches!(r, Ok(0) | Err(_)), "closed on length garbage");
    // A client that sends a length and stalls is cut off after TCP_BODY.
    let mut slow = tokio::net::TcpStream::connect(b.addr).await.unwrap();
    slow.write_all(&[0, 40, 0, 1]).await.unwrap();
    let t0 = std::time::Instant::now();
    let r = tokio::time::timeout(Duration::from_secs(6), slow.read(&mut buf))
        .await
        .expect("server closes");
    assert!(matches!(r, Ok(0) | Err(_)));
    assert!(t0.elapsed() >= Duration::from_secs(2));
    // Meanwhile and after, service is normal.
    assert_eq!(
        addrs(&ask_tcp(b.addr, "www.test.", RecordType::A).await),
        ["192.0.2.80"]
    );
    assert_eq!(
        addrs(&ask(b.addr, BASIC, "www.test.", RecordType::A).await),
        ["192.0.2.80"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_and_foreign_sources() {
    let b = bed_with(|c, _| {
        c.dns.rate_limit_qps = 5;
        c.allowed_sources = vec![
            "127.0.0.2/32".parse().unwrap(),
            "127.0.0.3/32".parse().unwrap(),
        ];
    })
    .await;
    // Not a tunnel client: no answer at all.
    let q = query("www.test.", RecordType::A, false);
    assert!(raw(b.addr, "127.0.0.9", &q, Duration::from_millis(300))
        .await
        .is_none());
    assert_eq!(b.engine.stats()["foreign_source"].as_u64(), Some(1));
    // Over TCP too: the connection is closed without an answer.
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind("127.0.0.9:0".parse().unwrap()).unwrap();
    let mut s9 = sock.connect(b.addr).await.unwrap();
    let q = query("www.test.", RecordType::A, false);
    let mut framed = (q.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(&q);
    let _ = s9.write_all(&framed).await;
    let mut buf9 = [0u8; 64];
    let r = tokio::time::timeout(Duration::from_secs(2), s9.read(&mut buf9))
        .await
        .expect("closed promptly");
    assert!(
        matches!(r, Ok(0) | Err(_)),
        "no TCP answer to a foreign source"
    );
    assert_eq!(b.engine.stats()["foreign_source"].as_u64(), Some(2));
    // A burst beyond the bucket: some are dropped; another client is unaffected.
    let s = tokio::net::UdpSocket::bind("127.0.0.2:0").await.unwrap();
    for _ in 0..60 {
        s.send_to(&query("ads.test.", RecordType::A, false), b.addr)
            .await
            .unwrap();
    }
    let mut got = 0;
    let mut buf = [0u8; 512];
    while let Ok(Ok(_)) =
        tokio::time::timeout(Duration::from_millis(300), s.recv_from(&mut buf)).await
    {
        got += 1;
    }
    assert!((5..60).contains(&got), "rate limited: {got} of 60 answered");
    assert!(b.engine.stats()["rate_limited"].as_u64().unwrap() > 0);
    assert_eq!(
        ede(&ask(b.addr, FAMILY, "ads.test.", RecordType::A).await),
        Some(15)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listener_follows_address_changes() {
    let b = bed().await;
    let port = b.addr.port();
    // Move to another loopback address (bind works before it "exists": freebind).
    let new: std::net::SocketAddr = format!("127.0.0.53:{port}").parse().unwrap();
    b.server.set_listen(&[new]).unwrap();
    assert_eq!(
        addrs(&ask(new, BASIC, "www.test.", RecordType::A).await),
        ["192.0.2.80"]
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    let q = query("www.test.", RecordType::A, false);
    assert!(
        raw(b.addr, BASIC, &q, Duration::from_millis(300))
            .await
            .is_none(),
        "old address closed"
    );
}
