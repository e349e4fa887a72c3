//! Running the real palisaded (userspace backend) in the bed's node namespace,
//! and its CLI against the node's control socket.

use crate::bed::{addr, TestBed};
use crate::ns::{run_cmd, wait_until};
use anyhow::{anyhow, bail, Context, Result};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

/// Paths of palisaded and palisade.
///
/// Order: `$PALISADED_BIN` / `$PALISADE_BIN` (tests/run.sh sets them), then
/// `$CARGO_TARGET_DIR/debug`, then `<workspace>/target/debug`; if neither has
/// them, `cargo build -p palisaded -p palisade-cli` is run once.
#[derive(Debug, Clone)]
pub struct PalisadeBins {
    pub palisaded: PathBuf,
    pub palisade: PathBuf,
}

impl PalisadeBins {
    pub fn locate() -> Result<PalisadeBins> {
        if let (Some(d), Some(c)) = (
            std::env::var_os("PALISADED_BIN"),
            std::env::var_os("PALISADE_BIN"),
        ) {
            let b = PalisadeBins {
                palisaded: d.into(),
                palisade: c.into(),
            };
            if b.palisaded.is_file() && b.palisade.is_file() {
                return Ok(b);
            }
            bail!("PALISADED_BIN/PALISADE_BIN do not name files: {b:?}");
        }
        let ws = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("tests/ has a parent")
            .to_path_buf();
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| ws.join("target"));
        let found = |dir: &Path| {
            let b = PalisadeBins {
                palisaded: dir.join("palisaded"),
                palisade: dir.join("palisade"),
            };
            (b.palisaded.is_file() && b.palisade.is_file()).then_some(b)
        };
        // Build (incremental: quick when up to date) so tests never run stale binaries.
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let st = Command::new(cargo)
            .args(["build", "-q", "-p", "palisaded", "-p", "palisade-cli"])
            .current_dir(&ws)
            .env("CARGO_TARGET_DIR", &target)
            .status()
            .context("run cargo build -p palisaded -p palisade-cli")?;
        if !st.success() {
            bail!("cargo build -p palisaded -p palisade-cli failed");
        }
        found(&target.join("debug"))
            .ok_or_else(|| anyhow!("palisaded/palisade not found under {}", target.display()))
    }
}

/// What goes into the node config besides the bed's fixed addressing.
#[derive(Debug, Clone, Default)]
pub struct NodeOptions {
    /// Extra `[[egress.allow]]` tables, as TOML bodies (e.g. `cidr = "10.99.0.80/32"\nprotocol = "tcp"\nports = [8080]`).
    pub allow: Vec<String>,
    /// Clients (1-based) to put in node.toml; the rest can be added with the CLI.
    /// `None`: all clients.
    pub peers: Option<Vec<usize>>,
    /// Appended verbatim (e.g. `[dns.list.*]` and `[dns.tier.*]` tables).
    pub extra_toml: String,
    /// Replaces the bed's egress `blocked` list.
    pub blocked: Option<Vec<String>>,
    /// Directory put first on palisaded's PATH (e.g. a failing `nft`).
    pub path_prefix: Option<PathBuf>,
    /// Seconds between reconcile passes (default: the product default, 2 s;
    /// the mutation check sets a day so nothing repairs its mutants).
    pub reconcile_secs: Option<u64>,
    /// Start without waiting for the nft table (a node expected to fail
    /// closed from the start never loads it).
    pub no_table_expected: bool,
    /// Extra palisaded arguments (e.g. the update overrides `--update-slots`).
    pub extra_args: Vec<String>,
}

/// The egress blocked list the bed uses: the product default minus the
/// documentation ranges the bed itself uses as "the internet" (203.0.113.0/24,
/// 2001:db8::/32). Everything else stays blocked.
pub fn bed_blocked() -> Vec<String> {
    palisade_core::config::default_blocked()
        .into_iter()
        .map(|n| n.to_string())
        .filter(|n| n != "203.0.113.0/24" && n != "2001:db8::/32")
        .collect()
}

/// Render node.toml for `bed` (userspace backend, the bed's interface names).
pub fn render_node_toml(bed: &TestBed, opts: &NodeOptions) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "[node]\nname = \"{id}\"\nregion = \"test\"\npublic_endpoint = \"{ep}:{port}\"\n",
        id = bed.id,
        ep = addr::NODE_UP_V4,
        port = addr::WG_PORT
    );
    let _ = writeln!(
        s,
        // The bed's "internet" is on-link behind eth0, so the node's LAN
        // neighbours are the internet here: opt out of on-link blocking
        // (netns_failclosed tests it with a LAN behind a second uplink).
        "[[uplink]]\ninterface = \"eth0\"\naddresses = [\"{}/24\", \"{}/64\"]\nblock_on_link = false\n",
        addr::NODE_UP_V4,
        addr::NODE_UP_V6
    );
    let _ = writeln!(
        s,
        "[wireguard]\ninterface = \"{}\"\nlisten_port = {}\naddress_v4 = \"{}/16\"\naddress_v6 = \"{}/64\"\nprivate_key_file = \"wg.key\"\nbackend = \"userspace\"\n",
        bed.node_if,
        addr::WG_PORT,
        addr::NODE_TUN_V4,
        addr::NODE_TUN_V6
    );
    for c in &bed.clients {
        if opts.peers.as_ref().is_some_and(|p| !p.contains(&c.index)) {
            continue;
        }
        let _ = writeln!(
            s,
            "[[peer]]\nname = \"client-{}\"\npublic_key = \"{}\"\naddresses = [\"{}/32\", \"{}/128\"]\n",
            c.index, c.keys.public_key, c.tun_v4, c.tun_v6
        );
    }
    let blocked: Vec<String> = opts
        .blocked
        .clone()
        .unwrap_or_else(bed_blocked)
        .iter()
        .map(|b| format!("\"{b}\""))
        .collect();
    let _ = writeln!(s, "[egress]\nblocked = [{}]\n", blocked.join(", "));
    for a in &opts.allow {
        let _ = writeln!(s, "[[egress.allow]]\n{a}\n");
    }
    let ports: Vec<String> = addr::MGMT_PORTS.iter().map(|p| p.to_string()).collect();
    let _ = writeln!(
        s,
        "[management]\nmesh = [\"{}\"]\nports = [{}]\n",
        addr::MESH_CIDR,
        ports.join(", ")
    );
    let _ = writeln!(
        s,
        "[dns]\n\n[[dns.upstream]]\naddress = \"{}:53\"\nprotocol = \"udp\"\n",
        addr::DNS_V4
    );
    s.push_str(&opts.extra_toml);
    s
}

/// palisaded running in the bed's node namespace.
#[derive(Debug, Clone)]
pub struct Palisade {
    pub bins: PalisadeBins,
    pub path_prefix: Option<PathBuf>,
    pub no_table_expected: bool,
    pub reconcile_secs: u64,
    pub extra_args: Vec<String>,
    pub state_dir: PathBuf,
    pub run_dir: PathBuf,
    pub config: PathBuf,
    /// The node's WireGuard public key (read from the interface).
    pub public_key: String,
}

impl Palisade {
    /// Write node.toml, start palisaded (reconcile every 2 s, the default), wait until the
    /// interface, the firewall table and the control socket are up, and connect
    /// every client.
    pub fn start(bed: &mut TestBed, opts: &NodeOptions) -> Result<Palisade> {
        let text = render_node_toml(bed, opts);
        Palisade::start_with_config(bed, &text, opts)
    }

    /// Like [`Palisade::start`] with the node config given as text.
    pub fn start_with_config(bed: &mut TestBed, config_text: &str, opts: &NodeOptions) -> Result<Palisade> {
        let bins = PalisadeBins::locate()?;
        let state_dir = bed.dir.path().join("state");
        let run_dir = bed.dir.path().join("run");
        std::fs::create_dir_all(&state_dir)?;
        std::fs::create_dir_all(&run_dir)?;
        let config = state_dir.join("node.toml");
        std::fs::write(&config, config_text)?;
        let mut p = Palisade {
            bins,
            path_prefix: opts.path_prefix.clone(),
            no_table_expected: opts.no_table_expected,
            reconcile_secs: opts.reconcile_secs.unwrap_or(2),
            extra_args: opts.extra_args.clone(),
            state_dir,
            run_dir,
            config,
            public_key: String::new(),
        };
        p.spawn(bed)?;
        for c in &bed.clients {
            c.connect(&p.public_key)?;
        }
        Ok(p)
    }

    /// Start (or restart) the daemon process and wait only for its control
    /// socket (a revoked node serves no tunnel and no table of its own).
    pub fn spawn_socket_only(&mut self, bed: &mut TestBed) -> Result<()> {
        let _ = std::fs::remove_file(self.socket());
        self.start_process(bed)?;
        let sock = self.socket();
        wait_until(Duration::from_secs(15), "palisaded: control socket", || sock.exists().then_some(()))
    }

    fn start_process(&mut self, bed: &mut TestBed) -> Result<()> {
        let d = self.bins.palisaded.to_string_lossy().into_owned();
        let secs = self.reconcile_secs.to_string();
        let (config, state, run) = (
            self.config.to_string_lossy().into_owned(),
            self.state_dir.to_string_lossy().into_owned(),
            self.run_dir.to_string_lossy().into_owned(),
        );
        let mut argv = vec![
            d.as_str(),
            "--config",
            &config,
            "--state-dir",
            &state,
            "--run-dir",
            &run,
            // The product default (2 s) unless a test says otherwise: drift
            // repair is tested as shipped.
            "--reconcile-secs",
            &secs,
        ];
        argv.extend(self.extra_args.iter().map(String::as_str));
        let log = std::env::var("PALISADE_LOG").unwrap_or_else(|_| "info".into());
        let path = match &self.path_prefix {
            Some(d) => format!("{}:{}", d.display(), std::env::var("PATH").unwrap_or_default()),
            None => std::env::var("PATH").unwrap_or_default(),
        };
        let proc = bed.node.spawn_env(
            "palisaded",
            bed.log_dir(),
            &argv,
            &[("PALISADE_LOG", &log), ("PATH", &path)],
        )?;
        bed.node_procs.palisaded = Some(proc);
        Ok(())
    }

    /// Start (or restart) the daemon process and wait until it is serving.
    pub fn spawn(&mut self, bed: &mut TestBed) -> Result<()> {
        self.start_process(bed)?;
        let sock = self.socket();
        let ifn = bed.node_if.clone();
        let r = wait_until(
            Duration::from_secs(15),
            "palisaded: control socket, WireGuard interface and nft table",
            || {
                if !sock.exists() {
                    return None;
                }
                let d = bed.node_dump().ok()?;
                if d.listen_port != addr::WG_PORT {
                    return None;
                }
                if !self.no_table_expected {
                    bed.node
                        .run(&["nft", "list", "table", "inet", "palisade"])
                        .ok()?;
                }
                let a = bed.node.ip(&["addr", "show", "dev", &ifn]).ok()?;
                a.contains(&addr::NODE_TUN_V4.to_string())
                    .then_some(d.public_key)
            },
        );
        match r {
            Ok(k) => {
                self.public_key = k;
                Ok(())
            }
            Err(e) => {
                let tail = bed
                    .node_procs
                    .palisaded
                    .as_ref()
                    .map(|p| p.log_tail(40))
                    .unwrap_or_default();
                bail!("{e}\npalisaded log:\n{tail}")
            }
        }
    }

    pub fn socket(&self) -> PathBuf {
        self.run_dir.join("palisaded.sock")
    }

    /// `palisade --socket <sock> ARGS` in the node namespace (its full output).
    pub fn cli(&self, bed: &TestBed, args: &[&str]) -> Result<Output> {
        let c = self.bins.palisade.to_string_lossy().into_owned();
        let s = self.socket().to_string_lossy().into_owned();
        let mut argv = vec![c.as_str(), "--socket", s.as_str()];
        argv.extend_from_slice(args);
        bed.node.output(&argv)
    }

    /// Like [`Palisade::cli`] but it must exit 0; returns stdout.
    pub fn cli_ok(&self, bed: &TestBed, args: &[&str]) -> Result<String> {
        let o = self.cli(bed, args)?;
        if !o.status.success() {
            bail!(
                "palisade {args:?} failed ({}): {}{}",
                o.status,
                String::from_utf8_lossy(&o.stderr),
                String::from_utf8_lossy(&o.stdout)
            );
        }
        Ok(String::from_utf8_lossy(&o.stdout).into_owned())
    }
}

impl Palisade {
    /// When palisaded's last reconcile pass ended (unix seconds, from
    /// `palisade status --json`); `None` before the first pass.
    pub fn last_reconcile(&self, bed: &TestBed) -> Result<Option<u64>> {
        let out = self.cli_ok(bed, &["status", "--json"])?;
        let v: serde_json::Value = serde_json::from_str(&out).context("status JSON")?;
        Ok(v["last_reconcile"]["unix_time"].as_u64())
    }

    /// Wait until palisaded has finished `n` more reconcile passes (timer,
    /// reload or CLI change) than when called. Passes run 2 s apart and the
    /// status reports whole seconds, so each pass shows as a new time.
    pub fn wait_reconcile_passes(&self, bed: &TestBed, n: usize, within: Duration) -> Result<()> {
        let mut last = self.last_reconcile(bed)?;
        for i in 1..=n {
            last = Some(wait_until(
                within,
                &format!("reconcile pass {i} of {n}"),
                || {
                    let now = self.last_reconcile(bed).ok()??;
                    (Some(now) > last).then_some(now)
                },
            )?);
        }
        Ok(())
    }
}

/// `wg genkey | wg pubkey` for a throwaway peer (the CLI add/remove tests).
pub fn throwaway_public_key() -> Result<String> {
    let k = run_cmd(Command::new("wg").arg("genkey"))?;
    crate::wg::pubkey_of(k.trim())
}
