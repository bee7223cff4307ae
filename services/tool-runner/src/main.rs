//! The `agentmesh-tool-runner` binary: the kit parses flags and configuration, starts
//! logging, and runs [`agentmesh_tool_runner::serve`] until SIGTERM or SIGINT.

fn main() -> std::process::ExitCode {
    // Started as the sandbox helper of a command tool: set it up and run
    // the tool's program instead of the service.
    if let Some(code) = agentmesh_tool_runner::sandbox::helper_main() {
        return code;
    }
    agentmesh_kit::main_support::run::<agentmesh_tool_runner::Config, _, _, _>(
        agentmesh_tool_runner::serve,
    )
}
