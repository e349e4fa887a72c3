//! `pal-demo`: boot a Palisade image in QEMU inside the namespace test bed and
//! show it working end to end. Run by qemu/demo.sh (which builds the image).
//!
//!   pal-demo IMAGE
//!
//! Everything happens in network namespaces on this machine; nothing is sent
//! anywhere else. All namespaces and processes are removed at the end (also on
//! Ctrl-C: the bed's Drop runs on panic, and SIGINT is turned into a clean stop).

use palisade_tests::guest::{Guest, GuestOptions};
use palisade_tests::{addr, probe, sa, Bins, Outcome, TestBed};
use std::net::IpAddr;
use std::process::Command;
use std::time::Duration;

fn step(n: u32, what: &str) {
    println!("\n\x1b[1m[{n}] {what}\x1b[0m");
}

fn main() -> anyhow::Result<()> {
    let image = std::env::args()
        .nth(1)
        .ok_or_else(|| anyhow::anyhow!("usage: pal-demo IMAGE"))?;
    // Ctrl-C / SIGTERM: remove this run's namespaces (and every process in them,
    // QEMU included) and its directories before exiting.
    palisade_tests::ns::cleanup_on_signal();
    let me = std::env::current_exe()?;
    let testhost = me.with_file_name("pal-testhost");
    let bed = TestBed::new_for_guest(1, Bins { testhost })?;

    step(
        1,
        "test bed: internet namespace (web 203.0.113.80, DNS 203.0.113.53), one WireGuard client",
    );
    println!("    namespaces: {}-inet, {}-c1", bed.id, bed.id);
    let opts = GuestOptions {
        blocklist: vec!["||ads.example.test^".into()],
        ..Default::default()
    };

    step(2, "booting the image under QEMU (TCG), palisaded is PID 1");
    let mut guest = Guest::boot(&bed, std::path::Path::new(&image), &opts)?;
    println!("    serial console: {}", guest.console.display());
    bed.wait_handshake(1, Duration::from_secs(240))
        .map_err(|e| anyhow::anyhow!("{e:#}\nconsole:\n{}", guest.console_text()))?;
    println!(
        "    ready {:.1} s after QEMU started",
        guest.started.elapsed().as_secs_f64()
    );
    for line in guest
        .console_text()
        .lines()
        .filter(|l| l.contains("Palisade"))
    {
        println!("    console: {}", line.trim());
    }

    let c = &bed.clients[0];
    step(3, "WireGuard handshake (client side, `wg show`)");
    let show = c.ns.run(&["wg", "show", &c.ifname])?;
    for l in show.lines().filter(|l| !l.contains("private key")) {
        println!("    {l}");
    }

    step(
        4,
        "DNS through the tunnel (resolver on 10.66.0.1, upstream 203.0.113.53)",
    );
    let dns = sa(addr::NODE_TUN_V4, 53);
    let ask = |name: &str| {
        c.ns.enter(|| probe::dns_udp(dns, name, 1, Duration::from_secs(3)))
    };
    let mut tries = 0;
    let a = loop {
        match ask("allowed.example.test")? {
            Ok(a) => break a,
            Err(_) if tries < 15 => {
                tries += 1;
                std::thread::sleep(Duration::from_secs(1));
            }
            Err(o) => anyhow::bail!("no DNS answer: {o:?}"),
        }
    };
    println!(
        "    allowed.example.test      -> {:?} (rcode {})",
        a.addrs, a.rcode
    );
    match ask("tracker.ads.example.test")? {
        Ok(b) if b.rcode == 3 => println!(
            "    tracker.ads.example.test  -> blocked (NXDOMAIN, list ||ads.example.test^)"
        ),
        other => println!("    tracker.ads.example.test  -> {other:?} (expected NXDOMAIN)"),
    }

    step(5, "a page fetched through the exit");
    for dst in [IpAddr::from(addr::WEB_V4), addr::WEB_V6.into()] {
        match c
            .ns
            .enter(|| probe::http_get(None, sa(dst, 80), Duration::from_secs(3)))?
        {
            Outcome::Answered(body) => {
                println!("    GET http://{dst}/ -> the web host saw the client as {body}")
            }
            other => println!("    GET http://{dst}/ -> {other:?}"),
        }
    }
    match c
        .ns
        .enter(|| probe::tcp_connect(None, sa(addr::METADATA_V4, 80), Duration::from_secs(2)))?
    {
        Outcome::Timeout => println!("    169.254.169.254 (cloud metadata) -> dropped by the node"),
        other => println!("    169.254.169.254 -> {other:?}"),
    }

    step(
        6,
        "client config for a phone or laptop (wg-quick format, QR code)",
    );
    let key = std::fs::read_to_string(&c.keys.private_key_file)?;
    let conf = format!(
        "[Interface]\nPrivateKey = {}\nAddress = {}/32, {}/128\nDNS = {}, {}\n\n[Peer]\nPublicKey = {}\nEndpoint = {}:{}\nAllowedIPs = 0.0.0.0/0, ::/0\n",
        key.trim(),
        c.tun_v4,
        c.tun_v6,
        addr::NODE_TUN_V4,
        addr::NODE_TUN_V6,
        guest.node_key.public_key,
        addr::NODE_UP_V4,
        addr::WG_PORT
    );
    // The demo's throwaway test key is shown on purpose: it exists only in this run.
    println!(
        "{}",
        conf.lines()
            .map(|l| format!("    {l}"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    match Command::new("qrencode")
        .args(["-t", "ansiutf8", &conf])
        .output()
    {
        Ok(o) if o.status.success() => print!("{}", String::from_utf8_lossy(&o.stdout)),
        _ => println!("    (install qrencode for the QR code)"),
    }

    step(
        7,
        "power off (ctrl-alt-delete -> palisaded stops cleanly) and clean up",
    );
    let clean = guest.power_off(Duration::from_secs(90))?;
    println!(
        "    {}",
        if clean {
            "guest powered off cleanly"
        } else {
            "guest did not stop in time: killed"
        }
    );
    drop(guest);
    drop(bed);
    println!("    namespaces and processes removed");
    Ok(())
}
