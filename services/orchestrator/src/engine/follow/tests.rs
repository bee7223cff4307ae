//! The follower's hand-over from the store to the live buffer, over a real
//! (SQLite) store and a run whose task is played by the test.

use std::time::Duration;

use agentmesh_storage::{Database, StorageConfig};
use tokio::sync::mpsc;

use super::*;
use crate::config::{Config, DEFAULT_AGENT};
use crate::engine::lock;
use crate::store::{Created, Limits};

const PATIENCE: Duration = Duration::from_secs(10);

async fn engine(dir: &tempfile::TempDir, heartbeat_interval: Duration) -> Arc<Engine> {
    let config = Config {
        heartbeat_interval,
        ..Config::default()
    };
    crate::engine::testing::engine(dir, config).await
}

/// A run stored QUEUED, with its buffer registered as if its task drove it.
async fn active_run(engine: &Arc<Engine>) -> (RunRow, Arc<ActiveRun>) {
    let run = RunRow {
        run_id: uuid::Uuid::now_v7().to_string(),
        tenant: "t".into(),
        subject: String::new(),
        agent: DEFAULT_AGENT.into(),
        session_id: uuid::Uuid::now_v7().to_string(),
        objective: "follow me".into(),
        state: pb::RunState::Queued,
        idempotency_key: None,
        model: String::new(),
        limits: Limits {
            max_steps: 8,
            max_output_tokens: 0,
            timeout_ms: 60_000,
            max_tokens: 0,
            max_cost_micros: 0,
        },
        labels: std::collections::BTreeMap::new(),
        create_time: now_micros(),
        start_time: None,
        end_time: None,
        output: String::new(),
        error: None,
        input_tokens: 0,
        output_tokens: 0,
        steps: 0,
        tool_calls: 0,
        last_sequence: 0,
        priority: 0,
        identity: None,
        callback: None,
        parent_run_id: None,
    };
    let created = engine
        .store
        .create_run(&run, true, &engine.owner, engine.lease_until())
        .await
        .unwrap();
    assert!(matches!(created, Created::New(_)));
    let active = ActiveRun::new(run.run_id.clone(), run.last_sequence, run.state);
    lock(&engine.active).insert(run.run_id.clone(), Arc::clone(&active));
    (run, active)
}

fn delta(n: usize) -> run_event::Event {
    run_event::Event::TokenDelta(pb::TokenDelta {
        text: n.to_string(),
        step: 1,
    })
}

/// Ends the run as its task does: the terminal event stored with the final
/// row, then published, then the run forgotten here.
async fn end(engine: &Engine, run: &mut RunRow, active: &ActiveRun) {
    run.state = pb::RunState::Succeeded;
    active.set_state(run.state);
    let terminal = active.reserve(run_event::Event::RunFinished(pb::RunFinished::default()));
    assert!(
        engine
            .store_end(run, active, &crate::store::Checkpoint::default(), &terminal)
            .await
    );
    active.publish_stored(terminal);
    lock(&engine.active).remove(&run.run_id);
    active.mark_ended();
}

/// Everything the follower sends until it closes the stream.
async fn received(
    mut receiver: mpsc::Receiver<Box<Result<pb::RunEvent, Status>>>,
) -> Vec<pb::RunEvent> {
    let mut events = Vec::new();
    while let Some(event) = tokio::time::timeout(PATIENCE, receiver.recv())
        .await
        .unwrap()
    {
        events.push(event.unwrap());
    }
    events
}

/// The next event the follower sends.
async fn next(receiver: &mut mpsc::Receiver<Box<Result<pb::RunEvent, Status>>>) -> pb::RunEvent {
    tokio::time::timeout(PATIENCE, receiver.recv())
        .await
        .unwrap()
        .unwrap()
        .unwrap()
}

fn sequences(events: &[pb::RunEvent]) -> Vec<i32> {
    events.iter().map(|event| event.sequence).collect()
}

#[tokio::test]
async fn replay_then_tail_sends_every_event_once() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(&dir, Duration::from_secs(3600)).await;
    let (mut run, active) = active_run(&engine).await;
    // Events 1 to 3 are stored, 4 is pending when the follower joins.
    for n in 1..=3 {
        active.emit(delta(n));
    }
    assert!(engine.flush(&mut run, &active, None).await);
    active.emit(delta(4));

    // The client saw event 1 already.
    let (sender, receiver) = mpsc::channel(256);
    let follower = tokio::spawn(Arc::clone(&engine).follow(run.clone(), 1, sender, false));
    // Events while the follower catches up, a step stored, more events.
    active.emit(delta(5));
    tokio::task::yield_now().await;
    active.emit(delta(6));
    assert!(engine.flush(&mut run, &active, None).await);
    active.emit(delta(7));
    end(&engine, &mut run, &active).await;

    let events = received(receiver).await;
    assert_eq!(sequences(&events), [2, 3, 4, 5, 6, 7, 8]);
    assert!(matches!(
        events.last().and_then(|event| event.event.as_ref()),
        Some(run_event::Event::RunFinished(_))
    ));
    tokio::time::timeout(PATIENCE, follower)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn a_follower_that_falls_behind_catches_up_without_a_gap() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(&dir, Duration::from_secs(3600)).await;
    let (mut run, active) = active_run(&engine).await;
    // A slow client: room for one event at a time.
    let (sender, mut receiver) = mpsc::channel(1);
    let follower = tokio::spawn(Arc::clone(&engine).follow(run.clone(), 0, sender, false));
    active.emit(delta(1));
    let first = tokio::time::timeout(PATIENCE, receiver.recv())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(first.sequence, 1);
    // Far more than the broadcast keeps, without the follower running; part
    // of them stored, the rest pending.
    let total = 2500;
    for n in 2..=total {
        active.emit(delta(n));
        if n == 1500 {
            assert!(engine.flush(&mut run, &active, None).await);
        }
    }
    end(&engine, &mut run, &active).await;

    let events = received(receiver).await;
    let expected: Vec<i32> = (2..=i32::try_from(total).unwrap() + 1).collect();
    assert_eq!(sequences(&events), expected);
    tokio::time::timeout(PATIENCE, follower)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn a_run_not_driven_here_is_replayed_from_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(&dir, Duration::from_secs(3600)).await;
    let (mut run, active) = active_run(&engine).await;
    for n in 1..=3 {
        active.emit(delta(n));
    }
    end(&engine, &mut run, &active).await;
    assert!(engine.active(&run.run_id).is_none());

    let (sender, receiver) = mpsc::channel(256);
    Arc::clone(&engine)
        .follow(run.clone(), 0, sender, false)
        .await;
    assert_eq!(sequences(&received(receiver).await), [1, 2, 3, 4]);

    // From the middle, too.
    let (sender, receiver) = mpsc::channel(256);
    Arc::clone(&engine).follow(run, 2, sender, false).await;
    assert_eq!(sequences(&received(receiver).await), [3, 4]);
}

#[tokio::test]
async fn an_idle_run_gets_heartbeats_with_the_last_sequence_sent() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(&dir, Duration::from_millis(20)).await;
    let (mut run, active) = active_run(&engine).await;
    active.set_state(pb::RunState::Running);
    active.emit(delta(1));
    let (sender, mut receiver) = mpsc::channel(256);
    let follower = tokio::spawn(Arc::clone(&engine).follow(run.clone(), 0, sender, false));
    assert_eq!(next(&mut receiver).await.sequence, 1);
    let beat = next(&mut receiver).await;
    assert_eq!(beat.sequence, 0);
    let Some(run_event::Event::Heartbeat(heartbeat)) = beat.event else {
        panic!("expected a heartbeat, got {beat:?}");
    };
    assert_eq!(heartbeat.last_sequence, 1);
    assert_eq!(heartbeat.state, i32::from(pb::RunState::Running));
    end(&engine, &mut run, &active).await;
    tokio::time::timeout(PATIENCE, follower)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn a_run_that_no_longer_exists_ends_the_stream_with_not_found() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(&dir, Duration::from_secs(3600)).await;
    let (mut run, _) = active_run(&engine).await;
    lock(&engine.active).clear();
    run.run_id = "gone".into();
    let (sender, mut receiver) = mpsc::channel(256);
    Arc::clone(&engine).follow(run, 0, sender, false).await;
    let status = receiver.recv().await.unwrap().unwrap_err();
    assert_eq!(status.code(), tonic::Code::NotFound);
    assert!(receiver.recv().await.is_none());
}

/// Stored data that cannot be read ends the stream with DATA_LOSS (not a
/// retryable UNAVAILABLE: retrying cannot help), and the client is told
/// where to look, not what the stored data holds.
#[tokio::test]
async fn unreadable_stored_data_ends_the_stream_with_data_loss() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(&dir, Duration::from_secs(3600)).await;
    let (run, _active) = active_run(&engine).await;
    lock(&engine.active).remove(&run.run_id);
    let storage = StorageConfig {
        data_dir: dir.path().to_owned(),
        ..StorageConfig::default()
    };
    let Database::Sqlite(pool) = Database::connect(&storage, "orchestrator").await.unwrap() else {
        panic!("the default storage is SQLite");
    };
    sqlx::query("UPDATE runs SET state = 4242 WHERE run_id = $1")
        .bind(&run.run_id)
        .execute(pool.writer())
        .await
        .unwrap();

    let (sender, mut receiver) = mpsc::channel(16);
    tokio::spawn(Arc::clone(&engine).follow(run, 0, sender, false));
    let status = tokio::time::timeout(PATIENCE, receiver.recv())
        .await
        .unwrap()
        .unwrap()
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::DataLoss, "{status:?}");
    assert!(!status.message().contains("4242"), "{status:?}");
    assert!(status.message().contains("service log"), "{status:?}");
}
