//! The boot summary of the watchdog devices the kernel registered, one console
//! line (`palisade-init: watchdogs: watchdog0 "i6300ESB timer" (/dev/watchdog)`),
//! so an operator (and the appliance test) sees which driver backs
//! `/dev/watchdog` without opening it: opening a watchdog arms it, and that is
//! the board runtime's job alone.

use std::path::Path;

/// The summary for a `/sys/class/watchdog`-like directory; `dev_watchdog`
/// tells whether `/dev/watchdog` (the legacy node of watchdog0) exists.
pub fn summary(class_dir: &Path, dev_watchdog: bool) -> String {
    let mut names: Vec<String> = std::fs::read_dir(class_dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("watchdog"))
        .collect();
    // watchdog2 before watchdog10.
    names.sort_by_key(|n| (n.len(), n.clone()));
    if names.is_empty() {
        return "watchdogs: none".into();
    }
    let items: Vec<String> = names
        .iter()
        .map(|n| {
            let identity = std::fs::read_to_string(class_dir.join(n).join("identity"))
                .map(|s| s.trim().chars().take(64).collect::<String>())
                .unwrap_or_default();
            let mut s = n.clone();
            if !identity.is_empty() {
                s.push_str(&format!(" {identity:?}"));
            }
            if n == "watchdog0" && dev_watchdog {
                s.push_str(" (/dev/watchdog)");
            }
            s
        })
        .collect();
    format!("watchdogs: {}", items.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_each_device_and_which_is_dev_watchdog() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(summary(d.path(), false), "watchdogs: none");
        assert_eq!(summary(&d.path().join("absent"), false), "watchdogs: none");
        for (n, id) in [
            ("watchdog10", None),
            ("watchdog1", Some("iTCO_wdt\n")),
            ("watchdog0", Some("i6300ESB timer\n")),
        ] {
            std::fs::create_dir(d.path().join(n)).unwrap();
            if let Some(id) = id {
                std::fs::write(d.path().join(n).join("identity"), id).unwrap();
            }
        }
        std::fs::create_dir(d.path().join("other")).unwrap();
        assert_eq!(
            summary(d.path(), true),
            "watchdogs: watchdog0 \"i6300ESB timer\" (/dev/watchdog), watchdog1 \"iTCO_wdt\", watchdog10"
        );
        assert!(!summary(d.path(), false).contains("/dev/watchdog"));
    }
}
