//! Blessing the booted boot entry: after a healthy boot the supervisor calls
//! [`bless_boot_entry`], which renames `loader/entries/palisade-a+2-1.conf` (a
//! boot-counted entry systemd-boot has been decrementing) to `palisade-a.conf` on the
//! ESP, so systemd-boot stops counting and never falls back from this slot.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

pub use palisade_board::entries::parse_counted;

/// What to do for `slot` given the entry files present (pure).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlessAction {
    /// Rename `from` to `to`.
    Rename { from: String, to: String },
    /// Already blessed (`palisade-a.conf` exists, no counted one).
    AlreadyBlessed,
}

pub fn plan(files: &[String], slot: &str) -> anyhow::Result<BlessAction> {
    if slot != "a" && slot != "b" {
        bail!("unknown slot `{slot}`");
    }
    let id = format!("palisade-{slot}");
    let counted: Vec<&String> = files
        .iter()
        .filter(|f| parse_counted(f).is_some_and(|c| c.id == id))
        .collect();
    match counted.as_slice() {
        [one] => Ok(BlessAction::Rename {
            from: (*one).clone(),
            to: format!("{id}.conf"),
        }),
        [] if files.iter().any(|f| *f == format!("{id}.conf")) => Ok(BlessAction::AlreadyBlessed),
        [] => bail!("no boot entry for slot {slot} on the ESP"),
        _ => bail!("several boot-counted entries for slot {slot}: {counted:?}"),
    }
}

/// Blesses the entry of the slot in `esp_root/loader/entries` (the ESP already mounted).
pub fn bless_in(esp_root: &Path, slot: &str) -> anyhow::Result<BlessAction> {
    let dir = esp_root.join("loader/entries");
    let mut files = Vec::new();
    for e in std::fs::read_dir(&dir).with_context(|| dir.display().to_string())? {
        files.push(e?.file_name().to_string_lossy().into_owned());
    }
    files.sort();
    let action = plan(&files, slot)?;
    if let BlessAction::Rename { from, to } = &action {
        std::fs::rename(dir.join(from), dir.join(to))
            .with_context(|| format!("rename {from} -> {to}"))?;
        std::fs::File::open(&dir)?.sync_all()?;
    }
    Ok(action)
}

/// The slot this boot came from (`palisade.slot=` on the kernel command line).
fn booted_slot() -> anyhow::Result<String> {
    let cmd = super::Cmdline::parse(&std::fs::read_to_string("/proc/cmdline")?);
    Ok(cmd.slot().context("no palisade.slot= on the kernel command line")?.to_string())
}

/// Mounts the ESP on /efi, blesses the booted slot (from `palisade.slot=` on the
/// kernel command line), syncs and unmounts. Safe to call on every healthy boot.
pub fn bless_boot_entry() -> anyhow::Result<BlessAction> {
    let slot = booted_slot()?;
    let mnt = PathBuf::from("/efi");
    super::mounts::mount_esp(&mnt)?;
    let r = bless_in(&mnt, &slot);
    nix::unistd::sync();
    let u = super::mounts::unmount(&mnt);
    let action = r?;
    u?;
    Ok(action)
}

/// Whether the booted slot still runs from a boot-counted (not yet blessed) entry.
pub fn booted_entry_is_counted() -> anyhow::Result<bool> {
    let slot = booted_slot()?;
    let mnt = PathBuf::from("/efi");
    super::mounts::mount_esp(&mnt)?;
    let dir = mnt.join("loader/entries");
    let files: Vec<String> = std::fs::read_dir(&dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    let _ = super::mounts::unmount(&mnt);
    Ok(matches!(
        plan(&files, &slot),
        Ok(BlessAction::Rename { .. })
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use palisade_board::entries::Counted;

    fn v(x: &[&str]) -> Vec<String> {
        x.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn parses_counters() {
        assert_eq!(
            parse_counted("palisade-a+3.conf"),
            Some(Counted {
                id: "palisade-a".into(),
                left: 3,
                done: 0
            })
        );
        assert_eq!(
            parse_counted("palisade-a+2-1.conf"),
            Some(Counted {
                id: "palisade-a".into(),
                left: 2,
                done: 1
            })
        );
        assert_eq!(parse_counted("palisade-a+0-3.conf").unwrap().left, 0);
        assert_eq!(parse_counted("palisade-a.conf"), None);
        assert_eq!(parse_counted("palisade-a+x.conf"), None);
        assert_eq!(parse_counted("+1.conf"), None);
    }

    #[test]
    fn plans_rename_for_booted_slot_only() {
        let files = v(&["palisade-a+2-1.conf", "palisade-b+3.conf"]);
        assert_eq!(
            plan(&files, "a").unwrap(),
            BlessAction::Rename {
                from: "palisade-a+2-1.conf".into(),
                to: "palisade-a.conf".into()
            }
        );
        assert_eq!(
            plan(&files, "b").unwrap(),
            BlessAction::Rename {
                from: "palisade-b+3.conf".into(),
                to: "palisade-b.conf".into()
            }
        );
        assert_eq!(
            plan(&v(&["palisade-a.conf", "palisade-b+3.conf"]), "a").unwrap(),
            BlessAction::AlreadyBlessed
        );
        assert!(plan(&v(&["palisade-b+3.conf"]), "a").is_err());
        assert!(plan(&files, "c").is_err());
        assert!(plan(&v(&["palisade-a+1-2.conf", "palisade-a+2-1.conf"]), "a").is_err());
    }

    #[test]
    fn bless_in_renames_on_disk() {
        let d = tempfile::tempdir().unwrap();
        let e = d.path().join("loader/entries");
        std::fs::create_dir_all(&e).unwrap();
        std::fs::write(e.join("palisade-a+2-1.conf"), "title x\n").unwrap();
        std::fs::write(e.join("palisade-b+3.conf"), "title y\n").unwrap();
        bless_in(d.path(), "a").unwrap();
        assert!(e.join("palisade-a.conf").is_file());
        assert!(!e.join("palisade-a+2-1.conf").exists());
        assert!(e.join("palisade-b+3.conf").is_file());
        assert_eq!(
            bless_in(d.path(), "a").unwrap(),
            BlessAction::AlreadyBlessed
        );
    }
}
