//! What a rate-limit decision costs a call: the in-memory limiter (one
//! replica, or limits per replica), the limiter shared through PostgreSQL
//! (cells leased in batches, spent from memory), and the shared limiter
//! while its database is down (the 1/N fallback), each for admitted and for
//! refused calls; then the round trip of one lease, which a call waits for
//! only when its replica holds no cells of its key. Prints medians (ns per
//! admit over rounds of admits; µs per lease). Run with `make bench`.

#![expect(
    clippy::unwrap_used,
    clippy::print_stdout,
    clippy::indexing_slicing,
    reason = "a benchmark program"
)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use agentmesh_llm_gateway::{RateLimitStore, SharedLimitsConfig};
use agentmesh_resilience::{
    Gcra, KeyedLimiter, KeyedRateLimiter, LeaseRequest, LeaseStore, Limit, LimiterEvent,
    SharedRateLimiter, SharedSettings,
};
use agentmesh_tests::percentile;

/// Admits per round, and rounds per figure.
const ADMITS: u32 = 20_000;
const ROUNDS: usize = 15;
/// Lease round trips measured.
const LEASES: usize = 2000;

/// A limit no call reaches in a round: every admit is admitted.
const OPEN: Limit = Limit {
    requests_per_minute: u32::MAX,
    burst: 0,
    tokens_per_minute: 0,
};
/// One call a minute: after the first, every admit is refused.
const SHUT: Limit = Limit {
    requests_per_minute: 1,
    burst: 1,
    tokens_per_minute: 0,
};

fn settings() -> SharedSettings {
    let defaults = SharedLimitsConfig::default();
    SharedSettings {
        replicas: 2,
        lease: defaults.lease,
        timeout: defaults.timeout,
    }
}

/// The median cost of one admit of `key`, in ns.
async fn per_admit(limiter: &dyn KeyedLimiter, key: &str) -> f64 {
    // Warm up: the key's entry, its first leases, a batch at full size.
    for _ in 0..ADMITS {
        let _ = limiter.admit(key, 0).await;
    }
    let mut rounds = Vec::with_capacity(ROUNDS);
    for _ in 0..ROUNDS {
        let started = Instant::now();
        for _ in 0..ADMITS {
            let _ = limiter.admit(key, 0).await;
        }
        rounds.push(started.elapsed() / ADMITS);
    }
    rounds.sort();
    rounds[ROUNDS / 2].as_nanos() as f64
}

fn shared(store: &RateLimitStore, limit: Limit, leases: &Arc<AtomicU64>) -> SharedRateLimiter {
    let limiter = SharedRateLimiter::new(
        "tenant",
        limit,
        BTreeMap::new(),
        Arc::new(store.clone()),
        settings(),
    );
    let leases = Arc::clone(leases);
    limiter.on_event(move |event| {
        if matches!(event, LimiterEvent::Leased { .. }) {
            leases.fetch_add(1, Ordering::Relaxed);
        }
    });
    limiter
}

fn row(label: &str, admitted: f64, refused: f64, note: &str) {
    println!("  {label:<44} {admitted:>8.0} ns {refused:>8.0} ns   {note}");
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let server = agentmesh_testkit::postgres::shared().await;
    let url = server.create_database("rate_limit_bench").await;
    let config = SharedLimitsConfig {
        url: url.clone(),
        expected_replicas: 2,
        ..SharedLimitsConfig::default()
    };
    let store = RateLimitStore::new(&config);
    store.open().await.unwrap();

    println!(
        "rate limits: cost of one admit (median of {ROUNDS} rounds of {ADMITS} admits, one task)"
    );
    println!("  {:<44} {:>11} {:>11}", "", "admitted", "refused");

    let local_open = KeyedRateLimiter::new(OPEN, BTreeMap::new());
    let local_shut = KeyedRateLimiter::new(SHUT, BTreeMap::new());
    row(
        "in memory (no shared_limits.url)",
        per_admit(&local_open, "acme").await,
        per_admit(&local_shut, "acme").await,
        "",
    );

    let leases = Arc::new(AtomicU64::new(0));
    let open = shared(&store, OPEN, &leases);
    let admitted = per_admit(&open, "acme").await;
    let admitted_leases = leases.swap(0, Ordering::Relaxed);
    let shut = shared(&store, SHUT, &leases);
    let refused = per_admit(&shut, "acme").await;
    let refused_leases = leases.swap(0, Ordering::Relaxed);
    let admits = u64::from(ADMITS) * (ROUNDS as u64 + 1);
    row(
        "shared through PostgreSQL",
        admitted,
        refused,
        &format!("{admitted_leases} and {refused_leases} leases for {admits} admits each"),
    );

    // A database that is not there: the first lease fails, then every call
    // is decided by the fallback (and a probe leases once a second).
    let down = RateLimitStore::new(&SharedLimitsConfig {
        url: "postgres://agentmesh@127.0.0.1:1/nowhere".to_owned(),
        ..config.clone()
    });
    let down_open = shared(&down, OPEN, &leases);
    let down_shut = shared(&down, SHUT, &leases);
    row(
        "shared, database down (local at 1/N)",
        per_admit(&down_open, "acme").await,
        per_admit(&down_shut, "acme").await,
        "",
    );

    // One lease round trip: what a call short of cells waits for.
    let gcra = Gcra::new(u64::from(u32::MAX), Duration::from_secs(60), 1_000_000).unwrap();
    let mut trips = Vec::with_capacity(LEASES);
    for _ in 0..LEASES {
        let request = LeaseRequest {
            row: "tenant/requests/bench".to_owned(),
            gcra,
            min: 1,
            max: 1,
            adjust: 0,
        };
        let started = Instant::now();
        store.lease(&request).await.unwrap();
        trips.push(started.elapsed());
    }
    trips.sort();
    println!(
        "  one lease round trip (loopback PostgreSQL): p50 {:.0} µs, p99 {:.0} µs over {LEASES}",
        percentile(&trips, 0.50).as_secs_f64() * 1e6,
        percentile(&trips, 0.99).as_secs_f64() * 1e6,
    );
    store.close().await;
}
