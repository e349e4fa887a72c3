//! Boot entries on the mounted ESP (the caller mounts `/efi` and passes its path).
//!
//! The layout is the image builder's (`image/src/stages/esp.rs`):
//! `loader/entries/palisade-<slot>[+<tries>[-<done>]].conf`, one per slot, each
//! pointing at a content-addressed kernel directory
//! `palisade/<release>-<sha256(vmlinuz ++ initrd) prefix>/{vmlinuz,initrd.img}`.
//!
//! An update removes the inactive slot's entries ([`remove_slot_entries`])
//! before overwriting the slot, and after writing it installs a boot-counted
//! entry for the new slot ([`install_entry`]), taking the kernel, initramfs,
//! board definition and version from the new slot's root. Every file is
//! written to a temporary name, fsynced and renamed, and the directory fsynced;
//! systemd-boot only reads `*.conf`, so a temporary entry is never booted.
//! Everything that can refuse (missing files, a bad board definition or
//! os-release, too little space) is checked before the ESP is touched.

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use palisade_board::entries::{self, parse_counted, Slot};
use palisade_board::{BoardDef, BoardError};

use crate::slot::hex;

/// Kernel, relative to a slot's root.
pub const ROOT_VMLINUZ: &str = "usr/lib/palisade/boot/vmlinuz";
/// Initramfs, relative to a slot's root.
pub const ROOT_INITRD: &str = "usr/lib/palisade/boot/initrd.img";
/// Board definition, relative to a slot's root.
pub const ROOT_BOARD: &str = "usr/share/palisade/board.toml";
/// os-release, relative to a slot's root.
pub const ROOT_OS_RELEASE: &str = "etc/os-release";

/// Room kept free beyond the files' sizes (FAT cluster rounding, directory entries).
const SPACE_SLACK: u64 = 256 * 1024;

/// Errors of boot entry handling. Install refusals leave the ESP unchanged.
#[derive(Debug, thiserror::Error)]
pub enum EspError {
    /// A file operation on the ESP or the new root failed.
    #[error("{op} {path}: {source}")]
    Io {
        path: PathBuf,
        op: &'static str,
        source: io::Error,
    },
    /// The new slot's root lacks a file an entry needs.
    #[error("new root lacks {path}: is it a Palisade slot image?")]
    MissingFile { path: PathBuf },
    /// The new slot's board definition does not parse or validate.
    #[error("new root's board definition: {0}")]
    Board(#[from] BoardError),
    /// The new slot's os-release has no usable `VERSION_ID`.
    #[error("{path}: {message}")]
    OsRelease { path: PathBuf, message: String },
    /// Not enough free space on the ESP for the kernel directory and entry.
    #[error("ESP has {available} bytes free, the new kernel and entry need {needed}")]
    NoSpace { needed: u64, available: u64 },
    /// A boot entry needs at least one try.
    #[error("boot tries must be at least 1, got {0}")]
    InvalidTries(u32),
}

fn io_err(path: &Path, op: &'static str) -> impl FnOnce(io::Error) -> EspError {
    let path = path.to_path_buf();
    move |source| EspError::Io { path, op, source }
}

/// The entry installed by [`install_entry`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstalledEntry {
    /// File name under `loader/entries` (`palisade-b+3.conf`).
    pub file: String,
    /// Kernel directory relative to the ESP (`palisade/<release>-<digest>`).
    pub kernel_dir: String,
    /// The entry's `version` line (sort order: higher boots first).
    pub generation: u32,
    /// The slot's version (os-release `VERSION_ID`).
    pub version: String,
    /// Kernel directories removed because no entry references them any more.
    pub removed_kernel_dirs: Vec<String>,
}

/// The boot state of a slot's entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryState {
    /// `palisade-<slot>.conf`: blessed, no counting.
    Blessed,
    /// `palisade-<slot>+<left>[-<done>].conf`: on trial.
    Counted { left: u32, done: u32 },
    /// No entry: the slot does not boot.
    Missing,
}

fn entries_dir(esp: &Path) -> PathBuf {
    esp.join("loader/entries")
}

fn entry_id(slot: Slot) -> String {
    format!("palisade-{}", slot.letter())
}

/// Whether `file` is an entry of `slot` (blessed or counted).
fn is_slot_entry(file: &str, slot: Slot) -> bool {
    let id = entry_id(slot);
    file == format!("{id}.conf") || parse_counted(file).is_some_and(|c| c.id == id)
}

fn list_dir(dir: &Path) -> Result<Vec<String>, EspError> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).map_err(io_err(dir, "list"))? {
        let e = e.map_err(io_err(dir, "list"))?;
        out.push(e.file_name().to_string_lossy().into_owned());
    }
    out.sort();
    Ok(out)
}

fn sync_dir(dir: &Path) -> Result<(), EspError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir, "fsync directory"))
}

/// Deletes `slot`'s entries (`palisade-<slot>.conf`, `palisade-<slot>+*.conf`)
/// and fsyncs the directory; returns the names removed. Call before the slot's
/// bytes are overwritten, so no entry ever points at a half-written slot.
pub fn remove_slot_entries(esp: &Path, slot: Slot) -> Result<Vec<String>, EspError> {
    let dir = entries_dir(esp);
    let mut removed = Vec::new();
    for f in list_dir(&dir)? {
        if is_slot_entry(&f, slot) {
            let p = dir.join(&f);
            fs::remove_file(&p).map_err(io_err(&p, "remove"))?;
            removed.push(f);
        }
    }
    sync_dir(&dir)?;
    Ok(removed)
}

/// The state of `slot`'s entry. Several entries for one slot (which neither
/// the builder nor an update writes) report the counted one.
pub fn entry_state(esp: &Path, slot: Slot) -> Result<EntryState, EspError> {
    let id = entry_id(slot);
    let mut state = EntryState::Missing;
    for f in list_dir(&entries_dir(esp))? {
        if let Some(c) = parse_counted(&f).filter(|c| c.id == id) {
            return Ok(EntryState::Counted {
                left: c.left,
                done: c.done,
            });
        }
        if f == format!("{id}.conf") {
            state = EntryState::Blessed;
        }
    }
    Ok(state)
}

/// `VERSION_ID` of an os-release text (quotes removed).
pub fn os_release_version(text: &str) -> Option<String> {
    let raw = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("VERSION_ID="))?
        .trim();
    let v = raw
        .strip_prefix('"')
        .and_then(|r| r.strip_suffix('"'))
        .or_else(|| raw.strip_prefix('\'').and_then(|r| r.strip_suffix('\'')))
        .unwrap_or(raw);
    let ok = !v.is_empty()
        && v.len() <= 64
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._+-~".contains(&b));
    ok.then(|| v.to_string())
}

/// Highest `version N` line over the entry files.
fn max_generation(dir: &Path, files: &[String]) -> Result<u32, EspError> {
    let mut max = 0;
    for f in files.iter().filter(|f| f.ends_with(".conf")) {
        let p = dir.join(f);
        let text = fs::read_to_string(&p).map_err(io_err(&p, "read"))?;
        for l in text.lines() {
            if let Some(n) = l
                .strip_prefix("version")
                .filter(|r| r.starts_with([' ', '\t']))
                .and_then(|r| r.trim().parse::<u32>().ok())
            {
                max = max.max(n);
            }
        }
    }
    Ok(max)
}

/// Kernel directories (`palisade/<name>`) the entry files reference.
/// Removes the kernel directories under `pdir` that none of the entry
/// `files` (in `edir`) references, except `keep`; returns their ESP paths.
fn remove_unreferenced(pdir: &Path, edir: &Path, files: &[String], keep: &str) -> Result<Vec<String>, EspError> {
    let referenced = referenced_kernel_dirs(edir, files)?;
    let mut removed = Vec::new();
    if !pdir.is_dir() {
        return Ok(removed);
    }
    for name in list_dir(pdir)? {
        let p = pdir.join(&name);
        if name == keep || referenced.contains(&name) || !p.is_dir() {
            continue;
        }
        fs::remove_dir_all(&p).map_err(io_err(&p, "remove"))?;
        removed.push(format!("palisade/{name}"));
    }
    if !removed.is_empty() {
        sync_dir(pdir)?;
    }
    Ok(removed)
}

fn referenced_kernel_dirs(dir: &Path, files: &[String]) -> Result<BTreeSet<String>, EspError> {
    let mut out = BTreeSet::new();
    for f in files.iter().filter(|f| f.ends_with(".conf")) {
        let p = dir.join(f);
        let text = fs::read_to_string(&p).map_err(io_err(&p, "read"))?;
        for l in text.lines() {
            let Some(path) = l
                .strip_prefix("linux ")
                .or_else(|| l.strip_prefix("initrd "))
            else {
                continue;
            };
            let mut parts = path.trim().trim_start_matches('/').split('/');
            if let (Some("palisade"), Some(name)) = (parts.next(), parts.next()) {
                out.insert(name.to_string());
            }
        }
    }
    Ok(out)
}

fn free_bytes(esp: &Path) -> Result<u64, EspError> {
    let st =
        nix::sys::statvfs::statvfs(esp).map_err(|e| io_err(esp, "statvfs")(io::Error::from(e)))?;
    // fsblkcnt_t and c_ulong are u32 on some 32-bit targets.
    #[allow(clippy::useless_conversion)]
    let (blocks, frag) = (
        u64::from(st.blocks_available()),
        u64::from(st.fragment_size()),
    );
    Ok(blocks.saturating_mul(frag))
}

/// Writes `bytes` (or the contents of `from`) to `dest` via `dest.new`, fsync, rename.
fn write_atomic(dest: &Path, content: Content<'_>) -> Result<(), EspError> {
    let mut name = dest.file_name().unwrap_or_default().to_os_string();
    name.push(".new");
    let tmp = dest.with_file_name(name);
    let mut f = File::create(&tmp).map_err(io_err(&tmp, "create"))?;
    match content {
        Content::Bytes(b) => f.write_all(b).map_err(io_err(&tmp, "write"))?,
        Content::File(src) => {
            let mut s = File::open(src).map_err(io_err(src, "open"))?;
            io::copy(&mut s, &mut f).map_err(io_err(&tmp, "write"))?;
        }
    }
    f.sync_all().map_err(io_err(&tmp, "fsync"))?;
    drop(f);
    fs::rename(&tmp, dest).map_err(io_err(dest, "rename into place"))
}

enum Content<'a> {
    Bytes(&'a [u8]),
    File(&'a Path),
}

fn file_len(p: &Path) -> Result<u64, EspError> {
    fs::metadata(p).map(|m| m.len()).map_err(io_err(p, "stat"))
}

/// Installs a boot-counted entry (`palisade-<slot>+<tries>.conf`) for the slot
/// whose root is mounted at `new_root`: copies its kernel and initramfs into
/// their content-addressed directory, writes the entry with the next
/// generation, and removes kernel directories no entry references any more.
/// Refuses, with the ESP unchanged, when the root lacks a needed file, its
/// board definition or os-release is unusable, or the ESP lacks space.
pub fn install_entry(
    esp: &Path,
    slot: Slot,
    new_root: &Path,
    tries: u32,
) -> Result<InstalledEntry, EspError> {
    install_with(esp, slot, new_root, tries, &free_bytes)
}

/// [`install_entry`] with the free-space probe passed in (tests).
fn install_with(
    esp: &Path,
    slot: Slot,
    new_root: &Path,
    tries: u32,
    free_bytes: &dyn Fn(&Path) -> Result<u64, EspError>,
) -> Result<InstalledEntry, EspError> {
    if tries == 0 {
        return Err(EspError::InvalidTries(tries));
    }
    let [vmlinuz, initrd, board_path, os_release] =
        [ROOT_VMLINUZ, ROOT_INITRD, ROOT_BOARD, ROOT_OS_RELEASE].map(|r| new_root.join(r));
    for p in [&vmlinuz, &initrd, &board_path, &os_release] {
        if !p.is_file() {
            return Err(EspError::MissingFile { path: p.clone() });
        }
    }
    let board_text = fs::read_to_string(&board_path).map_err(io_err(&board_path, "read"))?;
    let board = BoardDef::from_str(&board_text, &board_path)?;
    let os_text = fs::read_to_string(&os_release).map_err(io_err(&os_release, "read"))?;
    let version = os_release_version(&os_text).ok_or_else(|| EspError::OsRelease {
        path: os_release.clone(),
        message: "no usable VERSION_ID= line (expected [A-Za-z0-9._+~-], at most 64)".into(),
    })?;

    // The builder's digest: sha256(vmlinuz bytes ++ initrd bytes).
    let mut h = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; 1 << 20];
    for p in [&vmlinuz, &initrd] {
        let mut f = File::open(p).map_err(io_err(p, "open"))?;
        loop {
            let n = f.read(&mut buf).map_err(io_err(p, "read"))?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
        }
    }
    let kdir = entries::kernel_dir(&board.kernel.release, &hex(h.finish().as_ref()));

    let edir = entries_dir(esp);
    let files = list_dir(&edir)?;
    let generation = max_generation(&edir, &files)?.saturating_add(1);
    let text = entries::render_entry(
        slot,
        &version,
        generation,
        &kdir,
        &board.console,
        &board.cmdline,
    );

    let kpath = esp.join(&kdir);
    let pdir = esp.join("palisade");
    let new_name = kdir.trim_start_matches("palisade/").to_string();
    // Room first: kernel directories that only this slot's (outgoing)
    // entries used go before the new one is copied, so the ESP needs room
    // for two kernels (one per slot), never three.
    let other: Vec<String> = files.iter().filter(|f| !is_slot_entry(f, slot)).cloned().collect();
    let mut removed = remove_unreferenced(&pdir, &edir, &other, &new_name)?;
    // Files are renamed into place whole, so present means complete (same
    // directory name, same content): nothing to copy again.
    let present = kpath.join("vmlinuz").is_file() && kpath.join("initrd.img").is_file();
    let copy = if present { 0 } else { file_len(&vmlinuz)? + file_len(&initrd)? };
    let needed = copy + text.len() as u64 + SPACE_SLACK;
    let available = free_bytes(esp)?;
    if needed > available {
        return Err(EspError::NoSpace { needed, available });
    }
    if !present {
        fs::create_dir_all(&kpath).map_err(io_err(&kpath, "create"))?;
        write_atomic(&kpath.join("vmlinuz"), Content::File(&vmlinuz))?;
        write_atomic(&kpath.join("initrd.img"), Content::File(&initrd))?;
        sync_dir(&kpath)?;
        sync_dir(&pdir)?;
    }

    let file = format!("{}+{tries}.conf", entry_id(slot));
    write_atomic(&edir.join(&file), Content::Bytes(text.as_bytes()))?;
    for f in &files {
        if *f != file && is_slot_entry(f, slot) {
            let p = edir.join(f);
            fs::remove_file(&p).map_err(io_err(&p, "remove"))?;
        }
    }
    sync_dir(&edir)?;

    // Garbage: kernel directories no remaining entry references.
    let files = list_dir(&edir)?;
    removed.extend(remove_unreferenced(&pdir, &edir, &files, &new_name)?);
    Ok(InstalledEntry {
        file,
        kernel_dir: kdir,
        generation,
        version,
        removed_kernel_dirs: removed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};

    const BOARD: &str = include_str!("../../../board/boards/qemu-x86_64.toml");

    fn put(p: &Path, bytes: &[u8]) {
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, bytes).unwrap();
    }

    fn digest_dir(release: &str, vmlinuz: &[u8], initrd: &[u8]) -> String {
        let mut h = Sha256::new();
        h.update(vmlinuz);
        h.update(initrd);
        entries::kernel_dir(release, &hex(&h.finalize()))
    }

    /// An ESP as the image builder lays it out, both slots on one kernel.
    fn fresh_esp(esp: &Path) -> String {
        let board = BoardDef::from_str(BOARD, Path::new("board.toml")).unwrap();
        put(
            &esp.join("loader/loader.conf"),
            entries::loader_conf().as_bytes(),
        );
        put(&esp.join("EFI/BOOT/BOOTX64.EFI"), b"sd-boot");
        let kdir = digest_dir(&board.kernel.release, b"old kernel", b"old initrd");
        put(&esp.join(&kdir).join("vmlinuz"), b"old kernel");
        put(&esp.join(&kdir).join("initrd.img"), b"old initrd");
        for slot in [Slot::A, Slot::B] {
            let e = entries::render_entry(
                slot,
                "0.1.0",
                slot.fresh_generation(),
                &kdir,
                &board.console,
                &board.cmdline,
            );
            put(
                &esp.join("loader/entries")
                    .join(entries::entry_file_name(slot)),
                e.as_bytes(),
            );
        }
        kdir
    }

    fn new_root(root: &Path, version: &str, kernel: &[u8]) {
        put(&root.join(ROOT_VMLINUZ), kernel);
        put(&root.join(ROOT_INITRD), b"new initrd");
        put(&root.join(ROOT_BOARD), BOARD.as_bytes());
        put(
            &root.join(ROOT_OS_RELEASE),
            format!("NAME=\"Palisade\"\nID=palisade\nVERSION_ID=\"{version}\"\n").as_bytes(),
        );
    }

    /// Every path and file content under `dir`, hashed.
    fn tree_hash(dir: &Path) -> String {
        fn walk(base: &Path, dir: &Path, h: &mut Sha256) {
            let mut names: Vec<_> = fs::read_dir(dir)
                .unwrap()
                .map(|e| e.unwrap().path())
                .collect();
            names.sort();
            for p in names {
                h.update(p.strip_prefix(base).unwrap().to_string_lossy().as_bytes());
                if p.is_dir() {
                    h.update(b"/");
                    walk(base, &p, h);
                } else {
                    h.update(fs::read(&p).unwrap());
                }
            }
        }
        let mut h = Sha256::new();
        walk(dir, dir, &mut h);
        hex(&h.finalize())
    }

    #[test]
    fn update_cycle_on_a_fresh_image_layout() {
        let d = tempfile::tempdir().unwrap();
        let esp = d.path().join("esp");
        let old_kdir = fresh_esp(&esp);
        let root = d.path().join("root-b");
        new_root(&root, "0.2.0", b"new kernel");

        assert_eq!(
            entry_state(&esp, Slot::B).unwrap(),
            EntryState::Counted { left: 3, done: 0 }
        );
        assert_eq!(
            remove_slot_entries(&esp, Slot::B).unwrap(),
            ["palisade-b+3.conf"]
        );
        assert_eq!(entry_state(&esp, Slot::B).unwrap(), EntryState::Missing);

        let got = install_entry(&esp, Slot::B, &root, 3).unwrap();
        assert_eq!(got.file, "palisade-b+3.conf");
        assert_eq!(got.generation, 3);
        assert_eq!(got.version, "0.2.0");
        // Slot A still boots the old kernel directory: kept.
        assert!(got.removed_kernel_dirs.is_empty());
        assert!(esp.join(&old_kdir).is_dir());
        let kdir = digest_dir("6.1.0-56-cloud-amd64", b"new kernel", b"new initrd");
        assert_eq!(got.kernel_dir, kdir);
        assert_eq!(
            fs::read(esp.join(&kdir).join("vmlinuz")).unwrap(),
            b"new kernel"
        );
        assert_eq!(
            fs::read(esp.join(&kdir).join("initrd.img")).unwrap(),
            b"new initrd"
        );
        let text = fs::read_to_string(esp.join("loader/entries/palisade-b+3.conf")).unwrap();
        assert_eq!(
            text,
            format!(
                "title Palisade 0.2.0 (slot B)\nversion 3\nsort-key palisade\nlinux /{kdir}/vmlinuz\ninitrd /{kdir}/initrd.img\noptions console=ttyS0,115200 palisade.root=palisade-b palisade.slot=b quiet loglevel=4 panic=10 nowatchdog\n"
            )
        );
        assert!(kdir.starts_with("palisade/6.1.0-56-cloud-amd64-"));
        // No temporary files left.
        assert!(fs::read_dir(esp.join("loader/entries")).unwrap().all(|e| e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .ends_with(".conf")));

        // Slot B blessed by palisaded, then the next update goes to A.
        fs::rename(
            esp.join("loader/entries/palisade-b+3.conf"),
            esp.join("loader/entries/palisade-b.conf"),
        )
        .unwrap();
        assert_eq!(entry_state(&esp, Slot::B).unwrap(), EntryState::Blessed);
        let root_a = d.path().join("root-a");
        new_root(&root_a, "0.3.0", b"newer kernel");
        assert_eq!(
            remove_slot_entries(&esp, Slot::A).unwrap(),
            ["palisade-a+3.conf"]
        );
        let got = install_entry(&esp, Slot::A, &root_a, 2).unwrap();
        assert_eq!(
            (got.file.as_str(), got.generation),
            ("palisade-a+2.conf", 4)
        );
        // The first kernel directory is referenced by nothing now.
        assert_eq!(got.removed_kernel_dirs, std::slice::from_ref(&old_kdir));
        assert!(!esp.join(&old_kdir).exists());
        assert!(esp.join(&kdir).is_dir(), "slot B's kernel stays");
        assert!(esp.join(&got.kernel_dir).is_dir());
        assert_eq!(
            entry_state(&esp, Slot::A).unwrap(),
            EntryState::Counted { left: 2, done: 0 }
        );
    }

    #[test]
    fn same_kernel_reuses_its_directory_and_replaces_stale_entries() {
        let d = tempfile::tempdir().unwrap();
        let esp = d.path().join("esp");
        fresh_esp(&esp);
        let root = d.path().join("root");
        new_root(&root, "0.2.0", b"new kernel");
        // Without removing B's entry first: install replaces it.
        let first = install_entry(&esp, Slot::B, &root, 3).unwrap();
        fs::rename(
            esp.join("loader/entries/palisade-b+3.conf"),
            esp.join("loader/entries/palisade-b+2-1.conf"),
        )
        .unwrap();
        let second = install_entry(&esp, Slot::B, &root, 3).unwrap();
        assert_eq!(second.kernel_dir, first.kernel_dir);
        assert_eq!(second.generation, first.generation + 1);
        let names = list_dir(&esp.join("loader/entries")).unwrap();
        assert_eq!(names, ["palisade-a+3.conf", "palisade-b+3.conf"]);
    }

    #[test]
    fn refusals_leave_the_esp_unchanged() {
        let d = tempfile::tempdir().unwrap();
        let esp = d.path().join("esp");
        fresh_esp(&esp);
        let before = tree_hash(&esp);
        for missing in [ROOT_VMLINUZ, ROOT_INITRD, ROOT_BOARD, ROOT_OS_RELEASE] {
            let root = d.path().join(format!("root-{}", missing.replace('/', "_")));
            new_root(&root, "0.2.0", b"new kernel");
            fs::remove_file(root.join(missing)).unwrap();
            let e = install_entry(&esp, Slot::B, &root, 3).unwrap_err();
            assert!(matches!(e, EspError::MissingFile { .. }), "{e}");
            assert!(e.to_string().contains(missing), "{e}");
            assert_eq!(tree_hash(&esp), before, "{missing}");
        }
        let root = d.path().join("root-bad");
        new_root(&root, "0.2.0", b"new kernel");
        put(&root.join(ROOT_OS_RELEASE), b"ID=palisade\n");
        assert!(matches!(
            install_entry(&esp, Slot::B, &root, 3),
            Err(EspError::OsRelease { .. })
        ));
        new_root(&root, "0.2.0", b"new kernel");
        put(&root.join(ROOT_BOARD), b"name = \"x\"\n");
        assert!(matches!(
            install_entry(&esp, Slot::B, &root, 3),
            Err(EspError::Board(_))
        ));
        new_root(&root, "0.2.0", b"new kernel");
        assert!(matches!(
            install_entry(&esp, Slot::B, &root, 0),
            Err(EspError::InvalidTries(0))
        ));
        assert_eq!(tree_hash(&esp), before);
    }

    /// Bytes of every file under `dir`.
    fn used(dir: &Path) -> u64 {
        fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .map(|p| if p.is_dir() { used(&p) } else { fs::metadata(&p).unwrap().len() })
            .sum()
    }

    #[test]
    fn an_esp_with_room_for_two_kernels_takes_a_third_version() {
        // A -> B -> A' with a new kernel each time, on an ESP that holds two
        // kernels and little more: the kernel only the outgoing slot used goes
        // before the new one is copied.
        let d = tempfile::tempdir().unwrap();
        let esp = d.path().join("esp");
        let old = fresh_esp(&esp);
        let k = |n: u8| vec![n; 4000];
        let capacity = used(&esp) + 2 * 4000 + 2 * 10 + 4096 + SPACE_SLACK;
        let probe = |p: &Path| -> Result<u64, EspError> { Ok(capacity.saturating_sub(used(p))) };
        for (i, (slot, version)) in [(Slot::B, "0.2.0"), (Slot::A, "0.3.0"), (Slot::B, "0.4.0")].into_iter().enumerate() {
            let root = d.path().join(format!("root-{version}"));
            new_root(&root, version, &k(i as u8 + 1));
            remove_slot_entries(&esp, slot).unwrap();
            let e = install_with(&esp, slot, &root, 3, &probe).unwrap_or_else(|e| panic!("{version}: {e}"));
            assert_eq!(e.version, version);
            let dirs = list_dir(&esp.join("palisade")).unwrap();
            assert_eq!(dirs.len(), 2, "{version}: one kernel per slot: {dirs:?}");
            if i == 0 {
                assert!(dirs.contains(&old.trim_start_matches("palisade/").to_string()), "A still boots the old one");
            }
        }
    }

    #[test]
    fn os_release_versions() {
        assert_eq!(
            os_release_version("VERSION_ID=0.2.0\n").as_deref(),
            Some("0.2.0")
        );
        assert_eq!(
            os_release_version("A=1\nVERSION_ID=\"1.0.0-rc.1\"").as_deref(),
            Some("1.0.0-rc.1")
        );
        assert_eq!(os_release_version("VERSION_ID='2'").as_deref(), Some("2"));
        assert_eq!(os_release_version("VERSION_ID=\"\"\n"), None);
        assert_eq!(os_release_version("VERSION_ID=1 2\n"), None);
        assert_eq!(os_release_version("VERSION=1\n"), None);
    }

    #[test]
    fn remove_only_touches_the_slot() {
        let d = tempfile::tempdir().unwrap();
        let e = d.path().join("loader/entries");
        for f in [
            "palisade-a.conf",
            "palisade-a+1-2.conf",
            "palisade-b+3.conf",
            "palisade-ab.conf",
            "other.conf",
        ] {
            put(&e.join(f), b"x");
        }
        assert_eq!(
            remove_slot_entries(d.path(), Slot::A).unwrap(),
            ["palisade-a+1-2.conf", "palisade-a.conf"]
        );
        assert_eq!(
            list_dir(&e).unwrap(),
            ["other.conf", "palisade-ab.conf", "palisade-b+3.conf"]
        );
    }
}
