//! Benchmark, not a test (run by bench/update/detect.sh, never by tests/run.sh):
//! how long a node takes to notice a published update with the default poll
//! interval (300 s plus 0..20 % jitter). The real palisaded in the bed's node
//! namespace polls a `file://` repository with `auto = false` (it notices, it
//! does not install); at a random moment of each round a new image is
//! published with `palisade-fleet`, and the time until `palisade update
//! status` lists it is one sample. Bounded: ROUNDS (env BENCH_ROUNDS,
//! default 3) rounds of at most 420 s each.

use palisade_tests::palisade::{NodeOptions, Palisade};
use palisade_tests::update::{fake_slot_image, node_update_args, Fleet};
use palisade_tests::{Bins, TestBed};
use std::time::{Duration, Instant};

fn bins() -> Bins {
    Bins { testhost: env!("CARGO_BIN_EXE_pal-testhost").into() }
}

#[test]
#[ignore = "benchmark: bench/update/detect.sh"]
fn bench_time_to_detect_a_published_update_at_the_default_poll_interval() {
    let rounds: usize = std::env::var("BENCH_ROUNDS").ok().and_then(|r| r.parse().ok()).unwrap_or(3);
    let mut bed = TestBed::new(1, bins()).expect("test bed");
    let dir = bed.dir.path().join("upd");
    std::fs::create_dir_all(&dir).unwrap();
    let fleet = Fleet::init(&dir.join("fleet")).unwrap();
    let first = fake_slot_image(&dir, "0.2.0", 4096).unwrap();
    fleet.add_image(&first, "qemu-x86_64", "0.2.0").unwrap();
    std::fs::create_dir_all(bed.dir.path().join("state")).unwrap();
    std::fs::copy(fleet.root(), bed.dir.path().join("state/fleet-root.json")).unwrap();
    std::fs::write(dir.join("os-release"), "VERSION_ID=0.1.0\n").unwrap();
    for s in ["a.img", "b.img"] {
        std::fs::write(dir.join(s), vec![0u8; 1 << 20]).unwrap();
    }
    std::fs::create_dir_all(dir.join("esp")).unwrap();
    let opts = NodeOptions {
        // The product default interval: no poll_secs.
        extra_toml: format!("\n[update]\nrepository = \"file://{}\"\nauto = false\n", fleet.repo.display()),
        extra_args: node_update_args(&dir.join("a.img"), &dir.join("b.img"), &dir.join("esp"), &dir.join("os-release")),
        ..Default::default()
    };
    let p = Palisade::start(&mut bed, &opts).expect("palisaded");
    let status = || -> serde_json::Value {
        serde_json::from_str(&p.cli_ok(&bed, &["update", "status", "--json"]).unwrap()).unwrap()
    };
    let mut samples = Vec::new();
    for round in 0..rounds {
        // A random moment within one interval.
        let mut b = [0u8; 2];
        std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom").unwrap(), &mut b).unwrap();
        let wait = Duration::from_secs(u16::from_le_bytes(b) as u64 % 300);
        std::thread::sleep(wait);
        let version = format!("0.3.{round}");
        let img = fake_slot_image(&dir, &version, 4096).unwrap();
        fleet.add_image(&img, "qemu-x86_64", &version).unwrap();
        let published = Instant::now();
        let deadline = published + Duration::from_secs(420);
        loop {
            assert!(Instant::now() < deadline, "{version} not seen within 420 s: {}", status());
            let st = status();
            if st["last_check"]["images"].to_string().contains(&format!("\"{version}\"")) {
                break;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        let d = published.elapsed().as_secs_f64();
        println!("round {}: published {} s into the wait, seen after {d:.1} s", round + 1, wait.as_secs());
        samples.push(d);
    }
    let (median, min, max) = palisade_tests::median_min_max(&samples);
    println!(
        "time to detect a published update (default poll 300 s + 0..20 % jitter), {} rounds: median {median:.1} s, min {min:.1} s, max {max:.1} s (expected: uniform over one interval, at most 360 s)",
        samples.len()
    );
}
