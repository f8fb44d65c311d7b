"""Create, list and remove node blocks; the orchestrator key; the lab's nodes as blocks.

Called by `dapx node ...`, `dapx init` and `dapx lab register` (``dapx.lab.register``). Every function raises
``InputError`` for a user mistake (unknown node, bad host, unreadable key file) before it
writes anything.
"""

from __future__ import annotations

import sys
from pathlib import Path

from pydantic import SecretStr, ValidationError

from dapx.blocks.node import ORCHESTRATOR_KEY_BLOCK, ProxmoxNode
from dapx.core.types import validation_message
from dapx.core.validate import validate_node_name
from dapx.errors import InputError


def _unknown_node(name: str, known: str = "") -> InputError:
    listed = f" (known nodes: {known})" if known else ""
    return InputError(f"unknown node {name!r}{listed}; add it with `dapx node add {name} "
                      "--host ...`")


def _invalid_node(name: str, exc: BaseException) -> InputError | None:
    """The one-line error for a node block whose saved data no longer validates (edited in
    the Prefect UI, say), or None when ``exc`` is something else."""
    cause = exc if isinstance(exc, ValidationError) else exc.__cause__
    if not isinstance(cause, ValidationError):
        return None
    return InputError(f"node block {name!r} is invalid: {validation_message(cause)}; fix it in the "
                      f"Prefect UI (Blocks) or replace it with `dapx node add {name} --overwrite ...`")


def load_node(name: str) -> ProxmoxNode:
    """The node block ``name``; InputError naming the known nodes when there is none, or
    saying what is wrong when its saved data is invalid."""
    from prefect.exceptions import ObjectNotFound

    validate_node_name(name)
    try:
        return ProxmoxNode.load(name, validate=True)
    except (ValueError, RuntimeError, ObjectNotFound) as exc:
        invalid = _invalid_node(name, exc)
        if invalid is not None:
            raise invalid from None
        known = ", ".join(sorted(r["name"] for r in list_nodes())) or "none"
        raise _unknown_node(name, known) from None


async def aload_nodes(*names: str) -> list[ProxmoxNode]:
    """The node blocks ``names``, for flows; InputError for the first unknown or invalid one."""
    nodes = []
    for name in names:
        validate_node_name(name)
        try:
            nodes.append(await ProxmoxNode.aload(name))
        except (ValueError, RuntimeError) as exc:
            raise (_invalid_node(name, exc) or _unknown_node(name)) from None
    return nodes


async def afind_pbs_node(server: str, name: str | None = None) -> ProxmoxNode:
    """The PBS node block ``name``, or the one whose host is ``server`` (a PBS storage's
    server), for flows. InputError when there is none, or ``name`` is not a PBS node."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    if name:
        return (await aload_nodes(name))[0].require_kind("pbs")
    async with get_client() as client:
        try:
            docs = await client.read_block_documents_by_type("proxmox-node",
                                                             include_secrets=False)
        except ObjectNotFound:
            docs = []
    for doc in sorted(docs, key=lambda d: d.name or ""):
        if doc.data.get("kind") == "pbs" and doc.data.get("host") == server:
            return (await aload_nodes(doc.name))[0]
    raise InputError(f"no PBS node block has host {server!r} (the storage's server); add it "
                     f"with `dapx node add <name> --host {server} --kind pbs ...`")


def _read_secret_file(path: str | None) -> SecretStr | None:
    if not path:
        return None
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text()
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror}") from None
    return SecretStr(text.strip()) if text.strip() else None


def host_key_argument(value: str | None) -> str | None:
    """``--host-key``: a public key line, or the path of a file holding one (a ``.pub``)."""
    if value and not value.lstrip().startswith(("ssh-", "ecdsa-")) and Path(value).is_file():
        try:
            return Path(value).read_text().strip()
        except OSError as exc:
            raise InputError(f"cannot read {value}: {exc.strerror}") from None
    return value


def _check_private_key(key: SecretStr, where: str) -> None:
    """InputError unless ``key`` is an unencrypted private key asyncssh can use (never
    quoting the key: an error text would carry the secret)."""
    import asyncssh

    try:
        asyncssh.import_private_key(key.get_secret_value())
    except (asyncssh.KeyImportError, ValueError, TypeError):
        raise InputError(f"{where} is not an unencrypted OpenSSH or PEM private key; give the "
                         "private half of the key pair (no passphrase)") from None


def add_node(*, name: str, host: str, ssh_port: int = 22, ssh_user: str = "root",
             key_file: str | None = None, kind: str = "pve", storage_kind: str = "zfs",
             api_token_id: str | None = None, api_token_secret_file: str | None = None,
             api_token_secret: str | None = None, ssh_host_key: str | None = None,
             tls_fingerprint: str | None = None, ssh_private_key: str | None = None,
             overwrite: bool = False) -> str:
    """Validate and save a ``ProxmoxNode`` block named ``name``; return its name."""
    key = _read_secret_file(key_file) or (SecretStr(ssh_private_key) if ssh_private_key else None)
    if key is not None:
        _check_private_key(key, key_file or "ssh_private_key")
    secret = _read_secret_file(api_token_secret_file) or (
        SecretStr(api_token_secret) if api_token_secret else None)
    try:
        node = ProxmoxNode(
            name=name, host=host, ssh_port=ssh_port, ssh_user=ssh_user, ssh_private_key=key,
            kind=kind, storage_kind=storage_kind, api_token_id=api_token_id,
            api_token_secret=secret, ssh_host_key=ssh_host_key, tls_fingerprint=tls_fingerprint,
        )
    except ValidationError as exc:
        raise InputError(f"node {name!r}: {validation_message(exc)}") from None
    if not overwrite and name in {r["name"] for r in list_nodes()}:
        raise InputError(f"node {name!r} exists; pass --overwrite to replace it")
    node.save(name, overwrite=True)
    return name


def list_nodes() -> list[dict]:
    """Every saved node block as a dict without secrets."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            docs = client.read_block_documents_by_type("proxmox-node", include_secrets=False)
        except ObjectNotFound:  # block type not registered yet: no nodes
            docs = []
    rows = []
    for doc in docs:
        data = doc.data
        try:
            ProxmoxNode.model_validate(data)
            pinned = "yes" if data.get("ssh_host_key") else "no"
        except ValidationError as exc:  # saved data edited into something invalid
            pinned = f"invalid ({validation_message(exc)})"
        rows.append({
            "name": doc.name, "host": data.get("host"), "ssh_port": data.get("ssh_port", 22),
            "kind": data.get("kind"), "storage_kind": data.get("storage_kind"), "pinned": pinned,
        })
    return sorted(rows, key=lambda r: r["name"])


def remove_node(name: str) -> None:
    """Delete the node block ``name`` (an invalid one too: removing it is the way out);
    InputError naming the known nodes when there is none."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    validate_node_name(name)
    with get_client(sync_client=True) as client:
        try:
            doc = client.read_block_document_by_name(name, block_type_slug="proxmox-node")
        except ObjectNotFound:
            known = ", ".join(sorted(r["name"] for r in list_nodes())) or "none"
            raise _unknown_node(name, known) from None
        client.delete_block_document(doc.id)


def init_orchestrator_key(*, overwrite: bool = False) -> str:
    """Create the orchestrator's ed25519 key pair; save the private half in the Secret block
    ``dapx-orchestrator-key``; return the public key line."""
    import asyncssh
    from prefect.blocks.system import Secret

    try:
        existing = Secret.load(ORCHESTRATOR_KEY_BLOCK).get()
    except ValueError:
        existing = None
    if existing and not overwrite:
        key = asyncssh.import_private_key(existing)
    else:
        key = asyncssh.generate_private_key("ssh-ed25519", comment="dapx-orchestrator")
        Secret(value=key.export_private_key().decode()).save(ORCHESTRATOR_KEY_BLOCK, overwrite=True)
    return key.export_public_key().decode().strip()
