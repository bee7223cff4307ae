//! The demo agent profiles (`demo/agentmesh.toml`), added to the embedded
//! mesh's orchestrator so `agentmesh run --agent planner "…"` works on a
//! fresh clone; a profile of the same name in the user's configuration
//! wins.

use std::collections::BTreeMap;

use agentmesh_kit::ConfigError;
use agentmesh_orchestrator::AgentProfile;
use serde::Deserialize;

/// The demo profiles, as shipped.
const DEMO_PROFILES: &str = include_str!("../../../../demo/agentmesh.toml");

#[derive(Deserialize)]
struct DemoFile {
    orchestrator: DemoOrchestrator,
}

#[derive(Deserialize)]
struct DemoOrchestrator {
    agents: BTreeMap<String, AgentProfile>,
}

/// Adds each demo profile that `config` does not define.
pub(super) fn add_demo_profiles(
    config: &mut agentmesh_orchestrator::Config,
) -> Result<(), ConfigError> {
    let demo: DemoFile = toml::from_str(DEMO_PROFILES)
        .map_err(|err| ConfigError::new("demo profiles", format!("demo/agentmesh.toml: {err}")))?;
    for (name, profile) in demo.orchestrator.agents {
        config.agents.entry(name).or_insert(profile);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use agentmesh_orchestrator::Strategy;

    #[test]
    fn the_demo_profiles_join_the_configured_ones_without_replacing_them() {
        let mut config = agentmesh_orchestrator::Config::default();
        config.agents.insert(
            "planner".to_owned(),
            AgentProfile {
                description: "mine".to_owned(),
                ..AgentProfile::default()
            },
        );
        add_demo_profiles(&mut config).unwrap();
        assert_eq!(config.agents["planner"].description, "mine");
        let mut fresh = agentmesh_orchestrator::Config::default();
        add_demo_profiles(&mut fresh).unwrap();
        assert_eq!(fresh.agents["planner"].strategy, Strategy::PlanExecute);
        assert!(fresh.agents.contains_key("default"));
    }
}
