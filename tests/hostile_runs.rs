//! Bursts of `Run` calls with short deadlines, end to end in one process
//! (orchestrator, LLM gateway with its scripted model, tool runner, real
//! gRPC on loopback): no run is ever left QUEUED or RUNNING with nothing
//! driving it.
//!
//! Each round starts `AGENTMESH_STRESS_RUNS` runs (default 1000) from
//! `AGENTMESH_STRESS_TENANTS` tenants (default 500) at once, with deadlines
//! that expire while the run is being admitted and stored (a few ms), while
//! it is queued or early in its run (tens to hundreds of ms), while it runs
//! (a slow answer outliving a 1–2 s deadline), or not at all. Runs are
//! labelled with their round. Mid-burst, every run the round created is
//! either ended, or QUEUED/RUNNING and cancellable — every tenth of those
//! going is cancelled and must end CANCELLED (a cancel that loses the race
//! to the run's own end is fine) — and after the calls return every run must
//! end within its deadline and a bound: a run stored and claimed with no task driving it
//! (the race this guards against) never does. Once all have ended, the
//! gauges agree with the store: nothing active, nothing queued.
//!
//! Rounds: `AGENTMESH_STRESS_ROUNDS` (default 20). The defaults are CI's;
//! the maintenance that adopts undriven runs looks only every 100 s here, so
//! the test checks that runs are driven from the start, not that they are
//! rescued later.

#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests fail loudly"
)]

use std::collections::HashMap;
use std::time::Duration;

use agentmesh_proto::orchestrator::v1::{
    self as pb, orchestrator_service_client::OrchestratorServiceClient,
};
use agentmesh_tests::{RunMesh as Mesh, http_get};
use futures::StreamExt as _;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request};

const TENANT: &str = "x-agentmesh-tenant";
/// Longest deadline a call of a round is given.
const LONGEST_DEADLINE: Duration = Duration::from_secs(8);
/// How long after the longest deadline every run of a round must have
/// ended: a run's end is stored within moments of its deadline.
const SETTLE: Duration = Duration::from_secs(20);

/// "slow …" answers in 2 s (20 words, 100 ms apart); anything else at once.
const RULES: &str = r#"
pace = "0s"
[[rules]]
on = "user"
match = '(?i)^slow'
pace = "100ms"
text = "one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen seventeen eighteen nineteen twenty"
[[rules]]
text = "done"
"#;

fn setting(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .map(|value| {
            value
                .parse()
                .unwrap_or_else(|_| panic!("{name}={value:?} is not a count"))
        })
        .unwrap_or(default)
}

fn for_tenant<T>(message: T, tenant: &str) -> Request<T> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert(TENANT, tenant.parse().unwrap());
    request
}

/// The deadline and objective of call `i`: spread over the moments a
/// deadline can fire in.
fn call_shape(i: usize) -> (Duration, &'static str) {
    let spread = u64::try_from(i % 97).unwrap();
    match i % 4 {
        // While admitted and stored.
        0 => (Duration::from_millis(1 + spread / 5), "quick"),
        // While queued, or early in the run.
        1 => (Duration::from_millis(30 + spread * 3), "quick"),
        // While running: the answer takes 2 s.
        2 => (Duration::from_millis(800 + spread * 10), "slow story"),
        // Not at all.
        _ => (LONGEST_DEADLINE, "quick"),
    }
}

/// One `Run` call, read to its end; whatever it answers is fine.
async fn run_once(
    mut client: OrchestratorServiceClient<Channel>,
    i: usize,
    round: usize,
    tenant: String,
) {
    let (deadline, objective) = call_shape(i);
    let mut request = for_tenant(
        pb::RunRequest {
            objective: objective.to_owned(),
            labels: HashMap::from([("round".to_owned(), round.to_string())]),
            ..Default::default()
        },
        &tenant,
    );
    request.set_timeout(deadline);
    // The client gives up a little after the deadline too, as a client does.
    let call = async {
        if let Ok(response) = client.run(request).await {
            let mut events = response.into_inner();
            while let Some(Ok(_)) = events.next().await {}
        }
    };
    let _ = tokio::time::timeout(deadline + Duration::from_secs(2), call).await;
}

/// Every run of `round`, from every tenant.
async fn runs_of_round(
    client: &OrchestratorServiceClient<Channel>,
    tenants: usize,
    round: usize,
) -> Vec<(String, pb::Run)> {
    futures::stream::iter(0..tenants)
        .map(|t| {
            let mut client = client.clone();
            async move {
                let tenant = format!("tenant-{t}");
                let mut found = Vec::new();
                let mut page_token = String::new();
                loop {
                    let page = client
                        .list_runs(for_tenant(
                            pb::ListRunsRequest {
                                labels: HashMap::from([("round".to_owned(), round.to_string())]),
                                page_size: 1000,
                                page_token,
                                ..Default::default()
                            },
                            &tenant,
                        ))
                        .await
                        .expect("ListRuns")
                        .into_inner();
                    found.extend(page.runs.into_iter().map(|run| (tenant.clone(), run)));
                    if page.next_page_token.is_empty() {
                        return found;
                    }
                    page_token = page.next_page_token;
                }
            }
        })
        .buffer_unordered(32)
        .flat_map(futures::stream::iter)
        .collect()
        .await
}

fn ended(state: pb::RunState) -> bool {
    matches!(
        state,
        pb::RunState::Succeeded | pb::RunState::Failed | pb::RunState::Cancelled
    )
}

/// Cancels a run not ended yet: it must end CANCELLED, unless it ended on
/// its own first.
async fn cancel(mut client: OrchestratorServiceClient<Channel>, tenant: String, run: pb::Run) {
    let answer = client
        .cancel_run(for_tenant(
            pb::CancelRunRequest {
                run_id: run.run_id.clone(),
                reason: "stress".to_owned(),
            },
            &tenant,
        ))
        .await;
    match answer {
        Ok(response) => {
            let state = response.into_inner().run.unwrap().state();
            assert_eq!(state, pb::RunState::Cancelled, "run {}", run.run_id);
        }
        // It ended before the cancel took effect (or had already).
        Err(status) if status.code() == Code::FailedPrecondition => {}
        Err(status) => panic!(
            "CancelRun of run {} ({:?}) answered {status:?}",
            run.run_id,
            run.state()
        ),
    }
}

/// The sum of every series of `name` in a Prometheus text exposition.
fn gauge(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|line| {
            line.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bursts_of_runs_with_short_deadlines_leave_no_run_stuck() {
    let rounds = setting("AGENTMESH_STRESS_ROUNDS", 20);
    let calls = setting("AGENTMESH_STRESS_RUNS", 1000);
    let tenants = setting("AGENTMESH_STRESS_TENANTS", 500).max(1);
    let mesh = Mesh::start(Some(RULES), |config| {
        config.max_concurrent_runs = 64;
        config.max_concurrent_runs_per_tenant = 2;
        config.max_queued_runs = 512;
        config.max_queued_runs_per_tenant = 2;
        // The maintenance (which would adopt an undriven run) looks every
        // 100 s: rounds must not depend on it.
        config.run_lease = Duration::from_secs(300);
    })
    .await;
    // A few connections, as a fleet of clients would open.
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let channel = Endpoint::from_shared(format!("http://{}", mesh.orchestrator))
                .unwrap()
                .connect_lazy();
            OrchestratorServiceClient::new(channel)
        })
        .collect();
    let lister = clients[0].clone();
    let mut created_total = 0;
    let mut cancelled_total = 0;
    for round in 0..rounds {
        let began = tokio::time::Instant::now();
        let burst: Vec<_> = (0..calls)
            .map(|i| {
                let client = clients[i % clients.len()].clone();
                tokio::spawn(run_once(
                    client,
                    i,
                    round,
                    format!("tenant-{}", i % tenants),
                ))
            })
            .collect();
        // Mid-burst, every run created is ended or cancellable: cancel
        // every tenth of those still going (queued or running).
        tokio::time::sleep(Duration::from_millis(400)).await;
        let early = runs_of_round(&lister, tenants, round).await;
        let cancels: Vec<_> = early
            .iter()
            .filter(|(_, run)| !ended(run.state()))
            .step_by(10)
            .map(|(tenant, run)| tokio::spawn(cancel(lister.clone(), tenant.clone(), run.clone())))
            .collect();
        cancelled_total += cancels.len();
        for cancelled in cancels {
            cancelled.await.unwrap();
        }
        for call in burst {
            call.await.unwrap();
        }
        let runs = runs_of_round(&lister, tenants, round).await;
        assert!(!runs.is_empty(), "round {round} created no run");
        created_total += runs.len();

        // Then every run ends within its deadline and a bound.
        let bound = began + LONGEST_DEADLINE + SETTLE;
        let stuck = loop {
            let going: Vec<_> = runs_of_round(&lister, tenants, round)
                .await
                .into_iter()
                .filter(|(_, run)| !ended(run.state()))
                .collect();
            if going.is_empty() || tokio::time::Instant::now() > bound {
                break going;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        };
        assert!(
            stuck.is_empty(),
            "round {round}: {} runs did not end within their deadline and {SETTLE:?}: {:?}",
            stuck.len(),
            stuck
                .iter()
                .take(5)
                .map(|(_, run)| (run.run_id.clone(), run.state(), run.create_time))
                .collect::<Vec<_>>()
        );

        // The gauges agree with the store: nothing active, nothing queued.
        let (status, metrics) = http_get(mesh.orchestrator_admin, "/metrics").await;
        assert_eq!(status, 200);
        for name in [
            "agentmesh_runs_active",
            "agentmesh_run_queue_depth",
            "agentmesh_admission_in_use",
            "agentmesh_admission_queue_depth",
        ] {
            assert_eq!(
                gauge(&metrics, name),
                0.0,
                "round {round}: {name} in\n{metrics}"
            );
        }
        assert!(
            !metrics.contains("tenant-"),
            "tenants became labels:\n{metrics}"
        );
        eprintln!(
            "round {round}: {} runs created by {calls} calls, {} cancelled while going so far, \
             all ended in {:?}",
            runs.len(),
            cancelled_total,
            began.elapsed()
        );
    }
    assert!(created_total > 0);
    // The cancels were exercised, not skipped.
    assert!(cancelled_total > 0, "no run was still going to cancel");
    mesh.stop().await;
}
