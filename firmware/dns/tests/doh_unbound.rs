//! DNS-over-HTTPS against a real DoH server that is not the project's own:
//! Debian's unbound (1.17, built with libnghttp2; its DoH speaks HTTP/2 only)
//! serving a local zone over `https-port` on loopback.
//!
//! unbound never reaches out: it listens on 127.0.0.1 only, sends (if it ever
//! did) only from 127.0.0.1 (`outgoing-interface`; the kernel refuses a
//! loopback source towards any other address), has no IPv6, no forwarders, no
//! validator, and answers every name outside `test.` with REFUSED
//! (`local-zone: "." refuse`); `test.` is an auth-zone read from a file.
//! No root needed. Needs `unbound` and `unbound-control` (tests/packages.txt).

mod common;

use common::*;
use hickory_proto::rr::RecordType;
use palisade_dns::{Engine, Server};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const ZONE: &str = "\
$ORIGIN test.
$TTL 300
@           IN SOA ns.test. hostmaster.test. 1 3600 600 86400 30
@           IN NS ns.test.
ns          IN A 192.0.2.53
www         IN A 192.0.2.80
v6          IN AAAA 2001:db8::80
cloak       IN CNAME tracker.cdn.test.
tracker.cdn IN A 192.0.2.66
*.miss      IN A 192.0.2.1
";

use common::{pki, Pki};

/// An unbound process serving DoH on 127.0.0.1:`port`, stopped (by its own
/// handle) when dropped.
struct Unbound {
    child: Child,
    port: u16,
    conf: PathBuf,
    log: Arc<Mutex<String>>,
}

impl Unbound {
    fn start(dir: &Path, pki: &Pki) -> Unbound {
        std::fs::write(dir.join("server.pem"), &pki.cert_pem).unwrap();
        std::fs::write(dir.join("server.key"), &pki.key_pem).unwrap();
        std::fs::write(dir.join("test.zone"), ZONE).unwrap();
        // A free loopback port (unbound binds it right after).
        let port = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let d = dir.display();
        let conf = dir.join("unbound.conf");
        std::fs::write(
            &conf,
            format!(
                r#"server:
  username: ""
  chroot: ""
  directory: "{d}"
  pidfile: ""
  use-syslog: no
  logfile: ""
  verbosity: 1
  num-threads: 1
  interface: 127.0.0.1@{port}
  https-port: {port}
  tls-service-key: "{d}/server.key"
  tls-service-pem: "{d}/server.pem"
  http-endpoint: "/dns-query"
  do-ip6: no
  do-udp: no
  outgoing-interface: 127.0.0.1
  access-control: 127.0.0.0/8 allow
  module-config: "iterator"
  local-zone: "." refuse
  local-zone: "test." transparent
  extended-statistics: yes
auth-zone:
  name: "test."
  zonefile: "{d}/test.zone"
  for-downstream: yes
  for-upstream: no
remote-control:
  control-enable: yes
  control-interface: "{d}/control.sock"
"#
            ),
        )
        .unwrap();
        let mut child = Command::new("unbound")
            .arg("-d")
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run unbound (tests/packages.txt; tests/deps.sh installs it)");
        // Ready when it says so on stderr; keep draining stderr after that.
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if line.contains("start of service") {
                    let _ = tx.send(());
                }
                sink.lock().unwrap().push_str(&(line + "\n"));
            }
        });
        let ub = Unbound {
            child,
            port,
            conf,
            log,
        };
        if rx.recv_timeout(Duration::from_secs(15)).is_err() {
            panic!("unbound did not start:\n{}", ub.log());
        }
        ub
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// `unbound-control stats_noreset`, as numbers.
    fn stats(&self) -> BTreeMap<String, f64> {
        let o = Command::new("unbound-control")
            .arg("-c")
            .arg(&self.conf)
            .arg("stats_noreset")
            .output()
            .expect("run unbound-control");
        assert!(
            o.status.success(),
            "unbound-control: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .filter_map(|l| {
                let (k, v) = l.split_once('=')?;
                Some((k.to_string(), v.parse().ok()?))
            })
            .collect()
    }
}

impl Drop for Unbound {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn stat(st: &serde_json::Value, key: &str) -> u64 {
    st[key].as_u64().unwrap_or_else(|| panic!("{key} in {st}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doh_over_http2_against_unbound() {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki("doh.test");
    let ub = Unbound::start(dir.path(), &pki);
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &pki.ca_pem).unwrap();
    let doh = |tls_name: &str, path: &str| {
        let mut u = upstream(ub.addr(), Proto::Https);
        u.tls_name = Some(tls_name.into());
        u.ca_file = Some(ca_file.clone());
        u.path = Some(path.into());
        u
    };
    let cfg = config_with(dir.path(), vec![doh("doh.test", "/dns-query")]);
    let engine = Arc::new(Engine::new(&cfg).unwrap());
    let server = Server::start(engine.clone(), &["127.0.0.1:0".parse().unwrap()]).unwrap();
    let addr = server.local_addrs()[0];

    // 16 misses at once, before any connection exists: they share one
    // HTTP/2 connection (the first to connect makes it, the others wait).
    let tasks: Vec<_> = (0..16)
        .map(|i| {
            tokio::spawn(async move {
                ask(addr, BASIC, &format!("c{i}.miss.test."), RecordType::A).await
            })
        })
        .collect();
    for t in tasks {
        assert_eq!(addrs(&t.await.unwrap()), ["192.0.2.1"]);
    }
    let st = engine.stats();
    assert_eq!(
        (
            stat(&st, "doh_h2_connections"),
            stat(&st, "doh_http1_connections")
        ),
        (1, 0),
        "one HTTP/2 connection for every query: {st}"
    );
    assert_eq!(stat(&st, "upstream_failures"), 0, "{st}");

    // Answers from unbound's zone, through the resolver.
    let m = ask(addr, BASIC, "www.test.", RecordType::A).await;
    assert_eq!((rcode(&m), addrs(&m)), (0, vec!["192.0.2.80".to_string()]));
    let m = ask(addr, BASIC, "v6.test.", RecordType::AAAA).await;
    assert_eq!(addrs(&m), ["2001:db8::80"]);
    let m = ask(addr, BASIC, "nx.test.", RecordType::A).await;
    assert_eq!(rcode(&m), 3, "NXDOMAIN: {m:?}");
    assert!(
        m.authorities
            .iter()
            .any(|r| r.record_type() == RecordType::SOA),
        "the zone's SOA comes with the NXDOMAIN: {m:?}"
    );
    // A CNAME chain: followed for a client without lists, and cloaking caught
    // (tracker.cdn.test is on the basic tier's list) from the cache.
    let m = ask(addr, NO_TIER, "cloak.test.", RecordType::A).await;
    assert_eq!(addrs(&m), ["tracker.cdn.test.", "192.0.2.66"]);
    let m = ask(addr, BASIC, "cloak.test.", RecordType::A).await;
    assert_eq!((rcode(&m), ede(&m)), (3, Some(15)), "cloaked: {m:?}");
    let st = engine.stats();
    assert_eq!(
        stat(&st, "doh_h2_connections"),
        1,
        "still the same connection: {st}"
    );

    // REFUSED by unbound (outside its zone): the client gets SERVFAIL (fail
    // closed), counted as an upstream failure.
    let m = ask(addr, BASIC, "outside.example.", RecordType::A).await;
    assert_eq!(rcode(&m), 2);
    let st = engine.stats();
    assert_eq!(stat(&st, "upstream_failures"), 1, "{st}");

    // unbound's own count: every query it answered came over DoH (its DoH is
    // HTTP/2 only), one per cache miss of the resolver.
    let us = ub.stats();
    let https = us.get("num.query.https").copied().unwrap_or(-1.0);
    let total = us.get("total.num.queries").copied().unwrap_or(-1.0);
    assert_eq!(https, total, "unbound stats: {us:?}");
    assert_eq!(
        https as u64,
        stat(&st, "cache_misses"),
        "unbound {us:?}, resolver {st}"
    );
    assert!(https >= 21.0, "unbound stats: {us:?}");

    // An endpoint unbound does not serve (HTTP 404), and a certificate for
    // another name: SERVFAIL.
    for (i, (name, path)) in [("doh.test", "/not-dns"), ("other.test", "/dns-query")]
        .into_iter()
        .enumerate()
    {
        let mut c = cfg.clone();
        c.dns.upstreams = vec![doh(name, path)];
        engine.reload(&c).unwrap();
        let m = ask(addr, BASIC, &format!("bad{i}.miss.test."), RecordType::A).await;
        assert_eq!(rcode(&m), 2, "{name} {path}: {m:?}");
    }
    // Back to the right config: answered again.
    engine.reload(&cfg).unwrap();
    let m = ask(addr, BASIC, "again.miss.test.", RecordType::A).await;
    assert_eq!(addrs(&m), ["192.0.2.1"], "unbound log:\n{}", ub.log());
}
