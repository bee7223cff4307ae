//! The chaos suite's mesh: every service as real processes on loopback and
//! one PostgreSQL server (3 orchestrators, 2 gateways, 2 tool runners, 2
//! audit services, alerting with a standby), the scripted model with a
//! per-word delay, and a provider that fails on purpose. Services reach
//! replicated peers through [`Balancer`]s, as a Kubernetes Service's
//! kube-proxy would: per connection, to any backend that accepts.
//!
//! Every process restarts on its own port, so balancers and replicas'
//! advertised addresses stay valid across restarts.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use agentmesh_testkit::fault_provider::{Fault, FaultConfig, FaultMix, FaultProvider};
use agentmesh_tests::{RunningBinary, channel, free_port, http_get, wait_serving, within};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

/// The scripted model: a chain of four side-effecting `ledger` calls then an
/// answer, or one answer streamed word by word; both 20 ms a word.
const RULES: &str = r#"
pace = "20ms"
[[rules]]
on = "user"
match = '(?i)^slow'
text = "one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen seventeen eighteen nineteen twenty"
[[rules]]
on = "user"
match = '(?i)^chain'
tool_calls = [{ name = "ledger", arguments = '{"n": "0"}' }]
[[rules]]
on = "tool"
match = '"result":\s*(?P<n>[0-3])\b'
tool_calls = [{ name = "ledger", arguments = '{"n": "${n}"}' }]
[[rules]]
on = "tool"
match = '"result":\s*4\b'
text = "the ledger has four lines for this run"
[[rules]]
text = "no rule for that"
"#;

/// The side-effecting tool: appends "<run id> <n>" to the ledger file first
/// (the run's workspace is its HOME, named by the run id), then waits, then
/// answers `n + 1`.
const LEDGER: &str = "import json,os,sys,time; a=json.load(sys.stdin); \
     f=open(os.environ['LEDGER'],'a'); f.write(os.path.basename(os.environ['HOME'])+' '+a['n']+'\\n'); f.close(); \
     time.sleep(float(os.environ['PAUSE'])); print(json.dumps({'result': int(a['n'])+1}))";

/// What a process is, for the chaos loop's choice of signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Orchestrator,
    Gateway,
    ToolRunner,
    Audit,
    Alerting,
}

impl Kind {
    /// Whether `kill -9` is among its faults. The gateways and tool runners
    /// get SIGTERM only: a producer killed outright loses the audit events
    /// still in its memory (up to one flush interval, docs/audit.md), and
    /// the suite checks every call's audit event.
    pub(crate) fn may_be_killed(self) -> bool {
        matches!(self, Kind::Orchestrator | Kind::Audit | Kind::Alerting)
    }
}

/// One service process the chaos loop stops and restarts.
#[derive(Debug)]
pub(crate) struct Process {
    pub(crate) name: String,
    pub(crate) kind: Kind,
    binary: &'static str,
    args: Vec<String>,
    envs: Vec<(String, String)>,
    /// The gRPC address it always listens on.
    pub(crate) addr: SocketAddr,
    pub(crate) running: Option<RunningBinary>,
    pub(crate) kills: usize,
    pub(crate) terms: usize,
    /// The log lines of its earlier lives.
    pub(crate) past_logs: Vec<String>,
}

impl Process {
    /// (Re)starts the process and waits until it serves.
    pub(crate) async fn start(&mut self, dir: &Path) {
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        let envs: Vec<(&str, &str)> = self
            .envs
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let running = RunningBinary::start(self.binary, &args, &envs, dir).await;
        within(
            &format!("{} to serve", self.name),
            Duration::from_secs(60),
            wait_serving(channel(running.grpc), ""),
        )
        .await;
        self.running = Some(running);
    }

    /// Stops it with `signal` ("KILL" or "TERM") and waits for the exit.
    pub(crate) async fn stop(&mut self, signal: &str) -> Result<(), String> {
        let mut running = self.running.take().expect("the process runs");
        running.signal(signal).await;
        let (status, log) = running.exit_and_log(Duration::from_secs(60)).await;
        self.past_logs.extend(log.lines().map(str::to_owned));
        if signal == "TERM" && !status.success() {
            let tail: Vec<&str> = log.lines().rev().take(20).collect();
            return Err(format!(
                "{} exited {status} after SIGTERM: {tail:?}",
                self.name
            ));
        }
        Ok(())
    }

    /// Its log lines (every life) that mention `needle`.
    pub(crate) fn log_lines(&self, needle: &str) -> Vec<String> {
        let current = self
            .running
            .as_ref()
            .map(|r| r.log.lock().unwrap().clone())
            .unwrap_or_default();
        self.past_logs
            .iter()
            .chain(current.iter())
            .filter(|line| line.contains(needle))
            .map(|line| format!("{}: {line}", self.name))
            .collect()
    }

    /// A metric's value on its admin server (0 when absent or not running).
    pub(crate) async fn metric(&self, name: &str) -> f64 {
        let Some(running) = &self.running else {
            return 0.0;
        };
        let (_, body) = http_get(running.admin, "/metrics").await;
        body.lines()
            .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }
}

/// A TCP balancer on loopback: each connection goes to the next backend
/// that accepts it. Aborted (with every connection) when dropped.
#[derive(Debug)]
pub(crate) struct Balancer {
    pub(crate) addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Balancer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Balancer {
    pub(crate) async fn start(backends: Vec<SocketAddr>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let backends = Arc::new(backends);
        let task = tokio::spawn(async move {
            let mut connections = JoinSet::new();
            let mut next = 0;
            loop {
                let Ok((inbound, _)) = listener.accept().await else {
                    continue;
                };
                next += 1;
                connections.spawn(relay(inbound, backends.clone(), next));
                while connections.try_join_next().is_some() {}
            }
        });
        Self { addr, task }
    }
}

async fn relay(mut inbound: TcpStream, backends: Arc<Vec<SocketAddr>>, first: usize) {
    let _ = inbound.set_nodelay(true);
    for i in 0..backends.len() {
        let backend = backends[(first + i) % backends.len()];
        let connect = tokio::time::timeout(Duration::from_secs(1), TcpStream::connect(backend));
        if let Ok(Ok(mut outbound)) = connect.await {
            let _ = outbound.set_nodelay(true);
            let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
            return;
        }
    }
}

/// The whole mesh.
pub(crate) struct Mesh {
    /// Kept: the server stops with its last user.
    _server: Arc<agentmesh_testkit::postgres::PostgresServer>,
    pub(crate) dir: tempfile::TempDir,
    pub(crate) processes: Vec<Process>,
    pub(crate) ledger: std::path::PathBuf,
    pub(crate) audit: Balancer,
    _balancers: Vec<Balancer>,
    _provider: FaultProvider,
}

/// Adds a process of `kind` listening on a port of its own.
fn process(
    kind: Kind,
    name: &str,
    binary: &'static str,
    args: &[&str],
    envs: &[(&str, &str)],
) -> Process {
    let port = free_port();
    let mut args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    args.extend(["--port".to_owned(), port.to_string()]);
    Process {
        name: name.to_owned(),
        kind,
        binary,
        args,
        envs: envs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
        running: None,
        kills: 0,
        terms: 0,
        past_logs: Vec::new(),
    }
}

impl Mesh {
    /// Starts everything, each service once it can reach its peers.
    pub(crate) async fn start() -> Self {
        let server = agentmesh_testkit::postgres::shared().await;
        let dir = tempfile::tempdir().unwrap();
        let ledger = dir.path().join("ledger");
        let mut processes = Vec::new();
        let audit_db = server.create_database("chaos_audit").await;
        for i in 0..2 {
            let name = format!("audit-{i}");
            let envs = [("AGENTMESH_AUDIT__STORAGE__URL", audit_db.as_str())];
            processes.push(process(Kind::Audit, &name, "agentmesh-audit", &[], &envs));
        }
        let audit = Balancer::start(processes.iter().map(|p| p.addr).collect()).await;
        let provider = FaultProvider::start(FaultConfig {
            faults: FaultMix::NONE
                .with(Fault::CutStream, 0.3)
                .with(Fault::Error500, 0.1),
            cut_after_tokens: 3,
            pace: Duration::from_millis(20),
            ..FaultConfig::named("flaky")
        })
        .await;
        let gateway_db = server.create_database("chaos_gateway").await;
        let gateway_config = write_gateway_config(dir.path(), audit.addr, &provider, &gateway_db);
        let gateway = (
            "gateway",
            "agentmesh-llm-gateway",
            "AGENTMESH_LLM_GATEWAY__AUDIT__SPOOL_DIR",
        );
        processes.extend(producers(Kind::Gateway, gateway, &gateway_config));
        let tools_config = write_tools_config(dir.path(), audit.addr, &ledger);
        let tool_runner = (
            "tool-runner",
            "agentmesh-tool-runner",
            "AGENTMESH_TOOL_RUNNER__AUDIT__SPOOL_DIR",
        );
        processes.extend(producers(Kind::ToolRunner, tool_runner, &tools_config));
        let gateways = Balancer::start(addrs(&processes, Kind::Gateway)).await;
        let tools = Balancer::start(addrs(&processes, Kind::ToolRunner)).await;
        let orchestrator_db = server.create_database("chaos_orchestrator").await;
        let orchestrator_config = dir.path().join("orchestrator.toml");
        std::fs::write(
            &orchestrator_config,
            "[orchestrator.agents.default]\ntools = [\"*\"]\n\
             [orchestrator.agents.flaky]\nmodel = \"flaky\"\ntools = []\n",
        )
        .unwrap();
        for i in 0..3 {
            processes.push(orchestrator(
                i,
                &orchestrator_config,
                &orchestrator_db,
                [gateways.addr, tools.addr, audit.addr],
            ));
        }
        let alerting_db = server.create_database("chaos_alerting").await;
        let alerting_config = write_alerting_config(dir.path(), audit.addr, &alerting_db);
        for i in 0..2 {
            let name = format!("alerting-{i}");
            let mut p = process(
                Kind::Alerting,
                &name,
                "agentmesh-alerting",
                &["--config", &alerting_config],
                &[],
            );
            let own = format!("http://{}", p.addr);
            p.envs
                .push(("AGENTMESH_ALERTING__LEADER__ADVERTISE_URL".to_owned(), own));
            processes.push(p);
        }
        for p in &mut processes {
            p.start(dir.path()).await;
        }
        Self {
            _server: server,
            dir,
            processes,
            ledger,
            audit,
            _balancers: vec![gateways, tools],
            _provider: provider,
        }
    }

    /// The orchestrators' addresses.
    pub(crate) fn orchestrators(&self) -> Vec<SocketAddr> {
        addrs(&self.processes, Kind::Orchestrator)
    }
}

/// Two replicas of a service that records audit events, from `config`,
/// each spooling them in a folder of its own (`spool_env` names it).
fn producers(
    kind: Kind,
    (prefix, binary, spool_env): (&str, &'static str, &str),
    config: &str,
) -> Vec<Process> {
    (0..2)
        .map(|i| {
            let name = format!("{prefix}-{i}");
            let spool = format!("spool/{name}");
            process(
                kind,
                &name,
                binary,
                &["--config", config],
                &[(spool_env, &spool)],
            )
        })
        .collect()
}

fn addrs(processes: &[Process], kind: Kind) -> Vec<SocketAddr> {
    processes
        .iter()
        .filter(|p| p.kind == kind)
        .map(|p| p.addr)
        .collect()
}

/// Orchestrator replica `i`, advertising its own address, with short claims
/// (a killed replica's runs resume within a few seconds).
fn orchestrator(
    i: usize,
    config: &Path,
    database: &str,
    [gateways, tools, audit]: [SocketAddr; 3],
) -> Process {
    let name = format!("orchestrator-{i}");
    let mut p = process(
        Kind::Orchestrator,
        &name,
        "agentmesh-orchestrator",
        &["--config", config.to_str().unwrap()],
        &[
            ("AGENTMESH_ORCHESTRATOR__STORAGE__URL", database),
            ("AGENTMESH_ORCHESTRATOR__RUN_LEASE", "3s"),
            ("AGENTMESH_ORCHESTRATOR__SERVER__DRAIN_DELAY", "100ms"),
            ("AGENTMESH_ORCHESTRATOR__SERVER__GRACE_PERIOD", "10s"),
            (
                "AGENTMESH_ORCHESTRATOR__MAX_CONCURRENT_RUNS_PER_TENANT",
                "512",
            ),
        ],
    );
    let own = format!("http://{}", p.addr);
    for (key, value) in [
        ("AGENTMESH_ORCHESTRATOR__ADVERTISE_URL", own),
        (
            "AGENTMESH_ORCHESTRATOR__LLM_GATEWAY_URL",
            format!("http://{gateways}"),
        ),
        (
            "AGENTMESH_ORCHESTRATOR__TOOL_RUNNER_URL",
            format!("http://{tools}"),
        ),
        (
            "AGENTMESH_ORCHESTRATOR__AUDIT__URL",
            format!("http://{audit}"),
        ),
        (
            "AGENTMESH_ORCHESTRATOR__AUDIT__SPOOL_DIR",
            format!("spool/{name}"),
        ),
    ] {
        p.envs.push((key.to_owned(), value));
    }
    p
}

fn write_gateway_config(
    dir: &Path,
    audit: SocketAddr,
    provider: &FaultProvider,
    database: &str,
) -> String {
    std::fs::write(dir.join("rules.toml"), RULES).unwrap();
    let rules = dir.join("rules.toml");
    let config = dir.join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            r#"[llm_gateway.audit]
url = "http://{audit}"
[llm_gateway.providers.scripted]
rules_file = {rules:?}
[llm_gateway.providers.flaky]
kind = "openai"
base_url = "{base_url}"
first_token_timeout = "2s"
[llm_gateway.routes.flaky]
target = "flaky/chaos-model"
fallbacks = ["scripted/demo"]
[llm_gateway.retry]
max_attempts = 1
[llm_gateway.rate_limits.tenant]
requests_per_minute = 1000000
[llm_gateway.shared_limits]
url = "{database}"
expected_replicas = 2
"#,
            rules = rules.display().to_string(),
            base_url = provider.base_url(),
        ),
    )
    .unwrap();
    config.to_str().unwrap().to_owned()
}

fn write_tools_config(dir: &Path, audit: SocketAddr, ledger: &Path) -> String {
    let config = dir.join("tools.toml");
    std::fs::write(
        &config,
        format!(
            "[tool_runner]\nworkspaces_dir = \"workspaces\"\n\
             [tool_runner.audit]\nurl = \"http://{audit}\"\n\
             [tool_runner.commands.ledger]\ndescription = \"notes that it ran, waits, counts one up\"\n\
             command = [\"python3\", \"-c\", {}]\nsandbox = \"off\"\nidempotent = false\n\
             env = {{ LEDGER = {:?}, PAUSE = \"0.1\" }}\nmax_concurrency = 64\nmax_queued = 256\n\
             parameters_json = '{{\"type\":\"object\",\"properties\":{{\"n\":{{\"type\":\"string\"}}}},\"required\":[\"n\"]}}'\n",
            toml::Value::String(LEDGER.to_owned()),
            ledger.display().to_string(),
        ),
    )
    .unwrap();
    config.to_str().unwrap().to_owned()
}

/// Alerting on PostgreSQL: one rule over the audit stream, leader retry fast.
fn write_alerting_config(dir: &Path, audit: SocketAddr, database: &str) -> String {
    let config = dir.join("alerting.toml");
    std::fs::write(
        &config,
        format!(
            r#"[alerting]
evaluation_interval = "200ms"
[alerting.source]
url = "http://{audit}"
reconnect_backoff = "100ms"
max_reconnect_backoff = "500ms"
[alerting.audit]
url = ""
[alerting.storage]
url = "{database}"
[alerting.leader]
retry = "200ms"
[[alerting.rules]]
name = "LedgerFailing"
description = "The ledger tool fails"
severity = "warning"
group_by = ["tool"]
[alerting.rules.filter]
types = ["TOOL_CALL"]
outcomes = ["FAILURE"]
[alerting.rules.count]
threshold = 1000000
window = "5m"
"#
        ),
    )
    .unwrap();
    config.to_str().unwrap().to_owned()
}
