//! Just enough ELF64 (little-endian) to list a binary's DT_NEEDED libraries and its
//! interpreter, so the image carries exactly the shared objects `nft` needs and the
//! node binaries can be checked to be static.

use anyhow::{bail, Context, Result};

/// What the dynamic loader needs for one ELF file.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Dynamic {
    /// PT_INTERP, e.g. `/lib64/ld-linux-x86-64.so.2`.
    pub interp: Option<String>,
    /// DT_NEEDED entries in file order.
    pub needed: Vec<String>,
}

fn u16le(b: &[u8], o: usize) -> Result<u16> {
    Ok(u16::from_le_bytes(
        b.get(o..o + 2).context("ELF truncated")?.try_into()?,
    ))
}
fn u32le(b: &[u8], o: usize) -> Result<u32> {
    Ok(u32::from_le_bytes(
        b.get(o..o + 4).context("ELF truncated")?.try_into()?,
    ))
}
fn u64le(b: &[u8], o: usize) -> Result<u64> {
    Ok(u64::from_le_bytes(
        b.get(o..o + 8).context("ELF truncated")?.try_into()?,
    ))
}
fn usz(v: u64) -> Result<usize> {
    usize::try_from(v).context("ELF offset too large")
}

/// True when `b` starts with the ELF magic.
pub fn is_elf(b: &[u8]) -> bool {
    b.starts_with(b"\x7fELF")
}

/// Parses program headers: PT_INTERP and the PT_DYNAMIC DT_NEEDED list.
pub fn parse(b: &[u8]) -> Result<Dynamic> {
    if !is_elf(b) {
        bail!("not an ELF file");
    }
    if b.get(4) != Some(&2) || b.get(5) != Some(&1) {
        bail!("only ELF64 little-endian is supported");
    }
    let phoff = usz(u64le(b, 0x20)?)?;
    let phentsize = usize::from(u16le(b, 0x36)?);
    let phnum = usize::from(u16le(b, 0x38)?);
    if phentsize < 56 || phnum > 256 {
        bail!("implausible program header table");
    }
    let mut out = Dynamic::default();
    let mut loads = Vec::new(); // (vaddr, offset, filesz)
    let mut dynamic = None;
    for i in 0..phnum {
        let h = phoff + i * phentsize;
        let ptype = u32le(b, h)?;
        let off = u64le(b, h + 8)?;
        let vaddr = u64le(b, h + 16)?;
        let filesz = u64le(b, h + 32)?;
        match ptype {
            1 => loads.push((vaddr, off, filesz)),
            2 => dynamic = Some((usz(off)?, usz(filesz)?)),
            3 => {
                let s = b
                    .get(usz(off)?..usz(off + filesz)?)
                    .context("PT_INTERP out of range")?;
                let s = s.split(|&c| c == 0).next().unwrap_or_default();
                out.interp = Some(String::from_utf8_lossy(s).into_owned());
            }
            _ => {}
        }
    }
    let Some((doff, dsize)) = dynamic else {
        return Ok(out);
    };
    let vaddr_to_off = |va: u64| -> Option<usize> {
        loads
            .iter()
            .find(|(v, _, sz)| va >= *v && va < v + sz)
            .and_then(|(v, o, _)| usize::try_from(va - v + o).ok())
    };
    let mut strtab = None;
    let mut needed_offs = Vec::new();
    for i in 0..dsize / 16 {
        let tag = u64le(b, doff + i * 16)?;
        let val = u64le(b, doff + i * 16 + 8)?;
        match tag {
            0 => break,
            1 => needed_offs.push(usz(val)?),
            5 => strtab = Some(val),
            _ => {}
        }
    }
    if needed_offs.is_empty() {
        return Ok(out);
    }
    let st = vaddr_to_off(strtab.context("DT_NEEDED without DT_STRTAB")?)
        .context("DT_STRTAB outside any PT_LOAD")?;
    for o in needed_offs {
        let s = b.get(st + o..).context("DT_NEEDED string out of range")?;
        let s = s.split(|&c| c == 0).next().unwrap_or_default();
        out.needed.push(String::from_utf8_lossy(s).into_owned());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_nft_or_ls_has_needed() {
        // /bin/ls exists on every Debian host and links libc.
        let b = std::fs::read("/bin/ls").unwrap();
        let d = parse(&b).unwrap();
        assert!(d.needed.iter().any(|n| n.starts_with("libc.so")), "{d:?}");
        assert!(d.interp.unwrap().contains("ld-linux"));
    }

    #[test]
    fn rejects_garbage() {
        assert!(parse(b"not elf").is_err());
        let mut b = b"\x7fELF\x02\x01".to_vec();
        b.resize(64, 0);
        assert!(parse(&b[..40]).is_err());
    }
}
