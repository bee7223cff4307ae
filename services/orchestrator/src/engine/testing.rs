//! Test helpers over a real (SQLite) store: an engine whose peers are not
//! reachable (a run it drives fails at its first call, unless it stays
//! queued), a stored run, and the check that every run this instance claims
//! is driven.

use std::sync::Arc;

use agentmesh_audit_client::AuditClient;
use agentmesh_audit_client::resilience::ResilienceReporter;
use agentmesh_kit::metrics::prometheus::Registry;
use agentmesh_kit::time::now_micros;
use agentmesh_proto::orchestrator::v1 as pb;

use super::Engine;
use crate::admission::Admission;
use crate::callbacks::Callbacks;
use crate::config::{Config, DEFAULT_AGENT};
use crate::metrics::{CallbackMetrics, RunMetrics};
use crate::store::{Limits, RunRow, Tenants};

/// Where nothing listens.
pub(crate) const NOWHERE: &str = "http://127.0.0.1:9";

/// `config` with unreachable peers.
pub(crate) fn config() -> Config {
    Config {
        llm_gateway_url: NOWHERE.into(),
        tool_runner_url: NOWHERE.into(),
        ..Config::default()
    }
}

/// An engine over a new database in `dir`.
pub(crate) async fn engine(dir: &tempfile::TempDir, config: Config) -> Arc<Engine> {
    let store = crate::store::testing::sqlite(dir).await;
    let admission = Admission::new(
        &config,
        None,
        ResilienceReporter::without_metrics(AuditClient::disabled("test")),
    );
    let callbacks = Callbacks::new(
        &config.callbacks,
        AuditClient::disabled("test"),
        CallbackMetrics::new(&Registry::new()).unwrap(),
    )
    .unwrap();
    Engine::new(
        Arc::new(config),
        store,
        AuditClient::disabled("test"),
        RunMetrics::new(&Registry::new(), [DEFAULT_AGENT]).unwrap(),
        &agentmesh_kit::client::Clients::default(),
        admission,
        Arc::new(callbacks),
    )
    .unwrap()
}

/// A new QUEUED run of tenant `tenant`, not stored.
pub(crate) fn run(tenant: &str) -> RunRow {
    RunRow {
        run_id: uuid::Uuid::now_v7().to_string(),
        tenant: tenant.into(),
        subject: String::new(),
        agent: DEFAULT_AGENT.into(),
        session_id: uuid::Uuid::now_v7().to_string(),
        objective: "be driven".into(),
        state: pb::RunState::Queued,
        idempotency_key: None,
        model: String::new(),
        limits: Limits {
            max_steps: 8,
            max_output_tokens: 0,
            timeout_ms: 60_000,
            max_tokens: 0,
            max_cost_micros: 0,
        },
        labels: std::collections::BTreeMap::new(),
        create_time: now_micros(),
        start_time: None,
        end_time: None,
        output: String::new(),
        error: None,
        input_tokens: 0,
        output_tokens: 0,
        steps: 0,
        tool_calls: 0,
        last_sequence: 0,
        priority: 0,
        identity: None,
        callback: None,
        parent_run_id: None,
    }
}

/// Runs stored unfinished that this instance claims and no task of it
/// drives: what a start dropped between storing and spawning left behind.
pub(crate) async fn undriven(engine: &Engine) -> Vec<RunRow> {
    let mut found = Vec::new();
    for run_id in engine
        .store()
        .claimed_by(engine.owner(), 100_000)
        .await
        .unwrap()
    {
        if engine.active(&run_id).is_some() {
            continue;
        }
        // Re-read: it may have ended since it was listed.
        let run = engine
            .store()
            .get_run(Tenants::All, &run_id)
            .await
            .unwrap()
            .unwrap();
        if !run.is_terminal() {
            found.push(run);
        }
    }
    found
}
