//! palisade-image: builds a flashable A/B GPT disk image for a board.
//!
//! `palisade-image build --board qemu-x86_64 --out out/`
//!
//! Pipeline: pinned Debian packages (apt-get download, cached, sha256 recorded) ->
//! dpkg-deb -x -> root tree (kernel modules + depmod, nft and exactly the shared
//! objects it needs, busybox, palisaded/palisade static-pie, rootfs/ overlay, seed
//! config) -> erofs root -> initramfs (newc, reproducible) -> ESP (systemd-boot,
//! BLS entries with boot counting) -> ext4 state -> GPT disk (sfdisk) -> raw + qcow2,
//! manifest.json and sbom.spdx.json. Every timestamp is SOURCE_DATE_EPOCH and every
//! UUID/serial is derived from the inputs, so two builds give the same bytes.

mod cpio;
mod elf;
mod entries;
mod kmod;
mod layout;
mod overlay;
mod sbom;

use std::collections::BTreeSet;
use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use palisade_board::BoardDef;
use sha2::{Digest, Sha256};

use crate::entries::Slot;
use crate::layout::Layout;

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

/// Runs a command, failing with its stderr.
fn run(cmd: &mut Command) -> Result<Vec<u8>> {
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

fn sha256_file(p: &Path) -> Result<String> {
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

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A downloaded, verified package.
#[derive(Debug, Clone)]
pub struct Deb {
    pub name: String,
    pub version: String,
    pub path: PathBuf,
    pub sha256: String,
    pub size: u64,
}

fn deb_file_prefix(name: &str, version: &str) -> String {
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
            run(Command::new("apt-get")
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
    let fields = run(Command::new("dpkg-deb")
        .args(["-f"])
        .arg(&path)
        .args(["Package", "Version"]))?;
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

struct Progress {
    bar: ProgressBar,
}

impl Progress {
    fn new(steps: u64) -> Self {
        let bar = ProgressBar::new(steps);
        bar.set_style(
            ProgressStyle::with_template("{elapsed_precise:.dim} [{bar:30}] {pos}/{len} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        Progress { bar }
    }
    fn step(&self, msg: &str) {
        self.bar.inc(1);
        self.bar.set_message(msg.to_string());
        if self.bar.is_hidden() {
            eprintln!(
                "palisade-image: [{}/{}] {msg}",
                self.bar.position(),
                self.bar.length().unwrap_or(0)
            );
        }
    }
}

/// Everything the manifest and SBOM record about a build.
pub struct BuildRecord {
    pub board: BoardDef,
    pub version: String,
    pub epoch: u64,
    pub debs: Vec<Deb>,
    pub binaries: Vec<(String, String, u64)>, // (path in image, sha256, size)
    pub modules: Vec<String>,
    pub libs: Vec<String>,
    pub outputs: Vec<(String, String, u64)>, // (file, sha256, size)
    pub slot_sizes: Vec<(String, u64)>,      // (partition, bytes used)
    pub layout: Layout,
}

fn build(a: &BuildArgs) -> Result<()> {
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
    let version = env!("CARGO_PKG_VERSION").to_string();
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

    let p = Progress::new(14);

    // 1. packages
    p.step("downloading pinned Debian packages");
    let mut pins: Vec<(String, String)> =
        vec![(board.kernel.package.clone(), board.kernel.version.clone())];
    pins.extend(
        board
            .packages
            .iter()
            .map(|p| (p.name.clone(), p.version.clone())),
    );
    let mut debs = Vec::new();
    for (n, v) in &pins {
        debs.push(fetch_deb(&cache, n, v)?);
    }
    p.step("extracting packages");
    let pkgs = work.join("pkgs");
    for d in &debs {
        let dir = pkgs.join(&d.name);
        fs::create_dir_all(&dir)?;
        run(Command::new("dpkg-deb").arg("-x").arg(&d.path).arg(&dir))?;
    }

    // 2. node binaries
    p.step("building palisaded and palisade (profile node, static-pie)");
    let bins = match &a.bin_dir {
        Some(d) => d.clone(),
        None => build_node_binaries(&ws, &board)?,
    };
    let palisaded = bins.join("palisaded");
    let palisade = bins.join("palisade");
    for b in [&palisaded, &palisade] {
        let data = fs::read(b).with_context(|| format!("node binary {}", b.display()))?;
        let d = elf::parse(&data)?;
        if d.interp.is_some() || !d.needed.is_empty() {
            bail!("{} is not static (interp {:?}, needs {:?}); build with -C target-feature=+crt-static", b.display(), d.interp, d.needed);
        }
    }

    // 3. root tree
    p.step("assembling the root tree");
    let root = work.join("root");
    fs::create_dir_all(&root)?;
    for d in [
        "usr/bin",
        "usr/sbin",
        "usr/lib",
        "usr/lib64",
        "usr/share/palisade",
        "etc/palisade/seed",
        "proc",
        "sys",
        "dev",
        "run",
        "tmp",
        "var",
        "efi",
        "mnt",
    ] {
        overlay::mkdirs(&root, Path::new(d))?;
    }
    for (l, t) in [
        ("bin", "usr/bin"),
        ("sbin", "usr/sbin"),
        ("lib", "usr/lib"),
        ("lib64", "usr/lib64"),
    ] {
        overlay::install_symlink(&root, Path::new(l), t)?;
    }
    let mut binaries = Vec::new();
    for (src, dst) in [
        (&palisaded, "usr/sbin/palisaded"),
        (&palisade, "usr/bin/palisade"),
    ] {
        overlay::install_file(&root, Path::new(dst), src, 0o755)?;
        binaries.push((
            format!("/{dst}"),
            sha256_file(src)?,
            fs::metadata(src)?.len(),
        ));
    }
    overlay::install_symlink(&root, Path::new("usr/sbin/init"), "palisaded")?;

    // busybox: rescue shell, ip, udhcpc, modprobe (the kernel's module autoloader).
    let bb = pkgs.join("busybox-static/bin/busybox");
    overlay::install_file(&root, Path::new("usr/bin/busybox"), &bb, 0o755)?;
    binaries.push((
        "/usr/bin/busybox".into(),
        sha256_file(&bb)?,
        fs::metadata(&bb)?.len(),
    ));
    let applets = String::from_utf8(run(Command::new(&bb).arg("--list"))?)?;
    let mut applets: Vec<&str> = applets
        .lines()
        .filter(|l| !l.is_empty() && !l.contains('/'))
        .collect();
    applets.sort();
    for ap in applets {
        if ["init", "linuxrc", "busybox"].contains(&ap) {
            continue;
        }
        overlay::install_symlink(&root, &Path::new("usr/bin").join(ap), "busybox")?;
    }
    overlay::install_symlink(&root, Path::new("usr/sbin/modprobe"), "../bin/busybox")?;

    // nft and exactly the shared objects it needs.
    let nft = pkgs.join("nftables/usr/sbin/nft");
    overlay::install_file(&root, Path::new("usr/sbin/nft"), &nft, 0o755)?;
    binaries.push((
        "/usr/sbin/nft".into(),
        sha256_file(&nft)?,
        fs::metadata(&nft)?.len(),
    ));
    // iproute2 `ip` in /usr/sbin (first on PATH); busybox's ip stays in /usr/bin.
    let ip = pkgs.join("iproute2/bin/ip");
    overlay::install_file(&root, Path::new("usr/sbin/ip"), &ip, 0o755)?;
    binaries.push((
        "/usr/sbin/ip".into(),
        sha256_file(&ip)?,
        fs::metadata(&ip)?.len(),
    ));
    let mut libs = install_libs(&pkgs, &root, &nft)?;
    libs.extend(install_libs(&pkgs, &root, &ip)?);
    libs.sort();
    libs.dedup();

    // kernel modules
    p.step("selecting kernel modules (depmod)");
    let kver = &board.kernel.release;
    let kpkg = pkgs.join(&board.kernel.package);
    let kmods = kpkg.join("lib/modules").join(kver);
    run(Command::new("depmod").arg("-b").arg(&kpkg).arg(kver))?;
    let dep = kmod::ModDep::parse(&fs::read_to_string(kmods.join("modules.dep"))?)?;
    let builtin =
        kmod::parse_builtin(&fs::read_to_string(kmods.join("modules.builtin")).unwrap_or_default());
    let root_mods = dep.closure(&board.modules.root, &builtin)?;
    let rmods = Path::new("usr/lib/modules").join(kver);
    for m in &root_mods {
        overlay::install_file(&root, &rmods.join(m), &kmods.join(m), 0o644)?;
    }
    for f in [
        "modules.builtin",
        "modules.builtin.modinfo",
        "modules.order",
    ] {
        if kmods.join(f).exists() {
            overlay::install_file(&root, &rmods.join(f), &kmods.join(f), 0o644)?;
        }
    }
    run(Command::new("depmod").arg("-b").arg(&root).arg(kver))?;
    // The load order palisaded follows (dependencies first).
    let load_list: String = board
        .modules
        .root
        .iter()
        .map(|m| format!("{m}\n"))
        .collect();
    overlay::install_bytes(
        &root,
        Path::new("etc/palisade/modules"),
        load_list.as_bytes(),
        0o644,
    )?;

    // rootfs overlay, seed config, lists, board definition, os-release
    p.step("applying rootfs/ overlay and seed config");
    if ws.join("rootfs").is_dir() {
        overlay::copy_overlay(&ws.join("rootfs"), &root)?;
    }
    let seed = a
        .seed
        .clone()
        .unwrap_or_else(|| ws.join("configs/node.toml"));
    overlay::install_file(
        &root,
        Path::new("etc/palisade/seed/node.toml"),
        &seed,
        0o644,
    )
    .with_context(|| format!("seed config {}", seed.display()))?;
    let lists = a
        .lists
        .clone()
        .or_else(|| Some(ws.join("configs/lists")).filter(|p| p.is_dir()));
    if let Some(l) = lists {
        overlay::mkdirs(&root, Path::new("etc/palisade/lists"))?;
        overlay::copy_overlay(&l, &root.join("etc/palisade/lists"))?;
    }
    overlay::install_bytes(
        &root,
        Path::new("usr/share/palisade/board.toml"),
        &board_text,
        0o644,
    )?;
    let os_release = format!(
        "NAME=Palisade\nID=palisade\nID_LIKE=debian\nPRETTY_NAME=\"Palisade {version}\"\nVERSION_ID={version}\nIMAGE_ID={}\nHOME_URL=\"https://palisade.invalid/\"\n",
        board.name
    );
    overlay::install_bytes(
        &root,
        Path::new("usr/lib/os-release"),
        os_release.as_bytes(),
        0o644,
    )?;
    overlay::install_symlink(&root, Path::new("etc/os-release"), "../usr/lib/os-release")?;

    // The input digest: everything that goes into the image. GUIDs derive from it.
    let mut ih = Sha256::new();
    ih.update(&board_text);
    for d in &debs {
        ih.update(d.sha256.as_bytes());
    }
    for b in &binaries {
        ih.update(b.1.as_bytes());
    }
    ih.update(fs::read(&seed)?);
    ih.update(epoch.to_le_bytes());
    let seed_digest = ih.finalize().to_vec();
    let layout = Layout::new(board.partitions, &seed_digest);

    // 4. erofs root
    p.step("making the erofs root (lz4hc)");
    let root_img = work.join("root.erofs");
    let root_uuid = layout::derived_guid(&seed_digest, "root-fs").to_lowercase();
    run(Command::new("mkfs.erofs")
        .args(["--quiet", "-zlz4hc", "-x-1", "--all-root"])
        .arg(format!("-T{epoch}"))
        .arg(format!("-U{root_uuid}"))
        .arg(&root_img)
        .arg(&root))?;
    let root_len = fs::metadata(&root_img)?.len();
    let slot_bytes = layout.part("palisade-a").context("slot a")?.size;
    if root_len > slot_bytes {
        bail!("root image is {root_len} bytes, the slot only {slot_bytes}: raise partitions.slot in the board file");
    }

    // 5. initramfs
    p.step("making the initramfs");
    let mut ar = cpio::Archive::default();
    ar.add(
        "init",
        cpio::Member::File {
            data: include_bytes!("initramfs-init.sh").to_vec(),
            exec: true,
        },
    );
    ar.add(
        "bin/busybox",
        cpio::Member::File {
            data: fs::read(&bb)?,
            exec: true,
        },
    );
    ar.add("bin/sh", cpio::Member::Symlink("busybox".into()));
    let init_mods = dep.closure(&board.modules.initramfs, &builtin)?;
    let mut load = String::new();
    for m in &init_mods {
        let base = Path::new(m)
            .file_name()
            .context("module name")?
            .to_string_lossy()
            .into_owned();
        ar.add(
            &format!("modules/{base}"),
            cpio::Member::File {
                data: fs::read(kmods.join(m))?,
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
    let initrd = work.join("initrd.img");
    fs::write(&initrd, ar.to_newc(epoch))?;

    // 6. ESP
    p.step("making the ESP (systemd-boot, boot-counted entries)");
    let esp_dir = work.join("esp");
    let sdboot = pkgs.join("systemd-boot-efi/usr/lib/systemd/boot/efi/systemd-bootx64.efi");
    let vmlinuz = kpkg.join("boot").join(format!("vmlinuz-{kver}"));
    overlay::install_file(
        &esp_dir,
        &Path::new("EFI/BOOT").join(&board.efi_boot_name),
        &sdboot,
        0o644,
    )?;
    overlay::install_file(
        &esp_dir,
        Path::new("EFI/systemd/systemd-bootx64.efi"),
        &sdboot,
        0o644,
    )?;
    overlay::install_bytes(
        &esp_dir,
        Path::new("loader/loader.conf"),
        entries::loader_conf().as_bytes(),
        0o644,
    )?;
    // One content-addressed kernel directory, shared by both slots of a fresh image.
    let mut kh = Sha256::new();
    kh.update(fs::read(&vmlinuz)?);
    kh.update(fs::read(&initrd)?);
    let kdir = entries::kernel_dir(kver, &hex(&kh.finalize()));
    overlay::install_file(&esp_dir, &Path::new(&kdir).join("vmlinuz"), &vmlinuz, 0o644)?;
    overlay::install_file(
        &esp_dir,
        &Path::new(&kdir).join("initrd.img"),
        &initrd,
        0o644,
    )?;
    for slot in [Slot::A, Slot::B] {
        let e = entries::render_entry(
            slot,
            &version,
            slot.fresh_generation(),
            &kdir,
            &board.console,
            &board.cmdline,
        );
        overlay::install_bytes(
            &esp_dir,
            &Path::new("loader/entries").join(entries::entry_file_name(slot)),
            e.as_bytes(),
            0o644,
        )?;
    }
    let esp_img = work.join("esp.vfat");
    make_vfat(
        &esp_dir,
        &esp_img,
        layout.part("esp").context("esp")?.size,
        &layout::derived_serial(&seed_digest),
        epoch,
    )?;

    // 7. state
    p.step("making the state partition (ext4)");
    // Empty: palisaded seeds it on first boot. (A file copied in with `mkfs -d` would
    // carry its build-time ctime, which breaks reproducibility.)
    let state_img = work.join("state.ext4");
    let state_uuid = layout::derived_guid(&seed_digest, "state-fs").to_lowercase();
    let state_size = layout.part("state").context("state")?.size;
    fs::File::create(&state_img)?.set_len(state_size)?;
    run(Command::new("mkfs.ext4")
        .args([
            "-q",
            "-F",
            "-L",
            "state",
            "-m",
            "0",
            "-N",
            "256",
            "-U",
            &state_uuid,
        ])
        .arg("-E")
        .arg(format!(
            "hash_seed={state_uuid},root_owner=0:0,lazy_itable_init=0,nodiscard"
        ))
        .arg(&state_img)
        .env("E2FSPROGS_FAKE_TIME", epoch.to_string()))?;

    // 8. disk
    p.step("writing the GPT disk");
    let name = format!("palisade-{}-{}", board.name, version);
    let raw = out.join(format!("{name}.raw"));
    {
        let f = fs::File::create(&raw)?;
        f.set_len(layout.total)?;
    }
    let mut child = Command::new("sfdisk")
        .args([
            "--quiet",
            "--no-reread",
            "--no-tell-kernel",
            "--wipe",
            "always",
        ])
        .arg(&raw)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
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
        ("esp", &esp_img),
        ("palisade-a", &root_img),
        ("palisade-b", &root_img),
        ("state", &state_img),
    ] {
        write_at(&raw, layout.part(part).context("part")?.offset, img)?;
    }

    // 9. qcow2
    let mut outputs = vec![raw.clone()];
    if !a.no_qcow2 {
        p.step("converting to qcow2");
        let q = out.join(format!("{name}.qcow2"));
        run(Command::new("qemu-img")
            .args(["convert", "-q", "-O", "qcow2"])
            .arg(&raw)
            .arg(&q))?;
        outputs.push(q);
    } else {
        p.step("qcow2 skipped");
    }

    // 10. manifest + SBOM
    p.step("writing manifest and SBOM");
    let mut rec = BuildRecord {
        board: board.clone(),
        version: version.clone(),
        epoch,
        debs,
        binaries,
        modules: root_mods,
        libs,
        outputs: Vec::new(),
        slot_sizes: vec![
            ("root.erofs".into(), root_len),
            ("initrd.img".into(), fs::metadata(&initrd)?.len()),
            ("vmlinuz".into(), fs::metadata(&vmlinuz)?.len()),
        ],
        layout,
    };
    for o in &outputs {
        rec.outputs.push((
            o.file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned(),
            sha256_file(o)?,
            fs::metadata(o)?.len(),
        ));
    }
    fs::write(
        out.join("manifest.json"),
        serde_json::to_vec_pretty(&sbom::manifest(&rec))?,
    )?;
    fs::write(
        out.join("sbom.spdx.json"),
        serde_json::to_vec_pretty(&sbom::spdx(&rec, &ws))?,
    )?;
    // A stable name for scripts.
    let link = out.join(format!("palisade-{}.raw", board.name));
    let _ = fs::remove_file(&link);
    std::os::unix::fs::symlink(raw.file_name().context("raw name")?, &link)?;
    if !a.keep_work {
        fs::remove_dir_all(&work)?;
    }
    p.step("done");
    p.bar.finish_and_clear();
    for (f, h, s) in &rec.outputs {
        println!("{f}  {s} bytes  sha256 {h}");
    }
    println!(
        "root.erofs {root_len} bytes; manifest.json, sbom.spdx.json in {}",
        out.display()
    );
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

/// Copies the DT_NEEDED closure of `bin` (and its interpreter) from the extracted
/// packages into root's usr/lib/x86_64-linux-gnu and usr/lib64.
fn install_libs(pkgs: &Path, root: &Path, bin: &Path) -> Result<Vec<String>> {
    // Index every shared object in the extracted packages by file name.
    let mut index = std::collections::BTreeMap::new();
    for pkg in sorted_dir(pkgs)? {
        for sub in [
            "lib/x86_64-linux-gnu",
            "usr/lib/x86_64-linux-gnu",
            "lib64",
            "usr/lib64",
        ] {
            let d = pkg.join(sub);
            if d.is_dir() {
                for f in sorted_dir(&d)? {
                    let n = f
                        .file_name()
                        .unwrap_or_default()
                        .to_string_lossy()
                        .into_owned();
                    index.entry(n).or_insert(f);
                }
            }
        }
    }
    let mut todo = vec![bin.to_path_buf()];
    let mut done = BTreeSet::new();
    while let Some(f) = todo.pop() {
        let real = f
            .canonicalize()
            .with_context(|| format!("resolve {}", f.display()))?;
        let d =
            elf::parse(&fs::read(&real)?).with_context(|| format!("parse {}", real.display()))?;
        let mut names = d.needed.clone();
        if let Some(i) = &d.interp {
            names.push(
                Path::new(i)
                    .file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned(),
            );
        }
        for n in names {
            if done.contains(&n) {
                continue;
            }
            let src = index.get(&n).with_context(|| {
                format!(
                    "{n} (needed by {}) is in none of the board's packages",
                    f.display()
                )
            })?;
            let real = src.canonicalize()?;
            let dir = if n.starts_with("ld-linux") {
                "usr/lib64"
            } else {
                "usr/lib/x86_64-linux-gnu"
            };
            overlay::install_file(root, &Path::new(dir).join(&n), &real, 0o755)?;
            done.insert(n);
            todo.push(real);
        }
    }
    Ok(done.into_iter().collect())
}

fn sorted_dir(d: &Path) -> Result<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> = fs::read_dir(d)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    v.sort();
    Ok(v)
}

fn set_mtimes(dir: &Path, epoch: u64) -> Result<()> {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(epoch);
    for p in sorted_dir(dir)? {
        let md = fs::symlink_metadata(&p)?;
        if md.is_dir() {
            set_mtimes(&p, epoch)?;
        }
        if !md.file_type().is_symlink() {
            fs::File::open(&p)?.set_times(fs::FileTimes::new().set_accessed(t).set_modified(t))?;
        }
    }
    fs::File::open(dir)?.set_times(fs::FileTimes::new().set_accessed(t).set_modified(t))?;
    Ok(())
}

/// A FAT ESP from a directory, with mkfs.vfat (fixed serial, --invariant) and mtools.
fn make_vfat(dir: &Path, img: &Path, size: u64, serial: &str, epoch: u64) -> Result<()> {
    fs::File::create(img)?.set_len(size)?;
    run(Command::new("mkfs.vfat")
        .args(["--invariant", "-i", serial, "-n", "ESP"])
        .arg(img))?;
    set_mtimes(dir, epoch)?;
    let mtools = |args: &[&std::ffi::OsStr]| -> Result<()> {
        run(Command::new(args[0])
            .args(&args[1..])
            .env("MTOOLS_SKIP_CHECK", "1")
            .env("SOURCE_DATE_EPOCH", epoch.to_string())
            .env("TZ", "UTC"))?;
        Ok(())
    };
    fn walk(base: &Path, rel: &Path, out: &mut Vec<(PathBuf, bool)>) -> Result<()> {
        for p in sorted_dir(&base.join(rel))? {
            let r = rel.join(p.file_name().unwrap_or_default());
            let dirp = p.is_dir();
            out.push((r.clone(), dirp));
            if dirp {
                walk(base, &r, out)?;
            }
        }
        Ok(())
    }
    let mut items = Vec::new();
    walk(dir, Path::new(""), &mut items)?;
    let imgs = img.as_os_str();
    for (r, is_dir) in items {
        let dest = format!("::/{}", r.display());
        if is_dir {
            mtools(&["mmd".as_ref(), "-i".as_ref(), imgs, dest.as_ref()])?;
        } else {
            mtools(&[
                "mcopy".as_ref(),
                "-m".as_ref(),
                "-i".as_ref(),
                imgs,
                dir.join(&r).as_os_str(),
                dest.as_ref(),
            ])?;
        }
    }
    Ok(())
}

fn write_at(disk: &Path, offset: u64, img: &Path) -> Result<()> {
    let mut d = fs::OpenOptions::new().write(true).open(disk)?;
    d.seek(SeekFrom::Start(offset))?;
    let mut s = fs::File::open(img)?;
    std::io::copy(&mut s, &mut d)?;
    Ok(())
}
