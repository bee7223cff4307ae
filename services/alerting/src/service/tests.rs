//! What a client sees when the store fails: the shared store-error mapping
//! at the handlers, with no SQL or driver text in the message.

use std::sync::Arc;

use agentmesh_storage::{Database, StorageConfig};
use prometheus::Registry;
use tonic::Code;

use super::*;
use crate::config::Config;
use crate::dispatch::{Clock, Dispatcher, DispatcherLimits};
use crate::engine::{Engine, EngineSettings};
use crate::metrics::Metrics;
use crate::rules::Evaluator;
use crate::store::{Loaded, Store};

/// The handlers over an engine whose database was never migrated: every
/// statement fails with "no such table".
async fn service_without_tables(dir: &std::path::Path) -> AlertingServiceImpl {
    let storage = StorageConfig {
        data_dir: dir.to_owned(),
        ..StorageConfig::default()
    };
    let store = Store::new(Database::connect(&storage, "alerting").await.unwrap());
    let parts = Config::default().compile().unwrap();
    let (reports, _) = tokio::sync::mpsc::unbounded_channel();
    let dispatcher = Dispatcher::start_with(
        DispatcherLimits::default(),
        Arc::new(parts.route),
        Arc::new(parts.receivers),
        Arc::new(store.clone()),
        reports,
        String::new(),
        Clock::system(),
    );
    let engine = Engine::start(
        Evaluator::new(parts.rules, SystemTime::now(), 100),
        Loaded::default(),
        store,
        dispatcher,
        parts.inhibitor,
        EngineSettings {
            resolve_timeout: Duration::from_secs(300),
            resolved_retention: Duration::from_secs(900),
            max_alerts: 100,
        },
        Metrics::new(&Registry::new()).unwrap(),
    );
    AlertingServiceImpl::new(
        Arc::new(crate::replica::Replica::leading(engine)),
        Duration::from_secs(30),
    )
}

#[tokio::test]
async fn a_failing_database_is_not_quoted_to_the_client() {
    let dir = tempfile::tempdir().unwrap();
    let service = service_without_tables(dir.path()).await;
    let now = SystemTime::now();
    let status = service
        .create_silence(Request::new(pb::CreateSilenceRequest {
            silence: Some(pb::Silence {
                matchers: vec![pb::Matcher {
                    name: "alertname".into(),
                    value: "ToolFailing".into(),
                    r#type: pb::MatchType::Equal as i32,
                }],
                ends_at: Some((now + Duration::from_secs(3600)).into()),
                created_by: "ops@example.com".into(),
                comment: "maintenance".into(),
                ..Default::default()
            }),
        }))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Internal, "{status:?}");
    for word in [
        "silences",
        "no such table",
        "INSERT",
        "sqlite",
        "database error",
    ] {
        assert!(
            !status.message().contains(word),
            "{word:?} in the client's message: {status:?}"
        );
    }
    assert!(status.message().contains("service log"), "{status:?}");
}
