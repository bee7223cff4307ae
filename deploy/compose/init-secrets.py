#!/usr/bin/env python3
"""Makes the keys and passwords docker-compose.yml needs, once per checkout.

    python3 deploy/compose/init-secrets.py [--agentmesh PATH] [--dir DIR] [--force]

The mesh in docker-compose.yml listens beyond loopback inside its network,
so every service asks every call for an API key (docs/identity.md). This
script uses the `agentmesh` CLI (`agentmesh keys create`) to make:

  secrets/keys/keys.toml   the keys file every service reads (hashes only,
                           never a key): an admin key for you, and one key
                           per calling service with the scopes of its calls.
                           Mounted read-only at /etc/agentmesh/keys; the
                           services reload it when it changes.
  secrets/<service>.env    per service: its own key
                           (AGENTMESH_SERVICE_CREDENTIAL) and, for the
                           orchestrator, audit and alerting, the URL of its
                           PostgreSQL database (with the password).
  secrets/postgres.env     the PostgreSQL password (POSTGRES_PASSWORD).

The admin key is printed once on stdout and written nowhere: keep it (a
password manager), pass it as AGENTMESH_API_KEY or --api-key to the CLI.
Files holding keys or passwords are readable by you only (0600, in a 0700
directory); Compose reads them as you and hands them to the containers as
environment variables. keys.toml holds only hashes and is readable by the
services' user (65532) through its 0755 directory.

Existing secrets are never overwritten unless --force is given: a new keys
file then replaces the old one (every earlier key stops working); the
PostgreSQL password is kept, since the database volume holds it.
"""

import argparse
import json
import os
import pathlib
import secrets
import shutil
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
DEFAULT_DIR = pathlib.Path(__file__).resolve().parent / "secrets"

# The scopes of each service's own key: the calls it makes (docs/identity.md,
# "Service credentials"). The audit service calls nobody and has no key.
SERVICE_SCOPES = {
    "orchestrator": "service llm:generate tools:read tools:execute audit:write",
    "llm-gateway": "service audit:write",
    "tool-runner": "service audit:write",
    "alerting": "service audit:read audit:write admin",
}

# The services on PostgreSQL, one database each (postgres-init.sql makes them).
DATABASES = ("orchestrator", "audit", "alerting")
POSTGRES_USER = "agentmesh"

# Every file this script writes under the secrets directory; docker-compose.yml
# names the .env files (tools/deploy/docker_check.py checks that it names no
# other).
ENV_FILES = tuple(f"{name}.env" for name in ("orchestrator", "llm-gateway", "tool-runner", "audit", "alerting", "postgres"))
KEYS_FILE = pathlib.Path("keys") / "keys.toml"


def env_prefix(service):
    return "AGENTMESH_" + service.replace("-", "_").upper()


def find_cli(given):
    if given:
        return given
    for candidate in (shutil.which("agentmesh"), ROOT / "target/release/agentmesh", ROOT / "target/debug/agentmesh"):
        if candidate and pathlib.Path(candidate).is_file():
            return str(candidate)
    sys.exit(
        "init-secrets: no `agentmesh` CLI found on PATH or under target/: build it "
        "(cargo build --release -p agentmesh) or pass --agentmesh PATH"
    )


def create_key(cli, keys_file, subject, scopes, label):
    """Adds a platform key to the keys file; returns the key (printed once by the CLI)."""
    result = subprocess.run(
        [cli, "keys", "create", "--platform", "--subject", subject, "--scopes", scopes,
         "--label", label, "--file", str(keys_file), "-o", "json"],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        sys.exit(f"init-secrets: `agentmesh keys create --subject {subject}` failed: {result.stderr.strip()}")
    try:
        return json.loads(result.stdout)["key"]
    except (ValueError, KeyError, TypeError):
        sys.exit(f"init-secrets: `agentmesh keys create --subject {subject}` printed no key in its JSON")


def write_private(path, lines):
    """Writes a file readable by its owner only, made so before any secret is in it."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write("".join(f"{line}\n" for line in lines))


def read_password(path):
    """The password of an earlier run (kept by --force), if any."""
    if not path.is_file():
        return None
    for line in path.read_text().splitlines():
        key, _, value = line.partition("=")
        # Hex, as made below: nothing in it needs escaping in a URL or an env file.
        if key == "POSTGRES_PASSWORD" and value and all(c in "0123456789abcdef" for c in value):
            return value
    return None


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agentmesh", help="the agentmesh CLI (default: on PATH, else target/{release,debug}/agentmesh)")
    parser.add_argument("--dir", type=pathlib.Path, default=DEFAULT_DIR, help="where to write (default: deploy/compose/secrets)")
    parser.add_argument("--force", action="store_true", help="replace existing secrets (every earlier key stops working)")
    args = parser.parse_args(argv)

    out = args.dir
    made = [out / KEYS_FILE, *(out / name for name in ENV_FILES)]
    existing = [str(path) for path in made if path.exists()]
    if existing and not args.force:
        sys.exit(
            "init-secrets: secrets exist already (" + ", ".join(existing) + "); "
            "add keys with `agentmesh keys create --file " + str(out / KEYS_FILE) + "`, "
            "or pass --force to replace them all"
        )
    cli = find_cli(args.agentmesh)

    out.mkdir(parents=True, exist_ok=True)
    out.chmod(0o700)
    keys_dir = out / KEYS_FILE.parent
    keys_dir.mkdir(exist_ok=True)
    keys_dir.chmod(0o755)
    keys_file = out / KEYS_FILE
    # PostgreSQL sets the password only on an empty volume: a replaced
    # password would lock the services out of the existing databases.
    password = read_password(out / "postgres.env") or secrets.token_hex(24)
    for path in made:
        if path.exists():
            path.unlink()

    admin = create_key(cli, keys_file, "ops", "admin", "compose admin key")
    credentials = {
        service: create_key(cli, keys_file, service, scopes, f"{service} service key (compose)")
        for service, scopes in SERVICE_SCOPES.items()
    }
    # Only hashes: the services' user (65532) reads it through the mount.
    keys_file.chmod(0o644)

    write_private(out / "postgres.env", [f"POSTGRES_PASSWORD={password}"])
    for service in ("orchestrator", "llm-gateway", "tool-runner", "audit", "alerting"):
        lines = []
        if service in credentials:
            lines.append(f"AGENTMESH_SERVICE_CREDENTIAL={credentials[service]}")
        if service in DATABASES:
            url = f"postgres://{POSTGRES_USER}:{password}@postgres:5432/{service}"
            lines.append(f"{env_prefix(service)}__STORAGE__URL={url}")
        write_private(out / f"{service}.env", lines)

    print(f"Wrote {keys_file} and the service credentials under {out}.", file=sys.stderr)
    print("Your admin key (shown once, kept nowhere; use it as AGENTMESH_API_KEY):", file=sys.stderr)
    print(admin)
    return 0


if __name__ == "__main__":
    sys.exit(main())
