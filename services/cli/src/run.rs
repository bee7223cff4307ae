//! `agentmesh run`: start a run and show it live — the answer's tokens on
//! stdout, tool calls and progress on stderr (a spinner on a terminal, plain
//! lines otherwise), or every event as a JSON line with `--json`.

use std::io::{IsTerminal as _, Write as _};
use std::process::ExitCode;
use std::time::Duration;

use crate::credential::CliChannel;
use agentmesh_proto::orchestrator::v1::{
    self as pb, orchestrator_service_client::OrchestratorServiceClient, run_event,
};
use indicatif::{ProgressBar, ProgressStyle};

use crate::output::ProtoJson;

mod strategy_lines;
use strategy_lines::strategy_line;

/// How events are shown.
pub(crate) struct Renderer {
    json: Option<ProtoJson>,
    spinner: Option<ProgressBar>,
    /// Whether answer text is on the current stdout line.
    mid_line: bool,
    /// Text of the current step, kept to undo on a restarted step.
    step_text: String,
    /// Plan steps being worked on: their text is not printed (parallel
    /// steps would interleave it); each step's result is shown when it ends.
    plan_steps_running: usize,
}

impl Renderer {
    pub(crate) fn new(json: bool) -> anyhow::Result<Self> {
        let json = if json {
            Some(ProtoJson::new("agentmesh.orchestrator.v1.RunEvent")?)
        } else {
            None
        };
        let spinner = (json.is_none() && std::io::stderr().is_terminal()).then(|| {
            let bar = ProgressBar::new_spinner();
            bar.set_style(
                ProgressStyle::with_template("{spinner} {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            bar.enable_steady_tick(Duration::from_millis(100));
            bar.set_message("starting");
            bar
        });
        Ok(Self {
            json,
            spinner,
            mid_line: false,
            step_text: String::new(),
            plan_steps_running: 0,
        })
    }

    /// A line on stderr, around the spinner.
    fn note(&mut self, line: &str) {
        if self.mid_line {
            let _ = writeln!(std::io::stdout());
            self.mid_line = false;
        }
        match &self.spinner {
            Some(bar) => bar.println(line),
            None => {
                let _ = writeln!(std::io::stderr(), "{line}");
            }
        }
    }

    fn status(&mut self, message: &str) {
        match &self.spinner {
            Some(bar) => bar.set_message(message.to_owned()),
            None => self.note(&format!("· {message}")),
        }
    }

    /// Shows one event; returns the exit code once the run has ended.
    pub(crate) fn show(&mut self, event: &pb::RunEvent) -> Option<ExitCode> {
        if let Some(json) = &self.json {
            show_json(json, event);
            return exit_of(event);
        }
        self.count_plan_steps(event);
        match &event.event {
            Some(run_event::Event::RunStarted(started)) => {
                let model = if started.model.is_empty() {
                    "the default route"
                } else {
                    &started.model
                };
                self.note(&format!(
                    "▶ run {} · agent {} · model {model}",
                    event.run_id, started.agent
                ));
            }
            Some(run_event::Event::TokenDelta(_)) if self.plan_steps_running > 0 => {}
            Some(run_event::Event::TokenDelta(delta)) => {
                if let Some(bar) = &self.spinner {
                    bar.suspend(|| print_text(&delta.text));
                } else {
                    print_text(&delta.text);
                }
                self.step_text.push_str(&delta.text);
                self.mid_line = !delta.text.ends_with('\n');
            }
            Some(run_event::Event::ToolCallStarted(call)) => {
                self.note(&format!("→ {} {}", call.tool, call.arguments_json));
                self.status(&format!("running {}", call.tool));
            }
            Some(run_event::Event::ToolCallFinished(done)) => self.note(&tool_finished_line(done)),
            Some(run_event::Event::Progress(progress)) => {
                if progress.step_restarted && !self.step_text.is_empty() {
                    self.note("(the answer so far was discarded)");
                }
                self.step_text.clear();
                self.status(&progress.message);
            }
            Some(run_event::Event::RunFinished(done)) => {
                self.finish_line();
                let usage = done.usage.unwrap_or_default();
                self.note(&format!(
                    "✓ done in {} step(s) · {} input + {} output tokens · run {}",
                    done.steps, usage.input_tokens, usage.output_tokens, event.run_id
                ));
            }
            Some(run_event::Event::RunFailed(failed)) => {
                self.finish_line();
                let error = failed.error.clone().unwrap_or_default();
                self.note(&format!(
                    "✗ run {} failed: {:?}: {}",
                    event.run_id,
                    tonic::Code::from_i32(error.code),
                    error.message
                ));
            }
            Some(run_event::Event::RunCancelled(cancelled)) => {
                self.finish_line();
                self.note(&format!(
                    "✗ run {} cancelled: {}",
                    event.run_id, cancelled.reason
                ));
            }
            Some(run_event::Event::Heartbeat(_)) | None => {}
            // The plan, its steps, recovery choices, evaluations, sub-runs.
            Some(_) => {
                if let Some(line) = strategy_line(event) {
                    self.note(&line);
                }
            }
        }
        exit_of(event)
    }

    /// Keeps count of the plan steps being worked on.
    fn count_plan_steps(&mut self, event: &pb::RunEvent) {
        match &event.event {
            Some(run_event::Event::PlanStepStarted(_)) => self.plan_steps_running += 1,
            Some(run_event::Event::PlanStepFinished(_)) => {
                self.plan_steps_running = self.plan_steps_running.saturating_sub(1);
            }
            _ => {}
        }
    }

    fn finish_line(&mut self) {
        if let Some(bar) = self.spinner.take() {
            bar.finish_and_clear();
        }
        if self.mid_line {
            let _ = writeln!(std::io::stdout());
            self.mid_line = false;
        }
    }

    /// Clears the spinner when the stream ends without a terminal event.
    pub(crate) fn close(&mut self) {
        self.finish_line();
    }
}

/// An event as a JSON line on stdout.
fn show_json(json: &ProtoJson, event: &pb::RunEvent) {
    let mut out = std::io::stdout().lock();
    if let Err(err) = json.write_line(&mut out, event) {
        let _ = writeln!(
            std::io::stderr(),
            "agentmesh: cannot show an event: {err:#}"
        );
    }
    let _ = out.flush();
}

/// A finished tool call: `← tool output (12 ms)` or `✗ tool failed: …`.
fn tool_finished_line(done: &pb::ToolCallFinished) -> String {
    let took = done
        .duration
        .and_then(|d| Duration::try_from(d).ok())
        .map(|d| format!(" ({} ms)", d.as_millis()))
        .unwrap_or_default();
    if done.is_error {
        format!("✗ {} failed: {}{took}", done.tool, done.error_message)
    } else {
        format!("← {} {}{took}", done.tool, done.output_json)
    }
}

fn print_text(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes());
    let _ = out.flush();
}

fn exit_of(event: &pb::RunEvent) -> Option<ExitCode> {
    match event.event {
        Some(run_event::Event::RunFinished(_)) => Some(ExitCode::SUCCESS),
        Some(run_event::Event::RunFailed(_)) => Some(ExitCode::FAILURE),
        Some(run_event::Event::RunCancelled(_)) => Some(ExitCode::from(130)),
        _ => None,
    }
}

/// Runs `request` on the orchestrator at `channel`, showing it; the first
/// Ctrl-C cancels the run (and waits for it to say so).
pub(crate) async fn run_and_show(
    channel: CliChannel,
    request: pb::RunRequest,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let mut client = OrchestratorServiceClient::new(channel);
    let mut renderer = Renderer::new(json)?;
    let mut stream = client
        .run(request)
        .await
        .map_err(|status| {
            anyhow::anyhow!(
                "the orchestrator refused the run: {:?}: {}",
                status.code(),
                status.message()
            )
        })?
        .into_inner();
    let mut run_id = String::new();
    let mut cancel_sent = false;
    let interrupted = agentmesh_kit::shutdown::signal();
    tokio::pin!(interrupted);
    loop {
        tokio::select! {
            message = stream.message() => {
                match message {
                    Ok(Some(response)) => {
                        let Some(event) = response.event else { continue };
                        run_id.clone_from(&event.run_id);
                        if let Some(code) = renderer.show(&event) {
                            return Ok(code);
                        }
                    }
                    Ok(None) => {
                        renderer.close();
                        anyhow::bail!("the run's stream ended before the run did (run {run_id}); follow it with `agentmesh runs get {run_id}`");
                    }
                    Err(status) => {
                        renderer.close();
                        anyhow::bail!("the run's stream broke: {:?}: {} (run {run_id})", status.code(), status.message());
                    }
                }
            }
            () = &mut interrupted, if !cancel_sent && !run_id.is_empty() => {
                cancel_sent = true;
                renderer.note(&format!("cancelling run {run_id}…"));
                let cancel = client.cancel_run(pb::CancelRunRequest {
                    run_id: run_id.clone(),
                    reason: "cancelled from the command line (Ctrl-C)".to_owned(),
                });
                if let Err(status) = cancel.await {
                    renderer.note(&format!("cancel failed: {}", status.message()));
                }
            }
        }
    }
}
