//! The build as a sequence of named stages over one shared [`Build`] context.
//!
//! [`Inputs`] is fixed before the first stage (board, epoch, paths, options);
//! each stage reads it, reads what earlier stages left in the work directory or in
//! [`Build`], and adds its own results. Stages run in [`STAGES`] order; each one is
//! timed and its wall time printed, and each can be run alone in a test by filling
//! in just the fields it reads.
//!
//! | stage | module | makes |
//! | --- | --- | --- |
//! | `fetch`, `extract` | [`fetch`] | verified .debs in the cache, `work/pkgs/<name>/` |
//! | `modcheck` | [`modules`] | nothing: fails unless every board module is in the kernel package |
//! | `binaries` | [`binaries`] | static palisaded + palisade (built, or `--bin-dir`) |
//! | `rootfs`, `overlay` | [`rootfs`] | `work/root/`: binaries, busybox, nft, ip + libs; rootfs/, seed, lists, board file |
//! | `modules` | [`modules`] | kernel modules + depmod in the root, `/etc/palisade/modules` |
//! | `initramfs` | [`initramfs`] | `work/initrd.img` |
//! | `bootfiles` | [`rootfs`] | kernel + initramfs in the root (`usr/lib/palisade/boot/`) |
//! | `identity` | [`identity`] | the input digest and the partition [`Layout`] (GUIDs) |
//! | `erofs` | [`erofs`] | `work/root.erofs` |
//! | `esp` | [`esp`] | `work/esp/`, `work/esp.vfat` |
//! | `state` | [`state`] | `work/state.ext4` |
//! | `disk` | [`disk`] | `out/palisade-<board>-<version>.raw` |
//! | `payload` | [`outputs`] | `out/palisade-<board>-<version>.img` (the slot image, the update payload) |
//! | `qcow2`, `record` | [`outputs`] | the qcow2, manifest.json, sbom.spdx.json, the stable symlink |

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use palisade_board::BoardDef;

use crate::layout::Layout;

pub mod binaries;
pub mod disk;
pub mod erofs;
pub mod esp;
pub mod fetch;
pub mod identity;
pub mod initramfs;
pub mod modules;
pub mod outputs;
pub mod rootfs;
pub mod state;

/// What a build is made from; fixed before the first stage runs.
#[derive(Debug, Clone)]
pub struct Inputs {
    /// Workspace root (Cargo.toml, board/, rootfs/, configs/).
    pub ws: PathBuf,
    pub board: BoardDef,
    /// The board file's bytes, as installed and hashed.
    pub board_text: Vec<u8>,
    /// SOURCE_DATE_EPOCH: every timestamp in the image.
    pub epoch: u64,
    /// Image version (semver): os-release, entry titles, output names, manifest.
    pub version: String,
    /// `--cmdline`: appended to the board's kernel command line in the entries and
    /// in the installed board.toml (empty: none).
    pub cmdline_extra: String,
    /// `--fleet-root`: the fleet's TUF root.json (checked JSON), installed at
    /// [`FLEET_ROOT`] in the root tree.
    pub fleet_root: Option<Vec<u8>>,
    /// Output directory (absolute).
    pub out: PathBuf,
    /// Scratch directory (absolute; `out/work`).
    pub work: PathBuf,
    /// Cache of downloaded .debs (absolute).
    pub cache: PathBuf,
    /// Prebuilt palisaded and palisade, if given.
    pub bin_dir: Option<PathBuf>,
    /// First-boot seed config.
    pub seed: PathBuf,
    /// Directory copied to /etc/palisade/lists.
    pub lists: Option<PathBuf>,
    /// Write the qcow2 too.
    pub qcow2: bool,
}

/// The kernel in the root tree: a slot carries its own kernel and initramfs, which
/// a node installing the slot as an update copies to the ESP.
pub const ROOT_VMLINUZ: &str = "usr/lib/palisade/boot/vmlinuz";
/// The initramfs in the root tree (same bytes as on the ESP).
pub const ROOT_INITRD: &str = "usr/lib/palisade/boot/initrd.img";
/// The installed board definition (with `--cmdline` appended to its cmdline).
pub const ROOT_BOARD: &str = "usr/share/palisade/board.toml";
/// The fleet's TUF root metadata, if `--fleet-root` was given.
pub const FLEET_ROOT: &str = "etc/palisade/fleet/root.json";

impl Inputs {
    /// The kernel command line of the entries: the board's plus `--cmdline`.
    pub fn cmdline(&self) -> String {
        self.board.with_extra_cmdline(&self.cmdline_extra).cmdline
    }
    /// The bytes installed as [`ROOT_BOARD`]: the board file as is, or, with
    /// `--cmdline`, the board re-serialized with the extended cmdline.
    pub fn installed_board(&self) -> Result<Vec<u8>> {
        if self.cmdline_extra.trim().is_empty() {
            return Ok(self.board_text.clone());
        }
        let def = self.board.with_extra_cmdline(&self.cmdline_extra);
        Ok(format!(
            "# board/boards/{}.toml as built, with --cmdline \"{}\" appended to cmdline.\n{}",
            self.board.name,
            self.cmdline_extra.trim(),
            def.to_toml()?
        )
        .into_bytes())
    }
    /// Where package `name` is extracted.
    pub fn pkg(&self, name: &str) -> PathBuf {
        self.work.join("pkgs").join(name)
    }
    /// The root tree that becomes the erofs image.
    pub fn root(&self) -> PathBuf {
        self.work.join("root")
    }
    /// The extracted kernel package.
    pub fn kernel_pkg(&self) -> PathBuf {
        self.pkg(&self.board.kernel.package)
    }
    /// `lib/modules/<release>` of the extracted kernel package.
    pub fn kernel_modules(&self) -> PathBuf {
        self.kernel_pkg()
            .join("lib/modules")
            .join(&self.board.kernel.release)
    }
    pub fn vmlinuz(&self) -> PathBuf {
        self.kernel_pkg()
            .join("boot")
            .join(format!("vmlinuz-{}", self.board.kernel.release))
    }
    /// busybox from busybox-static (root tree and initramfs).
    pub fn busybox(&self) -> PathBuf {
        self.pkg("busybox-static").join("bin/busybox")
    }
    pub fn root_img(&self) -> PathBuf {
        self.work.join("root.erofs")
    }
    pub fn initrd(&self) -> PathBuf {
        self.work.join("initrd.img")
    }
    pub fn esp_dir(&self) -> PathBuf {
        self.work.join("esp")
    }
    pub fn esp_img(&self) -> PathBuf {
        self.work.join("esp.vfat")
    }
    pub fn state_img(&self) -> PathBuf {
        self.work.join("state.ext4")
    }
    /// `palisade-<board>-<version>`, the stem of the disk files.
    pub fn image_name(&self) -> String {
        format!("palisade-{}-{}", self.board.name, self.version)
    }
    pub fn raw(&self) -> PathBuf {
        self.out.join(format!("{}.raw", self.image_name()))
    }
    /// The slot image output (the update payload): the bytes of `root.erofs`.
    pub fn slot_img(&self) -> PathBuf {
        self.out.join(format!("{}.img", self.image_name()))
    }
}

/// The build context: the inputs plus what the stages have produced so far.
#[derive(Debug)]
pub struct Build {
    pub inp: Inputs,
    /// `fetch`: the pinned packages, kernel first.
    pub debs: Vec<fetch::Deb>,
    /// `binaries`: the directory holding the static palisaded and palisade.
    pub node_bins: Option<PathBuf>,
    /// `rootfs`: `(path in image, sha256, size)` of every executable installed.
    pub binaries: Vec<(String, String, u64)>,
    /// `rootfs`: shared objects installed for nft and ip.
    pub libs: Vec<String>,
    /// `modules`: module paths in the root image, load order.
    pub modules: Vec<String>,
    /// `identity`: the digest of every input; GUIDs and serials derive from it.
    pub digest: Option<Vec<u8>>,
    /// `identity`: the partition table.
    pub layout: Option<Layout>,
    /// `erofs`: size of the root image.
    pub root_len: Option<u64>,
    /// `disk`, `qcow2`: the disk files written to `out/`.
    pub images: Vec<PathBuf>,
    /// `payload`: `(file, sha256, size)` of the slot image (the update payload).
    pub update: Option<(String, String, u64)>,
    /// `record`: `(file, sha256, size)` of each disk file.
    pub outputs: Vec<(String, String, u64)>,
}

impl Build {
    pub fn new(inp: Inputs) -> Build {
        Build {
            inp,
            debs: Vec::new(),
            node_bins: None,
            binaries: Vec::new(),
            libs: Vec::new(),
            modules: Vec::new(),
            digest: None,
            layout: None,
            root_len: None,
            images: Vec::new(),
            update: None,
            outputs: Vec::new(),
        }
    }
    pub fn node_bins(&self) -> Result<&Path> {
        self.node_bins
            .as_deref()
            .context("no node binaries: the `binaries` stage has not run")
    }
    pub fn digest(&self) -> Result<&[u8]> {
        self.digest
            .as_deref()
            .context("no input digest: the `identity` stage has not run")
    }
    pub fn layout(&self) -> Result<&Layout> {
        self.layout
            .as_ref()
            .context("no partition layout: the `identity` stage has not run")
    }
    /// Size of a partition in bytes.
    pub fn part_size(&self, name: &str) -> Result<u64> {
        Ok(self
            .layout()?
            .part(name)
            .with_context(|| format!("no partition `{name}` in the layout"))?
            .size)
    }
}

/// One step of the build.
pub struct Stage {
    /// Short name: progress output, timing, errors.
    pub name: &'static str,
    /// What it does, for the progress output.
    pub what: &'static str,
    pub run: fn(&mut Build) -> Result<()>,
}

/// The build, in order.
pub const STAGES: &[Stage] = &[
    Stage {
        name: "fetch",
        what: "downloading pinned Debian packages",
        run: fetch::download,
    },
    Stage {
        name: "extract",
        what: "extracting packages",
        run: fetch::extract,
    },
    Stage {
        name: "modcheck",
        what: "checking the board's modules against the kernel package",
        run: modules::check,
    },
    Stage {
        name: "binaries",
        what: "building palisaded and palisade (profile node, static-pie)",
        run: binaries::run,
    },
    Stage {
        name: "rootfs",
        what: "assembling the root tree",
        run: rootfs::assemble,
    },
    Stage {
        name: "modules",
        what: "selecting kernel modules (depmod)",
        run: modules::run,
    },
    Stage {
        name: "overlay",
        what: "applying rootfs/ overlay and seed config",
        run: rootfs::overlay,
    },
    Stage {
        name: "initramfs",
        what: "making the initramfs",
        run: initramfs::run,
    },
    Stage {
        name: "bootfiles",
        what: "installing the kernel and initramfs in the root tree",
        run: rootfs::boot_files,
    },
    Stage {
        name: "identity",
        what: "deriving GUIDs and the partition layout from the inputs",
        run: identity::run,
    },
    Stage {
        name: "erofs",
        what: "making the erofs root (lz4hc)",
        run: erofs::run,
    },
    Stage {
        name: "esp",
        what: "making the ESP (systemd-boot, boot-counted entries)",
        run: esp::run,
    },
    Stage {
        name: "state",
        what: "making the state partition (ext4)",
        run: state::run,
    },
    Stage {
        name: "disk",
        what: "writing the GPT disk",
        run: disk::run,
    },
    Stage {
        name: "payload",
        what: "writing the slot image (update payload)",
        run: outputs::payload,
    },
    Stage {
        name: "qcow2",
        what: "converting to qcow2",
        run: outputs::qcow2,
    },
    Stage {
        name: "record",
        what: "writing manifest and SBOM",
        run: outputs::record,
    },
];

/// Runs `stages` in order, printing each one's name and wall time. Returns the
/// timings.
pub fn run_all(b: &mut Build, stages: &[Stage]) -> Result<Vec<(&'static str, Duration)>> {
    let p = Progress::new(stages.len() as u64);
    let mut times = Vec::new();
    for s in stages {
        p.start(s);
        let t = Instant::now();
        (s.run)(b).with_context(|| format!("stage `{}` ({})", s.name, s.what))?;
        let d = t.elapsed();
        p.finish(s, d);
        times.push((s.name, d));
    }
    p.bar.finish_and_clear();
    Ok(times)
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
    fn counter(&self) -> String {
        format!(
            "[{}/{}]",
            self.bar.position() + 1,
            self.bar.length().unwrap_or(0)
        )
    }
    fn start(&self, s: &Stage) {
        self.bar.set_message(format!("{}: {}", s.name, s.what));
        if self.bar.is_hidden() {
            eprintln!("palisade-image: {} {}: {}", self.counter(), s.name, s.what);
        }
    }
    fn finish(&self, s: &Stage, d: Duration) {
        let line = format!(
            "palisade-image: {} {} done in {:.2} s",
            self.counter(),
            s.name,
            d.as_secs_f64()
        );
        if self.bar.is_hidden() {
            eprintln!("{line}");
        } else {
            self.bar.println(line);
        }
        self.bar.inc(1);
    }
}

#[cfg(test)]
pub(crate) mod testutil {
    use super::*;

    /// Inputs for running one stage in a temp dir: the qemu board, a fixed epoch.
    pub fn inputs(dir: &Path) -> Inputs {
        let ws = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let board_dir = ws.join("board/boards");
        let board = BoardDef::load(&board_dir, "qemu-x86_64").unwrap();
        let board_text = std::fs::read(board_dir.join("qemu-x86_64.toml")).unwrap();
        let out = dir.join("out");
        std::fs::create_dir_all(out.join("work")).unwrap();
        Inputs {
            seed: ws.join("configs/node.toml"),
            ws,
            board,
            board_text,
            epoch: 1_700_000_000,
            version: "0.0.0-test".into(),
            cmdline_extra: String::new(),
            fleet_root: None,
            work: out.join("work"),
            out,
            cache: dir.join("cache"),
            bin_dir: None,
            lists: None,
            qcow2: false,
        }
    }

    /// True if a host tool is on PATH; tests that need one say so and skip without it.
    pub fn have(tool: &str) -> bool {
        let found = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
            .unwrap_or(false);
        if !found {
            eprintln!("skipped: host tool {tool} not installed (tests/packages.txt)");
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stage_names_unique_and_ordered() {
        let names: Vec<_> = STAGES.iter().map(|s| s.name).collect();
        let mut sorted = names.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), names.len(), "duplicate stage name");
        let pos = |n: &str| names.iter().position(|x| *x == n).unwrap();
        // A module the kernel lacks fails the build before anything slow runs.
        assert!(pos("extract") < pos("modcheck") && pos("modcheck") < pos("binaries"));
        // The identity digest covers every binary, so it follows rootfs.
        assert!(pos("rootfs") < pos("identity"));
        for s in ["erofs", "esp", "state", "disk"] {
            assert!(pos("identity") < pos(s), "{s} needs the layout");
        }
        assert!(pos("modules") < pos("erofs") && pos("overlay") < pos("erofs"));
        // The slot carries its own kernel and initramfs: both are in the root tree
        // before it becomes the erofs image.
        assert!(pos("initramfs") < pos("bootfiles") && pos("bootfiles") < pos("erofs"));
        assert!(pos("erofs") < pos("esp") && pos("initramfs") < pos("esp"));
        assert!(pos("disk") < pos("payload") && pos("payload") < pos("record"));
        assert!(pos("disk") < pos("qcow2") && pos("qcow2") < pos("record"));
    }

    #[test]
    fn stage_order_is_the_documented_one() {
        let names: Vec<_> = STAGES.iter().map(|s| s.name).collect();
        assert_eq!(
            names,
            [
                "fetch",
                "extract",
                "modcheck",
                "binaries",
                "rootfs",
                "modules",
                "overlay",
                "initramfs",
                "bootfiles",
                "identity",
                "erofs",
                "esp",
                "state",
                "disk",
                "payload",
                "qcow2",
                "record"
            ]
        );
    }

    #[test]
    fn erofs_before_bootfiles_says_which_stage_is_missing() {
        let d = tempfile::tempdir().unwrap();
        let mut b = Build::new(testutil::inputs(d.path()));
        // No initramfs yet: bootfiles names it.
        let e = (rootfs::boot_files)(&mut b).unwrap_err();
        assert!(format!("{e:#}").contains("`initramfs` stage"), "{e:#}");
        // A root without the kernel: erofs names bootfiles (before needing the layout).
        std::fs::create_dir_all(b.inp.root()).unwrap();
        let e = (erofs::run)(&mut b).unwrap_err();
        assert!(format!("{e:#}").contains("`bootfiles` stage"), "{e:#}");
    }

    #[test]
    fn cmdline_extra_goes_into_entries_and_installed_board() {
        let d = tempfile::tempdir().unwrap();
        let mut inp = testutil::inputs(d.path());
        assert_eq!(inp.cmdline(), inp.board.cmdline);
        assert_eq!(inp.installed_board().unwrap(), inp.board_text);
        inp.cmdline_extra = "palisade.health_timeout=10".into();
        let want = format!("{} palisade.health_timeout=10", inp.board.cmdline);
        assert_eq!(inp.cmdline(), want);
        let text = String::from_utf8(inp.installed_board().unwrap()).unwrap();
        let back = BoardDef::from_str(&text, Path::new("board.toml")).unwrap();
        assert_eq!(back.cmdline, want);
        assert_eq!(back, inp.board.with_extra_cmdline(&inp.cmdline_extra));
    }

    #[test]
    fn stage_out_of_order_says_which_stage_is_missing() {
        let d = tempfile::tempdir().unwrap();
        let mut b = Build::new(testutil::inputs(d.path()));
        let e = (state::run)(&mut b).unwrap_err();
        assert!(format!("{e:#}").contains("`identity` stage"), "{e:#}");
    }

    #[test]
    fn run_all_runs_in_order_and_times() {
        fn one(b: &mut Build) -> Result<()> {
            b.libs.push("one".into());
            Ok(())
        }
        fn two(b: &mut Build) -> Result<()> {
            b.libs.push("two".into());
            Ok(())
        }
        fn fail(_: &mut Build) -> Result<()> {
            anyhow::bail!("boom")
        }
        let d = tempfile::tempdir().unwrap();
        let mut b = Build::new(testutil::inputs(d.path()));
        let stages = [
            Stage {
                name: "one",
                what: "first",
                run: one,
            },
            Stage {
                name: "two",
                what: "second",
                run: two,
            },
        ];
        let t = run_all(&mut b, &stages).unwrap();
        assert_eq!(b.libs, ["one", "two"]);
        assert_eq!(t.iter().map(|x| x.0).collect::<Vec<_>>(), ["one", "two"]);
        let bad = [Stage {
            name: "bad",
            what: "failing",
            run: fail,
        }];
        let e = run_all(&mut b, &bad).unwrap_err();
        assert!(format!("{e:#}").contains("stage `bad`"), "{e:#}");
    }
}
