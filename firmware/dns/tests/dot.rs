//! DNS-over-TLS upstream: a local CA made with rcgen, the test authority
//! serving DoT on loopback; the certificate and the name are verified.

mod common;

use common::*;
use hickory_proto::rr::RecordType;
use palisade_dns::{Engine, Server};
use palisade_dns_testauth::TestAuthority;
use std::sync::Arc;

/// The CA (for the resolver's trust) and the server side of a test certificate.
struct Pki {
    ca_pem: String,
    server: Arc<rustls::ServerConfig>,
}

fn pki(name: &str) -> Pki {
    let p = common::pki(name);
    Pki { server: common::server_config(&p), ca_pem: p.ca_pem }
}

async fn resolver_via_tls(
    auth: &TestAuthority,
    dir: &std::path::Path,
    ca: &str,
    tls_name: &str,
) -> (Server, std::net::SocketAddr) {
    let (s, a, _) = resolver_via(auth, dir, ca, tls_name, Proto::Tls).await;
    (s, a)
}

async fn resolver_via(
    auth: &TestAuthority,
    dir: &std::path::Path,
    ca: &str,
    tls_name: &str,
    proto: Proto,
) -> (Server, std::net::SocketAddr, Arc<Engine>) {
    let ca_file = dir.join(format!("ca-{tls_name}-{}-{proto}.pem", ca.len()));
    std::fs::write(&ca_file, ca).unwrap();
    let mut cfg = config(dir, auth);
    let addr = if proto == Proto::Tls {
        auth.tls.unwrap()
    } else {
        auth.doh.unwrap()
    };
    let mut u = upstream(addr, proto);
    u.tls_name = Some(tls_name.into());
    u.ca_file = Some(ca_file);
    cfg.dns.upstreams = vec![u];
    let engine = Arc::new(Engine::new(&cfg).unwrap());
    let server = Server::start(engine.clone(), &["127.0.0.1:0".parse().unwrap()]).unwrap();
    let addr = server.local_addrs()[0];
    (server, addr, engine)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dot_upstream_verifies_certificate_and_name() {
    let p = pki("dns.test");
    let auth = TestAuthority::start("127.0.0.1:0".parse().unwrap(), Some(p.server.clone()))
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();

    let (_s, addr) = resolver_via_tls(&auth, dir.path(), &p.ca_pem, "dns.test").await;
    let m = ask(addr, BASIC, "www.test.", RecordType::A).await;
    assert_eq!(addrs(&m), ["192.0.2.80"]);
    // The pooled connection is reused for the next miss.
    let m = ask(addr, BASIC, "a.miss.test.", RecordType::A).await;
    assert_eq!(addrs(&m), ["192.0.2.1"]);

    // Wrong name: the handshake fails, the client gets SERVFAIL (fail closed).
    let (_s2, addr2) = resolver_via_tls(&auth, dir.path(), &p.ca_pem, "other.test").await;
    assert_eq!(
        rcode(&ask(addr2, BASIC, "www.test.", RecordType::A).await),
        2
    );

    // Right name, untrusted CA: SERVFAIL too.
    let other = pki("dns.test");
    let (_s3, addr3) = resolver_via_tls(&auth, dir.path(), &other.ca_pem, "dns.test").await;
    assert_eq!(
        rcode(&ask(addr3, BASIC, "www.test.", RecordType::A).await),
        2
    );
}

/// The project's own DoH server speaks HTTP/1.1 only and offers no ALPN: the
/// client falls back to HTTP/1.1 and keeps the connection alive. (HTTP/2
/// against a real server: `doh_unbound.rs`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doh_upstream_falls_back_to_http1() {
    let p = pki("doh.test");
    let auth = TestAuthority::start("127.0.0.1:0".parse().unwrap(), Some(p.server.clone()))
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (_s, addr, engine) =
        resolver_via(&auth, dir.path(), &p.ca_pem, "doh.test", Proto::Https).await;
    assert_eq!(
        addrs(&ask(addr, BASIC, "www.test.", RecordType::A).await),
        ["192.0.2.80"]
    );
    assert_eq!(
        rcode(&ask(addr, BASIC, "nothing-here.test.", RecordType::A).await),
        3
    );
    // Keep-alive: several misses in a row on the pooled connection.
    for i in 0..5 {
        let m = ask(addr, BASIC, &format!("k{i}.miss.test."), RecordType::A).await;
        assert_eq!(addrs(&m), ["192.0.2.1"]);
    }
    let st = engine.stats();
    assert_eq!(
        (
            st["doh_http1_connections"].as_u64(),
            st["doh_h2_connections"].as_u64()
        ),
        (Some(1), Some(0)),
        "one HTTP/1.1 connection for 7 queries: {st}"
    );
    let (_s2, addr2, _) =
        resolver_via(&auth, dir.path(), &p.ca_pem, "wrong.test", Proto::Https).await;
    assert_eq!(
        rcode(&ask(addr2, BASIC, "www.test.", RecordType::A).await),
        2
    );
}

/// Hostile DoH answers fail the attempt (the client gets SERVFAIL, fail
/// closed), and the size caps act on the headers: a body announced as 1 GB or
/// streamed without end is refused at once, not read until the deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doh_hostile_answers_fail_fast_and_are_capped() {
    use palisade_dns::upstream::{ResolveError, Upstreams};
    use std::time::{Duration, Instant};
    let p = pki("doh.test");
    let auth = TestAuthority::start("127.0.0.1:0".parse().unwrap(), Some(p.server.clone()))
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &p.ca_pem).unwrap();
    let via = |path: &str| {
        let mut u = upstream(auth.doh.unwrap(), Proto::Https);
        u.tls_name = Some("doh.test".into());
        u.ca_file = Some(ca_file.clone());
        u.path = Some(path.into());
        // A long deadline: a client that waited for the body would take it.
        Upstreams::with_timeout(&[u], Duration::from_secs(4)).unwrap()
    };
    let www = b"\x03www\x04test";
    for path in [
        "/garbage",
        "/wrong-type",
        "/huge-length",
        "/endless",
        "/not-here",
    ] {
        let ups = via(path);
        let t = Instant::now();
        let r = ups.resolve(www, 1).await;
        let took = t.elapsed();
        assert_eq!(r.err(), Some(ResolveError::AllFailed), "{path}");
        assert_eq!(ups.errors(), 1, "{path}");
        assert!(
            took < Duration::from_secs(2),
            "{path}: refused after {took:?}, not at once"
        );
    }
    // The same server, the right path: answered.
    let ups = via("/dns-query");
    let a = ups.resolve(www, 1).await.expect("an answer");
    assert_eq!((a.rcode, a.an), (0, 1));
}
