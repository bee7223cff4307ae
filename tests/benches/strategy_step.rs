//! What `plan_execute` costs per model call and per plan step, next to the
//! tool loop's: runs on the scripted provider at zero delay, through real
//! gRPC between the orchestrator, the gateway and the tool runner, with the
//! SQLite store, so the time is all mesh (model hops, tool hops, checkpoints,
//! events, the client's stream). Run with `make bench`.
//!
//! Four kinds of run, each a fixed number of model calls (checked from
//! `RunFinished.steps`):
//!
//! - `tool_loop, same calls`: the answer takes K = 2S + 2 model calls, a
//!   chain of K - 1 calculator calls (model → calculator → model → … →
//!   answer);
//! - `tool_loop, same tools`: the same chain, S calculator calls long (S + 1
//!   model calls);
//! - `plan_execute`, chain: a plan of S steps, each depending on the one
//!   before; each step is one executor call asking the calculator, the
//!   calculator, and the executor's answer; no success criteria, so no
//!   validator; then the synthesizer: 1 + 2S + 1 = K model calls;
//! - `plan_execute`, parallel: the same S steps without dependencies, all
//!   worked on at once (`max_parallel_steps = S`).
//!
//! A plan and the first loop make the same number of model calls: their
//! ratio per model call is the one to compare. But that loop also makes
//! K - 1 tool calls and stores a checkpoint after each, where the plan makes
//! S tool calls and stores S + 1 checkpoints (the plan, then each step's
//! end), so the second loop brackets it from the other side: the same tool
//! calls, S + 1 fewer model calls. Per plan step is the plan run's wall
//! time over S. Parallel against chain shows what running steps at once
//! gains or costs when the model takes no time: only the mesh's own work
//! overlaps.
//!
//! The kinds alternate in blocks of `BLOCK` runs, so that noise from the
//! machine (other builds, frequency changes) hits them alike. Size:
//! `AGENTMESH_BENCH_RUNS` runs of each (default 200) after `WARMUP` each,
//! `AGENTMESH_BENCH_PLAN_STEPS` steps per plan (S, default 4, at most 16).
//! The figures are printed, never asserted.

#![expect(
    clippy::unwrap_used,
    clippy::print_stdout,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "a benchmark program"
)]

use std::time::{Duration, Instant};

use agentmesh_orchestrator::{AgentProfile, PlanSettings, Strategy};
use agentmesh_proto::orchestrator::v1::{self as pb, run_event};
use agentmesh_tests::{RunMesh, percentile};

const WARMUP: usize = 10;
const BLOCK: usize = 10;
/// Where the short loop counts from: past anything the long one reaches.
const SHORT_FROM: usize = 100;

/// The kinds of run, in the order their blocks alternate.
const KINDS: [Kind; 4] = [
    Kind::ToolLoop,
    Kind::ToolLoopShort,
    Kind::PlanChain,
    Kind::PlanParallel,
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// As many model calls as a plan.
    ToolLoop,
    /// As many tool calls as a plan.
    ToolLoopShort,
    PlanChain,
    PlanParallel,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Self::ToolLoop => "tool_loop, same calls",
            Self::ToolLoopShort => "tool_loop, same tools",
            Self::PlanChain => "plan_execute, chain",
            Self::PlanParallel => "plan_execute, parallel",
        }
    }

    /// The model calls of one run.
    fn model_calls(self, sizes: &Sizes) -> usize {
        match self {
            Self::ToolLoopShort => sizes.plan_steps + 1,
            Self::ToolLoop | Self::PlanChain | Self::PlanParallel => sizes.loop_calls,
        }
    }

    /// The agent profile and the objective of its runs (the rules tell the
    /// loops and the plans apart by the objective).
    fn request(self) -> pb::RunRequest {
        let (agent, objective) = match self {
            Self::ToolLoop => ("loop", "Count from 0.".to_owned()),
            Self::ToolLoopShort => ("loop", format!("Count from {SHORT_FROM}.")),
            Self::PlanChain => ("plan", "chain".to_owned()),
            Self::PlanParallel => ("plan", "parallel".to_owned()),
        };
        pb::RunRequest {
            objective,
            agent: agent.to_owned(),
            ..Default::default()
        }
    }
}

#[derive(Debug)]
struct Sizes {
    runs: usize,
    plan_steps: usize,
    /// Model calls of a plan run and of the long loop (2S + 2).
    loop_calls: usize,
}

impl Sizes {
    fn from_env() -> Self {
        let number = |name: &str, default: usize| {
            std::env::var(name)
                .ok()
                .and_then(|value| value.parse().ok())
                .unwrap_or(default)
        };
        let runs = number("AGENTMESH_BENCH_RUNS", 200).max(1);
        let plan_steps = number("AGENTMESH_BENCH_PLAN_STEPS", 4).clamp(1, 16);
        Self {
            runs,
            plan_steps,
            loop_calls: 2 * plan_steps + 2,
        }
    }
}

/// The scripted model of all three kinds. Every answer is a few words (text
/// is streamed word by word) and the plans are compact JSON, so the model's
/// side weighs the same in both strategies.
fn rules(sizes: &Sizes) -> String {
    let plan = |chained: bool| {
        let steps: Vec<String> = (1..=sizes.plan_steps)
            .map(|i| {
                let depends_on = if chained && i > 1 {
                    format!(r#""s{}""#, i - 1)
                } else {
                    String::new()
                };
                format!(
                    r#"{{"id":"s{i}","description":"compute {i}*3","depends_on":[{depends_on}],"tools":["calculator"],"success_criteria":""}}"#
                )
            })
            .collect();
        format!(r#"{{"steps":[{}]}}"#, steps.join(","))
    };
    let last = sizes.loop_calls - 1;
    let short_last = SHORT_FROM + sizes.plan_steps;
    format!(
        r#"
pace = "0s"

# plan_execute: the plan by the objective, each step asking the calculator
# once and answering with its result, then the synthesizer.
[[rules]]
role = "planner"
match = 'Objective: chain'
text = '{chain}'

[[rules]]
role = "planner"
match = 'Objective: parallel'
text = '{parallel}'

[[rules]]
role = "executor"
on = "user"
match = 'Your step \(s[0-9]+\): compute (?P<expr>.+)$'
tool_calls = [{{ name = "calculator", arguments = '{{"expression": "${{expr}}"}}' }}]

[[rules]]
role = "executor"
on = "tool"
match = '"result":\s*(?P<result>[-0-9.e+]+)'
text = "Result ${{result}}."

[[rules]]
role = "synthesizer"
text = "Done."

# tool_loop: count up with the calculator, one call per model call, and
# answer once the count reaches {last} (from 0) or {short_last} (from
# {SHORT_FROM}).
[[rules]]
on = "tool"
match = '"result":\s*(?P<n>{last}|{short_last})\s*[,}}]'
text = "Counted to ${{n}}."

[[rules]]
on = "tool"
match = '"result":\s*(?P<n>[0-9]+)\s*[,}}]'
tool_calls = [{{ name = "calculator", arguments = '{{"expression": "${{n}} + 1"}}' }}]

[[rules]]
on = "user"
match = 'Count from (?P<n>[0-9]+)'
tool_calls = [{{ name = "calculator", arguments = '{{"expression": "${{n}} + 1"}}' }}]
"#,
        chain = plan(true),
        parallel = plan(false),
    )
}

/// What one run took and did, from its stream.
#[derive(Debug)]
struct Sample {
    wall: Duration,
    model_calls: i32,
    tool_calls: usize,
    events: usize,
}

async fn one_run(mesh: &RunMesh, request: pb::RunRequest) -> Sample {
    let mut client = mesh.client();
    let started = Instant::now();
    let mut stream = client.run(request).await.unwrap().into_inner();
    let (mut model_calls, mut tool_calls, mut events) = (None, 0, 0);
    while let Some(response) = stream.message().await.unwrap() {
        events += 1;
        match response.event.unwrap().event {
            Some(run_event::Event::ToolCallFinished(_)) => tool_calls += 1,
            Some(run_event::Event::RunFinished(done)) => model_calls = Some(done.steps),
            Some(run_event::Event::RunFailed(failed)) => panic!("a run failed: {failed:?}"),
            _ => {}
        }
    }
    Sample {
        wall: started.elapsed(),
        model_calls: model_calls.unwrap(),
        tool_calls,
        events,
    }
}

/// One kind's samples, summed up.
#[derive(Debug)]
struct Summary {
    median: Duration,
    p99: Duration,
    model_calls: i32,
    tool_calls: usize,
    events: usize,
}

impl Summary {
    fn of(samples: &[Sample]) -> Self {
        let mut walls: Vec<Duration> = samples.iter().map(|sample| sample.wall).collect();
        walls.sort();
        let first = &samples[0];
        // Every run of a kind does the same work; a run that did not is a
        // broken script, not noise.
        for sample in samples {
            assert_eq!(
                (sample.model_calls, sample.tool_calls),
                (first.model_calls, first.tool_calls),
                "runs of one kind did different work"
            );
        }
        let mut events: Vec<usize> = samples.iter().map(|sample| sample.events).collect();
        events.sort_unstable();
        Self {
            median: percentile(&walls, 0.5),
            p99: percentile(&walls, 0.99),
            model_calls: first.model_calls,
            tool_calls: first.tool_calls,
            events: events[events.len() / 2],
        }
    }
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e3
}

fn per(duration: Duration, count: usize) -> Duration {
    duration / u32::try_from(count).unwrap()
}

fn main() {
    let sizes = Sizes::from_env();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        // Logs as a service has them (JSON at info), as in run_step.
        agentmesh_kit::logging::init("bench", &agentmesh_kit::LogConfig::default());
        let rules = rules(&sizes);
        let max_steps = i32::try_from(sizes.loop_calls).unwrap() + 2;
        let mesh = RunMesh::start(Some(&rules), |orchestrator| {
            orchestrator.agents.insert(
                "loop".to_owned(),
                AgentProfile {
                    tools: vec!["calculator".to_owned()],
                    max_steps,
                    ..AgentProfile::default()
                },
            );
            orchestrator.agents.insert(
                "plan".to_owned(),
                AgentProfile {
                    strategy: Strategy::PlanExecute,
                    tools: vec!["calculator".to_owned()],
                    max_steps,
                    plan: PlanSettings {
                        max_plan_steps: sizes.plan_steps,
                        max_parallel_steps: sizes.plan_steps,
                        ..PlanSettings::default()
                    },
                    ..AgentProfile::default()
                },
            );
        })
        .await;

        for kind in KINDS {
            for _ in 0..WARMUP {
                one_run(&mesh, kind.request()).await;
            }
        }
        let mut samples: [Vec<Sample>; 4] = std::array::from_fn(|_| Vec::with_capacity(sizes.runs));
        while samples[0].len() < sizes.runs {
            for (index, kind) in KINDS.into_iter().enumerate() {
                let block = BLOCK.min(sizes.runs - samples[index].len());
                for _ in 0..block {
                    samples[index].push(one_run(&mesh, kind.request()).await);
                }
            }
        }
        mesh.stop().await;
        drop(tokio::task::spawn_blocking(agentmesh_kit::telemetry::shutdown).await);

        let summaries = samples.each_ref().map(|samples| Summary::of(samples));
        for (kind, summary) in KINDS.into_iter().zip(&summaries) {
            assert_eq!(
                usize::try_from(summary.model_calls).unwrap(),
                kind.model_calls(&sizes),
                "{} runs made an unexpected number of model calls",
                kind.name()
            );
        }
        let s = sizes.plan_steps;
        println!(
            "strategy overhead per step: {} runs of each kind in interleaved blocks of {BLOCK} \
             (scripted provider, zero delay, SQLite, in-process gRPC)",
            sizes.runs
        );
        println!(
            "  sizes: plans of S = {s} steps (executor call, calculator call, executor answer), \
             with the planner and the synthesizer K = {k} model calls; tool loops of K = {k} \
             and S + 1 = {short} model calls ({t} and {s} calculator calls)",
            k = sizes.loop_calls,
            t = sizes.loop_calls - 1,
            short = s + 1,
        );
        println!(
            "  {:<24} {:>5} {:>5} {:>6}   {:>17}   {:>17}   {:>17}",
            "", "model", "tool", "events", "per run (ms)", "per model call", "per plan step"
        );
        println!(
            "  {:<24} {:>5} {:>5} {:>6}   {:>8} {:>8}   {:>8} {:>8}   {:>8} {:>8}",
            "kind", "calls", "calls", "", "median", "p99", "median", "p99", "median", "p99"
        );
        for (kind, summary) in KINDS.into_iter().zip(&summaries) {
            let calls = usize::try_from(summary.model_calls).unwrap();
            let plan_step = if matches!(kind, Kind::ToolLoop | Kind::ToolLoopShort) {
                format!("{:>8} {:>8}", "-", "-")
            } else {
                format!(
                    "{:>8.3} {:>8.3}",
                    ms(per(summary.median, s)),
                    ms(per(summary.p99, s))
                )
            };
            println!(
                "  {:<24} {:>5} {:>5} {:>6}   {:>8.3} {:>8.3}   {:>8.3} {:>8.3}   {plan_step}",
                kind.name(),
                summary.model_calls,
                summary.tool_calls,
                summary.events,
                ms(summary.median),
                ms(summary.p99),
                ms(per(summary.median, calls)),
                ms(per(summary.p99, calls)),
            );
        }
        // Equal model calls: the ratio per model call is the ratio per run.
        let ratio = |a: Duration, b: Duration| a.as_secs_f64() / b.as_secs_f64();
        let [tool_loop, short, chain, parallel] = &summaries;
        println!(
            "  plan_execute / tool_loop per model call: chain {:.2}x (p99 {:.2}x), \
             parallel {:.2}x (p99 {:.2}x)",
            ratio(chain.median, tool_loop.median),
            ratio(chain.p99, tool_loop.p99),
            ratio(parallel.median, tool_loop.median),
            ratio(parallel.p99, tool_loop.p99),
        );
        // What the plan adds over the loop with the same tool calls: S + 1
        // more model calls (and one more checkpoint).
        let extra_calls = f64::from(u32::try_from(s + 1).unwrap());
        let extra = |plan: Duration| (ms(plan) - ms(short.median)) / extra_calls;
        println!(
            "  plan_execute over tool_loop with the same tools, per extra model call: \
             chain {:.3} ms, parallel {:.3} ms (medians)",
            extra(chain.median),
            extra(parallel.median),
        );
        println!(
            "  parallel / chain per run: {:.2}x (p99 {:.2}x)",
            ratio(parallel.median, chain.median),
            ratio(parallel.p99, chain.p99),
        );
    });
}
