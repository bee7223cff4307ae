//! The `agentmesh-audit` binary: the kit parses flags and configuration, starts
//! logging, and runs [`agentmesh_audit::serve`] until SIGTERM or SIGINT.

fn main() -> std::process::ExitCode {
    agentmesh_kit::main_support::run::<agentmesh_audit::Config, _, _, _>(agentmesh_audit::serve)
}
