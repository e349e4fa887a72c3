//! `palisade-fleet`: publishes the signed update repository (see docs/updates.md).
//! Exit codes: 0 success, 2 usage/input error, 3 repository/key error, 1 other.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use palisade_fleet::{
    enrol, nodelist, parse_expiry, parse_region, parse_start, parse_version, parse_window, trust, Expiries,
    Fleet, FleetError, Report,
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
    /// Versions and expiries (every role, with target counts), images per board, rollout.
    Status {
        #[arg(long)]
        repo: PathBuf,
        /// Not needed (accepted for symmetry with the other commands).
        #[arg(long)]
        keys: Option<PathBuf>,
    },
    /// The inventory of enrolled nodes (<repo>/inventory/nodes.json, not published).
    Node {
        #[command(subcommand)]
        cmd: NodeCmd,
    },
    /// A node's desired config (nodes/<id>/config.toml, configs role).
    Config {
        #[command(subcommand)]
        cmd: ConfigCmd,
    },
    /// The grant issuer's ES384 key (issuer.p8) and jwks.json (grants role).
    Issuer {
        #[command(subcommand)]
        cmd: IssuerCmd,
    },
    /// Client grants (ES384 JWTs in nodes/<id>/grants.json, configs role).
    Grant {
        #[command(subcommand)]
        cmd: GrantCmd,
    },
    /// Revoke node ids, client keys or grant ids (revoked.json, revocations role).
    Revoke {
        #[command(flatten)]
        what: RevokeArgs,
    },
    /// Take entries off revoked.json.
    Unrevoke {
        #[command(flatten)]
        what: RevokeArgs,
    },
    /// DNS lists (lists/<name>.txt, lists role).
    List {
        #[command(subcommand)]
        cmd: ListCmd,
    },
    /// Signed node lists for client failover (regions/<region>.json,
    /// nodelists role, or a standalone signed file).
    Nodelist {
        #[command(subcommand)]
        cmd: NodelistCmd,
    },
    /// The management mesh: trust anchors for the nodes' metrics endpoints
    /// (mesh/anchors.pem, configs role) and scraper certificates.
    Mesh {
        #[command(subcommand)]
        cmd: MeshCmd,
    },
    /// Scrape a node's metrics endpoint over mutual TLS, pinning the node's
    /// enrolled identity key (the fleet's check-in on a node).
    Metrics {
        /// The node id (its identity key comes from the inventory).
        #[arg(long)]
        node: String,
        /// The node's metrics address (`[management] metrics_listen`).
        #[arg(long)]
        addr: std::net::SocketAddr,
        /// Scraper certificate (PEM, from `mesh cert issue`).
        #[arg(long)]
        cert: PathBuf,
        /// Scraper key (PEM).
        #[arg(long)]
        key: PathBuf,
        /// Repository directory (its inventory names the node's key).
        #[arg(long)]
        repo: PathBuf,
        /// Benchmark: N scrapes on new connections, then N on one connection.
        #[arg(long)]
        bench: Option<usize>,
    },
    /// Role keys.
    Keys {
        #[command(subcommand)]
        cmd: KeysCmd,
    },
    /// TEST HOOK: publish TARGET under ROLE even if ROLE does not own its
    /// path (to test the node's wrong-role refusal). Not for production use.
    SignAs {
        /// The signing role (or give it as the first positional).
        #[arg(long)]
        role: Option<String>,
        /// [ROLE] TARGET FILE (with --remove: [ROLE] TARGET)
        #[arg(num_args = 1..=3, required = true)]
        args: Vec<String>,
        /// Take TARGET off ROLE instead.
        #[arg(long)]
        remove: bool,
        #[command(flatten)]
        rk: RepoKeys,
        #[command(flatten)]
        exp: Exp,
    },
    /// Enrol a node over its serial console (or write the bundle for a
    /// config drive with --bundle-out).
    Enrol(EnrolArgs),
}

#[derive(Args)]
struct EnrolArgs {
    /// The node's serial console (115200 8N1).
    #[arg(
        long,
        conflicts_with = "bundle_out",
        required_unless_present = "bundle_out"
    )]
    serial: Option<PathBuf>,
    /// Write the bundle (palisade/enrol.json on a config drive) instead.
    #[arg(long, requires = "node_id")]
    bundle_out: Option<PathBuf>,
    /// The node id (with --bundle-out; the serial path learns it).
    #[arg(long)]
    node_id: Option<String>,
    /// The node's identity public key (with --bundle-out: adds it to the inventory).
    #[arg(long)]
    public_key: Option<String>,
    #[arg(long)]
    node_name: String,
    #[arg(long)]
    region: String,
    /// Repository base URL (repeatable: mirrors in order).
    #[arg(long = "repository", required = true)]
    repositories: Vec<String>,
    /// PEM CA bundle for an https repository.
    #[arg(long)]
    ca: Option<PathBuf>,
    /// Management mesh prefix (repeatable).
    #[arg(long)]
    mesh: Vec<String>,
    /// Seconds to wait for the node.
    #[arg(long, default_value_t = 60)]
    timeout: u64,
    #[arg(long)]
    repo: PathBuf,
    /// Not needed (accepted for symmetry with the other commands).
    #[arg(long)]
    keys: Option<PathBuf>,
}

#[derive(Args)]
struct RevokeArgs {
    #[arg(long)]
    node: Vec<String>,
    /// Client WireGuard public key (base64).
    #[arg(long)]
    client: Vec<String>,
    /// Grant id (jti).
    #[arg(long)]
    grant: Vec<String>,
    #[command(flatten)]
    rk: RepoKeys,
    #[command(flatten)]
    exp: Exp,
}

#[derive(Subcommand)]
enum NodeCmd {
    /// Add (or update) a node in the inventory.
    Add {
        #[arg(long)]
        id: String,
        /// Identity public key (ed25519, base64).
        #[arg(long)]
        public_key: String,
        #[arg(long)]
        name: String,
        #[arg(long)]
        region: String,
        #[arg(long)]
        repo: PathBuf,
        /// Not needed (accepted for symmetry with the other commands).
        #[arg(long)]
        keys: Option<PathBuf>,
    },
    /// The inventory.
    List {
        #[arg(long)]
        repo: PathBuf,
        /// Not needed (accepted for symmetry with the other commands).
        #[arg(long)]
        keys: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum MeshCmd {
    /// Trust anchors (CA keys in the keys directory, certificates in mesh/anchors.pem).
    Anchor {
        #[command(subcommand)]
        cmd: AnchorCmd,
    },
    /// Scraper certificates.
    Cert {
        #[command(subcommand)]
        cmd: CertCmd,
    },
}

#[derive(Subcommand)]
enum AnchorCmd {
    /// Make a CA key and certificate NAME and publish it in the bundle (beside the others).
    Init {
        name: String,
        #[command(flatten)]
        rk: RepoKeys,
        #[command(flatten)]
        exp: Exp,
    },
    /// Take NAME off the bundle, republish, destroy its key.
    Retire {
        name: String,
        #[command(flatten)]
        rk: RepoKeys,
        #[command(flatten)]
        exp: Exp,
    },
    /// The live anchors.
    List {
        #[arg(long)]
        repo: PathBuf,
        #[arg(long)]
        keys: PathBuf,
    },
}

#[derive(Subcommand)]
enum CertCmd {
    /// A short-lived client certificate and key for a scraper: OUT/NAME.crt.pem, OUT/NAME.key.pem.
    Issue {
        /// The anchor that signs it.
        #[arg(long)]
        anchor: String,
        /// The scraper's name.
        #[arg(long)]
        name: String,
        /// Lifetime: 600s, 30m, 1h, 1d (nodes refuse certificates living longer than their metrics_max_cert_lifetime).
        #[arg(long, default_value = "1h")]
        expires: String,
        /// TEST HOOK: start of validity (Unix seconds) instead of now.
        #[arg(long, hide = true)]
        not_before: Option<i64>,
        #[arg(long)]
        out: PathBuf,
        #[arg(long)]
        repo: PathBuf,
        #[arg(long)]
        keys: PathBuf,
    },
}

#[derive(Subcommand)]
enum ConfigCmd {
    /// Validate FILE (node.toml) and publish it for the node.
    Set {
        #[arg(long)]
        node: String,
        file: PathBuf,
        /// Publish for a node id not in the inventory.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        rk: RepoKeys,
        #[command(flatten)]
        exp: Exp,
    },
}

#[derive(Subcommand)]
enum IssuerCmd {
    /// Create the issuer key (if absent) and publish jwks.json.
    Init {
        #[command(flatten)]
        rk: RepoKeys,
        #[command(flatten)]
        exp: Exp,
    },
    /// New issuer key; jwks.json keeps the old one until `retire`.
    Rotate {
        #[command(flatten)]
        rk: RepoKeys,
        #[command(flatten)]
        exp: Exp,
    },
    /// Remove an old key from jwks.json.
    Retire {
        #[arg(long)]
        kid: String,
        #[command(flatten)]
        rk: RepoKeys,
        #[command(flatten)]
        exp: Exp,
    },
}

#[derive(Subcommand)]
enum GrantCmd {
    /// Issue a grant and publish it (prints the jti), or print the JWT only.
    Issue {
        #[arg(long)]
        node: String,
        /// The client's WireGuard public key (base64).
        #[arg(long)]
        peer: String,
        /// Tunnel address (CIDR, repeatable).
        #[arg(long = "address", required = true)]
        addresses: Vec<String>,
        #[arg(long)]
        tier: Option<String>,
        /// Duration (30d, 12h, 45m) or RFC 3339.
        #[arg(long, default_value = "30d")]
        expires: String,
        /// Grant id (jti); random if not given.
        #[arg(long)]
        id: Option<String>,
        /// Print the JWT; publish nothing (needs only issuer.p8).
        #[arg(long)]
        issue_only: bool,
        #[command(flatten)]
        rk: RepoKeys,
        #[command(flatten)]
        exp: Exp,
    },
    /// Publish a JWT issued elsewhere (verified against jwks.json).
    Add {
        #[arg(long)]
        node: String,
        #[arg(long)]
        jwt: PathBuf,
        #[command(flatten)]
        rk: RepoKeys,
        #[command(flatten)]
        exp: Exp,
    },
    /// The node's grants (jti, sub, tier, exp).
    List {
        #[arg(long)]
        node: String,
        #[arg(long)]
        repo: PathBuf,
        /// Not needed (accepted for symmetry with the other commands).
        #[arg(long)]
        keys: Option<PathBuf>,
    },
    /// Remove a grant by id.
    Remove {
        #[arg(long)]
        node: String,
        #[arg(long)]
        id: String,
        #[command(flatten)]
        rk: RepoKeys,
        #[command(flatten)]
        exp: Exp,
    },
    /// Load tests: COUNT client keypairs and grants in one publish.
    Bulk {
        #[arg(long)]
        node: String,
        #[arg(long)]
        count: u32,
        #[arg(long)]
        prefix: String,
        #[arg(long, default_value = "30d")]
        expires: String,
        #[arg(long)]
        tier: Option<String>,
        /// Client private keys go here (0600).
        #[arg(long)]
        out_keys: PathBuf,
        #[command(flatten)]
        rk: RepoKeys,
        #[command(flatten)]
        exp: Exp,
    },
}

#[derive(Subcommand)]
enum ListCmd {
    /// Publish lists/NAME.txt from FILE.
    Set {
        name: String,
        file: PathBuf,
        #[command(flatten)]
        rk: RepoKeys,
        #[command(flatten)]
        exp: Exp,
    },
    /// Remove lists/NAME.txt.
    Remove {
        name: String,
        #[command(flatten)]
        rk: RepoKeys,
        #[command(flatten)]
        exp: Exp,
    },
}

#[derive(Subcommand)]
enum NodelistCmd {
    /// Sign REGION's node list from a nodes file ([[node]] name, endpoint,
    /// public_key, addresses; in order of preference) and publish it as
    /// regions/REGION.json (--repo, --keys), or write it to --out (--key).
    Set {
        region: String,
        /// The nodes file (TOML).
        #[arg(long)]
        nodes: PathBuf,
        /// Expiry: a duration (30d, 12h) or RFC 3339.
        #[arg(long, default_value = "30d")]
        expires: String,
        /// Signing key (ed25519 PKCS#8); default with --repo: <keys>/nodelists.pk8.
        #[arg(long)]
        key: Option<PathBuf>,
        /// Write the signed file here instead of publishing (no repository).
        #[arg(long, conflicts_with_all = ["repo", "keys"])]
        out: Option<PathBuf>,
        #[arg(long, requires = "keys")]
        repo: Option<PathBuf>,
        #[arg(long, requires = "repo")]
        keys: Option<PathBuf>,
        #[command(flatten)]
        exp: Exp,
    },
    /// Check and print a node list file (verified with --key; otherwise
    /// everything but the signature).
    Show {
        file: PathBuf,
        /// Trusted public key (base64), repeatable.
        #[arg(long)]
        key: Vec<String>,
    },
    /// Print the public key (base64) of a signing key: what clients pin.
    Key {
        /// The signing key (ed25519 PKCS#8), e.g. keys/nodelists.pk8.
        #[arg(long)]
        key: PathBuf,
    },
}

#[derive(Subcommand)]
enum KeysCmd {
    /// New key for ROLE (a delegated role, or targets, snapshot, timestamp).
    Rotate {
        role: String,
        #[command(flatten)]
        rk: RepoKeys,
        #[command(flatten)]
        exp: Exp,
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

fn repo_only(repo: PathBuf) -> Fleet {
    Fleet {
        repo,
        keys: PathBuf::new(),
    }
}

async fn enrol(a: EnrolArgs) -> Result<Report, FleetError> {
    let f = repo_only(a.repo);
    let ca_pem = match &a.ca {
        Some(p) => Some(
            std::fs::read_to_string(p)
                .map_err(|e| FleetError::Input(format!("--ca {}: {e}", p.display())))?,
        ),
        None => None,
    };
    let req = enrol::EnrolRequest {
        name: a.node_name,
        region: a.region,
        repositories: a.repositories,
        ca_pem,
        mesh: a.mesh,
    };
    match (a.serial, a.bundle_out) {
        (Some(port), _) => {
            let mut p = enrol::open_serial(&port)?;
            enrol::enrol_serial(&f, &req, &mut p, std::time::Duration::from_secs(a.timeout))
        }
        (None, Some(out)) => enrol::write_bundle(
            &f,
            &req,
            a.node_id.as_deref().unwrap_or_default(),
            a.public_key.as_deref(),
            &out,
        ),
        (None, None) => Err(FleetError::Input(
            "give --serial PORT or --bundle-out FILE".into(),
        )),
    }
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
        Cmd::Mesh { cmd } => match cmd {
            MeshCmd::Anchor { cmd: AnchorCmd::Init { name, rk, exp } } => fleet(rk).mesh_anchor_init(&name, exp.get()?).await,
            MeshCmd::Anchor { cmd: AnchorCmd::Retire { name, rk, exp } } => fleet(rk).mesh_anchor_retire(&name, exp.get()?).await,
            MeshCmd::Anchor { cmd: AnchorCmd::List { repo, keys } } => fleet(RepoKeys { repo, keys }).mesh_anchor_list(),
            MeshCmd::Cert { cmd: CertCmd::Issue { anchor, name, expires, not_before, out, repo, keys } } => {
                let lifetime = palisade_core::config::parse_duration(&expires)
                    .ok_or_else(|| FleetError::Input(format!("--expires {expires:?}: use 600s, 30m, 1h or 1d")))?;
                fleet(RepoKeys { repo, keys }).mesh_cert_issue(&anchor, &name, lifetime, not_before, &out)
            }
        },
        Cmd::Metrics { node, addr, cert, key, repo, bench } => {
            let s = palisade_fleet::mesh::Scrape { node, addr, cert, key };
            let f = repo_only(repo);
            let r = tokio::task::spawn_blocking(move || match bench {
                Some(n) => f.metrics_bench(&s, n.max(1)),
                None => f.metrics(&s),
            })
            .await
            .map_err(|e| FleetError::Other(e.to_string()))?;
            r
        }
        Cmd::Node { cmd } => match cmd {
            NodeCmd::Add {
                id,
                public_key,
                name,
                region,
                repo,
                ..
            } => repo_only(repo).node_add(&id, &public_key, &name, &region),
            NodeCmd::List { repo, .. } => repo_only(repo).node_list(),
        },
        Cmd::Config {
            cmd:
                ConfigCmd::Set {
                    node,
                    file,
                    force,
                    rk,
                    exp,
                },
        } => fleet(rk).config_set(&node, &file, force, exp.get()?).await,
        Cmd::Issuer { cmd } => match cmd {
            IssuerCmd::Init { rk, exp } => fleet(rk).issuer_init(exp.get()?).await,
            IssuerCmd::Rotate { rk, exp } => fleet(rk).issuer_rotate(exp.get()?).await,
            IssuerCmd::Retire { kid, rk, exp } => fleet(rk).issuer_retire(&kid, exp.get()?).await,
        },
        Cmd::Grant { cmd } => match cmd {
            GrantCmd::Issue {
                node,
                peer,
                addresses,
                tier,
                expires,
                id,
                issue_only,
                rk,
                exp,
            } => {
                let now = jiff::Timestamp::now().as_second();
                let claims = palisade_update::fleet::GrantClaims {
                    jti: match id {
                        Some(i) => i,
                        None => palisade_fleet::new_grant_id()?,
                    },
                    sub: peer,
                    addresses,
                    tier,
                    iat: now,
                    exp: trust::parse_expires(&expires, now)?,
                };
                if !palisade_update::fleet::valid_node_id(&node) {
                    return Err(FleetError::Input(format!(
                        "--node {node:?}: 16 lowercase hex digits"
                    )));
                }
                let f = fleet(rk);
                let jwt = f.make_grant(&claims)?;
                if issue_only {
                    Ok(Report {
                        text: jwt.clone(),
                        json: serde_json::json!({"ok": true, "result": "issued", "jti": claims.jti, "jwt": jwt}),
                    })
                } else {
                    f.grants_add(&node, vec![jwt], exp.get()?).await
                }
            }
            GrantCmd::Add { node, jwt, rk, exp } => {
                let text = std::fs::read_to_string(&jwt)
                    .map_err(|e| FleetError::Input(format!("--jwt {}: {e}", jwt.display())))?;
                fleet(rk)
                    .grants_add(&node, vec![text.trim().to_string()], exp.get()?)
                    .await
            }
            GrantCmd::List { node, repo, .. } => repo_only(repo).grant_list(&node),
            GrantCmd::Remove { node, id, rk, exp } => {
                fleet(rk).grant_remove(&node, &id, exp.get()?).await
            }
            GrantCmd::Bulk {
                node,
                count,
                prefix,
                expires,
                tier,
                out_keys,
                rk,
                exp,
            } => {
                fleet(rk)
                    .grant_bulk(&node, count, &prefix, &expires, tier, &out_keys, exp.get()?)
                    .await
            }
        },
        Cmd::Revoke { what } => {
            fleet(what.rk)
                .revoke(
                    &what.node,
                    &what.client,
                    &what.grant,
                    false,
                    what.exp.get()?,
                )
                .await
        }
        Cmd::Unrevoke { what } => {
            fleet(what.rk)
                .revoke(&what.node, &what.client, &what.grant, true, what.exp.get()?)
                .await
        }
        Cmd::List { cmd } => match cmd {
            ListCmd::Set {
                name,
                file,
                rk,
                exp,
            } => fleet(rk).list_set(&name, &file, exp.get()?).await,
            ListCmd::Remove { name, rk, exp } => fleet(rk).list_remove(&name, exp.get()?).await,
        },
        Cmd::Nodelist { cmd } => match cmd {
            NodelistCmd::Set { region, nodes, expires, key, out, repo, keys, exp } => match (out, repo, keys) {
                (Some(out), None, None) => {
                    let key = key.ok_or_else(|| FleetError::Input("nodelist set --out needs --key (the signing key)".into()))?;
                    nodelist::set_standalone(&region, &nodes, &expires, &key, &out)
                }
                (None, Some(repo), Some(keys)) => {
                    fleet(RepoKeys { repo, keys })
                        .nodelist_set(&region, &nodes, &expires, key.as_deref(), exp.get()?)
                        .await
                }
                _ => Err(FleetError::Input("nodelist set: give --repo and --keys, or --out and --key".into())),
            },
            NodelistCmd::Show { file, key } => nodelist::show(&file, &key),
            NodelistCmd::Key { key } => nodelist::public_key(&key),
        },
        Cmd::Keys {
            cmd: KeysCmd::Rotate { role, rk, exp },
        } => fleet(rk).rotate_key(&role, exp.get()?).await,
        Cmd::SignAs {
            role,
            args,
            remove,
            rk,
            exp,
        } => {
            let want = if remove { 1 } else { 2 };
            let (role, rest) = match (role, args.len()) {
                (Some(r), n) if n == want => (r, &args[..]),
                (None, n) if n == want + 1 => (args[0].clone(), &args[1..]),
                _ => {
                    return Err(FleetError::Input(
                        "sign-as: give ROLE TARGET FILE (or --role ROLE TARGET FILE); with --remove, ROLE TARGET".into(),
                    ))
                }
            };
            if remove {
                fleet(rk).unsign_as(&role, &rest[0], exp.get()?).await
            } else {
                fleet(rk)
                    .sign_as(&role, &rest[0], std::path::Path::new(&rest[1]), exp.get()?)
                    .await
            }
        }
        Cmd::Enrol(a) => enrol(a).await,
        Cmd::Status { repo, .. } => {
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
