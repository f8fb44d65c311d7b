"""The Prefect API is locked (issue 9): the session's server runs as `dapx up` runs it.

Without the credential nothing is handed out (the block secrets least of all); a page from
another origin gets no CORS grant; the UI still loads and asks for the login; the Prefect
home is root-only; and `prefect` / `dapx` work with nothing exported, from the profile.
"""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path

import httpx

from dapx.deployments import server
from tests.deploy.conftest import run_cli

SECRETS_QUERY = {"include_secrets": True}


def _base(api: str) -> str:
    return api.removesuffix("/api")


def _auth(credential: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(credential.encode()).decode()}


def _credential() -> str:
    return server.api_credential(Path(os.environ["PREFECT_HOME"]))


def test_block_secrets_are_refused_without_the_credential(prefect_api: str) -> None:
    run_cli("dapx", "init")  # a secret worth stealing: the orchestrator's private key
    url = f"{prefect_api}/block_documents/filter"
    anonymous = httpx.post(url, json=SECRETS_QUERY, timeout=10)
    assert anonymous.status_code == 401 and "PRIVATE KEY" not in anonymous.text
    wrong = httpx.post(url, json=SECRETS_QUERY, headers=_auth("dapx:guess"), timeout=10)
    assert wrong.status_code == 401 and "PRIVATE KEY" not in wrong.text
    allowed = httpx.post(url, json=SECRETS_QUERY, headers=_auth(_credential()), timeout=10)
    assert allowed.status_code == 200 and "PRIVATE KEY" in allowed.text
    # Every other route too, not only the block documents.
    assert httpx.post(f"{prefect_api}/flow_runs/filter", json={}, timeout=10).status_code == 401


def test_a_cross_origin_preflight_is_not_allowed(prefect_api: str) -> None:
    url = f"{prefect_api}/block_documents/filter"
    ask = {"Access-Control-Request-Method": "POST",
           "Access-Control-Request-Headers": "authorization,content-type"}
    evil = httpx.options(url, headers={"Origin": "http://evil.example", **ask}, timeout=10)
    assert evil.status_code >= 400
    assert "access-control-allow-origin" not in evil.headers
    ui = _base(prefect_api)
    own = httpx.options(url, headers={"Origin": ui, **ask}, timeout=10)
    assert own.status_code == 200 and own.headers["access-control-allow-origin"] == ui
    # A rebinding page (Host: evil.example) is refused all the same: it has no credential.
    rebound = httpx.post(url, json=SECRETS_QUERY, headers={"Host": "evil.example"}, timeout=10)
    assert rebound.status_code == 401


def test_the_ui_loads_and_asks_for_the_login(prefect_api: str) -> None:
    page = httpx.get(_base(prefect_api) + "/", follow_redirects=True, timeout=30)
    assert page.status_code == 200 and "<html" in page.text.lower()
    settings = httpx.get(_base(prefect_api) + "/ui-settings", timeout=10).json()
    assert settings["auth"] == "BASIC"  # the UI shows its password form
    assert httpx.get(f"{prefect_api}/health", timeout=10).status_code == 200
    # What the UI sends after the login (Basic base64(password)) is accepted.
    check = httpx.get(f"{prefect_api}/admin/version", headers=_auth(_credential()), timeout=10)
    assert check.status_code == 200


def test_the_prefect_home_is_root_only(prefect_api: str) -> None:
    home = Path(os.environ["PREFECT_HOME"])
    mode = lambda p: stat.S_IMODE(p.stat().st_mode)  # noqa: E731
    assert mode(home) == 0o700
    assert mode(home / server.CREDENTIAL_FILE) == 0o600
    assert mode(home / server.CREDENTIAL_FILE.parent) == 0o700
    assert mode(home / "profiles.toml") == 0o600
    databases = list(home.glob("prefect.db*"))
    assert databases, "the server made no database in its home"
    assert all(mode(db) & 0o077 == 0 for db in databases), [(d, oct(mode(d))) for d in databases]


def test_clients_need_nothing_exported(prefect_api: str) -> None:
    """`prefect` and `dapx` find the URL and the credential in the active profile."""
    run_cli("prefect", "block", "register", "-m", "dapx.blocks", profile_only=True)
    run_cli("dapx", "init", profile_only=True)
    assert "secret/dapx-orchestrator-key" in run_cli(
        "prefect", "block", "ls", profile_only=True).stdout
    assert run_cli("dapx", "node", "list", profile_only=True).stdout.startswith("NAME")
    env_wrong = {"PREFECT_API_AUTH_STRING": "dapx:wrong"}
    os.environ.update(env_wrong)
    try:
        refused = run_cli("prefect", "block", "ls", check=False, timeout=120)
    finally:
        os.environ["PREFECT_API_AUTH_STRING"] = _credential()
    assert refused.returncode != 0
