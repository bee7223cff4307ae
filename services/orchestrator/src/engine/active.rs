//! The live event buffer of one run this instance drives.
//!
//! The run's task numbers every event as it happens ([`ActiveRun::emit`]),
//! sends it at once to the followers through a broadcast channel, and keeps
//! it pending until the end of the step, when one transaction stores the
//! pending events ([`ActiveRun::unstored`], then [`ActiveRun::stored`]).
//! The terminal event is numbered but withheld ([`ActiveRun::reserve`])
//! until it is stored ([`ActiveRun::publish_stored`]), so a client that sees
//! a run's end finds it ended everywhere.
//!
//! Sequence numbers go out only up to the run's stored reservation
//! (`reserved`): [`ActiveRun::reservation_needed`] says when the engine
//! must raise it first (see `store::replicas`). A run whose driver must
//! stop driving it here (its claim lost, or handed over at shutdown) is
//! [`ActiveRun::release`]d: its task stops without an end, and another
//! replica resumes it.
//!
//! A follower joining mid-run takes a [`Snapshot`] under the buffer's one
//! lock: the highest stored sequence, the pending events and a subscription.
//! Every event is then in exactly one of three places — the store (up to
//! `stored`), `pending`, or the subscription — so replay and live tail meet
//! without a gap or a duplicate.

use std::sync::{Arc, Mutex};

use agentmesh_kit::time::{now_micros, timestamp_from_micros};
use agentmesh_proto::orchestrator::v1::{self as pb, run_event};
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::sync::WaitForCancellationFuture;

use super::lock;

/// Events a slow follower may fall behind before it starts over from the
/// store and the pending events. Each slot is taken up front, for as long
/// as the run is driven here: 1,024 slots were most of an open run's
/// memory, and a follower seldom falls more than a few events behind; one
/// that does catches up from the store. The slots hold shared events
/// (about 40 bytes a slot instead of 230 with the event inline).
const FOLLOWER_BUFFER: usize = 64;

/// A run driven by this instance.
#[derive(Debug)]
pub(crate) struct ActiveRun {
    run_id: String,
    cancel: CancellationToken,
    /// Set when this replica stops driving the run without ending it.
    release: CancellationToken,
    /// The first cancel's reason and the subject who asked for it.
    cancel_reason: Mutex<Option<(String, String)>>,
    live: Mutex<Live>,
    /// Becomes true once the run's terminal event is stored.
    ended: watch::Sender<bool>,
}

/// Events not yet stored, and the channel to the followers.
#[derive(Debug)]
struct Live {
    /// Highest sequence stored.
    stored: i32,
    /// Events with a larger sequence, in order.
    pending: Vec<pb::RunEvent>,
    last_sequence: i32,
    /// The highest sequence the store lets this driver use.
    reserved: i32,
    state: pb::RunState,
    followers: broadcast::Sender<Arc<pb::RunEvent>>,
}

/// Where a follower joining now picks up: events up to `stored` are in the
/// store, `pending` holds the ones after it, and `live` receives every
/// event published after the snapshot.
#[derive(Debug)]
pub(super) struct Snapshot {
    pub(super) stored: i32,
    pub(super) pending: Vec<pb::RunEvent>,
    pub(super) live: broadcast::Receiver<Arc<pb::RunEvent>>,
}

impl ActiveRun {
    /// The buffer of run `run_id`, whose events up to `last_sequence` are
    /// stored, in `state`.
    #[cfg(test)]
    pub(super) fn new(run_id: String, last_sequence: i32, state: pb::RunState) -> Arc<Self> {
        Self::numbered(run_id, last_sequence, (last_sequence, i32::MAX), state)
    }

    /// The buffer of run `run_id` whose events up to `last_sequence` are
    /// stored, numbering its events after `from` (the last number a previous
    /// driver may have used) and up to `reserved` until the reservation is
    /// raised.
    pub(super) fn numbered(
        run_id: String,
        last_sequence: i32,
        (from, reserved): (i32, i32),
        state: pb::RunState,
    ) -> Arc<Self> {
        let (followers, _) = broadcast::channel(FOLLOWER_BUFFER);
        Arc::new(Self {
            run_id,
            cancel: CancellationToken::new(),
            release: CancellationToken::new(),
            cancel_reason: Mutex::new(None),
            live: Mutex::new(Live {
                stored: last_sequence,
                pending: Vec::new(),
                last_sequence: from.max(last_sequence),
                reserved,
                state,
                followers,
            }),
            ended: watch::Sender::new(false),
        })
    }

    /// Gives the event the next sequence number, keeps it for the next
    /// flush and sends it to the followers.
    pub(super) fn emit(&self, event: run_event::Event) -> pb::RunEvent {
        let mut live = lock(&self.live);
        Self::publish(&self.run_id, &mut live, event)
    }

    /// [`Self::emit`] while the next number is reserved (`None`); else
    /// the event back, with the reservation to store first (the last number
    /// used plus `block`).
    pub(super) fn emit_reserved(
        &self,
        event: run_event::Event,
        block: i32,
    ) -> Option<(run_event::Event, i32)> {
        let mut live = lock(&self.live);
        if live.last_sequence >= live.reserved {
            return Some((event, live.last_sequence.saturating_add(block)));
        }
        Self::publish(&self.run_id, &mut live, event);
        None
    }

    fn publish(run_id: &str, live: &mut Live, event: run_event::Event) -> pb::RunEvent {
        live.last_sequence += 1;
        let event = pb::RunEvent {
            run_id: run_id.to_owned(),
            sequence: live.last_sequence,
            time: Some(timestamp_from_micros(now_micros())),
            event: Some(event),
        };
        live.pending.push(event.clone());
        // No followers is fine: the event is stored at the end of the step.
        if live.followers.receiver_count() > 0 {
            let _ = live.followers.send(Arc::new(event.clone()));
        }
        event
    }

    /// Records that the store reserved numbers up to `upto`.
    pub(super) fn reserved(&self, upto: i32) {
        let mut live = lock(&self.live);
        live.reserved = live.reserved.max(upto);
    }

    /// The last sequence this driver numbered an event with.
    pub(super) fn last_used(&self) -> i32 {
        lock(&self.live).last_sequence
    }

    /// The run's id.
    pub(super) fn run_id(&self) -> &str {
        &self.run_id
    }

    /// Gives the terminal event its sequence number without publishing it:
    /// it goes to the followers only once stored ([`Self::publish_stored`]),
    /// so a client that sees the end of a run finds it ended everywhere
    /// (GetRun, a new run in the same session).
    pub(super) fn reserve(&self, event: run_event::Event) -> pb::RunEvent {
        let mut live = lock(&self.live);
        live.last_sequence += 1;
        pb::RunEvent {
            run_id: self.run_id.clone(),
            sequence: live.last_sequence,
            time: Some(timestamp_from_micros(now_micros())),
            event: Some(event),
        }
    }

    /// Publishes a reserved event stored by the caller.
    pub(super) fn publish_stored(&self, event: pb::RunEvent) {
        let mut live = lock(&self.live);
        live.stored = live.stored.max(event.sequence);
        live.pending
            .retain(|pending| pending.sequence > event.sequence);
        let _ = live.followers.send(Arc::new(event));
    }

    pub(super) fn set_state(&self, state: pb::RunState) {
        lock(&self.live).state = state;
    }

    /// The run's state as its task last set it.
    pub(super) fn state(&self) -> pb::RunState {
        lock(&self.live).state
    }

    /// The events to store now, and the last sequence among them.
    pub(super) fn unstored(&self) -> (Vec<pb::RunEvent>, i32) {
        let live = lock(&self.live);
        (live.pending.clone(), live.last_sequence)
    }

    /// Marks events up to `sequence` as stored.
    pub(super) fn stored(&self, sequence: i32) {
        let mut live = lock(&self.live);
        live.pending.retain(|event| event.sequence > sequence);
        live.stored = live.stored.max(sequence);
    }

    /// Where a follower joining now picks up (see the module's doc).
    pub(super) fn snapshot(&self) -> Snapshot {
        let live = lock(&self.live);
        Snapshot {
            stored: live.stored,
            pending: live.pending.clone(),
            live: live.followers.subscribe(),
        }
    }

    /// Requests the run to stop, for `reason`, on behalf of `by` (the
    /// caller's subject, may be empty); the driver records the cancel.
    pub(crate) fn cancel(&self, reason: String, by: String) {
        lock(&self.cancel_reason).get_or_insert((reason, by));
        self.cancel.cancel();
    }

    /// Resolves once the run is asked to stop.
    pub(super) fn cancelled(&self) -> WaitForCancellationFuture<'_> {
        self.cancel.cancelled()
    }

    /// The reason of the first cancel ("" if none was given).
    pub(super) fn cancel_reason(&self) -> String {
        lock(&self.cancel_reason)
            .as_ref()
            .map(|(reason, _)| reason.clone())
            .unwrap_or_default()
    }

    /// Who asked for the first cancel ("" if unknown).
    pub(super) fn cancelled_by(&self) -> String {
        lock(&self.cancel_reason)
            .as_ref()
            .map(|(_, by)| by.clone())
            .unwrap_or_default()
    }

    /// Stops driving the run here without ending it (its claim was lost,
    /// or it is handed over): its task stops at its next wait.
    pub(crate) fn release(&self) {
        self.release.cancel();
    }

    /// Resolves once the run is released.
    pub(super) fn released(&self) -> WaitForCancellationFuture<'_> {
        self.release.cancelled()
    }

    /// Whether [`Self::release`] was called.
    pub(super) fn is_released(&self) -> bool {
        self.release.is_cancelled()
    }

    /// Marks the run's terminal event stored and the run gone from here.
    pub(super) fn mark_ended(&self) {
        self.ended.send_replace(true);
    }

    /// Whether [`Self::mark_ended`] was called.
    pub(super) fn has_ended(&self) -> bool {
        *self.ended.borrow()
    }

    /// Waits until the run's terminal event is stored.
    pub(crate) async fn ended(&self) {
        let mut ended = self.ended.subscribe();
        let _ = ended.wait_for(|ended| *ended).await;
    }
}

#[cfg(test)]
mod tests;
