//! Stage `initramfs`: a newc cpio (sorted, every mtime the epoch) with busybox,
//! `/init` (initramfs-init.sh), the board's initramfs modules plus their
//! modules.dep closure and `modules.load` (their load order). It finds the slot
//! by GPT name, mounts it read-only and switch_roots to palisaded.

use std::fs;
use std::path::Path;

use anyhow::{Context, Result};

use super::modules::kernel_moddep;
use super::Build;
use crate::cpio;

pub fn run(b: &mut Build) -> Result<()> {
    let inp = &b.inp;
    let (dep, builtin) = kernel_moddep(inp)?;
    let mods = dep
        .plan(&inp.board.modules.initramfs, &builtin)?
        .require_all()
        .context("board modules.initramfs")?;
    let kmods = inp.kernel_modules();
    let mut files = Vec::new();
    for m in &mods {
        let data = fs::read(kmods.join(m)).with_context(|| format!("module {m}"))?;
        files.push((m.as_str(), data));
    }
    let busybox =
        fs::read(inp.busybox()).with_context(|| format!("busybox {}", inp.busybox().display()))?;
    fs::write(inp.initrd(), archive(busybox, &files)?.to_newc(inp.epoch))?;
    Ok(())
}

/// The archive: `/init`, busybox (and `/bin/sh`), `modules/<file>` for each module
/// (given as `(path in modules.dep, bytes)`, load order) and `modules.load`.
pub fn archive(busybox: Vec<u8>, modules: &[(&str, Vec<u8>)]) -> Result<cpio::Archive> {
    let mut ar = cpio::Archive::default();
    ar.add(
        "init",
        cpio::Member::File {
            data: include_bytes!("../initramfs-init.sh").to_vec(),
            exec: true,
        },
    );
    ar.add(
        "bin/busybox",
        cpio::Member::File {
            data: busybox,
            exec: true,
        },
    );
    ar.add("bin/sh", cpio::Member::Symlink("busybox".into()));
    let mut load = String::new();
    for (m, data) in modules {
        let base = Path::new(m)
            .file_name()
            .context("module name")?
            .to_string_lossy()
            .into_owned();
        ar.add(
            &format!("modules/{base}"),
            cpio::Member::File {
                data: data.clone(),
                exec: false,
            },
        );
        load.push_str(&base);
        load.push('\n');
    }
    ar.add(
        "modules.load",
        cpio::Member::File {
            data: load.into_bytes(),
            exec: false,
        },
    );
    Ok(ar)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stage_alone_from_a_fake_kernel() {
        // A kernel package with three modules and a modules.dep: the stage runs on
        // its own and lists dependencies first in modules.load.
        let d = tempfile::tempdir().unwrap();
        let mut b = super::super::Build::new(super::super::testutil::inputs(d.path()));
        b.inp.board.modules.initramfs = vec!["erofs".into()];
        let kmods = b.inp.kernel_modules();
        fs::create_dir_all(kmods.join("kernel/fs/erofs")).unwrap();
        fs::create_dir_all(kmods.join("kernel/lib")).unwrap();
        fs::write(
            kmods.join("modules.dep"),
            "kernel/fs/erofs/erofs.ko: kernel/lib/libcrc32c.ko kernel/lib/crc32c.ko\n\
             kernel/lib/libcrc32c.ko: kernel/lib/crc32c.ko\n\
             kernel/lib/crc32c.ko:\n",
        )
        .unwrap();
        for m in ["fs/erofs/erofs.ko", "lib/libcrc32c.ko", "lib/crc32c.ko"] {
            fs::write(kmods.join("kernel").join(m), m).unwrap();
        }
        let bb = b.inp.busybox();
        fs::create_dir_all(bb.parent().unwrap()).unwrap();
        fs::write(&bb, b"busybox").unwrap();

        run(&mut b).unwrap();
        let first = fs::read(b.inp.initrd()).unwrap();
        let text = String::from_utf8_lossy(&first);
        assert!(
            text.contains("crc32c.ko\nlibcrc32c.ko\nerofs.ko\n"),
            "{text}"
        );
        for name in [
            "init",
            "bin/busybox",
            "bin/sh",
            "modules/erofs.ko",
            "modules.load",
        ] {
            assert!(text.contains(name), "{name} missing");
        }
        run(&mut b).unwrap();
        assert_eq!(first, fs::read(b.inp.initrd()).unwrap(), "not reproducible");
    }
}
