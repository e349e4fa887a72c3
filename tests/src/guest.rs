//! A Palisade image booted under QEMU (TCG) as the bed's node: its uplink is a
//! tap on the internet bridge, clients are the bed's wireguard-go namespaces.
//!
//! The test works on its own copy of the image (sparse copy), seeds the node's
//! WireGuard key and a DNS list onto the copy's `state` partition (debugfs, no
//! mounts) so the clients know the node's public key before it boots, passes
//! node.toml on a config drive (qemu/mkconfigdrive.sh) and boots it with
//! qemu/boot.sh. After a clean power-off the whole disk copy and the console
//! log can be scanned.

use crate::bed::{addr, TestBed};
use crate::ns::{run_cmd, wait_until, Proc};
use crate::wg::{gen_keypair, KeyPair};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// The workspace root (qemu/ scripts live there).
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// Cargo's target directory (`CARGO_TARGET_DIR`, else the workspace's `target/`).
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target"))
}

/// Run one command on a QEMU human monitor (`-monitor unix:SOCK,server,nowait`)
/// and return what it printed. QEMU prints the `(qemu) ` prompt when it is
/// ready and again once the command has run: this waits for both (5 s each)
/// instead of sleeping and hoping the command was read.
pub fn monitor_command(sock: &Path, cmd: &str) -> Result<String> {
    use std::io::Write;
    let mut s = std::os::unix::net::UnixStream::connect(sock)
        .with_context(|| format!("connect {}", sock.display()))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    read_to_prompt(&mut s, "before the command")?;
    s.write_all(format!("{cmd}\n").as_bytes())?;
    let out = read_to_prompt(&mut s, &format!("running {cmd:?}"))?;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// Read until the monitor's `(qemu) ` prompt (QEMU's echo of a typed command
/// never contains it).
fn read_to_prompt(s: &mut std::os::unix::net::UnixStream, what: &str) -> Result<Vec<u8>> {
    use std::io::Read;
    let mut got = Vec::new();
    let mut buf = [0u8; 512];
    while !got.ends_with(b"(qemu) ") {
        let n = s.read(&mut buf).with_context(|| {
            format!("QEMU monitor, {what}: {:?}", String::from_utf8_lossy(&got))
        })?;
        if n == 0 {
            bail!("QEMU monitor closed, {what}: {:?}", String::from_utf8_lossy(&got));
        }
        got.extend_from_slice(&buf[..n]);
    }
    Ok(got)
}

/// The image under test: `$PALISADE_IMAGE` (tests/run.sh sets it after building);
/// otherwise the image is built with `palisade-image build --board qemu-x86_64
/// --out <workspace>/out` and `out/palisade-qemu-x86_64.raw` is used.
pub fn image_path() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("PALISADE_IMAGE") {
        let p = PathBuf::from(p);
        if !p.is_file() {
            bail!("PALISADE_IMAGE={} is not a file", p.display());
        }
        return Ok(p);
    }
    let ws = workspace();
    let out = ws.join("out");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let st = Command::new(cargo)
        .args([
            "run",
            "-q",
            "-p",
            "palisade-image",
            "--",
            "build",
            "--board",
            "qemu-x86_64",
            "--no-qcow2",
            "--out",
        ])
        .arg(&out)
        .current_dir(&ws)
        .status()
        .context("run palisade-image build")?;
    if !st.success() {
        bail!("palisade-image build failed (set PALISADE_IMAGE to test a prebuilt image)");
    }
    let img = out.join("palisade-qemu-x86_64.raw");
    if !img.is_file() {
        bail!("{} missing after the build", img.display());
    }
    Ok(img)
}

/// Byte offset and size of the GPT partition named `name` (sfdisk -J).
pub fn partition(disk: &Path, name: &str) -> Result<(u64, u64)> {
    let out = run_cmd(Command::new("sfdisk").arg("-J").arg(disk))?;
    let v: serde_json::Value = serde_json::from_str(&out).context("sfdisk -J output")?;
    let sector = v["partitiontable"]["sectorsize"].as_u64().unwrap_or(512);
    for p in v["partitiontable"]["partitions"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if p["name"].as_str() == Some(name) {
            let start = p["start"].as_u64().context("start")?;
            let size = p["size"].as_u64().context("size")?;
            return Ok((start * sector, size * sector));
        }
    }
    bail!("no partition named {name} in {}", disk.display())
}

/// Write `src` as `/dst_name` into the ext4 filesystem at `offset` in `disk`.
pub fn debugfs_write(disk: &Path, offset: u64, src: &Path, dst_name: &str) -> Result<()> {
    let target = format!("{}?offset={offset}", disk.display());
    let out = Command::new("debugfs")
        .args([
            "-w",
            "-R",
            &format!("write {} {dst_name}", src.display()),
            &target,
        ])
        .output()
        .context("run debugfs (e2fsprogs)")?;
    let err = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() || err.contains("rror") {
        bail!("debugfs write {dst_name}: {err}");
    }
    Ok(())
}

/// The content of `/path` in the ext4 filesystem at `offset` in `disk`.
pub fn debugfs_read(disk: &Path, offset: u64, path: &str) -> Result<Vec<u8>> {
    let target = format!("{}?offset={offset}", disk.display());
    let out = Command::new("debugfs")
        .args(["-R", &format!("cat {path}"), &target])
        .output()
        .context("run debugfs (e2fsprogs)")?;
    if !out.status.success() {
        bail!("debugfs cat {path}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(out.stdout)
}

/// What may be on the state partition (DESIGN.md "Zero-log"): the node
/// config, the WireGuard key, the fleet root, the repository clients' TUF
/// datastores, and the state store's allowlisted keys. Anything else (a
/// log, a peers file with client data, a temp file left behind) fails.
pub const STATE_ALLOWLIST: &[&str] = &[
    "node.toml",
    "wg0.key",
    "fleet-root.json",
    "store/",
    "store/update-journal.json",
    "store/identity.json",
    "store/enrolment.json",
    "store/fleet-state.json",
    "store/revoked.json",
    "store/boot-count.json",
    // The metrics endpoint's trust anchors (`[management] metrics_anchors_file`).
    "mesh-anchors.pem",
    "tuf/",
];

/// The state partition's files of `disk` that are not on [`STATE_ALLOWLIST`]
/// (`tuf/` is a prefix; everything else is exact); and the whole listing.
pub fn state_files_off_allowlist(disk: &Path) -> Result<(Vec<String>, Vec<String>)> {
    let (off, _) = partition(disk, "state")?;
    let files = debugfs_tree(disk, off)?;
    let off_list = files
        .iter()
        .filter(|f| !STATE_ALLOWLIST.iter().any(|a| f == a || (*a == "tuf/" && f.starts_with(a))))
        .cloned()
        .collect();
    Ok((off_list, files))
}

/// Every path in the ext4 filesystem at `offset` in `disk` (directories end
/// in `/`), sorted; `lost+found` left out.
pub fn debugfs_tree(disk: &Path, offset: u64) -> Result<Vec<String>> {
    let target = format!("{}?offset={offset}", disk.display());
    let mut out = Vec::new();
    let mut dirs = vec![String::new()];
    while let Some(d) = dirs.pop() {
        let o = Command::new("debugfs")
            .args(["-R", &format!("ls -p /{d}"), &target])
            .output()
            .context("run debugfs (e2fsprogs)")?;
        // Lines like `/12/040755/0/0/name//`: inode, mode, uid, gid, name, size.
        for l in String::from_utf8_lossy(&o.stdout).lines() {
            let f: Vec<&str> = l.split('/').collect();
            if f.len() < 6 || matches!(f[5], "" | "." | ".." | "lost+found") {
                continue;
            }
            let path = format!("{d}{}", f[5]);
            if f[2].starts_with("04") {
                out.push(format!("{path}/"));
                dirs.push(format!("{path}/"));
            } else {
                out.push(path);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// What the guest node runs with.
#[derive(Debug, Clone, Default)]
pub struct GuestOptions {
    /// Lines of the DNS block list seeded onto the state partition (list "ads",
    /// tier "default"); empty: no list.
    pub blocklist: Vec<String>,
    /// Appended to the kernel command line of every boot entry on the ESP
    /// (e.g. `module_blacklist=nft_masq`: an image whose nft NAT module
    /// cannot load).
    pub extra_cmdline: Option<String>,
    /// Appended to the node config (e.g. an `[update]` section).
    pub extra_toml: String,
    /// The fleet's TUF root metadata, put on the config drive
    /// (`palisade/fleet-root.json`) for the update client.
    pub fleet_root: Option<PathBuf>,
    /// Let the guest reboot (QEMU keeps running across reboots; updates need
    /// it). Default: QEMU exits when the guest reboots.
    pub allow_reboot: bool,
    /// The emulated hardware (`qemu/boot.sh --hw`).
    pub hw: Hw,
    /// The board's host-side devices (status LED file, test port, QMP).
    pub devices: VmDevices,
}

/// The hardware QEMU emulates (`qemu/boot.sh --hw`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Hw {
    /// virtio disk, NIC and RNG: the qemu-x86_64 board.
    #[default]
    Virtio,
    /// The x86-appliance board's: AHCI disks, an e1000e NIC, an i6300esb watchdog.
    Appliance,
}

impl Hw {
    /// The `--hw` value.
    pub fn arg(self) -> &'static str {
        match self {
            Hw::Virtio => "virtio",
            Hw::Appliance => "appliance",
        }
    }
}

/// Host-side board devices of a [`Vm`] (qemu/boot.sh `--led`, `--test-port`,
/// `--qmp`), each in the bed's log directory when asked for.
#[derive(Debug, Clone, Copy, Default)]
pub struct VmDevices {
    /// The status LED's virtio-serial port, written to `led.log`.
    pub led: bool,
    /// The `palisade.test` port on `test.sock` (test hooks).
    pub test_port: bool,
    /// QMP on `qmp.sock` (the reset button).
    pub qmp: bool,
    /// The console also on a pty (qemu/boot.sh `--serial-pty`), for a host
    /// tool that talks to the node over its serial line ([`Vm::serial_pty`]).
    pub serial_pty: bool,
}

impl VmDevices {
    pub fn all() -> VmDevices {
        VmDevices { led: true, test_port: true, qmp: true, serial_pty: false }
    }
}

/// The host side of the console's pty, held open in raw mode and read
/// (the text is in the console log already) from boot until a test takes
/// the port. A pty whose other side nobody has open echoes the guest's
/// output back to it as serial input, and once a few KB are unread QEMU
/// stops taking the guest's output: every console write in the guest then
/// blocks, and with it whatever logs. When the drain lets go, the pty is
/// closed and QEMU drops (but still logs) the output until a tool opens it.
#[derive(Debug)]
struct SerialDrain {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<Option<PathBuf>>>,
}

impl SerialDrain {
    fn start(qemu_log: PathBuf) -> SerialDrain {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || Self::run(&qemu_log, &s));
        SerialDrain { stop, thread: Some(thread) }
    }

    fn run(qemu_log: &Path, stop: &std::sync::atomic::AtomicBool) -> Option<PathBuf> {
        use std::io::Read;
        use std::os::unix::fs::OpenOptionsExt;
        use std::sync::atomic::Ordering;
        let deadline = Instant::now() + Duration::from_secs(60);
        let path = loop {
            if stop.load(Ordering::SeqCst) || Instant::now() > deadline {
                return None;
            }
            let log = std::fs::read_to_string(qemu_log).unwrap_or_default();
            if let Some(p) = pty_path(&log) {
                break p;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let flags = nix::fcntl::OFlag::O_NOCTTY | nix::fcntl::OFlag::O_NONBLOCK;
        let mut f = std::fs::OpenOptions::new().read(true).write(true).custom_flags(flags.bits()).open(&path).ok()?;
        if let Ok(mut t) = nix::sys::termios::tcgetattr(&f) {
            nix::sys::termios::cfmakeraw(&mut t);
            let _ = nix::sys::termios::tcsetattr(&f, nix::sys::termios::SetArg::TCSANOW, &t);
        }
        let mut buf = [0u8; 4096];
        while !stop.load(Ordering::SeqCst) {
            match f.read(&mut buf) {
                Ok(n) if n > 0 => continue,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(20)),
                // EIO: QEMU is gone.
                _ => break,
            }
        }
        Some(path)
    }

    /// Stops reading and closes the pty; its path.
    fn release(mut self) -> Option<PathBuf> {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        self.thread.take().and_then(|t| t.join().ok()).flatten()
    }
}

impl Drop for SerialDrain {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// The console pty QEMU names on stderr once it has started.
fn pty_path(qemu_log: &str) -> Option<PathBuf> {
    qemu_log.lines().rev().find_map(|l| {
        let rest = l.strip_prefix("char device redirected to ")?;
        let (path, label) = rest.split_once(' ')?;
        (label == "(label ser0)").then(|| PathBuf::from(path))
    })
}

/// The states in a status LED log (lines `state <name>`), in order.
pub fn led_states(text: &str) -> Vec<String> {
    text.lines().filter_map(|l| l.strip_prefix("state ")).map(str::to_string).collect()
}

/// A QMP session on a Unix socket: greeting read, `qmp_capabilities` sent.
pub struct Qmp {
    reader: std::io::BufReader<std::os::unix::net::UnixStream>,
    writer: std::os::unix::net::UnixStream,
}

impl Qmp {
    pub fn connect(sock: &Path) -> Result<Qmp> {
        let s = std::os::unix::net::UnixStream::connect(sock).with_context(|| format!("connect QMP {}", sock.display()))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut q = Qmp { reader: std::io::BufReader::new(s.try_clone()?), writer: s };
        let greeting = q.read_message()?;
        if greeting.get("QMP").is_none() {
            bail!("QMP: no greeting: {greeting}");
        }
        q.execute("qmp_capabilities", serde_json::json!({}))?;
        Ok(q)
    }

    fn read_message(&mut self) -> Result<serde_json::Value> {
        use std::io::BufRead;
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            bail!("QMP closed");
        }
        serde_json::from_str(&line).with_context(|| format!("QMP sent {line:?}"))
    }

    /// Runs `command`; its `return` value (events in between are skipped).
    pub fn execute(&mut self, command: &str, arguments: serde_json::Value) -> Result<serde_json::Value> {
        use std::io::Write;
        let mut req = serde_json::to_vec(&serde_json::json!({"execute": command, "arguments": arguments}))?;
        req.push(b'\n');
        self.writer.write_all(&req)?;
        loop {
            let m = self.read_message()?;
            if let Some(r) = m.get("return") {
                return Ok(r.clone());
            }
            if let Some(e) = m.get("error") {
                bail!("QMP {command}: {e}");
            }
        }
    }

    /// Presses (`down`) or releases the key `qcode` (e.g. `power`).
    pub fn key(&mut self, qcode: &str, down: bool) -> Result<()> {
        let ev = serde_json::json!({"events": [{"type": "key", "data": {"down": down, "key": {"type": "qcode", "data": qcode}}}]});
        self.execute("input-send-event", ev).map(|_| ())
    }

    /// Presses the key `qcode`, holds it `hold`, releases it.
    pub fn press_key(&mut self, qcode: &str, hold: Duration) -> Result<()> {
        self.key(qcode, true)?;
        std::thread::sleep(hold);
        self.key(qcode, false)
    }
}

/// A sparse copy of `image` in `dir` (every test works on its own disk).
pub fn copy_image(image: &Path, dir: &Path) -> Result<PathBuf> {
    let disk = dir.join("disk.raw");
    run_cmd(Command::new("cp").arg("--sparse=always").arg(image).arg(&disk)).context("copy the image")?;
    Ok(disk)
}

/// Copy partition `name` of `disk` out to the file `to` (dd, whole MiB).
pub fn read_partition(disk: &Path, name: &str, to: &Path) -> Result<()> {
    let (off, size) = partition(disk, name)?;
    run_cmd(Command::new("dd").arg(format!("if={}", disk.display())).arg(format!("of={}", to.display())).args([
        "bs=1M",
        &format!("skip={}", off >> 20),
        &format!("count={}", size >> 20),
        "status=none",
    ]))
    .map(|_| ())
}

/// Write the file `from` over the start of partition `name` of `disk`
/// (`/dev/zero` with `max` bytes wipes it); refuses what does not fit.
pub fn write_partition(disk: &Path, name: &str, from: &Path, max: Option<u64>) -> Result<()> {
    let (off, size) = partition(disk, name)?;
    let len = max.unwrap_or(std::fs::metadata(from)?.len());
    if len > size {
        bail!("{} ({len} bytes) does not fit partition {name} ({size} bytes)", from.display());
    }
    let mut c = Command::new("dd");
    c.arg(format!("if={}", from.display())).arg(format!("of={}", disk.display())).args([
        "bs=1M",
        &format!("seek={}", off >> 20),
        "conv=notrunc",
        "status=none",
    ]);
    if let Some(m) = max {
        c.arg(format!("count={}", m.div_ceil(1 << 20)));
    }
    run_cmd(&mut c).map(|_| ())
}

/// The ESP of a disk image, read and written with mtools (no mounts).
pub struct Esp {
    img: String,
}

impl Esp {
    pub fn of(disk: &Path) -> Result<Esp> {
        let (off, _) = partition(disk, "esp")?;
        Ok(Esp { img: format!("{}@@{off}", disk.display()) })
    }

    fn mtools(&self, prog: &str, args: &[&str]) -> Result<String> {
        run_cmd(Command::new(prog).env("MTOOLS_SKIP_CHECK", "1").arg("-i").arg(&self.img).args(args))
    }

    /// The boot entry file names in `loader/entries`.
    pub fn entries(&self) -> Result<Vec<String>> {
        let list = self.mtools("mdir", &["-b", "::/loader/entries"])?;
        Ok(list
            .lines()
            .map(str::trim)
            .filter(|l| l.ends_with(".conf"))
            .map(|l| l.rsplit('/').next().unwrap_or(l).to_string())
            .collect())
    }

    pub fn read(&self, path: &str) -> Result<String> {
        self.mtools("mtype", &[&format!("::{path}")])
    }

    /// Write `text` as `path` (replacing it), staged through `scratch`.
    pub fn write(&self, path: &str, text: &str, scratch: &Path) -> Result<()> {
        let local = scratch.join(path.rsplit('/').next().unwrap_or("esp-file"));
        std::fs::write(&local, text)?;
        self.mtools("mcopy", &["-o", &local.to_string_lossy(), &format!("::{path}")]).map(|_| ())
    }

    pub fn delete(&self, path: &str) -> Result<()> {
        self.mtools("mdel", &[&format!("::{path}")]).map(|_| ())
    }
}

/// A boot entry with `extra` appended to its `options` line.
pub fn entry_with_options(entry: &str, extra: &str) -> String {
    entry.lines().map(|l| if l.starts_with("options ") { format!("{l} {extra}\n") } else { format!("{l}\n") }).collect()
}

/// Append `extra` to the `options` line of every boot entry on the ESP.
pub fn append_cmdline(disk: &Path, extra: &str) -> Result<()> {
    let esp = Esp::of(disk)?;
    let scratch = tempfile::tempdir()?;
    let entries = esp.entries()?;
    if entries.is_empty() {
        bail!("no boot entries found on the ESP of {}", disk.display());
    }
    for name in entries {
        let path = format!("/loader/entries/{name}");
        let edited = entry_with_options(&esp.read(&path)?, extra);
        esp.write(&path, &edited, scratch.path())?;
    }
    Ok(())
}

/// Node config for the guest: kernel WireGuard `wg0`, uplink `eth0` 203.0.113.10
/// with gateway 203.0.113.1, every bed client as a peer.
pub fn guest_node_toml(bed: &TestBed, opts: &GuestOptions) -> String {
    let mut s = format!(
        "[node]\nname = \"{id}\"\nregion = \"test\"\npublic_endpoint = \"{ep}:{port}\"\n\n\
         [[uplink]]\ninterface = \"eth0\"\naddresses = [\"{ep}/24\", \"{ep6}/64\"]\ngateway_v4 = \"{gw}\"\nblock_on_link = false\n\n\
         [wireguard]\ninterface = \"wg0\"\nlisten_port = {port}\naddress_v4 = \"{t4}/16\"\naddress_v6 = \"{t6}/64\"\n\
         private_key_file = \"wg0.key\"\nbackend = \"kernel\"\n\n",
        id = bed.id,
        ep = addr::NODE_UP_V4,
        ep6 = addr::NODE_UP_V6,
        gw = addr::INET_V4,
        port = addr::WG_PORT,
        t4 = addr::NODE_TUN_V4,
        t6 = addr::NODE_TUN_V6,
    );
    for c in &bed.clients {
        s.push_str(&format!(
            "[[peer]]\nname = \"client-{}\"\npublic_key = \"{}\"\naddresses = [\"{}/32\", \"{}/128\"]\n\n",
            c.index, c.keys.public_key, c.tun_v4, c.tun_v6
        ));
    }
    let blocked: Vec<String> = crate::palisade::bed_blocked()
        .iter()
        .map(|b| format!("\"{b}\""))
        .collect();
    s.push_str(&format!("[egress]\nblocked = [{}]\n\n", blocked.join(", ")));
    s.push_str(&format!(
        "[management]\nmesh = [\"{}\"]\n\n",
        addr::MESH_CIDR
    ));
    s.push_str(&format!(
        "[dns]\n\n[[dns.upstream]]\naddress = \"{}:53\"\nprotocol = \"udp\"\n\n",
        addr::DNS_V4
    ));
    if !opts.blocklist.is_empty() {
        s.push_str("[dns.list.ads]\npath = \"/var/lib/palisade/ads.txt\"\n\n[dns.tier.default]\nlists = [\"ads\"]\n");
    }
    s.push_str(&opts.extra_toml);
    s
}

/// A booted guest. Dropping it kills QEMU (by pid) if it is still running.
#[derive(Debug)]
pub struct Vm {
    pub qemu: Proc,
    pub disk: PathBuf,
    pub console: PathBuf,
    pub monitor: PathBuf,
    pub started: Instant,
    /// The status LED's log (qemu/boot.sh `--led`), when started with it.
    pub led: Option<PathBuf>,
    /// The test hooks' port (`--test-port`), when started with it.
    pub test_port: Option<PathBuf>,
    /// The QMP socket (`--qmp`), when started with it.
    pub qmp: Option<PathBuf>,
    /// The console pty's reader, when started with `serial_pty`.
    serial: Option<SerialDrain>,
}

impl Vm {
    /// Boot `disk` (OVMF, TCG) with its uplink on a new tap of the bed's
    /// internet bridge, console to a file, a monitor socket, and optionally
    /// a config drive. `no_reboot`: QEMU exits when the guest reboots.
    pub fn start(bed: &TestBed, disk: &Path, config_drive: Option<&Path>, no_reboot: bool) -> Result<Vm> {
        Vm::start_with(bed, disk, config_drive, no_reboot, VmDevices::default(), Hw::Virtio)
    }

    /// [`Vm::start`] with the board's host-side devices, on the given emulated hardware.
    pub fn start_with(
        bed: &TestBed,
        disk: &Path,
        config_drive: Option<&Path>,
        no_reboot: bool,
        devices: VmDevices,
        hw: Hw,
    ) -> Result<Vm> {
        let dir = bed.log_dir();
        let tap = format!("pt{}{}", std::process::id(), bed.id.rsplit('-').next().unwrap_or("0"));
        bed.add_tap(&tap)?;
        let console = dir.join("console.log");
        let monitor = dir.join("monitor.sock");
        let pidfile = dir.join("qemu.pid");
        let boot = workspace().join("qemu/boot.sh");
        let mut argv: Vec<String> = vec![
            boot.display().to_string(),
            disk.display().to_string(),
            "--tap".into(),
            tap,
            "--serial".into(),
            console.display().to_string(),
            "--pidfile".into(),
            pidfile.display().to_string(),
            "--monitor".into(),
            monitor.display().to_string(),
        ];
        if let Some(cfg) = config_drive {
            argv.extend(["--config-drive".to_string(), cfg.display().to_string()]);
        }
        if no_reboot {
            argv.push("--no-reboot".into());
        }
        if devices.serial_pty {
            argv.push("--serial-pty".into());
        }
        if hw != Hw::Virtio {
            argv.extend(["--hw".to_string(), hw.arg().to_string()]);
        }
        let led = devices.led.then(|| dir.join("led.log"));
        let test_port = devices.test_port.then(|| dir.join("test.sock"));
        let qmp = devices.qmp.then(|| dir.join("qmp.sock"));
        for (flag, p) in [("--led", &led), ("--test-port", &test_port), ("--qmp", &qmp)] {
            if let Some(p) = p {
                argv.extend([flag.to_string(), p.display().to_string()]);
            }
        }
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        let started = Instant::now();
        // boot.sh execs QEMU: the Proc's pid is QEMU's. It runs inside the
        // internet namespace, where the tap is.
        let qemu = bed.inet.spawn("qemu", dir, &argv)?;
        let serial = devices.serial_pty.then(|| SerialDrain::start(qemu.log_path().to_path_buf()));
        Ok(Vm { qemu, disk: disk.to_path_buf(), console, monitor, started, led, test_port, qmp, serial })
    }

    /// The host side of the guest's serial console, a pty, handed to the
    /// test: the harness stops reading it and closes it (started with
    /// `serial_pty`; once per boot of QEMU).
    pub fn serial_pty(&mut self) -> Result<PathBuf> {
        let drain = self.serial.take().context("the VM was started without serial_pty, or its pty was handed out already")?;
        drain.release().with_context(|| format!("QEMU named no console pty:\n{}", self.qemu.log_text()))
    }

    /// The states the status LED has shown so far, in order.
    pub fn led_states(&self) -> Vec<String> {
        let text = self.led.as_ref().and_then(|p| std::fs::read(p).ok()).unwrap_or_default();
        led_states(&String::from_utf8_lossy(&text))
    }

    /// Wait (bounded) until the LED shows `state` as its state number
    /// `from` or later; returns that state's index.
    pub fn wait_led_state(&self, state: &str, from: usize, within: Duration) -> Result<usize> {
        wait_until(within, &format!("status LED {state:?} (from state #{from})"), || {
            self.led_states().iter().enumerate().skip(from).find(|(_, s)| *s == state).map(|(i, _)| i)
        })
        .with_context(|| format!("LED states: {:?}\nconsole so far:\n{}", self.led_states(), tail(&self.console_text(), 40)))
    }

    /// Send one line to the guest's test hooks (PID 1 reads it only with
    /// `palisade.test_hooks=1`).
    pub fn send_test_line(&self, line: &str) -> Result<()> {
        use std::io::Write;
        let sock = self.test_port.as_ref().context("the VM has no test port")?;
        let mut s = std::os::unix::net::UnixStream::connect(sock).with_context(|| format!("connect {}", sock.display()))?;
        s.write_all(format!("{line}\n").as_bytes())?;
        s.flush()?;
        // Give QEMU a moment to pass the bytes on before the host side closes.
        std::thread::sleep(Duration::from_millis(500));
        Ok(())
    }

    /// A QMP session with this VM.
    pub fn qmp(&self) -> Result<Qmp> {
        Qmp::connect(self.qmp.as_ref().context("the VM has no QMP socket")?)
    }

    pub fn console_text(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.console).unwrap_or_default()).into_owned()
    }

    /// Wait (bounded) for `needle` on the serial console; returns the time
    /// since QEMU started.
    pub fn wait_console(&self, needle: &str, within: Duration) -> Result<Duration> {
        wait_until(within, &format!("console: {needle:?}"), || {
            self.console_text().contains(needle).then(|| self.started.elapsed())
        })
        .with_context(|| format!("console so far:\n{}", tail(&self.console_text(), 40)))
    }

    /// Wait (bounded) until `needle` has appeared `n` times on the console
    /// (counting across the guest's reboots); returns the time since QEMU started.
    pub fn wait_console_count(&self, needle: &str, n: usize, within: Duration) -> Result<Duration> {
        wait_until(within, &format!("console: {needle:?} x{n}"), || {
            (self.console_text().matches(needle).count() >= n).then(|| self.started.elapsed())
        })
        .with_context(|| format!("console so far:\n{}", tail(&self.console_text(), 60)))
    }

    /// Run a QEMU monitor command (Unix socket) and wait until QEMU has run it.
    pub fn monitor(&self, cmd: &str) -> Result<()> {
        monitor_command(&self.monitor, cmd).map(|_| ())
    }

    /// Clean shutdown: ctrl-alt-delete makes palisaded (PID 1) stop and reboot,
    /// and `--no-reboot` makes QEMU exit then. Falls back to SIGTERM/SIGKILL.
    pub fn power_off(&mut self, within: Duration) -> Result<bool> {
        self.monitor("sendkey ctrl-alt-delete")?;
        let clean = wait_until(within, "QEMU exit after ctrl-alt-delete", || (!self.qemu.running()).then_some(()))
            .is_ok();
        if !clean {
            let _ = self.qemu.stop(Duration::from_secs(5));
        }
        Ok(clean)
    }

    /// Power cut: QEMU killed, nothing flushed.
    pub fn kill(&mut self) {
        self.qemu.kill();
    }
}

/// The bed's node as a guest: a [`Vm`] configured from the bed (config
/// drive, seeded key and list) with the bed's clients connected to it.
pub struct Guest {
    pub vm: Vm,
    pub node_key: KeyPair,
}

impl std::ops::Deref for Guest {
    type Target = Vm;
    fn deref(&self) -> &Vm {
        &self.vm
    }
}

impl std::ops::DerefMut for Guest {
    fn deref_mut(&mut self) -> &mut Vm {
        &mut self.vm
    }
}

impl Guest {
    /// Copy the image, seed key and list, make the config drive, boot, connect
    /// the bed's clients to the guest.
    pub fn boot(bed: &TestBed, image: &Path, opts: &GuestOptions) -> Result<Guest> {
        let dir = bed.log_dir();
        let disk = copy_image(image, dir)?;
        if let Some(extra) = &opts.extra_cmdline {
            append_cmdline(&disk, extra)?;
        }
        let (state_off, _) = partition(&disk, "state")?;
        let node_key = gen_keypair(dir, "guest-node")?;
        debugfs_write(&disk, state_off, &node_key.private_key_file, "wg0.key")?;
        if !opts.blocklist.is_empty() {
            let list = dir.join("ads.txt");
            std::fs::write(&list, opts.blocklist.join("\n") + "\n")?;
            debugfs_write(&disk, state_off, &list, "ads.txt")?;
        }
        let toml = dir.join("guest-node.toml");
        std::fs::write(&toml, guest_node_toml(bed, opts))?;
        let cfg = dir.join("config-drive.img");
        let mut mk = Command::new(workspace().join("qemu/mkconfigdrive.sh"));
        mk.arg(&toml).arg(&cfg);
        if let Some(root) = &opts.fleet_root {
            mk.arg(root);
        }
        run_cmd(&mut mk)?;
        let vm = Vm::start_with(bed, &disk, Some(&cfg), !opts.allow_reboot, opts.devices, opts.hw)?;
        for c in &bed.clients {
            c.connect(&node_key.public_key)?;
        }
        Ok(Guest { vm, node_key })
    }
}

fn tail(s: &str, n: usize) -> String {
    let v: Vec<&str> = s.lines().collect();
    v[v.len().saturating_sub(n)..].join("\n")
}

/// Count occurrences of each needle in a file, streaming (the disk image can be
/// large); needles may straddle chunk boundaries.
pub fn scan_file(path: &Path, needles: &[&[u8]]) -> Result<Vec<usize>> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).with_context(|| format!("open {}", path.display()))?;
    let keep = needles
        .iter()
        .map(|n| n.len())
        .max()
        .unwrap_or(1)
        .saturating_sub(1);
    let mut counts = vec![0usize; needles.len()];
    let mut buf = vec![0u8; 8 << 20];
    let mut carry: Vec<u8> = Vec::new();
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        let mut window = std::mem::take(&mut carry);
        let carried = window.len();
        window.extend_from_slice(&buf[..n]);
        for (i, nd) in needles.iter().enumerate() {
            if nd.is_empty() {
                continue;
            }
            // A match lying wholly in the carried bytes was counted last round.
            let mut start = 0;
            while let Some(pos) = find(&window[start..], nd) {
                let at = start + pos;
                if at + nd.len() > carried {
                    counts[i] += 1;
                }
                start = at + 1;
            }
        }
        let k = keep.min(window.len());
        carry = window[window.len() - k..].to_vec();
    }
    Ok(counts)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    memchr::memmem::find(hay, needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn led_states_in_order() {
        assert_eq!(led_states("state booting\nled on\nled off\nstate healthy\nled on\n"), ["booting", "healthy"]);
        assert!(led_states("led on\n").is_empty());
    }

    #[test]
    fn scan_counts_across_chunk_boundaries_once() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        let mut data = vec![0u8; (8 << 20) - 3 - 20];
        data.extend_from_slice(b"203.0.113.101");
        data.extend_from_slice(&[0u8; 100]);
        data.extend_from_slice(b"203.0.113.101 and allowed.example.test");
        data.splice(0..0, b"allowed.example.test".iter().copied());
        std::fs::write(&p, &data).unwrap();
        let c = scan_file(&p, &[b"203.0.113.101", b"allowed.example.test", b"absent"]).unwrap();
        assert_eq!(c, vec![2, 2, 0]);
    }
}
