//! Update test support: the `palisade-fleet` tool on a repository in a test
//! directory, slot images, an ESP tree like a booted node's, and digests to
//! prove that a refused update wrote nothing.

use anyhow::{anyhow, bail, Context, Result};
use palisade_board::entries::{self, Slot};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::guest::workspace;
use crate::ns::run_cmd;

/// The `palisade-fleet` binary: `$PALISADE_FLEET_BIN`, else built with cargo
/// into the workspace's target directory.
pub fn fleet_bin() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("PALISADE_FLEET_BIN") {
        return Ok(p.into());
    }
    let ws = workspace();
    let target = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| ws.join("target"));
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let st = Command::new(cargo)
        .args(["build", "-q", "-p", "palisade-fleet"])
        .current_dir(&ws)
        .env("CARGO_TARGET_DIR", &target)
        .status()
        .context("cargo build -p palisade-fleet")?;
    if !st.success() {
        bail!("cargo build -p palisade-fleet failed");
    }
    let p = target.join("debug/palisade-fleet");
    p.is_file().then_some(p.clone()).ok_or_else(|| anyhow!("{} missing", p.display()))
}

/// A repository and its keys, driven through `palisade-fleet`.
#[derive(Debug, Clone)]
pub struct Fleet {
    pub bin: PathBuf,
    pub repo: PathBuf,
    pub keys: PathBuf,
}

impl Fleet {
    /// `repo init` in `dir/repo` with keys in `dir/keys`.
    pub fn init(dir: &Path) -> Result<Fleet> {
        let f = Fleet { bin: fleet_bin()?, repo: dir.join("repo"), keys: dir.join("keys") };
        f.fleet(&["repo", "init"])?;
        Ok(f)
    }

    /// `palisade-fleet ARGS --repo R --keys K --json`; the parsed JSON output.
    pub fn fleet(&self, args: &[&str]) -> Result<serde_json::Value> {
        let out = Command::new(&self.bin)
            .args(args)
            .arg("--repo")
            .arg(&self.repo)
            .arg("--keys")
            .arg(&self.keys)
            .arg("--json")
            .output()
            .context("run palisade-fleet")?;
        if !out.status.success() {
            bail!(
                "palisade-fleet {args:?}: {}\n{}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        serde_json::from_slice(&out.stdout).with_context(|| format!("palisade-fleet {args:?}: output is not JSON"))
    }

    pub fn add_image(&self, file: &Path, board: &str, version: &str) -> Result<()> {
        let f = file.to_string_lossy();
        self.fleet(&["image", "add", &f, "--board", board, "--version", version]).map(|_| ())
    }

    /// A rollout of `version` to everyone now (one wave, no soak, no window).
    pub fn rollout_now(&self, version: &str) -> Result<()> {
        self.fleet(&["rollout", "set", "--version", version, "--waves", "1", "--soak-minutes", "0", "--start", "now"])
            .map(|_| ())
    }

    /// The root metadata nodes are given to trust.
    pub fn root(&self) -> PathBuf {
        self.repo.join("metadata/1.root.json")
    }

    /// A copy of the repository as it is now (a mirror, or an old state to replay).
    pub fn snapshot(&self, to: &Path) -> Result<PathBuf> {
        run_cmd(Command::new("cp").arg("-a").arg(&self.repo).arg(to))?;
        Ok(to.to_path_buf())
    }
}

/// The repository served over HTTP by a test host on the bed's internet
/// (`http://203.0.113.80:PORT/`), as a node's uplink reaches it.
pub fn serve_repository(bed: &crate::TestBed, testhost: &Path, repo: &Path, port: u16) -> Result<crate::Proc> {
    let log = bed.dir.path().join("repo-http.log");
    let spec = format!("http-dir:{}:{port}:{}", crate::addr::WEB_V4, repo.display());
    let th = testhost.to_string_lossy();
    bed.inet.spawn_ready(
        "repo-http",
        bed.dir.path(),
        &[&th, "serve", "--log", &log.to_string_lossy(), &spec],
        "ready",
        std::time::Duration::from_secs(5),
    )
}

/// A slot image like the image builder's (erofs): a kernel and initramfs
/// stand-in under usr/lib/palisade/boot, the board file and os-release.
pub fn fake_slot_image(dir: &Path, version: &str, pad_bytes: usize) -> Result<PathBuf> {
    let tree = dir.join(format!("root-{version}"));
    let boot = tree.join("usr/lib/palisade/boot");
    std::fs::create_dir_all(&boot)?;
    std::fs::create_dir_all(tree.join("usr/share/palisade"))?;
    std::fs::create_dir_all(tree.join("etc"))?;
    // Incompressible bytes, different per version (kernel dirs are content-addressed).
    let noise = |seed: &str, n: usize| -> Vec<u8> {
        let mut out = Vec::with_capacity(n);
        let mut block = Sha256::digest(seed.as_bytes()).to_vec();
        while out.len() < n {
            block = Sha256::digest(&block).to_vec();
            out.extend_from_slice(&block);
        }
        out.truncate(n);
        out
    };
    std::fs::write(boot.join("vmlinuz"), noise(&format!("kernel {version}"), 256 << 10))?;
    std::fs::write(boot.join("initrd.img"), noise(&format!("initrd {version}"), 64 << 10))?;
    std::fs::write(tree.join("usr/share/palisade/pad"), noise(&format!("pad {version}"), pad_bytes))?;
    std::fs::copy(workspace().join("board/boards/qemu-x86_64.toml"), tree.join("usr/share/palisade/board.toml"))?;
    std::fs::write(tree.join("etc/os-release"), format!("NAME=Palisade\nID=palisade\nVERSION_ID={version}\n"))?;
    let img = dir.join(format!("palisade-qemu-x86_64-{version}.img"));
    run_cmd(Command::new("mkfs.erofs").arg("-d0").arg("-T0").arg(&img).arg(&tree))?;
    Ok(img)
}

/// An ESP as a node booted from a blessed slot A has it: loader.conf,
/// `palisade-a.conf` (generation 2), `palisade-b+3.conf` (1), one kernel dir.
pub fn booted_esp(dir: &Path) -> Result<PathBuf> {
    let esp = dir.join("esp");
    let kdir = entries::kernel_dir("6.1.0-test", "00112233445566778899");
    std::fs::create_dir_all(esp.join("loader/entries"))?;
    std::fs::create_dir_all(esp.join(&kdir))?;
    std::fs::write(esp.join("loader/loader.conf"), entries::loader_conf())?;
    std::fs::write(esp.join(&kdir).join("vmlinuz"), b"kernel 0.1.0")?;
    std::fs::write(esp.join(&kdir).join("initrd.img"), b"initrd 0.1.0")?;
    for (slot, name) in [(Slot::A, "palisade-a.conf".to_string()), (Slot::B, entries::entry_file_name(Slot::B))] {
        let e = entries::render_entry(slot, "0.1.0", slot.fresh_generation(), &kdir, "ttyS0,115200", "quiet");
        std::fs::write(esp.join("loader/entries").join(name), e)?;
    }
    Ok(esp)
}

/// palisaded's update overrides for a node whose slots are the files `slot_a`
/// and `slot_b`, booted from A, with its ESP as the directory `esp`, the
/// installed version from `os_release`, and the qemu-x86_64 board file.
pub fn node_update_args(slot_a: &Path, slot_b: &Path, esp: &Path, os_release: &Path) -> Vec<String> {
    vec![
        "--update-slots".into(),
        format!("{},{}", slot_a.display(), slot_b.display()),
        "--esp-dir".into(),
        esp.display().to_string(),
        "--booted-slot".into(),
        "a".into(),
        "--os-release".into(),
        os_release.display().to_string(),
        "--board-file".into(),
        workspace().join("board/boards/qemu-x86_64.toml").display().to_string(),
    ]
}

/// SHA-256 of a file, hex.
pub fn file_digest(p: &Path) -> Result<String> {
    let mut h = Sha256::new();
    std::io::copy(&mut std::fs::File::open(p).with_context(|| p.display().to_string())?, &mut h)?;
    Ok(hex(&h.finalize()))
}

/// SHA-256 over every path (relative, sorted) and file content under `dir`.
pub fn tree_digest(dir: &Path) -> Result<String> {
    fn walk(base: &Path, d: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(d)?.map(|e| e.map(|e| e.path())).collect::<Result<_, _>>()?;
        v.sort();
        for p in v {
            out.push(p.strip_prefix(base)?.to_path_buf());
            if p.is_dir() {
                walk(base, &p, out)?;
            }
        }
        Ok(())
    }
    let mut paths = Vec::new();
    walk(dir, dir, &mut paths)?;
    let mut h = Sha256::new();
    for p in paths {
        h.update(p.to_string_lossy().as_bytes());
        h.update([0]);
        let full = dir.join(&p);
        if full.is_file() {
            h.update(std::fs::read(&full)?);
        }
    }
    Ok(hex(&h.finalize()))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
