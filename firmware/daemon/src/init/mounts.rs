//! Mounts: the early API filesystems, the state partition, and finding partitions by
//! their GPT name (PARTNAME in /sys/class/block/*/uevent; no udev on the node).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use nix::mount::{mount, umount2, MntFlags, MsFlags};

fn is_mounted(target: &str) -> bool {
    std::fs::read_to_string("/proc/self/mounts")
        .map(|m| {
            m.lines()
                .any(|l| l.split_whitespace().nth(1) == Some(target))
        })
        .unwrap_or(false)
}

fn mount_fs(
    src: &str,
    target: &str,
    fstype: &str,
    flags: MsFlags,
    data: Option<&str>,
) -> anyhow::Result<()> {
    if target != "/proc" && is_mounted(target) {
        return Ok(());
    }
    std::fs::create_dir_all(target).ok();
    match mount(Some(src), target, Some(fstype), flags, data) {
        Ok(()) => Ok(()),
        Err(nix::errno::Errno::EBUSY) => Ok(()),
        Err(e) => Err(e).with_context(|| format!("mount {fstype} on {target}")),
    }
}

/// /proc, /sys, /dev, /dev/pts, /run, /tmp, /var.
pub fn early() -> anyhow::Result<()> {
    let nse = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    mount_fs("proc", "/proc", "proc", nse, None)?;
    mount_fs("sysfs", "/sys", "sysfs", nse, None)?;
    mount_fs(
        "devtmpfs",
        "/dev",
        "devtmpfs",
        MsFlags::MS_NOSUID,
        Some("mode=0755"),
    )?;
    mount_fs(
        "devpts",
        "/dev/pts",
        "devpts",
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("gid=5,mode=620,ptmxmode=000"),
    )?;
    mount_fs(
        "tmpfs",
        "/run",
        "tmpfs",
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=0755,size=32m"),
    )?;
    mount_fs("tmpfs", "/tmp", "tmpfs", nse, Some("mode=1777,size=32m"))?;
    mount_fs(
        "tmpfs",
        "/var",
        "tmpfs",
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=0755,size=64m"),
    )?;
    for d in ["/var/lib", "/var/run", "/var/tmp", "/run/lock"] {
        std::fs::create_dir_all(d).ok();
    }
    Ok(())
}

/// Finds `/dev/<name>` of the partition whose GPT name is `partname`.
pub fn find_partition(partname: &str) -> Option<PathBuf> {
    find_partition_in(Path::new("/sys/class/block"), partname).map(|n| Path::new("/dev").join(n))
}

/// The kernel device name of the partition named `partname` under a sysfs block dir.
pub fn find_partition_in(sys_block: &Path, partname: &str) -> Option<String> {
    let mut entries: Vec<_> = std::fs::read_dir(sys_block)
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .collect();
    entries.sort();
    for e in entries {
        let Ok(uevent) = std::fs::read_to_string(e.join("uevent")) else {
            continue;
        };
        if uevent.lines().any(|l| l == format!("PARTNAME={partname}")) {
            if let Some(dev) = uevent.lines().find_map(|l| l.strip_prefix("DEVNAME=")) {
                return Some(dev.to_string());
            }
        }
    }
    None
}

/// Waits (briefly) for the partition to appear, then mounts it.
fn mount_partition(
    partname: &str,
    target: &Path,
    fstype: &str,
    flags: MsFlags,
    data: Option<&str>,
) -> anyhow::Result<()> {
    let mut dev = None;
    for _ in 0..100 {
        dev = find_partition(partname);
        if dev.as_ref().is_some_and(|d| d.exists()) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let Some(dev) = dev else {
        bail!("no partition named `{partname}`")
    };
    std::fs::create_dir_all(target)?;
    mount(Some(dev.as_path()), target, Some(fstype), flags, data)
        .with_context(|| format!("mount {} ({fstype}) on {}", dev.display(), target.display()))?;
    Ok(())
}

/// The `state` partition (ext4) on the state directory.
pub fn mount_state(target: &Path) -> anyhow::Result<()> {
    let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC | MsFlags::MS_NOATIME;
    mount_partition(
        "state",
        target,
        "ext4",
        flags,
        Some("data=journal,errors=remount-ro"),
    )
    .or_else(|_| mount_partition("state", target, "ext4", flags, None))
}

/// The ESP (vfat) read-write, for blessing boot entries.
pub fn mount_esp(target: &Path) -> anyhow::Result<()> {
    let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC | MsFlags::MS_NOATIME;
    mount_partition(
        "esp",
        target,
        "vfat",
        flags,
        Some("umask=0077,shortname=mixed"),
    )
}

/// The ESP at `target` by device path (the update subsystem, which mounts it
/// at its own place so PID 1's bless on /efi never meets it).
pub fn mount_vfat(dev: &Path, target: &Path) -> anyhow::Result<()> {
    let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC | MsFlags::MS_NOATIME;
    mount(Some(dev), target, Some("vfat"), flags, Some("umask=0077,shortname=mixed"))
        .with_context(|| format!("mount {} (vfat) on {}", dev.display(), target.display()))
}

/// A freshly written slot, read-only. A block device is mounted directly; a
/// regular file (a slot stand-in in namespace tests on a host) through a loop
/// device with `mount -o loop`, which the node never needs.
pub fn mount_erofs_ro(dev: &Path, target: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::FileTypeExt;
    let flags = MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    if std::fs::metadata(dev)?.file_type().is_block_device() {
        return mount(Some(dev), target, Some("erofs"), flags, None::<&str>)
            .with_context(|| format!("mount {} (erofs) on {}", dev.display(), target.display()));
    }
    let st = std::process::Command::new("mount")
        .args(["-t", "erofs", "-o", "loop,ro,nodev,nosuid,noexec"])
        .arg(dev)
        .arg(target)
        .status()
        .context("running mount")?;
    if !st.success() {
        bail!("mount -o loop {} on {}: {st}", dev.display(), target.display());
    }
    Ok(())
}

pub fn unmount(target: &Path) -> anyhow::Result<()> {
    umount2(target, MntFlags::empty()).with_context(|| format!("unmount {}", target.display()))
}

/// Unmounts what holds data before power off: the ESP and the state partition
/// (falling back to a read-only remount when something still holds it).
pub fn unmount_all() {
    for t in ["/efi", super::STATE_DIR] {
        if is_mounted(t) && umount2(t, MntFlags::empty()).is_err() {
            let _ = mount(
                None::<&str>,
                t,
                None::<&str>,
                MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
                None::<&str>,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_partition_by_gpt_name() {
        let d = tempfile::tempdir().unwrap();
        for (dev, extra) in [
            ("vda", "DEVTYPE=disk"),
            ("vda1", "DEVTYPE=partition\nPARTN=1\nPARTNAME=esp"),
            ("vda4", "DEVTYPE=partition\nPARTN=4\nPARTNAME=state"),
        ] {
            std::fs::create_dir(d.path().join(dev)).unwrap();
            std::fs::write(
                d.path().join(dev).join("uevent"),
                format!("MAJOR=254\nMINOR=0\nDEVNAME={dev}\n{extra}\n"),
            )
            .unwrap();
        }
        assert_eq!(
            find_partition_in(d.path(), "state").as_deref(),
            Some("vda4")
        );
        assert_eq!(find_partition_in(d.path(), "esp").as_deref(), Some("vda1"));
        assert_eq!(find_partition_in(d.path(), "stat"), None);
    }
}
