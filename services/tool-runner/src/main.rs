//! The `agentmesh-tool-runner` binary: the kit parses flags and configuration, starts
//! logging, and runs [`agentmesh_tool_runner::serve`] until SIGTERM or SIGINT.

fn main() -> std::process::ExitCode {
    agentmesh_kit::main_support::run::<agentmesh_tool_runner::Config, _, _, _>(
        agentmesh_tool_runner::serve,
    )
}
