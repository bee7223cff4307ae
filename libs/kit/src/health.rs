//! `grpc.health.v1.Health` for a service: the overall status under `""` and one
//! status per gRPC service the process serves, moved together through the
//! service's life: NOT_SERVING while starting, SERVING once ready, NOT_SERVING
//! again as soon as a shutdown begins.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

/// Shared handle on a service's health statuses.
#[derive(Clone, Debug)]
pub struct Health {
    reporter: HealthReporter,
    names: Arc<Vec<String>>,
    serving: Arc<AtomicBool>,
}

impl Health {
    /// Creates the health state for `names` (the fully-qualified gRPC service
    /// names) plus `""`, all NOT_SERVING, and the server that answers for them.
    pub async fn new(
        names: Vec<String>,
    ) -> (
        Self,
        tonic_health::pb::health_server::HealthServer<impl tonic_health::pb::health_server::Health>,
    ) {
        let (reporter, server) = tonic_health::server::health_reporter();
        let health = Self {
            reporter,
            names: Arc::new(names),
            serving: Arc::new(AtomicBool::new(false)),
        };
        health.set(ServingStatus::NotServing).await;
        (health, server)
    }

    /// Marks every name SERVING.
    pub async fn set_serving(&self) {
        self.set(ServingStatus::Serving).await;
    }

    /// Marks every name NOT_SERVING.
    pub async fn set_not_serving(&self) {
        self.set(ServingStatus::NotServing).await;
    }

    /// Whether the service currently reports SERVING (for `/readyz`).
    pub fn is_serving(&self) -> bool {
        self.serving.load(Ordering::Acquire)
    }

    async fn set(&self, status: ServingStatus) {
        self.serving
            .store(status == ServingStatus::Serving, Ordering::Release);
        self.reporter.set_service_status("", status).await;
        for name in self.names.iter() {
            self.reporter.set_service_status(name, status).await;
        }
    }
}
