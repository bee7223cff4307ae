//! Access decisions for the audit trail, aggregated so that a flood of bad
//! credentials cannot flood the append-only log.
//!
//! The first failure of a credential from a peer (or the first denial of a
//! credential on a method) in an interval is recorded at once; the ones that
//! follow in the same interval are counted and recorded as one decision with
//! their count when the interval ends. So a brute-force burst costs at most
//! two audit events per credential, peer and interval, and still carries
//! the true number. Successes are recorded on a credential's first use in
//! each interval (or not at all, as configured).
//!
//! The kit hands the decisions to a [`DecisionSink`]: the service's audit
//! producer.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use crate::config::AuditSuccesses;
use crate::identity::Mechanism;

/// Pending aggregations kept before further ones are folded into one.
const MAX_PENDING: usize = 10_000;

/// Which check decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DecisionKind {
    /// Who the caller is.
    Authentication,
    /// Whether the caller may do this.
    Authorization,
}

/// One decision, or several alike (`count`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Which check.
    pub kind: DecisionKind,
    /// Whether the call went on.
    pub allowed: bool,
    /// The gRPC method (`/package.Service/Method`).
    pub method: String,
    /// How the caller authenticated (or tried to).
    pub mechanism: Mechanism,
    /// The credential's id, never the secret; "" when none was presented.
    pub credential_id: String,
    /// The peer's address.
    pub peer: String,
    /// Why (`ok`, `missing`, `unknown_key`, `missing_scope`, …).
    pub reason: &'static str,
    /// The scope or permission checked (authorization).
    pub permission: String,
    /// What was refused, when a handler checked an allow-list (the agent,
    /// route or tool); "" otherwise.
    pub resource: String,
    /// The identity's tenant, when known.
    pub tenant: String,
    /// The identity's subject, when known.
    pub subject: String,
    /// The service of the mesh that made the call for the subject, if one
    /// did (its subject, e.g. `orchestrator`); "" otherwise.
    pub actor: String,
    /// How many calls this decision stands for.
    pub count: u32,
}

/// Where decisions go: the service's audit producer.
pub trait DecisionSink: Send + Sync + std::fmt::Debug {
    /// Records one decision; must not block (queue it).
    fn record(&self, decision: Decision);
}

/// A sink that drops everything (services without an audit producer).
#[derive(Debug, Clone, Copy, Default)]
pub struct DiscardDecisions;

impl DecisionSink for DiscardDecisions {
    fn record(&self, _decision: Decision) {}
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    kind: DecisionKind,
    credential_id: String,
    /// The peer (authentication) or the method (authorization).
    place: String,
}

#[derive(Debug)]
struct Pending {
    latest: Decision,
    /// Decisions since the last one recorded.
    unrecorded: u32,
}

#[derive(Debug, Default)]
struct State {
    refusals: HashMap<Key, Pending>,
    used: std::collections::HashSet<String>,
}

/// Aggregates decisions and hands them to a sink.
#[derive(Debug)]
pub struct DecisionLog {
    sink: Arc<dyn DecisionSink>,
    successes: AuditSuccesses,
    state: Mutex<State>,
}

impl DecisionLog {
    /// A log recording into `sink`.
    pub fn new(sink: Arc<dyn DecisionSink>, successes: AuditSuccesses) -> Self {
        Self {
            sink,
            successes,
            state: Mutex::new(State::default()),
        }
    }

    /// Records an allowed call: the first use of its credential in the
    /// interval, if successes are audited.
    pub fn allowed(&self, decision: impl FnOnce() -> Decision, credential_id: &str) {
        if self.successes == AuditSuccesses::Never {
            return;
        }
        let first = {
            let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            state.used.len() < MAX_PENDING && state.used.insert(credential_id.to_owned())
        };
        if first {
            self.sink.record(decision());
        }
    }

    /// Records a refusal: at once if it is the first of its kind in the
    /// interval, else counted towards the next flush.
    pub fn refused(&self, decision: Decision) {
        let place = match decision.kind {
            DecisionKind::Authentication => decision.peer.clone(),
            DecisionKind::Authorization => decision.method.clone(),
        };
        let mut key = Key {
            kind: decision.kind,
            credential_id: decision.credential_id.clone(),
            place,
        };
        let first = {
            let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            if state.refusals.len() >= MAX_PENDING && !state.refusals.contains_key(&key) {
                // Too many distinct refusals at once: fold the rest into one.
                key = Key {
                    kind: decision.kind,
                    credential_id: "(many)".to_owned(),
                    place: "(many)".to_owned(),
                };
            }
            match state.refusals.get_mut(&key) {
                Some(pending) => {
                    pending.unrecorded = pending.unrecorded.saturating_add(decision.count);
                    pending.latest = decision.clone();
                    false
                }
                None => {
                    state.refusals.insert(
                        key,
                        Pending {
                            latest: decision.clone(),
                            unrecorded: 0,
                        },
                    );
                    true
                }
            }
        };
        if first {
            self.sink.record(decision);
        }
    }

    /// Ends the interval: records the counted refusals and forgets which
    /// credentials were used.
    pub fn flush(&self) {
        let pending = {
            let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            state.used.clear();
            std::mem::take(&mut state.refusals)
        };
        for (_, pending) in pending {
            if pending.unrecorded > 0 {
                self.sink.record(Decision {
                    count: pending.unrecorded,
                    ..pending.latest
                });
            }
        }
    }

    /// Flushes every `interval` until the returned task is aborted.
    pub fn spawn_flush(self: &Arc<Self>, interval: Duration) -> tokio::task::JoinHandle<()> {
        let log = Arc::clone(self);
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(interval);
            ticks.tick().await;
            loop {
                ticks.tick().await;
                log.flush();
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Default)]
    struct Collect(Mutex<Vec<Decision>>);

    impl DecisionSink for Collect {
        fn record(&self, decision: Decision) {
            self.0.lock().unwrap().push(decision);
        }
    }

    fn failure(credential: &str, peer: &str) -> Decision {
        Decision {
            kind: DecisionKind::Authentication,
            allowed: false,
            method: "/agentmesh.audit.v1.AuditService/Query".into(),
            mechanism: Mechanism::ApiKey,
            credential_id: credential.into(),
            peer: peer.into(),
            reason: "unknown_key",
            permission: String::new(),
            resource: String::new(),
            tenant: String::new(),
            subject: String::new(),
            actor: String::new(),
            count: 1,
        }
    }

    #[test]
    fn a_burst_of_failures_is_two_events_carrying_the_true_count() {
        let sink = Arc::new(Collect::default());
        let log = DecisionLog::new(sink.clone(), AuditSuccesses::FirstUse);
        for _ in 0..500 {
            log.refused(failure("am_live_aaaaaaaa", "10.0.0.1"));
        }
        log.refused(failure("am_live_bbbbbbbb", "10.0.0.1"));
        assert_eq!(
            sink.0.lock().unwrap().len(),
            2,
            "the first of each is recorded at once"
        );
        log.flush();
        let recorded = sink.0.lock().unwrap().clone();
        assert_eq!(recorded.len(), 3);
        let total: u32 = recorded
            .iter()
            .filter(|decision| decision.credential_id == "am_live_aaaaaaaa")
            .map(|decision| decision.count)
            .sum();
        assert_eq!(total, 500);
        // A new interval records the first at once again.
        log.refused(failure("am_live_aaaaaaaa", "10.0.0.1"));
        assert_eq!(sink.0.lock().unwrap().len(), 4);
    }

    #[test]
    fn successes_are_recorded_on_first_use_per_interval() {
        let sink = Arc::new(Collect::default());
        let log = DecisionLog::new(sink.clone(), AuditSuccesses::FirstUse);
        let success = || Decision {
            allowed: true,
            reason: "ok",
            ..failure("am_live_aaaaaaaa", "10.0.0.1")
        };
        for _ in 0..10 {
            log.allowed(success, "am_live_aaaaaaaa");
        }
        assert_eq!(sink.0.lock().unwrap().len(), 1);
        log.flush();
        log.allowed(success, "am_live_aaaaaaaa");
        assert_eq!(sink.0.lock().unwrap().len(), 2);
        let quiet = DecisionLog::new(sink.clone(), AuditSuccesses::Never);
        quiet.allowed(success, "am_live_cccccccc");
        assert_eq!(sink.0.lock().unwrap().len(), 2);
    }
}
