//! Stage `state`: the state partition, an empty ext4 (palisaded seeds it on first
//! boot). A file copied in with `mkfs -d` would carry its build-time ctime, which
//! breaks reproducibility; so would a random UUID or hash seed (both derived) or
//! the clock (E2FSPROGS_FAKE_TIME).

use std::fs;
use std::process::Command;

use anyhow::Result;

use super::Build;
use crate::layout;
use crate::util::run_tool;

pub fn run(b: &mut Build) -> Result<()> {
    let img = b.inp.state_img();
    let uuid = layout::derived_guid(b.digest()?, "state-fs").to_lowercase();
    fs::File::create(&img)?.set_len(b.part_size("state")?)?;
    run_tool(
        Command::new("mkfs.ext4")
            .args([
                "-q", "-F", "-L", "state", "-m", "0", "-N", "256", "-U", &uuid,
            ])
            .arg("-E")
            .arg(format!(
                "hash_seed={uuid},root_owner=0:0,lazy_itable_init=0,nodiscard"
            ))
            .arg(&img)
            .env("E2FSPROGS_FAKE_TIME", b.inp.epoch.to_string()),
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::testutil::{have, inputs};
    use super::super::Build;
    use crate::layout::Layout;

    #[test]
    fn stage_alone_is_reproducible() {
        if !have("mkfs.ext4") {
            return;
        }
        let mut images = Vec::new();
        for _ in 0..2 {
            let d = tempfile::tempdir().unwrap();
            let mut b = Build::new(inputs(d.path()));
            b.digest = Some(vec![7; 32]);
            b.layout = Some(Layout::new(b.inp.board.partitions, &[7; 32]));
            super::run(&mut b).unwrap();
            let img = std::fs::read(b.inp.state_img()).unwrap();
            assert_eq!(img.len() as u64, b.part_size("state").unwrap());
            images.push(img);
        }
        assert!(images[0] == images[1], "two state images differ");
    }
}
