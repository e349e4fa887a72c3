//! Stages `fetch` and `extract`: the pinned Debian packages, downloaded once into
//! the cache (`apt-get download name=version`), checked against their control
//! fields, hashed, and unpacked into `work/pkgs/<name>/`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use super::Build;
use crate::util::{run_tool, sha256_file};

/// A downloaded, verified package.
#[derive(Debug, Clone)]
pub struct Deb {
    pub name: String,
    pub version: String,
    pub path: PathBuf,
    pub sha256: String,
    pub size: u64,
}

/// `fetch`: every pin (the kernel first, then the board's packages in order).
pub fn download(b: &mut Build) -> Result<()> {
    let board = &b.inp.board;
    let mut pins: Vec<(&str, &str)> = vec![(&board.kernel.package, &board.kernel.version)];
    pins.extend(
        board
            .packages
            .iter()
            .map(|p| (p.name.as_str(), p.version.as_str())),
    );
    let mut debs = Vec::new();
    for (n, v) in pins {
        debs.push(fetch_deb(&b.inp.cache, n, v)?);
    }
    b.debs = debs;
    Ok(())
}

/// `extract`: `dpkg-deb -x` of every package into `work/pkgs/<name>/`.
pub fn extract(b: &mut Build) -> Result<()> {
    if b.debs.is_empty() {
        bail!("no packages: the `fetch` stage has not run");
    }
    for d in &b.debs {
        let dir = b.inp.pkg(&d.name);
        fs::create_dir_all(&dir)?;
        run_tool(Command::new("dpkg-deb").arg("-x").arg(&d.path).arg(&dir))?;
    }
    Ok(())
}

/// The file name prefix apt-get gives `name=version` (`:` is escaped as `%3a`).
pub fn deb_file_prefix(name: &str, version: &str) -> String {
    format!("{name}_{}_", version.replace(':', "%3a"))
}

fn fetch_deb(cache: &Path, name: &str, version: &str) -> Result<Deb> {
    let prefix = deb_file_prefix(name, version);
    let find = || -> Result<Option<PathBuf>> {
        for e in fs::read_dir(cache)? {
            let p = e?.path();
            let f = p
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned();
            if f.starts_with(&prefix) && f.ends_with(".deb") {
                return Ok(Some(p));
            }
        }
        Ok(None)
    };
    let path = match find()? {
        Some(p) => p,
        None => {
            run_tool(Command::new("apt-get")
                .args(["download", "-q", "-o", "APT::Sandbox::User=root"])
                .arg(format!("{name}={version}"))
                .current_dir(cache))
            .with_context(|| {
                format!("downloading {name}={version} (is the version still in the archive? try `apt-get update`)")
            })?;
            find()?
                .with_context(|| format!("apt-get download {name}={version} produced no file"))?
        }
    };
    // Check the file is what its name says.
    let fields = run_tool(
        Command::new("dpkg-deb")
            .args(["-f"])
            .arg(&path)
            .args(["Package", "Version"]),
    )?;
    let fields = String::from_utf8_lossy(&fields);
    if !fields.contains(&format!("Package: {name}\n"))
        || !fields.contains(&format!("Version: {version}\n"))
    {
        bail!("{} is not {name}={version}", path.display());
    }
    Ok(Deb {
        name: name.into(),
        version: version.into(),
        sha256: sha256_file(&path)?,
        size: fs::metadata(&path)?.len(),
        path,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_prefix_escapes_epoch() {
        assert_eq!(
            deb_file_prefix("busybox-static", "1:1.35.0-4+deb12u1+b1"),
            "busybox-static_1%3a1.35.0-4+deb12u1+b1_"
        );
        assert_eq!(deb_file_prefix("libmnl0", "1.0.4-3"), "libmnl0_1.0.4-3_");
    }

    #[test]
    fn extract_without_fetch_is_an_error() {
        let d = tempfile::tempdir().unwrap();
        let mut b = Build::new(super::super::testutil::inputs(d.path()));
        assert!(format!("{:#}", extract(&mut b).unwrap_err()).contains("`fetch`"));
    }
}
