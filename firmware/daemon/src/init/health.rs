//! The health gate: the node is healthy when WireGuard is up, the firewall
//! verified and DNS answering its canary; then the booted A/B entry is
//! blessed. An untested entry that never gets healthy reboots so the boot
//! loader can fall back.

use std::path::Path;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::{bless, bless_boot_entry, console, Cmdline};


/// Health as the supervisor reports it over the control socket: WireGuard up, the
/// firewall table loaded and verified, and the DNS resolver answering its canary
/// query on the tunnel side (or disabled in the node config). (Pure: takes the
/// `status` response.)
pub fn healthy(status: &serde_json::Value) -> bool {
    health_problems(status).is_empty()
}

/// What keeps the node from being healthy, for the console (no client data: the
/// status holds none).
pub fn health_problems(status: &serde_json::Value) -> Vec<String> {
    let mut p = Vec::new();
    if status["wireguard"]["up"] != true {
        p.push("wireguard not up".to_string());
    }
    if status["firewall"]["loaded"] != true {
        p.push("firewall table not loaded".to_string());
    } else if status["firewall"]["verified"] != true {
        p.push("firewall table not verified".to_string());
    }
    let dns = &status["dns"];
    match dns["state"].as_str() {
        Some("disabled") => {}
        Some("running") if dns["answering"] == true => {}
        Some("running") => p.push(match dns["canary"]["error"].as_str() {
            Some(e) => format!("dns not answering its canary query ({e})"),
            None => "dns canary pending".to_string(),
        }),
        Some("failed") => p.push(format!(
            "dns failed: {} (restarting in {} s)",
            dns["reason"].as_str().unwrap_or("?"),
            dns["retry_in_s"]
        )),
        Some(other) => p.push(format!(
            "dns {other}: {}",
            dns["reason"].as_str().unwrap_or("?")
        )),
        None => p.push("dns state unknown".to_string()),
    }
    p
}

/// Polls the supervisor until the node is healthy, prints `ready` on the console, then
/// blesses the booted boot entry (A/B: the slot is good, stop counting tries).
/// Runs in PID 1 beside the reaper; it spawns no processes (the reaper would steal
/// their exit status).
pub(super) fn health_watch(sock: &Path) {
    let t0 = Instant::now();
    let cmd = Cmdline::parse(&std::fs::read_to_string("/proc/cmdline").unwrap_or_default());
    let limit = health_timeout(&cmd);
    let mut timed_out = false;
    loop {
        let st = palisade_core::control::call(
            sock,
            &palisade_core::control::Request::Status,
            Duration::from_secs(2),
        );
        if st.as_ref().is_ok_and(healthy) {
            break;
        }
        if !timed_out && t0.elapsed() > limit {
            timed_out = true;
            let problems = match &st {
                Ok(s) => health_problems(s),
                Err(e) => vec![format!("control socket: {e}")],
            };
            console(&format!("not healthy: {}", problems.join("; ")));
            // A/B safety net: on a boot-counted (untested) entry, an unhealthy node
            // reboots so systemd-boot spends a try and eventually boots the other slot.
            // On a blessed entry there is nothing to fall back to: stay up, keep polling.
            if bless::booted_entry_is_counted().unwrap_or(false) {
                console(&format!(
                    "not healthy {} s after start on an untested boot entry; rebooting so the boot loader can fall back",
                    limit.as_secs()
                ));
                let _ = kill(Pid::from_raw(1), Signal::SIGUSR1);
                return;
            }
            console(&format!(
                "not healthy {} s after start; still trying",
                limit.as_secs()
            ));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    console(&format!(
        "ready: wireguard up, firewall verified, dns answering ({} ms after start)",
        uptime_ms().unwrap_or(t0.elapsed().as_millis() as u64)
    ));
    match bless_boot_entry() {
        Ok(bless::BlessAction::Rename { from, to }) => {
            console(&format!("boot entry blessed: {from} -> {to}"))
        }
        Ok(bless::BlessAction::AlreadyBlessed) => console("boot entry already blessed"),
        Err(e) => console(&format!("cannot bless the boot entry: {e:#}")),
    }
}

/// How long a boot may take to become healthy: `palisade.health_timeout=SECS`
/// on the kernel command line, default 300 s.
fn health_timeout(cmd: &Cmdline) -> Duration {
    Duration::from_secs(
        cmd.get("palisade.health_timeout")
            .and_then(|v| v.parse().ok())
            .filter(|s| *s >= 10)
            .unwrap_or(300),
    )
}

fn uptime_ms() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/uptime").ok()?;
    let secs: f64 = s.split_whitespace().next()?.parse().ok()?;
    Some((secs * 1000.0) as u64)
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_needs_wg_and_verified_firewall() {
        let ok = serde_json::json!({"wireguard": {"up": true}, "firewall": {"loaded": true, "verified": true},
            "dns": {"state": "running", "answering": true}});
        assert!(healthy(&ok));
        for (k1, k2) in [
            ("wireguard", "up"),
            ("firewall", "loaded"),
            ("firewall", "verified"),
        ] {
            let mut bad = ok.clone();
            bad[k1][k2] = serde_json::Value::Bool(false);
            assert!(!healthy(&bad), "{k1}.{k2}");
        }
        assert!(!healthy(&serde_json::json!({"wireguard": null})));
    }

    #[test]
    fn health_needs_dns_answering_or_disabled() {
        let base = serde_json::json!({"wireguard": {"up": true}, "firewall": {"loaded": true, "verified": true}});
        let with = |dns: serde_json::Value| {
            let mut s = base.clone();
            s["dns"] = dns;
            s
        };
        assert!(healthy(&with(serde_json::json!({"state": "running", "answering": true}))));
        assert!(healthy(&with(serde_json::json!({"state": "disabled", "answering": false}))));
        // A status without DNS (an older supervisor) is not healthy.
        assert_eq!(health_problems(&base), ["dns state unknown"]);
        assert_eq!(
            health_problems(&with(serde_json::json!({"state": "running", "answering": false, "canary": null}))),
            ["dns canary pending"]
        );
        assert_eq!(
            health_problems(&with(serde_json::json!({"state": "running", "answering": false,
                "canary": {"ok": false, "error": "no answer on the tunnel IPv4 address within 1000 ms"}}))),
            ["dns not answering its canary query (no answer on the tunnel IPv4 address within 1000 ms)"]
        );
        let failed = with(serde_json::json!({"state": "failed", "reason": "dns: cannot load the [dns] policy: list",
            "retry_in_s": 4, "answering": false}));
        assert!(!healthy(&failed));
        assert_eq!(
            health_problems(&failed),
            ["dns failed: dns: cannot load the [dns] policy: list (restarting in 4 s)"]
        );
        assert_eq!(
            health_problems(&with(serde_json::json!({"state": "stopped", "reason": "no node config loaded"}))),
            ["dns stopped: no node config loaded"]
        );
    }

    #[test]
    fn health_timeout_from_cmdline() {
        assert_eq!(
            health_timeout(&Cmdline::parse("quiet")),
            Duration::from_secs(300)
        );
        assert_eq!(
            health_timeout(&Cmdline::parse("palisade.health_timeout=60")),
            Duration::from_secs(60)
        );
        assert_eq!(
            health_timeout(&Cmdline::parse("palisade.health_timeout=1")),
            Duration::from_secs(300)
        );
        assert_eq!(
            health_timeout(&Cmdline::parse("palisade.health_timeout=x")),
            Duration::from_secs(300)
        );
    }
}
