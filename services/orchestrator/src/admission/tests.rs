use agentmesh_audit_client::AuditClient;
use tonic_types::StatusExt as _;

use super::*;
use crate::config::{AgentProfile, DEFAULT_AGENT};

const METHOD: &str = "/agentmesh.orchestrator.v1.OrchestratorService/StartRun";
const PATIENCE: Duration = Duration::from_secs(5);

fn config(running: usize, per_tenant: usize, queued: usize, per_tenant_queued: usize) -> Config {
    Config {
        max_concurrent_runs: running,
        max_concurrent_runs_per_tenant: per_tenant,
        max_queued_runs: queued,
        max_queued_runs_per_tenant: per_tenant_queued,
        ..Config::default()
    }
}

fn admission_of(config: &Config, registry: Option<&Registry>) -> Admission {
    Admission::new(
        config,
        registry,
        ResilienceReporter::without_metrics(AuditClient::disabled("test")),
    )
}

fn admission(per_tenant: usize, queued: usize, agent: Option<(usize, usize)>) -> Admission {
    let mut config = config(64, per_tenant, 1024, queued);
    if let Some((max, max_queued)) = agent {
        config.agents.insert(
            "limited".to_owned(),
            AgentProfile {
                max_concurrent_runs: max,
                max_queued_runs: max_queued,
                ..AgentProfile::default()
            },
        );
    }
    admission_of(&config, None)
}

async fn granted(places: &mut Places) {
    tokio::time::timeout(PATIENCE, places.acquire())
        .await
        .expect("given its place");
}

/// Whether `places` gets its place without anything else happening.
async fn gets_place_now(places: &mut Places) -> bool {
    tokio::time::timeout(Duration::from_millis(20), places.acquire())
        .await
        .is_ok()
}

#[tokio::test]
async fn a_tenant_gets_its_share_then_its_queue_then_a_refusal() {
    let admission = admission(1, 1, None);
    let first = admission.admit("a", DEFAULT_AGENT, METHOD).unwrap();
    assert!(first.held());
    let mut second = admission.admit("a", DEFAULT_AGENT, METHOD).unwrap();
    assert!(!second.held());
    let refused = admission.admit("a", DEFAULT_AGENT, METHOD).unwrap_err();
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
    assert!(refused.message().contains("tenant \"a\""), "{refused:?}");
    assert!(
        refused
            .message()
            .contains("max_concurrent_runs_per_tenant = 1"),
        "{refused:?}"
    );
    assert_eq!(
        refused.get_details_retry_info().and_then(|r| r.retry_delay),
        Some(RETRY_AFTER)
    );
    // Another tenant is not affected; calls without a tenant share one.
    assert!(admission.admit("b", DEFAULT_AGENT, METHOD).unwrap().held());
    assert!(admission.admit("", DEFAULT_AGENT, METHOD).unwrap().held());
    drop(first);
    granted(&mut second).await;
    assert!(second.held());
}

#[tokio::test]
async fn a_dropped_queued_run_leaves_the_queue() {
    let admission = admission(1, 1, None);
    let _running = admission.admit("a", DEFAULT_AGENT, METHOD).unwrap();
    let queued = admission.admit("a", DEFAULT_AGENT, METHOD).unwrap();
    drop(queued);
    let again = admission.admit("a", DEFAULT_AGENT, METHOD).unwrap();
    assert!(!again.held());
    assert_eq!(admission.usage(), (1, 1));
}

#[tokio::test]
async fn a_run_granted_after_its_wait_was_dropped_gives_its_place_back() {
    let admission = admission(1, 1, None);
    let running = admission.admit("a", DEFAULT_AGENT, METHOD).unwrap();
    let mut queued = admission.admit("a", DEFAULT_AGENT, METHOD).unwrap();
    // Its task stopped waiting (a cancel raced the grant) ...
    assert!(!gets_place_now(&mut queued).await);
    drop(running);
    // ... then the grant came; dropping the places gives it back.
    assert_eq!(admission.usage(), (1, 0));
    drop(queued);
    assert_eq!(admission.usage(), (0, 0));
    assert_eq!(admission.tenants(), 0);
}

/// One tenant's burst does not starve the others: a place that frees goes
/// to the tenant holding the fewest, not to the one that queued first.
#[tokio::test]
async fn places_go_to_the_tenant_holding_fewest_not_the_first_queued() {
    let admission = admission_of(&config(3, 2, 100, 50), None);
    let mut a_running: Vec<Places> = (0..2)
        .map(|_| admission.admit("a", DEFAULT_AGENT, METHOD).unwrap())
        .collect();
    let b_running = admission.admit("b", DEFAULT_AGENT, METHOD).unwrap();
    assert!(b_running.held());
    // The instance is full; a's burst queues first, then c, then b.
    let mut a_queue: Vec<Places> = (0..10)
        .map(|_| admission.admit("a", DEFAULT_AGENT, METHOD).unwrap())
        .collect();
    let mut c = admission.admit("c", DEFAULT_AGENT, METHOD).unwrap();
    let mut b = admission.admit("b", DEFAULT_AGENT, METHOD).unwrap();
    assert_eq!(admission.usage(), (3, 12));
    // One of a's ends: c (holding none) goes, not a's next.
    a_running.pop();
    granted(&mut c).await;
    assert!(!gets_place_now(&mut a_queue[0]).await);
    assert!(!gets_place_now(&mut b).await);
    // b's ends: b (now holding none) goes before a (holding one).
    drop(b_running);
    granted(&mut b).await;
    assert!(!gets_place_now(&mut a_queue[0]).await);
    // c's ends: a's runs, in order.
    drop(c);
    granted(&mut a_queue[0]).await;
    assert!(!gets_place_now(&mut a_queue[1]).await);
}

/// Within a tenant, a higher priority goes first, then the older run; a
/// tenant's high priorities do not jump the turn of another tenant.
#[tokio::test]
async fn a_tenants_runs_go_by_priority_then_age_and_tenants_still_take_turns() {
    let admission = admission_of(&config(2, 2, 100, 50), None);
    let a_running = admission.admit("a", DEFAULT_AGENT, METHOD).unwrap();
    let b_running = admission.admit("b", DEFAULT_AGENT, METHOD).unwrap();
    let mut low = admission.admit_at("a", DEFAULT_AGENT, METHOD, -5).unwrap();
    let mut normal = admission.admit_at("a", DEFAULT_AGENT, METHOD, 0).unwrap();
    let mut urgent = admission.admit_at("a", DEFAULT_AGENT, METHOD, 50).unwrap();
    let mut urgent_later = admission.admit_at("a", DEFAULT_AGENT, METHOD, 50).unwrap();
    let mut b_low = admission
        .admit_at("b", DEFAULT_AGENT, METHOD, -100)
        .unwrap();
    // a's place frees: a's most urgent, oldest first.
    drop(a_running);
    granted(&mut urgent).await;
    assert!(!gets_place_now(&mut urgent_later).await);
    // b's frees: b holds none now, so b's run goes despite its priority.
    drop(b_running);
    granted(&mut b_low).await;
    assert!(!gets_place_now(&mut urgent_later).await);
    drop(urgent);
    granted(&mut urgent_later).await;
    drop(urgent_later);
    granted(&mut normal).await;
    assert!(!gets_place_now(&mut low).await);
    drop(normal);
    granted(&mut low).await;
    // A resumed run keeps its priority.
    let mut resumed = admission.later("a", DEFAULT_AGENT, 10);
    let mut queued = admission.admit_at("a", DEFAULT_AGENT, METHOD, 0).unwrap();
    assert!(!gets_place_now(&mut resumed).await);
    drop(low);
    granted(&mut resumed).await;
    assert!(!gets_place_now(&mut queued).await);
}

#[tokio::test]
async fn the_instance_cap_holds_across_tenants_and_its_queue_is_bounded() {
    let admission = admission_of(&config(3, 2, 2, 10), None);
    let held: Vec<Places> = ["a", "b", "c"]
        .into_iter()
        .map(|t| admission.admit(t, DEFAULT_AGENT, METHOD).unwrap())
        .collect();
    assert!(held.iter().all(Places::held));
    let queued: Vec<Places> = ["d", "e"]
        .into_iter()
        .map(|t| admission.admit(t, DEFAULT_AGENT, METHOD).unwrap())
        .collect();
    assert!(queued.iter().all(|p| !p.held()));
    let refused = admission.admit("f", DEFAULT_AGENT, METHOD).unwrap_err();
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
    assert!(
        refused.message().contains("max_queued_runs = 2"),
        "{refused:?}"
    );
    assert_eq!(
        refused.get_details_retry_info().and_then(|r| r.retry_delay),
        Some(INSTANCE_RETRY_AFTER)
    );
    assert_eq!(admission.usage(), (3, 2));
}

#[tokio::test]
async fn a_profile_limit_applies_across_tenants_without_blocking_others() {
    let admission = admission(4, 4, Some((1, 1)));
    let running = admission.admit("a", "limited", METHOD).unwrap();
    assert!(running.held());
    let mut waiting = admission.admit("b", "limited", METHOD).unwrap();
    assert!(!waiting.held());
    let refused = admission.admit("c", "limited", METHOD).unwrap_err();
    assert!(
        refused
            .message()
            .contains("agents.limited.max_concurrent_runs = 1"),
        "{refused:?}"
    );
    // Tenant b's run of another profile is not held up by its first.
    assert!(admission.admit("b", DEFAULT_AGENT, METHOD).unwrap().held());
    drop(running);
    granted(&mut waiting).await;
}

#[tokio::test]
async fn resumed_runs_wait_beyond_the_bounds_rather_than_being_refused() {
    let admission = admission(1, 0, None);
    let running = admission.admit("a", DEFAULT_AGENT, METHOD).unwrap();
    assert!(admission.admit("a", DEFAULT_AGENT, METHOD).is_err());
    let mut resumed = admission.later("a", DEFAULT_AGENT, 0);
    assert!(resumed.deadline().is_none());
    assert!(!gets_place_now(&mut resumed).await);
    drop(running);
    granted(&mut resumed).await;
}

#[tokio::test]
async fn a_queued_new_run_has_a_deadline_and_a_clear_status_when_it_passes() {
    let admission = admission_of(
        &Config {
            max_queue_wait: Duration::from_secs(30),
            ..config(1, 1, 10, 10)
        },
        None,
    );
    let running = admission.admit("a", DEFAULT_AGENT, METHOD).unwrap();
    assert!(running.deadline().is_none());
    let queued = admission.admit("a", DEFAULT_AGENT, METHOD).unwrap();
    assert!(queued.deadline().is_some());
    let status = queued.timed_out();
    assert_eq!(status.code(), tonic::Code::ResourceExhausted);
    assert!(status.message().contains("max_queue_wait"), "{status:?}");
}

#[tokio::test]
async fn tenants_without_runs_are_forgotten() {
    let admission = admission(1, 1, None);
    let held = admission.admit("busy", DEFAULT_AGENT, METHOD).unwrap();
    for tenant in 0..2000 {
        drop(
            admission
                .admit(&format!("t{tenant}"), DEFAULT_AGENT, METHOD)
                .unwrap(),
        );
    }
    assert_eq!(admission.tenants(), 1);
    assert!(
        !admission
            .admit("busy", DEFAULT_AGENT, METHOD)
            .unwrap()
            .held()
    );
    drop(held);
}

/// The registry's text.
fn exported(registry: &Registry) -> String {
    agentmesh_kit::metrics::prometheus::TextEncoder::new()
        .encode_to_string(&registry.gather())
        .unwrap()
}

fn series(text: &str) -> usize {
    text.lines()
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .count()
}

/// Request values never become label values: 10,000 new tenants (running,
/// queued, refused) add no series; configured tenants have their own, the
/// others count under `other`, and the totals agree.
#[tokio::test]
async fn ten_thousand_new_tenants_add_no_series() {
    let registry = Registry::new();
    let config = Config {
        metric_tenants: vec!["acme".to_owned()],
        ..config(64, 1, 100, 1)
    };
    let admission = admission_of(&config, Some(&registry));
    let acme = admission.admit("acme", DEFAULT_AGENT, METHOD).unwrap();
    let before = exported(&registry);
    let mut kept = Vec::new();
    for tenant in 0..10_000 {
        let tenant = format!("tenant-{tenant}");
        let Ok(place) = admission.admit(&tenant, DEFAULT_AGENT, METHOD) else {
            continue;
        };
        if tenant.ends_with('7') {
            // Some stay: running, queued, and refused beyond.
            kept.push(place);
            if let Ok(queued) = admission.admit(&tenant, DEFAULT_AGENT, METHOD) {
                kept.push(queued);
            }
            let _ = admission.admit(&tenant, DEFAULT_AGENT, METHOD);
        }
    }
    let after = exported(&registry);
    assert_eq!(series(&after), series(&before), "{after}");
    assert!(!after.contains("tenant-"), "{after}");
    let (running, queued) = admission.usage();
    for line in [
        format!("agentmesh_admission_in_use {running}"),
        format!("agentmesh_admission_queue_depth {queued}"),
        r#"agentmesh_admission_tenant_in_use{tenant="acme"} 1"#.to_owned(),
        format!(
            r#"agentmesh_admission_tenant_in_use{{tenant="other"}} {}"#,
            running - 1
        ),
        format!(r#"agentmesh_admission_tenant_queue_depth{{tenant="other"}} {queued}"#),
    ] {
        assert!(after.contains(&line), "{line} missing in\n{after}");
    }
    assert!(queued > 0 && running > 1, "{running} {queued}");
    for reason in ["instance_queue_full", "tenant_queue_full"] {
        let counter =
            format!(r#"agentmesh_admission_rejected_total{{reason="{reason}",tenant="other"}} "#);
        assert!(
            after
                .lines()
                .any(|line| line.starts_with(&counter) && !line.ends_with(" 0")),
            "{counter} in\n{after}"
        );
    }
    drop(kept);
    drop(acme);
    let empty = exported(&registry);
    assert!(empty.contains("agentmesh_admission_in_use 0"), "{empty}");
    assert!(
        empty.contains("agentmesh_admission_queue_depth 0"),
        "{empty}"
    );
}
