//! The embedded mesh with API keys on, as a user drives it: a keys file made
//! by `agentmesh keys create --file`, one `[auth]` section for the five
//! services. The services call each other with the service keys the mesh
//! made in memory (a run needs the gateway, the tool runner and the audit
//! service), and the command line's own calls need the user's key, whose
//! scopes are enforced.

use std::path::Path;
use std::process::{Command, Output, Stdio};

fn agentmesh(dir: &Path, args: &[&str], api_key: Option<&str>) -> std::io::Result<Output> {
    let mut command = Command::new(env!("CARGO_BIN_EXE_agentmesh"));
    command
        .args(args)
        .current_dir(dir)
        .env_remove("OPENAI_API_KEY")
        .env_remove("ANTHROPIC_API_KEY")
        .env_remove("AGENTMESH_ORCHESTRATOR")
        .env_remove("AGENTMESH_AUDIT")
        .env_remove("AGENTMESH_CONFIG")
        .env_remove("AGENTMESH_MODEL")
        .env_remove("AGENTMESH_TOKEN")
        .stdin(Stdio::null());
    match api_key {
        Some(key) => command.env("AGENTMESH_API_KEY", key),
        None => command.env_remove("AGENTMESH_API_KEY"),
    };
    command.output()
}

fn text(output: &Output) -> String {
    format!(
        "status: {}\nstdout: {}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Makes a key into `keys.toml` in `dir`; the plain key.
fn create_key(dir: &Path, flags: &[&str]) -> Result<String, String> {
    let mut args = vec!["keys", "create", "--file", "keys.toml", "-o", "json"];
    args.extend_from_slice(flags);
    let output = agentmesh(dir, &args, None).map_err(|err| err.to_string())?;
    let made: serde_json::Value =
        serde_json::from_slice(&output.stdout).map_err(|_| text(&output))?;
    made.get("key")
        .and_then(serde_json::Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| text(&output))
}

#[test]
fn a_run_needs_a_key_with_its_scope_and_the_services_trust_each_other() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let writer = create_key(
        dir,
        &[
            "--tenant",
            "acme",
            "--subject",
            "alice",
            "--scopes",
            "runs:read runs:write",
        ],
    )
    .unwrap();
    let reader = create_key(
        dir,
        &[
            "--tenant",
            "acme",
            "--subject",
            "bob",
            "--scopes",
            "runs:read",
        ],
    )
    .unwrap();
    // Sectioned: the shared [auth] is every service's, [log] sections aside.
    std::fs::write(
        dir.join("mesh.toml"),
        "[auth]\nmethods = [\"api_key\"]\nkeys_file = \"keys.toml\"\n\n[audit.log]\nlevel = \"warn\"\n",
    )
    .unwrap();
    let run = |key: Option<&str>| {
        agentmesh(dir, &["run", "what is 2+3", "-c", "mesh.toml"], key).unwrap()
    };

    let output = run(None);
    assert!(!output.status.success(), "{}", text(&output));
    assert!(text(&output).contains("--api-key"), "{}", text(&output));

    let output = run(Some(&reader));
    assert!(!output.status.success(), "{}", text(&output));
    assert!(text(&output).contains("runs:write"), "{}", text(&output));

    let output = run(Some(&writer));
    assert!(output.status.success(), "{}", text(&output));
    assert!(text(&output).contains('5'), "{}", text(&output));
    // The secret is never echoed.
    assert!(!text(&output).contains(&writer), "{}", text(&output));

    // The run is the reader's to see too (runs:read), in the same tenant.
    let output = agentmesh(dir, &["runs", "list", "-c", "mesh.toml"], Some(&reader)).unwrap();
    assert!(output.status.success(), "{}", text(&output));
    assert!(text(&output).contains("succeeded"), "{}", text(&output));
}
