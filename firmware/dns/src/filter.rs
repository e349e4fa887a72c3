//! Block and allow lists: parsing (hosts, plain domains, adblock `||name^`,
//! `*.name` wildcards, `@@` exceptions) and a compact matcher.
//!
//! Names are kept in DNS wire form (lowercase, without the root label) in one
//! byte arena; an open-addressing table of `u32` offsets indexes the arena.
//! A 1M-name list costs roughly `sum(name lengths) + 2 bytes` per name plus
//! 4 bytes per table slot (load factor <= 0.5): about 30 MB, no per-name heap
//! allocation. Matching a name costs one table probe per label suffix.

use std::io::BufRead;
use std::path::Path;

/// The entry blocks (or allows) the name itself.
const EXACT: u8 = 1;
/// The entry blocks (or allows) every name below it.
const SUBTREE: u8 = 2;

/// Names that hosts files list for the local machine; never list entries.
const HOSTS_BOILERPLATE: &[&str] = &[
    "localhost",
    "localhost.localdomain",
    "local",
    "broadcasthost",
    "ip6-localhost",
    "ip6-loopback",
    "ip6-localnet",
    "ip6-mcastprefix",
    "ip6-allnodes",
    "ip6-allrouters",
    "ip6-allhosts",
    "0.0.0.0",
];

/// A set of names with exact and subtree flags. Compact, immutable once built.
#[derive(Clone)]
pub struct NameSet {
    /// `[flags][len][wire name (len bytes)]` per entry.
    arena: Vec<u8>,
    /// `0` is empty, otherwise `offset + 1` into `arena`.
    table: Vec<u32>,
    len: usize,
}

impl std::fmt::Debug for NameSet {
    // Never print the names: a list is operator data, but the habit of not
    // dumping names anywhere is what keeps query names out of logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NameSet({} names)", self.len)
    }
}

impl Default for NameSet {
    fn default() -> Self {
        NameSet::with_capacity(0, 0)
    }
}

#[inline]
fn hash(bytes: &[u8]) -> u64 {
    // FNV-1a with a final avalanche; names are short, this is cheap.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h
}

impl NameSet {
    /// `names`: expected number of names; `bytes`: expected arena bytes.
    pub fn with_capacity(names: usize, bytes: usize) -> NameSet {
        let slots = (names.max(8) * 2).next_power_of_two();
        NameSet {
            arena: Vec::with_capacity(bytes),
            table: vec![0; slots],
            len: 0,
        }
    }

    /// Number of distinct names.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes held by this set (arena and table capacity).
    pub fn heap_bytes(&self) -> usize {
        self.arena.capacity() + self.table.capacity() * 4
    }

    #[cfg(test)]
    fn entry(&self, off: usize) -> (&[u8], u8) {
        let flags = self.arena[off];
        let len = self.arena[off + 1] as usize;
        (&self.arena[off + 2..off + 2 + len], flags)
    }

    /// Slot index holding `wire`, or the empty slot where it would go.
    #[inline]
    fn find_slot(&self, wire: &[u8]) -> (usize, bool) {
        let mask = self.table.len() - 1;
        let mut i = (hash(wire) as usize) & mask;
        loop {
            let v = self.table[i];
            if v == 0 {
                return (i, false);
            }
            let off = (v - 1) as usize;
            let len = self.arena[off + 1] as usize;
            if len == wire.len() && &self.arena[off + 2..off + 2 + len] == wire {
                return (i, true);
            }
            i = (i + 1) & mask;
        }
    }

    #[cfg(test)]
    fn grow(&mut self) {
        let mut table = vec![0u32; self.table.len() * 2];
        let mask = table.len() - 1;
        for &v in &self.table {
            if v == 0 {
                continue;
            }
            let (name, _) = self.entry((v - 1) as usize);
            let mut i = (hash(name) as usize) & mask;
            while table[i] != 0 {
                i = (i + 1) & mask;
            }
            table[i] = v;
        }
        self.table = table;
    }

    /// Insert a wire-form lowercase name (no root label) with `flags`;
    /// duplicates merge their flags.
    #[cfg(test)]
    fn insert_wire(&mut self, wire: &[u8], flags: u8) {
        debug_assert!(!wire.is_empty() && wire.len() <= 255);
        let (slot, found) = self.find_slot(wire);
        if found {
            let off = (self.table[slot] - 1) as usize;
            self.arena[off] |= flags;
            return;
        }
        let off = self.arena.len();
        // The arena is indexed by u32; 4 GB of names is far beyond any list.
        let Ok(stored) = u32::try_from(off + 1) else {
            return;
        };
        self.arena.push(flags);
        self.arena.push(wire.len() as u8);
        self.arena.extend_from_slice(wire);
        self.table[slot] = stored;
        self.len += 1;
        if self.len * 2 > self.table.len() {
            self.grow();
        }
    }

    /// Release spare arena capacity after loading.
    pub fn shrink(&mut self) {
        self.arena.shrink_to_fit();
    }

    /// Build a set from an arena of `[flags][len][name]` entries (duplicates
    /// allowed: their flags are merged into the first copy). The table is
    /// sized once from the entry count: load factor <= 0.5, no regrowth.
    fn from_arena(mut arena: Vec<u8>, entries: usize) -> NameSet {
        arena.shrink_to_fit();
        let slots = (entries.max(4) * 2).next_power_of_two();
        let mut set = NameSet {
            arena,
            table: vec![0; slots],
            len: 0,
        };
        let mut off = 0usize;
        while off < set.arena.len() {
            let flags = set.arena[off];
            let len = set.arena[off + 1] as usize;
            let (slot, found) = set.find_slot(&set.arena[off + 2..off + 2 + len]);
            if found {
                let first = (set.table[slot] - 1) as usize;
                set.arena[first] |= flags;
            } else if let Ok(v) = u32::try_from(off + 1) {
                set.table[slot] = v;
                set.len += 1;
            }
            off += 2 + len;
        }
        set
    }

    /// Does the set cover `wire` (lowercase wire form, no root label)?
    /// The name itself matches an EXACT entry; any ancestor matches a
    /// SUBTREE entry.
    #[inline]
    pub fn matches(&self, wire: &[u8]) -> bool {
        if self.len == 0 {
            return false;
        }
        let mut pos = 0usize;
        while pos < wire.len() {
            let suffix = &wire[pos..];
            let (slot, found) = self.find_slot(suffix);
            if found {
                let off = (self.table[slot] - 1) as usize;
                let flags = self.arena[off];
                let want = if pos == 0 { EXACT } else { SUBTREE };
                if flags & want != 0 {
                    return true;
                }
            }
            pos += 1 + wire[pos] as usize;
        }
        false
    }
}

/// Convert a presentation name (`ads.example.com`, no trailing dot needed)
/// to lowercase wire form without the root label. `None` if it is not a
/// valid host name for a list (empty label, label > 63, name > 253, or a
/// character outside `[a-z0-9_-]`).
pub fn name_to_wire(text: &[u8], out: &mut Vec<u8>) -> Option<usize> {
    out.clear();
    let text = text.strip_suffix(b".").unwrap_or(text);
    if text.is_empty() || text.len() > 253 {
        return None;
    }
    let mut labels = 0;
    for label in text.split(|b| *b == b'.') {
        if label.is_empty() || label.len() > 63 {
            return None;
        }
        out.push(label.len() as u8);
        for &b in label {
            let b = b.to_ascii_lowercase();
            if !(b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_') {
                return None;
            }
            out.push(b);
        }
        labels += 1;
    }
    Some(labels)
}

/// Wire form (no root label) back to text, for tests and diagnostics of lists
/// (never for query names).
pub fn wire_to_text(wire: &[u8]) -> String {
    let mut s = String::new();
    let mut pos = 0;
    while pos < wire.len() {
        let l = wire[pos] as usize;
        if !s.is_empty() {
            s.push('.');
        }
        s.push_str(&String::from_utf8_lossy(&wire[pos + 1..pos + 1 + l]));
        pos += 1 + l;
    }
    s
}

/// What one list line contributes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineKind {
    /// Comment, blank or header: not counted.
    Ignored,
    /// A name was added (block or allow).
    Added,
    /// A line we could not use (bad name, unsupported syntax, a wildcard
    /// below the minimum depth).
    Rejected,
}

/// Counts of a compiled list.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct ListStats {
    pub block_names: usize,
    pub allow_names: usize,
    pub rejected_lines: usize,
}

/// One list file compiled: its block entries and its `@@` exceptions (or, for
/// an allow list, every entry as an exception).
#[derive(Debug, Default)]
pub struct CompiledList {
    pub block: NameSet,
    pub allow: NameSet,
    pub stats: ListStats,
}

/// Accumulates lines into a [`CompiledList`].
pub struct ListBuilder {
    all_allow: bool,
    min_wildcard_depth: usize,
    /// `[flags][len][name]` entries, indexed only in `finish`.
    block: Vec<u8>,
    allow: Vec<u8>,
    block_entries: usize,
    allow_entries: usize,
    rejected: usize,
    scratch: Vec<u8>,
}

impl ListBuilder {
    /// `all_allow`: every entry is an exception (an allowlist).
    /// `expected_bytes`: size of the source, used to size the arena once.
    pub fn new(all_allow: bool, min_wildcard_depth: usize, expected_bytes: usize) -> ListBuilder {
        // The arena (wire form + 2 bytes) is about the size of the text, so
        // reserving the file size once avoids regrowth copies while loading.
        let (b, a) = if all_allow {
            (
                Vec::new(),
                Vec::with_capacity(expected_bytes + expected_bytes / 8 + 64),
            )
        } else {
            (
                Vec::with_capacity(expected_bytes + expected_bytes / 8 + 64),
                Vec::new(),
            )
        };
        ListBuilder {
            all_allow,
            min_wildcard_depth,
            block: b,
            allow: a,
            block_entries: 0,
            allow_entries: 0,
            rejected: 0,
            scratch: Vec::with_capacity(256),
        }
    }

    fn add(&mut self, name: &[u8], allow: bool) -> LineKind {
        let (name, flags, wildcard) = match name.strip_prefix(b"*.") {
            Some(rest) => (rest, SUBTREE, true),
            None => (name, EXACT | SUBTREE, false),
        };
        let Some(labels) = name_to_wire(name, &mut self.scratch) else {
            return LineKind::Rejected;
        };
        if wildcard && labels < self.min_wildcard_depth.max(1) {
            return LineKind::Rejected;
        }
        let allow = allow || self.all_allow;
        let (arena, n) = if allow {
            (&mut self.allow, &mut self.allow_entries)
        } else {
            (&mut self.block, &mut self.block_entries)
        };
        arena.push(flags);
        arena.push(self.scratch.len() as u8);
        arena.extend_from_slice(&self.scratch);
        *n += 1;
        LineKind::Added
    }

    /// Parse one line (any of the supported syntaxes, detected per line).
    pub fn line(&mut self, raw: &[u8]) -> LineKind {
        let line = raw.trim_ascii();
        if line.is_empty() || line[0] == b'#' || line[0] == b'!' || line[0] == b'[' {
            return LineKind::Ignored;
        }
        // Adblock syntax.
        if let Some(rest) = line.strip_prefix(b"@@||") {
            return self.adblock(rest, true);
        }
        if let Some(rest) = line.strip_prefix(b"||") {
            return self.adblock(rest, false);
        }
        if line.starts_with(b"@@") || line.starts_with(b"|") || line.starts_with(b"/") {
            self.rejected += 1;
            return LineKind::Rejected;
        }
        // Comments and cosmetic filters: only lines with a '#' need a look.
        let line = match line.iter().position(|b| *b == b'#') {
            Some(i) => {
                if line[i..].starts_with(b"##")
                    || line[i..].starts_with(b"#@")
                    || line[i..].starts_with(b"#?")
                {
                    // Cosmetic filters have no meaning for DNS.
                    return LineKind::Ignored;
                }
                line[..i].trim_ascii_end()
            }
            None => line,
        };
        let mut tokens = line
            .split(|b| b.is_ascii_whitespace())
            .filter(|t| !t.is_empty());
        let Some(first) = tokens.next() else {
            return LineKind::Ignored;
        };
        // Addresses start with a digit or ':'; skip the parse for the rest.
        let first_is_ip = (first[0].is_ascii_digit() || first[0] == b':')
            && std::str::from_utf8(first)
                .ok()
                .and_then(|s| s.parse::<std::net::IpAddr>().ok())
                .is_some();
        let mut kind = LineKind::Ignored;
        if first_is_ip {
            // hosts format: address then one or more names.
            for name in tokens {
                if HOSTS_BOILERPLATE
                    .iter()
                    .any(|b| name.eq_ignore_ascii_case(b.as_bytes()))
                {
                    continue;
                }
                match self.add(name, false) {
                    LineKind::Added if kind != LineKind::Rejected => kind = LineKind::Added,
                    LineKind::Rejected => kind = LineKind::Rejected,
                    _ => {}
                }
            }
        } else {
            if tokens.next().is_some() {
                self.rejected += 1;
                return LineKind::Rejected;
            }
            kind = self.add(first, false);
        }
        if kind == LineKind::Rejected {
            self.rejected += 1;
        }
        kind
    }

    fn adblock(&mut self, rest: &[u8], allow: bool) -> LineKind {
        // `name^`, optionally `name^|`; modifiers (`$...`) change the meaning
        // of a rule in ways a DNS filter cannot honour: reject those lines.
        let end = rest.iter().position(|b| *b == b'^').unwrap_or(rest.len());
        let (name, tail) = rest.split_at(end);
        let tail = tail.strip_prefix(b"^").unwrap_or(tail);
        let ok_tail = tail.is_empty() || tail == b"|";
        let kind = if ok_tail && !name.contains(&b'/') && !name.contains(&b'$') {
            self.add(name, allow)
        } else {
            LineKind::Rejected
        };
        if kind == LineKind::Rejected {
            self.rejected += 1;
        }
        kind
    }

    pub fn finish(self) -> CompiledList {
        let block = NameSet::from_arena(self.block, self.block_entries);
        let allow = NameSet::from_arena(self.allow, self.allow_entries);
        let stats = ListStats {
            block_names: block.len(),
            allow_names: allow.len(),
            rejected_lines: self.rejected,
        };
        CompiledList {
            block,
            allow,
            stats,
        }
    }
}

/// Errors loading a list file.
#[derive(Debug, thiserror::Error)]
pub enum ListError {
    #[error("cannot read list {path}: {source}")]
    Read {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

/// Compile a list file, streaming it line by line (the text is never held
/// whole in memory).
pub fn compile_file(
    path: &Path,
    all_allow: bool,
    min_wildcard_depth: usize,
) -> Result<CompiledList, ListError> {
    let err = |source| ListError::Read {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(err)?;
    let size = file.metadata().map(|m| m.len() as usize).unwrap_or(0);
    let mut reader = std::io::BufReader::with_capacity(1 << 16, file);
    let mut b = ListBuilder::new(all_allow, min_wildcard_depth, size);
    let mut line = Vec::with_capacity(512);
    loop {
        line.clear();
        let n = reader.read_until(b'\n', &mut line).map_err(err)?;
        if n == 0 {
            break;
        }
        b.line(&line);
    }
    Ok(b.finish())
}

/// Compile list text held in memory (tests, small inline lists).
pub fn compile_str(text: &str, all_allow: bool, min_wildcard_depth: usize) -> CompiledList {
    let mut b = ListBuilder::new(all_allow, min_wildcard_depth, text.len());
    for line in text.lines() {
        b.line(line.as_bytes());
    }
    b.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(name: &str) -> Vec<u8> {
        let mut v = Vec::new();
        name_to_wire(name.as_bytes(), &mut v).unwrap();
        v
    }

    #[test]
    fn wire_roundtrip() {
        assert_eq!(w("Ads.Example.COM."), b"\x03ads\x07example\x03com");
        assert_eq!(wire_to_text(&w("a.b.c")), "a.b.c");
        let mut v = Vec::new();
        assert_eq!(name_to_wire(b"a..b", &mut v), None);
        assert_eq!(name_to_wire(b"a b", &mut v), None);
        assert_eq!(name_to_wire(&[b'a'; 64], &mut v), None);
        assert_eq!(name_to_wire(b"", &mut v), None);
        assert_eq!(name_to_wire(b"_dmarc.x-y.org", &mut v), Some(3));
    }

    #[test]
    fn syntaxes() {
        let l = compile_str(
            "# comment\n\
             ! adblock comment\n\
             [Adblock Plus 2.0]\n\
             0.0.0.0 hosts.example.com\n\
             127.0.0.1 localhost\n\
             ::1 ip6-localhost\n\
             0.0.0.0 a.multi.test b.multi.test # trailing\n\
             plain.example.org\n\
             ||adblock.example.net^\n\
             ||pipe.example.net^|\n\
             ||mod.example.net^$third-party\n\
             @@||ok.adblock.example.net^\n\
             *.wild.example\n\
             *.com\n\
             *\n\
             example.com##.banner\n\
             /regex.*/\n\
             bad..name\n",
            false,
            2,
        );
        let b = |n: &str| l.block.matches(&w(n));
        let a = |n: &str| l.allow.matches(&w(n));
        assert!(b("hosts.example.com"));
        assert!(b("x.hosts.example.com"), "subdomains are blocked");
        assert!(!b("example.com"), "parents are not blocked");
        assert!(!b("localhost"));
        assert!(b("a.multi.test") && b("b.multi.test"));
        assert!(b("plain.example.org") && b("deep.er.plain.example.org"));
        assert!(b("adblock.example.net") && b("pipe.example.net"));
        assert!(
            !b("mod.example.net"),
            "rules with modifiers are not applied"
        );
        assert!(a("ok.adblock.example.net") && a("x.ok.adblock.example.net"));
        assert!(!a("adblock.example.net"));
        assert!(
            !b("wild.example"),
            "a wildcard does not cover its base name"
        );
        assert!(b("x.wild.example") && b("y.x.wild.example"));
        assert!(
            !b("anything.com"),
            "*.com is below the minimum wildcard depth"
        );
        assert_eq!(l.stats.block_names, 7);
        assert_eq!(l.stats.allow_names, 1);
        // mod.example.net, *.com, *, /regex/, bad..name
        assert_eq!(l.stats.rejected_lines, 5);
    }

    #[test]
    fn allow_list_and_dedup() {
        let l = compile_str("good.test\n||good.test^\n0.0.0.0 GOOD.test\n", true, 2);
        assert_eq!(l.stats.allow_names, 1);
        assert_eq!(l.stats.block_names, 0);
        assert!(l.allow.matches(&w("good.test")));
        // A wildcard and an exact entry for the same base merge their flags.
        let l = compile_str("*.m.test\nm.test\n", false, 2);
        assert_eq!(l.block.len(), 1);
        assert!(l.block.matches(&w("m.test")) && l.block.matches(&w("a.m.test")));
    }

    #[test]
    fn min_depth_is_configurable() {
        let l = compile_str("*.com\n", false, 1);
        assert!(l.block.matches(&w("x.com")));
        let l = compile_str("*.example.com\n", false, 3);
        assert!(!l.block.matches(&w("x.example.com")));
    }

    #[test]
    fn grows_past_initial_capacity() {
        let mut s = NameSet::with_capacity(1, 0);
        for i in 0..10_000 {
            s.insert_wire(&w(&format!("n{i}.test")), EXACT | SUBTREE);
        }
        assert_eq!(s.len(), 10_000);
        for i in 0..10_000 {
            assert!(s.matches(&w(&format!("n{i}.test"))));
            assert!(s.matches(&w(&format!("sub.n{i}.test"))));
        }
        assert!(!s.matches(&w("n10000.test")));
        assert!(!s.matches(&w("test")));
    }

    proptest::proptest! {
        #[test]
        fn matches_agrees_with_a_naive_model(
            names in proptest::collection::vec("[a-c]{1,2}(\\.[a-c]{1,2}){0,3}", 0..40),
            queries in proptest::collection::vec("[a-c]{1,2}(\\.[a-c]{1,2}){0,4}", 1..40),
        ) {
            let l = compile_str(&names.join("\n"), false, 2);
            for q in &queries {
                let naive = names.iter().any(|n| q == n || q.ends_with(&format!(".{n}")));
                proptest::prop_assert_eq!(l.block.matches(&w(q)), naive, "query {}", q);
            }
        }
    }
}
