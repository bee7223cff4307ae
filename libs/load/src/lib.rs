//! The load client of `agentmesh load` and of `make bench`: one way to put
//! load on a deployment, so the figures users measure and the ones the
//! benchmark report are made the same way.
//!
//! A [`Plan`] says how hard to push: a fixed rate (open loop) or a fixed
//! number of calls in flight (closed loop), for a duration and at most a
//! number of calls. A [`Target`] makes one call and says how it went
//! ([`Outcome`], with when its tokens came, [`Tokens`]): an agent run over
//! `OrchestratorService.Run` ([`targets::RunTarget`]), a gateway call
//! ([`targets::GenerateTarget`]), or an HTTP request
//! ([`targets::HttpTarget`]).
//!
//! Data flow: [`drive`] schedules the calls; each call's latency (and, for
//! streams, its times to first event and first token and the gaps between
//! tokens) is recorded with the error class when it failed; live totals go
//! to shared [`Counters`] a progress bar reads;
//! at the end the latencies become a [`Summary`] (percentiles, errors by
//! status, throughput), which serialises to JSON and prints as a table.
//!
//! Coordinated omission: at a fixed rate every call has a scheduled send
//! time, and its latency counts from that time, not from when it was
//! actually sent; so a stall that delays later sends shows in their
//! latencies instead of hiding them (as wrk2 and `oha --latency-correction`
//! do). How far the scheduler itself fell behind is reported too
//! ([`Summary::max_send_lag_ms`]).

mod drive;
mod outcome;
mod plan;
mod summary;
pub mod targets;

pub use drive::{Counters, Target, drive};
pub use outcome::{Outcome, Tokens};
pub use plan::{Load, Plan};
pub use summary::{Stats, Summary};
