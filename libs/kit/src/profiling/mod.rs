//! Profiling on the admin port, for operators asking where a service spends
//! its time and memory. Off unless `server.profiling = true`: a profile
//! names every function of the binary, and taking one costs a little CPU.
//!
//! Routes (merged into the admin router when on):
//!
//! * `GET /debug/pprof/profile?seconds=N`: samples every thread's stack
//!   `frequency` times a second (default 99) for N seconds (default 30, at
//!   most 300), then answers the profile as pprof protobuf
//!   (`go tool pprof http://HOST:PORT/debug/pprof/profile?seconds=10`), or
//!   as folded stacks with `format=folded` (for flame graph tools). One
//!   profile at a time per process: another request meanwhile is 409.
//! * `GET /debug/heap`: the allocator's figures ([`agentmesh_heap::stats`])
//!   and the process's resident memory, as JSON.
//! * `POST /debug/heap/trim`: gives free heap memory back to the system now
//!   (services also do it on their own, see [`crate::heap`]).
//!
//! Sampling is `SIGPROF`-driven by the `pprof` crate; this module parses
//! the request, keeps to one profile at a time and encodes the answer
//! ([`encode`]).

mod encode;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::Query;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;

/// The profiling routes (see the module docs).
pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/debug/pprof/profile", get(profile))
        .route("/debug/heap", get(heap))
        .route("/debug/heap/trim", post(trim))
}

const MAX_SECONDS: u64 = 300;
const MAX_FREQUENCY: i32 = 1_000;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProfileQuery {
    seconds: Option<u64>,
    frequency: Option<i32>,
    format: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Pprof,
    Folded,
}

/// What a profile request asks for, checked.
#[derive(Debug, PartialEq, Eq)]
struct ProfileRequest {
    duration: Duration,
    frequency: i32,
    format: Format,
}

impl ProfileQuery {
    fn check(self) -> Result<ProfileRequest, String> {
        let seconds = self.seconds.unwrap_or(30);
        if !(1..=MAX_SECONDS).contains(&seconds) {
            return Err(format!("seconds must be 1 to {MAX_SECONDS}, not {seconds}"));
        }
        let frequency = self.frequency.unwrap_or(99);
        if !(1..=MAX_FREQUENCY).contains(&frequency) {
            return Err(format!(
                "frequency must be 1 to {MAX_FREQUENCY} samples a second, not {frequency}"
            ));
        }
        let format = match self.format.as_deref() {
            None | Some("pprof" | "proto") => Format::Pprof,
            Some("folded") => Format::Folded,
            Some(other) => {
                return Err(format!("format must be pprof or folded, not {other:?}"));
            }
        };
        Ok(ProfileRequest {
            duration: Duration::from_secs(seconds),
            frequency,
            format,
        })
    }
}

/// Set while a profile is being taken: the sampler is process-wide.
static PROFILING: AtomicBool = AtomicBool::new(false);

/// Clears [`PROFILING`] however the profile ends.
struct Taking;

impl Drop for Taking {
    fn drop(&mut self) {
        PROFILING.store(false, Ordering::Release);
    }
}

fn text(status: StatusCode, message: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        message + "\n",
    )
        .into_response()
}

async fn profile(
    query: Result<Query<ProfileQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let request = match query {
        Ok(Query(query)) => query.check(),
        Err(rejection) => Err(rejection.body_text()),
    };
    let request = match request {
        Ok(request) => request,
        Err(message) => return text(StatusCode::BAD_REQUEST, message),
    };
    if PROFILING.swap(true, Ordering::AcqRel) {
        return text(
            StatusCode::CONFLICT,
            "a profile is already being taken in this process; ask again when it is done".into(),
        );
    }
    let taking = Taking;
    // The sampler's guard is not Send: it lives on a blocking thread that
    // sleeps through the profile.
    let sampled = tokio::task::spawn_blocking(move || {
        let _taking = taking;
        sample(&request)
    })
    .await;
    match sampled {
        Ok(Ok(body)) => body,
        Ok(Err(message)) => text(StatusCode::INTERNAL_SERVER_ERROR, message),
        Err(err) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the profile did not finish: {err}"),
        ),
    }
}

fn sample(request: &ProfileRequest) -> Result<Response, String> {
    let guard = pprof::ProfilerGuardBuilder::default()
        .frequency(request.frequency)
        // Stack walks that start inside these libraries can deadlock or
        // crash in the signal handler; their frames are noise anyway.
        .blocklist(&["libc", "libgcc", "pthread", "vdso"])
        .build()
        .map_err(|err| format!("cannot start the profiler: {err}"))?;
    std::thread::sleep(request.duration);
    let report = guard
        .report()
        .build()
        .map_err(|err| format!("cannot build the profile: {err}"))?;
    drop(guard);
    Ok(match request.format {
        Format::Pprof => (
            [
                (header::CONTENT_TYPE, "application/octet-stream"),
                (
                    header::CONTENT_DISPOSITION,
                    "attachment; filename=\"profile.pb\"",
                ),
            ],
            encode::pprof(&report),
        )
            .into_response(),
        Format::Folded => (
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            encode::folded(&report),
        )
            .into_response(),
    })
}

/// The process's resident and peak resident bytes, from `/proc/self/status`.
pub(crate) fn resident_bytes() -> Option<(u64, u64)> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let field = |name: &str| -> Option<u64> {
        let line = status.lines().find(|line| line.starts_with(name))?;
        let kib: u64 = line
            .get(name.len()..)?
            .trim()
            .trim_end_matches(" kB")
            .parse()
            .ok()?;
        Some(kib * 1024)
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

#[derive(serde::Serialize)]
struct HeapReport {
    /// `null` where the allocator cannot say (not glibc).
    heap: Option<agentmesh_heap::HeapStats>,
    resident_bytes: Option<u64>,
    peak_resident_bytes: Option<u64>,
}

fn heap_report() -> HeapReport {
    let resident = resident_bytes();
    HeapReport {
        heap: agentmesh_heap::stats(),
        resident_bytes: resident.map(|(now, _)| now),
        peak_resident_bytes: resident.map(|(_, peak)| peak),
    }
}

async fn heap() -> impl IntoResponse {
    axum::Json(heap_report())
}

async fn trim() -> impl IntoResponse {
    let before = heap_report();
    let released = tokio::task::spawn_blocking(agentmesh_heap::trim)
        .await
        .ok()
        .flatten();
    let after = heap_report();
    axum::Json(serde_json::json!({
        "released": released,
        "before": before,
        "after": after,
    }))
}

#[cfg(test)]
mod tests;
