//! What the replica tests (scale_out, chaos) share: following a run as a
//! client would, and checking what a follower got against the contract's
//! numbering rule (sequences only grow; a gap is explained by the restart
//! marker right after it, whose abandoned events are discarded).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use agentmesh_proto::orchestrator::v1::{
    self as pb, orchestrator_service_client::OrchestratorServiceClient, run_event,
};
use agentmesh_tests::channel;
use futures::StreamExt as _;

/// An event as a follower got it, with when.
#[derive(Debug, Clone)]
pub(crate) struct Received {
    pub(crate) event: pb::RunEvent,
    pub(crate) at: Instant,
    pub(crate) wall: SystemTime,
}

impl Received {
    fn now(event: pb::RunEvent) -> Self {
        Self {
            event,
            at: Instant::now(),
            wall: SystemTime::now(),
        }
    }
}

/// True for the run's last event.
pub(crate) fn is_terminal(event: &pb::RunEvent) -> bool {
    matches!(
        event.event,
        Some(
            run_event::Event::RunFinished(_)
                | run_event::Event::RunFailed(_)
                | run_event::Event::RunCancelled(_)
        )
    )
}

/// The answer text of `events`: their token deltas, in order.
pub(crate) fn text(events: &[pb::RunEvent]) -> String {
    events
        .iter()
        .filter_map(|event| match &event.event {
            Some(run_event::Event::TokenDelta(delta)) => Some(delta.text.as_str()),
            _ => None,
        })
        .collect()
}

/// Follows `run_id` on `replica` from `after` to the end of its stream
/// (heartbeats dropped), noting when each event arrived.
pub(crate) async fn follow(replica: SocketAddr, run_id: String, after: i32) -> Vec<Received> {
    let mut client = OrchestratorServiceClient::new(channel(replica));
    let mut stream = client
        .stream_run(pb::StreamRunRequest {
            run_id,
            after_sequence: after,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut received = Vec::new();
    while let Some(message) = stream.next().await {
        let event = message.unwrap().event.unwrap();
        if event.sequence != 0 {
            received.push(Received::now(event));
        }
    }
    received
}

/// How a follower re-joins after it let go of a stream.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Rejoins {
    /// The chance, per event, of letting go of the stream on purpose.
    pub(crate) drop_chance: f64,
    /// The chance that a re-join asks from an earlier sequence than the last
    /// one seen (what it gets again must equal what it got).
    pub(crate) earlier_chance: f64,
}

impl Rejoins {
    /// Never lets go on purpose (only when a stream breaks).
    pub(crate) const NEVER: Self = Self {
        drop_chance: 0.0,
        earlier_chance: 0.0,
    };
}

/// What a follower of one run got.
#[derive(Debug, Default)]
pub(crate) struct Followed {
    /// Every event once, in the order first received.
    pub(crate) received: Vec<Received>,
    /// Streams opened, the first included.
    pub(crate) streams: usize,
    /// Events received again after a re-join from an earlier sequence that
    /// differed from the first copy (must stay empty).
    pub(crate) mismatches: Vec<String>,
}

/// Follows `run_id` to its terminal event as a client would through a load
/// balancer: on a replica of `live` picked from `seed`, and again on another
/// one whenever the stream breaks (its replica going away) or the follower
/// lets go on purpose (`rejoins`), from the last sequence seen or, now and
/// then, from an earlier one. Gives up after `limit`.
pub(crate) async fn follow_anywhere(
    live: Arc<Mutex<Vec<SocketAddr>>>,
    run_id: String,
    seed: u64,
    rejoins: Rejoins,
    limit: Duration,
) -> Followed {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut followed = Followed::default();
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        let replica = {
            let live = live.lock().unwrap();
            live.get(rng.usize(..live.len().max(1))).copied()
        };
        let Some(replica) = replica else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        let last = followed.received.last().map_or(0, |r| r.event.sequence);
        let after = if last > 0 && rng.f64() < rejoins.earlier_chance {
            rng.i32(0..last)
        } else {
            last
        };
        let mut client = OrchestratorServiceClient::new(channel(replica));
        let request = pb::StreamRunRequest {
            run_id: run_id.clone(),
            after_sequence: after,
            ..Default::default()
        };
        let Ok(Ok(stream)) =
            tokio::time::timeout(Duration::from_secs(5), client.stream_run(request)).await
        else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        followed.streams += 1;
        let mut stream = stream.into_inner();
        while let Ok(Some(Ok(message))) =
            tokio::time::timeout_at(deadline.into(), stream.next()).await
        {
            let Some(event) = message.event else { continue };
            if event.sequence == 0 {
                continue;
            }
            let seen = followed.received.last().map_or(0, |r| r.event.sequence);
            if event.sequence <= seen {
                // Asked again from earlier: it must be what came before.
                let first = followed
                    .received
                    .iter()
                    .find(|r| r.event.sequence == event.sequence);
                if first.is_some_and(|first| first.event != event) {
                    followed.mismatches.push(format!(
                        "sequence {} differs when asked again",
                        event.sequence
                    ));
                }
                continue;
            }
            let terminal = is_terminal(&event);
            followed.received.push(Received::now(event));
            if terminal {
                return followed;
            }
            if rng.f64() < rejoins.drop_chance {
                break;
            }
        }
    }
    followed
}

/// A restarted step's answer starts over: its text so far is dropped.
fn discard_tokens_of(kept: &mut Vec<pb::RunEvent>, step: i32) {
    kept.retain(
        |e| !matches!(&e.event, Some(run_event::Event::TokenDelta(delta)) if delta.step == step),
    );
}

/// A follower's events of one run, checked.
#[derive(Debug)]
pub(crate) struct Checked {
    /// The events kept once the abandoned ones are discarded.
    pub(crate) kept: Vec<pb::RunEvent>,
    /// The longest silence between two events received.
    pub(crate) longest_silence: Duration,
}

/// Checks a follower's events of one run: sequences only grow; a gap is
/// explained by the restart marker right after it, and the events it names
/// as abandoned are discarded; a terminal event, if any, is the last. A
/// successful run's answer assembled from the kept events is its output.
pub(crate) fn check_events(received: &[Received]) -> Result<Checked, String> {
    let mut last = 0;
    let mut kept: Vec<pb::RunEvent> = Vec::new();
    let mut longest_silence = Duration::ZERO;
    let mut previous: Option<Instant> = None;
    for r in received {
        let event = &r.event;
        if event.sequence <= last {
            return Err(format!("sequence {} after {last}", event.sequence));
        }
        if kept.last().is_some_and(is_terminal) {
            return Err(format!(
                "sequence {} after the terminal event",
                event.sequence
            ));
        }
        match &event.event {
            Some(run_event::Event::Progress(progress)) if progress.abandoned_last_sequence > 0 => {
                if !progress.step_restarted
                    || event.sequence != progress.abandoned_last_sequence + 1
                    || progress.abandoned_first_sequence > last + 1
                {
                    return Err(format!(
                        "a restart marker at {} naming {}..={} after {last}",
                        event.sequence,
                        progress.abandoned_first_sequence,
                        progress.abandoned_last_sequence
                    ));
                }
                kept.retain(|e| e.sequence < progress.abandoned_first_sequence);
                discard_tokens_of(&mut kept, progress.step);
            }
            Some(run_event::Event::Progress(progress))
                if progress.step_restarted && event.sequence == last + 1 =>
            {
                discard_tokens_of(&mut kept, progress.step);
            }
            _ if event.sequence != last + 1 => {
                return Err(format!(
                    "an unexplained gap after {last} (next: {})",
                    event.sequence
                ));
            }
            _ => {}
        }
        last = event.sequence;
        kept.push(event.clone());
        if let Some(previous) = previous {
            longest_silence = longest_silence.max(r.at.duration_since(previous));
        }
        previous = Some(r.at);
    }
    if let Some(run_event::Event::RunFinished(finished)) =
        kept.last().and_then(|e| e.event.as_ref())
        && text(&kept) != finished.output
    {
        return Err(format!(
            "the answer assembled from the stream {:?} is not the output {:?}",
            text(&kept),
            finished.output
        ));
    }
    Ok(Checked {
        kept,
        longest_silence,
    })
}
