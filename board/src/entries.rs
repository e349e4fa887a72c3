//! systemd-boot configuration: loader.conf and one Boot Loader Specification entry
//! per slot, with boot counting (`palisade-a+3.conf`), and the parsing of those
//! counted file names shared by blessing (palisaded) and updates.

use serde::{Deserialize, Serialize};

/// A slot, `a` or `b` (serde: the letter).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Slot {
    A,
    B,
}

impl Slot {
    pub fn letter(self) -> &'static str {
        match self {
            Slot::A => "a",
            Slot::B => "b",
        }
    }
    /// The other slot (the inactive one, when this one is booted).
    pub fn other(self) -> Slot {
        match self {
            Slot::A => Slot::B,
            Slot::B => Slot::A,
        }
    }
    /// GPT partition name of the slot's root.
    pub fn partlabel(self) -> String {
        format!("palisade-{}", self.letter())
    }
    /// Install generation: systemd-boot sorts higher versions first, so the slot
    /// installed last (A in a fresh image) boots first and B is the fallback.
    pub fn fresh_generation(self) -> u32 {
        match self {
            Slot::A => 2,
            Slot::B => 1,
        }
    }
}

impl std::fmt::Display for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.letter())
    }
}

/// The boot-counting parts of an entry file name `palisade-a+2-1.conf`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Counted {
    /// `palisade-a`
    pub id: String,
    /// Tries left.
    pub left: u32,
    /// Tries done.
    pub done: u32,
}

/// Parses `ID+LEFT[-DONE].conf`; `None` for an entry without a counter.
pub fn parse_counted(file: &str) -> Option<Counted> {
    let stem = file.strip_suffix(".conf")?;
    let (id, counter) = stem.rsplit_once('+')?;
    let (left, done) = match counter.split_once('-') {
        Some((l, d)) => (l.parse().ok()?, d.parse().ok()?),
        None => (counter.parse().ok()?, 0),
    };
    if id.is_empty() {
        return None;
    }
    Some(Counted {
        id: id.to_string(),
        left,
        done,
    })
}

/// Boot tries a new entry gets.
pub const BOOT_TRIES: u32 = 3;

/// loader/loader.conf: no menu, pick the first good `palisade-*` entry.
pub fn loader_conf() -> String {
    "timeout 0\ndefault palisade-*\nconsole-mode keep\neditor no\n".to_string()
}

/// File name of a fresh entry with boot counting.
pub fn entry_file_name(slot: Slot) -> String {
    format!("palisade-{}+{BOOT_TRIES}.conf", slot.letter())
}

/// ESP directory of a kernel + initramfs pair, named by their content
/// (`palisade/<release>-<sha256 prefix>`). Slots whose kernels are identical (both
/// slots of a fresh image) share one copy; an update writes a new directory and
/// removes the old one when no entry references it any more.
pub fn kernel_dir(release: &str, digest_hex: &str) -> String {
    format!(
        "palisade/{release}-{}",
        &digest_hex[..digest_hex.len().min(12)]
    )
}

/// The entry text.
pub fn render_entry(
    slot: Slot,
    version: &str,
    generation: u32,
    kdir: &str,
    console: &str,
    extra_cmdline: &str,
) -> String {
    let mut opts = format!(
        "console={console} palisade.root={} palisade.slot={}",
        slot.partlabel(),
        slot.letter()
    );
    if !extra_cmdline.trim().is_empty() {
        opts.push(' ');
        opts.push_str(extra_cmdline.trim());
    }
    format!(
        "title Palisade {version} (slot {})\nversion {generation}\nsort-key palisade\nlinux /{kdir}/vmlinuz\ninitrd /{kdir}/initrd.img\noptions {opts}\n",
        slot.letter().to_uppercase()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_snapshot() {
        insta::assert_snapshot!(render_entry(
            Slot::A,
            "0.1.0",
            2,
            &kernel_dir("6.1.0-56-cloud-amd64", "0123456789abcdef0123"),
            "ttyS0,115200",
            "quiet panic=10"
        ));
        assert_eq!(
            kernel_dir("k", "0123456789abcdef"),
            "palisade/k-0123456789ab"
        );
    }

    #[test]
    fn slot_serde_is_the_letter() {
        assert_eq!(serde_json::to_string(&Slot::B).unwrap(), "\"b\"");
        assert_eq!(serde_json::from_str::<Slot>("\"a\"").unwrap(), Slot::A);
        assert!(serde_json::from_str::<Slot>("\"A\"").is_err());
    }

    #[test]
    fn parses_counters() {
        let c = parse_counted("palisade-a+2-1.conf").unwrap();
        assert_eq!((c.id.as_str(), c.left, c.done), ("palisade-a", 2, 1));
        assert_eq!(parse_counted("palisade-b+3.conf").unwrap().left, 3);
        assert_eq!(parse_counted("palisade-a.conf"), None);
        assert_eq!(parse_counted("palisade-a+x.conf"), None);
        assert_eq!(parse_counted("+1.conf"), None);
    }

    #[test]
    fn names() {
        assert_eq!(entry_file_name(Slot::A), "palisade-a+3.conf");
        assert_eq!(entry_file_name(Slot::B), "palisade-b+3.conf");
        assert!(Slot::A.fresh_generation() > Slot::B.fresh_generation());
        assert!(loader_conf().contains("default palisade-*"));
    }
}
