//! The chaos suite: the whole mesh as real processes on one PostgreSQL
//! server (see `chaos_cluster.rs`) serves a stream of runs while a chaos
//! loop stops and restarts its processes one at a time (`kill -9` or
//! SIGTERM), then every promise of the contract is checked:
//!
//! * every run ended exactly once, and its stored log is gap-free but for
//!   the gaps its restart markers explain;
//! * every follower (on random replicas, letting go and re-joining at random
//!   sequences, earlier ones included) saw every event once and in order,
//!   and the answer it assembled is the run's output;
//! * a side-effecting tool ran at most once per step attempt;
//! * every tool call has its audit event, every model step its LLM call
//!   event, and the hash chains verify;
//! * every cancel that was accepted took effect, and no run failed;
//! * alerting has exactly one leader.
//!
//! Size: `AGENTMESH_CHAOS_RUNS` runs (default 100) started over the first
//! 70 % of `AGENTMESH_CHAOS_SECONDS` of chaos (default 60), from
//! `AGENTMESH_CHAOS_SEED` (default: the clock; printed). `make chaos` runs
//! the full size. The report goes to the test's output.

#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::print_stderr,
    reason = "a test fails by panicking"
)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agentmesh_proto::audit::v1::{
    self as audit_pb, EventFilter, EventType, audit_service_client::AuditServiceClient,
};
use agentmesh_proto::orchestrator::v1::{
    self as pb, orchestrator_service_client::OrchestratorServiceClient, run_event,
};
use agentmesh_tests::{channel, percentile};
use tonic::Code;

#[path = "chaos_cluster.rs"]
mod chaos_cluster;
#[path = "replica_support.rs"]
#[expect(
    dead_code,
    reason = "the scale-out tests use more of it than this file"
)]
mod replica_support;

use chaos_cluster::Mesh;
use replica_support::{Followed, Rejoins, check_events, follow, follow_anywhere, is_terminal};

/// How much chaos.
#[derive(Debug, Clone, Copy)]
struct Size {
    runs: usize,
    seconds: u64,
    seed: u64,
}

fn size() -> Size {
    let number = |name: &str, default: u64| -> u64 {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let clock = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    Size {
        runs: usize::try_from(number("AGENTMESH_CHAOS_RUNS", 100)).unwrap(),
        seconds: number("AGENTMESH_CHAOS_SECONDS", 60),
        seed: number("AGENTMESH_CHAOS_SEED", clock),
    }
}

/// What came of a cancel.
#[derive(Debug, Clone, PartialEq)]
enum Cancel {
    /// Accepted (done, or recorded for the run's next checkpoint).
    Accepted,
    /// The run had ended first.
    TooLate,
    /// No replica answered it.
    Lost(String),
}

/// What the driver did and saw for one run.
#[derive(Debug)]
struct Driven {
    run_id: String,
    started: Instant,
    followed: Followed,
    cancel: Option<Cancel>,
}

type Live = Arc<Mutex<Vec<SocketAddr>>>;

fn pick(live: &Live, rng: &mut fastrand::Rng) -> SocketAddr {
    let live = live.lock().unwrap();
    live[rng.usize(..live.len())]
}

/// StartRun with an idempotency key on random replicas until one answers;
/// now and then asked twice, on two replicas, which must agree.
async fn start_run(live: &Live, rng: &mut fastrand::Rng, i: usize) -> Result<String, String> {
    let (agent, objective) = match i % 20 {
        0..12 => ("default", "chain of ledger calls"),
        12..17 => ("default", "slow answer"),
        _ => ("flaky", "a question for a flaky provider"),
    };
    let request = pb::StartRunRequest {
        objective: objective.into(),
        agent: agent.into(),
        idempotency_key: format!("chaos-{i}"),
        ..pb::StartRunRequest::default()
    };
    let mut ids = Vec::new();
    let asks = if rng.f64() < 0.2 { 2 } else { 1 };
    for attempt in 0..40 {
        let mut client = OrchestratorServiceClient::new(channel(pick(live, rng)));
        let answer =
            tokio::time::timeout(Duration::from_secs(5), client.start_run(request.clone())).await;
        match answer {
            Ok(Ok(response)) => ids.push(response.into_inner().run_id),
            Ok(Err(status)) if !matches!(status.code(), Code::Unavailable | Code::Unknown) => {
                return Err(format!("StartRun {i}: {status:?}"));
            }
            _ => tokio::time::sleep(Duration::from_millis(50 + 10 * attempt)).await,
        }
        if ids.len() == asks {
            break;
        }
    }
    match ids.as_slice() {
        [] => Err(format!("StartRun {i}: no replica answered")),
        [first, rest @ ..] if rest.iter().all(|id| id == first) => Ok(first.clone()),
        _ => Err(format!("StartRun {i} with one key made two runs: {ids:?}")),
    }
}

/// CancelRun on random replicas until one answers.
async fn cancel(live: &Live, rng: &mut fastrand::Rng, run_id: &str) -> Cancel {
    let mut last = String::new();
    for attempt in 0..40 {
        let mut client = OrchestratorServiceClient::new(channel(pick(live, rng)));
        let request = pb::CancelRunRequest {
            run_id: run_id.into(),
            reason: "chaos".into(),
        };
        let answer = tokio::time::timeout(Duration::from_secs(5), client.cancel_run(request)).await;
        match answer {
            Ok(Ok(_)) => return Cancel::Accepted,
            Ok(Err(status)) if status.code() == Code::FailedPrecondition => return Cancel::TooLate,
            Ok(Err(status))
                if status.code() == Code::Unavailable
                    && status.message().contains("is recorded") =>
            {
                return Cancel::Accepted;
            }
            Ok(Err(status)) => last = format!("{status:?}"),
            Err(_) => last = "timed out".into(),
        }
        tokio::time::sleep(Duration::from_millis(50 + 10 * attempt)).await;
    }
    Cancel::Lost(last)
}

/// Run `i`: started at its time, followed to its end, perhaps cancelled.
async fn drive(i: usize, live: Live, size: Size) -> Result<Driven, String> {
    let mut rng = fastrand::Rng::with_seed(size.seed.wrapping_add(i as u64));
    let spread = Duration::from_millis(size.seconds * 700) / u32::try_from(size.runs).unwrap();
    tokio::time::sleep(spread * u32::try_from(i).unwrap()).await;
    let started = Instant::now();
    let run_id = start_run(&live, &mut rng, i).await?;
    let rejoins = Rejoins {
        drop_chance: 0.02,
        earlier_chance: 0.3,
    };
    let limit = Duration::from_secs(size.seconds + 180);
    let follower = tokio::spawn(follow_anywhere(
        live.clone(),
        run_id.clone(),
        rng.u64(..),
        rejoins,
        limit,
    ));
    let mut cancelled = None;
    if rng.f64() < 0.1 {
        tokio::time::sleep(Duration::from_millis(rng.u64(100..2_000))).await;
        cancelled = Some(cancel(&live, &mut rng, &run_id).await);
    }
    Ok(Driven {
        run_id,
        started,
        followed: follower.await.unwrap(),
        cancel: cancelled,
    })
}

/// Stops and restarts one process at a time, at random, until `until`.
async fn chaos(mesh: &mut Mesh, until: Instant, seed: u64) -> Vec<String> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut problems = Vec::new();
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(rng.u64(500..2_000))).await;
        let index = rng.usize(..mesh.processes.len());
        let process = &mut mesh.processes[index];
        let kill = process.kind.may_be_killed() && rng.bool();
        if let Err(problem) = process.stop(if kill { "KILL" } else { "TERM" }).await {
            problems.push(problem);
        }
        if kill {
            process.kills += 1;
        } else {
            process.terms += 1;
        }
        process.start(mesh.dir.path()).await;
    }
    problems
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mesh_keeps_every_promise_while_its_processes_are_killed_and_restarted() {
    let size = size();
    eprintln!("chaos: {size:?}");
    let mut mesh = Mesh::start().await;
    let live: Live = Arc::new(Mutex::new(mesh.orchestrators()));
    let began = Instant::now();
    let drivers: Vec<_> = (0..size.runs)
        .map(|i| tokio::spawn(drive(i, live.clone(), size)))
        .collect();
    let until = began + Duration::from_secs(size.seconds);
    let mut problems = chaos(&mut mesh, until, size.seed).await;
    let mut driven = Vec::new();
    for driver in drivers {
        match driver.await.unwrap() {
            Ok(run) => driven.push(run),
            Err(problem) => problems.push(problem),
        }
    }
    let ended = Instant::now();
    let checks = check_runs(&mesh, &driven).await;
    problems.extend(checks.problems.iter().cloned());
    problems.extend(checks.failures.iter().map(|f| format!("failed: {f}")));
    problems.extend(check_audit(&mesh, &driven, &checks).await);
    problems.extend(check_alerting(&mesh).await);
    report(&mesh, &driven, &checks, ended.duration_since(began));
    assert!(
        problems.is_empty(),
        "{} problems (seed {}):\n{}",
        problems.len(),
        size.seed,
        problems.join("\n")
    );
}

/// What the run checks found.
#[derive(Debug, Default)]
struct Checks {
    problems: Vec<String>,
    states: BTreeMap<String, usize>,
    /// Ledger lines per run.
    ledger: BTreeMap<String, usize>,
    /// Model steps per run, from its stored log.
    model_steps: BTreeMap<String, usize>,
    markers: usize,
    /// Why the failed runs failed: every dependency has a replica up at
    /// all times, so a failed run is a run the chaos lost.
    failures: Vec<String>,
    stalls: Vec<Duration>,
    times: Vec<Duration>,
}

/// Each run's stored log, final state, follower, cancel and ledger.
async fn check_runs(mesh: &Mesh, driven: &[Driven]) -> Checks {
    let mut checks = Checks::default();
    let executions = ledger(mesh);
    for ((run_id, _), count) in &executions {
        *checks.ledger.entry(run_id.clone()).or_default() += count;
    }
    let replica = mesh.orchestrators()[0];
    for run in driven {
        if let Err(problem) = check_run(replica, run, &executions, &mut checks).await {
            checks
                .problems
                .push(format!("run {}: {problem}", run.run_id));
        }
    }
    checks
}

/// The ledger: how often each (run, n) ran.
fn ledger(mesh: &Mesh) -> BTreeMap<(String, i32), usize> {
    let text = std::fs::read_to_string(&mesh.ledger).unwrap_or_default();
    let mut counts = BTreeMap::new();
    for line in text.lines() {
        let mut parts = line.split(' ');
        if let (Some(run), Some(Ok(n))) = (parts.next(), parts.next().map(str::parse)) {
            *counts.entry((run.to_owned(), n)).or_default() += 1;
        }
    }
    counts
}

async fn check_run(
    replica: SocketAddr,
    run: &Driven,
    executions: &BTreeMap<(String, i32), usize>,
    checks: &mut Checks,
) -> Result<(), String> {
    if !run.followed.mismatches.is_empty() {
        return Err(run.followed.mismatches.join("; "));
    }
    let followed = check_events(&run.followed.received).map_err(|p| format!("follower: {p}"))?;
    let last = run
        .followed
        .received
        .last()
        .ok_or("the follower saw nothing")?;
    if !is_terminal(&last.event) {
        return Err(format!("the follower saw no end (last: {:?})", last.event));
    }
    let stored = follow(replica, run.run_id.clone(), 0).await;
    let checked = check_events(&stored).map_err(|p| format!("stored log: {p}"))?;
    if checked.kept.last() != followed.kept.last() {
        return Err("the follower's end is not the stored end".into());
    }
    let mut client = OrchestratorServiceClient::new(channel(replica));
    let state = client
        .get_run(pb::GetRunRequest {
            run_id: run.run_id.clone(),
        })
        .await
        .map_err(|s| format!("GetRun: {s:?}"))?
        .into_inner()
        .run
        .unwrap()
        .state();
    let ends = match &last.event.event {
        Some(run_event::Event::RunFinished(_)) => pb::RunState::Succeeded,
        Some(run_event::Event::RunFailed(failed)) => {
            let error = failed.error.clone().unwrap_or_default();
            checks.failures.push(format!(
                "run {}: {}: {}",
                run.run_id, error.code, error.message
            ));
            pb::RunState::Failed
        }
        _ => pb::RunState::Cancelled,
    };
    if state != ends {
        return Err(format!("GetRun says {state:?}, the stream ended {ends:?}"));
    }
    if run.cancel == Some(Cancel::Accepted) && state != pb::RunState::Cancelled {
        return Err(format!("an accepted cancel did not take effect: {state:?}"));
    }
    if let Some(Cancel::Lost(why)) = &run.cancel {
        return Err(format!("no replica took the cancel: {why}"));
    }
    *checks.states.entry(format!("{state:?}")).or_default() += 1;
    checks.stalls.push(followed.longest_silence);
    checks.times.push(last.at.duration_since(run.started));
    let stored = stored_events(&stored);
    let steps: std::collections::BTreeSet<i32> = stored
        .iter()
        .filter_map(|e| match &e.event {
            Some(run_event::Event::TokenDelta(d)) => Some(d.step),
            Some(run_event::Event::ToolCallStarted(c)) => Some(c.step),
            _ => None,
        })
        .collect();
    checks.model_steps.insert(run.run_id.clone(), steps.len());
    check_ledger(&run.run_id, &stored, executions, checks)
}

fn stored_events(stored: &[replica_support::Received]) -> Vec<pb::RunEvent> {
    stored.iter().map(|r| r.event.clone()).collect()
}

/// Each ledger call ran at most once per attempt of its step: once, plus
/// once per restart of that step after a replica stopped mid-step.
fn check_ledger(
    run_id: &str,
    stored: &[pb::RunEvent],
    executions: &BTreeMap<(String, i32), usize>,
    checks: &mut Checks,
) -> Result<(), String> {
    let mut restarts: BTreeMap<i32, usize> = BTreeMap::new();
    let mut step_of: BTreeMap<i32, i32> = BTreeMap::new();
    for event in stored {
        match &event.event {
            Some(run_event::Event::Progress(p)) if p.abandoned_last_sequence > 0 => {
                *restarts.entry(p.step).or_default() += 1;
                checks.markers += 1;
            }
            Some(run_event::Event::ToolCallStarted(call)) => {
                let n = serde_json::from_str::<serde_json::Value>(&call.arguments_json)
                    .ok()
                    .and_then(|a| a["n"].as_str()?.parse().ok());
                if let Some(n) = n {
                    step_of.insert(n, call.step);
                }
            }
            _ => {}
        }
    }
    for ((run, n), count) in executions.range((run_id.to_owned(), i32::MIN)..) {
        if run != run_id {
            break;
        }
        let step = step_of.get(n).copied().unwrap_or(n + 1);
        let allowed = 1 + restarts.get(&step).copied().unwrap_or(0);
        if *count > allowed {
            return Err(format!(
                "ledger call {n} (step {step}) ran {count} times, {allowed} attempts"
            ));
        }
    }
    Ok(())
}

/// Every ledger execution has its audit event, every model step an LLM call
/// event; the hash chains verify. The producers' spools may still be
/// draining: counts are awaited for a while.
async fn check_audit(mesh: &Mesh, driven: &[Driven], checks: &Checks) -> Vec<String> {
    let mut audit = AuditServiceClient::new(channel(mesh.audit.addr));
    let mut problems = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    for run in driven {
        let calls = checks.ledger.get(&run.run_id).copied().unwrap_or(0);
        let steps = checks.model_steps.get(&run.run_id).copied().unwrap_or(0);
        loop {
            let tools = count(&mut audit, &run.run_id, EventType::ToolCall, &["ledger"]).await;
            let models = count(&mut audit, &run.run_id, EventType::LlmCall, &[]).await;
            // More audit events than executions are calls refused before
            // the command started (a tool runner draining, a caller gone).
            if tools >= calls && models >= steps {
                break;
            }
            if Instant::now() > deadline {
                problems.push(format!(
                    "run {}: {tools} ledger audit events for {calls} calls, {models} LLM call \
                     events for {steps} model steps",
                    run.run_id
                ));
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let verified = audit
        .verify_chain(audit_pb::VerifyChainRequest::default())
        .await
        .unwrap()
        .into_inner();
    eprintln!(
        "VerifyChain: ok {}, {} events in {} chains",
        verified.ok, verified.events_checked, verified.chains_checked
    );
    if !verified.ok {
        problems.push(format!("VerifyChain: {:?}", verified.first_bad_event));
    }
    problems
}

/// Audit events of `run_id` of type `kind` (of `tools`, when given).
async fn count(
    audit: &mut AuditServiceClient<tonic::transport::Channel>,
    run_id: &str,
    kind: EventType,
    tools: &[&str],
) -> usize {
    let mut total = 0;
    let mut page_token = String::new();
    loop {
        let page = audit
            .query(audit_pb::QueryRequest {
                filter: Some(EventFilter {
                    run_ids: vec![run_id.into()],
                    types: vec![kind.into()],
                    tools: tools.iter().map(|t| (*t).to_owned()).collect(),
                    ..EventFilter::default()
                }),
                page_size: 1000,
                page_token,
                ..audit_pb::QueryRequest::default()
            })
            .await
            .unwrap()
            .into_inner();
        total += page.events.len();
        if page.next_page_token.is_empty() {
            return total;
        }
        page_token = page.next_page_token;
    }
}

/// One alerting replica leads, the other stands by.
async fn check_alerting(mesh: &Mesh) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut leaders = 0.0;
        for p in &mesh.processes {
            if p.kind == chaos_cluster::Kind::Alerting {
                leaders += p.metric("agentmesh_alerting_leader").await;
            }
        }
        if leaders == 1.0 {
            return Vec::new();
        }
        if Instant::now() > deadline {
            return vec![format!("{leaders} alerting leaders")];
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn report(mesh: &Mesh, driven: &[Driven], checks: &Checks, took: Duration) {
    let mut times = checks.times.clone();
    times.sort();
    let mut stalls = checks.stalls.clone();
    stalls.sort();
    let streams: usize = driven.iter().map(|r| r.followed.streams).sum();
    let cancels = driven
        .iter()
        .filter(|r| r.cancel == Some(Cancel::Accepted))
        .count();
    eprintln!("== chaos report");
    eprintln!(
        "runs: {} in {took:.1?} ({:.1} runs/s); ended: {:?}",
        driven.len(),
        driven.len() as f64 / took.as_secs_f64(),
        checks.states
    );
    eprintln!(
        "run time p50 {:?} p99 {:?} max {:?}",
        percentile(&times, 0.5),
        percentile(&times, 0.99),
        times.last().copied().unwrap_or_default()
    );
    eprintln!(
        "longest stall of a run: p50 {:?} p99 {:?} max {:?}",
        percentile(&stalls, 0.5),
        percentile(&stalls, 0.99),
        stalls.last().copied().unwrap_or_default()
    );
    eprintln!(
        "follower streams: {streams} for {} runs; restart markers: {}; ledger calls: {}; \
         cancels accepted: {cancels}",
        driven.len(),
        checks.markers,
        checks.ledger.values().sum::<usize>()
    );
    for failure in &checks.failures {
        eprintln!("  failed: {failure}");
        let run_id = failure
            .split(' ')
            .nth(1)
            .unwrap_or_default()
            .trim_end_matches(':');
        for p in &mesh.processes {
            for line in p.log_lines(run_id).iter().take(30) {
                eprintln!("    {line}");
            }
        }
    }
    for p in &mesh.processes {
        eprintln!(
            "  {:<16} kill -9: {}  SIGTERM: {}",
            p.name, p.kills, p.terms
        );
    }
}
