//! palisade-image: builds a flashable A/B GPT disk image for a board.
//!
//! `palisade-image build --board qemu-x86_64 --out out/`
//!
//! Pipeline ([`stages::STAGES`], each a module of [`stages`], timed): pinned Debian
//! packages (apt-get download, cached, sha256 recorded) -> dpkg-deb -x -> root tree
//! (palisaded/palisade static-pie, busybox, nft and ip with exactly the shared
//! objects they need, kernel modules + depmod, rootfs/ overlay, seed config) ->
//! input digest and partition layout -> erofs root -> initramfs (newc,
//! reproducible) -> ESP (systemd-boot, BLS entries with boot counting) -> ext4 state
//! -> GPT disk (sfdisk) -> qcow2, manifest.json and sbom.spdx.json. Every timestamp
//! is SOURCE_DATE_EPOCH and every UUID/serial is derived from the inputs, so two
//! builds give the same bytes.

mod cpio;
mod elf;
mod layout;
mod overlay;
mod sbom;
mod stages;
mod util;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use palisade_board::BoardDef;

use crate::stages::{Build, Inputs, STAGES};

#[derive(Parser)]
#[command(name = "palisade-image", version, about = "Build Palisade disk images")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build the disk image of a board.
    Build(BuildArgs),
}

#[derive(clap::Args, Clone)]
struct BuildArgs {
    /// Board name (board/boards/<name>.toml).
    #[arg(long, default_value = "qemu-x86_64")]
    board: String,
    /// Output directory.
    #[arg(long, default_value = "out")]
    out: PathBuf,
    /// Workspace root (the directory with Cargo.toml, board/, rootfs/, configs/).
    #[arg(long)]
    workspace: Option<PathBuf>,
    /// Cache of downloaded .deb files.
    #[arg(long)]
    cache: Option<PathBuf>,
    /// Node config baked in as the first-boot seed (/etc/palisade/seed/node.toml).
    #[arg(long)]
    seed: Option<PathBuf>,
    /// Directory copied to /etc/palisade/lists (default: configs/lists if present).
    #[arg(long)]
    lists: Option<PathBuf>,
    /// Use prebuilt palisaded and palisade from this directory instead of building them.
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Skip the qcow2 output.
    #[arg(long)]
    no_qcow2: bool,
    /// Keep the work directory (out/work) for inspection.
    #[arg(long)]
    keep_work: bool,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Build(a) => build(&a),
    }
}

fn default_epoch(ws: &Path) -> u64 {
    if let Some(v) = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.trim().parse().ok())
    {
        return v;
    }
    // The last commit's time: stable for a given checkout.
    Command::new("git")
        .args(["log", "-1", "--format=%ct"])
        .current_dir(ws)
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(1_700_000_000)
}

/// Resolves the arguments into [`Inputs`] and prepares a fresh `out/work`.
fn inputs(a: &BuildArgs) -> Result<Inputs> {
    let ws = match &a.workspace {
        Some(w) => w.clone(),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join(".."),
    };
    let ws = ws
        .canonicalize()
        .with_context(|| format!("workspace {}", ws.display()))?;
    let board = BoardDef::load(&ws.join("board/boards"), &a.board)?;
    let board_text = fs::read(ws.join("board/boards").join(format!("{}.toml", a.board)))?;
    let epoch = default_epoch(&ws);
    fs::create_dir_all(&a.out)?;
    let out = a.out.canonicalize()?;
    let work = out.join("work");
    if work.exists() {
        fs::remove_dir_all(&work)?;
    }
    fs::create_dir_all(&work)?;
    let cache = match &a.cache {
        Some(c) => c.clone(),
        None => std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
            .unwrap_or_else(|| PathBuf::from("/var/cache"))
            .join("palisade-image/debs"),
    };
    fs::create_dir_all(&cache)?;
    let cache = cache.canonicalize()?;
    let seed = a
        .seed
        .clone()
        .unwrap_or_else(|| ws.join("configs/node.toml"));
    let lists = a
        .lists
        .clone()
        .or_else(|| Some(ws.join("configs/lists")).filter(|p| p.is_dir()));
    Ok(Inputs {
        ws,
        board,
        board_text,
        epoch,
        version: env!("CARGO_PKG_VERSION").to_string(),
        out,
        work,
        cache,
        bin_dir: a.bin_dir.clone(),
        seed,
        lists,
        qcow2: !a.no_qcow2,
    })
}

fn build(a: &BuildArgs) -> Result<()> {
    let t0 = Instant::now();
    let mut b = Build::new(inputs(a)?);
    stages::run_all(&mut b, STAGES)?;
    if !a.keep_work {
        fs::remove_dir_all(&b.inp.work)?;
    }
    eprintln!(
        "palisade-image: built in {:.2} s",
        t0.elapsed().as_secs_f64()
    );
    for (f, h, s) in &b.outputs {
        println!("{f}  {s} bytes  sha256 {h}");
    }
    println!(
        "root.erofs {} bytes; manifest.json, sbom.spdx.json in {}",
        b.root_len.unwrap_or(0),
        b.inp.out.display()
    );
    Ok(())
}
