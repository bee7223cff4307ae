//! What the mesh itself costs per agent step: runs of "What is 2+2?" on the
//! scripted provider at zero delay (model → calculator → model → answer, two
//! steps), through real gRPC between the orchestrator, the gateway and the
//! tool runner, with the SQLite store. The time is all mesh: model hop, tool
//! hop, checkpoints, events and the client's stream. Run with `make bench`.

#![expect(
    clippy::unwrap_used,
    clippy::print_stdout,
    reason = "a benchmark program"
)]

use std::time::{Duration, Instant};

use agentmesh_proto::orchestrator::v1::{self as pb, run_event};
use agentmesh_tests::{RunMesh, percentile};

const WARMUP: usize = 20;
const RUNS: usize = 300;

const FAST_RULES: &str = r#"
pace = "0s"
[[rules]]
on = "user"
match = '(?i)what is (?P<expr>.+?)\?'
tool_calls = [{ name = "calculator", arguments = '{"expression": "${expr}"}' }]
[[rules]]
on = "tool"
match = '"result":\s*(?P<result>[-0-9.e+]+)'
text = "The answer is ${result}."
"#;

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        // Logs and traces as a service has them: JSON logs at info, and
        // OpenTelemetry export when OTEL_EXPORTER_OTLP_ENDPOINT is set (run
        // the bench with and without it to see what traces cost).
        agentmesh_kit::logging::init("bench", &agentmesh_kit::LogConfig::default());
        let traces = if agentmesh_kit::telemetry::enabled() {
            format!(
                "traces exported to {}",
                std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT").unwrap_or_default()
            )
        } else {
            "traces off".to_owned()
        };
        let mesh = RunMesh::start(Some(FAST_RULES), |_| {}).await;
        let mut client = mesh.client();
        let mut per_run = Vec::with_capacity(RUNS);
        let mut first_token = Vec::with_capacity(RUNS);
        for i in 0..WARMUP + RUNS {
            let started = Instant::now();
            let mut stream = client
                .run(pb::RunRequest { objective: "What is 2+2?".into(), ..Default::default() })
                .await
                .unwrap()
                .into_inner();
            let mut steps = 0;
            let mut token_at = None;
            while let Some(response) = stream.message().await.unwrap() {
                match response.event.unwrap().event {
                    Some(run_event::Event::TokenDelta(_)) if token_at.is_none() => token_at = Some(started.elapsed()),
                    Some(run_event::Event::RunFinished(done)) => steps = done.steps,
                    _ => {}
                }
            }
            assert_eq!(steps, 2);
            if i >= WARMUP {
                per_run.push(started.elapsed());
                first_token.push(token_at.unwrap());
            }
        }
        per_run.sort();
        first_token.sort();
        let step = |d: Duration| d / 2;
        println!("agent runs through the mesh: {RUNS} runs of 2 steps each (scripted provider, zero delay, SQLite; {traces})");
        println!(
            "  per run:  median {:>8.3} ms   p99 {:>8.3} ms",
            percentile(&per_run, 0.5).as_secs_f64() * 1e3,
            percentile(&per_run, 0.99).as_secs_f64() * 1e3
        );
        println!(
            "  per step: median {:>8.3} ms   p99 {:>8.3} ms",
            step(percentile(&per_run, 0.5)).as_secs_f64() * 1e3,
            step(percentile(&per_run, 0.99)).as_secs_f64() * 1e3
        );
        println!(
            "  run start to first token (2 model calls, 1 tool call, 2 checkpoints): median {:.3} ms   p99 {:.3} ms",
            percentile(&first_token, 0.5).as_secs_f64() * 1e3,
            percentile(&first_token, 0.99).as_secs_f64() * 1e3
        );
        mesh.stop().await;
        drop(tokio::task::spawn_blocking(agentmesh_kit::telemetry::shutdown).await);
    });
}
