//! Stage `binaries`: the node binaries, palisaded and palisade, static-pie.
//! Built with `cargo build --profile node` for the board's target unless
//! `--bin-dir` names prebuilt ones; either way a binary with an interpreter or
//! DT_NEEDED entries is refused (the root has no libc for them).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use palisade_board::BoardDef;

use super::Build;
use crate::elf;

/// The node binaries, in the order they are installed and hashed.
pub const NODE_BINARIES: [&str; 2] = ["palisaded", "palisade"];

pub fn run(b: &mut Build) -> Result<()> {
    let dir = match &b.inp.bin_dir {
        Some(d) => d.clone(),
        None => build_node_binaries(&b.inp.ws, &b.inp.board)?,
    };
    for n in NODE_BINARIES {
        check_static(&dir.join(n))?;
    }
    b.node_bins = Some(dir);
    Ok(())
}

/// Refuses a binary that is not static (an interpreter or shared libraries).
pub fn check_static(bin: &Path) -> Result<()> {
    let data = fs::read(bin).with_context(|| format!("node binary {}", bin.display()))?;
    let d = elf::parse(&data)?;
    if d.interp.is_some() || !d.needed.is_empty() {
        bail!(
            "{} is not static (interp {:?}, needs {:?}); build with -C target-feature=+crt-static",
            bin.display(),
            d.interp,
            d.needed
        );
    }
    Ok(())
}

fn build_node_binaries(ws: &Path, board: &BoardDef) -> Result<PathBuf> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .args([
            "build",
            "--quiet",
            "--profile",
            "node",
            "--target",
            &board.rust_target,
            "-p",
            "palisaded",
            "-p",
            "palisade-cli",
        ])
        .env("RUSTFLAGS", "-C target-feature=+crt-static")
        .current_dir(ws)
        .status()
        .context("cannot run cargo")?;
    if !status.success() {
        bail!("building the node binaries failed");
    }
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| ws.join("target"));
    Ok(target_dir.join(&board.rust_target).join("node"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_a_dynamic_binary() {
        // The test binary itself is dynamically linked (an interpreter, libc).
        let me = std::env::current_exe().unwrap();
        let e = check_static(&me).unwrap_err();
        assert!(format!("{e:#}").contains("is not static"), "{e:#}");
        assert!(check_static(Path::new("/nonexistent/palisaded")).is_err());
    }
}
