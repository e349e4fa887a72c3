//! Stage `erofs`: the root tree as an erofs image (lz4hc, all files root-owned,
//! every timestamp the epoch, a derived UUID), refused if it outgrows a slot. The
//! tree carries the slot's kernel and initramfs (stage `bootfiles`), so this image
//! is also the update payload.

use std::fs;
use std::process::Command;

use anyhow::{bail, Result};

use super::{Build, ROOT_INITRD, ROOT_VMLINUZ};
use crate::layout;
use crate::util::run_tool;

pub fn run(b: &mut Build) -> Result<()> {
    let inp = &b.inp;
    for f in [ROOT_VMLINUZ, ROOT_INITRD] {
        if !inp.root().join(f).is_file() {
            bail!("the root tree has no /{f}: the `bootfiles` stage has not run");
        }
    }
    let root_img = inp.root_img();
    let uuid = layout::derived_guid(b.digest()?, "root-fs").to_lowercase();
    run_tool(
        Command::new("mkfs.erofs")
            .args(["--quiet", "-zlz4hc", "-x-1", "--all-root"])
            .arg(format!("-T{}", inp.epoch))
            .arg(format!("-U{uuid}"))
            .arg(&root_img)
            .arg(inp.root()),
    )?;
    let len = fs::metadata(&root_img)?.len();
    let slot = b.part_size("palisade-a")?;
    if len > slot {
        bail!("root image is {len} bytes, the slot only {slot}: raise partitions.slot in the board file");
    }
    b.root_len = Some(len);
    Ok(())
}
