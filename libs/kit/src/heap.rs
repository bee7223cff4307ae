//! Memory given back after a peak.
//!
//! glibc keeps freed memory in its arenas for reuse, so a service that
//! held many runs or large requests at once stays at its peak resident size
//! long after. Every `server.heap_trim_interval` (10 s by default) the
//! trimmer reads the heap's figures and, when much of it is free — more than
//! [`MIN_FREE_BYTES`] and more than a quarter of what is in use — asks glibc
//! to return the free pages ([`agentmesh_heap::trim`]). Under steady load the
//! free part stays small and nothing is trimmed: trimming walks every arena
//! under its lock, so it is kept for when it pays. glibc still counts the
//! pages it gave back as free, so after one trim the heap keeps looking
//! worth trimming; the trimmer therefore trims again only once the resident
//! size has grown by [`MIN_FREE_BYTES`] since its last trim (a new peak).

use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// Free heap below this is left for reuse.
pub const MIN_FREE_BYTES: u64 = 64 * 1024 * 1024;

/// Whether a heap in this state is worth trimming.
pub fn worth_trimming(stats: &agentmesh_heap::HeapStats) -> bool {
    stats.free_bytes > MIN_FREE_BYTES && stats.free_bytes > stats.in_use_bytes / 4
}

/// Whether the resident size grew enough since the last trim (none yet:
/// yes) for another trim to give anything back.
pub fn grown_since_trim(resident: u64, after_last_trim: Option<u64>) -> bool {
    after_last_trim.is_none_or(|after| resident > after.saturating_add(MIN_FREE_BYTES))
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
        // The resident size right after the last trim.
        let mut after_last_trim = None;
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = ticks.tick() => {}
            }
            let trimmed = tokio::task::spawn_blocking(move || {
                let before = agentmesh_heap::stats()?;
                let (resident, _) = crate::profiling::resident_bytes()?;
                if !worth_trimming(&before) || !grown_since_trim(resident, after_last_trim) {
                    return None;
                }
                agentmesh_heap::trim();
                let (resident_after, _) = crate::profiling::resident_bytes()?;
                Some((before, agentmesh_heap::stats()?, resident_after))
            })
            .await;
            if let Ok(Some((before, after, resident_after))) = trimmed {
                after_last_trim = Some(resident_after);
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

    #[test]
    fn a_trimmed_heap_is_trimmed_again_only_after_a_new_peak() {
        const MIB: u64 = 1 << 20;
        assert!(grown_since_trim(150 * MIB, None));
        // Right after a trim, and while the size holds, nothing to give back.
        assert!(!grown_since_trim(150 * MIB, Some(140 * MIB)));
        assert!(!grown_since_trim(204 * MIB, Some(140 * MIB)));
        // Grown again by more than MIN_FREE_BYTES: worth another trim.
        assert!(grown_since_trim(300 * MIB, Some(140 * MIB)));
    }
}
