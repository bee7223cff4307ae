//! The `agentmesh-orchestrator` binary: the kit parses flags and configuration, starts
//! logging, and runs [`agentmesh_orchestrator::serve`] until SIGTERM or SIGINT.

fn main() -> std::process::ExitCode {
    agentmesh_kit::main_support::run::<agentmesh_orchestrator::Config, _, _, _>(
        agentmesh_orchestrator::serve,
    )
}
