//! The request path: source check, parse, rate limit, tier, filter, cache,
//! upstream. Shared by the UDP and TCP front ends and by the fuzz target.
//!
//! Zero-log: nothing here logs a name or an address. The only record of a
//! query is an increment of an aggregate counter.

use crate::policy::{ClientTier, ListStore, Policy, PolicyError};
use crate::upstream::{UpstreamError, Upstreams};
use crate::wire::{self, Answer, Query, Reject};
use arc_swap::ArcSwap;
use ipnet::IpNet;
use palisade_core::config::{DnsBlockMode, DnsSection};
use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What the resolver is told to do; built from the node spec by the daemon,
/// or from a dns-only TOML file by `palisade-dns-serve`.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub dns: DnsSection,
    /// Client tunnel addresses and the tier their peer names.
    pub clients: Vec<(IpAddr, Option<String>)>,
    /// Only these sources get answers (the tunnel prefixes). Anything else is
    /// dropped silently: never an open resolver.
    pub allowed_sources: Vec<IpNet>,
    /// Per-attempt upstream timeout (from `upstream_timeout_ms`).
    pub upstream_timeout: Duration,
}

impl EngineConfig {
    pub fn new(dns: DnsSection, allowed_sources: Vec<IpNet>) -> EngineConfig {
        let upstream_timeout = Duration::from_millis(dns.upstream_timeout_ms.clamp(50, 30_000));
        EngineConfig {
            dns,
            clients: Vec::new(),
            allowed_sources,
            upstream_timeout,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Policy(#[from] PolicyError),
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
}

/// Counters of one tier.
#[derive(Default)]
pub struct TierCounters {
    pub queries: AtomicU64,
    pub blocked: AtomicU64,
}

/// Aggregate counters. Never per client, never per name.
#[derive(Default)]
pub struct Counters {
    pub queries: AtomicU64,
    pub blocked: AtomicU64,
    pub cache_hits: AtomicU64,
    pub cache_misses: AtomicU64,
    /// Cache misses that joined an identical upstream query already in
    /// flight instead of sending their own.
    pub coalesced: AtomicU64,
    pub upstream_failures: AtomicU64,
    pub servfail: AtomicU64,
    pub malformed: AtomicU64,
    pub dropped: AtomicU64,
    pub rate_limited: AtomicU64,
    pub foreign_source: AtomicU64,
    pub refused: AtomicU64,
    pub any: AtomicU64,
    /// `localhost` names answered locally (RFC 6761; includes palisaded's
    /// health canary).
    pub local: AtomicU64,
    /// TCP connections closed at accept because their client already had
    /// [`crate::server::TCP_MAX_CONNS_PER_CLIENT`] open.
    pub tcp_over_limit: AtomicU64,
    /// Time from a query's arrival to its answer, every answered query.
    pub latency: Latency,
}

/// Upper bounds (seconds) of the query latency histogram's buckets.
pub const LATENCY_BUCKETS: [f64; 12] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5];

/// A latency histogram: counts per bucket of [`LATENCY_BUCKETS`] (plus one
/// above the last), the sum and the count. Aggregate only.
#[derive(Default)]
pub struct Latency {
    buckets: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    sum_us: AtomicU64,
    count: AtomicU64,
}

/// A snapshot of [`Latency`]: cumulative counts per upper bound.
#[derive(Debug, Clone, PartialEq)]
pub struct LatencySnapshot {
    /// (upper bound in seconds, queries at or below it), ascending.
    pub buckets: Vec<(f64, u64)>,
    pub sum_seconds: f64,
    pub count: u64,
}

impl Latency {
    pub fn observe(&self, d: Duration) {
        let s = d.as_secs_f64();
        let i = LATENCY_BUCKETS.iter().position(|b| s <= *b).unwrap_or(LATENCY_BUCKETS.len());
        self.buckets[i].fetch_add(1, Relaxed);
        self.sum_us.fetch_add(d.as_micros() as u64, Relaxed);
        self.count.fetch_add(1, Relaxed);
    }

    pub fn snapshot(&self) -> LatencySnapshot {
        let mut acc = 0;
        let buckets = LATENCY_BUCKETS
            .iter()
            .enumerate()
            .map(|(i, b)| {
                acc += self.buckets[i].load(Relaxed);
                (*b, acc)
            })
            .collect();
        LatencySnapshot {
            buckets,
            sum_seconds: self.sum_us.load(Relaxed) as f64 / 1e6,
            count: self.count.load(Relaxed),
        }
    }
}

/// The live configuration, swapped atomically on reload.
pub struct Live {
    pub policy: Policy,
    pub upstreams: Arc<Upstreams>,
    /// What `upstreams` was built from (reused while unchanged: pooled
    /// DoT/DoH connections and hold-downs survive the periodic reconcile).
    upstream_cfg: (Vec<palisade_core::config::DnsUpstreamSection>, Duration),
    block_mode: DnsBlockMode,
    rate_limit_qps: u32,
    allowed_sources: Vec<IpNet>,
    tier_counters: Vec<Arc<TierCounters>>,
    list_stats: Vec<(String, crate::filter::ListStats)>,
}

struct Bucket {
    tokens: f32,
    last: Instant,
}

/// Per-client token buckets, in memory only, bounded in size.
struct RateLimiter {
    shards: Vec<Mutex<HashMap<IpAddr, Bucket>>>,
}

const LIMITER_SHARDS: usize = 16;
const LIMITER_SHARD_MAX: usize = 4096;

impl RateLimiter {
    fn new() -> RateLimiter {
        RateLimiter {
            shards: (0..LIMITER_SHARDS)
                .map(|_| Mutex::new(HashMap::new()))
                .collect(),
        }
    }

    fn allow(&self, ip: IpAddr, qps: u32, now: Instant) -> bool {
        let shard = match ip {
            IpAddr::V4(a) => a.octets()[3] as usize,
            IpAddr::V6(a) => a.octets()[15] as usize,
        } % LIMITER_SHARDS;
        let mut m = self.shards[shard].lock().unwrap_or_else(|e| e.into_inner());
        let burst = (qps as f32 * 2.0).max(10.0);
        if m.len() >= LIMITER_SHARD_MAX && !m.contains_key(&ip) {
            m.retain(|_, b| now.saturating_duration_since(b.last) < Duration::from_secs(2));
            if m.len() >= LIMITER_SHARD_MAX {
                m.clear();
            }
        }
        let b = m.entry(ip).or_insert(Bucket {
            tokens: burst,
            last: now,
        });
        let dt = now.saturating_duration_since(b.last).as_secs_f32();
        b.tokens = (b.tokens + dt * qps as f32).min(burst);
        b.last = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[derive(Clone)]
struct AnswerWeight;

impl quick_cache::Weighter<u128, Arc<Answer>> for AnswerWeight {
    fn weight(&self, _key: &u128, val: &Arc<Answer>) -> u64 {
        // One unit per 256 bytes: `cache_entries` small answers, fewer big ones.
        1 + (val.weight_bytes() / 256) as u64
    }
}

/// Cache keys: a 128-bit keyed hash of (name, type), two SipHash instances
/// with per-process random keys. No allocation per entry or per lookup, and
/// collisions (2^-128 per pair) cannot be provoked by choosing names.
struct KeyHasher(std::collections::hash_map::RandomState, std::collections::hash_map::RandomState);

impl KeyHasher {
    fn new() -> KeyHasher {
        KeyHasher(Default::default(), Default::default())
    }

    fn key(&self, name: &[u8], qtype: u16) -> u128 {
        use std::hash::{BuildHasher, Hasher};
        let h = |s: &std::collections::hash_map::RandomState| {
            let mut h = s.build_hasher();
            h.write(name);
            h.write_u16(qtype);
            h.finish()
        };
        (u128::from(h(&self.0)) << 64) | u128::from(h(&self.1))
    }
}

/// What to do with a packet.
pub enum Outcome {
    Reply(Vec<u8>),
    Drop,
    /// Needs an upstream: call [`Engine::resolve`] (async).
    Resolve(Pending),
}

/// A query waiting for an upstream answer.
pub struct Pending {
    /// When the query arrived (for the latency histogram).
    started: Instant,
    msg: Vec<u8>,
    tier: Option<u16>,
    live: Arc<Live>,
    limit: usize,
}

/// What identical in-flight upstream queries share: the cache key of
/// (qname, qtype) (the class is always IN here: other classes are refused)
/// and the client's DO bit.
type FlightKey = (u128, bool);
type FlightResult = Result<Arc<Answer>, crate::upstream::ResolveError>;

/// Upstream queries in flight, each with the misses waiting for its answer.
#[derive(Default)]
struct Flights(Mutex<HashMap<FlightKey, Vec<tokio::sync::oneshot::Sender<FlightResult>>>>);

/// Held by the miss that sends the upstream query. Dropped without an
/// answer (the leader was cancelled), the entry goes and the waiters'
/// channels close: each then resolves by itself.
struct Leader<'a> {
    flights: &'a Flights,
    key: FlightKey,
}

impl Leader<'_> {
    fn finish(self, r: &FlightResult) {
        let waiters = self.flights.0.lock().unwrap_or_else(|e| e.into_inner()).remove(&self.key);
        std::mem::forget(self);
        for w in waiters.into_iter().flatten() {
            let _ = w.send(r.clone());
        }
    }
}

impl Drop for Leader<'_> {
    fn drop(&mut self) {
        self.flights.0.lock().unwrap_or_else(|e| e.into_inner()).remove(&self.key);
    }
}

enum Flight<'a> {
    Lead(Leader<'a>),
    Wait(tokio::sync::oneshot::Receiver<FlightResult>),
}

impl Flights {
    fn join(&self, key: FlightKey) -> Flight<'_> {
        let mut m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        match m.get_mut(&key) {
            Some(waiters) => {
                let (tx, rx) = tokio::sync::oneshot::channel();
                waiters.push(tx);
                Flight::Wait(rx)
            }
            None => {
                m.insert(key, Vec::new());
                Flight::Lead(Leader { flights: self, key })
            }
        }
    }
}

/// The resolver core.
pub struct Engine {
    live: ArcSwap<Live>,
    cache: quick_cache::sync::Cache<u128, Arc<Answer>, AnswerWeight>,
    keys: KeyHasher,
    pub counters: Counters,
    limiter: RateLimiter,
    tiers: Mutex<BTreeMap<String, Arc<TierCounters>>>,
    store: ListStore,
    inflight: tokio::sync::Semaphore,
    flights: Flights,
    loads: AtomicU64,
    last_load_ms: AtomicU64,
    /// Serialises reloads (so an older policy can never be published after
    /// a newer one). Only `reload` takes it: the query path never does, so a
    /// reload that is still compiling a big list holds up nothing but the
    /// next reload.
    reload_lock: Mutex<()>,
}

/// Concurrent upstream resolutions; beyond this, queries get SERVFAIL at once.
const MAX_INFLIGHT: usize = 2048;

impl Engine {
    pub fn new(cfg: &EngineConfig) -> Result<Engine, EngineError> {
        let entries = cfg.dns.cache_entries.max(16);
        let e = Engine {
            live: ArcSwap::from_pointee(Live {
                policy: Policy::default(),
                upstreams: Arc::new(Upstreams::new(&[])?),
                upstream_cfg: (Vec::new(), Duration::ZERO),
                block_mode: DnsBlockMode::default(),
                rate_limit_qps: 0,
                allowed_sources: Vec::new(),
                tier_counters: Vec::new(),
                list_stats: Vec::new(),
            }),
            cache: quick_cache::sync::Cache::with_weighter(entries, entries as u64, AnswerWeight),
            keys: KeyHasher::new(),
            counters: Counters::default(),
            limiter: RateLimiter::new(),
            tiers: Mutex::new(BTreeMap::new()),
            store: ListStore::default(),
            inflight: tokio::sync::Semaphore::new(MAX_INFLIGHT),
            flights: Flights::default(),
            loads: AtomicU64::new(0),
            last_load_ms: AtomicU64::new(0),
            reload_lock: Mutex::new(()),
        };
        e.reload(cfg)?;
        Ok(e)
    }

    /// Build the new policy and upstreams, then swap them in atomically.
    /// On error nothing changes. Queries in flight finish on the old policy.
    /// (The cache size is fixed at start.)
    ///
    /// Locks: compiling happens before anything is published and holds only
    /// `reload_lock` (reloads one at a time); the list store and the tier
    /// registry are locked for a copy or an insert each, never across a
    /// compile. Queries read the live policy through `arc-swap` and take no
    /// lock a reload holds. This call blocks for as long as compiling takes:
    /// call it off the async runtime (palisaded uses `spawn_blocking`).
    pub fn reload(&self, cfg: &EngineConfig) -> Result<(), EngineError> {
        let _one_at_a_time = self.reload_lock.lock().unwrap_or_else(|e| e.into_inner());
        let t0 = Instant::now();
        let clients = cfg.clients.iter().map(|(a, t)| ClientTier {
            addr: *a,
            tier: t.as_deref(),
        });
        let (policy, list_stats) = self.store.build(&cfg.dns, clients)?;
        let upstream_cfg = (cfg.dns.upstreams.clone(), cfg.upstream_timeout);
        let old = self.live.load();
        let upstreams = if old.upstream_cfg == upstream_cfg {
            old.upstreams.clone()
        } else {
            Arc::new(Upstreams::with_timeout(
                &cfg.dns.upstreams,
                cfg.upstream_timeout,
            )?)
        };
        drop(old);
        let tier_counters = {
            let mut reg = self.tiers.lock().unwrap_or_else(|e| e.into_inner());
            policy
                .tiers
                .iter()
                .map(|t| reg.entry(t.name.clone()).or_default().clone())
                .collect()
        };
        let live = Live {
            policy,
            upstreams,
            upstream_cfg,
            block_mode: cfg.dns.block_mode,
            rate_limit_qps: cfg.dns.rate_limit_qps,
            allowed_sources: cfg.allowed_sources.clone(),
            tier_counters,
            list_stats,
        };
        self.live.store(Arc::new(live));
        self.loads.fetch_add(1, Relaxed);
        self.last_load_ms
            .store(t0.elapsed().as_millis() as u64, Relaxed);
        Ok(())
    }

    fn block_reply(&self, live: &Live, q: &Query<'_>, tier: u16, limit: usize) -> Vec<u8> {
        self.counters.blocked.fetch_add(1, Relaxed);
        if let Some(c) = live.tier_counters.get(tier as usize) {
            c.blocked.fetch_add(1, Relaxed);
        }
        let ede = Some((wire::EDE_BLOCKED, "Blocked"));
        match live.block_mode {
            DnsBlockMode::Nxdomain => wire::empty(q, wire::RCODE_NXDOMAIN, ede, limit),
            DnsBlockMode::Refused => wire::empty(q, wire::RCODE_REFUSED, ede, limit),
            DnsBlockMode::Null => wire::null_block(q, limit),
        }
    }

    /// Is any name of the CNAME chain blocked for this tier? (CNAME cloaking)
    fn chain_blocked(live: &Live, tier: Option<u16>, a: &Answer) -> Option<u16> {
        let t = tier?;
        let policy_tier = live.policy.tiers.get(t as usize)?;
        a.chain.iter().any(|n| policy_tier.blocks(n)).then_some(t)
    }

    /// Is `src` inside the allowed source prefixes (the tunnel)?
    pub fn source_allowed(&self, src: IpAddr) -> bool {
        self.live
            .load()
            .allowed_sources
            .iter()
            .any(|n| n.contains(&src))
    }

    /// Handle one packet from `src`. `tcp`: no UDP size limit.
    pub fn handle(&self, msg: &[u8], src: IpAddr, tcp: bool) -> Outcome {
        let started = Instant::now();
        let o = self.handle_at(msg, src, tcp, started);
        if matches!(o, Outcome::Reply(_)) {
            self.counters.latency.observe(started.elapsed());
        }
        o
    }

    fn handle_at(&self, msg: &[u8], src: IpAddr, tcp: bool, started: Instant) -> Outcome {
        let live = self.live.load();
        if !live.allowed_sources.iter().any(|n| n.contains(&src)) {
            self.counters.foreign_source.fetch_add(1, Relaxed);
            return Outcome::Drop;
        }
        let q = match wire::parse_query(msg) {
            Ok(q) => q,
            Err(Reject::Drop) => {
                self.counters.dropped.fetch_add(1, Relaxed);
                return Outcome::Drop;
            }
            Err(Reject::Reply(r)) => {
                self.counters.malformed.fetch_add(1, Relaxed);
                return Outcome::Reply(r);
            }
        };
        if live.rate_limit_qps > 0 && !self.limiter.allow(src, live.rate_limit_qps, Instant::now())
        {
            self.counters.rate_limited.fetch_add(1, Relaxed);
            return Outcome::Drop;
        }
        self.counters.queries.fetch_add(1, Relaxed);
        let tier = live.policy.tier_index(src);
        if let Some(c) = tier.and_then(|t| live.tier_counters.get(t as usize)) {
            c.queries.fetch_add(1, Relaxed);
        }
        let limit = if tcp { 65535 } else { q.udp_limit() };
        if q.qclass != wire::CLASS_IN || matches!(q.qtype, wire::TYPE_AXFR | wire::TYPE_IXFR) {
            self.counters.refused.fetch_add(1, Relaxed);
            return Outcome::Reply(wire::empty(&q, wire::RCODE_REFUSED, None, limit));
        }
        // RFC 6761: localhost never leaves the node, whatever the lists say.
        if wire::is_localhost(q.name()) {
            self.counters.local.fetch_add(1, Relaxed);
            return Outcome::Reply(wire::localhost(&q, limit));
        }
        if let Some(t) = tier {
            if live.policy.tiers[t as usize].blocks(q.name()) {
                return Outcome::Reply(self.block_reply(&live, &q, t, limit));
            }
        }
        if q.qtype == wire::TYPE_ANY {
            self.counters.any.fetch_add(1, Relaxed);
            return Outcome::Reply(wire::any_hinfo(&q, limit));
        }
        if let Some(a) = self.cache.get(&self.keys.key(q.name(), q.qtype)) {
            let now = Instant::now();
            if a.remaining(now).is_some() {
                self.counters.cache_hits.fetch_add(1, Relaxed);
                if let Some(t) = Engine::chain_blocked(&live, tier, &a) {
                    return Outcome::Reply(self.block_reply(&live, &q, t, limit));
                }
                return Outcome::Reply(wire::from_answer(&q, &a, now, limit));
            }
        }
        self.counters.cache_misses.fetch_add(1, Relaxed);
        Outcome::Resolve(Pending {
            started,
            msg: msg.to_vec(),
            tier,
            live: arc_swap::Guard::into_inner(live),
            limit,
        })
    }

    /// Resolve a cache miss upstream. Always returns an answer (SERVFAIL when
    /// every upstream failed: fail closed).
    pub async fn resolve(&self, p: Pending) -> Vec<u8> {
        let started = p.started;
        let r = self.resolve_pending(p).await;
        self.counters.latency.observe(started.elapsed());
        r
    }

    async fn resolve_pending(&self, p: Pending) -> Vec<u8> {
        let Ok(q) = wire::parse_query(&p.msg) else {
            unreachable!("pending queries were parsed before")
        };
        let servfail = |ede: &str| {
            self.counters.servfail.fetch_add(1, Relaxed);
            wire::empty(
                &q,
                wire::RCODE_SERVFAIL,
                Some((wire::EDE_NO_REACHABLE_AUTHORITY, ede)),
                p.limit,
            )
        };
        let key = (self.keys.key(q.name(), q.qtype), q.edns.as_ref().is_some_and(|e| e.dnssec_ok));
        // The first miss for a key leads: it sends the one upstream query
        // and answers every miss that joined meanwhile. A closed channel
        // means the leader was cancelled: this miss leads in its place (or
        // resolves alone, if another one already does).
        let (leader, shared) = match self.flights.join(key) {
            Flight::Lead(l) => (Some(l), None),
            Flight::Wait(rx) => {
                self.counters.coalesced.fetch_add(1, Relaxed);
                match rx.await {
                    Ok(r) => (None, Some(r)),
                    Err(_) => match self.flights.join(key) {
                        Flight::Lead(l) => (Some(l), None),
                        Flight::Wait(_) => (None, None),
                    },
                }
            }
        };
        let r = match shared {
            Some(r) => r,
            None => {
                let Ok(_permit) = self.inflight.try_acquire() else {
                    return servfail("");
                };
                let r = p.live.upstreams.resolve(q.name(), q.qtype).await.map(Arc::new);
                if let Ok(a) = &r {
                    if a.ttl > 0 {
                        self.cache.insert(self.keys.key(q.name(), q.qtype), a.clone());
                    }
                }
                if let Some(l) = leader {
                    l.finish(&r);
                }
                r
            }
        };
        match r {
            Ok(a) => {
                if let Some(t) = Engine::chain_blocked(&p.live, p.tier, &a) {
                    return self.block_reply(&p.live, &q, t, p.limit);
                }
                wire::from_answer(&q, &a, Instant::now(), p.limit)
            }
            Err(_) => {
                self.counters.upstream_failures.fetch_add(1, Relaxed);
                servfail("")
            }
        }
    }

    /// The query latency histogram (aggregate).
    pub fn latency(&self) -> LatencySnapshot {
        self.counters.latency.snapshot()
    }

    /// Aggregate counters as JSON (no names, no addresses).
    pub fn stats(&self) -> serde_json::Value {
        let c = &self.counters;
        let live = self.live.load();
        let tiers: serde_json::Map<String, serde_json::Value> = self
            .tiers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(n, t)| {
                (
                    n.clone(),
                    serde_json::json!({
                        "queries": t.queries.load(Relaxed),
                        "blocked": t.blocked.load(Relaxed),
                    }),
                )
            })
            .collect();
        let lists: serde_json::Map<String, serde_json::Value> = live
            .list_stats
            .iter()
            .map(|(n, s)| (n.clone(), serde_json::to_value(s).unwrap_or_default()))
            .collect();
        let doh = live.upstreams.doh_connections();
        serde_json::json!({
            "queries": c.queries.load(Relaxed),
            "blocked": c.blocked.load(Relaxed),
            "cache_hits": c.cache_hits.load(Relaxed),
            "cache_misses": c.cache_misses.load(Relaxed),
            "coalesced": c.coalesced.load(Relaxed),
            "cache_entries": self.cache.len(),
            "upstream_failures": c.upstream_failures.load(Relaxed),
            "upstream_attempt_errors": live.upstreams.errors(),
            "upstream_udp_sockets": live.upstreams.udp_sockets(),
            "doh_h2_connections": doh.h2,
            "doh_http1_connections": doh.http1,
            "servfail": c.servfail.load(Relaxed),
            "malformed": c.malformed.load(Relaxed),
            "dropped": c.dropped.load(Relaxed),
            "rate_limited": c.rate_limited.load(Relaxed),
            "foreign_source": c.foreign_source.load(Relaxed),
            "refused": c.refused.load(Relaxed),
            "any": c.any.load(Relaxed),
            "local": c.local.load(Relaxed),
            "tcp_over_limit": c.tcp_over_limit.load(Relaxed),
            "tiers": tiers,
            "lists": lists,
            "policy_loads": self.loads.load(Relaxed),
            "last_load_ms": self.last_load_ms.load(Relaxed),
        })
    }
}

#[cfg(test)]
mod latency_tests {
    use super::*;

    #[test]
    fn latency_buckets_are_cumulative() {
        let l = Latency::default();
        l.observe(Duration::from_micros(300));
        l.observe(Duration::from_millis(3));
        l.observe(Duration::from_secs(10));
        let s = l.snapshot();
        assert_eq!(s.count, 3);
        assert_eq!(s.buckets[0], (0.0005, 1));
        assert_eq!(s.buckets[3], (0.005, 2));
        // Above the last bound: only in the count (the +Inf bucket).
        assert_eq!(s.buckets.last().unwrap().1, 2);
        assert!((s.sum_seconds - 10.0033).abs() < 1e-6, "{}", s.sum_seconds);
    }
}
