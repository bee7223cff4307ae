//! `agentmesh health`: the health of each service of a running mesh.
//!
//! For each service it asks `grpc.health.v1.Health/Check` under the service's
//! own gRPC name (SERVING, NOT_SERVING, or unreachable). With `--deep` it also
//! reads the service's `/health/deep` report from its admin port and prints
//! one line per component (start-up, peers, database, tools, audit) with the
//! reason of each failing one, so that "why is the orchestrator not ready?"
//! has its answer on the screen. `--json` prints everything as one JSON
//! document. The exit code is 0 only when every service checked is ready.
//!
//! Addresses: the services on `--host` at `--base-port` and the four ports
//! after it (admin ports at `--admin-base-port`, by default `--base-port` +
//! 1000), or explicit addresses per service (`--orchestrator HOST:PORT`,
//! `--orchestrator-admin HOST:PORT`, …): when any is given, only the services
//! given are checked.

use std::io::Write as _;
use std::process::ExitCode;
use std::time::Duration;

use agentmesh_kit::health::DeepHealth;
use anyhow::Context as _;
use serde_json::json;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

use crate::{DEFAULT_BASE_PORT, SERVICES};

/// The admin port is the gRPC port plus this, as every service defaults to.
const ADMIN_OFFSET: u16 = agentmesh_kit::config::ADMIN_PORT_OFFSET;

#[derive(Debug, clap::Args)]
pub(crate) struct HealthArgs {
    /// Host the services run on.
    #[arg(long, default_value = "localhost")]
    host: String,
    /// Port of the orchestrator; the other services are on the next four.
    #[arg(long, default_value_t = DEFAULT_BASE_PORT)]
    base_port: u16,
    /// Admin HTTP port of the orchestrator (for --deep); the other services
    /// are on the next four. Default: --base-port + 1000 (51051).
    #[arg(long)]
    admin_base_port: Option<u16>,
    /// Also read each service's /health/deep and show every component it
    /// depends on, with the reason of each failing one.
    #[arg(long)]
    deep: bool,
    /// Print one JSON document (with the deep reports) instead of a table.
    #[arg(long)]
    json: bool,
    /// Seconds to wait for each answer.
    #[arg(long, default_value_t = 2.0)]
    timeout: f64,
    #[command(flatten)]
    addresses: Addresses,
}

/// Explicit addresses; when any is given, only those services are checked.
#[derive(Debug, Default, clap::Args)]
struct Addresses {
    /// gRPC address of the orchestrator (HOST:PORT).
    #[arg(long, value_name = "HOST:PORT")]
    orchestrator: Option<String>,
    /// Admin address of the orchestrator (default: its gRPC port + 1000).
    #[arg(long, value_name = "HOST:PORT")]
    orchestrator_admin: Option<String>,
    /// gRPC address of the LLM gateway (HOST:PORT).
    #[arg(long, value_name = "HOST:PORT")]
    llm_gateway: Option<String>,
    /// Admin address of the LLM gateway (default: its gRPC port + 1000).
    #[arg(long, value_name = "HOST:PORT")]
    llm_gateway_admin: Option<String>,
    /// gRPC address of the tool runner (HOST:PORT).
    #[arg(long, value_name = "HOST:PORT")]
    tool_runner: Option<String>,
    /// Admin address of the tool runner (default: its gRPC port + 1000).
    #[arg(long, value_name = "HOST:PORT")]
    tool_runner_admin: Option<String>,
    /// gRPC address of the audit service (HOST:PORT).
    #[arg(long, value_name = "HOST:PORT")]
    audit: Option<String>,
    /// Admin address of the audit service (default: its gRPC port + 1000).
    #[arg(long, value_name = "HOST:PORT")]
    audit_admin: Option<String>,
    /// gRPC address of the alerting service (HOST:PORT).
    #[arg(long, value_name = "HOST:PORT")]
    alerting: Option<String>,
    /// Admin address of the alerting service (default: its gRPC port + 1000).
    #[arg(long, value_name = "HOST:PORT")]
    alerting_admin: Option<String>,
}

impl Addresses {
    /// The explicit gRPC and admin addresses of `service`.
    fn of(&self, service: &str) -> (Option<&String>, Option<&String>) {
        let (grpc, admin) = match service {
            "orchestrator" => (&self.orchestrator, &self.orchestrator_admin),
            "llm-gateway" => (&self.llm_gateway, &self.llm_gateway_admin),
            "tool-runner" => (&self.tool_runner, &self.tool_runner_admin),
            "audit" => (&self.audit, &self.audit_admin),
            _ => (&self.alerting, &self.alerting_admin),
        };
        (grpc.as_ref(), admin.as_ref())
    }

    fn any(&self) -> bool {
        SERVICES.iter().any(|(name, _)| self.of(name).0.is_some())
    }
}

/// Where one service is to be found.
#[derive(Debug, Clone)]
struct Target {
    name: &'static str,
    grpc_name: &'static str,
    grpc: Result<String, String>,
    admin: Result<String, String>,
}

/// What was learnt about one service.
#[derive(Debug)]
struct Checked {
    target: Target,
    /// Its health status name (`SERVING`, `NOT_SERVING`…) or why there is none.
    status: Result<String, String>,
    /// The deep report, when asked for.
    deep: Option<Result<DeepHealth, String>>,
}

impl Checked {
    /// SERVING, and (when read) a deep report that agrees.
    fn ready(&self) -> bool {
        let serving = self.status.as_deref() == Ok("SERVING");
        let deep = match &self.deep {
            Some(Ok(report)) => report.ready,
            // The report is extra detail: not having it does not make the
            // service any less ready than gRPC says.
            Some(Err(_)) | None => true,
        };
        serving && deep
    }
}

pub(crate) async fn health(args: HealthArgs) -> anyhow::Result<ExitCode> {
    let timeout = Duration::try_from_secs_f64(args.timeout)
        .ok()
        .filter(|t| !t.is_zero())
        .context("--timeout must be a positive number of seconds")?;
    let deep = args.deep || args.json;
    let checks = targets(&args).into_iter().map(|target| async move {
        let status = match &target.grpc {
            Ok(address) => check(address, target.grpc_name, timeout).await,
            Err(err) => Err(err.clone()),
        };
        let deep = if deep {
            Some(match &target.admin {
                Ok(address) => agentmesh_kit::admin::fetch_deep_health(address, timeout).await,
                Err(err) => Err(err.clone()),
            })
        } else {
            None
        };
        Checked {
            target,
            status,
            deep,
        }
    });
    let results = futures::future::join_all(checks).await;
    let all_ready = results.iter().all(Checked::ready);

    let mut out = std::io::stdout().lock();
    if args.json {
        let document = json!({
            "ready": all_ready,
            "services": results.iter().map(to_json).collect::<Vec<_>>(),
        });
        writeln!(out, "{}", serde_json::to_string_pretty(&document)?)?;
    } else {
        write_table(&mut out, &results)?;
    }
    Ok(if all_ready {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The services to check and their addresses.
fn targets(args: &HealthArgs) -> Vec<Target> {
    let explicit = args.addresses.any();
    let admin_base = args
        .admin_base_port
        .or_else(|| args.base_port.checked_add(ADMIN_OFFSET));
    SERVICES
        .iter()
        .enumerate()
        .filter_map(|(index, (name, grpc_name))| {
            let offset = u16::try_from(index).ok();
            let (grpc, admin) = args.addresses.of(name);
            if explicit && grpc.is_none() {
                return None;
            }
            let grpc = match grpc {
                Some(address) => Ok(bare(address)),
                None => offset
                    .and_then(|i| args.base_port.checked_add(i))
                    .map(|port| format!("{}:{port}", args.host))
                    .ok_or_else(|| "port out of range".to_owned()),
            };
            let admin = match (admin, explicit) {
                (Some(address), _) => Ok(bare(address)),
                // Given by address: its admin port is its gRPC port + 1000.
                (None, true) => grpc.clone().and_then(|address| admin_beside(&address)),
                (None, false) => offset
                    .zip(admin_base)
                    .and_then(|(i, base)| base.checked_add(i))
                    .map(|port| format!("{}:{port}", args.host))
                    .ok_or_else(|| "admin port out of range".to_owned()),
            };
            Some(Target {
                name,
                grpc_name,
                grpc,
                admin,
            })
        })
        .collect()
}

/// `HOST:PORT` out of `HOST:PORT` or `http://HOST:PORT/`.
fn bare(address: &str) -> String {
    let address = address
        .strip_prefix("http://")
        .or_else(|| address.strip_prefix("https://"))
        .unwrap_or(address);
    address.trim_end_matches('/').to_owned()
}

/// The admin address beside a gRPC address: the same host, port + 1000.
fn admin_beside(grpc: &str) -> Result<String, String> {
    let (host, port) = grpc
        .rsplit_once(':')
        .ok_or_else(|| format!("{grpc:?} is not HOST:PORT"))?;
    let port: u16 = port
        .parse()
        .map_err(|_| format!("{grpc:?} is not HOST:PORT"))?;
    let admin = port
        .checked_add(ADMIN_OFFSET)
        .ok_or_else(|| format!("{grpc:?}: no admin port at port + {ADMIN_OFFSET}; give it"))?;
    Ok(format!("{host}:{admin}"))
}

/// The service's own health status (its gRPC name), as text.
async fn check(address: &str, grpc_name: &str, timeout: Duration) -> Result<String, String> {
    let channel = agentmesh_kit::client::plain_channel(&format!("http://{address}"))
        .map_err(|err| err.to_string())?;
    let mut client = HealthClient::new(channel);
    let mut request = tonic::Request::new(HealthCheckRequest {
        service: grpc_name.to_owned(),
    });
    request.set_timeout(timeout);
    let answer = tokio::time::timeout(timeout, client.check(request))
        .await
        .map_err(|_| format!("no answer within {timeout:?}"))?
        .map_err(|status| format!("{:?}: {}", status.code(), status.message()))?;
    Ok(answer.into_inner().status().as_str_name().to_owned())
}

fn write_table(out: &mut impl std::io::Write, results: &[Checked]) -> std::io::Result<()> {
    writeln!(out, "{:<14} {:<22} STATUS", "SERVICE", "ADDRESS")?;
    for checked in results {
        let address = checked.target.grpc.as_deref().unwrap_or("-");
        let shown = match &checked.status {
            Ok(text) => text.clone(),
            Err(err) => format!("UNREACHABLE ({err})"),
        };
        writeln!(out, "{:<14} {address:<22} {shown}", checked.target.name)?;
        match &checked.deep {
            None => {}
            Some(Err(err)) => {
                let admin = checked.target.admin.as_deref().unwrap_or("-");
                writeln!(out, "  (no deep health from {admin}: {err})")?;
            }
            Some(Ok(report)) => {
                let width = report
                    .components
                    .iter()
                    .map(|c| c.name.len())
                    .max()
                    .unwrap_or(0)
                    .max(12);
                for component in &report.components {
                    let kind = if component.required {
                        "required"
                    } else {
                        "optional"
                    };
                    if component.ok {
                        writeln!(out, "  - {:<width$}  {kind}  ok", component.name)?;
                    } else {
                        let reason = component.reason.as_deref().unwrap_or("failing");
                        writeln!(
                            out,
                            "  - {:<width$}  {kind}  FAILING  {reason}",
                            component.name
                        )?;
                    }
                }
                if report.draining {
                    writeln!(out, "  (shutting down)")?;
                }
            }
        }
    }
    Ok(())
}

fn to_json(checked: &Checked) -> serde_json::Value {
    let (status, error) = match &checked.status {
        Ok(status) => (status.as_str(), None),
        Err(err) => ("UNREACHABLE", Some(err.as_str())),
    };
    let (deep, deep_error) = match &checked.deep {
        Some(Ok(report)) => (serde_json::to_value(report).ok(), None),
        Some(Err(err)) => (None, Some(err.as_str())),
        None => (None, None),
    };
    json!({
        "service": checked.target.name,
        "address": checked.target.grpc.as_deref().ok(),
        "admin_address": checked.target.admin.as_deref().ok(),
        "status": status,
        "error": error,
        "ready": checked.ready(),
        "deep": deep,
        "deep_error": deep_error,
    })
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;

    fn parse(args: &[&str]) -> HealthArgs {
        let cli = crate::Cli::try_parse_from(
            ["agentmesh", "health"]
                .into_iter()
                .chain(args.iter().copied()),
        )
        .unwrap();
        match cli.command {
            crate::Command::Health(args) => args,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn ports_follow_the_base_ports() {
        let found = targets(&parse(&["--host", "h", "--base-port", "6000"]));
        assert_eq!(found.len(), 5);
        assert_eq!(found[2].name, "tool-runner");
        assert_eq!(found[2].grpc.as_deref(), Ok("h:6002"));
        assert_eq!(found[2].admin.as_deref(), Ok("h:7002"));
        let found = targets(&parse(&["--admin-base-port", "9000"]));
        assert_eq!(found[0].grpc.as_deref(), Ok("localhost:50051"));
        assert_eq!(found[4].admin.as_deref(), Ok("localhost:9004"));
    }

    #[test]
    fn explicit_addresses_check_only_those_services() {
        let found = targets(&parse(&[
            "--orchestrator",
            "http://10.0.0.1:4000/",
            "--tool-runner",
            "10.0.0.2:4001",
            "--tool-runner-admin",
            "10.0.0.2:9999",
        ]));
        let names: Vec<&str> = found.iter().map(|t| t.name).collect();
        assert_eq!(names, ["orchestrator", "tool-runner"]);
        assert_eq!(found[0].grpc.as_deref(), Ok("10.0.0.1:4000"));
        assert_eq!(found[0].admin.as_deref(), Ok("10.0.0.1:5000"));
        assert_eq!(found[1].admin.as_deref(), Ok("10.0.0.2:9999"));
    }

    #[test]
    fn a_failing_component_is_shown_with_its_reason() {
        let report: DeepHealth = serde_json::from_value(json!({
            "service": "orchestrator",
            "ready": false,
            "live": true,
            "components": [
                {"name": "startup", "required": true, "ok": true},
                {"name": "tool-runner", "required": true, "ok": false,
                 "reason": "peer 127.0.0.1:50053 unreachable: connection refused",
                 "consecutive_failures": 3},
                {"name": "audit", "required": false, "ok": true},
            ],
        }))
        .unwrap();
        let checked = Checked {
            target: Target {
                name: "orchestrator",
                grpc_name: "agentmesh.orchestrator.v1.OrchestratorService",
                grpc: Ok("127.0.0.1:50051".into()),
                admin: Ok("127.0.0.1:51051".into()),
            },
            status: Ok("NOT_SERVING".into()),
            deep: Some(Ok(report)),
        };
        assert!(!checked.ready());
        let mut out = Vec::new();
        write_table(&mut out, std::slice::from_ref(&checked)).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.contains(
                "  - tool-runner   required  FAILING  peer 127.0.0.1:50053 unreachable: connection refused"
            ),
            "{text}"
        );
        assert!(text.contains("  - audit         optional  ok"), "{text}");
        let json = to_json(&checked);
        assert_eq!(json["deep"]["components"][1]["ok"], false);
        assert_eq!(json["ready"], false);
    }
}
