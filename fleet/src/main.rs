//! `palisade-fleet`: publishes the signed update repository (see docs/updates.md).
//! Exit codes: 0 success, 2 usage/input error, 3 repository/key error, 1 other.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use palisade_fleet::{
    parse_expiry, parse_region, parse_start, parse_version, parse_window, Expiries, Fleet,
    FleetError, Report,
};
use palisade_update::rollout::RolloutPolicy;

#[derive(Parser)]
#[command(
    name = "palisade-fleet",
    about = "Publish the signed Palisade update repository"
)]
struct Cli {
    /// Print one JSON object on stdout instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Args, Clone)]
struct RepoKeys {
    /// Repository directory (metadata/ and targets/ under it).
    #[arg(long)]
    repo: PathBuf,
    /// Directory of the role keys (root, targets, snapshot, timestamp .pk8).
    #[arg(long)]
    keys: PathBuf,
}

#[derive(Args, Clone)]
struct Exp {
    #[arg(long, default_value_t = 90)]
    targets_expires_days: i64,
    #[arg(long, default_value_t = 7)]
    snapshot_expires_days: i64,
    #[arg(long, default_value_t = 24)]
    timestamp_expires_hours: i64,
    /// Absolute timestamp expiry (RFC 3339), e.g. for tests.
    #[arg(long)]
    timestamp_expires_at: Option<String>,
}

impl Exp {
    fn get(&self) -> Result<Expiries, FleetError> {
        let at = self
            .timestamp_expires_at
            .as_deref()
            .map(parse_expiry)
            .transpose()?;
        Ok(Expiries::from_now(
            self.targets_expires_days,
            self.snapshot_expires_days,
            self.timestamp_expires_hours,
            at,
        ))
    }
}

#[derive(Subcommand)]
enum Cmd {
    /// Repository set-up.
    Repo {
        #[command(subcommand)]
        cmd: RepoCmd,
    },
    /// Slot images.
    Image {
        #[command(subcommand)]
        cmd: ImageCmd,
    },
    /// The rollout policy (rollout.json).
    Rollout {
        #[command(subcommand)]
        cmd: RolloutCmd,
    },
    /// Re-sign targets, snapshot and timestamp.
    Sign {
        #[command(flatten)]
        rk: RepoKeys,
        #[command(flatten)]
        exp: Exp,
    },
    /// Re-sign the timestamp only (run it from cron).
    Refresh {
        #[command(flatten)]
        rk: RepoKeys,
        #[arg(long, default_value_t = 24)]
        timestamp_expires_hours: i64,
        /// Absolute expiry (RFC 3339).
        #[arg(long)]
        timestamp_expires_at: Option<String>,
    },
    /// Versions and expiries, images per board, rollout.
    Status {
        #[arg(long)]
        repo: PathBuf,
    },
}

#[derive(Subcommand)]
enum RepoCmd {
    /// Generate keys and a signed, empty repository (no-op if it exists).
    Init {
        #[command(flatten)]
        rk: RepoKeys,
        #[arg(long, default_value_t = 365)]
        root_expires_days: i64,
        #[command(flatten)]
        exp: Exp,
    },
}

#[derive(Subcommand)]
enum ImageCmd {
    /// Add images/<board>/<version>.img and re-sign.
    Add {
        /// The slot image file.
        file: PathBuf,
        #[command(flatten)]
        rk: RepoKeys,
        #[arg(long)]
        board: String,
        #[arg(long)]
        version: String,
        /// The image builder's manifest.json: the file's sha256 must be in it.
        #[arg(long)]
        manifest: Option<PathBuf>,
        /// Replace an existing version with different bytes.
        #[arg(long)]
        replace: bool,
        #[command(flatten)]
        exp: Exp,
    },
}

#[derive(Subcommand)]
enum RolloutCmd {
    /// Write rollout.json and re-sign.
    Set {
        #[command(flatten)]
        rk: RepoKeys,
        #[arg(long)]
        version: String,
        #[arg(long)]
        waves: u32,
        #[arg(long)]
        soak_minutes: u32,
        /// Daily window, HH:MM/MINUTES in UTC.
        #[arg(long)]
        window: Option<String>,
        /// RFC 3339 or `now`.
        #[arg(long, default_value = "now")]
        start: String,
        #[arg(long)]
        min_version: Option<String>,
        #[arg(long)]
        allow_downgrade: bool,
        /// NAME=node1,node2,... (repeatable).
        #[arg(long)]
        region: Vec<String>,
        #[command(flatten)]
        exp: Exp,
    },
}

fn fleet(rk: RepoKeys) -> Fleet {
    Fleet {
        repo: rk.repo,
        keys: rk.keys,
    }
}

async fn run(cmd: Cmd) -> Result<Report, FleetError> {
    match cmd {
        Cmd::Repo {
            cmd:
                RepoCmd::Init {
                    rk,
                    root_expires_days,
                    exp,
                },
        } => fleet(rk).init(root_expires_days, exp.get()?).await,
        Cmd::Image {
            cmd:
                ImageCmd::Add {
                    file,
                    rk,
                    board,
                    version,
                    manifest,
                    replace,
                    exp,
                },
        } => {
            fleet(rk)
                .add_image(
                    &file,
                    &board,
                    &version,
                    manifest.as_deref(),
                    replace,
                    exp.get()?,
                )
                .await
        }
        Cmd::Rollout {
            cmd:
                RolloutCmd::Set {
                    rk,
                    version,
                    waves,
                    soak_minutes,
                    window,
                    start,
                    min_version,
                    allow_downgrade,
                    region,
                    exp,
                },
        } => {
            let policy = RolloutPolicy {
                version: parse_version(&version)?,
                start: parse_start(&start)?,
                waves,
                soak_minutes,
                window: window.as_deref().map(parse_window).transpose()?,
                min_version: min_version.as_deref().map(parse_version).transpose()?,
                allow_downgrade,
                regions: region
                    .iter()
                    .map(|r| parse_region(r))
                    .collect::<Result<_, _>>()?,
            };
            fleet(rk).set_rollout(&policy, exp.get()?).await
        }
        Cmd::Sign { rk, exp } => fleet(rk).sign(exp.get()?).await,
        Cmd::Refresh {
            rk,
            timestamp_expires_hours,
            timestamp_expires_at,
        } => {
            let at = match timestamp_expires_at {
                Some(s) => parse_expiry(&s)?,
                None => {
                    jiff::Timestamp::now()
                        + jiff::SignedDuration::from_hours(timestamp_expires_hours)
                }
            };
            fleet(rk).refresh(at).await
        }
        Cmd::Status { repo } => {
            Fleet {
                repo,
                keys: PathBuf::new(),
            }
            .status()
            .await
        }
    }
}

fn main() {
    let json = std::env::args().any(|a| a == "--json");
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            if json && e.use_stderr() {
                println!(
                    "{}",
                    serde_json::json!({"ok": false, "kind": "usage", "error": e.to_string()})
                );
                std::process::exit(2);
            }
            e.exit() // clap: 2 on usage errors, 0 for --help
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("palisade-fleet: {e}");
            std::process::exit(1);
        }
    };
    match rt.block_on(run(cli.cmd)) {
        Ok(r) => {
            if cli.json {
                println!("{}", r.json);
            } else {
                println!("{}", r.text);
            }
        }
        Err(e) => {
            if cli.json {
                println!(
                    "{}",
                    serde_json::json!({"ok": false, "kind": e.kind(), "error": e.to_string()})
                );
            } else {
                eprintln!("palisade-fleet: {e}");
            }
            std::process::exit(e.exit_code());
        }
    }
}
