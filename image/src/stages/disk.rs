//! Stage `disk`: the raw GPT disk. sfdisk writes the table (derived GUIDs, from
//! [`Layout::sfdisk_script`](crate::layout::Layout::sfdisk_script)); the ESP, the
//! root image (into both slots) and the state image are copied to their offsets.

use std::fs;
use std::io::{Seek, SeekFrom, Write};
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

use super::Build;

pub fn run(b: &mut Build) -> Result<()> {
    let inp = &b.inp;
    let layout = b.layout()?;
    let raw = inp.raw();
    fs::File::create(&raw)?.set_len(layout.total)?;
    let mut child = Command::new("sfdisk")
        .args([
            "--quiet",
            "--no-reread",
            "--no-tell-kernel",
            "--wipe",
            "always",
        ])
        .arg(&raw)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot run sfdisk (package fdisk)")?;
    child
        .stdin
        .take()
        .context("stdin")?
        .write_all(layout.sfdisk_script().as_bytes())?;
    let o = child.wait_with_output()?;
    if !o.status.success() {
        bail!("sfdisk failed: {}", String::from_utf8_lossy(&o.stderr));
    }
    for (part, img) in [
        ("esp", inp.esp_img()),
        ("palisade-a", inp.root_img()),
        ("palisade-b", inp.root_img()),
        ("state", inp.state_img()),
    ] {
        let p = layout
            .part(part)
            .with_context(|| format!("no partition `{part}` in the layout"))?;
        let len = fs::metadata(&img)
            .with_context(|| format!("partition image {}", img.display()))?
            .len();
        if len > p.size {
            bail!(
                "{} is {len} bytes, partition {part} only {}",
                img.display(),
                p.size
            );
        }
        write_at(&raw, p.offset, &img)?;
    }
    b.images.push(raw);
    Ok(())
}

/// Copies `img` into `disk` at `offset` (the disk keeps its length).
fn write_at(disk: &Path, offset: u64, img: &Path) -> Result<()> {
    let mut d = fs::OpenOptions::new().write(true).open(disk)?;
    d.seek(SeekFrom::Start(offset))?;
    let mut s = fs::File::open(img)?;
    std::io::copy(&mut s, &mut d)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_at_places_bytes_and_keeps_length() {
        let d = tempfile::tempdir().unwrap();
        let disk = d.path().join("disk");
        let img = d.path().join("img");
        fs::File::create(&disk).unwrap().set_len(16).unwrap();
        fs::write(&img, b"abc").unwrap();
        write_at(&disk, 5, &img).unwrap();
        let v = fs::read(&disk).unwrap();
        assert_eq!(v.len(), 16);
        assert_eq!(&v[4..9], b"\0abc\0");
    }
}
