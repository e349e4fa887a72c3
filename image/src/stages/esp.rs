//! Stage `esp`: the EFI system partition. systemd-boot (as the removable-media
//! boot path and as itself), loader.conf, one boot-counted BLS entry per slot and
//! one content-addressed kernel directory (vmlinuz + initrd) both slots share,
//! written into a FAT image with mkfs.vfat (derived serial, --invariant) and mtools.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Result};
use sha2::{Digest, Sha256};

use super::Build;
use crate::util::{hex, run_tool, sorted_dir};
use crate::{layout, overlay};
use palisade_board::entries::{self, Slot};

pub fn run(b: &mut Build) -> Result<()> {
    let inp = &b.inp;
    let board = &inp.board;
    let esp_dir = inp.esp_dir();
    let sdboot = inp
        .pkg("systemd-boot-efi")
        .join("usr/lib/systemd/boot/efi/systemd-bootx64.efi");
    let vmlinuz = inp.vmlinuz();
    let initrd = inp.initrd();
    overlay::install_file(
        &esp_dir,
        &Path::new("EFI/BOOT").join(&board.efi_boot_name),
        &sdboot,
        0o644,
    )?;
    overlay::install_file(
        &esp_dir,
        Path::new("EFI/systemd/systemd-bootx64.efi"),
        &sdboot,
        0o644,
    )?;
    overlay::install_bytes(
        &esp_dir,
        Path::new("loader/loader.conf"),
        entries::loader_conf().as_bytes(),
        0o644,
    )?;
    // Room for a second kernel directory: during an update the old slot's and the
    // new slot's kernels are both on the ESP.
    let esp_size = b.part_size("esp")?;
    let pair = fs::metadata(&vmlinuz)?.len() + fs::metadata(&initrd)?.len();
    let need = 2 * pair + 2 * fs::metadata(&sdboot)?.len() + ESP_SLACK;
    if need > esp_size {
        bail!(
            "the ESP ({esp_size} bytes) cannot hold two kernel directories of {pair} bytes \
             plus systemd-boot (needs {need}): raise partitions.esp in the board file"
        );
    }
    // One content-addressed kernel directory, shared by both slots of a fresh image.
    let mut kh = Sha256::new();
    kh.update(fs::read(&vmlinuz)?);
    kh.update(fs::read(&initrd)?);
    let kdir = entries::kernel_dir(&board.kernel.release, &hex(&kh.finalize()));
    overlay::install_file(&esp_dir, &Path::new(&kdir).join("vmlinuz"), &vmlinuz, 0o644)?;
    overlay::install_file(
        &esp_dir,
        &Path::new(&kdir).join("initrd.img"),
        &initrd,
        0o644,
    )?;
    for slot in [Slot::A, Slot::B] {
        let e = entries::render_entry(
            slot,
            &inp.version,
            slot.fresh_generation(),
            &kdir,
            &board.console,
            &inp.cmdline(),
        );
        overlay::install_bytes(
            &esp_dir,
            &Path::new("loader/entries").join(entries::entry_file_name(slot)),
            e.as_bytes(),
            0o644,
        )?;
    }
    make_vfat(
        &esp_dir,
        &inp.esp_img(),
        b.part_size("esp")?,
        &layout::derived_serial(b.digest()?),
        inp.epoch,
    )
}

/// FAT overhead and loader files, on top of the kernels and systemd-boot.
const ESP_SLACK: u64 = 2 << 20;

/// Sets every mtime and atime under `dir` (and `dir`'s own) to the epoch.
fn set_mtimes(dir: &Path, epoch: u64) -> Result<()> {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(epoch);
    for p in sorted_dir(dir)? {
        let md = fs::symlink_metadata(&p)?;
        if md.is_dir() {
            set_mtimes(&p, epoch)?;
        }
        if !md.file_type().is_symlink() {
            fs::File::open(&p)?.set_times(fs::FileTimes::new().set_accessed(t).set_modified(t))?;
        }
    }
    fs::File::open(dir)?.set_times(fs::FileTimes::new().set_accessed(t).set_modified(t))?;
    Ok(())
}

/// Every path under `rel` (relative to `base`), parents before children, sorted;
/// `true` for directories.
fn walk(base: &Path, rel: &Path, out: &mut Vec<(PathBuf, bool)>) -> Result<()> {
    for p in sorted_dir(&base.join(rel))? {
        let r = rel.join(p.file_name().unwrap_or_default());
        let dirp = p.is_dir();
        out.push((r.clone(), dirp));
        if dirp {
            walk(base, &r, out)?;
        }
    }
    Ok(())
}

/// A FAT ESP from a directory, with mkfs.vfat (fixed serial, --invariant) and mtools.
fn make_vfat(dir: &Path, img: &Path, size: u64, serial: &str, epoch: u64) -> Result<()> {
    fs::File::create(img)?.set_len(size)?;
    run_tool(
        Command::new("mkfs.vfat")
            .args(["--invariant", "-i", serial, "-n", "ESP"])
            .arg(img),
    )?;
    set_mtimes(dir, epoch)?;
    let mtools = |args: &[&std::ffi::OsStr]| -> Result<()> {
        run_tool(
            Command::new(args[0])
                .args(&args[1..])
                .env("MTOOLS_SKIP_CHECK", "1")
                .env("SOURCE_DATE_EPOCH", epoch.to_string())
                .env("TZ", "UTC"),
        )?;
        Ok(())
    };
    let mut items = Vec::new();
    walk(dir, Path::new(""), &mut items)?;
    let imgs = img.as_os_str();
    for (r, is_dir) in items {
        let dest = format!("::/{}", r.display());
        if is_dir {
            mtools(&["mmd".as_ref(), "-i".as_ref(), imgs, dest.as_ref()])?;
        } else {
            mtools(&[
                "mcopy".as_ref(),
                "-m".as_ref(),
                "-i".as_ref(),
                imgs,
                dir.join(&r).as_os_str(),
                dest.as_ref(),
            ])?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn walk_lists_parents_first_sorted() {
        let d = tempfile::tempdir().unwrap();
        fs::create_dir_all(d.path().join("loader/entries")).unwrap();
        fs::create_dir_all(d.path().join("EFI/BOOT")).unwrap();
        fs::write(d.path().join("loader/loader.conf"), "").unwrap();
        fs::write(d.path().join("loader/entries/a.conf"), "").unwrap();
        fs::write(d.path().join("EFI/BOOT/BOOTX64.EFI"), "").unwrap();
        let mut v = Vec::new();
        walk(d.path(), Path::new(""), &mut v).unwrap();
        let v: Vec<String> = v
            .iter()
            .map(|(p, dir)| format!("{}{}", p.display(), if *dir { "/" } else { "" }))
            .collect();
        assert_eq!(
            v,
            [
                "EFI/",
                "EFI/BOOT/",
                "EFI/BOOT/BOOTX64.EFI",
                "loader/",
                "loader/entries/",
                "loader/entries/a.conf",
                "loader/loader.conf"
            ]
        );
    }
}
