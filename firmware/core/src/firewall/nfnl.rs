//! The drift check's read of the live table over `NETLINK_NETFILTER`, without
//! spawning `nft`: dumps of the table, its chains, sets, set elements, rules,
//! objects and flowtables, put in a canonical order and hashed into a
//! fingerprint.
//!
//! Each reconcile pass (every 2 s) and each `status` call reads the table;
//! spawning `nft -j list table` for that cost ~20 ms of CPU per read on the
//! 2-core test machine (bench/nft/run.sh). Applying and the read-back check
//! after an apply still use `nft` (rare, and the check wants nft's
//! JSON view).
//!
//! The fingerprint covers every attribute the kernel dumps except handles
//! (they change on every load) and, for stateful objects, their data and use
//! count (counters move with traffic). A change made outside palisaded —
//! a rule added or deleted, a set element added, a policy changed, a chain
//! or set added, the table deleted — changes the fingerprint. The dumps are
//! checked to be of one ruleset generation (the `res_id` every reply
//! carries, and NLM_F_DUMP_INTR); a read that spans a commit is repeated.

use super::FirewallError;
use crate::nlraw::{self, cstr, nul, NlError, NLM_F_DUMP, NLM_F_DUMP_INTR};
use netlink_sys::Socket;
use sha2::{Digest, Sha256};

const NETLINK_NETFILTER: isize = 12;
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFPROTO_INET: u8 = 1;

const NFT_MSG_GETTABLE: u16 = 1;
const NFT_MSG_GETCHAIN: u16 = 4;
const NFT_MSG_GETRULE: u16 = 7;
const NFT_MSG_GETSET: u16 = 10;
const NFT_MSG_GETSETELEM: u16 = 13;
const NFT_MSG_GETOBJ: u16 = 19;
const NFT_MSG_GETFLOWTABLE: u16 = 23;
/// Dumps answer with the NEW message of each kind (GET - 1).
const NFT_MSG_NEWTABLE: u16 = 0;
const NFT_MSG_NEWCHAIN: u16 = 3;
const NFT_MSG_NEWRULE: u16 = 6;
const NFT_MSG_NEWSET: u16 = 9;
const NFT_MSG_NEWSETELEM: u16 = 12;
const NFT_MSG_NEWOBJ: u16 = 18;
const NFT_MSG_NEWFLOWTABLE: u16 = 22;

/// Attribute 1 is the table name in every message kind read here
/// (NFTA_TABLE_NAME, NFTA_CHAIN_TABLE, NFTA_RULE_TABLE, NFTA_SET_TABLE,
/// NFTA_SET_ELEM_LIST_TABLE, NFTA_OBJ_TABLE, NFTA_FLOWTABLE_TABLE).
const ATTR_TABLE: u16 = 1;
/// NFTA_SET_NAME (also NFTA_OBJ_NAME and NFTA_FLOWTABLE_NAME), NFTA_SET_ELEM_LIST_SET.
const NFTA_SET_NAME: u16 = 2;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_CHAIN_NAME: u16 = 3;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_OBJ_TYPE: u16 = 3;

const TRIES: usize = 5;

/// Attributes left out of the fingerprint, per message kind.
fn ignored(msg: u16, attr: u16) -> bool {
    match msg {
        NFT_MSG_NEWTABLE => attr == 4,                 // NFTA_TABLE_HANDLE
        NFT_MSG_NEWCHAIN => attr == 2,                 // NFTA_CHAIN_HANDLE
        NFT_MSG_NEWRULE => matches!(attr, 3 | 6),      // NFTA_RULE_HANDLE, _POSITION (a handle)
        NFT_MSG_NEWSET => attr == 16,                  // NFTA_SET_HANDLE
        NFT_MSG_NEWOBJ => matches!(attr, 4..=6),       // NFTA_OBJ_DATA, _USE, _HANDLE
        NFT_MSG_NEWFLOWTABLE => matches!(attr, 4 | 5), // NFTA_FLOWTABLE_USE, _HANDLE
        _ => false,
    }
}

/// One nfnetlink message of a dump: its kind, generation and attributes.
struct Msg {
    kind: u16,
    genid: u16,
    attrs: Vec<(u16, Vec<u8>)>,
}

impl Msg {
    fn attr(&self, t: u16) -> Option<&[u8]> {
        self.attrs
            .iter()
            .find(|(k, _)| *k == t)
            .map(|(_, v)| v.as_slice())
    }
    fn is_table(&self, table: &str) -> bool {
        self.attr(ATTR_TABLE).map(cstr) == Some(table.as_bytes())
    }
}

fn err(msg: impl std::fmt::Display) -> FirewallError {
    FirewallError::Read(msg.to_string())
}

fn parse_attrs(b: &[u8]) -> Result<Vec<(u16, Vec<u8>)>, FirewallError> {
    nlraw::attrs(b)
        .map(|a| a.map(|(t, v)| (t, v.to_vec())).map_err(err))
        .collect()
}

/// One dump: every message, and whether it was interrupted.
fn dump(
    sock: &Socket,
    kind: u16,
    attrs: &[(u16, Vec<u8>)],
) -> Result<(Vec<Msg>, bool), FirewallError> {
    let mut out = Vec::new();
    let mut interrupted = false;
    let attrs: Vec<(u16, &[u8])> = attrs.iter().map(|(t, v)| (*t, v.as_slice())).collect();
    let header = [NFPROTO_INET, 0, 0, 0]; // nfgenmsg: family, version, res_id
    let done = nlraw::request(
        sock,
        (NFNL_SUBSYS_NFTABLES << 8) | kind,
        NLM_F_DUMP,
        &header,
        &attrs,
        |t, flags, body| {
            interrupted |= flags & NLM_F_DUMP_INTR != 0;
            if t >> 8 != NFNL_SUBSYS_NFTABLES {
                return Ok(());
            }
            if body.len() < 4 {
                return Err(NlError::Io("nfnetlink message without its header".into()));
            }
            let genid = u16::from_be_bytes([body[2], body[3]]);
            let attrs = nlraw::attrs(&body[4..])
                .map(|a| a.map(|(t, v)| (t, v.to_vec())))
                .collect::<Result<_, _>>()?;
            out.push(Msg {
                kind: t & 0xff,
                genid,
                attrs,
            });
            Ok(())
        },
    );
    match done {
        Ok(flags) => Ok((out, interrupted || flags & NLM_F_DUMP_INTR != 0)),
        // The table or set went away: read again.
        Err(NlError::Errno(e)) if e == libc::ENOENT => Ok((out, true)),
        Err(e) => Err(err(e)),
    }
}

/// One object of the read: its message kind, its name (for rules and set
/// elements, the chain's or set's), its place among the rules of its chain,
/// and its attributes. Ordered by these fields in turn.
#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct Entry {
    kind: u16,
    name: Vec<u8>,
    index: usize,
    bytes: Vec<u8>,
}

/// The read in an order that does not depend on how the table came to be:
/// chains, sets, objects and flowtables by name (the kernel lists them in
/// creation order, which differs between a table built fresh and one that
/// was flushed and refilled), rules by chain and then in their order (which
/// is meaning), set elements by set and then by their bytes (a hash set
/// lists them in the order of its per-set random seed).
fn canonical(all: &[Msg]) -> Result<Vec<Entry>, FirewallError> {
    let mut out = Vec::with_capacity(all.len());
    let mut rules_seen: std::collections::HashMap<Vec<u8>, usize> = Default::default();
    for m in all {
        let name_attr = match m.kind {
            NFT_MSG_NEWTABLE => ATTR_TABLE,
            NFT_MSG_NEWCHAIN => NFTA_CHAIN_NAME,
            NFT_MSG_NEWRULE => NFTA_RULE_CHAIN,
            NFT_MSG_NEWSETELEM => NFTA_SET_ELEM_LIST_SET,
            _ => NFTA_SET_NAME, // NFTA_SET_NAME, NFTA_OBJ_NAME, NFTA_FLOWTABLE_NAME
        };
        let mut name = m.attr(name_attr).map(cstr).unwrap_or_default().to_vec();
        if m.kind == NFT_MSG_NEWOBJ {
            // Object names are unique per object type.
            name.push(0);
            name.extend_from_slice(m.attr(NFTA_OBJ_TYPE).unwrap_or_default());
        }
        if m.kind == NFT_MSG_NEWSETELEM {
            let Some(list) = m.attr(NFTA_SET_ELEM_LIST_ELEMENTS) else {
                continue;
            };
            for (_, elem) in parse_attrs(list)? {
                out.push(Entry {
                    kind: m.kind,
                    name: name.clone(),
                    index: 0,
                    bytes: elem,
                });
            }
            continue;
        }
        let index = if m.kind == NFT_MSG_NEWRULE {
            let n = rules_seen.entry(name.clone()).or_default();
            *n += 1;
            *n
        } else {
            0
        };
        let mut bytes = Vec::new();
        for (t, v) in &m.attrs {
            if ignored(m.kind, *t) {
                continue;
            }
            bytes.extend_from_slice(&t.to_be_bytes());
            bytes.extend_from_slice(&(v.len() as u32).to_be_bytes());
            bytes.extend_from_slice(v);
        }
        out.push(Entry {
            kind: m.kind,
            name,
            index,
            bytes,
        });
    }
    out.sort();
    Ok(out)
}

enum Read {
    Missing,
    Done(String),
    Retry,
}

fn read_once(sock: &Socket, table: &str) -> Result<Read, FirewallError> {
    let name = nul(table);
    let (tables, mut intr) = dump(sock, NFT_MSG_GETTABLE, &[])?;
    let Some(t) = tables.into_iter().find(|m| m.is_table(table)) else {
        return Ok(if intr { Read::Retry } else { Read::Missing });
    };
    let mut all = vec![t];
    for kind in [
        NFT_MSG_GETCHAIN,
        NFT_MSG_GETSET,
        NFT_MSG_GETRULE,
        NFT_MSG_GETOBJ,
        NFT_MSG_GETFLOWTABLE,
    ] {
        let filter = if kind == NFT_MSG_GETRULE || kind == NFT_MSG_GETSET {
            vec![(ATTR_TABLE, name.clone())]
        } else {
            vec![]
        };
        let (msgs, i) = dump(sock, kind, &filter)?;
        intr |= i;
        all.extend(msgs.into_iter().filter(|m| m.is_table(table)));
    }
    let sets: Vec<Vec<u8>> = all
        .iter()
        .filter(|m| m.kind == NFT_MSG_NEWSET)
        .filter_map(|m| {
            m.attr(NFTA_SET_NAME)
                .map(|v| nul(&String::from_utf8_lossy(cstr(v))))
        })
        .collect();
    for set in sets {
        let (msgs, i) = dump(
            sock,
            NFT_MSG_GETSETELEM,
            &[(ATTR_TABLE, name.clone()), (NFTA_SET_ELEM_LIST_SET, set)],
        )?;
        intr |= i;
        all.extend(msgs);
    }
    let genid = all[0].genid;
    if intr || all.iter().any(|m| m.genid != genid) {
        return Ok(Read::Retry);
    }
    let mut h = Sha256::new();
    for e in canonical(&all)? {
        h.update([0xff, e.kind as u8]);
        h.update((e.name.len() as u32).to_be_bytes());
        h.update(&e.name);
        h.update((e.bytes.len() as u32).to_be_bytes());
        h.update(&e.bytes);
    }
    let d = h.finalize();
    Ok(Read::Done(d.iter().map(|b| format!("{b:02x}")).collect()))
}

/// Fingerprint of the live `inet <table>`, `None` if there is no such table.
pub(crate) fn fingerprint(table: &str) -> Result<Option<String>, FirewallError> {
    let sock = nlraw::socket(NETLINK_NETFILTER).map_err(err)?;
    for _ in 0..TRIES {
        match read_once(&sock, table)? {
            Read::Missing => return Ok(None),
            Read::Done(fp) => return Ok(Some(fp)),
            Read::Retry => continue,
        }
    }
    Err(err(format!(
        "the ruleset changed during each of {TRIES} reads"
    )))
}
