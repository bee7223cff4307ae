//! The `agentmesh-llm-gateway` binary: the kit parses flags and configuration, starts
//! logging, and runs [`agentmesh_llm_gateway::serve`] until SIGTERM or SIGINT.

fn main() -> std::process::ExitCode {
    agentmesh_kit::main_support::run::<agentmesh_llm_gateway::Config, _, _, _>(
        agentmesh_llm_gateway::serve,
    )
}
