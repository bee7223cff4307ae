//! `Subscribe`: stored events after a cursor, then the live tail, with no
//! gap and no duplicate at the seam.
//!
//! The stream subscribes to the writer's commits *before* it reads the
//! database, so every event is either already stored when it reads or
//! arrives as a commit afterwards. Each commit says which sequence number
//! came before it: when that is where the stream stands, the commit is
//! delivered from memory; when the stream stands further back (it lagged, or
//! another replica wrote in between), it catches up from the database first.
//! A commit of another replica comes as its last sequence number only (on
//! PostgreSQL, from the replica's listener), and the stream reads up to it
//! from the database. The heartbeat's timer is also a poll of the database:
//! the fallback for commits no notification announced (SQLite has one
//! replica; a listener may be reconnecting; an older replica does not notify).
//! Heartbeats carry the position reached, filtered-out events included, so a
//! consumer resuming from a heartbeat's cursor skips nothing it wants.

use std::time::{Duration, SystemTime};

use agentmesh_proto::audit::v1::{
    AuditEvent, SubscribeHeartbeat, SubscribeResponse, subscribe_response::Item,
};
use agentmesh_storage::StoreError;
use tokio::sync::{broadcast, mpsc};
use tonic::Status;

use crate::filter::Filter;
use crate::metrics::AuditMetrics;
use crate::store::Store;
use crate::writer::{Live, Writer};

/// Events read from the database per query while catching up.
const CATCH_UP_PAGE: usize = 500;

/// Where a subscription starts.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Start {
    /// After this sequence number.
    After(i64),
    /// From the first retained event.
    Beginning,
    /// From now on.
    Now,
}

/// The settings of one subscription.
#[derive(Debug, Clone)]
pub(crate) struct Subscription {
    pub filter: Filter,
    pub start: Start,
    pub heartbeat: Duration,
    pub end_grace: Duration,
}

type Sender = mpsc::Sender<Result<SubscribeResponse, Status>>;

/// The stream ended: the client left, or the server cannot go on.
enum Stop {
    ClientGone,
    Failed(Status),
}

impl From<StoreError> for Stop {
    fn from(err: StoreError) -> Self {
        // The shared status (no database text for the client); when the
        // failure passes, the client resumes where it stopped.
        let status = err.to_status();
        if err.is_retryable() {
            Self::Failed(Status::new(
                status.code(),
                format!("{}; resubscribe with the last cursor", status.message()),
            ))
        } else {
            Self::Failed(status)
        }
    }
}

/// Runs a subscription into `sender` until the client leaves, the filter's
/// end time has passed, or the service stops.
pub(crate) async fn run(store: Store, writer: Writer, subscription: Subscription, sender: Sender) {
    // Counted in `agentmesh_audit_subscribers` until the stream ends.
    let _subscriber = writer.metrics().subscriber();
    let live = writer.subscribe();
    let mut stream = Stream {
        store,
        filter: subscription.filter,
        sender,
        position: 0,
        metrics: writer.metrics().clone(),
        replayed: false,
    };
    let result = stream
        .run(
            live,
            subscription.start,
            subscription.heartbeat,
            subscription.end_grace,
        )
        .await;
    if let Err(Stop::Failed(status)) = result {
        let _ = stream.sender.send(Err(status)).await;
    }
}

/// Where a subscription starting at `start` stands, the log holding
/// `retained_from..=last_seq`; or why it cannot start.
fn start_position(start: Start, last_seq: i64, retained_from: i64) -> Result<i64, Stop> {
    let position = match start {
        Start::After(seq) if seq < retained_from - 1 => {
            return Err(Stop::Failed(Status::out_of_range(format!(
                "cursor {seq} points before the oldest retained event ({retained_from}): older events were deleted by retention; \
                 resubscribe with from_beginning to continue from the oldest retained event"
            ))));
        }
        // OUT_OF_RANGE, as gRPC's guidance says for reading past the
        // end: unlike INVALID_ARGUMENT it tells the caller the cursor
        // may become valid as the log grows, and it is what a client
        // iterating the log can tell apart from a malformed request.
        // Calling it "live" would silently skip the events between the
        // end and the cursor once they are written.
        Start::After(seq) if seq > last_seq => {
            return Err(Stop::Failed(Status::out_of_range(format!(
                "cursor {seq} is past the end of the log (the last event is {last_seq}); \
                 resume from a cursor this service returned, or subscribe from now"
            ))));
        }
        Start::After(seq) => seq,
        Start::Beginning => retained_from - 1,
        Start::Now => last_seq,
    };
    Ok(position)
}

struct Stream {
    store: Store,
    filter: Filter,
    sender: Sender,
    /// The last sequence number looked at.
    position: i64,
    metrics: AuditMetrics,
    /// The replay of the events before the stream's start is done: what it
    /// sends now counts in the tail lag.
    replayed: bool,
}

impl Stream {
    async fn run(
        &mut self,
        mut live: broadcast::Receiver<Live>,
        start: Start,
        heartbeat: Duration,
        end_grace: Duration,
    ) -> Result<(), Stop> {
        let (last_seq, retained_from) = self.store.state().await?;
        self.position = start_position(start, last_seq, retained_from)?;
        self.catch_up(last_seq).await?;
        self.replayed = true;
        self.heartbeat().await?;
        let end_at = self.filter.end_us.map(|end| {
            let end =
                SystemTime::UNIX_EPOCH + Duration::from_micros(u64::try_from(end).unwrap_or(0));
            end + end_grace
        });
        let mut ticker = tokio::time::interval(heartbeat);
        ticker.reset();
        let client = self.sender.clone();
        loop {
            if end_at.is_some_and(|end| SystemTime::now() >= end) {
                return Ok(());
            }
            tokio::select! {
                commit = live.recv() => match commit {
                    Ok(Live::Committed(commit)) => {
                        if commit.last_seq <= self.position {
                            continue;
                        }
                        if commit.prev_seq <= self.position {
                            let position = self.position;
                            for (seq, event) in commit.events.iter().filter(|(seq, _)| *seq > position) {
                                self.position = *seq;
                                if self.filter.matches(event) {
                                    self.send_event(event.clone()).await?;
                                    ticker.reset();
                                }
                            }
                            self.position = commit.last_seq;
                        } else {
                            self.catch_up(commit.last_seq).await?;
                        }
                    }
                    Ok(Live::Elsewhere(last_seq)) => self.catch_up(last_seq).await?,
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        let (last_seq, _) = self.store.state().await?;
                        self.catch_up(last_seq).await?;
                    }
                    Err(broadcast::error::RecvError::Closed) => {
                        return Err(Stop::Failed(Status::unavailable(
                            "the audit service is stopping; resubscribe with the last cursor",
                        )));
                    }
                },
                _ = ticker.tick() => {
                    // Events written by another replica reach this one only
                    // through the database.
                    let (last_seq, _) = self.store.state().await?;
                    self.catch_up(last_seq).await?;
                    self.heartbeat().await?;
                }
                () = client.closed() => return Err(Stop::ClientGone),
            }
        }
    }

    /// Sends the stored events after the position, up to `upto`.
    async fn catch_up(&mut self, upto: i64) -> Result<(), Stop> {
        while self.position < upto {
            let events = self
                .store
                .after_seq(&self.filter, self.position, upto, CATCH_UP_PAGE)
                .await?;
            let full = events.len() == CATCH_UP_PAGE;
            for (seq, event) in events {
                self.position = seq;
                self.send_event(event).await?;
            }
            if !full {
                self.position = upto;
            }
        }
        Ok(())
    }

    async fn send_event(&self, event: AuditEvent) -> Result<(), Stop> {
        let recorded = event
            .record_time
            .and_then(|time| SystemTime::try_from(time).ok());
        self.send(Item::Event(event)).await?;
        if self.replayed
            && let Some(recorded) = recorded
        {
            self.metrics.tail_lag(recorded);
        }
        Ok(())
    }

    async fn heartbeat(&self) -> Result<(), Stop> {
        self.send(Item::Heartbeat(SubscribeHeartbeat {
            cursor: crate::event::cursor(self.position),
            live: true,
            time: Some(prost_types::Timestamp::from(SystemTime::now())),
        }))
        .await
    }

    async fn send(&self, item: Item) -> Result<(), Stop> {
        self.sender
            .send(Ok(SubscribeResponse { item: Some(item) }))
            .await
            .map_err(|_| Stop::ClientGone)
    }
}
