//! Which node config the node runs with, decided once per boot:
//! 1. a config drive (a separate disk or CD with `palisade/node.toml` or `node.toml`
//!    on a vfat, iso9660 or ext4 filesystem): an operator inserted it deliberately, so
//!    it wins and is copied to the state partition;
//! 2. else the config already on the state partition;
//! 3. else (first boot) the seed baked into the image, copied to the state partition.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};

/// Where the config came from (for the banner).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Drive(String),
    State,
    Seed,
    Missing,
}

impl Source {
    pub fn describe(&self) -> String {
        match self {
            Source::Drive(d) => format!("config drive {d}"),
            Source::State => "state".into(),
            Source::Seed => "image seed (first boot)".into(),
            Source::Missing => "nowhere (no config)".into(),
        }
    }
}

/// The decision, from what exists (pure).
pub fn choose(drive: Option<(&str, &Path)>, state_has_config: bool, seed_exists: bool) -> Source {
    match drive {
        Some((d, _)) => Source::Drive(d.to_string()),
        None if state_has_config => Source::State,
        None if seed_exists => Source::Seed,
        None => Source::Missing,
    }
}

/// Candidate config-drive devices: whole disks and their partitions, excluding the
/// disk that holds our own partitions (esp, palisade-a/b, state).
pub fn drive_candidates(sys_block: &Path) -> Vec<String> {
    let mut ours = std::collections::BTreeSet::new();
    let mut all = Vec::new();
    let Ok(rd) = std::fs::read_dir(sys_block) else {
        return all;
    };
    let mut entries: Vec<PathBuf> = rd.filter_map(|e| e.ok()).map(|e| e.path()).collect();
    entries.sort();
    for e in &entries {
        let name = e
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        let uevent = std::fs::read_to_string(e.join("uevent")).unwrap_or_default();
        let is_ours = ["esp", "palisade-a", "palisade-b", "state"]
            .iter()
            .any(|p| uevent.lines().any(|l| l == format!("PARTNAME={p}")));
        if is_ours {
            // The parent disk is the partition's sysfs parent directory.
            if let Some(parent) = std::fs::canonicalize(e)
                .ok()
                .and_then(|p| p.parent().map(|p| p.to_path_buf()))
            {
                ours.insert(
                    parent
                        .file_name()
                        .unwrap_or_default()
                        .to_string_lossy()
                        .into_owned(),
                );
            }
            ours.insert(name.clone());
        }
        if ["vd", "sd", "sr", "xvd", "nvme", "mmcblk"]
            .iter()
            .any(|p| name.starts_with(p))
        {
            all.push(name);
        }
    }
    all.into_iter()
        .filter(|n| {
            !ours.contains(n)
                && !ours
                    .iter()
                    .any(|o| n.starts_with(o.as_str()) && !o.is_empty() && is_partition_of(n, o))
        })
        .collect()
}

fn is_partition_of(name: &str, disk: &str) -> bool {
    name.len() > disk.len()
        && name.starts_with(disk)
        && name[disk.len()..]
            .trim_start_matches('p')
            .chars()
            .all(|c| c.is_ascii_digit())
}

/// The fleet's TUF root metadata, as the config drive and the state partition name it.
pub const FLEET_ROOT: &str = crate::update::STATE_FLEET_ROOT;

const DRIVE_MNT: &str = "/run/palisade-config-drive";

/// Looks for a config drive; returns the device name after copying its config to `dest`.
fn from_drive(dest: &Path) -> Option<String> {
    let mnt = Path::new(DRIVE_MNT);
    std::fs::create_dir_all(mnt).ok()?;
    let flags = MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    for dev in drive_candidates(Path::new("/sys/class/block")) {
        let devp = Path::new("/dev").join(&dev);
        for fs in ["vfat", "iso9660", "ext4"] {
            if mount(Some(devp.as_path()), mnt, Some(fs), flags, None::<&str>).is_err() {
                continue;
            }
            let found = [mnt.join("palisade/node.toml"), mnt.join("node.toml")]
                .into_iter()
                .find(|p| p.is_file());
            let ok = found.is_some_and(|f| install(&f, dest).is_ok());
            // The fleet's trusted TUF root for updates (docs/updates.md) may come
            // along; the update client starts trusting it from the next poll.
            let root = mnt.join("palisade").join(FLEET_ROOT);
            if ok && root.is_file() {
                if let Some(state) = dest.parent() {
                    if let Err(e) = install(&root, &state.join(FLEET_ROOT)) {
                        super::console(&format!("config drive: cannot install {FLEET_ROOT}: {e}"));
                    }
                }
            }
            // An enrolment bundle (docs/fleet.md): palisaded accepts it
            // while the node is not enrolled, then deletes it.
            let bundle = mnt.join("palisade").join(crate::fleet::STATE_ENROL_BUNDLE);
            if bundle.is_file() {
                if let Some(state) = dest.parent() {
                    if let Err(e) = install(&bundle, &state.join(crate::fleet::STATE_ENROL_BUNDLE)) {
                        super::console(&format!("config drive: cannot install {}: {e}", crate::fleet::STATE_ENROL_BUNDLE));
                    }
                }
            }
            let _ = umount2(mnt, MntFlags::empty());
            if ok {
                return Some(dev);
            }
            break;
        }
    }
    None
}

fn install(src: &Path, dest: &Path) -> std::io::Result<()> {
    // Cap: a config is small; refuse to copy a huge file onto the state partition.
    if std::fs::metadata(src)?.len() > 4 << 20 {
        return Err(std::io::Error::other("config larger than 4 MiB"));
    }
    let mut tmp = dest.as_os_str().to_owned();
    tmp.push(".new");
    let tmp = PathBuf::from(tmp);
    std::fs::copy(src, &tmp)?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))?;
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, dest)?;
    if let Some(d) = dest.parent() {
        std::fs::File::open(d)?.sync_all()?;
    }
    Ok(())
}

/// Makes sure `config` exists, following the order above.
pub fn provide_config(config: &Path, seed: &Path) -> Source {
    let drive = from_drive(config);
    let src = choose(
        drive.as_deref().map(|d| (d, config)),
        config.is_file(),
        seed.is_file(),
    );
    if src == Source::Seed && install(seed, config).is_err() {
        return Source::Missing;
    }
    src
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn precedence() {
        let p = Path::new("/x");
        assert_eq!(
            choose(Some(("vdb", p)), true, true),
            Source::Drive("vdb".into())
        );
        assert_eq!(choose(None, true, true), Source::State);
        assert_eq!(choose(None, false, true), Source::Seed);
        assert_eq!(choose(None, false, false), Source::Missing);
    }

    #[test]
    fn candidates_exclude_our_disk() {
        let d = tempfile::tempdir().unwrap();
        // Real sysfs nests partitions under their disk; /sys/class/block has symlinks.
        let devs = d.path().join("devices");
        let class = d.path().join("class");
        std::fs::create_dir_all(&class).unwrap();
        for (disk, parts) in [
            ("vda", vec![("vda1", "esp"), ("vda4", "state")]),
            ("vdb", vec![]),
            ("sr0", vec![]),
        ] {
            std::fs::create_dir_all(devs.join(disk)).unwrap();
            std::fs::write(
                devs.join(disk).join("uevent"),
                format!("DEVNAME={disk}\nDEVTYPE=disk\n"),
            )
            .unwrap();
            std::os::unix::fs::symlink(devs.join(disk), class.join(disk)).unwrap();
            for (p, label) in parts {
                std::fs::create_dir_all(devs.join(disk).join(p)).unwrap();
                std::fs::write(
                    devs.join(disk).join(p).join("uevent"),
                    format!("DEVNAME={p}\nDEVTYPE=partition\nPARTNAME={label}\n"),
                )
                .unwrap();
                std::os::unix::fs::symlink(devs.join(disk).join(p), class.join(p)).unwrap();
            }
        }
        assert_eq!(drive_candidates(&class), ["sr0", "vdb"]);
        assert!(is_partition_of("nvme0n1p2", "nvme0n1"));
        assert!(!is_partition_of("vdb", "vda"));
    }
}
