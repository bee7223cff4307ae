//! Memory given back after a peak.
//!
//! glibc keeps freed memory in its arenas for reuse, so a service that
//! held many runs or large requests at once stays at its peak resident size
//! long after. Every `server.heap_trim_interval` (10 s by default) the
//! trimmer reads the heap's figures and, when much of it is free — more than
//! [`MIN_FREE_BYTES`] and more than a quarter of what is in use — asks glibc
//! to return the free pages ([`agentmesh_heap::trim`]). Under steady load the
//! free part stays small and nothing is trimmed: trimming walks every arena
//! under its lock, so it is kept for when it pays.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// Free heap below this is left for reuse.
pub const MIN_FREE_BYTES: u64 = 64 * 1024 * 1024;

/// Whether a heap in this state is worth trimming.
pub fn worth_trimming(stats: &agentmesh_heap::HeapStats) -> bool {
    stats.free_bytes > MIN_FREE_BYTES && stats.free_bytes > stats.in_use_bytes / 4
}

/// Checks the heap every `interval` until `stop` is cancelled (`interval`
/// zero: never), trimming when [`worth_trimming`].
pub fn spawn_trimmer(interval: Duration, stop: CancellationToken) {
    if interval.is_zero() || agentmesh_heap::stats().is_none() {
        return;
    }
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks.tick().await;
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = ticks.tick() => {}
            }
            let trimmed = tokio::task::spawn_blocking(|| {
                let before = agentmesh_heap::stats()?;
                if !worth_trimming(&before) {
                    return None;
                }
                agentmesh_heap::trim();
                Some((before, agentmesh_heap::stats()?))
            })
            .await;
            if let Ok(Some((before, after))) = trimmed {
                tracing::debug!(
                    free_before = before.free_bytes,
                    free_after = after.free_bytes,
                    in_use = after.in_use_bytes,
                    "gave free heap memory back to the system"
                );
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn heap(in_use_mib: u64, free_mib: u64) -> agentmesh_heap::HeapStats {
        agentmesh_heap::HeapStats {
            arena_bytes: (in_use_mib + free_mib) << 20,
            mapped_bytes: 0,
            in_use_bytes: in_use_mib << 20,
            free_bytes: free_mib << 20,
            releasable_bytes: 0,
        }
    }

    #[test]
    fn only_a_heap_that_is_mostly_free_is_trimmed() {
        // After 10,000 runs ended: most of the heap is free.
        assert!(worth_trimming(&heap(80, 1_200)));
        // Small free lists are reused, not trimmed.
        assert!(!worth_trimming(&heap(10, 40)));
        // A big busy heap with the churn of its load free.
        assert!(!worth_trimming(&heap(2_000, 300)));
        assert!(worth_trimming(&heap(2_000, 600)));
    }
}
