//! A reproducible initramfs: the newc cpio format, entries sorted, uid/gid 0,
//! every mtime = SOURCE_DATE_EPOCH, inode numbers assigned in order.

use std::collections::BTreeMap;

/// One initramfs member.
#[derive(Debug, Clone)]
pub enum Member {
    Dir,
    File { data: Vec<u8>, exec: bool },
    Symlink(String),
}

/// An initramfs under construction: path (no leading '/') -> member.
#[derive(Debug, Default)]
pub struct Archive {
    members: BTreeMap<String, Member>,
}

impl Archive {
    /// Adds a member; parent directories are added as needed.
    pub fn add(&mut self, path: &str, m: Member) {
        let path = path.trim_start_matches('/').to_string();
        let mut parent = String::new();
        for comp in path
            .split('/')
            .collect::<Vec<_>>()
            .iter()
            .rev()
            .skip(1)
            .rev()
        {
            if !parent.is_empty() {
                parent.push('/');
            }
            parent.push_str(comp);
            self.members.entry(parent.clone()).or_insert(Member::Dir);
        }
        self.members.insert(path, m);
    }

    /// Serialises to newc with the given mtime.
    pub fn to_newc(&self, mtime: u64) -> Vec<u8> {
        let mut out = Vec::new();
        for (ino, (path, m)) in (1u32..).zip(&self.members) {
            let (mode, data): (u32, &[u8]) = match m {
                Member::Dir => (0o040755, &[]),
                Member::File { data, exec } => (if *exec { 0o100755 } else { 0o100644 }, data),
                Member::Symlink(t) => (0o120777, t.as_bytes()),
            };
            let nlink = if matches!(m, Member::Dir) { 2 } else { 1 };
            header(&mut out, ino, mode, nlink, mtime, data.len(), path);
            out.extend_from_slice(data);
            pad4(&mut out);
        }
        header(&mut out, 0, 0, 1, 0, 0, "TRAILER!!!");
        // Pad the archive to 512 bytes like cpio(1) does.
        while out.len() % 512 != 0 {
            out.push(0);
        }
        out
    }
}

#[allow(clippy::manual_is_multiple_of)] // is_multiple_of needs Rust 1.87; MSRV is 1.85
fn pad4(out: &mut Vec<u8>) {
    while out.len() % 4 != 0 {
        out.push(0);
    }
}

fn header(out: &mut Vec<u8>, ino: u32, mode: u32, nlink: u32, mtime: u64, size: usize, name: &str) {
    let fields = [
        ino,
        mode,
        0, // uid
        0, // gid
        nlink,
        u32::try_from(mtime).unwrap_or(u32::MAX),
        u32::try_from(size).unwrap_or(u32::MAX),
        0, // devmajor
        0, // devminor
        0, // rdevmajor
        0, // rdevminor
        u32::try_from(name.len() + 1).unwrap_or(u32::MAX),
        0, // check
    ];
    out.extend_from_slice(b"070701");
    for f in fields {
        out.extend_from_slice(format!("{f:08x}").as_bytes());
    }
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    pad4(out);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newc_is_deterministic_and_sorted() {
        let mut a = Archive::default();
        a.add(
            "/init",
            Member::File {
                data: b"#!/bin/sh\n".to_vec(),
                exec: true,
            },
        );
        a.add("bin/sh", Member::Symlink("busybox".into()));
        a.add(
            "bin/busybox",
            Member::File {
                data: vec![1, 2, 3],
                exec: true,
            },
        );
        let x = a.to_newc(1_700_000_000);
        assert_eq!(x, a.to_newc(1_700_000_000));
        assert_eq!(x.len() % 512, 0);
        let s = String::from_utf8_lossy(&x);
        // bin (dir) comes first, then bin/busybox, bin/sh, init, trailer.
        let p = |n: &str| s.find(n).unwrap();
        assert!(p("bin\0") < p("bin/busybox\0"));
        assert!(p("bin/busybox\0") < p("bin/sh\0"));
        assert!(p("bin/sh\0") < p("init\0"));
        assert!(p("init\0") < p("TRAILER!!!"));
        assert!(s.starts_with("070701"));
    }
}
