//! Copying files into the root tree without ever writing outside it.
//!
//! Refused: absolute or `..` destinations, writing through a symlink that already
//! exists in the tree (it could point anywhere on the build host), and special files
//! (devices, FIFOs, sockets) in the overlay source.

use std::fs;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use anyhow::{bail, Context, Result};

/// The path `rel` inside `root`, refusing anything that could leave `root`.
pub fn safe_dest(root: &Path, rel: &Path) -> Result<PathBuf> {
    let mut out = root.to_path_buf();
    let mut n = 0;
    for c in rel.components() {
        match c {
            Component::Normal(s) => {
                // Every existing ancestor must be a real directory, not a symlink.
                if n > 0 {
                    if let Ok(md) = fs::symlink_metadata(&out) {
                        if !md.is_dir() {
                            bail!(
                                "refusing {}: {} is not a plain directory",
                                rel.display(),
                                out.display()
                            );
                        }
                    }
                }
                out.push(s);
                n += 1;
            }
            Component::CurDir => {}
            _ => bail!(
                "refusing overlay path {}: absolute or contains '..'",
                rel.display()
            ),
        }
    }
    if n == 0 {
        bail!("refusing empty overlay path");
    }
    Ok(out)
}

/// The destination of a new file `rel` inside `root`: parents created, and
/// never a symlink to write through.
fn prepare_dest(root: &Path, rel: &Path) -> Result<PathBuf> {
    let dest = safe_dest(root, rel)?;
    let parent = dest.parent().context("no parent")?;
    mkdirs(root, parent.strip_prefix(root).context("outside root")?)?;
    if fs::symlink_metadata(&dest).map(|m| m.file_type().is_symlink()).unwrap_or(false) {
        bail!("refusing to write through symlink {}", dest.display());
    }
    Ok(dest)
}

/// Copies one regular file to `rel` inside `root`, creating parent directories.
pub fn install_file(root: &Path, rel: &Path, src: &Path, mode: u32) -> Result<()> {
    let dest = prepare_dest(root, rel)?;
    fs::copy(src, &dest).with_context(|| format!("copy {} -> {}", src.display(), dest.display()))?;
    fs::set_permissions(&dest, fs::Permissions::from_mode(mode))?;
    Ok(())
}

/// Writes bytes to `rel` inside `root`.
pub fn install_bytes(root: &Path, rel: &Path, data: &[u8], mode: u32) -> Result<()> {
    let dest = prepare_dest(root, rel)?;
    fs::write(&dest, data)?;
    fs::set_permissions(&dest, fs::Permissions::from_mode(mode))?;
    Ok(())
}

/// Creates a symlink `rel` -> `target` inside `root` (replacing an existing one).
pub fn install_symlink(root: &Path, rel: &Path, target: &str) -> Result<()> {
    let dest = safe_dest(root, rel)?;
    let parent = dest.parent().context("no parent")?;
    mkdirs(root, parent.strip_prefix(root).context("outside root")?)?;
    if let Ok(md) = fs::symlink_metadata(&dest) {
        if md.is_dir() {
            bail!(
                "refusing to replace directory {} with a symlink",
                dest.display()
            );
        }
        fs::remove_file(&dest)?;
    }
    std::os::unix::fs::symlink(target, &dest)?;
    Ok(())
}

/// Creates directories `rel` inside `root` (each component checked).
pub fn mkdirs(root: &Path, rel: &Path) -> Result<()> {
    fs::create_dir_all(root).with_context(|| format!("create {}", root.display()))?;
    let mut cur = PathBuf::new();
    for c in rel.components() {
        cur.push(c);
        let d = safe_dest(root, &cur)?;
        match fs::symlink_metadata(&d) {
            Ok(md) if md.is_dir() => {}
            Ok(_) => bail!("refusing: {} exists and is not a directory", d.display()),
            Err(_) => {
                fs::create_dir(&d)?;
                fs::set_permissions(&d, fs::Permissions::from_mode(0o755))?;
            }
        }
    }
    Ok(())
}

/// Copies the overlay directory `src` onto `root`, sorted, refusing special files.
/// Returns the relative paths installed.
pub fn copy_overlay(src: &Path, root: &Path) -> Result<Vec<PathBuf>> {
    let mut done = Vec::new();
    walk(src, Path::new(""), root, &mut done)?;
    Ok(done)
}

fn walk(base: &Path, rel: &Path, root: &Path, done: &mut Vec<PathBuf>) -> Result<()> {
    let dir = base.join(rel);
    let mut names: Vec<_> = fs::read_dir(&dir)
        .with_context(|| format!("read overlay dir {}", dir.display()))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<Result<_, _>>()?;
    names.sort();
    for name in names {
        let r = rel.join(&name);
        let p = base.join(&r);
        let md = fs::symlink_metadata(&p)?;
        let ft = md.file_type();
        if ft.is_symlink() {
            let t = fs::read_link(&p)?;
            install_symlink(root, &r, &t.to_string_lossy())?;
        } else if ft.is_dir() {
            mkdirs(root, &r)?;
            walk(base, &r, root, done)?;
            continue;
        } else if ft.is_file() {
            let mode = if md.permissions().mode() & 0o111 != 0 {
                0o755
            } else {
                0o644
            };
            install_file(root, &r, &p, mode)?;
        } else if ft.is_block_device() || ft.is_char_device() || ft.is_fifo() || ft.is_socket() {
            bail!("refusing special file in overlay: {}", p.display());
        } else {
            bail!("refusing unknown file type in overlay: {}", p.display());
        }
        done.push(r);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_traversal_and_absolute() {
        let t = tempfile::tempdir().unwrap();
        assert!(safe_dest(t.path(), Path::new("../x")).is_err());
        assert!(safe_dest(t.path(), Path::new("etc/../../x")).is_err());
        assert!(safe_dest(t.path(), Path::new("/etc/passwd")).is_err());
        assert!(safe_dest(t.path(), Path::new("")).is_err());
        assert_eq!(
            safe_dest(t.path(), Path::new("etc/x")).unwrap(),
            t.path().join("etc/x")
        );
    }

    #[test]
    fn refuses_writing_through_symlink() {
        let t = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let root = t.path();
        std::os::unix::fs::symlink(outside.path(), root.join("etc")).unwrap();
        let e = install_bytes(root, Path::new("etc/passwd"), b"x", 0o644).unwrap_err();
        assert!(e.to_string().contains("not a plain directory"), "{e}");
        assert!(!outside.path().join("passwd").exists());
        // A final-component symlink is not written through either.
        std::os::unix::fs::symlink(outside.path().join("f"), root.join("f")).unwrap();
        assert!(install_bytes(root, Path::new("f"), b"x", 0o644).is_err());
        assert!(!outside.path().join("f").exists());
    }

    #[test]
    fn overlay_copies_sorted_and_refuses_fifo() {
        let src = tempfile::tempdir().unwrap();
        let root = tempfile::tempdir().unwrap();
        fs::create_dir_all(src.path().join("etc/palisade")).unwrap();
        fs::write(src.path().join("etc/palisade/b"), "b").unwrap();
        fs::write(src.path().join("etc/a"), "a").unwrap();
        std::os::unix::fs::symlink("/run/resolv.conf", src.path().join("etc/resolv.conf")).unwrap();
        let got = copy_overlay(src.path(), root.path()).unwrap();
        let got: Vec<_> = got
            .iter()
            .map(|p| p.to_string_lossy().into_owned())
            .collect();
        assert_eq!(got, ["etc/a", "etc/palisade/b", "etc/resolv.conf"]);
        assert_eq!(
            fs::read_link(root.path().join("etc/resolv.conf")).unwrap(),
            Path::new("/run/resolv.conf")
        );
        nix_mkfifo(&src.path().join("etc/fifo"));
        assert!(copy_overlay(src.path(), root.path()).is_err());
    }

    fn nix_mkfifo(p: &Path) {
        let st = std::process::Command::new("mkfifo")
            .arg(p)
            .status()
            .unwrap();
        assert!(st.success());
    }
}
