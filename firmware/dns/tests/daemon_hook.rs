//! Compiles palisaded's DNS hook (firmware/daemon/src/dns.rs) with this
//! crate's dependencies, runs its unit tests, and starts the service from the
//! example node config with the tunnel addresses moved to loopback.

#[path = "../../daemon/src/dns.rs"]
mod dns;

use std::net::SocketAddr;

/// Binds port 53 (root): run by tests/run.sh in a private network namespace
/// (`unshare -n`, loopback up), so it neither needs nor touches the host's port 53.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "root: run by tests/run.sh (unshare -n)"]
async fn service_starts_reloads_and_stops() {
    let dir = tempfile::tempdir().unwrap();
    for l in ["ads", "family", "allow"] {
        std::fs::write(
            dir.path().join(format!("{l}.txt")),
            format!("{l}-blocked.test\n"),
        )
        .unwrap();
    }
    let text = include_str!("../../../configs/node.toml")
        .replace("/etc/palisade/lists", &dir.path().display().to_string())
        // An unused loopback address and a unique v6 ULA: freebind lets both bind.
        .replace("10.66.0.1/16", "127.66.0.1/16")
        .replace("10.66.0.2/32", "127.66.0.2/32")
        .replace("10.66.0.3/32", "127.66.0.3/32")
        // A v6 tunnel prefix no interface of this machine has.
        .replace("fd66::", "fd5a:1b2c:3d4e::");
    let cfg = palisade_core::config::NodeConfig::from_str(&text, std::path::Path::new("node.toml"))
        .unwrap();
    let spec = cfg
        .validate(std::path::Path::new("node.toml"), &text)
        .unwrap();
    let svc = dns::DnsService::start(&spec).await.unwrap();
    assert!(svc.is_running());
    let s = tokio::net::UdpSocket::bind("127.66.0.2:0").await.unwrap();
    let mut q = vec![0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0];
    q.extend_from_slice(b"\x0bads-blocked\x04test\x00\x00\x01\x00\x01");
    s.send_to(&q, "127.66.0.1:53".parse::<SocketAddr>().unwrap())
        .await
        .unwrap();
    let mut buf = [0u8; 512];
    let (n, _) = tokio::time::timeout(std::time::Duration::from_secs(3), s.recv_from(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(buf[3] & 0xf, 3, "NXDOMAIN block for the basic tier");
    assert!(n > 12);
    svc.reload(&spec).unwrap();
    assert_eq!(svc.stats()["tiers"]["basic"]["blocked"], 1);
    // Only enabling/disabling and the cache size need a restart.
    assert!(!svc.needs_restart(&spec));
    let mut bigger = spec.clone();
    bigger.dns.cache_entries += 1;
    assert!(svc.needs_restart(&bigger));

    // The health canary: from the tunnel address to the tunnel address, a
    // localhost name the resolver answers itself.
    let listen = dns::listen_addrs(&spec);
    let t = std::time::Duration::from_secs(1);
    let rtt = dns::canary(&listen[..1], t).await.expect("canary answered");
    assert!(rtt < t);
    assert_eq!(svc.stats()["local"], 1, "answered locally, not upstream");
    // Both answered queries (the block, the canary) are in the histogram.
    let lat = svc.latency().expect("running resolver");
    assert_eq!(lat.count, 2, "{lat:?}");
    assert_eq!(lat.buckets.last().unwrap().1, 2, "both within 2.5 s: {lat:?}");
    // The v6 tunnel address is on no interface here: not the resolver's fault.
    let e = dns::canary(&listen, t).await.unwrap_err();
    assert!(!e.resolver_fault(), "{e}");
    svc.stop().await;
    // Stopped: the canary gets no answer, and that is the resolver's fault.
    let e = dns::canary(&listen[..1], t).await.unwrap_err();
    assert!(e.resolver_fault(), "{e}");
}
