//! The live buffer's state machine: numbering, what a follower joining at
//! any point sees, and the end of a run.

use std::time::Duration;

use agentmesh_proto::orchestrator::v1::{self as pb, run_event};
use tokio::sync::broadcast::error::TryRecvError;

use super::*;

fn delta(text: &str) -> run_event::Event {
    run_event::Event::TokenDelta(pb::TokenDelta {
        text: text.to_owned(),
        step: 1,
    })
}

fn finished() -> run_event::Event {
    run_event::Event::RunFinished(pb::RunFinished::default())
}

fn sequences(events: &[pb::RunEvent]) -> Vec<i32> {
    events.iter().map(|event| event.sequence).collect()
}

/// Every event a subscription has received so far.
fn drain(live: &mut broadcast::Receiver<Arc<pb::RunEvent>>) -> Vec<pb::RunEvent> {
    let mut out = Vec::new();
    loop {
        match live.try_recv() {
            Ok(event) => out.push(Arc::unwrap_or_clone(event)),
            Err(TryRecvError::Empty | TryRecvError::Closed) => return out,
            Err(TryRecvError::Lagged(n)) => panic!("lagged by {n}"),
        }
    }
}

#[test]
fn events_are_numbered_after_the_stored_ones_and_kept_until_stored() {
    // A run resumed with 4 events stored numbers its next one 5.
    let run = ActiveRun::new("r".into(), 4, pb::RunState::Running);
    let first = run.emit(delta("a"));
    let second = run.emit(delta("b"));
    assert_eq!((first.sequence, second.sequence), (5, 6));
    assert_eq!(first.run_id, "r");
    assert!(first.time.is_some());

    let (pending, last) = run.unstored();
    assert_eq!(sequences(&pending), [5, 6]);
    assert_eq!(last, 6);

    // Storing up to 5 keeps 6 pending; a later event continues at 7.
    run.stored(5);
    assert_eq!(sequences(&run.unstored().0), [6]);
    assert_eq!(run.emit(delta("c")).sequence, 7);
    run.stored(7);
    let (pending, last) = run.unstored();
    assert!(pending.is_empty());
    assert_eq!(last, 7);
    assert_eq!(run.snapshot().stored, 7);
    // A stale acknowledgement does not move the stored position back.
    run.stored(3);
    assert_eq!(run.snapshot().stored, 7);
}

#[test]
fn a_follower_joining_mid_step_sees_every_event_once() {
    let run = ActiveRun::new("r".into(), 0, pb::RunState::Running);
    let mut early = run.snapshot().live;
    // Step 1: emitted and stored.
    run.emit(delta("1"));
    run.emit(delta("2"));
    run.stored(2);
    // Step 2 in flight when the follower joins.
    run.emit(delta("3"));
    let Snapshot {
        stored,
        pending,
        mut live,
    } = run.snapshot();
    run.emit(delta("4"));
    run.emit(delta("5"));

    assert_eq!(stored, 2, "events 1 and 2 are read from the store");
    assert_eq!(sequences(&pending), [3]);
    let tail = drain(&mut live);
    assert_eq!(sequences(&tail), [4, 5], "only events after the snapshot");
    // Store (1..=stored) + pending + live = every event, once, in order.
    let mut seen: Vec<i32> = (1..=stored).collect();
    seen.extend(sequences(&pending));
    seen.extend(sequences(&tail));
    assert_eq!(seen, [1, 2, 3, 4, 5]);
    // A follower that joined before anything got everything live.
    assert_eq!(sequences(&drain(&mut early)), [1, 2, 3, 4, 5]);
}

#[test]
fn a_follower_joining_between_steps_has_nothing_pending() {
    let run = ActiveRun::new("r".into(), 0, pb::RunState::Running);
    run.emit(delta("1"));
    let (_, last) = run.unstored();
    run.stored(last);
    let mut snapshot = run.snapshot();
    assert_eq!(snapshot.stored, 1);
    assert!(snapshot.pending.is_empty());
    assert!(drain(&mut snapshot.live).is_empty());
}

#[tokio::test]
async fn the_terminal_event_goes_out_only_once_stored() {
    let run = ActiveRun::new("r".into(), 0, pb::RunState::Running);
    let mut live = run.snapshot().live;
    run.emit(delta("1"));
    run.set_state(pb::RunState::Succeeded);
    assert_eq!(run.state(), pb::RunState::Succeeded);

    let terminal = run.reserve(finished());
    assert_eq!(terminal.sequence, 2);
    assert_eq!(sequences(&drain(&mut live)), [1], "reserved, not published");
    assert_eq!(
        sequences(&run.unstored().0),
        [1],
        "the reserved event is the caller's to store"
    );

    // The caller stored event 1 and the terminal event together.
    run.publish_stored(terminal);
    assert_eq!(sequences(&drain(&mut live)), [2]);
    let after = run.snapshot();
    assert_eq!(after.stored, 2);
    assert!(after.pending.is_empty());

    assert!(!run.has_ended());
    let waiter = {
        let run = Arc::clone(&run);
        tokio::spawn(async move { run.ended().await })
    };
    tokio::task::yield_now().await;
    assert!(!waiter.is_finished());
    run.mark_ended();
    assert!(run.has_ended());
    tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .unwrap()
        .unwrap();
    // A late waiter returns at once.
    tokio::time::timeout(Duration::from_secs(5), run.ended())
        .await
        .unwrap();
}

#[tokio::test]
async fn the_first_cancel_is_the_one_recorded() {
    let run = ActiveRun::new("r".into(), 0, pb::RunState::Queued);
    assert_eq!(run.cancel_reason(), "");
    assert_eq!(run.cancelled_by(), "");
    run.cancel("wrong objective".into(), "ana".into());
    run.cancel("cancelled by request".into(), String::new());
    assert_eq!(run.cancel_reason(), "wrong objective");
    assert_eq!(run.cancelled_by(), "ana");
    tokio::time::timeout(Duration::from_secs(5), run.cancelled())
        .await
        .unwrap();
}
