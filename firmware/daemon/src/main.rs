//! palisaded: the Palisade supervisor. PID 1 on the node (see `init`), an
//! ordinary daemon in namespace tests. It owns the reconcile engine, the
//! control socket, the reconcile timer and signal handling.

mod dns;
mod dns_supervisor;
mod init;
mod supervisor;

use anyhow::Context;
use tracing_subscriber::filter::FilterExt;
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
}

/// Log filter: PALISADE_LOG (EnvFilter syntax, default info). hickory logs
/// every request with the client address and name at INFO/DEBUG, so its
/// targets are pinned to WARN whatever PALISADE_LOG says.
pub fn log_filter() -> tracing_subscriber::EnvFilter {
    let base = std::env::var("PALISADE_LOG").unwrap_or_else(|_| "info".into());
    let mut f = tracing_subscriber::EnvFilter::try_new(&base).unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // netlink-packet-route warns on every dump of a newer kernel's stats
    // attributes; that noise would flood the console.
    for t in [
        "hickory_server=warn",
        "hickory_proto=warn",
        "hickory_resolver=warn",
        "hickory_net=warn",
        "wireguard_control=warn",
        "netlink_packet_route=error",
        "netlink_packet_core=error",
    ] {
        f = f.add_directive(t.parse().expect("static directive"));
    }
    f
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
    let args = Args::parse();
    {
        use tracing_subscriber::layer::SubscriberExt;
        use tracing_subscriber::util::SubscriberInitExt;
        use tracing_subscriber::Layer;
        // The EnvFilter directives alone can be overridden by a more specific
        // PALISADE_LOG directive (`hickory_proto::udp=trace`); the per-layer
        // pin from palisade-dns cannot.
        let layer = tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_target(false)
            .with_filter(log_filter().and(palisade_dns::logging::hickory_pin()));
        tracing_subscriber::registry().with(layer).init();
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(supervisor::run(args))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hickory_is_pinned_to_warn_even_when_asked_for_trace() {
        std::env::set_var("PALISADE_LOG", "trace");
        let f = log_filter().to_string();
        for t in ["hickory_server=warn", "hickory_proto=warn", "hickory_resolver=warn"] {
            assert!(f.contains(t), "{f}");
        }
    }
}
