//! The runs this instance drives: one task per run, its live events, and the
//! followers that stream them.
//!
//! ```text
//! Engine::spawn ─▶ drive (one task per run)
//!                    wait: its place (admission: fair across tenants)    QUEUED
//!                    start or resume ─▶ the loop over steps             RUNNING
//!                      step: GenerateStream ─▶ ExecuteToolStream × n ─▶ checkpoint
//!                    end: terminal event + row + checkpoint stored, then
//!                         published; audit event and metrics
//!      every event ─▶ active (numbered, broadcast at once, pending until
//!                     the step is stored by persist)
//! Engine::follow ─▶ follow: stored events, then the pending and live ones
//! ```
//!
//! * [`active`]: the live event buffer of one run ([`ActiveRun`]): sequence
//!   numbers, the broadcast to followers, the events not yet stored, the
//!   cancel request and the "ended" signal.
//! * [`drive`]: the run's task, from QUEUED to its end: waiting for its
//!   places, the deadlines (its timeout, its caller's), and **the loop over
//!   steps**. That loop is where a run's strategy lives: today the only one
//!   asks the model, runs the tools it asked for, and repeats until a final
//!   answer. A strategy that drives steps differently (plan, then execute)
//!   replaces [`drive`]'s loop and keeps calling [`step`].
//! * [`step`]: what one step does: `GenerateStream` (text relayed live as
//!   `token_delta` events), the tool calls in parallel, the results fed
//!   back, the step stored with its checkpoint.
//! * [`peers`]: the calls to the LLM gateway and the tool runner (deadlines
//!   as `grpc-timeout`, the tool list cached briefly, ListTools retried).
//! * [`persist`]: one transaction per step (events, run row, checkpoint,
//!   the step's callback), and the run's end (with its callback), retried
//!   until stored.
//! * [`audit_events`]: RUN_STARTED / RUN_FINISHED / RUN_FAILED /
//!   RUN_CANCELLED and ERROR audit events.
//! * [`follow`]: `StreamRun`/`Run` followers: replay stored events, then
//!   tail the live ones with no gap or duplicate; heartbeats when idle.
//! * [`maintain`](mod@maintain): renews this instance's claims on its runs,
//!   adopts runs claimed here that no task drives, and resumes runs whose
//!   instance died.
//! * [`replicas`](mod@replicas): what replicas on one PostgreSQL database
//!   tell each other (cancels, released runs) and the hand-over of this
//!   instance's runs at shutdown; follows of runs driven elsewhere are
//!   forwarded to the driving replica ([`follow`]).
//!
//! Deadlines: every call to a peer carries a `grpc-timeout` of what is left
//! of the run's time. A run started by `Run` also ends at its caller's
//! deadline (FAILED, DEADLINE_EXCEEDED), queued or running; one started by
//! `StartRun` outlives the call and has only its own timeout.

mod active;
mod audit_events;
mod budget;
mod drive;
mod follow;
mod maintain;
mod memory_tools;
mod peers;
mod persist;
mod replicas;
mod step;
mod strategy;
mod sub_runs;
#[cfg(test)]
pub(crate) mod testing;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use agentmesh_audit_client::AuditClient;
use agentmesh_kit::client::Clients;
use agentmesh_kit::time::now_micros;
use agentmesh_kit::{RequestContext, telemetry};
use agentmesh_storage::StoreError;
use tokio::time::Instant;
use tonic::Status;
use tracing::Instrument as _;
use tracing::field::Empty;

pub(crate) use self::active::ActiveRun;
pub(crate) use self::maintain::maintain;
use self::peers::Peers;
pub(crate) use self::replicas::{FORWARDED_BY, hand_over_at_shutdown, listen};
use crate::admission::{Admission, Places};
use crate::callbacks::Callbacks;
use crate::config::{Config, PromptSettings, Prompts};
use crate::memory::{FullTextIndex, MemoryIndex};
use crate::metrics::RunMetrics;
use crate::store::{Checkpoint, Claimed, RunRow, Store};

/// The component named in ERROR audit events about the run store.
const DATABASE: &str = "database";

/// Where a run driven again from the store picks up.
#[derive(Debug, Default)]
pub(crate) struct Resume {
    /// Its last checkpoint (`None`: it never stored one, and starts anew).
    pub(crate) checkpoint: Option<Checkpoint>,
    /// The sequence numbers its previous driver may have streamed and never
    /// stored, named by the restart marker.
    pub(crate) abandoned: Option<std::ops::RangeInclusive<i32>>,
}

/// The runs this instance drives, and what it needs to drive them.
#[derive(Debug)]
pub(crate) struct Engine {
    store: Store,
    config: Arc<Config>,
    peers: Peers,
    active: Mutex<HashMap<String, Arc<ActiveRun>>>,
    /// This instance's name in the runs it claims.
    owner: String,
    audit: AuditClient,
    metrics: RunMetrics,
    admission: Admission,
    /// Serialises adopting runs claimed here but not driven (maintenance,
    /// CancelRun), so that one run is never adopted twice.
    adopting: tokio::sync::Mutex<()>,
    /// Set once a shutdown hands this instance's runs over (see
    /// [`replicas`](mod@replicas)).
    handing_over: AtomicBool,
    /// The channels to other replicas, by address (forwarded follows).
    replica_channels: Mutex<HashMap<String, agentmesh_kit::client::MeshChannel>>,
    clients: Clients,
    /// Run callbacks: checked at StartRun, stored with steps and ends.
    callbacks: Arc<Callbacks>,
    /// The strategy roles' prompts of each profile (read at start).
    prompts: HashMap<String, Arc<Prompts>>,
    /// Long-term memory (the `remember`/`recall`/`forget` tools).
    memory: Arc<dyn MemoryIndex>,
    /// This engine, for the tasks it spawns itself (sub-runs).
    me: std::sync::Weak<Engine>,
    /// The token budgets of the run trees driven here, by run.
    budgets: Mutex<HashMap<String, Arc<budget::TreeBudget>>>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding the lock leaves plain data behind; keep going.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Engine {
    /// An engine over `store`, calling the gateway and the tool runner at
    /// the configured addresses (connections are made lazily and reused),
    /// recording run starts and ends in `audit`, runs in `metrics`, the
    /// calls to its peers in `client_metrics`, and admission, refusals and
    /// retries through `admission`; runs' callbacks are stored with their
    /// steps and ends, and `callbacks` told.
    pub(crate) fn new(
        config: Arc<Config>,
        store: Store,
        audit: AuditClient,
        metrics: RunMetrics,
        clients: &Clients,
        admission: Admission,
        callbacks: Arc<Callbacks>,
    ) -> Result<Arc<Self>, Box<dyn std::error::Error + Send + Sync>> {
        let peers = Peers::new(&config, clients, admission.reporter().clone())?;
        let memory: Arc<dyn MemoryIndex> =
            Arc::new(FullTextIndex::for_config(store.clone(), &config)?);
        let prompts = config
            .agents
            .iter()
            .map(|(name, profile)| {
                let prompts = profile
                    .prompts
                    .resolve(&format!("agents.{name}.prompts"))
                    .unwrap_or_else(|err| {
                        // Checked when the configuration loaded; a file
                        // gone since falls back to the shipped prompts.
                        tracing::warn!(error = %err, "using the shipped prompts");
                        shipped_prompts()
                    });
                (name.clone(), Arc::new(prompts))
            })
            .collect();
        Ok(Arc::new_cyclic(|me| Self {
            me: me.clone(),
            budgets: Mutex::new(HashMap::new()),
            store,
            config,
            peers,
            active: Mutex::new(HashMap::new()),
            owner: format!("orchestrator-{}", uuid::Uuid::new_v4()),
            audit,
            metrics,
            admission,
            adopting: tokio::sync::Mutex::new(()),
            handing_over: AtomicBool::new(false),
            replica_channels: Mutex::new(HashMap::new()),
            clients: clients.clone(),
            callbacks,
            prompts,
            memory,
        }))
    }

    /// The strategy roles' prompts of profile `agent` (the shipped ones for
    /// a profile no longer configured).
    fn prompts_of(&self, agent: &str) -> Arc<Prompts> {
        self.prompts
            .get(agent)
            .cloned()
            .unwrap_or_else(|| Arc::new(shipped_prompts()))
    }

    /// Long-term memory (its pruning runs beside the engine).
    pub(crate) fn memory(&self) -> Arc<dyn MemoryIndex> {
        Arc::clone(&self.memory)
    }

    /// Run callbacks (StartRun checks a requested one here).
    pub(crate) fn callbacks(&self) -> &Callbacks {
        &self.callbacks
    }

    /// Where runs are admitted (fair across tenants).
    pub(crate) fn admission(&self) -> &Admission {
        &self.admission
    }

    /// The store.
    pub(crate) fn store(&self) -> &Store {
        &self.store
    }

    /// This instance's name in run claims.
    pub(crate) fn owner(&self) -> &str {
        &self.owner
    }

    /// Whether this instance is handing its runs over (shutting down).
    pub(crate) fn is_handing_over(&self) -> bool {
        self.handing_over.load(Ordering::Relaxed)
    }

    /// When a claim made now runs out.
    pub(crate) fn lease_until(&self) -> i64 {
        now_micros()
            .saturating_add(i64::try_from(self.config.run_lease.as_micros()).unwrap_or(i64::MAX))
    }

    /// Runs driven here and not yet started (waiting for a place) or running.
    #[cfg(test)]
    pub(crate) fn active_count(&self) -> usize {
        lock(&self.active).len()
    }

    /// The run, if this instance drives it.
    pub(crate) fn active(&self, run_id: &str) -> Option<Arc<ActiveRun>> {
        lock(&self.active).get(run_id).cloned()
    }

    /// Starts driving a stored run in the background, from its checkpoint
    /// when `resume` is set, once it holds its place (`places`, from
    /// instance). `context` carries the identity and trace of the request
    /// that started it; its deadline is dropped (a run outlives the call
    /// that started it) unless given again as `caller_deadline`, by `Run`,
    /// whose run ends at its caller's deadline.
    ///
    /// `active` is the run's buffer from [`Self::register`]: a run is
    /// registered before it is stored, so that a run claimed by this
    /// instance is always either registered or an orphan the maintenance
    /// adopts (see [`maintain`](mod@maintain)).
    pub(crate) fn spawn(
        self: &Arc<Self>,
        run: RunRow,
        active: Arc<ActiveRun>,
        resume: Option<Resume>,
        context: RequestContext,
        places: Places,
        caller_deadline: Option<Instant>,
    ) {
        let engine = Arc::clone(self);
        // The run's span: a child of the call that started it (or a root
        // when a run resumes after a restart), open until the run ends.
        let span = tracing::info_span!(
            target: "agentmesh::run",
            "invoke_agent",
            otel.name = %format_args!("invoke_agent {}", run.agent),
            otel.kind = "internal",
            otel.status_code = Empty,
            error.type = Empty,
            gen_ai.operation.name = "invoke_agent",
            gen_ai.agent.name = %run.agent,
            gen_ai.conversation.id = %run.session_id,
            gen_ai.request.model = %run.model,
            run_id = %run.run_id,
            trace_id = Empty,
            span_id = Empty,
        );
        telemetry::record_ids(&span);
        tokio::spawn(
            context
                .with_deadline(None)
                .scope(async move {
                    engine
                        .drive(run, active, resume, places, caller_deadline)
                        .await;
                })
                .instrument(span),
        );
    }

    /// Registers `run` as driven here (its live buffer) before its task
    /// starts; `None` when it is registered already (another task drives
    /// it, or is about to).
    /// A new run numbers from 0 and has no reservation yet (its first event
    /// is stored before it goes out); a claimed one from its [`Claimed`].
    pub(crate) fn register(
        &self,
        run: &RunRow,
        claimed: Option<&Claimed>,
    ) -> Option<Arc<ActiveRun>> {
        let mut active = lock(&self.active);
        if active.contains_key(&run.run_id) {
            return None;
        }
        let numbering = claimed.map_or((run.last_sequence, run.last_sequence), |claim| {
            (claim.sequence_from, claim.reserved)
        });
        let buffer =
            ActiveRun::numbered(run.run_id.clone(), run.last_sequence, numbering, run.state);
        active.insert(run.run_id.clone(), Arc::clone(&buffer));
        Some(buffer)
    }

    /// Forgets a run registered by [`Self::register`] whose task was never
    /// spawned (it was not stored after all).
    pub(crate) fn forget(&self, run_id: &str) {
        lock(&self.active).remove(run_id);
    }

    /// A store failure as the status a caller gets (the shared mapping:
    /// logged with the request id, no database text in the message), also
    /// recorded as an ERROR audit event with the full error for operators.
    pub(crate) fn store_failed(&self, err: &StoreError) -> Status {
        let status = err.to_status();
        self.audit_error(DATABASE, status.code(), err.to_string(), None);
        status
    }
}

/// The prompts the roles ship with (no file to read: never fails).
fn shipped_prompts() -> Prompts {
    PromptSettings::default()
        .resolve("prompts")
        .unwrap_or_default()
}

/// Marks a span failed with `status`'s code as its `error.type`.
fn mark_failed(span: &tracing::Span, status: &Status) {
    span.record("otel.status_code", "error");
    span.record(
        "error.type",
        agentmesh_audit_client::code_name(status.code()),
    );
}
