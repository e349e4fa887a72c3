//! palisaded: the Palisade supervisor. PID 1 on the node (see `init`), an
//! ordinary daemon in namespace tests. It owns the reconcile engine, the
//! control socket, the reconcile timer and signal handling.

mod bench_reconcile;
mod board;
mod dns;
mod dns_supervisor;
mod fleet;
mod init;
mod metrics;
mod supervisor;
mod update;
mod uplink;

use anyhow::Context;
use clap::Parser;
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(name = "palisaded", version, about = "Palisade supervisor")]
pub struct Args {
    /// Node config (default: <state-dir>/node.toml).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Persistent state: node key, peers file.
    #[arg(long, default_value = "/var/lib/palisade")]
    pub state_dir: PathBuf,
    /// Runtime directory (tmpfs): the control socket.
    #[arg(long, default_value = "/run/palisade")]
    pub run_dir: PathBuf,
    /// Seconds between reconcile passes (drift repair).
    #[arg(long, default_value_t = 2)]
    pub reconcile_secs: u64,
    /// Updates: slot A and B devices, comma-separated (default: the GPT
    /// partitions `palisade-a`, `palisade-b`). Namespace tests give files.
    #[arg(long, value_delimiter = ',', num_args = 1)]
    pub update_slots: Option<Vec<PathBuf>>,
    /// Updates: the ESP as a directory (default: the `esp` partition, mounted when needed).
    #[arg(long)]
    pub esp_dir: Option<PathBuf>,
    /// Updates: the slot this system booted from (default: `palisade.slot=` on the kernel command line).
    #[arg(long)]
    pub booted_slot: Option<String>,
    /// Updates: the running root's os-release (its VERSION_ID is the installed version).
    #[arg(long, default_value = "/etc/os-release")]
    pub os_release: PathBuf,
    /// Updates: the running root's board file (its name selects the images).
    #[arg(long, default_value = "/usr/share/palisade/board.toml")]
    pub board_file: PathBuf,
    /// Board: the board definition whose `[devices]` (watchdog, status LED,
    /// reset button) palisaded drives; missing or without devices: none.
    /// Tests point it at a board file whose watchdog is a FIFO.
    #[arg(long, default_value = "/usr/share/palisade/board.toml")]
    pub board: PathBuf,
    /// Fleet: seconds between polls of the repository for this node's
    /// config, grants, revocations and lists (each interval is shortened by
    /// up to 20 % jitter, never lengthened).
    #[arg(long, default_value_t = 60)]
    pub fleet_poll_secs: u64,
    /// Fleet: serve the enrolment line protocol on this serial device (the
    /// node: the kernel's serial `console=`).
    #[arg(long)]
    pub enrol_console: Option<PathBuf>,
}

/// Log filter from `spec` (EnvFilter syntax: PALISADE_LOG, default info).
/// hickory logs every request with the client address and name at INFO/DEBUG,
/// so its targets are pinned to WARN whatever the spec says.
pub fn log_filter(spec: &str) -> tracing_subscriber::EnvFilter {
    let mut f = tracing_subscriber::EnvFilter::try_new(spec)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // netlink-packet-route warns on every dump of a newer kernel's stats
    // attributes; that noise would flood the console.
    for t in [
        "hickory_proto=warn",
        "wireguard_control=warn",
        "netlink_packet_route=error",
        "netlink_packet_core=error",
    ] {
        f = f.add_directive(t.parse().expect("static directive"));
    }
    f
}

/// The one log layer palisaded installs: plain text to `writer`, filtered by
/// [`log_filter`] and by palisade-dns's per-layer hickory pin. The EnvFilter
/// directives alone can be overridden by a more specific directive in `spec`
/// (`hickory_proto::udp=trace`); the per-layer pin cannot.
pub fn log_layer<S, W>(spec: &str, writer: W) -> impl tracing_subscriber::Layer<S>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    use tracing_subscriber::Layer;
    tracing_subscriber::fmt::layer()
        .with_writer(writer)
        .with_target(false)
        .with_filter(palisade_dns::logging::production_filter(log_filter(spec)))
}

fn main() -> anyhow::Result<()> {
    if init::is_pid1() {
        // PID 1: bring the node up, then stay a small reaper that runs the
        // supervisor as its child (never returns; see init/mod.rs). Boot errors
        // are reported on the console and the supervisor still starts.
        if let Err(e) = init::boot() {
            eprintln!("palisade-init: boot: {e:#}");
        }
        init::spawn_reaper();
    }
    // PID 1 blocks the signals it takes with sigwait, and a child inherits
    // the mask across fork and exec: unblock them before any thread starts,
    // or PID 1's SIGTERM (an orderly stop) and SIGHUP (reload) would stay
    // pending in the supervisor forever.
    let _ = nix::sys::signal::SigSet::all().thread_unblock();
    let args = Args::parse();
    {
        use tracing_subscriber::layer::SubscriberExt;
        use tracing_subscriber::util::SubscriberInitExt;
        let spec = std::env::var("PALISADE_LOG").unwrap_or_else(|_| "info".into());
        tracing_subscriber::registry()
            .with(log_layer(&spec, console_writer(std::io::stderr())))
            .init();
    }
    // The reconcile benchmark hook (bench/reconcile/run.sh), on its own
    // thread beside the supervisor.
    if let Some((sizes, rounds)) = bench_reconcile::from_cmdline(&std::fs::read_to_string("/proc/cmdline").unwrap_or_default()) {
        let run_dir = args.run_dir.clone();
        std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_secs(5));
            if let Err(e) = bench_reconcile::run(&sizes, rounds, &run_dir) {
                tracing::error!("bench: reconcile: {e:#}");
            }
        });
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let r = rt.block_on(supervisor::run(args));
    flush_logs();
    r
}

/// The writer thread's guard: dropping it writes out what is queued.
static LOG_GUARD: std::sync::Mutex<Option<tracing_appender::non_blocking::WorkerGuard>> = std::sync::Mutex::new(None);

/// Lines queued for the console before the newest are dropped: a console
/// that stops taking output (a serial line held by XOFF, a pty nobody
/// reads) costs log lines, never a stalled subsystem.
const LOG_QUEUE_LINES: usize = 1024;

/// The console (stderr) behind a queue and a writer thread of its own, so
/// that logging never blocks the thread that logs.
fn console_writer<W: std::io::Write + Send + 'static>(out: W) -> tracing_appender::non_blocking::NonBlocking {
    let (w, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(LOG_QUEUE_LINES)
        .thread_name("console-log")
        .finish(out);
    *LOG_GUARD.lock().unwrap_or_else(|e| e.into_inner()) = Some(guard);
    w
}

/// Writes out the queued log lines (waiting at most about a second for a
/// stalled console); before the process exits.
pub fn flush_logs() {
    drop(LOG_GUARD.lock().unwrap_or_else(|e| e.into_inner()).take());
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// A console that takes nothing (held by XOFF, say): logging through
    /// [`console_writer`] still returns at once, dropping what does not fit.
    #[test]
    fn a_stalled_console_drops_lines_and_never_blocks_the_logger() {
        use std::io::Write;
        use tracing_subscriber::layer::SubscriberExt;
        /// Blocks every write until opened.
        struct Stalled(Arc<(Mutex<bool>, std::sync::Condvar)>);
        impl Write for Stalled {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                let (open, cv) = &*self.0;
                let _open = cv.wait_while(open.lock().unwrap(), |o| !*o).unwrap();
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let gate = Arc::new((Mutex::new(false), std::sync::Condvar::new()));
        let w = console_writer(Stalled(gate.clone()));
        // The logger runs on a thread of its own so that a blocking writer
        // fails this test instead of hanging it.
        let (done_tx, done) = std::sync::mpsc::channel();
        let logger = w.clone();
        std::thread::spawn(move || {
            tracing::subscriber::with_default(tracing_subscriber::registry().with(log_layer("info", logger)), || {
                for i in 0..(4 * LOG_QUEUE_LINES) {
                    tracing::info!("line {i}");
                }
            });
            let _ = done_tx.send(());
        });
        assert!(done.recv_timeout(std::time::Duration::from_secs(10)).is_ok(), "logging blocked on the stalled console");
        let dropped = w.error_counter().dropped_lines();
        assert!(dropped >= 2 * LOG_QUEUE_LINES, "dropped {dropped} of {}", 4 * LOG_QUEUE_LINES);
        *gate.0.lock().unwrap() = true;
        gate.1.notify_all();
        flush_logs();
    }
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::Layer;

    /// Everything the layer writes, in memory.
    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Capture {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'w> tracing_subscriber::fmt::MakeWriter<'w> for Capture {
        type Writer = Capture;
        fn make_writer(&'w self) -> Capture {
            self.clone()
        }
    }

    /// Emit hickory events at every level below WARN (with what hickory really
    /// puts in them: a client address and a queried name), hickory WARN and
    /// palisade events, through the layer main() installs; return the output.
    fn emit_through_palisadeds_layer(spec: &str) -> String {
        let out = Capture::default();
        let subscriber = tracing_subscriber::registry().with(log_layer(spec, out.clone()));
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(target: "hickory_server::server::server_future", "request from 203.0.113.77:5353 canary-info.example.test");
            tracing::debug!(target: "hickory_proto::udp::udp_stream", "received from 203.0.113.77 canary-debug.example.test");
            tracing::trace!(target: "hickory_proto::xfer", "canary-trace.example.test");
            tracing::info!(target: "hickory_resolver::lookup", "canary-resolver.example.test");
            tracing::info!(target: "hickory_net::tcp", "canary-net.example.test");
            tracing::warn!(target: "hickory_server::server", "hickory-warn-gets-through");
            tracing::warn!(target: "palisaded::supervisor", "palisade-warn-gets-through");
            tracing::info!(target: "palisaded::supervisor", "palisade-info-line");
            tracing::trace!(target: "palisade_core::reconcile", "palisade-trace-line");
        });
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        text
    }

    #[test]
    fn hickory_below_warn_writes_nothing_even_when_asked_for_trace() {
        for spec in [
            "trace",
            "hickory_proto::udp=trace,hickory_server=trace,trace",
            "info,hickory_server::server::server_future=debug",
        ] {
            let text = emit_through_palisadeds_layer(spec);
            println!("PALISADE_LOG={spec}:\n{text}");
            for leak in ["canary-", "203.0.113.77"] {
                assert!(!text.contains(leak), "{spec}: hickory below WARN was written:\n{text}");
            }
            // Positive controls: the layer writes, and writes what the spec asks for.
            assert!(text.contains("palisade-warn-gets-through"), "{spec}:\n{text}");
            assert!(text.contains("palisade-info-line"), "{spec}:\n{text}");
            assert!(text.contains("hickory-warn-gets-through"), "{spec}:\n{text}");
        }
        assert!(emit_through_palisadeds_layer("trace").contains("palisade-trace-line"));
        // Control: the same events through a layer filtered by the spec alone
        // are written (hickory's names and addresses included).
        let out = Capture::default();
        let plain = tracing_subscriber::fmt::layer()
            .with_writer(out.clone())
            .with_filter(tracing_subscriber::EnvFilter::new("trace"));
        tracing::subscriber::with_default(tracing_subscriber::registry().with(plain), || {
            tracing::info!(target: "hickory_server::server::server_future", "request from 203.0.113.77:5353 canary-info.example.test");
        });
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        assert!(text.contains("canary-info.example.test") && text.contains("203.0.113.77"), "{text}");
        assert!(!emit_through_palisadeds_layer("info").contains("palisade-trace-line"));
    }
}
