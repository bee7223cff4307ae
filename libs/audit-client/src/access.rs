//! Access decisions as audit events: the auth layer of every service that
//! has a producer records its AUTHENTICATION and AUTHORIZATION decisions
//! here (already aggregated, see `agentmesh_auth::decision`). The audit
//! service, which cannot send its own decisions to itself through a
//! producer, builds the same events with [`access_event`] and appends them
//! to its log directly.

use agentmesh_auth::decision::{Decision, DecisionKind, DecisionSink};
use agentmesh_proto::audit::v1::audit_event::Details;
use agentmesh_proto::audit::v1::{AccessDetails, EventType, Outcome};

use crate::AuditClient;

impl DecisionSink for AuditClient {
    fn record(&self, decision: Decision) {
        self.emit(access_event(self.service(), decision));
    }
}

/// The audit event of a decision made by `service`'s auth layer: outcome
/// SUCCESS or DENIED, the reason of a refusal, the identity's tenant and
/// subject (empty when the caller was not identified), and the credential's
/// id and count in [`AccessDetails`] — never a secret.
pub fn access_event(service: &str, decision: Decision) -> agentmesh_proto::audit::v1::AuditEvent {
    let mut event = crate::new_event(
        service,
        match decision.kind {
            DecisionKind::Authentication => EventType::Authentication,
            DecisionKind::Authorization => EventType::Authorization,
        },
    );
    event.outcome = if decision.allowed {
        Outcome::Success
    } else {
        Outcome::Denied
    }
    .into();
    if !decision.allowed {
        event.reason = decision.reason.to_owned();
    }
    event.tenant = decision.tenant;
    event.subject = decision.subject;
    event.details = Some(Details::Access(AccessDetails {
        method: decision.method,
        mechanism: decision.mechanism.as_str().to_owned(),
        permission: decision.permission,
        resource: decision.resource,
        peer: decision.peer,
        credential_id: decision.credential_id,
        count: i32::try_from(decision.count).unwrap_or(i32::MAX),
        actor: decision.actor,
    }));
    event
}

#[cfg(test)]
mod tests {
    use agentmesh_auth::Mechanism;

    use super::*;

    #[test]
    fn a_refusal_becomes_a_denied_access_event_with_its_count() {
        let event = access_event(
            "llm-gateway",
            Decision {
                kind: DecisionKind::Authentication,
                allowed: false,
                method: "/agentmesh.llm.v1.LlmGatewayService/Generate".into(),
                mechanism: Mechanism::ApiKey,
                credential_id: "am_live_abcdefgh".into(),
                peer: "10.0.0.7".into(),
                reason: "unknown_key",
                permission: String::new(),
                resource: String::new(),
                tenant: String::new(),
                subject: String::new(),
                actor: String::new(),
                count: 42,
            },
        );
        assert_eq!(event.r#type(), EventType::Authentication);
        assert_eq!(event.outcome(), Outcome::Denied);
        assert_eq!(event.reason, "unknown_key");
        assert_eq!(event.service, "llm-gateway");
        let Some(Details::Access(access)) = event.details else {
            panic!("no access details");
        };
        assert_eq!(
            (access.count, access.credential_id.as_str()),
            (42, "am_live_abcdefgh")
        );
        assert_eq!(access.mechanism, "api_key");
    }
}
