//! `agentmesh load`: puts load on a running deployment — agent runs, gateway
//! calls, or HTTP requests — at a fixed rate or concurrency for a duration,
//! and prints latency percentiles (coordinated omission corrected), time to
//! first event, to first token and between tokens (runs and streams),
//! errors by status and throughput, as a table or JSON. The
//! calls are made by `agentmesh-load`, the same client `make bench` uses.

use std::io::Write as _;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use agentmesh_load::targets::{Connections, GenerateTarget, HttpTarget, RunTarget};
use agentmesh_load::{Counters, Load, Plan, Summary, Target};
use anyhow::Context as _;
use indicatif::{ProgressBar, ProgressStyle};

use crate::credential::CredentialArgs;

/// What to load, and how hard.
#[derive(Debug, clap::Args)]
pub(crate) struct LoadArgs {
    #[command(subcommand)]
    target: LoadTarget,
    #[command(flatten)]
    shape: Shape,
}

#[derive(Debug, clap::Subcommand)]
enum LoadTarget {
    /// Agent runs over OrchestratorService.Run, each to its end.
    Run {
        /// The orchestrator.
        #[arg(
            long,
            env = "AGENTMESH_ORCHESTRATOR",
            default_value = "http://127.0.0.1:50051"
        )]
        orchestrator: String,
        /// Agent profile (default: the default profile).
        #[arg(long, default_value = "")]
        agent: String,
        /// The objective of every run.
        #[arg(long, default_value = "What is 17 * 23 + sqrt(144)?")]
        objective: String,
        #[command(flatten)]
        credential: CredentialArgs,
    },
    /// Calls of the LLM gateway (Generate, or GenerateStream with --stream).
    Generate {
        /// The LLM gateway.
        #[arg(
            long,
            env = "AGENTMESH_LLM_GATEWAY",
            default_value = "http://127.0.0.1:50052"
        )]
        gateway: String,
        /// Route name or provider/model (default: the default route).
        #[arg(long, default_value = "")]
        model: String,
        /// The user message of every call.
        #[arg(long, default_value = "Say hello.")]
        prompt: String,
        /// Stream the answers (time to first event and token, and the gaps
        /// between tokens, are measured).
        #[arg(long)]
        stream: bool,
        #[command(flatten)]
        credential: CredentialArgs,
    },
    /// HTTP requests: POST --body (or GET without one), e.g. the edge's
    /// /v1/chat/completions.
    Http {
        /// The URL.
        url: String,
        /// Body to POST (JSON text); without it, GET.
        #[arg(long)]
        body: Option<String>,
        /// A header, `Name: value` (repeat for more).
        #[arg(long = "header", short = 'H')]
        headers: Vec<String>,
    },
}

#[derive(Debug, clap::Args)]
struct Shape {
    /// Calls per second, each sent at its scheduled time (open loop).
    #[arg(long, conflicts_with = "concurrency", global = true)]
    rate: Option<f64>,
    /// Calls kept in flight (closed loop; default 1 when no --rate).
    #[arg(long, global = true)]
    concurrency: Option<usize>,
    /// How long to send calls for (e.g. 30s, 2m).
    #[arg(long, default_value = "10s", value_parser = parse_duration, global = true)]
    duration: Duration,
    /// Stop after this many calls.
    #[arg(long, global = true)]
    requests: Option<u64>,
    /// A call not done this long after it was due fails as `timeout`.
    #[arg(long, default_value = "60s", value_parser = parse_duration, global = true)]
    timeout: Duration,
    /// Print the summary as JSON (on stdout) instead of a table.
    #[arg(long, global = true)]
    json: bool,
    /// gRPC connections the calls are spread over (a server takes 256 calls
    /// at once on one connection by default).
    #[arg(long, default_value_t = 1, global = true)]
    connections: usize,
    /// No progress bar.
    #[arg(long, global = true)]
    quiet: bool,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    crate::time::parse_duration(text)
        .and_then(|duration| Duration::try_from(duration).ok())
        .filter(|duration| !duration.is_zero())
        .ok_or_else(|| format!("`{text}` is not a positive duration (e.g. 30s, 2m)"))
}

impl Shape {
    fn plan(&self) -> anyhow::Result<Plan> {
        let load = match (self.rate, self.concurrency) {
            (Some(rate), _) if !(rate.is_finite() && rate > 0.0) => {
                anyhow::bail!("--rate must be a positive number of calls per second")
            }
            (Some(rate), _) => Load::Rate(rate),
            (None, Some(0)) => anyhow::bail!("--concurrency must be at least 1"),
            (None, workers) => Load::Concurrency(workers.unwrap_or(1)),
        };
        Ok(Plan {
            load,
            duration: self.duration,
            requests: self.requests,
            timeout: self.timeout,
        })
    }
}

/// `count` connections to `address` (each channel is a connection of its own).
fn connections(address: &str, what: &str, count: usize) -> anyhow::Result<Connections> {
    let channel = || {
        agentmesh_kit::client::plain_channel(address)
            .with_context(|| format!("bad {what} address {address:?}"))
    };
    let first = channel()?;
    let rest = (1..count)
        .map(|_| channel())
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(Connections::new(first, rest))
}

fn target(target: LoadTarget, count: usize) -> anyhow::Result<Arc<dyn Target>> {
    Ok(match target {
        LoadTarget::Run {
            orchestrator,
            agent,
            objective,
            credential,
        } => Arc::new(RunTarget {
            connections: connections(&orchestrator, "orchestrator", count)?,
            authorization: credential.resolve()?.authorization().cloned(),
            agent,
            objective,
        }),
        LoadTarget::Generate {
            gateway,
            model,
            prompt,
            stream,
            credential,
        } => Arc::new(GenerateTarget {
            connections: connections(&gateway, "gateway", count)?,
            authorization: credential.resolve()?.authorization().cloned(),
            model,
            prompt,
            stream,
        }),
        LoadTarget::Http { url, body, headers } => {
            let url = reqwest::Url::parse(&url).with_context(|| format!("bad URL {url:?}"))?;
            let mut map = http::HeaderMap::new();
            for header in &headers {
                let (name, value) = header
                    .split_once(':')
                    .with_context(|| format!("--header {header:?} is not `Name: value`"))?;
                map.append(
                    http::HeaderName::try_from(name.trim())
                        .with_context(|| format!("bad header name in {header:?}"))?,
                    http::HeaderValue::try_from(value.trim())
                        .with_context(|| format!("bad header value in --header {name:?}"))?,
                );
            }
            if body.is_some() && !map.contains_key(http::header::CONTENT_TYPE) {
                map.insert(
                    http::header::CONTENT_TYPE,
                    http::HeaderValue::from_static("application/json"),
                );
            }
            agentmesh_kit::client::install_tls_crypto();
            Arc::new(HttpTarget {
                client: reqwest::Client::builder()
                    .build()
                    .context("cannot make the HTTP client")?,
                url,
                headers: map,
                body: body.map(bytes::Bytes::from),
            })
        }
    })
}

/// Runs the load test; fails (exit 1) when no call succeeded.
pub(crate) async fn load(args: LoadArgs) -> anyhow::Result<ExitCode> {
    let plan = args.shape.plan()?;
    let target = target(args.target, args.shape.connections)?;
    let counters = Arc::new(Counters::default());
    let progress = (!args.shape.quiet).then(|| progress_bar(plan.duration));
    let ticker = progress.clone().map(|bar| {
        let counters = Arc::clone(&counters);
        tokio::spawn(async move {
            let begun = tokio::time::Instant::now();
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            loop {
                tick.tick().await;
                bar.set_position(u64::try_from(begun.elapsed().as_millis()).unwrap_or(u64::MAX));
                bar.set_message(format!(
                    "{} sent, {} ok, {} failed",
                    counters.sent.load(Ordering::Relaxed),
                    counters.ok.load(Ordering::Relaxed),
                    counters.failed.load(Ordering::Relaxed)
                ));
            }
        })
    });
    let summary = agentmesh_load::drive(plan, target, counters).await;
    if let Some(ticker) = ticker {
        ticker.abort();
    }
    if let Some(bar) = progress {
        bar.finish_and_clear();
    }
    print(&summary, args.shape.json)?;
    Ok(if summary.ok == 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn progress_bar(duration: Duration) -> ProgressBar {
    let bar = ProgressBar::new(u64::try_from(duration.as_millis()).unwrap_or(u64::MAX));
    bar.set_style(
        ProgressStyle::with_template("{elapsed:>4} [{bar:30}] {percent:>3}%  {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar
}

fn print(summary: &Summary, json: bool) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    if json {
        serde_json::to_writer_pretty(&mut out, summary)?;
        writeln!(out)?;
    } else {
        write!(out, "{summary}")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;

    #[derive(Debug, clap::Parser)]
    struct Cli {
        #[command(flatten)]
        load: LoadArgs,
    }

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("load").chain(args.iter().copied()))
    }

    #[test]
    fn a_rate_is_an_open_loop_and_no_rate_a_closed_one() {
        let cli = parse(&["generate", "--rate", "250", "--duration", "2m"]).unwrap();
        let plan = cli.load.shape.plan().unwrap();
        assert_eq!(plan.load, Load::Rate(250.0));
        assert_eq!(plan.duration, Duration::from_secs(120));
        let cli = parse(&["run", "--requests", "5"]).unwrap();
        let plan = cli.load.shape.plan().unwrap();
        assert_eq!((plan.load, plan.requests), (Load::Concurrency(1), Some(5)));
    }

    #[test]
    fn bad_shapes_are_refused_with_the_flag_named() {
        for (args, expected) in [
            (&["run", "--rate", "0"][..], "--rate"),
            (&["run", "--rate", "NaN"][..], "--rate"),
            (&["run", "--concurrency", "0"][..], "--concurrency"),
        ] {
            let cli = parse(args).unwrap();
            let err = cli.load.shape.plan().unwrap_err().to_string();
            assert!(err.contains(expected), "{args:?}: {err}");
        }
        let err = parse(&["run", "--rate", "5", "--concurrency", "2"]).unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::ArgumentConflict);
        let err = parse(&["run", "--duration", "soon"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a positive duration"), "{err}");
    }

    #[test]
    fn http_headers_must_be_name_colon_value() {
        let target = LoadTarget::Http {
            url: "http://127.0.0.1:1/v1/models".to_owned(),
            body: None,
            headers: vec!["no colon here".to_owned()],
        };
        let err = super::target(target, 1).err().unwrap().to_string();
        assert!(err.contains("is not `Name: value`"), "{err}");
        let target = LoadTarget::Http {
            url: "not a url".to_owned(),
            body: None,
            headers: Vec::new(),
        };
        assert!(super::target(target, 1).is_err());
    }
}
