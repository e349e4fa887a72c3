//! The watchdog feeding of palisaded (docs/board.md), with a FIFO standing in
//! for the watchdog device (never the host's /dev/watchdog): palisaded runs in
//! the bed's node namespace with `--board` naming a board file whose
//! `[devices.watchdog]` is the FIFO. It feeds while it runs; a SIGSTOPped
//! palisaded feeds nothing; after SIGCONT the feeds resume; an orderly stop
//! (SIGTERM) ends with the magic close 'V'.

use palisade_board::{BoardDef, DevicesDef, WatchdogDef};
use palisade_tests::palisade::{NodeOptions, Palisade};
use palisade_tests::{wait_until, Bins, TestBed};
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn bins() -> Bins {
    Bins {
        testhost: env!("CARGO_BIN_EXE_pal-testhost").into(),
    }
}

/// Every byte read from the FIFO with the time it arrived.
type Feeds = Arc<Mutex<Vec<(Instant, u8)>>>;

/// Reads the FIFO (opened before palisaded, non-blocking) on a thread until `stop`.
fn read_fifo(path: &Path, stop: Arc<std::sync::atomic::AtomicBool>) -> Feeds {
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc_o_nonblock())
        .open(path)
        .expect("open the FIFO");
    let feeds: Feeds = Arc::default();
    let out = feeds.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 64];
        while !stop.load(std::sync::atomic::Ordering::SeqCst) {
            match f.read(&mut buf) {
                Ok(n) if n > 0 => {
                    let now = Instant::now();
                    out.lock()
                        .unwrap()
                        .extend(buf[..n].iter().map(|b| (now, *b)));
                }
                _ => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    });
    feeds
}

fn libc_o_nonblock() -> i32 {
    nix::fcntl::OFlag::O_NONBLOCK.bits()
}

fn count(feeds: &Feeds) -> usize {
    feeds.lock().unwrap().len()
}

#[test]
#[ignore = "root: run by tests/run.sh"]
fn watchdog_is_fed_only_while_palisaded_runs() {
    let mut bed = TestBed::new(1, bins()).expect("bed");
    let fifo = bed.log_dir().join("watchdog.fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).expect("mkfifo");
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let feeds = read_fifo(&fifo, stop.clone());

    // The qemu-x86_64 board with its watchdog on the FIFO, and no LED or button.
    let ws = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf();
    let mut def = BoardDef::load(&ws.join("board/boards"), "qemu-x86_64").expect("qemu board");
    def.devices = DevicesDef {
        watchdog: Some(WatchdogDef {
            path: fifo.clone(),
            timeout_secs: 10,
        }),
        led: None,
        button: None,
    };
    let board = bed.log_dir().join("board.toml");
    std::fs::write(&board, def.to_toml().unwrap()).unwrap();

    let opts = NodeOptions {
        extra_args: vec!["--board".into(), board.display().to_string()],
        ..Default::default()
    };
    let node = Palisade::start(&mut bed, &opts).expect("start palisaded");
    let log_path = bed
        .node_procs
        .palisaded
        .as_ref()
        .unwrap()
        .log_path()
        .to_path_buf();
    let log = || std::fs::read_to_string(&log_path).unwrap_or_default();

    // Fed while running: about one feed a second.
    let t0 = Instant::now();
    wait_until(Duration::from_secs(15), "3 watchdog feeds", || {
        (count(&feeds) >= 3).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e:#}\n{}", log()));
    assert!(
        log().contains("not settable (not a watchdog device)"),
        "the FIFO's ENOTTY is tolerated and said:\n{}",
        log()
    );
    let b = count(&feeds);
    std::thread::sleep(Duration::from_secs(3));
    let rate = (count(&feeds) - b) as f64 / 3.0;
    println!(
        "feeds while running: {rate:.1}/s (after {:.1} s)",
        t0.elapsed().as_secs_f64()
    );
    assert!(
        rate >= 0.5,
        "palisaded feeds at least every 2 s while running ({rate}/s)"
    );

    // SIGSTOP: nothing is fed.
    let proc = bed.node_procs.palisaded.as_ref().unwrap();
    proc.signal(nix::sys::signal::Signal::SIGSTOP).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let stopped_at = count(&feeds);
    // Absence needs a window: 4 s is four feed periods.
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(
        count(&feeds),
        stopped_at,
        "a stopped palisaded fed the watchdog"
    );

    // SIGCONT: feeds resume.
    let cont = Instant::now();
    proc.signal(nix::sys::signal::Signal::SIGCONT).unwrap();
    wait_until(Duration::from_secs(10), "feeds after SIGCONT", || {
        (count(&feeds) >= stopped_at + 2).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e:#}\n{}", log()));
    println!(
        "feeds resumed {:.2} s after SIGCONT",
        cont.elapsed().as_secs_f64()
    );
    assert!(
        feeds.lock().unwrap().iter().all(|(_, b)| *b == 0),
        "only feeds so far, no magic close"
    );

    // An orderly stop: the last byte is the magic close.
    bed.node_procs
        .palisaded
        .as_mut()
        .unwrap()
        .stop(Duration::from_secs(10))
        .unwrap();
    wait_until(Duration::from_secs(5), "the magic close", || {
        (feeds.lock().unwrap().last().map(|f| f.1) == Some(b'V')).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e:#}\n{}", log()));
    assert!(
        log().contains("board: watchdog released (magic close)"),
        "{}",
        log()
    );
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    drop(node);
}
