//! Rate limits shared through a real PostgreSQL database: the lease
//! function's arithmetic (grants, waits, debts and credits, concurrent first
//! leases), two limiters on one database (two replicas in one process)
//! holding one limit together, and the fallback to 1/N of each limit while
//! the database refuses connections, then back to shared once it answers.

#![expect(clippy::unwrap_used, reason = "a test fails by panicking")]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agentmesh_llm_gateway::{RateLimitStore, SharedLimitsConfig};
use agentmesh_resilience::{
    Gcra, KeyedLimiter, Lease, LeaseRequest, LeaseStore, Limit, LimiterEvent, LimiterMode,
    Resource, SharedRateLimiter, SharedSettings,
};
use agentmesh_testkit::eventually;
use agentmesh_testkit::postgres::PostgresServer;
use sqlx::Connection as _;
use sqlx::postgres::PgConnection;

/// Bounds every wait.
const PATIENCE: Duration = Duration::from_secs(20);

/// A fresh database and its store, opened (migrated), and the server,
/// which runs while the test holds it.
async fn store(prefix: &str) -> (RateLimitStore, String, Arc<PostgresServer>) {
    let server = agentmesh_testkit::postgres::shared().await;
    let url = server.create_database(prefix).await;
    let store = RateLimitStore::new(&config(&url));
    store.open().await.unwrap();
    (store, url, server)
}

fn config(url: &str) -> SharedLimitsConfig {
    SharedLimitsConfig {
        url: url.to_owned(),
        expected_replicas: 2,
        ..SharedLimitsConfig::default()
    }
}

async fn lease(store: &RateLimitStore, row: &str, gcra: Gcra, wanted: (u64, u64, i64)) -> Lease {
    let (min, max, adjust) = wanted;
    let request = LeaseRequest {
        row: row.to_owned(),
        gcra,
        min,
        max,
        adjust,
    };
    store.lease(&request).await.unwrap()
}

fn close_to(actual: Duration, expected: Duration) -> bool {
    actual <= expected && expected - actual < Duration::from_secs(2)
}

#[tokio::test]
async fn a_lease_grants_what_the_gcra_allows_and_says_when_more_fit() {
    let (store, _, _server) = store("limits_lease").await;
    // 6 a minute (one every 10 s), 4 at once.
    let gcra = Gcra::new(6, Duration::from_secs(60), 4).unwrap();
    let row = "tenant/requests/acme";
    let first = lease(&store, row, gcra, (1, 3, 0)).await;
    assert_eq!(first.granted, 3);
    assert_eq!(first.wait, Duration::ZERO);
    // One fits; two do not: nothing granted, and two fit in ~10 s.
    let short = lease(&store, row, gcra, (2, 5, 0)).await;
    assert_eq!(short.granted, 0);
    assert!(close_to(short.wait, Duration::from_secs(10)), "{short:?}");
    let last = lease(&store, row, gcra, (1, 5, 0)).await;
    assert_eq!(last.granted, 1);
    assert!(close_to(last.wait, Duration::from_secs(10)), "{last:?}");
    // Two given back (an over-estimate): two fit again.
    let credit = lease(&store, row, gcra, (0, 0, -2)).await;
    assert_eq!(credit.granted, 0);
    assert_eq!(lease(&store, row, gcra, (2, 2, 0)).await.granted, 2);
    // A debt of 10 cells: the next one fits in 11 intervals.
    let debt = lease(&store, row, gcra, (0, 0, 10)).await;
    assert!(close_to(debt.wait, Duration::from_secs(110)), "{debt:?}");
    assert_eq!(lease(&store, row, gcra, (1, 1, 0)).await.granted, 0);
    // A credit never moves the row before now: at most a full burst again.
    lease(&store, row, gcra, (0, 0, -1000)).await;
    assert_eq!(lease(&store, row, gcra, (0, 10, 0)).await.granted, 4);
    // Other rows are untouched; a long key still leases.
    assert_eq!(
        lease(&store, "tenant/tokens/acme", gcra, (1, 4, 0))
            .await
            .granted,
        4
    );
    let long = format!("route/requests/openai/{}", "m".repeat(3000));
    assert_eq!(lease(&store, &long, gcra, (1, 1, 0)).await.granted, 1);
    assert_eq!(lease(&store, &long, gcra, (0, 9, 0)).await.granted, 3);
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_first_leases_of_a_meter_share_one_burst() {
    let (store, _, _server) = store("limits_race").await;
    let gcra = Gcra::new(60, Duration::from_secs(60), 5).unwrap();
    let leases = (0..20).map(|_| {
        let store = store.clone();
        tokio::spawn(async move { lease(&store, "tenant/requests/new", gcra, (1, 1, 0)).await })
    });
    let mut granted = 0;
    for lease in leases {
        granted += lease.await.unwrap().granted;
    }
    assert_eq!(granted, 5);
    store.close().await;
}

fn limiter(store: &RateLimitStore, limit: Limit, replicas: u32) -> SharedRateLimiter {
    SharedRateLimiter::new(
        "tenant",
        limit,
        BTreeMap::new(),
        Arc::new(store.clone()),
        SharedSettings {
            replicas,
            lease: Duration::from_secs(1),
            timeout: Duration::from_millis(500),
        },
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_limiters_on_one_database_hold_one_limit_together() {
    let (store, _, _server) = store("limits_two").await;
    // 600 a minute (10 a second), 20 at once, for the two together.
    let limit = Limit {
        requests_per_minute: 600,
        burst: 20,
        ..Limit::default()
    };
    let replicas = [limiter(&store, limit, 2), limiter(&store, limit, 2)];
    let started = tokio::time::Instant::now();
    let window = Duration::from_secs(2);
    let mut served = [0u64; 2];
    while started.elapsed() < window {
        for (replica, served) in replicas.iter().zip(&mut served) {
            if replica.admit("acme", 0).await.is_ok() {
                *served += 1;
            }
            // A replica holds at most its share of the burst.
            assert!(replica.held_requests("acme") <= 10);
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let total = served[0] + served[1];
    // burst + rate × elapsed, and one for the call in flight at the end.
    let bound = 20.0 + 10.0 * elapsed + 1.0;
    assert!(
        (total as f64) <= bound,
        "{served:?} served, at most {bound}"
    );
    // Both replicas served, and together close to the limit, not half of it.
    assert!(served.iter().all(|&count| count > 0), "{served:?}");
    assert!(total >= 30, "{served:?}");
    store.close().await;
}

/// Refuses (false) or allows (true) new connections to the database at
/// `url`, ending the connections it has when refusing: the database is
/// "down" for the gateway.
async fn set_reachable(url: &str, reachable: bool) {
    let (base, name) = url.rsplit_once('/').unwrap();
    let mut admin = PgConnection::connect(&format!("{base}/postgres"))
        .await
        .unwrap();
    // The name is the test's own database's (ALTER DATABASE takes no
    // parameters).
    let statement = format!("ALTER DATABASE \"{name}\" WITH ALLOW_CONNECTIONS {reachable}");
    sqlx::raw_sql(sqlx::AssertSqlSafe(statement))
        .execute(&mut admin)
        .await
        .unwrap();
    if !reachable {
        sqlx::query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1")
            .bind(name)
            .execute(&mut admin)
            .await
            .unwrap();
    }
    admin.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_database_down_each_replica_enforces_its_share_then_shares_again() {
    let (store, url, _server) = store("limits_down").await;
    // 60 a minute, 8 at once, over 4 replicas: 15 a minute and 2 at once each
    // while the database is down.
    let limit = Limit {
        requests_per_minute: 60,
        burst: 8,
        ..Limit::default()
    };
    let limiter = limiter(&store, limit, 4);
    let events = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&events);
    limiter.on_event(move |event| {
        if let LimiterEvent::Mode { mode, .. } = event {
            seen.lock().unwrap().push(*mode);
        }
    });
    limiter.admit("acme", 0).await.unwrap();
    assert_eq!(limiter.mode(), LimiterMode::Shared);

    set_reachable(&url, false).await;
    // The first call after the outage finds it, and is decided locally;
    // from then on nothing waits for the database.
    let mut served = 0;
    let mut refused = None;
    for _ in 0..10 {
        match limiter.admit("acme", 0).await {
            Ok(_) => served += 1,
            Err(err) => refused = Some(err),
        }
    }
    assert_eq!(limiter.mode(), LimiterMode::Local);
    assert_eq!(served, 2, "the fallback's burst is 8 / 4");
    let refused = refused.unwrap();
    assert_eq!(refused.resource, Resource::Requests);
    // The fallback's rate is 15 a minute: a cell every 4 s.
    assert!(refused.retry_after > Duration::from_secs(3), "{refused:?}");
    assert_eq!(*events.lock().unwrap(), [LimiterMode::Local]);

    set_reachable(&url, true).await;
    eventually("the limiter to share again", PATIENCE, || async {
        let _ = limiter.admit("acme", 0).await;
        (limiter.mode() == LimiterMode::Shared).then_some(())
    })
    .await;
    assert_eq!(
        *events.lock().unwrap(),
        [LimiterMode::Local, LimiterMode::Shared]
    );
    store.close().await;
}
