//! A tool runner serving in-process on loopback for an API test: its gRPC
//! client, its admin address (`/metrics`), the temporary directory of its
//! workspaces, and a bounded stop.

use std::net::SocketAddr;

use agentmesh_kit::{Listeners, ServeError};
use agentmesh_proto::tools::v1::tool_runner_service_client::ToolRunnerServiceClient;
use agentmesh_testkit::within;
use agentmesh_tool_runner::Config;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::oneshot;
use tonic::transport::Channel;

use super::common::STEP;

/// A serving tool runner.
pub(crate) struct Served {
    pub(crate) client: ToolRunnerServiceClient<Channel>,
    pub(crate) admin: SocketAddr,
    /// Its workspaces (and the test's scripts) live here.
    pub(crate) dir: tempfile::TempDir,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), ServeError>>,
}

impl Served {
    /// Serves `config` as it is; `dir` is kept as long as the service.
    pub(crate) async fn start(dir: tempfile::TempDir, config: Config) -> Self {
        let listeners = Listeners::bind(&config.server).await.unwrap();
        let addr = listeners.grpc_addr().unwrap();
        let admin = listeners.admin_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(agentmesh_tool_runner::serve_with_listeners(
            config,
            listeners,
            async {
                let _ = stopped.await;
            },
        ));
        let channel = agentmesh_kit::client::plain_channel(&format!("http://{addr}")).unwrap();
        Self {
            client: ToolRunnerServiceClient::new(channel),
            admin,
            dir,
            stop: Some(stop),
            task,
        }
    }

    /// The service's Prometheus text.
    pub(crate) async fn metrics(&self) -> String {
        self.admin_get("/metrics").await
    }

    /// The admin server's whole HTTP response to `GET path`.
    pub(crate) async fn admin_get(&self, path: &str) -> String {
        let mut stream = tokio::net::TcpStream::connect(self.admin).await.unwrap();
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            self.admin
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        response
    }

    /// Stops the service and waits for its drain.
    pub(crate) async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        within("the drain", STEP, self.task).await.unwrap().unwrap();
    }
}
