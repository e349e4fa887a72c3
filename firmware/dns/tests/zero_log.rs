//! Zero-log: after real traffic (hits, misses, blocks, malformed input, TCP,
//! failures), the production log output holds no queried name and no client
//! address. A second, unfiltered capture of the same events proves that the
//! traffic did produce log events that would have leaked without the pin.

mod common;

use common::*;
use hickory_proto::rr::RecordType;
use std::io::Write;
use std::sync::{Arc, Mutex};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::Layer;

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Capture {
    type Writer = Capture;
    fn make_writer(&'a self) -> Capture {
        self.clone()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn production_log_has_no_names_and_no_addresses() {
    let prod = Capture::default();
    let raw = Capture::default();
    let subscriber = tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(prod.clone())
                .with_ansi(false)
                // The most verbose operator setting: everything at TRACE.
                .with_filter(palisade_dns::logging::production_filter(
                    tracing_subscriber::EnvFilter::new("trace"),
                )),
        )
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(raw.clone())
                .with_ansi(false)
                .with_filter(tracing_subscriber::filter::LevelFilter::TRACE),
        );
    tracing::subscriber::set_global_default(subscriber).unwrap();
    tracing::info!(target: "palisade_dns::probe", "capture works");

    let b = bed().await;
    let names = [
        "secretsite.test.",
        "x.ads.test.",
        "cloak.test.",
        "poison.test.",
        "nonexistent-zz.test.",
        "big.test.",
    ];
    for n in names {
        for from in [BASIC, FAMILY] {
            ask(b.addr, from, n, RecordType::A).await;
        }
    }
    ask_tcp(b.addr, "secretsite.test.", RecordType::TXT).await;
    ask(b.addr, BASIC, "big.test.", RecordType::TXT).await;
    let mut bad = query("secretsite.test.", RecordType::A, true);
    let n = bad.len();
    bad[n - 1] = 9;
    raw_send(&b, &bad).await;
    let mut cfg = b.cfg.clone();
    cfg.dns.upstreams.clear();
    b.engine.reload(&cfg).unwrap();
    ask(b.addr, BASIC, "secretsite2.test.", RecordType::A).await;

    let prod = String::from_utf8_lossy(&prod.0.lock().unwrap()).to_string();
    let raw = String::from_utf8_lossy(&raw.0.lock().unwrap()).to_string();
    assert!(
        prod.contains("capture works"),
        "the production capture records events"
    );
    for needle in [
        "secretsite",
        "ads.test",
        "cloak",
        "poison",
        "nonexistent-zz",
        "big.test",
        "127.0.0.2",
        "127.0.0.3",
    ] {
        assert!(
            !prod.contains(needle),
            "production log leaks {needle:?}:\n{prod}"
        );
    }
    // Without the pin hickory's trace/debug events appear (they are what the
    // pin removes); report whether they carried names, for the record.
    let hickory_events = raw.lines().filter(|l| l.contains("hickory")).count();
    let leaky = raw
        .lines()
        .filter(|l| l.contains("secretsite") || l.contains("127.0.0."))
        .count();
    eprintln!(
        "unpinned capture: {} lines, {hickory_events} from hickory, {leaky} with a name or address",
        raw.lines().count()
    );
    assert!(
        hickory_events > 0,
        "traffic produced hickory events that the pin filtered"
    );
    assert!(!prod
        .lines()
        .any(|l| l.contains("hickory") && !l.contains("WARN") && !l.contains("ERROR")));
}

async fn raw_send(b: &Bed, msg: &[u8]) {
    let _ = raw(b.addr, BASIC, msg, std::time::Duration::from_millis(300)).await;
}
