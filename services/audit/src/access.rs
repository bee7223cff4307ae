//! Whose events a caller may read and write: tenant isolation of the audit
//! trail, decided from the identity the kit's auth layer verified (never
//! from a header the caller wrote).
//!
//! Reads (`Query`, `Export`, `Subscribe`, `Report`, `VerifyChain`): the
//! handler asks [`Reader::of`] for the caller's reach, then narrows the
//! request with it before anything touches the store:
//!
//! ```text
//! identity ──▶ Reader::of ──▶ All (admin; the embedded mode)
//!                         └─▶ Tenant(t) ──▶ filter.tenants: [] → [t]; [t] → [t];
//!                                           any other tenant → PERMISSION_DENIED
//!                                           VerifyChain: "" → tenant:t only;
//!                                           another chain (or "system") → PERMISSION_DENIED
//! ```
//!
//! A non-admin identity without a tenant (a platform key: a service, an
//! operator) reads nothing: the events outside any tenant (the `system`
//! chain: failed authentications, configuration) are for `admin` only.
//!
//! Writes (`Record`, `audit:write`): [`stamp`] fills in each event's tenant
//! and subject from the identity where the event leaves them empty, and
//! refuses a batch that writes for another tenant (or, for an end user
//! calling directly, as another subject) — except from a service acting for
//! itself (trusted to set them: its events are about other callers, e.g. a
//! failed authentication of an unknown peer) and from `admin`.
//!
//! Calls that reach the handlers without a verified identity are those
//! made in-process without a host (tests): they are treated like the
//! embedded mode, whose identity holds every scope.

use agentmesh_auth::Mechanism;
use agentmesh_kit::auth::Identity;
use agentmesh_proto::audit::v1::{AuditEvent, EventFilter};
use agentmesh_storage::StoreError;
use tonic::Status;
use tonic_types::{ErrorDetails, StatusExt as _};

use crate::event::chain_of;
use crate::store::ChainHead;

/// Which events a caller may read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Reader {
    /// Every tenant's, and those outside any tenant.
    All,
    /// Only this tenant's.
    Tenant(String),
}

impl Reader {
    /// The reach of `identity` (`None`: an in-process call, see the module
    /// docs).
    pub(crate) fn of(identity: Option<&Identity>) -> Result<Self, Status> {
        let Some(identity) = identity else {
            return Ok(Self::All);
        };
        if identity.is_admin() {
            return Ok(Self::All);
        }
        if identity.tenant.is_empty() {
            return Err(Status::permission_denied(format!(
                "the credential {} names no tenant: reading the audit trail needs a tenant's credential \
                 (its own tenant's events) or the `admin` scope (every tenant's)",
                identity.credential_id
            )));
        }
        Ok(Self::Tenant(identity.tenant.clone()))
    }

    /// Narrows a request's filter (`field`, e.g. `filter`) to what the
    /// caller may read: an empty tenant list becomes the caller's tenant; a
    /// list naming another tenant is refused.
    pub(crate) fn restrict(
        &self,
        filter: &mut Option<EventFilter>,
        field: &str,
    ) -> Result<(), Status> {
        let Self::Tenant(own) = self else {
            return Ok(());
        };
        let filter = filter.get_or_insert_with(EventFilter::default);
        if let Some((index, other)) = filter
            .tenants
            .iter()
            .enumerate()
            .find(|(_, tenant)| *tenant != own)
        {
            return Err(denied(
                format!("{field}.tenants[{index}]"),
                format!(
                    "names tenant {other:?}: this credential reads only the events of tenant {own:?} \
                     (reading other tenants needs the `admin` scope)"
                ),
            ));
        }
        filter.tenants = vec![own.clone()];
        Ok(())
    }

    /// The chains a `VerifyChain` for `requested` ("" = every chain the
    /// caller may read) walks, out of every stored chain; NOT_FOUND for a
    /// chain the caller may read that has no events.
    pub(crate) fn chains(
        &self,
        requested: &str,
        stored: Result<Vec<ChainHead>, StoreError>,
    ) -> Result<Vec<ChainHead>, Status> {
        let wanted = match self {
            Self::All => (!requested.is_empty()).then(|| requested.to_owned()),
            Self::Tenant(own) => {
                let own_chain = chain_of(own);
                if !requested.is_empty() && requested != own_chain {
                    // Refused whatever is stored: whether another tenant's
                    // chain exists is not this caller's to learn.
                    return Err(denied(
                        "chain".to_owned(),
                        format!(
                            "this credential verifies only the chain of tenant {own:?} ({own_chain:?}); \
                             other chains need the `admin` scope"
                        ),
                    ));
                }
                if requested.is_empty() {
                    // Every chain the caller may read: its own, or none yet.
                    let stored = stored.map_err(Status::from)?;
                    return Ok(stored
                        .into_iter()
                        .filter(|c| c.chain == own_chain)
                        .collect());
                }
                Some(own_chain)
            }
        };
        let stored = stored.map_err(Status::from)?;
        let Some(wanted) = wanted else {
            return Ok(stored);
        };
        let found: Vec<ChainHead> = stored.into_iter().filter(|c| c.chain == wanted).collect();
        if found.is_empty() {
            return Err(Status::not_found(format!(
                "no chain {}: chains are \"system\" and \"tenant:<name>\" for tenants that have events",
                agentmesh_kit::status::quote(&wanted)
            )));
        }
        Ok(found)
    }
}

/// Fills in the tenant and subject of recorded events from the identity
/// that records them, and refuses events written for someone else (see the
/// module docs). Nothing is changed in the embedded mode, nor for a service
/// recording for itself.
pub(crate) fn stamp(identity: Option<&Identity>, events: &mut [AuditEvent]) -> Result<(), Status> {
    let Some(identity) = identity else {
        return Ok(());
    };
    if identity.mechanism == Mechanism::None || identity.is_service() {
        return Ok(());
    }
    let admin = identity.is_admin();
    // A service of the mesh acting for the end user is trusted to name who
    // acted (e.g. the run's subject); an end user calling directly is not.
    let subject_fixed = !admin && identity.actor.is_none();
    for (index, event) in events.iter_mut().enumerate() {
        if event.tenant.is_empty() {
            event.tenant.clone_from(&identity.tenant);
        } else if event.tenant != identity.tenant && !admin {
            return Err(denied(
                format!("events[{index}].tenant"),
                format!(
                    "is {:?}, but this call records for tenant {:?}: events of another tenant are recorded \
                     only by a service acting for itself or with the `admin` scope",
                    event.tenant, identity.tenant
                ),
            ));
        }
        if event.subject.is_empty() {
            event.subject.clone_from(&identity.subject);
        } else if subject_fixed && event.subject != identity.subject {
            return Err(denied(
                format!("events[{index}].subject"),
                format!(
                    "is {:?}, but the caller is {:?}: a credential records events only as its own subject",
                    event.subject, identity.subject
                ),
            ));
        }
    }
    Ok(())
}

/// PERMISSION_DENIED naming the field, with a BadRequest detail like the
/// service's INVALID_ARGUMENT answers.
fn denied(field: String, problem: String) -> Status {
    let message = format!("{field} {problem}");
    let mut details = ErrorDetails::new();
    details.add_bad_request_violation(field, problem);
    Status::with_error_details(tonic::Code::PermissionDenied, message, details)
}

#[cfg(test)]
mod tests;
