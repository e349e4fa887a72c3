//! palisade: the operator CLI. Talks to palisaded over its control socket.
//! Nothing it prints contains a client's endpoint address.

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use palisade_core::config::PrivateKey;
use palisade_core::control::{call, Request};
use serde_json::Value;
use std::path::PathBuf;
use std::time::Duration;
use zeroize::Zeroizing;

#[derive(Parser)]
#[command(name = "palisade", version, about = "Operate a Palisade node")]
struct Cli {
    /// palisaded's control socket.
    #[arg(long, env = "PALISADE_SOCKET", default_value = "/run/palisade/palisaded.sock")]
    socket: PathBuf,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Node, tunnel and firewall state (aggregates only).
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Manage peers (persisted in the state partition).
    Peers {
        #[command(subcommand)]
        cmd: PeersCmd,
    },
    /// Re-read the config and apply it; a bad config is refused and the running state kept.
    Reload,
    /// Show what a reload would change, without touching anything.
    Plan,
    /// Print a wg-quick config (and a QR code) for a peer.
    ClientConfig {
        peer: String,
        /// The client's private key file; without it a placeholder is printed.
        #[arg(long)]
        private_key_file: Option<PathBuf>,
        #[arg(long)]
        no_qr: bool,
        /// Also print this signed node list (palisade-fleet nodelist set) and
        /// the palisade-client command that fails over along it.
        #[arg(long, value_name = "FILE")]
        node_list: Option<PathBuf>,
        /// The fleet's node-list public key (base64): verify the list with it.
        #[arg(long, value_name = "BASE64", requires = "node_list")]
        node_list_key: Vec<String>,
    },
    /// The DNS resolver.
    Dns {
        #[command(subcommand)]
        cmd: DnsCmd,
    },
    /// Signed A/B updates (docs/updates.md).
    Update {
        #[command(subcommand)]
        cmd: UpdateCmd,
    },
    /// The node's identity: node id and identity public key (for enrolment).
    Identity {
        #[arg(long)]
        json: bool,
    },
    /// Fleet trust: enrolment, the repository, config, grants and lists.
    Fleet {
        #[command(subcommand)]
        cmd: FleetCmd,
    },
}

#[derive(Subcommand)]
enum FleetCmd {
    /// Enrolment, revocation, the last check, the applied config, grant counts and lists.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Forget the enrolment and the fleet state and make a new identity, so
    /// the node can be enrolled again (a revoked node stays locked down
    /// until then).
    FactoryReset {
        /// Required: this cannot be undone.
        #[arg(long)]
        yes: bool,
    },
}

#[derive(Subcommand)]
enum UpdateCmd {
    /// Installed version, the update journal, progress, the last check and refusal.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Poll the repository now.
    Check,
    /// Install from a repository URL (http://, https://, file:///), a repository
    /// directory (e.g. a USB copy), or an image file that must be a signed target
    /// of the node's repository. Verified like a scheduled update; progress is
    /// shown while the slot is written.
    Apply {
        source: String,
        /// Install this version (default: the newest image for this board).
        #[arg(long)]
        version: Option<String>,
        /// Write the slot and its boot entry but do not reboot.
        #[arg(long)]
        no_reboot: bool,
        /// Print the final status as JSON instead of progress.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum PeersCmd {
    List {
        #[arg(long)]
        json: bool,
    },
    Add {
        name: String,
        /// The client's public key. Omit with --generate-key.
        #[arg(long, required_unless_present = "generate_key")]
        public_key: Option<String>,
        /// Generate the client's key pair here and print its config once
        /// (the private key is never stored on the node).
        #[arg(long)]
        generate_key: bool,
        /// Tunnel addresses (/32 and /128); allocated when omitted.
        #[arg(long = "address")]
        addresses: Vec<String>,
        #[arg(long)]
        tier: Option<String>,
        /// File holding the base64 preshared key, or `-` for standard input
        /// (never a command-line argument: those are visible in the process list).
        #[arg(long, value_name = "FILE")]
        preshared_key_file: Option<PathBuf>,
        #[arg(long)]
        no_qr: bool,
    },
    Remove {
        /// Peer name or public key.
        peer: String,
    },
}

#[derive(Subcommand)]
enum DnsCmd {
    Stats {
        #[arg(long)]
        json: bool,
    },
}

fn main() {
    if let Err(e) = run(Cli::parse()) {
        eprintln!("palisade: {e:#}");
        std::process::exit(exit_code(&e));
    }
}

/// Exit status by the kind of refusal, for scripts: 2 invalid config, 3 no
/// such peer, 4 not available yet (no config loaded, resolver down, an install
/// already running), 5 bad request, 6 update refused (the reason is printed and
/// in `palisade update status`), 7 fleet-managed (the change belongs in the
/// fleet repository), 1 anything else (the socket, the system).
fn exit_code(e: &anyhow::Error) -> i32 {
    use palisade_core::control::{ControlError, ErrorKind};
    if e.downcast_ref::<UpdateRefused>().is_some() {
        return 6;
    }
    match e.downcast_ref::<ControlError>() {
        Some(ControlError::Refused { kind: Some(kind), .. }) => match kind {
            ErrorKind::InvalidConfig => 2,
            ErrorKind::NotFound => 3,
            ErrorKind::Unavailable => 4,
            ErrorKind::BadRequest => 5,
            ErrorKind::System => 1,
            ErrorKind::FleetManaged => 7,
        },
        _ => 1,
    }
}

fn req(cli: &Cli, r: &Request) -> anyhow::Result<Value> {
    Ok(call(&cli.socket, r, Duration::from_secs(120))?)
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match &cli.cmd {
        Cmd::Status { json } => {
            let v = req(&cli, &Request::Status)?;
            if *json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                print_status(&v);
            }
        }
        Cmd::Peers { cmd: PeersCmd::List { json } } => {
            let v = req(&cli, &Request::PeersList)?;
            if *json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                println!("{:<20} {:<45} {:<32} TIER", "NAME", "PUBLIC KEY", "ADDRESSES");
                for p in v.as_array().into_iter().flatten() {
                    let addrs: Vec<&str> = p["addresses"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
                    println!(
                        "{:<20} {:<45} {:<32} {}",
                        p["name"].as_str().unwrap_or(""),
                        p["public_key"].as_str().unwrap_or(""),
                        addrs.join(","),
                        p["tier"].as_str().unwrap_or("-")
                    );
                }
            }
        }
        Cmd::Peers { cmd: PeersCmd::Add { name, public_key, generate_key, addresses, tier, preshared_key_file, no_qr } } => {
            let preshared_key = match preshared_key_file {
                Some(p) => Some(read_secret(p)?),
                None => None,
            };
            let generated = generate_key.then(PrivateKey::generate);
            let public_key = match (&generated, public_key) {
                (Some(k), _) => k.public_key().to_base64(),
                (None, Some(p)) => p.clone(),
                (None, None) => bail!("give --public-key or --generate-key"),
            };
            let r = req(
                &cli,
                &Request::PeersAdd {
                    name: name.clone(),
                    public_key,
                    addresses: addresses.clone(),
                    tier: tier.clone(),
                    preshared_key: preshared_key.as_ref().map(|k| k.to_string()),
                },
            )?;
            eprintln!("added peer '{name}' ({} change(s) applied)", r["wg_peer_changes"]);
            if let Some(k) = generated {
                let c = req(&cli, &Request::ClientConfig { peer: name.clone() })?;
                let b64 = Zeroizing::new(base64::Engine::encode(&base64::engine::general_purpose::STANDARD, k.to_wg().0));
                print_client_config(&c, Some(b64.as_str()), !*no_qr)?;
            }
        }
        Cmd::Peers { cmd: PeersCmd::Remove { peer } } => {
            let r = req(&cli, &Request::PeersRemove { peer: peer.clone() })?;
            eprintln!("removed peer '{peer}' ({} change(s) applied)", r["wg_peer_changes"]);
        }
        Cmd::Reload => {
            let r = req(&cli, &Request::Reload)?;
            println!(
                "reloaded: {} peer change(s), firewall {}",
                r["wg_peer_changes"],
                if r["firewall_applied"].as_bool() == Some(true) { "applied" } else { "unchanged" }
            );
            for e in r["errors"].as_array().into_iter().flatten() {
                println!("error: {}", e.as_str().unwrap_or(""));
            }
        }
        Cmd::Plan => {
            let v = req(&cli, &Request::Plan)?;
            let lines: Vec<&str> = v.as_array().into_iter().flatten().filter_map(Value::as_str).collect();
            if lines.is_empty() {
                println!("no changes");
            }
            for l in lines {
                println!("{l}");
            }
        }
        Cmd::ClientConfig { peer, private_key_file, no_qr, node_list, node_list_key } => {
            let c = req(&cli, &Request::ClientConfig { peer: peer.clone() })?;
            let key = match private_key_file {
                Some(p) => Some(Zeroizing::new(
                    std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?.trim().to_string(),
                )),
                None => None,
            };
            // Check the list before printing anything: a bad list prints nothing.
            let nodes = match node_list {
                Some(f) => Some(render_node_list(&c, f, node_list_key, private_key_file.as_deref())?),
                None => None,
            };
            print_client_config(&c, key.as_deref().map(String::as_str), !*no_qr)?;
            if let Some(n) = nodes {
                print!("{n}");
            }
        }
        Cmd::Update { cmd: UpdateCmd::Status { json } } => {
            let v = req(&cli, &Request::UpdateStatus)?;
            if *json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                print_update_status(&v);
            }
        }
        Cmd::Update { cmd: UpdateCmd::Check } => {
            req(&cli, &Request::UpdateCheck)?;
            eprintln!("checking; see `palisade update status`");
        }
        Cmd::Update { cmd: UpdateCmd::Apply { source, version, no_reboot, json } } => {
            let before = req(&cli, &Request::UpdateStatus)?;
            req(&cli, &Request::UpdateApply { source: source.clone(), version: version.clone(), reboot: !*no_reboot })?;
            follow_apply(&cli, &before, *json)?;
        }
        Cmd::Identity { json } => {
            let v = req(&cli, &Request::Identity)?;
            if *json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                print!("{}", identity_text(&v));
            }
        }
        Cmd::Fleet { cmd: FleetCmd::FactoryReset { yes } } => {
            let v = req(&cli, &Request::FactoryReset { confirm: *yes })?;
            println!("fleet state cleared; new identity: node {}", v["node_id"].as_str().unwrap_or("-"));
        }
        Cmd::Fleet { cmd: FleetCmd::Status { json } } => {
            let v = req(&cli, &Request::FleetStatus)?;
            if *json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                print!("{}", fleet_status_text(&v));
            }
        }
        Cmd::Dns { cmd: DnsCmd::Stats { json } } => {
            let v = req(&cli, &Request::DnsStats)?;
            if *json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else if let Some(m) = v.as_object() {
                for (k, x) in m {
                    println!("{k:<24} {x}");
                }
            }
        }
    }
    Ok(())
}

/// An update the node refused (or whose install failed).
#[derive(Debug)]
struct UpdateRefused(String);

impl std::fmt::Display for UpdateRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "update refused: {}", self.0)
    }
}

impl std::error::Error for UpdateRefused {}

fn print_update_status(v: &Value) {
    let j = &v["journal"];
    println!("installed   {} (slot {}, board {})", v["installed"].as_str().unwrap_or("-"), v["booted_slot"].as_str().unwrap_or("-"), v["board"].as_str().unwrap_or("-"));
    println!("phase       {}", v["phase_text"].as_str().unwrap_or("-"));
    if let Some(f) = j["failed"].as_array().filter(|f| !f.is_empty()) {
        let f: Vec<&str> = f.iter().filter_map(Value::as_str).collect();
        println!("failed      {} (never installed again)", f.join(", "));
    }
    if let Some(p) = v["progress"].as_object() {
        println!("progress    {} {}/{} bytes", p["stage"].as_str().unwrap_or("-"), p["done"], p["total"]);
    }
    let c = &v["last_check"];
    if !c.is_null() {
        if c["ok"] == true {
            println!("last check  {} ok: rollout {}, images {}", c["at"].as_str().unwrap_or("-"), c["rollout"].as_str().unwrap_or("none"), c["images"]);
        } else {
            println!("last check  {} FAILED ({}): {}", c["at"].as_str().unwrap_or("-"), c["kind"].as_str().unwrap_or("-"), c["error"].as_str().unwrap_or("-"));
        }
    }
    if let Some(n) = v["next_check"].as_str() {
        println!("next check  {n}");
    }
    let r = &j["last_refusal"];
    if !r.is_null() {
        println!("refused     {} ({}): {}", r["at"].as_str().unwrap_or("-"), r["kind"].as_str().unwrap_or("-"), r["message"].as_str().unwrap_or("-"));
    }
}

/// Follows an install started by `update apply` until it ends, with a
/// progress bar on a terminal; errors with the refusal when it failed.
fn follow_apply(cli: &Cli, before: &Value, json: bool) -> anyhow::Result<()> {
    let refusal_before = before["journal"]["last_refusal"].clone();
    let bar = (!json && std::io::IsTerminal::is_terminal(&std::io::stderr())).then(|| {
        let b = indicatif::ProgressBar::new(0);
        b.set_style(
            indicatif::ProgressStyle::with_template("{msg:9} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        b
    });
    let mut last_stage = String::new();
    let v = loop {
        std::thread::sleep(Duration::from_millis(200));
        let v = req(cli, &Request::UpdateStatus)?;
        if let Some(p) = v["progress"].as_object() {
            let stage = p["stage"].as_str().unwrap_or("").to_string();
            match &bar {
                Some(b) => {
                    b.set_message(stage.clone());
                    b.set_length(p["total"].as_u64().unwrap_or(0));
                    b.set_position(p["done"].as_u64().unwrap_or(0));
                }
                None if !json && stage != last_stage => eprintln!("{stage}..."),
                None => {}
            }
            last_stage = stage;
        }
        if v["busy"] != true {
            break v;
        }
    };
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&v)?);
    }
    let r = &v["journal"]["last_refusal"];
    if !r.is_null() && *r != refusal_before {
        return Err(UpdateRefused(format!("{}: {}", r["kind"].as_str().unwrap_or("-"), r["message"].as_str().unwrap_or("-"))).into());
    }
    if !json {
        println!("{}", v["phase_text"].as_str().unwrap_or("-"));
    }
    Ok(())
}

/// A secret from a file (or standard input for `-`), trimmed, zeroed on drop.
fn read_secret(path: &std::path::Path) -> anyhow::Result<Zeroizing<String>> {
    let mut text = Zeroizing::new(String::new());
    if path == std::path::Path::new("-") {
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut text).context("reading the preshared key from standard input")?;
    } else {
        std::io::Read::read_to_string(
            &mut std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?,
            &mut text,
        )
        .with_context(|| format!("reading {}", path.display()))?;
    }
    let key = Zeroizing::new(text.trim().to_string());
    if key.is_empty() {
        bail!("{}: no preshared key in it", path.display());
    }
    Ok(key)
}

/// A JSON value as one word for the readable views: strings bare, null
/// and absent as `-`, anything else as JSON.
fn word(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        Value::Bool(b) => if *b { "yes" } else { "no" }.into(),
        other => other.to_string(),
    }
}

fn identity_text(v: &Value) -> String {
    let mut s = String::new();
    s += &format!("node id     {}\n", word(&v["node_id"]));
    s += &format!("public key  {}\n", word(&v["public_key"]));
    s += &format!("enrolled    {}\n", word(&v["enrolled"]));
    if !v["name"].is_null() || !v["region"].is_null() {
        s += &format!("name        {} ({})\n", word(&v["name"]), word(&v["region"]));
    }
    s
}

/// `palisade fleet status`: every field the daemon sends, missing ones as
/// `-`, fields this CLI does not know listed at the end as they came.
fn fleet_status_text(v: &Value) -> String {
    const KNOWN: [&str; 10] = ["enrolled", "revoked", "repository", "last_check", "last_error", "config", "grants", "lists", "poll_secs", "node_id"];
    let mut s = String::new();
    let mut line = |k: &str, val: String| s += &format!("{k:<11} {val}\n");
    line("enrolled", word(&v["enrolled"]));
    if v["revoked"] == true {
        line("revoked", "YES: locked down (no tunnel, no key, nothing forwarded) until re-enrolled".into());
    } else {
        line("revoked", word(&v["revoked"]));
    }
    line("repository", word(&v["repository"]));
    let poll = match &v["poll_secs"] {
        Value::Null => "-".to_string(),
        p => format!("every {} s", word(p)),
    };
    line("last check", format!("{} (polling {poll})", word(&v["last_check"])));
    let e = &v["last_error"];
    if e.is_object() {
        line("last error", format!("{}: {}", word(&e["kind"]), word(&e["message"])));
    } else if !e.is_null() {
        line("last error", word(e));
    }
    let c = &v["config"];
    if c.is_object() {
        line(
            "config",
            format!("sha256 {} (configs role version {}), applied {}", word(&c["sha256"]), word(&c["role_version"]), word(&c["applied_at"])),
        );
    } else {
        line("config", word(c));
    }
    let g = &v["grants"];
    if g.is_object() {
        line("grants", format!("{} active, {} rejected, next expiry {}", word(&g["active"]), word(&g["rejected"]), word(&g["next_expiry"])));
    } else {
        line("grants", word(g));
    }
    let lists = match &v["lists"] {
        Value::Array(a) if a.is_empty() => "none".to_string(),
        Value::Array(a) => a.iter().map(word).collect::<Vec<_>>().join(", "),
        other => word(other),
    };
    line("lists", lists);
    if let Some(m) = v.as_object() {
        for (k, x) in m.iter().filter(|(k, _)| !KNOWN.contains(&k.as_str())) {
            line(k, word(x));
        }
    }
    s
}

fn print_status(v: &Value) {
    let node = &v["node"];
    println!("node        {} ({})", node["name"].as_str().unwrap_or("-"), node["region"].as_str().unwrap_or("-"));
    println!("version     {}", v["version"].as_str().unwrap_or("-"));
    if let Some(e) = v["config_error"].as_str() {
        println!("config      REFUSED: {e}");
    }
    let w = &v["wireguard"];
    println!(
        "wireguard   {} ({}) {} port {} key {}",
        w["interface"].as_str().unwrap_or("-"),
        w["backend"].as_str().unwrap_or("-"),
        if w["up"].as_bool() == Some(true) { "up" } else { "DOWN" },
        w["listen_port"],
        w["public_key"].as_str().unwrap_or("-")
    );
    println!(
        "peers       {} configured, {} on interface, {} active (3 min)",
        w["peers_configured"], w["peers_on_interface"], w["peers_active_3min"]
    );
    let f = &v["firewall"];
    println!(
        "firewall    {}{} {}",
        f["table"].as_str().unwrap_or("-"),
        if f["mode"] == "lockdown" { " (LOCKDOWN)" } else { "" },
        match (f["loaded"].as_bool(), f["verified"].as_bool()) {
            (Some(true), Some(true)) => "loaded, verified",
            (Some(true), _) => "loaded, NOT verified",
            _ => "NOT LOADED",
        }
    );
    if v["revoked"] == true {
        println!("revoked     YES: lockdown table, no tunnel, no key (see `palisade fleet status`)");
    }
    match v["fail_closed"].as_str() {
        Some(why) => println!("forwarding  OFF (fail-closed): {why}"),
        None => println!("forwarding  on"),
    }
    println!("dns         {}", dns_line(&v["dns"]));
    for u in v["uplinks"]["uplinks"].as_array().into_iter().flatten() {
        println!("{}", uplink_line(u));
    }
    if let Some(e) = v["dns"]["reload_error"].as_str() {
        println!("            last reload refused (previous policy kept): {e}");
    }
    if let Some(r) = v["last_reconcile"].as_object() {
        let errs = r["report"]["errors"].as_array().map(|a| a.len()).unwrap_or(0);
        println!("reconcile   {} error(s), {} us", errs, r["report"]["duration_us"]);
    }
}

/// One uplink in one line: `uplink      eth0 ACTIVE healthy (rtt 1.2 ms)`.
fn uplink_line(u: &Value) -> String {
    let mut s = format!("uplink      {}", u["interface"].as_str().unwrap_or("?"));
    if u["active"] == true {
        s += " ACTIVE";
    }
    s += if u["healthy"] == true { " healthy" } else { " UNHEALTHY" };
    if u["carrier"] == false {
        s += ", no carrier";
    }
    if let Some(ms) = u["last_rtt_ms"].as_f64() {
        s += &format!(" (probe rtt {ms:.1} ms)");
    } else if u["probe_targets"].as_u64().unwrap_or(0) > 0 {
        s += &format!(" ({} failed probe round(s))", u["failed_rounds"]);
    }
    s
}

/// The resolver's state in one line: running (and whether its canary query
/// is answered), failed with the reason and the time to the next start,
/// disabled, or not started.
fn dns_line(d: &Value) -> String {
    match d["state"].as_str() {
        Some("running") => {
            let c = &d["canary"];
            if d["answering"].as_bool() == Some(true) {
                format!("running, answering (canary {} s ago)", c["age_s"])
            } else if let Some(e) = c["error"].as_str() {
                format!("running, NOT ANSWERING: {e}")
            } else {
                "running, canary pending".to_string()
            }
        }
        Some("failed") => format!(
            "FAILED: {}; restarting in {} s ({} failed attempt(s))",
            d["reason"].as_str().unwrap_or("?"),
            d["retry_in_s"],
            d["failures"]
        ),
        Some("disabled") => "disabled in the node config".to_string(),
        Some(other) => format!("{other}: {}", d["reason"].as_str().unwrap_or("-")),
        None => "-".to_string(),
    }
}

/// wg-quick format. The client's private key is only known here when it was
/// just generated or read from a file the operator gave.
fn render_client_config(c: &Value, private_key: Option<&str>) -> String {
    let list = |v: &Value| v.as_array().into_iter().flatten().filter_map(Value::as_str).collect::<Vec<_>>().join(", ");
    let mut s = String::from("[Interface]\n");
    s += &format!("PrivateKey = {}\n", private_key.unwrap_or("<client private key>"));
    s += &format!("Address = {}\n", list(&c["addresses"]));
    s += &format!("DNS = {}\n", list(&c["dns"]));
    s += &format!("MTU = {}\n\n[Peer]\n", c["mtu"]);
    s += &format!("PublicKey = {}\n", c["server_public_key"].as_str().unwrap_or(""));
    if let Some(psk) = c["preshared_key"].as_str() {
        s += &format!("PresharedKey = {psk}\n");
    }
    s += "AllowedIPs = 0.0.0.0/0, ::/0\n";
    s += &format!("Endpoint = {}\n", c["endpoint"].as_str().unwrap_or(""));
    s += "PersistentKeepalive = 25\n";
    s
}

/// The node list after the wg-quick config, as comments (the config above
/// stays a plain single-node wg-quick config for stock WireGuard apps).
fn render_node_list(c: &Value, file: &std::path::Path, keys: &[String], private_key_file: Option<&std::path::Path>) -> anyhow::Result<String> {
    let bytes = std::fs::read(file).with_context(|| format!("node list {}", file.display()))?;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
    let pks = keys
        .iter()
        .map(|k| palisade_nodelist::PublicKey::from_base64(k).with_context(|| format!("--node-list-key {k:?}")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let list = if pks.is_empty() { palisade_nodelist::inspect(&bytes, now) } else { palisade_nodelist::verify(&bytes, &pks, now) }
        .with_context(|| format!("node list {}", file.display()))?;
    let this = c["server_public_key"].as_str().unwrap_or("");
    let mut s = format!(
        "# Failover: palisade-client moves to the next node of this list when its node fails.\n# node list {}: region {}, serial {}, expires at unix time {}, {}\n",
        file.display(),
        list.region,
        list.serial,
        list.expires,
        match pks.first() {
            Some(k) if pks.len() == 1 => format!("signature verified (key {})", k.key_id()),
            Some(_) => "signature verified".to_string(),
            None => "signature NOT checked (give --node-list-key)".to_string(),
        }
    );
    for (i, n) in list.nodes.iter().enumerate() {
        let addrs: Vec<String> = n.addresses.iter().map(ToString::to_string).collect();
        s += &format!(
            "#   {}. {} {} {} tunnel {}{}\n",
            i + 1,
            n.name,
            n.endpoint,
            n.public_key,
            addrs.join(","),
            if n.public_key == this { " (this node)" } else { "" }
        );
    }
    if !list.nodes.iter().any(|n| n.public_key == this) {
        s += "# WARNING: this node is not in the list\n";
    }
    let addr_args: String = c["addresses"].as_array().into_iter().flatten().filter_map(Value::as_str).map(|a| format!(" --address {a}")).collect();
    let key_args: String = keys.iter().map(|k| format!(" --node-list-key {k}")).collect();
    s += &format!(
        "# palisade-client --private-key-file {}{addr_args} --node-list {}{}\n",
        private_key_file.map(|p| p.display().to_string()).unwrap_or_else(|| "CLIENT.key".into()),
        file.display(),
        if key_args.is_empty() { " --node-list-key FLEET_KEY".to_string() } else { key_args }
    );
    Ok(s)
}

fn print_client_config(c: &Value, private_key: Option<&str>, qr: bool) -> anyhow::Result<()> {
    let text = Zeroizing::new(render_client_config(c, private_key));
    println!("{}", text.as_str());
    if qr {
        let code = qrcode::QrCode::new(text.as_bytes()).context("config too large for a QR code")?;
        let img = code.render::<qrcode::render::unicode::Dense1x2>().quiet_zone(true).build();
        println!("{img}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preshared_key_comes_from_a_file_not_the_command_line() {
        let dir = std::env::temp_dir().join(format!("palisade-cli-psk-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("psk");
        std::fs::write(&f, "  c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0MTI=\n").unwrap();
        assert_eq!(read_secret(&f).unwrap().as_str(), "c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0MTI=");
        std::fs::write(&f, "\n").unwrap();
        assert!(read_secret(&f).unwrap_err().to_string().contains("no preshared key"));
        assert!(read_secret(&dir.join("missing")).unwrap_err().to_string().contains("opening"));
        std::fs::remove_dir_all(&dir).unwrap();
        // The old argument is gone: a key on the command line is refused by clap.
        let old = Cli::try_parse_from(["palisade", "peers", "add", "x", "--public-key", "k", "--preshared-key", "s"]);
        assert!(old.is_err());
        let new = Cli::try_parse_from(["palisade", "peers", "add", "x", "--public-key", "k", "--preshared-key-file", "-"]);
        assert!(new.is_ok());
    }

    #[test]
    fn exit_status_follows_the_error_kind() {
        use palisade_core::control::{ControlError, ErrorKind};
        let refused = |kind| anyhow::Error::new(ControlError::Refused { kind: Some(kind), message: "x".into() });
        assert_eq!(exit_code(&refused(ErrorKind::InvalidConfig)), 2);
        assert_eq!(exit_code(&refused(ErrorKind::NotFound)), 3);
        assert_eq!(exit_code(&refused(ErrorKind::Unavailable)), 4);
        assert_eq!(exit_code(&refused(ErrorKind::BadRequest)), 5);
        assert_eq!(exit_code(&refused(ErrorKind::FleetManaged)), 7);
        assert_eq!(exit_code(&anyhow::anyhow!("socket gone")), 1);
    }

    #[test]
    fn identity_and_fleet_status_are_readable_and_tolerate_missing_fields() {
        let id = serde_json::json!({"node_id": "0123456789abcdef", "public_key": "PUB=", "enrolled": false, "name": null, "region": null});
        assert_eq!(identity_text(&id), "node id     0123456789abcdef\npublic key  PUB=\nenrolled    no\n");
        let id = serde_json::json!({"node_id": "0123456789abcdef", "public_key": "PUB=", "enrolled": true, "name": "edge-1", "region": "eu"});
        assert!(identity_text(&id).ends_with("enrolled    yes\nname        edge-1 (eu)\n"));

        let full = serde_json::json!({
            "enrolled": true, "revoked": false, "repository": "https://repo.example.test/",
            "last_check": "2026-11-30T03:00:00Z", "last_error": {"kind": "expired", "message": "timestamp expired"},
            "config": {"sha256": "ab12", "role_version": 7, "applied_at": "2026-11-30T02:59:00Z"},
            "grants": {"active": 120, "rejected": 2, "next_expiry": "2026-12-01T00:00:00Z"},
            "lists": ["ads", "family"], "poll_secs": 60, "mesh": "up"
        });
        let t = fleet_status_text(&full);
        for want in [
            "enrolled    yes\n",
            "revoked     no\n",
            "repository  https://repo.example.test/\n",
            "last check  2026-11-30T03:00:00Z (polling every 60 s)\n",
            "last error  expired: timestamp expired\n",
            "config      sha256 ab12 (configs role version 7), applied 2026-11-30T02:59:00Z\n",
            "grants      120 active, 2 rejected, next expiry 2026-12-01T00:00:00Z\n",
            "lists       ads, family\n",
            "mesh        up\n",
        ] {
            assert!(t.contains(want), "missing {want:?} in\n{t}");
        }
        // A node that is not enrolled sends little; nothing panics, gaps show as '-'.
        let t = fleet_status_text(&serde_json::json!({"enrolled": false}));
        assert!(t.contains("repository  -\n") && t.contains("grants      -\n") && t.contains("lists       -\n"), "{t}");
        assert!(!t.contains("last error"), "{t}");
        let t = fleet_status_text(&serde_json::json!({"enrolled": true, "revoked": true, "lists": []}));
        assert!(t.contains("revoked     YES") && t.contains("lists       none"), "{t}");
    }

    /// Run the CLI with `args` against a one-shot control socket that
    /// answers `resp`; returns what `run` returned and the request line sent.
    fn against_fake_daemon(resp: &'static str, args: &[&str]) -> (anyhow::Result<()>, String) {
        use std::io::{BufRead, Write};
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let dir = std::env::temp_dir().join(format!("palisade-cli-sock-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let sock = dir.join("s.sock");
        let l = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        let h = std::thread::spawn(move || {
            let (c, _) = l.accept().unwrap();
            let mut line = String::new();
            std::io::BufReader::new(&c).read_line(&mut line).unwrap();
            (&c).write_all(format!("{resp}\n").as_bytes()).unwrap();
            line
        });
        let mut argv = vec!["palisade", "--socket", sock.to_str().unwrap()];
        argv.extend_from_slice(args);
        let r = run(Cli::try_parse_from(argv).unwrap());
        let line = h.join().unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        (r, line.trim().to_string())
    }

    #[test]
    fn identity_and_fleet_status_send_their_requests_and_map_refusals() {
        let id = r#"{"ok":true,"data":{"node_id":"0123456789abcdef","public_key":"PUB=","enrolled":false,"name":null,"region":null}}"#;
        let (r, sent) = against_fake_daemon(id, &["identity", "--json"]);
        r.unwrap();
        assert_eq!(sent, r#"{"cmd":"identity"}"#);
        let (r, sent) = against_fake_daemon(r#"{"ok":true,"data":{"enrolled":true,"revoked":false}}"#, &["fleet", "status"]);
        r.unwrap();
        assert_eq!(sent, r#"{"cmd":"fleet-status"}"#);
        // A refusal keeps its kind: peers of a fleet-managed node exit 7.
        let refused = r#"{"ok":false,"error":"peers of this node come from the fleet repository","kind":"fleet-managed","data":null}"#;
        let (r, _) = against_fake_daemon(refused, &["peers", "remove", "x"]);
        let e = r.unwrap_err();
        assert_eq!(exit_code(&e), 7);
        assert!(e.to_string().contains("fleet repository"), "{e}");
    }

    #[test]
    fn dns_status_lines() {
        let j = |v: &str| serde_json::from_str::<Value>(v).unwrap();
        assert_eq!(
            dns_line(&j(r#"{"state":"running","answering":true,"canary":{"ok":true,"age_s":3}}"#)),
            "running, answering (canary 3 s ago)"
        );
        assert_eq!(
            dns_line(&j(r#"{"state":"running","answering":false,"canary":{"ok":false,"error":"no answer"}}"#)),
            "running, NOT ANSWERING: no answer"
        );
        assert_eq!(
            dns_line(&j(r#"{"state":"failed","reason":"dns: list x missing","retry_in_s":4,"failures":3}"#)),
            "FAILED: dns: list x missing; restarting in 4 s (3 failed attempt(s))"
        );
        assert_eq!(dns_line(&j(r#"{"state":"disabled"}"#)), "disabled in the node config");
        assert_eq!(dns_line(&j(r#"{"state":"stopped","reason":"no node config loaded"}"#)), "stopped: no node config loaded");
    }

    #[test]
    fn client_config_is_wg_quick_format() {
        let c = serde_json::json!({
            "addresses": ["10.66.0.2/32", "fd66::2/128"], "dns": ["10.66.0.1", "fd66::1"],
            "server_public_key": "SRV=", "preshared_key": null, "endpoint": "203.0.113.10:51820", "mtu": 1420
        });
        let t = render_client_config(&c, Some("PRIV="));
        assert!(t.starts_with("[Interface]\nPrivateKey = PRIV=\nAddress = 10.66.0.2/32, fd66::2/128\nDNS = 10.66.0.1, fd66::1\n"), "{t}");
        assert!(t.contains("[Peer]\nPublicKey = SRV=\nAllowedIPs = 0.0.0.0/0, ::/0\nEndpoint = 203.0.113.10:51820\n"), "{t}");
        assert!(!t.contains("PresharedKey"));
    }
}
