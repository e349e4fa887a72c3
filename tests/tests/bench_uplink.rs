//! Uplink failover figures (bench/uplink/run.sh): the bed of
//! tests/src/uplink.rs (palisaded with two uplinks, a wireguard-go client
//! streaming UDP to the web host every 10 ms) with the product's probe
//! defaults (500 ms rounds, 400 ms timeout, 3 failed rounds to fall, 3 to
//! rise; the hold-down is 2 s instead of 30 s so rounds are quick: it only
//! delays the return, never the failover).
//!
//! Each round cuts wan1 (its link down, or a black hole with the link up)
//! and times, from the cut: the node's switch (its `last_switch`) and the
//! client's stream answered through wan2 again; then restores wan1 and waits
//! for the return. Prints every round and median, min, max against the 3 s
//! goal. Then the probes' cost: echo requests and bytes per second seen by
//! the internet, and palisaded's CPU time over 30 s with the probes on and,
//! after a reload without probe targets, off.
//!
//! Bounded: BENCH_ROUNDS rounds of each kind (default 10), each at most 30 s.

use palisade_tests::median_min_max;
use palisade_tests::uplink::{HealthOpts, Stream, UplinkBed, WAN1, WAN2};
use palisade_tests::Bins;
use std::time::{Duration, Instant};

const HOLD: u64 = 2;
const GOAL: f64 = 3.0;

fn bins() -> Bins {
    Bins {
        testhost: env!("CARGO_BIN_EXE_pal-testhost").into(),
    }
}

fn summary(what: &str, v: &[f64]) {
    let (median, min, max) = median_min_max(v);
    println!(
        "{what}: {} rounds: median {median:.3} s, min {min:.3} s, worst {max:.3} s (goal {GOAL} s: {})",
        v.len(),
        if max < GOAL { "met" } else { "MISSED" }
    );
}

/// utime + stime of `pid` in seconds.
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("palisaded stat");
    let rest = &stat[stat.rfind(')').expect("comm") + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 (utime, stime) are 11 and 12 after the comm.
    let ticks: f64 = f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap();
    ticks / 100.0
}

fn round(ub: &UplinkBed, stream: &Stream, cut: &dyn Fn(), restore: &dyn Fn()) -> (f64, f64) {
    stream
        .first_via_after(Instant::now(), WAN1, Duration::from_secs(10))
        .expect("stream via wan1 before the cut");
    let (n0, _) = ub.switches().unwrap();
    let t_unix = UplinkBed::now_unix();
    let t = Instant::now();
    cut();
    let resumed = stream
        .first_via_after(t, WAN2, Duration::from_secs(30))
        .expect("stream resumed via wan2");
    let (n1, at) = ub.switches().unwrap();
    assert_eq!(n1, n0 + 1);
    let switch = at.unwrap() - t_unix;
    restore();
    ub.wait_active("wan1", Duration::from_secs(30))
        .expect("back on wan1");
    (switch, resumed.as_secs_f64())
}

#[test]
#[ignore = "benchmark: bench/uplink/run.sh"]
fn uplink_failover_times_and_probe_cost() {
    let rounds: usize = std::env::var("BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let ub = UplinkBed::start(bins(), HealthOpts::product(HOLD)).unwrap();
    let stream = Stream::start(&ub.bed.clients[0].ns).unwrap();

    let link_down = (
        || ub.set_link(false).unwrap(),
        || ub.set_link(true).unwrap(),
    );
    let black_hole = (
        || ub.set_black_hole(true).unwrap(),
        || ub.set_black_hole(false).unwrap(),
    );
    type Action<'a> = &'a dyn Fn();
    let kinds: [(&str, Action, Action); 2] = [
        ("link down", &link_down.0, &link_down.1),
        ("black hole", &black_hole.0, &black_hole.1),
    ];
    for (what, cut, restore) in kinds {
        let (mut switch, mut resumed) = (vec![], vec![]);
        for i in 1..=rounds {
            let (s, r) = round(&ub, &stream, cut, restore);
            println!("round {what} {i}: node switched {s:.3} s, stream resumed via wan2 {r:.3} s after the cut");
            switch.push(s);
            resumed.push(r);
        }
        summary(&format!("{what}: node switch"), &switch);
        summary(&format!("{what}: client stream resumed"), &resumed);
    }
    drop(stream);

    // The probes' cost at the product defaults.
    let pid = ub
        .bed
        .node_procs
        .palisaded
        .as_ref()
        .unwrap()
        .pid()
        .expect("palisaded pid");
    ub.bed
        .nft(
            "inet",
            "table inet uplinkcount {\n chain pre { type filter hook prerouting priority -300; icmp type echo-request counter; }\n}\n",
        )
        .unwrap();
    let window = Duration::from_secs(30);
    let c0 = cpu_secs(pid);
    std::thread::sleep(window);
    let on = cpu_secs(pid) - c0;
    let counters = ub
        .bed
        .inet
        .run(&["nft", "list", "table", "inet", "uplinkcount"])
        .unwrap();
    let (mut packets, mut bytes) = (0f64, 0f64);
    if let Some(c) = counters.split("counter packets ").nth(1) {
        let f: Vec<&str> = c.split_whitespace().collect();
        packets = f[0].parse().unwrap_or(0.0);
        bytes = f[2].parse().unwrap_or(0.0);
    }
    let secs = window.as_secs_f64();
    println!(
        "probe cost: {:.1} echo requests/s ({:.0} bytes/s) for 2 uplinks x 1 target, each answered: as much again inbound",
        packets / secs,
        bytes / secs
    );
    // Same node, no probe targets (carrier and addresses only): reload.
    let cfg = std::fs::read_to_string(&ub.node.config).unwrap();
    let without: String = cfg
        .lines()
        .filter(|l| !l.starts_with("probe_targets"))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&ub.node.config, without).unwrap();
    ub.node.cli_ok(&ub.bed, &["reload"]).unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let c1 = cpu_secs(pid);
    std::thread::sleep(window);
    let off = cpu_secs(pid) - c1;
    println!(
        "palisaded CPU over {secs:.0} s: {on:.2} s with probes ({:.2} %), {off:.2} s without probe targets ({:.2} %)",
        on / secs * 100.0,
        off / secs * 100.0
    );
}
