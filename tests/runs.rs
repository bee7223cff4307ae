//! Agent runs end to end, in one process: the orchestrator, the LLM gateway
//! (its scripted provider) and the tool runner, each on its own loopback
//! port, talking real gRPC; the orchestrator's store on SQLite or on a real
//! PostgreSQL server.

#![expect(clippy::unwrap_used, reason = "tests fail loudly")]

use std::time::{Duration, Instant};

use agentmesh_proto::orchestrator::v1::{
    self as pb, orchestrator_service_client::OrchestratorServiceClient, run_event,
};
use agentmesh_tests::{RunMesh as Mesh, within};
use tonic::Code;
use tonic_types::StatusExt as _;

/// Rules with a slow answer, for cancels, resumes and heartbeats.
const SLOW_RULES: &str = r#"
pace = "0s"
[[rules]]
on = "user"
match = '(?i)^slow'
pace = "150ms"
text = "one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen seventeen eighteen nineteen twenty"
[[rules]]
on = "user"
match = '(?i)what is (?P<expr>.+?)\?'
tool_calls = [{ name = "calculator", arguments = '{"expression": "${expr}"}' }]
[[rules]]
on = "tool"
match = '"result":\s*(?P<result>[-0-9.e+]+)'
text = "The answer is ${result}."
[[rules]]
text = "I only know arithmetic."
"#;

fn run_request(objective: &str) -> pb::RunRequest {
    pb::RunRequest {
        objective: objective.to_owned(),
        ..Default::default()
    }
}

/// Reads a stream of events to its end.
async fn collect<S>(mut stream: S) -> Vec<pb::RunEvent>
where
    S: futures::Stream<Item = Result<pb::RunEvent, tonic::Status>> + Unpin,
{
    use futures::StreamExt as _;
    let mut events = Vec::new();
    while let Some(event) = within("the next event", Duration::from_secs(20), stream.next()).await {
        events.push(event.unwrap());
    }
    events
}

fn run_events(
    response: tonic::Response<tonic::Streaming<pb::RunResponse>>,
) -> impl futures::Stream<Item = Result<pb::RunEvent, tonic::Status>> + Unpin {
    use futures::StreamExt as _;
    response.into_inner().map(|r| r.map(|r| r.event.unwrap()))
}

fn stream_events(
    response: tonic::Response<tonic::Streaming<pb::StreamRunResponse>>,
) -> impl futures::Stream<Item = Result<pb::RunEvent, tonic::Status>> + Unpin {
    use futures::StreamExt as _;
    response.into_inner().map(|r| r.map(|r| r.event.unwrap()))
}

fn without_heartbeats(events: Vec<pb::RunEvent>) -> Vec<pb::RunEvent> {
    events
        .into_iter()
        .filter(|e| !matches!(e.event, Some(run_event::Event::Heartbeat(_))))
        .collect()
}

fn sequences(events: &[pb::RunEvent]) -> Vec<i32> {
    events.iter().map(|e| e.sequence).collect()
}

fn answer_text(events: &[pb::RunEvent]) -> String {
    events
        .iter()
        .filter_map(|e| match &e.event {
            Some(run_event::Event::TokenDelta(d)) => Some(d.text.as_str()),
            _ => None,
        })
        .collect()
}

async fn start_run(
    client: &mut OrchestratorServiceClient<tonic::transport::Channel>,
    objective: &str,
) -> String {
    client
        .start_run(pb::StartRunRequest {
            objective: objective.to_owned(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .run_id
}

#[tokio::test]
async fn a_run_calls_the_calculator_and_streams_the_answer_in_sequence() {
    let mesh = Mesh::start(None, |_| {}).await;
    let mut client = mesh.client();
    let events = collect(run_events(
        client
            .run(run_request("What is 17 * 23 + sqrt(144)?"))
            .await
            .unwrap(),
    ))
    .await;
    let events = without_heartbeats(events);
    let expected: Vec<i32> = (1..=i32::try_from(events.len()).unwrap()).collect();
    assert_eq!(sequences(&events), expected, "{events:#?}");
    assert!(matches!(
        events[0].event,
        Some(run_event::Event::RunStarted(_))
    ));
    let started = events.iter().find_map(|e| match &e.event {
        Some(run_event::Event::ToolCallStarted(c)) => Some(c.clone()),
        _ => None,
    });
    let started = started.expect("a tool call");
    assert_eq!(started.tool, "calculator");
    assert_eq!(
        started.arguments_json,
        r#"{"expression": "17 * 23 + sqrt(144)"}"#
    );
    let finished = events
        .iter()
        .find_map(|e| match &e.event {
            Some(run_event::Event::ToolCallFinished(c)) => Some(c.clone()),
            _ => None,
        })
        .expect("a tool result");
    assert!(!finished.is_error, "{finished:?}");
    assert_eq!(finished.output_json, r#"{"result":403}"#);
    assert!(
        events
            .iter()
            .any(|e| matches!(e.event, Some(run_event::Event::Progress(_))))
    );
    assert!(
        answer_text(&events).contains("403"),
        "{}",
        answer_text(&events)
    );
    let Some(run_event::Event::RunFinished(done)) = &events.last().unwrap().event else {
        panic!("the last event is not run_finished: {events:#?}");
    };
    assert!(done.output.contains("403"));
    assert_eq!(done.steps, 2);

    let run = client
        .get_run(pb::GetRunRequest {
            run_id: events[0].run_id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .run
        .unwrap();
    assert_eq!(run.state(), pb::RunState::Succeeded);
    assert_eq!(run.tool_calls, 1);
    assert_eq!(run.last_sequence, *sequences(&events).last().unwrap());
    assert!(run.usage.unwrap().output_tokens > 0);

    // The stored log replays exactly what was streamed.
    let replay = collect(stream_events(
        client
            .stream_run(pb::StreamRunRequest {
                run_id: run.run_id.clone(),
                after_sequence: 0,
                ..Default::default()
            })
            .await
            .unwrap(),
    ))
    .await;
    assert_eq!(replay, events);
    mesh.stop().await;
}

#[tokio::test]
async fn a_stream_resumed_after_a_disconnect_gets_every_event_exactly_once() {
    use futures::StreamExt as _;
    let mesh = Mesh::start(Some(SLOW_RULES), |_| {}).await;
    let mut client = mesh.client();
    let run_id = start_run(&mut client, "slow story please").await;

    // Read a few events, then go away mid-answer.
    let mut first = stream_events(
        client
            .stream_run(pb::StreamRunRequest {
                run_id: run_id.clone(),
                after_sequence: 0,
                ..Default::default()
            })
            .await
            .unwrap(),
    );
    let mut seen = Vec::new();
    while seen.len() < 6 {
        let event = within("an event", Duration::from_secs(10), first.next())
            .await
            .unwrap()
            .unwrap();
        if event.sequence > 0 {
            seen.push(event);
        }
    }
    drop(first);

    let rest = without_heartbeats(
        collect(stream_events(
            client
                .stream_run(pb::StreamRunRequest {
                    run_id: run_id.clone(),
                    after_sequence: seen.last().unwrap().sequence,
                    ..Default::default()
                })
                .await
                .unwrap(),
        ))
        .await,
    );
    let mut all = seen.clone();
    all.extend(rest);
    let expected: Vec<i32> = (1..=i32::try_from(all.len()).unwrap()).collect();
    assert_eq!(sequences(&all), expected);
    assert!(matches!(
        all.last().unwrap().event,
        Some(run_event::Event::RunFinished(_))
    ));
    assert!(answer_text(&all).contains("twenty"));

    // And the whole log from the store is the same.
    let replay = collect(stream_events(
        client
            .stream_run(pb::StreamRunRequest {
                run_id,
                after_sequence: 0,
                ..Default::default()
            })
            .await
            .unwrap(),
    ))
    .await;
    assert_eq!(replay, all);
    mesh.stop().await;
}

#[tokio::test]
async fn cancel_stops_a_slow_stream_and_the_stream_says_so() {
    use futures::StreamExt as _;
    let mesh = Mesh::start(Some(SLOW_RULES), |_| {}).await;
    let mut client = mesh.client();
    let mut stream = run_events(client.run(run_request("slow answer")).await.unwrap());
    let mut run_id = String::new();
    // Wait for the answer to be flowing.
    loop {
        let event = within("a token", Duration::from_secs(10), stream.next())
            .await
            .unwrap()
            .unwrap();
        run_id.clone_from(&event.run_id);
        if matches!(event.event, Some(run_event::Event::TokenDelta(_))) {
            break;
        }
    }
    let asked = Instant::now();
    let cancelled = within(
        "the cancel",
        Duration::from_secs(10),
        client.cancel_run(pb::CancelRunRequest {
            run_id: run_id.clone(),
            reason: "test says stop".into(),
        }),
    )
    .await
    .unwrap()
    .into_inner()
    .run
    .unwrap();
    eprintln!("CancelRun returned after {:?}", asked.elapsed());
    assert_eq!(cancelled.state(), pb::RunState::Cancelled);
    let rest = collect(stream).await;
    let Some(run_event::Event::RunCancelled(last)) = &rest.last().unwrap().event else {
        panic!("the stream did not end with run_cancelled: {rest:#?}");
    };
    assert_eq!(last.reason, "test says stop");
    assert!(
        !answer_text(&rest).contains("twenty"),
        "the answer went on after the cancel"
    );

    let again = client
        .cancel_run(pb::CancelRunRequest {
            run_id,
            reason: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(again.code(), Code::FailedPrecondition, "{again:?}");
    assert!(again.message().contains("RUN_STATE_CANCELLED"), "{again:?}");
    mesh.stop().await;
}

#[tokio::test]
async fn idle_streams_get_heartbeats() {
    use futures::StreamExt as _;
    let mesh = Mesh::start(Some(SLOW_RULES), |config| {
        config.heartbeat_interval = Duration::from_millis(40);
    })
    .await;
    let mut client = mesh.client();
    let mut stream = run_events(client.run(run_request("slow please")).await.unwrap());
    let heartbeat = loop {
        let event = within("a heartbeat", Duration::from_secs(10), stream.next())
            .await
            .unwrap()
            .unwrap();
        if let Some(run_event::Event::Heartbeat(beat)) = event.event {
            assert_eq!(event.sequence, 0);
            break beat;
        }
    };
    assert!(heartbeat.last_sequence >= 1);
    assert_eq!(heartbeat.state(), pb::RunState::Running);
    mesh.stop().await;
}

fn field_violations(status: &tonic::Status) -> Vec<String> {
    status
        .get_details_bad_request()
        .map(|bad| bad.field_violations.into_iter().map(|v| v.field).collect())
        .unwrap_or_default()
}

#[tokio::test]
async fn bad_input_gets_a_clear_status_and_changes_nothing() {
    let mesh = Mesh::start(None, |config| config.max_objective_bytes = 100).await;
    let mut client = mesh.client();

    let empty = client
        .start_run(pb::StartRunRequest::default())
        .await
        .unwrap_err();
    assert_eq!(empty.code(), Code::InvalidArgument);
    assert_eq!(field_violations(&empty), ["objective"]);

    let big = client.run(run_request(&"x".repeat(101))).await.unwrap_err();
    assert_eq!(big.code(), Code::InvalidArgument);
    assert_eq!(field_violations(&big), ["objective"]);
    assert!(big.message().contains("100"), "{big:?}");

    let limits = client
        .start_run(pb::StartRunRequest {
            objective: "hi".into(),
            limits: Some(pb::RunLimits {
                max_steps: -1,
                max_output_tokens: -5,
                max_tokens: -3,
                max_cost_usd: -1.0,
                timeout: None,
            }),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        field_violations(&limits),
        [
            "limits.max_steps",
            "limits.max_output_tokens",
            "limits.max_cost_usd",
            "limits.max_tokens"
        ]
    );

    let agent = client
        .start_run(pb::StartRunRequest {
            objective: "hi".into(),
            agent: "nobody".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(agent.code(), Code::NotFound);
    assert!(agent.message().contains("nobody"));

    let session = client
        .start_run(pb::StartRunRequest {
            objective: "hi".into(),
            session_id: "nope".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(session.code(), Code::NotFound);

    for status in [
        client
            .get_run(pb::GetRunRequest {
                run_id: "no-such-run".into(),
            })
            .await
            .unwrap_err(),
        client
            .stream_run(pb::StreamRunRequest {
                run_id: "no-such-run".into(),
                after_sequence: 0,
                ..Default::default()
            })
            .await
            .err()
            .unwrap(),
        client
            .cancel_run(pb::CancelRunRequest {
                run_id: "no-such-run".into(),
                reason: String::new(),
            })
            .await
            .unwrap_err(),
    ] {
        assert_eq!(status.code(), Code::NotFound, "{status:?}");
    }
    let negative = client
        .stream_run(pb::StreamRunRequest {
            run_id: "x".into(),
            after_sequence: -1,
            ..Default::default()
        })
        .await
        .err()
        .unwrap();
    assert_eq!(field_violations(&negative), ["after_sequence"]);
    let page = client
        .list_runs(pb::ListRunsRequest {
            page_size: -1,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(field_violations(&page), ["page_size"]);
    let token = client
        .list_runs(pb::ListRunsRequest {
            page_token: "garbage".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(field_violations(&token), ["page_token"]);

    // Nothing was stored by any of it.
    let runs = client
        .list_runs(pb::ListRunsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .runs;
    assert!(runs.is_empty(), "{runs:?}");
    mesh.stop().await;
}

#[tokio::test]
async fn an_idempotency_key_returns_the_same_run() {
    let mesh = Mesh::start(None, |_| {}).await;
    let mut client = mesh.client();
    let request = pb::StartRunRequest {
        objective: "What is 2+2?".into(),
        idempotency_key: "order-42".into(),
        ..Default::default()
    };
    let first = client
        .start_run(request.clone())
        .await
        .unwrap()
        .into_inner();
    let second = client
        .start_run(request.clone())
        .await
        .unwrap()
        .into_inner();
    assert!(!first.existing);
    assert!(second.existing);
    assert_eq!(first.run_id, second.run_id);
    let clash = client
        .start_run(pb::StartRunRequest {
            objective: "What is 3+3?".into(),
            ..request
        })
        .await
        .unwrap_err();
    assert_eq!(clash.code(), Code::AlreadyExists, "{clash:?}");
    let runs = client
        .list_runs(pb::ListRunsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .runs;
    assert_eq!(runs.len(), 1);
    mesh.stop().await;
}

#[tokio::test]
async fn a_tool_error_goes_back_to_the_model_and_the_run_still_answers() {
    let mesh = Mesh::start(None, |_| {}).await;
    let mut client = mesh.client();
    let events = collect(run_events(
        client.run(run_request("What is 1/0?")).await.unwrap(),
    ))
    .await;
    let failed_call = events
        .iter()
        .find_map(|e| match &e.event {
            Some(run_event::Event::ToolCallFinished(c)) => Some(c.clone()),
            _ => None,
        })
        .expect("a tool call");
    assert!(failed_call.is_error, "{failed_call:?}");
    assert!(
        failed_call.error_message.contains("zero"),
        "{failed_call:?}"
    );
    assert!(
        matches!(
            events.last().unwrap().event,
            Some(run_event::Event::RunFinished(_))
        ),
        "{events:#?}"
    );
    mesh.stop().await;
}

#[tokio::test]
async fn runs_are_listed_by_label_and_state_page_by_page_and_sessions_continue() {
    let mesh = Mesh::start(None, |_| {}).await;
    let mut client = mesh.client();
    let mut session = String::new();
    for (i, team) in ["red", "blue", "red"].iter().enumerate() {
        let response = client
            .start_run(pb::StartRunRequest {
                objective: format!("What is {i}+1?"),
                session_id: session.clone(),
                labels: [("team".to_owned(), (*team).to_owned())].into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        collect(stream_events(
            client
                .stream_run(pb::StreamRunRequest {
                    run_id: response.run_id.clone(),
                    after_sequence: 0,
                    ..Default::default()
                })
                .await
                .unwrap(),
        ))
        .await;
        session = response.run.unwrap().session_id;
    }
    let runs = client
        .list_runs(pb::ListRunsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .runs;
    assert_eq!(runs.len(), 3);
    // One session, continued: later runs see a longer conversation.
    assert!(runs.iter().all(|r| r.session_id == session));
    let input = |r: &pb::Run| r.usage.unwrap().input_tokens;
    assert!(input(&runs[0]) > input(&runs[2]), "{runs:#?}");

    let red = client
        .list_runs(pb::ListRunsRequest {
            labels: [("team".to_owned(), "red".to_owned())].into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .runs;
    assert_eq!(red.len(), 2);

    let first = client
        .list_runs(pb::ListRunsRequest {
            page_size: 2,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.runs.len(), 2);
    assert!(!first.next_page_token.is_empty());
    let second = client
        .list_runs(pb::ListRunsRequest {
            page_size: 2,
            page_token: first.next_page_token.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(second.runs.len(), 1);
    assert!(second.next_page_token.is_empty());
    assert_eq!(second.runs[0].run_id, runs[2].run_id);
    // A token is bound to its filters.
    let mismatch = client
        .list_runs(pb::ListRunsRequest {
            page_size: 2,
            page_token: first.next_page_token,
            states: vec![pb::RunState::Failed.into()],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(mismatch.code(), Code::InvalidArgument);

    let failed = client
        .list_runs(pb::ListRunsRequest {
            states: vec![pb::RunState::Failed.into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .runs;
    assert!(failed.is_empty());

    // Another tenant sees none of it.
    let mut request = tonic::Request::new(pb::GetRunRequest {
        run_id: runs[0].run_id.clone(),
    });
    request
        .metadata_mut()
        .insert("x-agentmesh-tenant", "other".parse().unwrap());
    assert_eq!(
        client.get_run(request).await.unwrap_err().code(),
        Code::NotFound
    );
    mesh.stop().await;
}

#[tokio::test]
async fn runs_are_stored_in_postgres_too() {
    let server = agentmesh_testkit::postgres::shared().await;
    let url = server.create_database("orchestrator_runs").await;
    let mesh = Mesh::start(None, |config| config.storage.url = Some(url)).await;
    let mut client = mesh.client();
    let events = collect(run_events(
        client
            .run(run_request("What is 17 * 23 + sqrt(144)?"))
            .await
            .unwrap(),
    ))
    .await;
    assert!(answer_text(&events).contains("403"));
    let run_id = events[0].run_id.clone();
    let replay = collect(stream_events(
        client
            .stream_run(pb::StreamRunRequest {
                run_id: run_id.clone(),
                after_sequence: 3,
                ..Default::default()
            })
            .await
            .unwrap(),
    ))
    .await;
    assert_eq!(replay, events[3..].to_vec());
    let runs = client
        .list_runs(pb::ListRunsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .runs;
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].state(), pb::RunState::Succeeded);
    mesh.stop().await;
}

#[tokio::test]
async fn agents_are_listed() {
    let mesh = Mesh::start(None, |_| {}).await;
    let mut client = mesh.client();
    let agents = client
        .list_agents(pb::ListAgentsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .agents;
    assert_eq!(agents.len(), 1);
    assert!(agents[0].is_default);
    assert!(agents[0].tools.contains(&"calculator".to_owned()));
    let missing = client
        .get_agent(pb::GetAgentRequest {
            name: "nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    mesh.stop().await;
}

/// A finished run's log of well over a thousand events comes back whole from
/// the store, every time and from any point: a replay queues more events
/// than the runtime lets one poll take, and the stream must still end only
/// after the last of them, the run's end.
#[tokio::test]
async fn a_long_finished_run_replays_whole_from_any_point() {
    let words: Vec<String> = (1..=1500).map(|n| format!("w{n}")).collect();
    let rules = format!("pace = \"0s\"\n[[rules]]\ntext = \"{}\"\n", words.join(" "));
    let mesh = Mesh::start(Some(&rules), |_| {}).await;
    let mut client = mesh.client();
    let live = without_heartbeats(
        collect(run_events(
            client.run(run_request("tell me everything")).await.unwrap(),
        ))
        .await,
    );
    assert!(live.len() > 1000, "{} events", live.len());
    let last = live.last().unwrap();
    assert!(matches!(last.event, Some(run_event::Event::RunFinished(_))));
    let run_id = last.run_id.clone();
    let expected = sequences(&live);
    for after_sequence in [0, 0, 0, expected.len() as i32 - 100] {
        let replay = without_heartbeats(
            collect(stream_events(
                client
                    .stream_run(pb::StreamRunRequest {
                        run_id: run_id.clone(),
                        after_sequence,
                        ..Default::default()
                    })
                    .await
                    .unwrap(),
            ))
            .await,
        );
        let from = usize::try_from(after_sequence).unwrap();
        // Compared whole, but reported short: the lists are long.
        let got = sequences(&replay);
        assert!(
            got == expected[from..],
            "replay after {after_sequence}: {} events, {:?} to {:?}; expected {}, to {:?}",
            got.len(),
            got.first(),
            got.last(),
            expected.len() - from,
            expected.last()
        );
        assert_eq!(replay.last(), live.last());
    }
    mesh.stop().await;
}
