//! The tenant rules on their own: who reads what, which chains a caller
//! verifies, what Record stamps and refuses.

use agentmesh_auth::identity::Actor;
use agentmesh_kit::auth::Scope;
use agentmesh_proto::audit::v1::EventType;
use tonic::Code;

use super::*;

fn key(tenant: &str, subject: &str, scopes: &[Scope]) -> Identity {
    let mut identity = Identity::unauthenticated(tenant, subject);
    identity.scopes = scopes.iter().copied().collect();
    identity.mechanism = Mechanism::ApiKey;
    identity.credential_id = format!("am_test_{subject}");
    identity
}

fn head(chain: &str) -> ChainHead {
    ChainHead {
        chain: chain.to_owned(),
        head_seq: 1,
        head_hash: String::new(),
        anchor_seq: 0,
        anchor_hash: String::new(),
    }
}

fn stored() -> Result<Vec<ChainHead>, StoreError> {
    Ok(vec![
        head("system"),
        head("tenant:acme"),
        head("tenant:globex"),
    ])
}

fn names(chains: &[ChainHead]) -> Vec<&str> {
    chains.iter().map(|c| c.chain.as_str()).collect()
}

#[test]
fn readers_are_admins_tenants_or_refused() {
    let acme = key("acme", "alice", &[Scope::AuditRead]);
    assert_eq!(
        Reader::of(Some(&acme)).unwrap(),
        Reader::Tenant("acme".into())
    );
    let admin = key("", "ops", &[Scope::Admin]);
    assert_eq!(Reader::of(Some(&admin)).unwrap(), Reader::All);
    assert_eq!(Reader::of(None).unwrap(), Reader::All);
    // The embedded mode holds every scope: everything, as before.
    let embedded = Identity::unauthenticated("acme", "");
    assert_eq!(Reader::of(Some(&embedded)).unwrap(), Reader::All);
    let platform = key("", "svc", &[Scope::AuditRead, Scope::Service]);
    let refused = Reader::of(Some(&platform)).unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
    assert!(refused.message().contains("admin"), "{refused:?}");
}

#[test]
fn a_tenant_filter_is_narrowed_or_refused() {
    let reader = Reader::Tenant("acme".into());
    let mut none = None;
    reader.restrict(&mut none, "filter").unwrap();
    assert_eq!(none.unwrap().tenants, ["acme"]);
    let mut own = Some(EventFilter {
        tenants: vec!["acme".into(), "acme".into()],
        ..Default::default()
    });
    reader.restrict(&mut own, "filter").unwrap();
    assert_eq!(own.unwrap().tenants, ["acme"]);
    let mut other = Some(EventFilter {
        tenants: vec!["acme".into(), "globex".into()],
        ..Default::default()
    });
    let refused = reader.restrict(&mut other, "filter").unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
    assert!(
        refused.message().contains("filter.tenants[1]"),
        "{refused:?}"
    );
    let mut any = Some(EventFilter {
        tenants: vec!["globex".into()],
        ..Default::default()
    });
    Reader::All.restrict(&mut any, "filter").unwrap();
    assert_eq!(any.unwrap().tenants, ["globex"]);
}

#[test]
fn a_tenant_verifies_only_its_own_chain() {
    let acme = Reader::Tenant("acme".into());
    assert_eq!(names(&acme.chains("", stored()).unwrap()), ["tenant:acme"]);
    assert_eq!(
        names(&acme.chains("tenant:acme", stored()).unwrap()),
        ["tenant:acme"]
    );
    for other in ["tenant:globex", "system", "tenant:nobody"] {
        let refused = acme.chains(other, stored()).unwrap_err();
        assert_eq!(refused.code(), Code::PermissionDenied, "{other}");
    }
    // No events yet: nothing to verify, not an error.
    let initech = Reader::Tenant("initech".into());
    assert!(initech.chains("", stored()).unwrap().is_empty());
    assert_eq!(
        initech
            .chains("tenant:initech", stored())
            .unwrap_err()
            .code(),
        Code::NotFound
    );
    assert_eq!(Reader::All.chains("", stored()).unwrap().len(), 3);
    assert_eq!(
        Reader::All
            .chains("tenant:nobody", stored())
            .unwrap_err()
            .code(),
        Code::NotFound
    );
}

fn event(tenant: &str, subject: &str) -> AuditEvent {
    AuditEvent {
        event_id: "e".into(),
        r#type: EventType::ToolCall as i32,
        tenant: tenant.into(),
        subject: subject.into(),
        ..Default::default()
    }
}

#[test]
fn an_end_user_records_only_for_itself() {
    let alice = key("acme", "alice", &[Scope::AuditWrite]);
    let mut events = vec![event("", ""), event("acme", "alice")];
    stamp(Some(&alice), &mut events).unwrap();
    assert_eq!(
        (events[0].tenant.as_str(), events[0].subject.as_str()),
        ("acme", "alice")
    );
    let mut forged = vec![event("", ""), event("globex", "")];
    let refused = stamp(Some(&alice), &mut forged).unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
    assert!(
        refused.message().contains("events[1].tenant"),
        "{refused:?}"
    );
    let mut as_bob = vec![event("acme", "bob")];
    let refused = stamp(Some(&alice), &mut as_bob).unwrap_err();
    assert!(
        refused.message().contains("events[0].subject"),
        "{refused:?}"
    );
}

#[test]
fn a_service_acting_for_a_user_keeps_the_users_tenant() {
    let mut alice = key("acme", "alice", &[Scope::RunsWrite]);
    alice.actor = Some(Actor {
        credential_id: "am_test_orch".into(),
        subject: "orchestrator".into(),
        scopes: [Scope::Service, Scope::AuditWrite].into_iter().collect(),
        mechanism: Mechanism::ApiKey,
    });
    let mut events = vec![event("", ""), event("acme", "run-owner")];
    stamp(Some(&alice), &mut events).unwrap();
    assert_eq!(events[0].tenant, "acme");
    assert_eq!(events[0].subject, "alice");
    assert_eq!(
        events[1].subject, "run-owner",
        "the service names who acted"
    );
    let mut other = vec![event("globex", "")];
    assert_eq!(
        stamp(Some(&alice), &mut other).unwrap_err().code(),
        Code::PermissionDenied
    );
}

#[test]
fn services_for_themselves_admins_and_the_embedded_mode_write_as_they_say() {
    let service = key("", "tool-runner", &[Scope::Service, Scope::AuditWrite]);
    let mut events = vec![event("", ""), event("globex", "mallory")];
    stamp(Some(&service), &mut events).unwrap();
    assert_eq!(events[0], event("", ""), "outside any tenant stays so");
    assert_eq!(events[1], event("globex", "mallory"));
    let admin = key("", "ops", &[Scope::Admin]);
    let mut events = vec![event("globex", "someone")];
    stamp(Some(&admin), &mut events).unwrap();
    assert_eq!(events[0], event("globex", "someone"));
    let embedded = Identity::unauthenticated("acme", "me");
    let mut events = vec![event("", ""), event("globex", "")];
    stamp(Some(&embedded), &mut events).unwrap();
    assert_eq!(events[0], event("", ""), "unchanged without auth");
    stamp(None, &mut events).unwrap();
}
