//! palisade-image: builds a flashable A/B GPT disk image for a board.
//!
//! `palisade-image build --board qemu-x86_64 --out out/`
//!
//! Pipeline ([`stages::STAGES`], each a module of [`stages`], timed): pinned Debian
//! packages (apt-get download, cached, sha256 recorded) -> dpkg-deb -x -> root tree
//! (palisaded/palisade static-pie, busybox, nft and ip with exactly the shared
//! objects they need, kernel modules + depmod, rootfs/ overlay, seed config) ->
//! initramfs (newc, reproducible) -> kernel + initramfs into the root tree -> input
//! digest and partition layout -> erofs root -> ESP (systemd-boot, BLS entries with
//! boot counting) -> ext4 state -> GPT disk (sfdisk) -> the slot image (update
//! payload) -> qcow2, manifest.json and sbom.spdx.json. Every timestamp
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
    /// A board definition outside board/boards/ (its `name` names the outputs);
    /// overrides --board.
    #[arg(long, value_name = "FILE")]
    board_file: Option<PathBuf>,
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
    /// Image version (semver): os-release, entry titles, output names, manifest
    /// [default: the workspace package version].
    #[arg(long, value_name = "SEMVER")]
    version: Option<semver::Version>,
    /// Appended to the board's kernel command line, in the boot entries and in the
    /// installed /usr/share/palisade/board.toml (e.g. `palisade.health_timeout=10`).
    #[arg(long, value_name = "EXTRA", default_value = "")]
    cmdline: String,
    /// The fleet's TUF root.json, installed at /etc/palisade/fleet/root.json.
    #[arg(long, value_name = "FILE")]
    fleet_root: Option<PathBuf>,
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
    let (board, board_text) = match &a.board_file {
        Some(f) => {
            let text = fs::read(f).with_context(|| format!("--board-file {}", f.display()))?;
            let utf8 = std::str::from_utf8(&text)
                .with_context(|| format!("--board-file {}: not UTF-8", f.display()))?;
            let def = BoardDef::from_str(utf8, f)?;
            (def, text)
        }
        None => (
            BoardDef::load(&ws.join("board/boards"), &a.board)?,
            fs::read(ws.join("board/boards").join(format!("{}.toml", a.board)))?,
        ),
    };
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
    let fleet_root = match &a.fleet_root {
        Some(p) => {
            let bytes = fs::read(p).with_context(|| format!("--fleet-root {}", p.display()))?;
            stages::rootfs::check_fleet_root(&bytes)
                .with_context(|| format!("--fleet-root {}", p.display()))?;
            Some(bytes)
        }
        None => None,
    };
    if a.cmdline.contains('\n') {
        anyhow::bail!("--cmdline must be one line");
    }
    Ok(Inputs {
        ws,
        board,
        board_text,
        epoch,
        version: a
            .version
            .as_ref()
            .map_or_else(|| env!("CARGO_PKG_VERSION").to_string(), |v| v.to_string()),
        cmdline_extra: a.cmdline.trim().to_string(),
        fleet_root,
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
    if let Some((f, h, s)) = &b.update {
        println!("{f}  {s} bytes  sha256 {h}  (update payload)");
    }
    let root = b.root_len.unwrap_or(0);
    let slot = b.part_size("palisade-a").unwrap_or(0);
    println!(
        "root.erofs {root} bytes ({:.1} MiB) in a {} MiB slot, {:.0} % free; manifest.json, sbom.spdx.json in {}",
        root as f64 / f64::from(1 << 20),
        slot >> 20,
        headroom(root, slot),
        b.inp.out.display()
    );
    if headroom(root, slot) < 25.0 {
        eprintln!(
            "palisade-image: warning: less than 25 % of the slot is free for updates to grow: raise partitions.slot in the board file"
        );
    }
    Ok(())
}

/// Percent of `slot` not used by `used`.
fn headroom(used: u64, slot: u64) -> f64 {
    if slot == 0 {
        return 0.0;
    }
    100.0 * (1.0 - used as f64 / slot as f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent_and_parses_the_update_options() {
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from([
            "palisade-image",
            "build",
            "--version",
            "1.2.3-rc.1",
            "--cmdline",
            "palisade.health_timeout=10",
            "--fleet-root",
            "root.json",
        ])
        .unwrap();
        let Cmd::Build(a) = cli.cmd;
        assert_eq!(a.version.unwrap().to_string(), "1.2.3-rc.1");
        assert_eq!(a.cmdline, "palisade.health_timeout=10");
        assert_eq!(a.fleet_root.unwrap(), Path::new("root.json"));
        // Not semver: refused by the parser.
        assert!(Cli::try_parse_from(["palisade-image", "build", "--version", "1.2"]).is_err());
        // The top-level --version still prints the tool's version.
        let Err(e) = Cli::try_parse_from(["palisade-image", "--version"]) else {
            panic!("--version did not print the version");
        };
        assert_eq!(e.kind(), clap::error::ErrorKind::DisplayVersion);
    }

    #[test]
    fn board_file_is_read_and_checked() {
        let d = tempfile::tempdir().unwrap();
        let ws = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let text = fs::read_to_string(ws.join("board/boards/x86-appliance.toml")).unwrap();
        let file = d.path().join("my-board.toml");
        fs::write(&file, &text).unwrap();
        let args = |f: &Path| {
            let cli = Cli::try_parse_from([
                "palisade-image".as_ref(),
                "build".as_ref(),
                "--out".as_ref(),
                d.path().join("out").as_os_str(),
                "--cache".as_ref(),
                d.path().join("cache").as_os_str(),
                "--board-file".as_ref(),
                f.as_os_str(),
            ])
            .unwrap();
            let Cmd::Build(a) = cli.cmd;
            a
        };
        let inp = inputs(&args(&file)).unwrap();
        assert_eq!(inp.board.name, "x86-appliance");
        assert_eq!(inp.board_text, text.as_bytes());
        // A bad value is refused naming the file and the field.
        fs::write(&file, text.replace("timeout_secs = 30", "timeout_secs = 0")).unwrap();
        let e = format!("{:#}", inputs(&args(&file)).unwrap_err());
        assert!(e.contains("my-board.toml") && e.contains("devices.watchdog.timeout_secs"), "{e}");
    }

    #[test]
    fn fleet_root_refused_unless_tuf_json() {
        let d = tempfile::tempdir().unwrap();
        let bad = d.path().join("root.json");
        fs::write(&bad, "not json").unwrap();
        let out = d.path().join("out");
        let cli = Cli::try_parse_from([
            "palisade-image".as_ref(),
            "build".as_ref(),
            "--out".as_ref(),
            out.as_os_str(),
            "--cache".as_ref(),
            d.path().join("cache").as_os_str(),
            "--fleet-root".as_ref(),
            bad.as_os_str(),
        ])
        .unwrap();
        let Cmd::Build(a) = cli.cmd;
        let Err(e) = inputs(&a) else {
            panic!("a fleet root that is not JSON was accepted");
        };
        assert!(format!("{e:#}").contains("not JSON"), "{e:#}");
        fs::write(&bad, r#"{"signed": {}, "signatures": []}"#).unwrap();
        let inp = inputs(&a).unwrap();
        assert_eq!(
            inp.fleet_root.as_deref(),
            Some(&fs::read(&bad).unwrap()[..])
        );
        assert_eq!(inp.version, env!("CARGO_PKG_VERSION"));
    }

    #[test]
    fn headroom_percent() {
        assert!((headroom(24 << 20, 32 << 20) - 25.0).abs() < 1e-9);
        assert_eq!(headroom(1, 0), 0.0);
    }
}
