//! The control socket has bounds. 200 idle connections plus a
//! client that asks for a large answer and never reads it must not keep
//! `palisade status` from answering; palisaded holds at most its connection
//! limit open, and closes the non-reading client after its write timeout
//! (docs/security.md S17).

use palisade_core::config::PrivateKey;
use palisade_tests::palisade::{NodeOptions, Palisade};
use palisade_tests::{Bins, TestBed};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

fn bins() -> Bins {
    Bins {
        testhost: env!("CARGO_BIN_EXE_pal-testhost").into(),
    }
}

/// Control connections palisaded allows at once (supervisor.rs ControlLimits).
const MAX_CONNS: usize = 32;

/// Sockets palisaded has open.
fn sockets(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
                .filter(|l| l.to_string_lossy().starts_with("socket:"))
                .count()
        })
        .unwrap_or(0)
}

#[test]
#[ignore = "root: run by tests/run.sh"]
fn status_answers_despite_idle_and_non_reading_clients() {
    let mut bed = TestBed::new(1, bins()).expect("build test bed");
    // Peers with long names make `peers list` answer about 600 KB: more
    // than a Unix socket buffers, so a client that does not read blocks
    // palisaded's write.
    let mut extra = String::new();
    for i in 0..400usize {
        let key = PrivateKey::generate().public_key().to_base64();
        extra.push_str(&format!(
            "\n[[peer]]\nname = \"bulk-{i:03}-{}\"\npublic_key = \"{key}\"\naddresses = [\"10.66.{}.{}/32\", \"fd66::1:{i:x}/128\"]\n",
            "x".repeat(1500),
            10 + i / 200,
            1 + i % 200
        ));
    }
    let opts = NodeOptions {
        extra_toml: extra,
        ..NodeOptions::default()
    };
    let p = Palisade::start(&mut bed, &opts).expect("start palisaded");
    let pid = bed
        .node_procs
        .palisaded
        .as_ref()
        .and_then(|p| p.pid())
        .expect("palisaded pid");
    let sock = p.socket();
    std::thread::sleep(Duration::from_millis(500));
    let base = sockets(pid);

    // A client that asks for the peer list and never reads it.
    let mut greedy = UnixStream::connect(&sock).unwrap();
    greedy.write_all(b"{\"cmd\":\"peers-list\"}\n").unwrap();
    std::thread::sleep(Duration::from_millis(500));
    // 200 clients that connect and say nothing.
    let idle: Vec<UnixStream> = (0..200)
        .map(|_| UnixStream::connect(&sock).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let held = sockets(pid).saturating_sub(base);
    println!("palisaded holds {held} control connections (limit {MAX_CONNS})");

    let t0 = Instant::now();
    let out = p.cli_ok(&bed, &["status"]).expect("palisade status");
    let took = t0.elapsed();
    println!("palisade status answered in {took:?} with 200 idle clients and a non-reading one");
    assert!(out.contains("wireguard"), "{out}");
    assert!(took < Duration::from_secs(3), "status took {took:?}");
    assert!(held <= MAX_CONNS + 2, "{held} connections held open");

    // After the request and write timeouts (5 s each) every one of them is
    // closed; the non-reading client got a truncated answer, not the whole.
    std::thread::sleep(Duration::from_secs(7));
    let left = sockets(pid).saturating_sub(base);
    assert!(left <= 1, "{left} control connections still open");
    greedy
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut got = Vec::new();
    let r = greedy.read_to_end(&mut got);
    assert!(r.is_ok(), "closed by palisaded: {r:?}");
    assert!(
        !got.ends_with(b"\n") && got.len() < 500_000,
        "the non-reading client was served in full ({} bytes): no write timeout",
        got.len()
    );
    for mut s in idle {
        s.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let mut b = [0u8; 1];
        assert!(
            matches!(s.read(&mut b), Ok(0)),
            "an idle connection is still open"
        );
    }
    // And the full answer still works for a client that reads.
    let peers = p.cli_ok(&bed, &["peers", "list", "--json"]).unwrap();
    assert!(peers.len() > 500_000, "{} bytes", peers.len());
}
