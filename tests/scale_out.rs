//! Orchestrator replicas on one PostgreSQL database, as real processes on
//! loopback (the gateway with its scripted model, the tool runner with a
//! slow command tool, two or three orchestrators advertising their own
//! addresses): a follower on any replica is served live, a cancel on any
//! replica stops the run at once, a replica shutting down hands its runs
//! over at their next checkpoint, and a killed replica's run resumes with
//! the numbers it abandoned named by the restart marker.

#![expect(clippy::unwrap_used, reason = "tests fail loudly")]

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime};

#[path = "replica_support.rs"]
#[expect(dead_code, reason = "the chaos suite uses more of it than this file")]
mod replica_support;
use replica_support::{Received, Rejoins, follow, follow_anywhere, text};

use agentmesh_proto::orchestrator::v1::{
    self as pb, orchestrator_service_client::OrchestratorServiceClient, run_event,
};
use agentmesh_tests::{
    RunningBinary, channel, free_port, http_get, percentile, wait_serving, within,
};
use tonic::transport::Channel;

/// A one-step answer streamed word by word (40 ms a word, 20 words), and a
/// six-step run: five calls of a tool that takes 300 ms, then an answer.
const RULES: &str = r#"
pace = "0s"
[[rules]]
on = "user"
match = '(?i)^slow'
pace = "40ms"
text = "one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen seventeen eighteen nineteen twenty"
[[rules]]
on = "user"
match = '(?i)^chain'
tool_calls = [{ name = "pause", arguments = '{"n": "0"}' }]
[[rules]]
on = "tool"
match = '"result":\s*(?P<n>[0-4])\b'
tool_calls = [{ name = "pause", arguments = '{"n": "${n}"}' }]
[[rules]]
on = "tool"
match = '"result":\s*5\b'
pace = "20ms"
text = "done after five pauses"
[[rules]]
text = "I only know how to be slow."
"#;

/// The slow tool: waits `PAUSE` seconds, answers its argument plus one.
const PAUSE: &str = "import json,os,sys,time; a=json.load(sys.stdin); \
     time.sleep(float(os.environ['PAUSE'])); print(json.dumps({'result': int(a['n'])+1}))";

const SLOW_ANSWER: &str = "one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen seventeen eighteen nineteen twenty";

/// The services the orchestrators share, and the database.
struct Cluster {
    /// Kept: the server stops with its last user.
    _server: std::sync::Arc<agentmesh_testkit::postgres::PostgresServer>,
    dir: tempfile::TempDir,
    database: String,
    gateway: RunningBinary,
    tools: RunningBinary,
}

impl Cluster {
    /// The shared services; the slow tool waits `pause` seconds.
    async fn start(database: &str, pause: &str) -> Self {
        let server = agentmesh_testkit::postgres::shared().await;
        let database = server.create_database(database).await;
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("rules.toml"), RULES).unwrap();
        let gateway_config = dir.path().join("gateway.toml");
        std::fs::write(
            &gateway_config,
            format!(
                "[llm_gateway.audit]\nurl = \"\"\n[llm_gateway.providers.scripted]\nrules_file = {:?}\n\
                 [llm_gateway.rate_limits.tenant]\nrequests_per_minute = 100000\n",
                dir.path().join("rules.toml").display().to_string()
            ),
        )
        .unwrap();
        let gateway = RunningBinary::start(
            "agentmesh-llm-gateway",
            &["--config", gateway_config.to_str().unwrap()],
            &[],
            dir.path(),
        )
        .await;
        let tools_config = dir.path().join("tools.toml");
        std::fs::write(
            &tools_config,
            format!(
                "[tool_runner]\nworkspaces_dir = \"workspaces\"\n[tool_runner.audit]\nurl = \"\"\n\
                 [tool_runner.commands.pause]\ndescription = \"waits, then counts one up\"\n\
                 command = [\"python3\", \"-c\", {}]\nsandbox = \"off\"\nidempotent = true\n\
                 env = {{ PAUSE = {pause:?} }}\nmax_concurrency = 64\nmax_queued = 64\n\
                 parameters_json = '{{\"type\":\"object\",\"properties\":{{\"n\":{{\"type\":\"string\"}}}},\"required\":[\"n\"]}}'\n",
                toml::Value::String(PAUSE.to_owned())
            ),
        )
        .unwrap();
        let tools = RunningBinary::start(
            "agentmesh-tool-runner",
            &["--config", tools_config.to_str().unwrap()],
            &[],
            dir.path(),
        )
        .await;
        for addr in [gateway.grpc, tools.grpc] {
            wait_serving(channel(addr), "").await;
        }
        Self {
            _server: server,
            dir,
            database,
            gateway,
            tools,
        }
    }

    /// An orchestrator replica advertising its own address, with claims of
    /// `lease` (short leases make a killed replica's runs resume quickly).
    async fn replica(&self, lease: &str) -> RunningBinary {
        let port = free_port().to_string();
        let own = format!("http://127.0.0.1:{port}");
        let gateway = format!("http://{}", self.gateway.grpc);
        let tools = format!("http://{}", self.tools.grpc);
        // Every tool (the slow one too) offered to the model.
        let config = self.dir.path().join("orchestrator.toml");
        std::fs::write(&config, "[orchestrator.agents.default]\ntools = [\"*\"]\n").unwrap();
        let replica = RunningBinary::start(
            "agentmesh-orchestrator",
            &["--port", &port, "--config", config.to_str().unwrap()],
            &[
                ("AGENTMESH_ORCHESTRATOR__STORAGE__URL", &self.database),
                ("AGENTMESH_ORCHESTRATOR__LLM_GATEWAY_URL", &gateway),
                ("AGENTMESH_ORCHESTRATOR__TOOL_RUNNER_URL", &tools),
                ("AGENTMESH_ORCHESTRATOR__ADVERTISE_URL", &own),
                ("AGENTMESH_ORCHESTRATOR__RUN_LEASE", lease),
                ("AGENTMESH_ORCHESTRATOR__AUDIT__URL", ""),
                ("AGENTMESH_ORCHESTRATOR__SERVER__DRAIN_DELAY", "100ms"),
                // Long enough for a step in flight on a loaded machine to
                // reach its checkpoint (runs are released mid-step only
                // when the grace period is nearly over).
                ("AGENTMESH_ORCHESTRATOR__SERVER__GRACE_PERIOD", "30s"),
                // One tenant's 50 runs all run at once on any replica.
                (
                    "AGENTMESH_ORCHESTRATOR__MAX_CONCURRENT_RUNS_PER_TENANT",
                    "64",
                ),
            ],
            self.dir.path(),
        )
        .await;
        let serving = tokio::time::timeout(
            Duration::from_secs(20),
            wait_serving(channel(replica.grpc), ""),
        )
        .await;
        assert!(
            serving.is_ok(),
            "the replica is not serving: {:#?}",
            replica.log.lock().unwrap()
        );
        replica
    }
}

fn client(replica: &RunningBinary) -> OrchestratorServiceClient<Channel> {
    OrchestratorServiceClient::new(channel(replica.grpc))
}

async fn start_run(replica: &RunningBinary, objective: &str) -> String {
    client(replica)
        .start_run(pb::StartRunRequest {
            objective: objective.into(),
            ..pb::StartRunRequest::default()
        })
        .await
        .unwrap()
        .into_inner()
        .run_id
}

fn is_token(event: &pb::RunEvent) -> bool {
    matches!(event.event, Some(run_event::Event::TokenDelta(_)))
}

/// A metric's value on `replica`'s admin server (0 when absent).
async fn metric(replica: &RunningBinary, name: &str) -> f64 {
    let (_, body) = http_get(replica.admin, "/metrics").await;
    body.lines()
        .filter(|line| {
            line.starts_with(&format!("{name}{{")) || line.starts_with(&format!("{name} "))
        })
        .find_map(|line| line.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0)
}

async fn state_of(replica: &RunningBinary, run_id: &str) -> pb::Run {
    client(replica)
        .get_run(pb::GetRunRequest {
            run_id: run_id.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .run
        .unwrap()
}

#[tokio::test]
async fn a_follower_on_another_replica_gets_the_tokens_live() {
    let cluster = Cluster::start("scale_out_follow", "0.3").await;
    let driver = cluster.replica("30s").await;
    let other = cluster.replica("30s").await;
    let run_id = start_run(&driver, "slow answer").await;
    let (here, there) = tokio::join!(
        follow(driver.grpc, run_id.clone(), 0),
        follow(other.grpc, run_id.clone(), 0)
    );
    let events = |received: &[Received]| -> Vec<pb::RunEvent> {
        received.iter().map(|r| r.event.clone()).collect()
    };
    assert_eq!(
        events(&there),
        events(&here),
        "the same events, in the same order"
    );
    assert_eq!(text(&events(&there)), SLOW_ANSWER);
    // Live: the tokens reached the other replica's follower as they came,
    // not with the stored end (20 words at 40 ms take about 800 ms).
    let first_token = there.iter().find(|r| is_token(&r.event)).unwrap().at;
    let end = there.last().unwrap().at;
    assert!(
        end.duration_since(first_token) > Duration::from_millis(400),
        "the tokens came in one go at the end: {:?}",
        end.duration_since(first_token)
    );
    let mut lags: Vec<Duration> = there
        .iter()
        .filter(|r| is_token(&r.event))
        .map(|r| {
            let time = r.event.time.unwrap();
            let made = SystemTime::UNIX_EPOCH
                + Duration::new(
                    time.seconds.try_into().unwrap(),
                    time.nanos.try_into().unwrap(),
                );
            r.wall.duration_since(made).unwrap_or_default()
        })
        .collect();
    lags.sort();
    eprintln!(
        "token lag to a follower on the other replica over {} tokens: p50 {:?}, p99 {:?}",
        lags.len(),
        percentile(&lags, 0.5),
        percentile(&lags, 0.99)
    );
    assert!(metric(&other, "agentmesh_run_follows_forwarded_total").await >= 1.0);
}

#[tokio::test]
async fn a_cancel_on_another_replica_stops_the_run_at_once() {
    let cluster = Cluster::start("scale_out_cancel", "0.3").await;
    let driver = cluster.replica("30s").await;
    let other = cluster.replica("30s").await;
    let run_id = start_run(&driver, "slow answer").await;
    let follower = tokio::spawn(follow(driver.grpc, run_id.clone(), 0));
    // Wait for the answer to be flowing.
    within("the run to start", Duration::from_secs(10), async {
        while state_of(&driver, &run_id).await.state() != pb::RunState::Running {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let asked = Instant::now();
    let cancelled = within(
        "the cancel",
        Duration::from_secs(5),
        client(&other).cancel_run(pb::CancelRunRequest {
            run_id: run_id.clone(),
            reason: "stop from elsewhere".into(),
        }),
    )
    .await
    .unwrap()
    .into_inner()
    .run
    .unwrap();
    eprintln!(
        "CancelRun on the other replica returned after {:?}",
        asked.elapsed()
    );
    assert_eq!(cancelled.state(), pb::RunState::Cancelled);
    let events: Vec<pb::RunEvent> = follower
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.event)
        .collect();
    let Some(run_event::Event::RunCancelled(last)) = &events.last().unwrap().event else {
        panic!("the stream did not end with run_cancelled");
    };
    assert_eq!(last.reason, "stop from elsewhere");
    assert!(
        !text(&events).contains("twenty"),
        "the answer went on after the cancel"
    );
}

/// Checks a follower's events (see [`replica_support::check_events`]);
/// returns the longest silence between two events.
fn check_events(received: &[Received]) -> Duration {
    let checked = replica_support::check_events(received);
    assert!(checked.is_ok(), "{checked:?}: {received:#?}");
    checked.unwrap().longest_silence
}

#[tokio::test]
async fn a_replica_shutting_down_hands_its_runs_over_at_their_next_checkpoint() {
    let cluster = Cluster::start("scale_out_handover", "0.3").await;
    // A 30 s lease: a run that waited for it would stall far longer than
    // one step.
    let mut leaving = cluster.replica("30s").await;
    let staying = cluster.replica("30s").await;
    let mut runs = Vec::new();
    for _ in 0..6 {
        runs.push(start_run(&leaving, "chain of pauses").await);
    }
    // Followers on the staying replica, from the start.
    let followers: Vec<_> = runs
        .iter()
        .map(|run_id| tokio::spawn(follow(staying.grpc, run_id.clone(), 0)))
        .collect();
    tokio::time::sleep(Duration::from_millis(700)).await;
    let signalled = Instant::now();
    leaving.signal("TERM").await;
    let (exit, log) = leaving.exit_and_log(Duration::from_secs(20)).await;
    assert!(exit.success(), "{log}");
    eprintln!(
        "the leaving replica exited {:?} after SIGTERM",
        signalled.elapsed()
    );
    let mut longest = Duration::ZERO;
    for (run_id, follower) in runs.iter().zip(followers) {
        let received = within("a run to end", Duration::from_secs(30), follower)
            .await
            .unwrap();
        longest = longest.max(check_events(&received));
        let run = state_of(&staying, run_id).await;
        assert_eq!(run.state(), pb::RunState::Succeeded);
        assert_eq!(run.output, "done after five pauses", "{received:#?}");
    }
    eprintln!("longest silence of a run across the hand-over: {longest:?}");
    // One step (a 300 ms tool and the model) + 1 s.
    assert!(
        longest < Duration::from_millis(1_800),
        "a run stalled {longest:?}: {log}"
    );
    assert!(log.contains("handed the run over"), "{log}");
    assert!(metric(&staying, "agentmesh_runs_resumed_total").await >= 1.0);
}

#[tokio::test]
async fn a_killed_replicas_run_resumes_and_the_marker_names_what_it_abandoned() {
    let cluster = Cluster::start("scale_out_kill", "0.3").await;
    let mut doomed = cluster.replica("2s").await;
    let survivor = cluster.replica("2s").await;
    let run_id = start_run(&doomed, "slow answer").await;
    // A live follower on the survivor sees tokens the doomed replica never
    // stores.
    let live = tokio::spawn(follow(survivor.grpc, run_id.clone(), 0));
    tokio::time::sleep(Duration::from_millis(400)).await;
    doomed.signal("KILL").await;
    let _ = doomed.exit_and_log(Duration::from_secs(5)).await;
    let live = within("the resumed run", Duration::from_secs(30), live)
        .await
        .unwrap();
    check_events(&live);
    let marker = live
        .iter()
        .find_map(|r| match &r.event.event {
            Some(run_event::Event::Progress(p)) if p.abandoned_last_sequence > 0 => Some(p.clone()),
            _ => None,
        })
        .expect("a restart marker naming the abandoned numbers");
    assert!(marker.abandoned_first_sequence <= marker.abandoned_last_sequence);
    // A client resuming anywhere, inside the abandoned numbers too, gets a
    // well-defined answer: the stored log has a gap, explained by the marker.
    let stored = follow(survivor.grpc, run_id.clone(), 0).await;
    check_events(&stored);
    let inside = follow(survivor.grpc, run_id, marker.abandoned_first_sequence).await;
    let first = &inside.first().unwrap().event;
    assert_eq!(first.sequence, marker.abandoned_last_sequence + 1);
    let sequences: BTreeMap<i32, ()> = stored.iter().map(|r| (r.event.sequence, ())).collect();
    assert!(
        (marker.abandoned_first_sequence..=marker.abandoned_last_sequence)
            .all(|sequence| !sequences.contains_key(&sequence)),
        "an abandoned number was stored"
    );
}

#[tokio::test]
async fn a_rolling_restart_of_three_replicas_under_load_loses_and_stalls_no_run() {
    const RUNS: usize = 50;
    // Six steps of 1.5 s: every run is in flight through the whole rollout.
    let cluster = Cluster::start("scale_out_rolling", "1.5").await;
    let mut replicas = Vec::new();
    for _ in 0..3 {
        replicas.push(cluster.replica("30s").await);
    }
    let live = std::sync::Arc::new(std::sync::Mutex::new(
        replicas.iter().map(|r| r.grpc).collect::<Vec<_>>(),
    ));
    let mut runs = Vec::new();
    for i in 0..RUNS {
        runs.push(start_run(&replicas[i % 3], "chain of pauses").await);
    }
    let followers: Vec<_> = runs
        .iter()
        .enumerate()
        .map(|(i, run_id)| {
            let follower = follow_anywhere(
                live.clone(),
                run_id.clone(),
                i as u64,
                Rejoins::NEVER,
                Duration::from_secs(120),
            );
            tokio::spawn(async move { follower.await.received })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    let rollout = Instant::now();
    let mut handed_over = 0;
    for i in 0..3 {
        let mut leaving = replicas.remove(0);
        live.lock().unwrap().retain(|addr| *addr != leaving.grpc);
        let signalled = Instant::now();
        leaving.signal("TERM").await;
        let (exit, log) = leaving.exit_and_log(Duration::from_secs(20)).await;
        assert!(exit.success(), "{log}");
        handed_over += log.matches("handed the run over").count();
        eprintln!("replica {i} exited {:?} after SIGTERM", signalled.elapsed());
        let replacement = cluster.replica("30s").await;
        live.lock().unwrap().push(replacement.grpc);
        replicas.push(replacement);
    }
    eprintln!(
        "rollout of 3 replicas took {:?}; {handed_over} hand-overs",
        rollout.elapsed()
    );
    let mut longest = Duration::ZERO;
    let mut worst_handover = Duration::ZERO;
    for follower in followers {
        let received = within("a run to end", Duration::from_secs(60), follower)
            .await
            .unwrap();
        let silence = check_events(&received);
        // A hand-over shows as the silence before a restart marker; a step
        // is the longest other silence of the run (this machine may be
        // loaded: a step takes what it takes).
        let (mut handover, mut step) = (Duration::ZERO, Duration::ZERO);
        for pair in received.windows(2) {
            let gap = pair[1].at.duration_since(pair[0].at);
            match &pair[1].event.event {
                Some(run_event::Event::Progress(p)) if p.step_restarted => {
                    handover = handover.max(gap);
                }
                _ => step = step.max(gap),
            }
        }
        assert!(
            handover < step + Duration::from_secs(1),
            "a hand-over stalled run {} for {handover:?} (its longest step {step:?})",
            received[0].event.run_id
        );
        worst_handover = worst_handover.max(handover);
        longest = longest.max(silence);
    }
    for run_id in &runs {
        let run = state_of(&replicas[0], run_id).await;
        assert_eq!(run.state(), pb::RunState::Succeeded, "{run_id}");
        assert_eq!(run.output, "done after five pauses");
    }
    eprintln!(
        "{RUNS} runs, longest silence of a run: {longest:?}, longest across a hand-over: \
         {worst_handover:?}"
    );
    assert!(handed_over > 0, "no run was in flight at a SIGTERM");
}
