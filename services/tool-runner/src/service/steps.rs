//! How a pipeline's steps reach their tools: each step is a call on the
//! service's own path ([`ToolRunnerServiceImpl::call`], the one ExecuteTool
//! takes), made for the pipeline's caller, in its run, by the pipeline's
//! deadline. So a step is checked against the caller's allow-list and the
//! tool's schema, waits in the tool's bulkhead, passes its circuit, is
//! retried if the tool is idempotent, counted in the metrics and audited as
//! a TOOL_CALL of its own (marked with the pipeline and the step).
//!
//! A step the service refuses with a status (PERMISSION_DENIED, a full
//! bulkhead, an open circuit, no time left) becomes a failure of the step,
//! which fails the pipeline as a tool error: the pipeline call itself was
//! admitted and ran.

use agentmesh_audit_client::code_name;
use futures::future::BoxFuture;
use tonic::{Code, Status};

use super::{Caller, ToolRunnerServiceImpl};
use crate::outcome::{ToolFailure, ToolOutcome};
use crate::pipeline::{StepCall, StepCaller};
use crate::runner::CallRequest;

/// The steps of one pipeline call, calling through the service.
#[derive(Debug)]
pub(super) struct StepsThroughService {
    service: ToolRunnerServiceImpl,
    caller: Caller,
    /// The pipeline call's method, which refusals of its steps name.
    method: &'static str,
    /// The pipeline call's run: its steps share its workspace.
    run_id: String,
}

impl StepsThroughService {
    pub(super) fn new(
        service: ToolRunnerServiceImpl,
        caller: Caller,
        method: &'static str,
        run_id: &str,
    ) -> Self {
        Self {
            service,
            caller,
            method,
            run_id: run_id.to_owned(),
        }
    }
}

impl StepCaller for StepsThroughService {
    fn call(&self, step: StepCall) -> BoxFuture<'_, ToolOutcome> {
        Box::pin(async move {
            let request = CallRequest {
                tool: step.tool.clone(),
                arguments_json: step.arguments.to_string(),
                call_id: step.call_id.clone(),
                timeout: None,
                run_id: self.run_id.clone(),
                tenant: String::new(),
            };
            let result = self
                .service
                .call(
                    request,
                    &self.caller,
                    self.method,
                    Some(step.deadline),
                    Some(&step),
                )
                .await
                .map_err(|status| refused(&status))?;
            if result.is_error {
                let kind = agentmesh_proto::tools::v1::ToolErrorKind::try_from(result.error_kind)
                    .unwrap_or_default();
                return Err(ToolFailure {
                    kind,
                    message: result.error_message,
                    output_json: result.output_json,
                    // The step's own call counted against its tool.
                    unreachable: false,
                });
            }
            serde_json::from_str(&result.output_json).map_err(|err| {
                ToolFailure::invalid_output(format!("the output is not JSON: {err}"))
            })
        })
    }
}

/// A step refused before its tool ran, as the step's failure: the
/// status's code decides the kind, its message says why.
fn refused(status: &Status) -> ToolFailure {
    let message = format!(
        "refused ({}): {}",
        code_name(status.code()),
        status.message()
    );
    match status.code() {
        Code::PermissionDenied => ToolFailure::denied(message),
        Code::DeadlineExceeded => ToolFailure::timeout(message),
        Code::InvalidArgument => ToolFailure::invalid_arguments(message),
        _ => ToolFailure::failed(message),
    }
}

#[cfg(test)]
mod tests {
    use agentmesh_proto::tools::v1::ToolErrorKind;

    use super::*;

    #[test]
    fn refusals_keep_their_meaning() {
        let cases = [
            (Code::PermissionDenied, ToolErrorKind::Denied),
            (Code::DeadlineExceeded, ToolErrorKind::Timeout),
            (Code::InvalidArgument, ToolErrorKind::InvalidArguments),
            (Code::Unavailable, ToolErrorKind::ExecutionFailed),
            (Code::ResourceExhausted, ToolErrorKind::ExecutionFailed),
        ];
        for (code, kind) in cases {
            let failure = refused(&Status::new(code, "why"));
            assert_eq!(failure.kind, kind, "{code:?}");
            assert!(failure.message.ends_with("): why"), "{}", failure.message);
        }
        assert_eq!(
            refused(&Status::unavailable("circuit open")).message,
            "refused (UNAVAILABLE): circuit open"
        );
    }
}
