//! Watchdog recovery figures (bench/board/run.sh): one QEMU guest of the
//! qemu-x86_64 board (softdog, 10 s) with the test-hook port; each round
//! hangs the supervisor (SIGSTOP through `stop-supervisor`) and times, from
//! the hang: the watchdog firing, the next boot's banner, the health gate
//! ("palisade-init: ready") and the first UDP echo answered through the
//! tunnel for a wireguard-go client (the node serving again). Prints each
//! round and the median, min and max of each step.
//!
//! Bounded: BENCH_ROUNDS rounds (default 5), each at most 300 s.

use palisade_tests::guest::{image_path, Guest, GuestOptions, VmDevices};
use palisade_tests::{addr, median_min_max, probe, sa, wait_until, Bins, Outcome, TestBed};
use std::time::{Duration, Instant};

const ROUND_LIMIT: Duration = Duration::from_secs(300);
const BANNER: &str = "| config from ";
const READY: &str = "palisade-init: ready";
const FIRED: &str = "softdog: Initiating system reboot";

fn bins() -> Bins {
    Bins {
        testhost: env!("CARGO_BIN_EXE_pal-testhost").into(),
    }
}

fn served(bed: &TestBed) -> bool {
    bed.clients[0]
        .ns
        .enter(|| probe::udp_exchange(None, sa(addr::WEB_V4, addr::ECHO_UDP), b"bench", Duration::from_millis(200)))
        .map(|o| matches!(o, Outcome::Answered(_)))
        .unwrap_or(false)
}

fn summary(what: &str, v: &[f64]) {
    let (median, min, max) = median_min_max(v);
    println!("{what}: {} rounds: median {median:.1} s, min {min:.1} s, max {max:.1} s", v.len());
}

#[test]
#[ignore = "benchmark: bench/board/run.sh"]
fn hang_to_serving_again() {
    let rounds: usize = std::env::var("BENCH_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(5);
    let image = image_path().expect("image to test");
    let bed = TestBed::new_for_guest(1, bins()).expect("bed");
    let opts = GuestOptions {
        extra_cmdline: Some("palisade.test_hooks=1".into()),
        allow_reboot: true,
        devices: VmDevices { test_port: true, ..Default::default() },
        ..Default::default()
    };
    let mut guest = Guest::boot(&bed, &image, &opts).expect("boot the image");
    let (mut fired, mut banner, mut ready, mut serving) = (vec![], vec![], vec![], vec![]);
    for round in 1..=rounds {
        wait_until(ROUND_LIMIT, "client served before the hang", || served(&bed).then_some(()))
            .unwrap_or_else(|e| panic!("{e:#}\n{}", guest.console_text()));
        let text = guest.console_text();
        let (f0, b0, r0) = (text.matches(FIRED).count(), text.matches(BANNER).count(), text.matches(READY).count());
        let hang = Instant::now();
        guest.send_test_line("stop-supervisor").expect("write the test port");
        let (mut t_fired, mut t_banner, mut t_ready) = (None, None, None);
        wait_until(ROUND_LIMIT, "serving again after the watchdog reset", || {
            let text = guest.console_text();
            let now = hang.elapsed();
            if t_fired.is_none() && text.matches(FIRED).count() > f0 {
                t_fired = Some(now);
            }
            if t_banner.is_none() && text.matches(BANNER).count() > b0 {
                t_banner = Some(now);
            }
            if t_ready.is_none() && text.matches(READY).count() > r0 {
                t_ready = Some(now);
            }
            (t_ready.is_some() && served(&bed)).then_some(())
        })
        .unwrap_or_else(|e| panic!("{e:#}\n{}", guest.console_text()));
        let s = hang.elapsed();
        let secs = |d: Option<Duration>| d.map(|d| d.as_secs_f64()).unwrap_or(f64::NAN);
        println!(
            "round {round}: hang -> watchdog fired {:.1} s -> banner {:.1} s -> health gate {:.1} s -> serving {:.1} s",
            secs(t_fired),
            secs(t_banner),
            secs(t_ready),
            s.as_secs_f64()
        );
        fired.push(secs(t_fired));
        banner.push(secs(t_banner));
        ready.push(secs(t_ready));
        serving.push(s.as_secs_f64());
    }
    summary("hang -> watchdog fired", &fired);
    summary("hang -> next boot's banner", &banner);
    summary("hang -> health gate passed", &ready);
    summary("hang -> node serving again", &serving);
    guest.kill();
}
