//! CPU cost of the firewall drift check: reconcile passes and `status` calls
//! of the engine with the real firewall (NftCli) and a recording WireGuard,
//! reading the live table with `nft -j list` (spawned) and over netlink,
//! side by side in one run.
//!
//! Run by bench/nft/run.sh inside a private network namespace, as root:
//!   nft_read_bench --passes 50 --rounds 5
//! CPU time is user + system of this process and of its reaped children
//! (getrusage SELF + CHILDREN), per pass; "at 2 s" is that as a share of
//! one core at palisaded's 2 s reconcile interval.

use palisade_core::firewall::{NftCli, TableReader};
use palisade_core::reconcile::{Engine, Paths};
use palisade_core::wg::RecordingWg;
use std::time::Instant;

fn arg(name: &str, default: &str) -> String {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
        .unwrap_or_else(|| default.into())
}

/// CPU seconds of this process plus its waited-for children.
fn cpu() -> f64 {
    use nix::sys::resource::{getrusage, UsageWho};
    use nix::sys::time::TimeValLike;
    let mut t = 0.0;
    for who in [UsageWho::RUSAGE_SELF, UsageWho::RUSAGE_CHILDREN] {
        let ru = getrusage(who).expect("getrusage");
        t += (ru.user_time().num_microseconds() + ru.system_time().num_microseconds()) as f64 / 1e6;
    }
    t
}

fn stats(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    (v[v.len() / 2], v[0], v[v.len() - 1])
}

fn main() {
    let passes: usize = arg("--passes", "50").parse().expect("--passes N");
    let rounds: usize = arg("--rounds", "5").parse().expect("--rounds N");
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(
        dir.path().join("node.toml"),
        include_str!("../../../configs/node.toml"),
    )
    .expect("node.toml");
    let mut rows = Vec::new();
    for reader in [TableReader::NftJson, TableReader::Netlink] {
        let fw = NftCli {
            reader,
            ..NftCli::default()
        };
        let mut e = Engine::new(
            Paths::new(dir.path(), None),
            Box::new(RecordingWg::default()),
            Box::new(fw),
            false,
        );
        let r = e.reload().expect("reload");
        assert!(
            r.errors.is_empty() && r.firewall_verified,
            "first pass: {r:?}"
        );
        let (mut pass_cpu, mut pass_wall, mut st_cpu) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..rounds {
            let (c, t) = (cpu(), Instant::now());
            for _ in 0..passes {
                let r = e.reconcile();
                assert!(
                    r.errors.is_empty() && !r.firewall_applied && !r.firewall_drift,
                    "no-change pass: {r:?}"
                );
            }
            pass_cpu.push((cpu() - c) * 1e3 / passes as f64);
            pass_wall.push(t.elapsed().as_secs_f64() * 1e3 / passes as f64);
            let c = cpu();
            for _ in 0..passes {
                let s = e.status();
                assert_eq!(s["firewall"]["verified"], true, "{s}");
            }
            st_cpu.push((cpu() - c) * 1e3 / passes as f64);
        }
        // The drift check still sees a change made outside: one element added.
        let add = std::process::Command::new("nft")
            .args([
                "add",
                "element",
                "inet",
                "palisade",
                "blocked_v4",
                "{ 1.2.3.4 }",
            ])
            .status()
            .expect("run nft");
        assert!(add.success(), "nft add element");
        let r = e.reconcile();
        assert!(
            r.firewall_drift && r.firewall_applied,
            "drift not seen with {reader:?}: {r:?}"
        );
        rows.push((reader, stats(pass_cpu), stats(pass_wall), stats(st_cpu)));
    }
    println!("{passes} passes x {rounds} rounds; median (min-max), ms per call");
    println!(
        "{:<10} {:>24} {:>24} {:>24} {:>12}",
        "reader", "pass CPU", "pass wall", "status CPU", "CPU at 2 s"
    );
    for (reader, c, w, s) in rows {
        let f = |(m, lo, hi): (f64, f64, f64)| format!("{m:.2} ({lo:.2}-{hi:.2})");
        println!(
            "{:<10} {:>24} {:>24} {:>24} {:>11.2}%",
            format!("{reader:?}"),
            f(c),
            f(w),
            f(s),
            c.0 / 2000.0 * 100.0
        );
    }
}
