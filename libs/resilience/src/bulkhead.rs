//! Bulkheads: at most N calls of one kind at once, a bounded queue behind
//! them, and a clear refusal beyond that — so one slow tool, agent profile
//! or tenant cannot take every worker.
//!
//! ```text
//! acquire ─▶ a place free?   yes ─▶ permit (held until dropped)
//!              │ no
//!              ▼
//!            queue below max_queued?  yes ─▶ wait for a place (FIFO)
//!              │ no
//!              ▼
//!            BulkheadFull (the caller answers RESOURCE_EXHAUSTED)
//! ```
//!
//! [`Bulkhead::enter`] answers at once, without waiting: a place, a
//! [`Queued`] ticket that already holds its queue slot (the caller may await
//! it later, in another task; dropping it leaves the queue), or
//! [`BulkheadFull`]. [`Bulkhead::acquire`] is `enter` then the wait. Every
//! change of the places taken or the queue calls the bulkhead's observer
//! ([`Bulkhead::on_change`]), which services use for their gauges.
//!
//! tower's `ConcurrencyLimit` queues without bound and `LoadShed` has no
//! queue at all; a bulkhead is the bounded middle, built on tokio's fair
//! semaphore. Callers enter it by hand rather than through a tower layer:
//! a service that streams must answer a refusal as a status before its
//! stream starts, and hold the place while a task relays the stream.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use tokio::sync::{AcquireError, OwnedSemaphorePermit, Semaphore};

/// A call refused because every place and every queue slot is taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{name} is at its limit of {max_concurrent} at once with {max_queued} waiting; retry later"
)]
pub struct BulkheadFull {
    /// What the bulkhead guards, e.g. `tool sleep` or `tenant acme`.
    pub name: String,
    /// Places.
    pub max_concurrent: usize,
    /// Queue slots.
    pub max_queued: usize,
}

/// A bounded-concurrency, bounded-queue gate. Cheap to clone.
#[derive(Clone)]
pub struct Bulkhead {
    shared: Arc<Shared>,
}

struct Shared {
    name: String,
    places: Arc<Semaphore>,
    max_concurrent: usize,
    max_queued: usize,
    queued: AtomicUsize,
    in_use: AtomicUsize,
    observer: Mutex<Option<Observer>>,
}

type Observer = Arc<dyn Fn(&Bulkhead) + Send + Sync>;

impl Shared {
    /// Tells the observer that the places or the queue changed.
    fn changed(self: &Arc<Self>) {
        let observer = self
            .observer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        if let Some(observer) = observer {
            observer(&Bulkhead {
                shared: Arc::clone(self),
            });
        }
    }
}

impl fmt::Debug for Bulkhead {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bulkhead")
            .field("name", &self.shared.name)
            .field("max_concurrent", &self.shared.max_concurrent)
            .field("max_queued", &self.shared.max_queued)
            .field("in_use", &self.in_use())
            .field("queued", &self.queued())
            .finish()
    }
}

/// A place in a bulkhead, given back when dropped.
#[derive(Debug)]
pub struct BulkheadPermit {
    permit: Option<OwnedSemaphorePermit>,
    shared: Arc<Shared>,
}

impl BulkheadPermit {
    fn new(permit: OwnedSemaphorePermit, shared: &Arc<Shared>) -> Self {
        shared.in_use.fetch_add(1, Ordering::Relaxed);
        shared.changed();
        Self {
            permit: Some(permit),
            shared: Arc::clone(shared),
        }
    }
}

impl Drop for BulkheadPermit {
    fn drop(&mut self) {
        drop(self.permit.take());
        self.shared.in_use.fetch_sub(1, Ordering::Relaxed);
        self.shared.changed();
    }
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

/// What [`Bulkhead::enter`] got.
#[derive(Debug)]
pub enum Entry {
    /// A place, at once.
    Held(BulkheadPermit),
    /// A slot in the queue; await it for the place.
    Queued(Queued),
}

/// A caller waiting in a bulkhead's queue: a future of its place. It holds
/// its queue slot until it resolves or is dropped.
pub struct Queued {
    waiting: Pin<Box<dyn Future<Output = Result<OwnedSemaphorePermit, AcquireError>> + Send>>,
    shared: Arc<Shared>,
    /// Whether the queue slot is still held.
    in_queue: bool,
}

impl fmt::Debug for Queued {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Queued")
            .field("bulkhead", &self.shared.name)
            .finish_non_exhaustive()
    }
}

impl Queued {
    fn leave_queue(&mut self) {
        if std::mem::take(&mut self.in_queue) {
            self.shared.queued.fetch_sub(1, Ordering::Relaxed);
            self.shared.changed();
        }
    }
}

impl Future for Queued {
    type Output = Result<BulkheadPermit, BulkheadFull>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let result = std::task::ready!(self.waiting.as_mut().poll(cx));
        self.leave_queue();
        Poll::Ready(match result {
            Ok(permit) => Ok(BulkheadPermit::new(permit, &self.shared)),
            // The semaphore is never closed.
            Err(_) => Err(Bulkhead {
                shared: Arc::clone(&self.shared),
            }
            .full()),
        })
    }
}

impl Drop for Queued {
    fn drop(&mut self) {
        self.leave_queue();
    }
}

impl Bulkhead {
    /// A bulkhead named `name` with `max_concurrent` places (at least 1)
    /// and `max_queued` queue slots.
    pub fn new(name: impl Into<String>, max_concurrent: usize, max_queued: usize) -> Self {
        let max_concurrent = max_concurrent.clamp(1, Semaphore::MAX_PERMITS);
        Self {
            shared: Arc::new(Shared {
                name: name.into(),
                places: Arc::new(Semaphore::new(max_concurrent)),
                max_concurrent,
                max_queued,
                queued: AtomicUsize::new(0),
                in_use: AtomicUsize::new(0),
                observer: Mutex::new(None),
            }),
        }
    }

    /// What it guards.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// Places taken now.
    pub fn in_use(&self) -> usize {
        self.shared.in_use.load(Ordering::Relaxed)
    }

    /// Callers waiting now.
    pub fn queued(&self) -> usize {
        self.shared.queued.load(Ordering::Relaxed)
    }

    /// The number of places.
    pub fn max_concurrent(&self) -> usize {
        self.shared.max_concurrent
    }

    /// Calls `observer` after every change of the places taken or the
    /// queue (e.g. to set gauges). Replaces an earlier observer.
    pub fn on_change(&self, observer: impl Fn(&Bulkhead) + Send + Sync + 'static) {
        *self
            .shared
            .observer
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(Arc::new(observer));
    }

    /// A place now, a slot in the queue, or [`BulkheadFull`] when the queue
    /// is full too; never waits.
    pub fn enter(&self) -> Result<Entry, BulkheadFull> {
        let shared = &self.shared;
        if let Ok(permit) = Arc::clone(&shared.places).try_acquire_owned() {
            return Ok(Entry::Held(BulkheadPermit::new(permit, shared)));
        }
        // Take a queue slot, unless there is none.
        let mut queued = shared.queued.load(Ordering::Relaxed);
        loop {
            if queued >= shared.max_queued {
                return Err(self.full());
            }
            match shared.queued.compare_exchange_weak(
                queued,
                queued + 1,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => break,
                Err(now) => queued = now,
            }
        }
        shared.changed();
        Ok(Entry::Queued(Queued {
            waiting: Box::pin(Arc::clone(&shared.places).acquire_owned()),
            shared: Arc::clone(shared),
            in_queue: true,
        }))
    }

    /// A place now, or a place after waiting in the queue, or
    /// [`BulkheadFull`] at once when the queue is full too.
    pub async fn acquire(&self) -> Result<BulkheadPermit, BulkheadFull> {
        match self.enter()? {
            Entry::Held(permit) => Ok(permit),
            Entry::Queued(queued) => queued.await,
        }
    }

    fn full(&self) -> BulkheadFull {
        BulkheadFull {
            name: self.shared.name.clone(),
            max_concurrent: self.shared.max_concurrent,
            max_queued: self.shared.max_queued,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn admits_queues_then_refuses_and_frees_in_order() {
        let bulkhead = Bulkhead::new("tool sleep", 2, 1);
        let first = bulkhead.acquire().await.unwrap();
        let second = bulkhead.acquire().await.unwrap();
        assert_eq!(bulkhead.in_use(), 2);

        // The third waits in the queue.
        let waiting = tokio::spawn({
            let bulkhead = bulkhead.clone();
            async move { bulkhead.acquire().await.map(|_| ()) }
        });
        while bulkhead.queued() == 0 {
            tokio::task::yield_now().await;
        }
        // The fourth finds the queue full.
        let refused = bulkhead.acquire().await.unwrap_err();
        assert_eq!(refused.max_concurrent, 2);
        assert!(refused.to_string().contains("tool sleep"), "{refused}");

        drop(first);
        waiting.await.unwrap().unwrap();
        assert_eq!(bulkhead.queued(), 0);
        drop(second);
        assert_eq!(bulkhead.in_use(), 0);
    }

    #[tokio::test]
    async fn entering_never_waits_and_the_observer_sees_every_change() {
        let bulkhead = Bulkhead::new("tenant:acme", 1, 1);
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = Arc::clone(&seen);
        bulkhead.on_change(move |bulkhead| {
            sink.lock()
                .unwrap()
                .push((bulkhead.in_use(), bulkhead.queued()));
        });
        let Ok(Entry::Held(held)) = bulkhead.enter() else {
            panic!("a free place");
        };
        // Queued without being polled: the ticket holds the slot.
        let Ok(Entry::Queued(queued)) = bulkhead.enter() else {
            panic!("a queue slot");
        };
        assert!(bulkhead.enter().is_err());
        // Awaited elsewhere, it gets the place once the holder leaves.
        let waiter = tokio::spawn(queued);
        drop(held);
        let place = waiter.await.unwrap().unwrap();
        drop(place);
        // A ticket dropped unawaited leaves the queue.
        let _held = bulkhead.acquire().await.unwrap();
        drop(bulkhead.enter().unwrap());
        assert_eq!(bulkhead.queued(), 0);
        assert_eq!(
            *seen.lock().unwrap(),
            [
                (1, 0), // held
                (1, 1), // queued
                (0, 1), // held given back
                (0, 0), // the waiter leaves the queue…
                (1, 0), // …and takes the place
                (0, 0), // given back
                (1, 0), // held again
                (1, 1), // a ticket…
                (1, 0), // …dropped unawaited
            ]
        );
    }

    #[tokio::test]
    async fn a_waiter_that_goes_away_leaves_the_queue() {
        let bulkhead = Bulkhead::new("agent default", 1, 1);
        let _held = bulkhead.acquire().await.unwrap();
        let waiter = bulkhead.acquire();
        let timed_out = tokio::time::timeout(std::time::Duration::from_millis(10), waiter).await;
        assert!(timed_out.is_err());
        assert_eq!(bulkhead.queued(), 0);
        // Its slot is free for the next.
        let next = tokio::spawn({
            let bulkhead = bulkhead.clone();
            async move { bulkhead.acquire().await.map(|_| ()) }
        });
        while bulkhead.queued() == 0 {
            tokio::task::yield_now().await;
        }
        next.abort();
    }
}
