//! Each service started in-process on ephemeral loopback ports, checked
//! through real tonic clients: health, reflection, answers before any
//! dependency is reachable, metrics, metadata and the drain.

use std::time::Duration;

use agentmesh_proto::{alerting, audit};
use agentmesh_tests::{
    InProcess, SERVICES, health_status, http_get, reflected_services, wait_serving, within,
};
use tonic_health::pb::health_check_response::ServingStatus;

#[tokio::test]
async fn every_service_serves_health_and_reflection() {
    for (name, grpc_name) in SERVICES {
        let service = InProcess::start(name).await;
        wait_serving(service.channel(), "").await;
        assert_eq!(
            health_status(service.channel(), grpc_name).await.unwrap(),
            ServingStatus::Serving,
            "{name}"
        );
        // An unknown name is NOT_FOUND, as the health protocol says.
        let unknown = health_status(service.channel(), "no.such.Service")
            .await
            .unwrap_err();
        assert_eq!(unknown.code(), tonic::Code::NotFound);

        let listed = reflected_services(service.channel()).await;
        for expected in [
            grpc_name,
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection",
        ] {
            assert!(
                listed.iter().any(|s| s == expected),
                "{name}: {expected} missing from {listed:?}"
            );
        }
        // Only what this process serves: no other agentmesh service.
        let others = listed
            .iter()
            .filter(|s| s.starts_with("agentmesh.") && *s != grpc_name)
            .count();
        assert_eq!(others, 0, "{name} lists {listed:?}");

        let (status, metrics) = http_get(service.admin, "/metrics").await;
        assert_eq!(status, 200);
        assert!(metrics.contains("grpc_server_handled_total{"), "{metrics}");
        assert!(metrics.contains("grpc_method=\"Check\""), "{metrics}");
        assert_eq!(http_get(service.admin, "/readyz").await.0, 200);
        assert_eq!(http_get(service.admin, "/healthz").await.0, 200);

        within("stopping", Duration::from_secs(10), service.stop())
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn alerting_answers_with_its_shipped_rules_before_any_audit_event() {
    // Its audit service is unreachable here: the API answers all the same.
    let service = InProcess::start("alerting").await;
    wait_serving(service.channel(), "agentmesh.alerting.v1.AlertingService").await;
    let mut client =
        alerting::v1::alerting_service_client::AlertingServiceClient::new(service.channel());
    let rules = client
        .list_rules(alerting::v1::ListRulesRequest {
            page_size: 2,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rules.rules.len(), 2);
    assert!(!rules.next_page_token.is_empty());
    let rest = client
        .list_rules(alerting::v1::ListRulesRequest {
            page_size: 100,
            page_token: rules.next_page_token,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rest.rules.len(), 4, "six shipped rules in all");
    assert!(rules.rules[1].name < rest.rules[0].name);
    let alerts = client
        .list_alerts(alerting::v1::ListAlertsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(alerts.alerts.is_empty());
    service.stop().await.unwrap();
}

#[tokio::test]
async fn calls_are_counted_by_method_and_code() {
    let service = InProcess::start("audit").await;
    wait_serving(service.channel(), "").await;
    let mut client = audit::v1::audit_service_client::AuditServiceClient::new(service.channel());
    for _ in 0..3 {
        let _ = client.report(audit::v1::ReportRequest::default()).await;
    }
    let (_, metrics) = http_get(service.admin, "/metrics").await;
    let line = metrics
        .lines()
        .find(|line| {
            line.starts_with("grpc_server_handled_total{")
                && line.contains("grpc_method=\"Report\"")
                && line.contains("grpc_code=\"InvalidArgument\"")
        })
        .unwrap_or_else(|| panic!("no Report/InvalidArgument count in {metrics}"));
    assert!(line.ends_with(" 3"), "{line}");
    service.stop().await.unwrap();
}

#[tokio::test]
async fn the_request_id_is_created_when_missing_and_echoed() {
    let service = InProcess::start("tool-runner").await;
    let mut client = tonic_health::pb::health_client::HealthClient::new(service.channel());
    let response = client
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .unwrap();
    let created = response
        .metadata()
        .get("x-request-id")
        .expect("a request id")
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(created.len(), 36, "{created}");

    let mut request = tonic::Request::new(tonic_health::pb::HealthCheckRequest::default());
    request
        .metadata_mut()
        .insert("x-request-id", "client-chosen-id".parse().unwrap());
    let response = client.check(request).await.unwrap();
    assert_eq!(
        response.metadata().get("x-request-id").unwrap(),
        "client-chosen-id"
    );
    service.stop().await.unwrap();
}

#[tokio::test]
async fn a_health_watch_sees_not_serving_then_ends_cleanly_on_shutdown() {
    let service = InProcess::start("alerting").await;
    wait_serving(service.channel(), "").await;
    let mut client = tonic_health::pb::health_client::HealthClient::new(service.channel());
    let mut watch = client
        .watch(tonic_health::pb::HealthCheckRequest::default())
        .await
        .unwrap()
        .into_inner();
    let first = watch.message().await.unwrap().unwrap();
    assert_eq!(first.status(), ServingStatus::Serving);

    let stopping = tokio::spawn(service.stop());
    let next = within(
        "NOT_SERVING on the watch",
        Duration::from_secs(5),
        watch.message(),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(next.status(), ServingStatus::NotServing);
    let end = within("the watch to end", Duration::from_secs(5), watch.message()).await;
    let status = end.expect_err("the stream ends with a status saying why");
    assert_eq!(status.code(), tonic::Code::Unavailable);
    assert!(
        status.message().contains("shutting down"),
        "{}",
        status.message()
    );
    within("the service to stop", Duration::from_secs(5), stopping)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn a_second_service_on_a_taken_port_fails_naming_the_setting() {
    let first = InProcess::start("audit").await;
    let config = agentmesh_audit::Config {
        server: agentmesh_kit::ServerConfig {
            host: first.grpc.ip(),
            port: first.grpc.port(),
            admin_port: Some(0),
            ..agentmesh_kit::ServerConfig::default()
        },
        ..Default::default()
    };
    let err = agentmesh_audit::serve(config, std::future::pending())
        .await
        .unwrap_err();
    let message = err.to_string();
    assert!(message.contains("server.port"), "{message}");
    assert!(message.contains(&first.grpc.to_string()), "{message}");
    first.stop().await.unwrap();
}
