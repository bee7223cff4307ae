//! `StreamRun(include_sub_runs)`: a run's events merged with those of its
//! sub-runs (and theirs), each run followed by the ordinary follower.
//!
//! ```text
//! root ─▶ follower ─┐
//! each sub-run ─▶ follower ─┼▶ StreamMap (by run id) ─▶ merged stream
//!   found in the store when a run joins, or by a `sub_run_started`
//!   event as it passes
//! each event ─▶ the cursor: every run's last sequence delivered
//!   (a StreamCursor, base64url) ─▶ StreamRunResponse.cursor
//! ```
//!
//! A sub-run's heartbeats are dropped (the root's keep the stream alive);
//! the stream ends when every follower has ended (each after its run's
//! terminal event).

use std::collections::HashMap;

use agentmesh_kit::RequestContext;
use agentmesh_proto::orchestrator::v1::{self as pb, run_event};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use futures::StreamExt as _;
use futures::stream::BoxStream;
use prost::Message as _;
use tokio_stream::StreamMap;
use tonic::Status;

use super::OrchestratorServiceImpl;
use crate::store::{RunFilter, RunRow, Tenants};

/// Largest cursor accepted, in bytes.
const MAX_CURSOR_BYTES: usize = 64 * 1024;
/// Sub-runs listed per run when it joins the stream.
const MAX_LISTED: usize = 256;

/// The cursor of a merged stream, read from a request.
pub(super) fn parse_cursor(cursor: &str, root: &str) -> Result<HashMap<String, i32>, Status> {
    let invalid = || {
        agentmesh_kit::status::invalid_argument([(
            "cursor",
            "is not a cursor of this run's merged stream (pass the `cursor` of the last \
             response received, unchanged)",
        )])
    };
    if cursor.len() > MAX_CURSOR_BYTES {
        return Err(invalid());
    }
    let bytes = URL_SAFE_NO_PAD.decode(cursor).map_err(|_| invalid())?;
    let parsed = pb::StreamCursor::decode(bytes.as_slice()).map_err(|_| invalid())?;
    if !parsed.last_sequence.contains_key(root)
        || parsed.last_sequence.values().any(|sequence| *sequence < 0)
    {
        return Err(invalid());
    }
    Ok(parsed.last_sequence)
}

fn encode_cursor(last: &HashMap<String, i32>) -> String {
    let cursor = pb::StreamCursor {
        last_sequence: last.clone(),
    };
    URL_SAFE_NO_PAD.encode(cursor.encode_to_vec())
}

type Events = BoxStream<'static, Result<pb::RunEvent, Status>>;

/// The merged stream's state: the followers, and what each delivered.
struct Tree {
    service: OrchestratorServiceImpl,
    tenants: Option<String>,
    context: RequestContext,
    root: String,
    last: HashMap<String, i32>,
    followers: StreamMap<String, Events>,
}

impl Tree {
    fn tenants(&self) -> Tenants<'_> {
        self.tenants.as_deref().map_or(Tenants::All, Tenants::One)
    }

    /// Follows `run` from what the cursor says was delivered, and the
    /// sub-runs the store knows of it (theirs too).
    async fn join(&mut self, run: RunRow) -> Result<(), Status> {
        let mut pending = vec![run];
        while let Some(run) = pending.pop() {
            if self.followers.contains_key(&run.run_id) {
                continue;
            }
            let after = self.last.get(&run.run_id).copied().unwrap_or(0);
            let events = self
                .service
                .follow(run.clone(), after, self.context.clone(), false)?;
            self.followers.insert(run.run_id.clone(), events.boxed());
            let engine = self.service.engine()?;
            let filter = RunFilter {
                parent_run_id: run.run_id.clone(),
                ..RunFilter::default()
            };
            let children = engine
                .store()
                .list_runs(self.tenants(), &filter, None, MAX_LISTED)
                .await
                .map_err(|e| engine.store_failed(&e))?;
            pending.extend(children);
        }
        Ok(())
    }

    /// The next response of the merged stream; `None` once every run ended.
    async fn next(&mut self) -> Option<Result<pb::StreamRunResponse, Status>> {
        loop {
            let (run_id, item) = self.followers.next().await?;
            let event = match item {
                Ok(event) => event,
                Err(status) => return Some(Err(status)),
            };
            match &event.event {
                Some(run_event::Event::Heartbeat(_)) if run_id != self.root => continue,
                Some(run_event::Event::SubRunStarted(started)) => {
                    if let Err(status) = self.join_by_id(&started.run_id).await {
                        return Some(Err(status));
                    }
                }
                _ => {}
            }
            if event.sequence > 0 {
                self.last.insert(run_id, event.sequence);
            }
            return Some(Ok(pb::StreamRunResponse {
                event: Some(event),
                cursor: encode_cursor(&self.last),
            }));
        }
    }

    async fn join_by_id(&mut self, run_id: &str) -> Result<(), Status> {
        if self.followers.contains_key(run_id) {
            return Ok(());
        }
        let run = self.service.run_of(self.tenants(), run_id).await?;
        self.join(run).await
    }
}

impl OrchestratorServiceImpl {
    /// The merged stream of `run` and its sub-runs, resumed after `last`
    /// (each run's last sequence delivered).
    pub(super) async fn follow_tree(
        &self,
        run: RunRow,
        last: HashMap<String, i32>,
        tenants: Option<String>,
        context: RequestContext,
    ) -> Result<BoxStream<'static, Result<pb::StreamRunResponse, Status>>, Status> {
        let mut tree = Tree {
            service: self.clone(),
            tenants,
            context,
            root: run.run_id.clone(),
            last,
            followers: StreamMap::new(),
        };
        tree.join(run).await?;
        Ok(futures::stream::unfold(tree, |mut tree| async move {
            tree.next().await.map(|item| (item, tree))
        })
        .boxed())
    }
}
