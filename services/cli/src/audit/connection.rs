//! The connection to the audit service: a channel to the one at `--audit`,
//! or, with none, to the audit service started alone in this process on a
//! free loopback port over the data directory's database (waited for until
//! SERVING, stopped after the command).

use std::io::Write;

use agentmesh_proto::audit::v1::audit_service_client::AuditServiceClient;
use anyhow::Context as _;

use super::flags::AuditTarget;
use crate::commands::wait_serving;
use crate::credential::{self, CliChannel};
use crate::mesh::{self, EmbeddedAudit, Ports};

/// The audit service's fully-qualified gRPC name (its health status key).
const AUDIT_SERVICE: &str = "agentmesh.audit.v1.AuditService";

/// Largest message accepted from the audit service: a page of events with
/// captured content can be far larger than tonic's 4 MiB default.
const MAX_MESSAGE_BYTES: usize = 256 * 1024 * 1024;

/// A channel to the audit service, and the service itself when it runs in
/// this process.
pub(super) struct Connection {
    channel: CliChannel,
    embedded: Option<EmbeddedAudit>,
}

impl Connection {
    pub(super) async fn open(target: &AuditTarget) -> anyhow::Result<Self> {
        let credential = target.credential.resolve()?;
        if let Some(address) = &target.address {
            let uri = if address.contains("://") {
                address.clone()
            } else {
                format!("http://{address}")
            };
            let channel = agentmesh_kit::client::plain_channel(&uri)
                .with_context(|| format!("bad audit service address {address:?}"))?;
            return Ok(Self {
                channel: credential::channel(channel, &credential),
                embedded: None,
            });
        }
        let embedded = &target.embedded;
        embedded.init_logging();
        let config = mesh::load_audit(
            embedded.config.as_deref(),
            Ports::Ephemeral,
            &embedded.data_dir,
        )
        .map_err(|err| anyhow::anyhow!("{err}"))?;
        mesh::require_credential(&config.auth, &credential)?;
        let audit = EmbeddedAudit::start(config).await?;
        let channel = agentmesh_kit::client::plain_channel(&format!("http://{}", audit.addr))?;
        let ready = tokio::select! {
            ready = wait_serving(&channel, AUDIT_SERVICE) => ready,
            () = audit.failed() => Err(anyhow::anyhow!("the embedded audit service stopped")),
        };
        if let Err(err) = ready {
            // The service's own failure says more than the wait did.
            return Err(match audit.stop().await {
                Err(failure) => failure.context("the embedded audit service did not start"),
                Ok(()) => err,
            });
        }
        Ok(Self {
            channel: credential::channel(channel, &credential),
            embedded: Some(audit),
        })
    }

    pub(super) fn client(&self) -> AuditServiceClient<CliChannel> {
        AuditServiceClient::new(self.channel.clone()).max_decoding_message_size(MAX_MESSAGE_BYTES)
    }

    pub(super) async fn close(self) {
        if let Some(audit) = self.embedded
            && let Err(err) = audit.stop().await
        {
            let _ = writeln!(
                std::io::stderr(),
                "agentmesh: stopping the embedded audit service: {err:#}"
            );
        }
    }
}
