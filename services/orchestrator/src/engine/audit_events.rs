//! The audit events about runs: RUN_STARTED when StartRun/Run creates a
//! run (recorded while handling that request); exactly one of RUN_FINISHED,
//! RUN_FAILED or RUN_CANCELLED once the run's end is stored, by the instance
//! that stored it; ERROR for failures of this instance's infrastructure
//! (the run store).
//!
//! Tenant and subject come from the run row, not from a request: a run
//! ends outside the request that started it, or on another instance after
//! a resume. Events go to the
//! [`AuditClient`](agentmesh_audit_client::AuditClient), which sends them
//! in batches or spools them while the audit service is away.

use std::time::Duration;

use agentmesh_audit_client::code_name;
use agentmesh_kit::time::now_micros;
use agentmesh_proto::audit::v1::{
    AuditEvent, ErrorDetails, EventType, Outcome, RunDetails, audit_event::Details,
};

use super::Engine;
use super::drive::Ending;
use crate::store::RunRow;

/// What the audit log says about how a run ended.
#[derive(Debug)]
pub(super) struct RunEndAudit {
    event_type: EventType,
    /// Why and with which code, unless it succeeded.
    failure: Option<(String, &'static str)>,
}

impl RunEndAudit {
    /// The audit record of `ending`; `cancelled_by` is who cancelled the
    /// run, if it was.
    pub(super) fn of(ending: &Ending, cancelled_by: &str) -> Self {
        let (event_type, failure) = match ending {
            Ending::Finished(_) => (EventType::RunFinished, None),
            Ending::Failed(status) => (
                EventType::RunFailed,
                Some((status.message().to_owned(), code_name(status.code()))),
            ),
            Ending::Cancelled(reason) => (
                EventType::RunCancelled,
                Some((
                    cancel_audit_reason(reason, cancelled_by),
                    code_name(tonic::Code::Cancelled),
                )),
            ),
        };
        Self {
            event_type,
            failure,
        }
    }
}

impl Engine {
    /// Records that `run` was created (RUN_STARTED), while handling the
    /// request that created it.
    pub(crate) fn audit_run_started(&self, run: &RunRow) {
        self.audit
            .emit(self.run_audit_event(EventType::RunStarted, run));
    }

    /// Records how `run` ended, once its end is stored.
    pub(super) fn audit_run_end(&self, run: &RunRow, end: RunEndAudit) {
        let mut event = self.run_audit_event(end.event_type, run);
        if let Some((reason, code)) = end.failure {
            event.outcome = Outcome::Failure.into();
            event.reason = reason;
            if let Some(Details::Run(details)) = &mut event.details {
                code.clone_into(&mut details.error_code);
            }
        }
        self.audit.emit(event);
    }

    /// An audit event about `run`. Tenant and subject come from the run row:
    /// a run ends outside the request that started it (or on another
    /// instance, after a resume).
    fn run_audit_event(&self, event_type: EventType, run: &RunRow) -> AuditEvent {
        let mut event = self.audit.event(event_type);
        event.run_id.clone_from(&run.run_id);
        event.tenant.clone_from(&run.tenant);
        event.subject.clone_from(&run.subject);
        let duration = (event_type != EventType::RunStarted).then(|| {
            let start = run.start_time.unwrap_or(run.create_time);
            agentmesh_audit_client::duration(Duration::from_micros(
                u64::try_from(now_micros().saturating_sub(start)).unwrap_or(0),
            ))
        });
        event.details = Some(Details::Run(RunDetails {
            agent: run.agent.clone(),
            session_id: run.session_id.clone(),
            model: run.model.clone(),
            objective: Some(self.audit.capture(&run.objective)),
            steps: run.steps,
            input_tokens: run.input_tokens,
            output_tokens: run.output_tokens,
            estimated_cost_usd: None,
            duration,
            error_code: String::new(),
            labels: run
                .labels
                .iter()
                .map(|(key, value)| (key.clone(), value.clone()))
                .collect(),
        }));
        event
    }

    /// Records an infrastructure failure of this instance (one it logs as
    /// an error) as an ERROR audit event.
    pub(super) fn audit_error(
        &self,
        component: &str,
        code: tonic::Code,
        message: String,
        run: Option<&RunRow>,
    ) {
        let mut event = self.audit.event(EventType::Error);
        if let Some(run) = run {
            event.run_id.clone_from(&run.run_id);
            event.tenant.clone_from(&run.tenant);
            event.subject.clone_from(&run.subject);
        }
        event.outcome = Outcome::Failure.into();
        event.reason.clone_from(&message);
        event.details = Some(Details::Error(ErrorDetails {
            code: code_name(code).to_owned(),
            message,
            component: component.to_owned(),
        }));
        self.audit.emit(event);
    }
}

/// How the audit log says why a run was cancelled: "cancelled by `<who>`",
/// with the reason given, if any.
fn cancel_audit_reason(reason: &str, by: &str) -> String {
    match (reason.trim(), by) {
        (reason, _) if reason.starts_with("cancelled") => reason.to_owned(),
        ("", "") => "cancelled".to_owned(),
        ("", by) => format!("cancelled by {by}"),
        (reason, "") => format!("cancelled: {reason}"),
        (reason, by) => format!("cancelled by {by}: {reason}"),
    }
}

#[cfg(test)]
mod tests {
    use tonic::Status;

    use super::*;

    #[test]
    fn cancels_say_who_and_why() {
        assert_eq!(
            cancel_audit_reason("cancelled by ana", "ana"),
            "cancelled by ana"
        );
        assert_eq!(
            cancel_audit_reason("cancelled by request", ""),
            "cancelled by request"
        );
        assert_eq!(
            cancel_audit_reason("wrong objective", "ana"),
            "cancelled by ana: wrong objective"
        );
        assert_eq!(
            cancel_audit_reason("wrong objective", ""),
            "cancelled: wrong objective"
        );
        assert_eq!(cancel_audit_reason("", "ana"), "cancelled by ana");
        assert_eq!(cancel_audit_reason(" ", ""), "cancelled");
    }

    #[test]
    fn a_run_end_is_audited_with_its_code_and_reason() {
        let finished = RunEndAudit::of(&Ending::Finished("42".into()), "");
        assert_eq!(finished.event_type, EventType::RunFinished);
        assert!(finished.failure.is_none());

        let failed = RunEndAudit::of(&Ending::Failed(Status::deadline_exceeded("too slow")), "");
        assert_eq!(failed.event_type, EventType::RunFailed);
        assert_eq!(
            failed.failure,
            Some((
                "too slow".to_owned(),
                code_name(tonic::Code::DeadlineExceeded)
            ))
        );

        let cancelled = RunEndAudit::of(&Ending::Cancelled("wrong objective".into()), "ana");
        assert_eq!(cancelled.event_type, EventType::RunCancelled);
        assert_eq!(
            cancelled.failure,
            Some((
                "cancelled by ana: wrong objective".to_owned(),
                code_name(tonic::Code::Cancelled)
            ))
        );
    }
}
