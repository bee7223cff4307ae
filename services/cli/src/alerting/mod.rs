//! The client side of the alerting service that `agentmesh alerts` and
//! `agentmesh silences` share: where the service is (`--alerting`,
//! `AGENTMESH_ALERTING`, default `http://localhost:50055`, where `agentmesh
//! up` serves it), the connection, made before the first call so that a
//! service that is not running gives one clear line naming the address
//! rather than a transport error, the output choice (`-o table|json`), and
//! the label matchers in Alertmanager's text form (`matchers`).

use std::time::Duration;

use agentmesh_proto::alerting::v1::alerting_service_client::AlertingServiceClient;
use tonic::transport::Endpoint;

use crate::credential::{self, CliChannel, CredentialArgs};

#[cfg(test)]
pub(crate) mod fake;
pub(crate) mod matchers;

/// Where `agentmesh up` serves the alerting service.
const DEFAULT_ALERTING: &str = "http://localhost:50055";

/// Largest page the alerting service returns.
pub(crate) const MAX_PAGE: u32 = 1000;

/// Largest message accepted: a page of 1000 alerts with long annotations can
/// pass tonic's 4 MiB default.
const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// Where to find the alerting service.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct AlertingTarget {
    /// Address of the alerting service (`agentmesh up` serves it on port
    /// 50055).
    #[arg(
        long = "alerting",
        env = "AGENTMESH_ALERTING",
        value_name = "ADDR",
        default_value = DEFAULT_ALERTING
    )]
    pub(crate) address: String,
    #[command(flatten)]
    pub(crate) credential: CredentialArgs,
}

/// How results are printed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Output {
    /// Aligned columns for people.
    #[default]
    Table,
    /// One object per line: canonical protobuf JSON, proto field names.
    Json,
}

/// The last error of `err`'s source chain: the one that says what happened
/// ("Connection refused"), where tonic's own says "transport error".
fn root_cause(err: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = err;
    while let Some(source) = cause.source() {
        cause = source;
    }
    cause.to_string()
}

impl AlertingTarget {
    /// The address as a URI: `localhost:50055` gets `http://`.
    pub(crate) fn uri(&self) -> String {
        let address = self.address.trim();
        if address.contains("://") {
            address.to_owned()
        } else {
            format!("http://{address}")
        }
    }

    /// A client of the alerting service, connected: a service that cannot be
    /// reached is one line naming the address.
    pub(crate) async fn connect(&self) -> anyhow::Result<AlertingServiceClient<CliChannel>> {
        let credential = self.credential.resolve()?;
        let uri = self.uri();
        let endpoint = Endpoint::from_shared(uri.clone())
            .map_err(|err| {
                anyhow::anyhow!(
                    "bad alerting service address {:?}: {}",
                    self.address,
                    root_cause(&err)
                )
            })?
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(5))
            // A watch may stay idle for long: keep-alives notice a peer that
            // went away.
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(10))
            .keep_alive_while_idle(true);
        let channel = endpoint.connect().await.map_err(|err| {
            anyhow::anyhow!(
                "cannot reach the alerting service at {uri}: {}. Is the mesh running? Start it \
                 with `agentmesh up`, or give the service's address with --alerting or \
                 AGENTMESH_ALERTING",
                root_cause(&err)
            )
        })?;
        Ok(
            AlertingServiceClient::new(credential::channel(channel, &credential))
                .max_decoding_message_size(MAX_MESSAGE_BYTES),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_get_a_scheme() {
        let target = |address: &str| AlertingTarget {
            address: address.to_owned(),
            credential: CredentialArgs::default(),
        };
        assert_eq!(target("localhost:1").uri(), "http://localhost:1");
        assert_eq!(
            target(" https://a.example:443 ").uri(),
            "https://a.example:443"
        );
    }

    #[tokio::test]
    async fn an_unreachable_service_is_one_line_naming_it() {
        // A port that was free a moment ago: nothing listens there.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let target = AlertingTarget {
            address: format!("127.0.0.1:{port}"),
            credential: CredentialArgs::default(),
        };
        let err = format!("{:#}", target.connect().await.unwrap_err());
        assert!(err.contains(&format!("http://127.0.0.1:{port}")), "{err}");
        assert!(err.contains("agentmesh up"), "{err}");
        assert!(!err.contains('\n'), "{err}");

        let bad = AlertingTarget {
            address: "http://bad host".to_owned(),
            credential: CredentialArgs::default(),
        };
        let err = format!("{:#}", bad.connect().await.unwrap_err());
        assert!(err.starts_with("bad alerting service address"), "{err}");
    }
}
