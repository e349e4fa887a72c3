//! Bringing the node up as PID 1 (see the module doc of `init`).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Instant;

use anyhow::Context;

use super::{console, mounts, modules, net, seed, watchdogs, Cmdline};

/// Where the supervisor finds its state, config and runtime directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootEnv {
    pub state_dir: PathBuf,
    pub config: PathBuf,
    pub run_dir: PathBuf,
}

/// Fixed paths on the node.
pub const STATE_DIR: &str = "/var/lib/palisade";
pub const RUN_DIR: &str = "/run/palisade";
pub const SEED_CONFIG: &str = "/etc/palisade/seed/node.toml";
pub const MODULE_LIST: &str = "/etc/palisade/modules";

static BOOT_ENV: OnceLock<BootEnv> = OnceLock::new();

/// Brings the system up. Non-fatal problems (a module that fails, a state partition
/// that does not mount) are reported on the console and booting continues in a
/// degraded but isolated state: the supervisor's firewall still loads.
pub fn boot() -> anyhow::Result<BootEnv> {
    let t0 = Instant::now();
    // The kernel starts init without PATH; children (nft, ip) are found through it.
    std::env::set_var("PATH", "/usr/sbin:/usr/bin");
    mounts::early().context("mounting /proc, /sys, /dev, /run, /tmp, /var")?;
    core_dumps_off();
    let cmd = Cmdline::parse(&std::fs::read_to_string("/proc/cmdline").unwrap_or_default());

    match modules::load_listed(Path::new(MODULE_LIST)) {
        Ok(n) => tracing_free_note(&format!("{n} kernel modules loaded")),
        Err(e) => console(&format!("module loading: {e:#}")),
    }
    console(&watchdogs::summary(
        Path::new("/sys/class/watchdog"),
        Path::new("/dev/watchdog").exists(),
    ));

    let state_dir = PathBuf::from(STATE_DIR);
    std::fs::create_dir_all(&state_dir)?;
    let state_persistent = match mounts::mount_state(&state_dir) {
        Ok(()) => true,
        Err(e) => {
            console(&format!(
                "state partition not mounted ({e:#}); state is NOT persistent this boot"
            ));
            false
        }
    };
    let run_dir = PathBuf::from(RUN_DIR);
    std::fs::create_dir_all(&run_dir)?;

    let config = state_dir.join("node.toml");
    let source = seed::provide_config(&config, Path::new(SEED_CONFIG));
    let parsed = palisade_core::config::read(&config);
    let (node_name, uplinks) = match &parsed {
        Ok((c, _)) => (c.node.name.clone(), c.uplinks.clone()),
        Err(e) => {
            console(&format!("node config {}: {e}", config.display()));
            ("(unconfigured)".to_string(), Vec::new())
        }
    };
    if let Ok((c, _)) = &parsed {
        let _ = nix::unistd::sethostname(&c.node.name);
    }
    // No boot window: before any uplink is up, the drop-everything table is
    // in place (the supervisor replaces it atomically with the real one; if
    // it cannot, this one stays and forwarding stays off).
    use palisade_core::firewall::{fallback, Firewall, NftCli};
    if let Err(e) = NftCli::default().apply(&fallback()) {
        console(&format!("fallback firewall table: {e}"));
    }
    if let Err(e) = net::bring_up(&uplinks) {
        console(&format!("network: {e:#}"));
    }
    console(&format!(
        "Palisade {} | node {} | slot {} | config from {} | state {} | boot {} ms",
        // The image's version (an update changes it; the binary may be the same).
        std::fs::read_to_string("/etc/os-release")
            .ok()
            .and_then(|t| crate::update::os_release_version(&t))
            .map(|v| v.to_string())
            .unwrap_or_else(|| env!("CARGO_PKG_VERSION").to_string()),
        node_name,
        cmd.slot().unwrap_or("?"),
        source.describe(),
        if state_persistent {
            "persistent"
        } else {
            "volatile"
        },
        t0.elapsed().as_millis()
    ));
    let env = BootEnv {
        state_dir,
        config,
        run_dir,
    };
    let _ = BOOT_ENV.set(env.clone());
    Ok(env)
}

fn tracing_free_note(msg: &str) {
    if std::env::var_os("PALISADE_INIT_VERBOSE").is_some() {
        console(msg);
    }
}

/// RLIMIT_CORE = 0 for every process (inherited) and no core pattern: a crash must
/// never write process memory (which may hold client addresses) anywhere.
fn core_dumps_off() {
    let _ = nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_CORE, 0, 0);
    let _ = std::fs::write("/proc/sys/kernel/core_pattern", "|/bin/false");
    let _ = std::fs::write("/proc/sys/fs/suid_dumpable", "0");
    // ctrl-alt-del sends SIGINT to PID 1 (a clean reboot) instead of an immediate reset.
    let _ = std::fs::write("/proc/sys/kernel/ctrl-alt-del", "0");
    // The kernel's WireGuard debug output prints peer endpoints: keep it off.
    let _ = std::fs::write("/proc/sys/kernel/printk", "4 4 1 7");
}
/// The paths [`boot`] settled on (defaults when boot did not run).
pub(super) fn boot_env() -> BootEnv {
    BOOT_ENV.get().cloned().unwrap_or_else(|| BootEnv {
        state_dir: STATE_DIR.into(),
        config: PathBuf::from(STATE_DIR).join("node.toml"),
        run_dir: RUN_DIR.into(),
    })
}
