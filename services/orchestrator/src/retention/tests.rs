//! Retention over a real (SQLite) store: only finished runs past their
//! state's age go, with their events, checkpoints and callbacks; the
//! sessions left without runs go too.

use std::time::{Duration, SystemTime};

use agentmesh_proto::orchestrator::v1 as pb;

use super::*;
use crate::engine::testing;
use crate::store::{Checkpoint, Created, Flushed, NewCallback, Tenants};

const DAY: Duration = Duration::from_secs(86_400);

/// Stores a run of `state` that ended `ago` before `now` (unfinished runs
/// have no end), with one event, a checkpoint and a callback to deliver.
async fn stored(
    store: &Store,
    state: pb::RunState,
    ago: Option<Duration>,
    now: SystemTime,
) -> String {
    let mut run = testing::run("acme");
    let created = store.create_run(&run, true, "me", i64::MAX).await.unwrap();
    assert!(matches!(created, Created::New(_)));
    run.state = state;
    run.end_time = ago.map(|ago| cutoff(now, ago));
    run.last_sequence = 1;
    let event = pb::RunEvent {
        run_id: run.run_id.clone(),
        sequence: 1,
        ..pb::RunEvent::default()
    };
    let flushed = store
        .flush(
            &run,
            &[event],
            Some(&Checkpoint::default()),
            ("me", i64::MAX),
            1,
            Some(&NewCallback {
                delivery_id: uuid::Uuid::now_v7().to_string(),
                event: "end".into(),
                url: "https://hooks.example.com/".into(),
                payload: "{}".into(),
            }),
        )
        .await
        .unwrap();
    assert!(matches!(flushed, Flushed::Stored { .. }));
    run.run_id
}

#[tokio::test]
async fn only_finished_runs_past_their_states_age_are_deleted_with_what_they_own() {
    let dir = tempfile::tempdir().unwrap();
    let engine = testing::engine(&dir, testing::config()).await;
    let store = engine.store().clone();
    let now = SystemTime::now();
    let old_success = stored(&store, pb::RunState::Succeeded, Some(40 * DAY), now).await;
    let new_success = stored(&store, pb::RunState::Succeeded, Some(DAY), now).await;
    let old_failure = stored(&store, pb::RunState::Failed, Some(40 * DAY), now).await;
    let older_failure = stored(&store, pb::RunState::Failed, Some(100 * DAY), now).await;
    let old_cancel = stored(&store, pb::RunState::Cancelled, Some(40 * DAY), now).await;
    let running = stored(&store, pb::RunState::Running, None, now).await;
    let config = RetentionConfig {
        max_age: Some(30 * DAY),
        failed: Some(90 * DAY),
        batch_size: 1,
        ..RetentionConfig::default()
    };
    assert_eq!(store.pending_callbacks().await.unwrap(), 6);
    // Batches of one: the pass goes on until nothing is left.
    assert_eq!(pass(&store, &config, now).await.unwrap(), 3);
    // The deleted runs' callbacks went with them.
    assert_eq!(store.pending_callbacks().await.unwrap(), 3);
    for (run_id, kept) in [
        (&old_success, false),
        (&new_success, true),
        (&old_failure, true),
        (&older_failure, false),
        (&old_cancel, false),
        (&running, true),
    ] {
        let found = store.get_run(Tenants::All, run_id).await.unwrap();
        assert_eq!(found.is_some(), kept, "{run_id}");
        assert_eq!(
            store.events(run_id, 0, i32::MAX).await.unwrap().len(),
            usize::from(kept)
        );
        assert_eq!(store.checkpoint(run_id).await.unwrap().is_some(), kept);
    }
    // A second pass finds nothing.
    assert_eq!(pass(&store, &config, now).await.unwrap(), 0);
    // Without any age nothing is deleted.
    let keep_all = RetentionConfig::default();
    assert_eq!(pass(&store, &keep_all, now + 365 * DAY).await.unwrap(), 0);
}

#[test]
fn a_state_without_its_own_age_takes_max_age_and_unfinished_ones_none() {
    let config = RetentionConfig {
        max_age: Some(DAY),
        cancelled: Some(2 * DAY),
        ..RetentionConfig::default()
    };
    assert_eq!(config.age_of(pb::RunState::Succeeded), Some(DAY));
    assert_eq!(config.age_of(pb::RunState::Cancelled), Some(2 * DAY));
    assert_eq!(config.age_of(pb::RunState::Running), None);
    assert_eq!(config.age_of(pb::RunState::Queued), None);
    assert_eq!(cutoff(SystemTime::UNIX_EPOCH, DAY), 0);
}
