//! GPT layout math and the sfdisk script, all derived from the board's sizes and
//! fixed GUIDs (derived from the build inputs so two builds give the same bytes).

use palisade_board::PartitionSizes;
use sha2::{Digest, Sha256};

pub const MIB: u64 = 1024 * 1024;
pub const SECTOR: u64 = 512;
/// Partition type GUIDs.
pub const TYPE_ESP: &str = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B";
pub const TYPE_LINUX: &str = "0FC63DAF-8483-4772-8E79-3D69D8477DE4";

/// One partition of the disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    /// GPT partition name (PARTLABEL): `esp`, `palisade-a`, `palisade-b`, `state`.
    pub name: &'static str,
    pub type_guid: &'static str,
    pub uuid: String,
    /// Byte offset and size.
    pub offset: u64,
    pub size: u64,
}

/// The whole disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub disk_guid: String,
    pub parts: Vec<Part>,
    /// Total image size in bytes (1 MiB lead-in for the primary GPT, 1 MiB tail for the backup).
    pub total: u64,
}

/// A GUID (RFC 4122 variant, version 4 layout) derived from a seed and a label.
pub fn derived_guid(seed: &[u8], label: &str) -> String {
    let mut h = Sha256::new();
    h.update(seed);
    h.update([0]);
    h.update(label.as_bytes());
    let d = h.finalize();
    let mut b = [0u8; 16];
    b.copy_from_slice(&d[..16]);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    format!(
        "{:02X}{:02X}{:02X}{:02X}-{:02X}{:02X}-{:02X}{:02X}-{:02X}{:02X}-{:02X}{:02X}{:02X}{:02X}{:02X}{:02X}",
        b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]
    )
}

/// A 32-bit FAT volume serial derived from the seed.
pub fn derived_serial(seed: &[u8]) -> String {
    derived_guid(seed, "fat-serial").replace('-', "")[..8].to_string()
}

impl Layout {
    pub fn new(sizes: PartitionSizes, seed: &[u8]) -> Layout {
        let spec: [(&'static str, &'static str, u64); 4] = [
            ("esp", TYPE_ESP, sizes.esp),
            ("palisade-a", TYPE_LINUX, sizes.slot),
            ("palisade-b", TYPE_LINUX, sizes.slot),
            ("state", TYPE_LINUX, sizes.state),
        ];
        let mut offset = MIB;
        let mut parts = Vec::new();
        for (name, type_guid, mib) in spec {
            parts.push(Part {
                name,
                type_guid,
                uuid: derived_guid(seed, name),
                offset,
                size: mib * MIB,
            });
            offset += mib * MIB;
        }
        Layout {
            disk_guid: derived_guid(seed, "disk"),
            parts,
            total: offset + MIB,
        }
    }

    pub fn part(&self, name: &str) -> Option<&Part> {
        self.parts.iter().find(|p| p.name == name)
    }

    /// The sfdisk(8) script that writes this table.
    pub fn sfdisk_script(&self) -> String {
        let mut s = format!(
            "label: gpt\nlabel-id: {}\nunit: sectors\nfirst-lba: 2048\nlast-lba: {}\nsector-size: 512\n\n",
            self.disk_guid,
            self.total / SECTOR - 34
        );
        for p in &self.parts {
            s.push_str(&format!(
                "start={}, size={}, type={}, uuid={}, name=\"{}\"\n",
                p.offset / SECTOR,
                p.size / SECTOR,
                p.type_guid,
                p.uuid,
                p.name
            ));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Layout {
        Layout::new(PartitionSizes { esp: 48, slot: 48, state: 16 }, b"seed")
    }

    #[test]
    fn layout_math() {
        let l = sample();
        assert_eq!(l.parts.len(), 4);
        assert_eq!(l.parts[0].offset, MIB);
        for w in l.parts.windows(2) {
            assert_eq!(w[0].offset + w[0].size, w[1].offset, "contiguous");
        }
        for p in &l.parts {
            assert_eq!(p.offset % MIB, 0, "1 MiB aligned");
        }
        assert_eq!(l.total, (1 + 48 + 48 + 48 + 16 + 1) * MIB);
        let last = l.parts.last().unwrap();
        // The backup GPT (33 sectors) fits after the last partition.
        assert!(last.offset + last.size + 33 * SECTOR <= l.total);
    }

    #[test]
    fn guids_are_derived_and_distinct() {
        let a = Layout::new(
            PartitionSizes {
                esp: 48,
                slot: 48,
                state: 16,
            },
            b"seed",
        );
        let b = Layout::new(
            PartitionSizes {
                esp: 48,
                slot: 48,
                state: 16,
            },
            b"seed",
        );
        let c = Layout::new(
            PartitionSizes {
                esp: 48,
                slot: 48,
                state: 16,
            },
            b"other",
        );
        assert_eq!(a, b);
        assert_ne!(a.disk_guid, c.disk_guid);
        let mut ids: Vec<_> = a.parts.iter().map(|p| p.uuid.clone()).collect();
        ids.push(a.disk_guid.clone());
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), 5);
        assert_eq!(a.disk_guid.len(), 36);
        assert_eq!(&a.disk_guid[14..15], "4");
        assert_eq!(derived_serial(b"seed").len(), 8);
    }

    #[test]
    fn sfdisk_script_snapshot() {
        let l = sample();
        insta::assert_snapshot!(l.sfdisk_script());
    }
}
