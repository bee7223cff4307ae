//! The `agentmesh-edge` binary: the kit parses flags and configuration, starts
//! logging, and runs [`agentmesh_edge::serve`] until SIGTERM or SIGINT.

fn main() -> std::process::ExitCode {
    agentmesh_kit::main_support::run::<agentmesh_edge::Config, _, _, _>(agentmesh_edge::serve)
}
