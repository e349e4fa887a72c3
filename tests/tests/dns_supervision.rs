//! DNS supervision and the reload lock, with a real palisaded in the node namespace and a
//! wireguard-go client (docs/dns.md "Supervision"):
//! - a resolver that cannot start (its block list is missing) is retried with
//!   backoff; `palisade status` (JSON and human) says why and when the next
//!   try is; once the file appears it starts by itself, its canary query is
//!   answered and clients get answers through the tunnel;
//! - a reload that is stuck compiling a list (a FIFO nobody writes yet)
//!   holds up neither cache misses nor the control socket
//!   (`palisade status`, `palisade dns stats`).

use palisade_tests::palisade::{NodeOptions, Palisade};
use palisade_tests::{addr, probe, Bins, TestBed};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const T: Duration = Duration::from_millis(1500);

fn bins() -> Bins {
    Bins {
        testhost: env!("CARGO_BIN_EXE_pal-testhost").into(),
    }
}

fn list_toml(list: &Path) -> String {
    format!(
        "\n[dns.list.ads]\npath = \"{}\"\n\n[dns.tier.default]\nlists = [\"ads\"]\n",
        list.display()
    )
}

fn status(p: &Palisade, bed: &TestBed) -> serde_json::Value {
    let out = p
        .cli_ok(bed, &["status", "--json"])
        .expect("palisade status --json");
    serde_json::from_str(&out).expect("status JSON")
}

fn v4() -> SocketAddr {
    SocketAddr::new(addr::NODE_TUN_V4.into(), 53)
}

/// A bed with one client and palisaded whose default tier uses the list
/// `ads.txt` (written with `content`, or absent), the client handshaken.
fn node_with_list(content: Option<&str>) -> (TestBed, Palisade, PathBuf) {
    let mut bed = TestBed::new(1, bins()).expect("build test bed");
    let list = bed.dir.path().join("ads.txt");
    if let Some(text) = content {
        std::fs::write(&list, text).unwrap();
    }
    let opts = NodeOptions {
        extra_toml: list_toml(&list),
        ..NodeOptions::default()
    };
    let p = Palisade::start(&mut bed, &opts).expect("start palisaded");
    bed.wait_handshake(1, Duration::from_secs(10))
        .expect("handshake");
    (bed, p, list)
}

/// An A query for `name` from the client, through the tunnel.
fn ask(bed: &TestBed, name: &str) -> Result<probe::DnsAnswer, palisade_tests::Outcome> {
    bed.clients[0]
        .ns
        .enter(|| probe::dns_udp(v4(), name, 1, T))
        .expect("enter client netns")
}

#[test]
#[ignore = "root: run by tests/run.sh"]
fn resolver_that_cannot_start_is_retried_and_reported() {
    // The list does not exist yet: the resolver cannot load its policy.
    let (bed, p, list) = node_with_list(None);
    let ask = |name: &str| ask(&bed, name);

    let s = status(&p, &bed);
    let d = &s["dns"];
    assert_eq!(d["state"], "failed", "{s:#}");
    let reason = d["reason"].as_str().unwrap();
    assert!(
        reason.contains("ads.txt") && reason.contains("cannot load"),
        "{reason}"
    );
    assert!(d["retry_in_s"].as_u64().unwrap() <= 30, "{d}");
    assert_eq!(d["answering"], false);
    let human = p.cli_ok(&bed, &["status"]).unwrap();
    let line = human
        .lines()
        .find(|l| l.starts_with("dns "))
        .unwrap_or_else(|| panic!("no dns line in:\n{human}"));
    assert!(
        line.contains("FAILED") && line.contains("ads.txt") && line.contains("restarting in"),
        "{line}"
    );
    let stats = p.cli(&bed, &["dns", "stats"]).unwrap();
    assert!(!stats.status.success());
    assert!(
        String::from_utf8_lossy(&stats.stderr).contains("not running"),
        "{stats:?}"
    );
    assert!(ask("www.example.test").is_err(), "no resolver, no answer");

    // It keeps trying, with growing delays.
    std::thread::sleep(Duration::from_secs(4));
    let d = status(&p, &bed)["dns"].clone();
    assert_eq!(d["state"], "failed");
    let failures = d["failures"].as_u64().unwrap();
    assert!((2..=4).contains(&failures), "{d}");
    println!(
        "after 4 s: {failures} failed attempts, next in {} s",
        d["retry_in_s"]
    );

    // The cause goes away: it recovers by itself, no reload needed.
    std::fs::write(&list, "||ads.example.test^\n").unwrap();
    let t0 = Instant::now();
    let d = palisade_tests::wait_until(
        Duration::from_secs(35),
        "resolver running and answering its canary",
        || {
            let d = status(&p, &bed)["dns"].clone();
            (d["state"] == "running" && d["answering"] == true).then_some(d)
        },
    )
    .unwrap_or_else(|e| panic!("{e:#}\n{}", bed.dump_logs()));
    println!(
        "recovered {:.1} s after the list appeared: {d}",
        t0.elapsed().as_secs_f64()
    );
    assert!(d["reload_error"].is_null());
    let a = ask("www.example.test").expect("answer through the tunnel");
    assert_eq!(a.addrs, vec![IpAddr::from(addr::WEB_V4)]);
    let a = ask("tracker.ads.example.test").expect("answer for a blocked name");
    assert_eq!((a.rcode, a.addrs.len()), (3, 0));
    let human = p.cli_ok(&bed, &["status"]).unwrap();
    assert!(
        human
            .lines()
            .any(|l| l.starts_with("dns ") && l.contains("running, answering")),
        "{human}"
    );
    let stats: serde_json::Value =
        serde_json::from_str(&p.cli_ok(&bed, &["dns", "stats", "--json"]).unwrap()).unwrap();
    assert!(
        stats["local"].as_u64().unwrap() >= 1,
        "the canary was answered locally: {stats}"
    );

    // A reload that is refused (the list vanished) keeps the running policy
    // and says so in the status.
    std::fs::remove_file(&list).unwrap();
    let r = p.cli_ok(&bed, &["reload"]).unwrap();
    assert!(r.contains("error"), "{r}");
    let d = status(&p, &bed)["dns"].clone();
    assert_eq!(d["state"], "running");
    assert!(
        d["reload_error"].as_str().unwrap().contains("ads.txt"),
        "{d}"
    );
    let a = ask("tracker.ads.example.test").expect("still served");
    assert_eq!(a.rcode, 3, "the old policy still blocks");
}

/// Unblocks a reader waiting on `path` (a FIFO) when dropped, so a failing
/// test does not leave palisaded's reload hanging.
struct FifoGuard(PathBuf);

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

#[test]
#[ignore = "root: run by tests/run.sh"]
fn stuck_reload_holds_up_neither_queries_nor_the_control_socket() {
    let (bed, p, list) = node_with_list(Some("||ads.example.test^\n"));
    let ask = |name: &str| ask(&bed, name);
    palisade_tests::wait_until(Duration::from_secs(10), "resolver answering", || {
        ask("www.example.test").ok()
    })
    .unwrap_or_else(|e| panic!("{e:#}\n{}", bed.dump_logs()));

    // The next reload's list is a FIFO: compiling it blocks until the test writes.
    let fifo = bed.dir.path().join("slow.txt");
    let st = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(st.success());
    let text = std::fs::read_to_string(&p.config).unwrap();
    std::fs::write(
        &p.config,
        text.replace(&list.display().to_string(), &fifo.display().to_string()),
    )
    .unwrap();

    std::thread::scope(|s| {
        let _guard = FifoGuard(fifo.clone());
        let reload = s.spawn(|| p.cli(&bed, &["reload"]).unwrap());
        std::thread::sleep(Duration::from_millis(700));
        // Another control request for the resolver while the reload compiles.
        let stats = s.spawn(|| p.cli(&bed, &["dns", "stats", "--json"]).unwrap());
        std::thread::sleep(Duration::from_millis(300));
        assert!(!reload.is_finished(), "the reload waits for its list");

        // A cache miss (goes upstream) and the control socket, meanwhile.
        let t0 = Instant::now();
        let a = ask("allowed.example.test").expect("a cache miss is answered during the reload");
        assert_eq!(a.addrs, vec![IpAddr::from(addr::WEB_V4)]);
        let t_miss = t0.elapsed();
        let t0 = Instant::now();
        let st = status(&p, &bed);
        let t_status = t0.elapsed();
        println!("during the stuck reload: miss answered in {t_miss:?}, status in {t_status:?}");
        assert_eq!(st["dns"]["state"], "running");
        assert!(
            t_status < Duration::from_secs(3),
            "status took {t_status:?}"
        );
        let o = stats.join().unwrap();
        assert!(o.status.success(), "dns stats: {o:?}");
        assert!(!reload.is_finished());

        // Let the list through: the reload completes and applies it.
        std::fs::write(&fifo, "||adult.example.test^\n").unwrap();
        let o = reload.join().unwrap();
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(o.status.success() && !out.contains("error"), "{o:?}");
    });
    let a = ask("adult.example.test").expect("answer");
    assert_eq!((a.rcode, a.addrs.len()), (3, 0), "the new list applies");
    let a = ask("ads.example.test").expect("answer");
    assert_eq!(a.rcode, 0, "the old list is gone");
}
