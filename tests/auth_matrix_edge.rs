//! The access matrix of the HTTP edge: every route the edge serves — read
//! from its own `/openapi.json` (so a new route cannot escape), plus the MCP
//! endpoint — called over real HTTP against the `agentmesh up` binary with
//! API keys on, with each kind of credential.
//!
//! For each route: no credential and an unknown key are 401; a key with
//! every scope but the route's (and not `admin`) is 403; a key with only the
//! route's scope gets through (whatever the service then says of the
//! request, it is not 401 or 403); the same key naming another tenant in
//! `x-agentmesh-tenant` is 403. And a run is another tenant's NOT_FOUND
//! through the edge too. Then the console's sign-in: the session cookie
//! stands for its key, and changes made with it are guarded.

#![expect(
    clippy::unwrap_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "tests fail loudly"
)]

#[path = "access_support.rs"]
#[expect(dead_code, reason = "shared with the other access tests")]
mod access_support;

use std::time::Duration;

use access_support::{Keys, unknown_key};
use agentmesh_auth::scope::Scope;
use agentmesh_tests::{free_base_port, free_port, interrupt, spawn_up};
use serde_json::{Value, json};

/// The scope a route needs: the scope of the RPC behind it (the services'
/// own tables), by the route's OpenAPI operation id.
fn scope_of(operation: &str) -> Scope {
    let rpc = |table: &agentmesh_auth::ScopeTable, method: &str| {
        table
            .scope_of(method)
            .unwrap_or_else(|| panic!("{method} is not in {}", table.service))
    };
    match operation {
        "CreateChatCompletion" => rpc(&agentmesh_llm_gateway::SCOPES, "GenerateStream"),
        "ListOpenAiModels" | "RetrieveOpenAiModel" => {
            rpc(&agentmesh_llm_gateway::SCOPES, "ListModels")
        }
        "RunEventsWebSocket" => rpc(&agentmesh_orchestrator::SCOPES, "StreamRun"),
        "Mcp" => rpc(&agentmesh_tool_runner::SCOPES, "ListTools"),
        // The mesh's deep health is the operator API's, as listing rules.
        "MeshHealth" => rpc(&agentmesh_alerting::SCOPES, "ListRules"),
        method => [
            &agentmesh_orchestrator::SCOPES,
            &agentmesh_audit::SCOPES,
            &agentmesh_alerting::SCOPES,
        ]
        .into_iter()
        .find_map(|table| table.scope_of(method))
        .unwrap_or_else(|| {
            panic!("the edge's operation {method} maps to no known RPC: add it to this matrix")
        }),
    }
}

/// Keys: per scope, one with only it and one with every other (not admin);
/// two tenants' run keys.
fn write_keys(dir: &std::path::Path) -> Keys {
    let names: Vec<(String, Vec<&str>)> = Scope::ALL
        .into_iter()
        .flat_map(|scope| {
            let others: Vec<&str> = Scope::ALL
                .into_iter()
                .filter(|other| *other != scope && *other != Scope::Admin)
                .map(Scope::as_str)
                .collect();
            [
                (format!("only-{scope}"), vec![scope.as_str()]),
                (format!("all-but-{scope}"), others),
            ]
        })
        .collect();
    let mut specs: Vec<(&str, &str, &str, &[&str])> = names
        .iter()
        .map(|(name, scopes)| (name.as_str(), "acme", "alice", scopes.as_slice()))
        .collect();
    let runs: &[&str] = &["runs:read", "runs:write"];
    specs.push(("acme-runs", "acme", "alice", runs));
    specs.push(("globex-runs", "globex", "gus", runs));
    Keys::write(dir, &specs)
}

/// The request for `verb path` (placeholders filled, a body that passes
/// the edge's own checks, so only access decides).
fn request(
    client: &reqwest::Client,
    edge: &str,
    verb: &str,
    path: &str,
    operation: &str,
) -> reqwest::RequestBuilder {
    let url = format!(
        "{edge}{}",
        path.replace("{run_id}", "no-such-run")
            .replace("{name}", "default")
            .replace("{model}", "default")
            .replace("{id}", "no-such-silence")
    );
    let builder = client.request(verb.to_uppercase().parse().unwrap(), url);
    match operation {
        "CreateChatCompletion" => builder.json(&json!({
            "model": "default", "messages": [{"role": "user", "content": "hi"}],
        })),
        "Mcp" => builder
            .header("accept", "application/json, text/event-stream")
            .json(&json!({
                "jsonrpc": "2.0", "id": 1, "method": "initialize",
                "params": {"protocolVersion": "2025-06-18", "capabilities": {},
                           "clientInfo": {"name": "matrix", "version": "1"}},
            })),
        "RunEventsWebSocket" => builder
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
            .header("sec-websocket-version", "13")
            .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
        _ if verb == "post" => builder.json(&json!({})),
        _ => builder,
    }
}

/// `agentmesh up` with API keys on, its keys, the edge's base URL and an
/// HTTP client.
struct KeyedMesh {
    _dir: tempfile::TempDir,
    keys: Keys,
    mesh: tokio::process::Child,
    edge: String,
    client: reqwest::Client,
}

async fn keyed_mesh() -> KeyedMesh {
    agentmesh_kit::client::install_tls_crypto();
    let client = reqwest::Client::new();
    let dir = tempfile::tempdir().unwrap();
    let keys = write_keys(dir.path());
    std::fs::write(
        dir.path().join("mesh.toml"),
        format!(
            "[auth]\nmethods = [\"api_key\"]\nkeys_file = {:?}\nmax_failures_per_minute = 1000000\n",
            keys.path.display().to_string()
        ),
    )
    .unwrap();
    let base = free_base_port(41000, 11, 6000);
    let edge_port = (0..100)
        .map(|_| free_port())
        .find(|port| {
            *port < 64000 && std::net::TcpListener::bind(("127.0.0.1", port + 1000)).is_ok()
        })
        .unwrap_or_else(|| panic!("no free port for the edge and its admin port"));
    let (base_text, edge_text) = (base.to_string(), edge_port.to_string());
    let mesh = spawn_up(
        dir.path(),
        &[
            "--base-port",
            &base_text,
            "--edge-port",
            &edge_text,
            "--data-dir",
            "state",
            "--config",
            "mesh.toml",
            "--log-level",
            "warn",
        ],
    );
    wait_ready(&client, edge_port + 1000).await;
    KeyedMesh {
        _dir: dir,
        keys,
        mesh,
        edge: format!("http://127.0.0.1:{edge_port}"),
        client,
    }
}

#[tokio::test]
async fn every_edge_route_demands_an_api_key_and_the_scope_of_its_rpc() {
    let KeyedMesh {
        _dir,
        keys,
        mesh,
        edge,
        client,
    } = keyed_mesh().await;

    let document: Value = client
        .get(format!("{edge}/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut routes: Vec<(String, String, String)> = Vec::new();
    for (path, operations) in document["paths"].as_object().unwrap() {
        for (verb, operation) in operations.as_object().unwrap() {
            routes.push((
                path.clone(),
                verb.clone(),
                operation["operationId"].as_str().unwrap().to_owned(),
            ));
        }
    }
    assert!(
        routes.iter().any(|(path, _, _)| path == "/mcp"),
        "/mcp is documented"
    );
    let unknown = unknown_key();
    for (path, verb, operation) in &routes {
        let scope = scope_of(operation);
        let what = format!("{verb} {path}");
        let status = |key: Option<String>, tenant: Option<&'static str>| {
            let mut builder = request(&client, &edge, verb, path, operation);
            if let Some(key) = key {
                builder = builder.bearer_auth(key);
            }
            if let Some(tenant) = tenant {
                builder = builder.header("x-agentmesh-tenant", tenant);
            }
            async move {
                let response = builder
                    .timeout(Duration::from_secs(20))
                    .send()
                    .await
                    .unwrap();
                response.status().as_u16()
            }
        };
        assert_eq!(status(None, None).await, 401, "{what} without a credential");
        assert_eq!(
            status(Some(unknown.clone()), None).await,
            401,
            "{what} with an unknown key"
        );
        let all_but = keys.key(&format!("all-but-{scope}")).to_owned();
        assert_eq!(
            status(Some(all_but), None).await,
            403,
            "{what} with every scope but {scope}"
        );
        let only = keys.key(&format!("only-{scope}")).to_owned();
        let through = status(Some(only.clone()), None).await;
        assert!(
            through != 401 && through != 403,
            "{what} with {scope}: {through}"
        );
        assert_eq!(
            status(Some(only), Some("globex")).await,
            403,
            "{what} with a forged tenant"
        );
    }
    assert!(
        routes.len() >= 22,
        "only {} routes were checked",
        routes.len()
    );

    // Tenancy through the edge: acme's run is globex's NOT_FOUND.
    let started: Value = client
        .post(format!("{edge}/v1/runs"))
        .bearer_auth(keys.key("acme-runs"))
        .json(&json!({"objective": "What is 17 * 23 + sqrt(144)?"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let run_id = started["run_id"].as_str().unwrap();
    let own = client
        .get(format!("{edge}/v1/runs/{run_id}"))
        .bearer_auth(keys.key("acme-runs"))
        .send()
        .await
        .unwrap();
    assert_eq!(own.status().as_u16(), 200);
    for url in [
        format!("{edge}/v1/runs/{run_id}"),
        format!("{edge}/v1/runs/{run_id}/events"),
    ] {
        let other = client
            .get(url)
            .bearer_auth(keys.key("globex-runs"))
            .send()
            .await
            .unwrap();
        assert_eq!(
            other.status().as_u16(),
            404,
            "another tenant's run is not found"
        );
    }

    the_console_session_stands_for_its_key_and_guards_changes(&client, &edge, &keys).await;

    interrupt(mesh, "agentmesh up to stop on Ctrl-C").await;
}

async fn wait_ready(client: &reqwest::Client, admin_port: u16) {
    for _ in 0..400 {
        if let Ok(answer) = client
            .get(format!("http://127.0.0.1:{admin_port}/readyz"))
            .send()
            .await
            && answer.status().is_success()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the edge did not become ready");
}

/// The console's sign-in: an API key becomes an HttpOnly, SameSite=Strict
/// session cookie that stands for the key; changes made with it need its
/// CSRF token and this origin; an unknown key gets no session, an altered
/// cookie stands for nothing; signing out clears it.
async fn the_console_session_stands_for_its_key_and_guards_changes(
    client: &reqwest::Client,
    edge: &str,
    keys: &Keys,
) {
    let login = |body: Value| {
        client
            .post(format!("{edge}/console/login"))
            .json(&body)
            .send()
    };
    let refused = login(json!({"api_key": unknown_key()})).await.unwrap();
    assert_eq!(refused.status().as_u16(), 401, "an unknown key");
    assert!(refused.headers().get("set-cookie").is_none());

    let signed = login(json!({"api_key": keys.key("acme-runs")}))
        .await
        .unwrap();
    assert_eq!(signed.status().as_u16(), 200);
    let set_cookie = signed.headers()["set-cookie"].to_str().unwrap().to_owned();
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/", "Max-Age="] {
        assert!(
            set_cookie.contains(attribute),
            "{attribute} in {set_cookie}"
        );
    }
    let cookie = set_cookie.split(';').next().unwrap().to_owned();
    let csrf = signed.json::<Value>().await.unwrap()["csrf_token"]
        .as_str()
        .unwrap()
        .to_owned();

    // Reads with the cookie alone.
    let list_runs = |cookie: String| {
        let request = client
            .get(format!("{edge}/v1/runs"))
            .header("cookie", cookie);
        async move { request.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(
        list_runs(cookie.clone()).await,
        200,
        "the cookie stands for the key"
    );
    let session: Value = client
        .get(format!("{edge}/console/session"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(session["signed_in"], true);
    assert_eq!(session["csrf_token"], csrf.as_str());

    // Changes: the CSRF token is required, and another origin is refused.
    let start = |csrf: Option<&str>, origin: Option<&str>| {
        let mut builder = client
            .post(format!("{edge}/v1/runs"))
            .header("cookie", &cookie)
            .json(&json!({"objective": "What is 1 + 1?"}));
        if let Some(csrf) = csrf {
            builder = builder.header("x-csrf-token", csrf);
        }
        if let Some(origin) = origin {
            builder = builder.header("origin", origin);
        }
        async move { builder.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(start(None, None).await, 403, "no CSRF token");
    assert_eq!(start(Some("forged"), None).await, 403, "a wrong CSRF token");
    assert_eq!(
        start(Some(&csrf), Some("http://evil.example")).await,
        403,
        "another origin"
    );
    assert_eq!(start(Some(&csrf), Some(edge)).await, 200, "the console");

    // Signing out clears the cookie (sealed sessions expire by themselves).
    let out = client
        .post(format!("{edge}/console/logout"))
        .header("cookie", &cookie)
        .header("x-csrf-token", &csrf)
        .send()
        .await
        .unwrap();
    assert_eq!(out.status().as_u16(), 204);
    assert!(
        out.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .contains("Max-Age=0")
    );
    let altered = format!("{}x", cookie.trim_end_matches('A'));
    assert_eq!(list_runs(altered).await, 401, "an altered cookie");

    // Behind an OIDC proxy: the proxy's bearer token, no key in the body.
    let proxied = client
        .post(format!("{edge}/console/login"))
        .bearer_auth(keys.key("acme-runs"))
        .json(&json!({"api_key": ""}))
        .send()
        .await
        .unwrap();
    assert_eq!(proxied.status().as_u16(), 200);
    let proxied_cookie = proxied.headers()["set-cookie"].to_str().unwrap();
    let proxied_cookie = proxied_cookie.split(';').next().unwrap().to_owned();
    assert_eq!(list_runs(proxied_cookie).await, 200);

    // A page of another site cannot make a keyless change either.
    let cross = client
        .post(format!("{edge}/v1/runs"))
        .header("origin", "http://evil.example")
        .bearer_auth(keys.key("acme-runs"))
        .json(&json!({"objective": "What is 1 + 1?"}))
        .send()
        .await
        .unwrap();
    assert_eq!(cross.status().as_u16(), 403);
}
