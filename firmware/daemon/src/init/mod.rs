//! PID 1 duties: what palisaded does before the supervisor when it is
//! the first process of the node.
//!
//! Boot order ([`boot`]): mount /proc, /sys, /dev (devtmpfs), /run, /tmp, /var
//! (tmpfs); core dumps off; load the board's kernel modules (finit_module, order from
//! /etc/palisade/modules + modules.dep); mount the `state` partition on
//! /var/lib/palisade; pick the node config (config drive > state > image seed); load
//! the drop-everything fallback nft table; bring up lo and the uplinks (static or DHCP); print a one-line banner on the console
//! (version, node name, slot; never client data).
//!
//! Process model ([`spawn_reaper`]): PID 1 stays a small reaper and runs the supervisor
//! as its child (`palisaded --state-dir .. --config .. --run-dir ..`). A reaper that
//! called waitpid(-1) inside the supervisor would steal the exit status of the
//! supervisor's own children (nft, wireguard-go); as a separate process it reaps
//! orphans only, restarts the supervisor if it dies, and shuts the node down cleanly.
//!
//! Signals to PID 1: SIGTERM and SIGUSR2 power off; SIGUSR1 and SIGINT
//! (ctrl-alt-del, e.g. QEMU `sendkey ctrl-alt-delete`) reboot.
//!
//! Files: `boot.rs` (bringing the node up), `reaper.rs` (PID 1's process
//! model: the supervisor as a child, reaping, restarts, shutdown),
//! `health.rs` (the health gate and the A/B bless policy), `power.rs`
//! (sync, unmount, reboot or power off), and the helpers they use
//! (`bless`, `cmdline`, `modules`, `mounts`, `net`, `seed`).
//!
//! Everything that does not touch the kernel is a pure function with unit tests.

pub mod bless;
mod boot;
mod cmdline;
mod health;
mod modules;
mod mounts;
mod net;
mod power;
mod reaper;
mod seed;
mod watchdogs;

pub use bless::bless_boot_entry;
pub use boot::{boot, STATE_DIR};
pub use cmdline::Cmdline;
pub use health::health_problems;
pub use mounts::{find_partition, mount_erofs_ro, mount_vfat, unmount};
pub use power::power_off;
pub use reaper::spawn_reaper;

/// True when PID 1 is palisaded (this binary): only then may the supervisor
/// ask it to reboot (a supervisor run by hand or in a test never signals the
/// host's init).
pub fn pid1_is_palisaded() -> bool {
    let me = std::fs::read_link("/proc/self/exe").ok();
    let init = std::fs::read_link("/proc/1/exe").ok();
    me.is_some() && me == init
}

/// True when this process is PID 1.
pub fn is_pid1() -> bool {
    std::process::id() == 1
}

fn console(msg: &str) {
    // PID 1's stderr is /dev/console; the banner and boot errors go there.
    eprintln!("palisade-init: {msg}");
}
