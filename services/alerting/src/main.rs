//! The `agentmesh-alerting` binary: the kit parses flags and configuration, starts
//! logging, and runs [`agentmesh_alerting::serve`] until SIGTERM or SIGINT.

fn main() -> std::process::ExitCode {
    agentmesh_kit::main_support::run::<agentmesh_alerting::Config, _, _, _>(
        agentmesh_alerting::serve,
    )
}
