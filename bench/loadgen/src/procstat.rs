//! CPU time and resident set of a process (the QEMU node, or the generator
//! itself) from /proc.

/// CPU seconds (user + system) and RSS (kB) of `pid`.
pub fn sample(pid: u32) -> anyhow::Result<(f64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).map_err(|e| {
        anyhow::anyhow!("read /proc/{pid}/stat: {e} (is --node-pid a running process?)")
    })?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| anyhow::anyhow!("read /proc/{pid}/status: {e}"))?;
    Ok((cpu_seconds(&stat)?, rss_kb(&status)?))
}

/// utime + stime (fields 14 and 15) of a /proc/PID/stat line, in seconds.
pub fn cpu_seconds(stat: &str) -> anyhow::Result<f64> {
    // The command name (field 2) may contain spaces: fields start after ')'.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| anyhow::anyhow!("/proc stat line without ')'"))?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state): utime is field 14 -> index 11.
    let get = |i: usize| -> anyhow::Result<u64> {
        f.get(i)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| anyhow::anyhow!("/proc stat line has no field {}", i + 3))
    };
    let ticks = get(11)? + get(12)?;
    Ok(ticks as f64 / clk_tck())
}

/// VmRSS of a /proc/PID/status text, in kB.
pub fn rss_kb(status: &str) -> anyhow::Result<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no VmRSS in /proc status"))
}

/// /proc reports CPU time in USER_HZ ticks, fixed at 100 on Linux for every
/// architecture this runs on (the kernel's exported clock, not CONFIG_HZ).
fn clk_tck() -> f64 {
    100.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_and_status() {
        let stat = "1234 (qemu-system x86) S 1 2 3 4 5 6 7 8 9 10 250 150 0 0 20 0 4 0 100 200 300";
        assert_eq!(cpu_seconds(stat).unwrap(), 4.0);
        assert!(cpu_seconds("garbage").is_err());
        assert_eq!(rss_kb("Name:\tq\nVmRSS:\t  51200 kB\n").unwrap(), 51200);
        assert!(rss_kb("Name: q\n").is_err());
        let (cpu, rss) = sample(std::process::id()).unwrap();
        assert!(cpu >= 0.0 && rss > 0);
    }
}
