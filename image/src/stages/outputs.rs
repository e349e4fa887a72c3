//! Stages `payload`, `qcow2` and `record`: the slot image (the update payload,
//! `palisade-<board>-<version>.img`: the erofs root, the bytes written to both
//! slots), the qcow2 copy of the disk (unless `--no-qcow2`), then manifest.json
//! and sbom.spdx.json (what went in, what came out, with the hashes of the disk
//! files and of the payload) and the stable `palisade-<board>.raw` symlink.

use std::fs;
use std::process::Command;

use anyhow::{bail, Context, Result};

use super::Build;
use crate::sbom::{self, BuildRecord};
use crate::util::{run_tool, sha256_file};

/// `payload`: copies the root image to `out/` and records its hash and size.
pub fn payload(b: &mut Build) -> Result<()> {
    let len = b
        .root_len
        .context("no root image: the `erofs` stage has not run")?;
    let img = b.inp.slot_img();
    fs::copy(b.inp.root_img(), &img)
        .with_context(|| format!("copy the root image to {}", img.display()))?;
    if fs::metadata(&img)?.len() != len {
        bail!(
            "{} changed size after the `erofs` stage",
            b.inp.root_img().display()
        );
    }
    let name = img
        .file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned();
    b.update = Some((name, sha256_file(&img)?, len));
    Ok(())
}

/// `qcow2`: `qemu-img convert` of the raw disk.
pub fn qcow2(b: &mut Build) -> Result<()> {
    if !b.inp.qcow2 {
        return Ok(());
    }
    let raw = b.inp.raw();
    if !b.images.contains(&raw) {
        bail!("no raw disk: the `disk` stage has not run");
    }
    let q = b.inp.out.join(format!("{}.qcow2", b.inp.image_name()));
    run_tool(
        Command::new("qemu-img")
            .args(["convert", "-q", "-O", "qcow2"])
            .arg(&raw)
            .arg(&q),
    )?;
    b.images.push(q);
    Ok(())
}

/// `record`: manifest, SBOM, symlink.
pub fn record(b: &mut Build) -> Result<()> {
    let inp = &b.inp;
    if b.images.is_empty() {
        bail!("no disk files: the `disk` stage has not run");
    }
    let mut outputs = Vec::new();
    for o in &b.images {
        outputs.push((
            o.file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned(),
            sha256_file(o)?,
            fs::metadata(o)?.len(),
        ));
    }
    let size = |p: std::path::PathBuf| -> Result<u64> {
        Ok(fs::metadata(&p)
            .with_context(|| format!("stat {}", p.display()))?
            .len())
    };
    let rec = BuildRecord {
        board: inp.board.clone(),
        version: inp.version.clone(),
        epoch: inp.epoch,
        debs: b.debs.clone(),
        binaries: b.binaries.clone(),
        modules: b.modules.clone(),
        libs: b.libs.clone(),
        outputs: outputs.clone(),
        update: Some(
            b.update
                .clone()
                .context("no slot image: the `payload` stage has not run")?,
        ),
        slot_sizes: vec![
            (
                "root.erofs".into(),
                b.root_len
                    .context("no root image: the `erofs` stage has not run")?,
            ),
            ("initrd.img".into(), size(inp.initrd())?),
            ("vmlinuz".into(), size(inp.vmlinuz())?),
        ],
        layout: b.layout()?.clone(),
    };
    fs::write(
        inp.out.join("manifest.json"),
        serde_json::to_vec_pretty(&sbom::manifest(&rec))?,
    )?;
    fs::write(
        inp.out.join("sbom.spdx.json"),
        serde_json::to_vec_pretty(&sbom::spdx(&rec, &inp.ws))?,
    )?;
    // A stable name for scripts.
    let link = inp.out.join(format!("palisade-{}.raw", inp.board.name));
    let _ = fs::remove_file(&link);
    std::os::unix::fs::symlink(inp.raw().file_name().context("raw name")?, &link)?;
    b.outputs = outputs;
    Ok(())
}
