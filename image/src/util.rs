//! Small helpers the stages share: running host tools, hashing, sorted directory
//! listings (every walk is sorted so the output does not depend on readdir order).

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

/// Runs a command, failing with its stderr.
pub fn run_tool(cmd: &mut Command) -> Result<Vec<u8>> {
    let desc = format!("{cmd:?}");
    let out = cmd.output().with_context(|| format!("cannot run {desc}"))?;
    if !out.status.success() {
        bail!(
            "{desc} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out.stdout)
}

/// SHA-256 of a file, lowercase hex.
pub fn sha256_file(p: &Path) -> Result<String> {
    let mut f = fs::File::open(p).with_context(|| format!("open {}", p.display()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex(&h.finalize()))
}

/// Lowercase hex.
pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The entries of a directory, sorted by path.
pub fn sorted_dir(d: &Path) -> Result<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> = fs::read_dir(d)
        .with_context(|| format!("read directory {}", d.display()))?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    v.sort();
    Ok(v)
}

/// `(path in image, sha256, size)` of a file, as the manifest records binaries.
pub fn file_record(path_in_image: &str, src: &Path) -> Result<(String, String, u64)> {
    Ok((
        path_in_image.to_string(),
        sha256_file(src)?,
        fs::metadata(src)
            .with_context(|| format!("stat {}", src.display()))?
            .len(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_and_sha256() {
        assert_eq!(hex(&[0, 0xab, 0x10]), "00ab10");
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("x");
        fs::write(&f, b"abc").unwrap();
        assert_eq!(
            sha256_file(&f).unwrap(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(
            file_record("/x", &f).unwrap(),
            (
                "/x".to_string(),
                "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad".to_string(),
                3
            )
        );
    }

    #[test]
    fn sorted_dir_is_sorted() {
        let d = tempfile::tempdir().unwrap();
        for n in ["b", "a", "c"] {
            fs::write(d.path().join(n), b"").unwrap();
        }
        let names: Vec<_> = sorted_dir(d.path())
            .unwrap()
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["a", "b", "c"]);
    }
}
