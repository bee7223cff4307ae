//! Bounds `VerifyChain`: a walk reads and hashes a whole chain, which on a
//! large log takes seconds of database reads and CPU. Unbounded, a handful
//! of concurrent calls held the database pool and both cores and slowed
//! every `Record` forty-fold.
//!
//! * At most `max_concurrent_verifications` calls walk at once, process
//!   wide, and always fewer than the database pool's connections, so
//!   writers keep a connection.
//! * A chain is walked by one call at a time: a second call for a chain
//!   being verified is refused.
//!
//! Both refusals are RESOURCE_EXHAUSTED with RetryInfo: the caller retries
//! later (a verification in progress will answer the same a moment later).
//! A call claims every chain it will walk up front, all or none, so two
//! calls never each hold half of what the other needs.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::{Code, Status};

/// The delay suggested to a refused caller.
pub(crate) const RETRY_AFTER: Duration = Duration::from_secs(2);

/// The limits, shared by every call of the service.
#[derive(Debug)]
pub(crate) struct VerifyGate {
    slots: Arc<Semaphore>,
    max: usize,
    running: Arc<Mutex<HashSet<String>>>,
}

/// A call's right to walk its chains; dropping it frees them.
#[derive(Debug)]
pub(crate) struct Pass {
    _slot: OwnedSemaphorePermit,
    chains: Vec<String>,
    running: Arc<Mutex<HashSet<String>>>,
}

impl Drop for Pass {
    fn drop(&mut self) {
        let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        for chain in &self.chains {
            running.remove(chain);
        }
    }
}

impl VerifyGate {
    /// `max_concurrent` walks at once, but at most `pool_size - 1` (and at
    /// least one).
    pub(crate) fn new(max_concurrent: usize, pool_size: usize) -> Self {
        let max = max_concurrent.min(pool_size.saturating_sub(1)).max(1);
        Self {
            slots: Arc::new(Semaphore::new(max)),
            max,
            running: Arc::new(Mutex::new(HashSet::new())),
        }
    }

    /// Claims a slot and every one of `chains`, or refuses.
    pub(crate) fn enter(&self, chains: &[String]) -> Result<Pass, Status> {
        let slot = Arc::clone(&self.slots).try_acquire_owned().map_err(|_| {
            refusal(format!(
                "{} chain verification(s) are already running, the most at once; retry in {}s",
                self.max,
                RETRY_AFTER.as_secs()
            ))
        })?;
        let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(busy) = chains.iter().find(|chain| running.contains(*chain)) {
            return Err(refusal(format!(
                "chain `{busy}` is being verified by another call; retry in {}s",
                RETRY_AFTER.as_secs()
            )));
        }
        running.extend(chains.iter().cloned());
        drop(running);
        Ok(Pass {
            _slot: slot,
            chains: chains.to_vec(),
            running: Arc::clone(&self.running),
        })
    }
}

fn refusal(message: String) -> Status {
    use tonic_types::StatusExt as _;
    Status::with_error_details(
        Code::ResourceExhausted,
        message,
        tonic_types::ErrorDetails::with_retry_info(Some(RETRY_AFTER)),
    )
}

#[cfg(test)]
mod tests {
    use tonic_types::StatusExt as _;

    use super::*;

    fn chains(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| (*n).to_owned()).collect()
    }

    fn assert_refused(result: Result<Pass, Status>, says: &str) {
        let status = result.unwrap_err();
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert!(status.message().contains(says), "{}", status.message());
        let retry = status.get_details_retry_info().unwrap();
        assert_eq!(retry.retry_delay, Some(RETRY_AFTER));
    }

    #[test]
    fn one_walk_per_chain() {
        let gate = VerifyGate::new(4, 8);
        let first = gate.enter(&chains(&["tenant:a"])).unwrap();
        assert_refused(gate.enter(&chains(&["tenant:a"])), "tenant:a");
        // All or none: b stays free when a is busy.
        assert_refused(gate.enter(&chains(&["tenant:b", "tenant:a"])), "tenant:a");
        let other = gate.enter(&chains(&["tenant:b"])).unwrap();
        drop(first);
        let again = gate.enter(&chains(&["tenant:a"])).unwrap();
        drop((other, again));
    }

    #[test]
    fn a_global_limit_below_the_pool() {
        let gate = VerifyGate::new(2, 8);
        let a = gate.enter(&chains(&["a"])).unwrap();
        let b = gate.enter(&chains(&["b"])).unwrap();
        assert_refused(gate.enter(&chains(&["c"])), "already running");
        drop(a);
        let c = gate.enter(&chains(&["c"])).unwrap();
        drop((b, c));

        // A pool of 2 leaves one connection to writers.
        let gate = VerifyGate::new(16, 2);
        let a = gate.enter(&chains(&["a"])).unwrap();
        assert_refused(gate.enter(&chains(&["b"])), "already running");
        drop(a);
        // Never zero.
        let gate = VerifyGate::new(16, 1);
        assert!(gate.enter(&chains(&["a"])).is_ok());
    }
}
