"""The running lab's nodes saved as node blocks (``dapx lab register``, ``dapx up``, tests).

Imports Prefect only when called: the other lab commands never import it.
"""

from __future__ import annotations

from pathlib import Path


def register_lab_nodes() -> list[str]:
    """Save every running lab node as a node block (keys and fingerprints pinned); return names."""
    from dapx.blocks.manage import add_node
    from dapx.lab import estate

    state = estate.load_state()
    admin_key = Path(state["admin_key"]).read_text()
    names = []
    for node in state["nodes"].values():
        add_node(
            name=node["name"], host=node["address"], ssh_port=node.get("ssh_port", 22),
            kind=node["kind"], storage_kind=node.get("storage_kind", "zfs"),
            api_token_id=node.get("api_token_id"), api_token_secret=node.get("api_token_secret"),
            ssh_host_key=node.get("ssh_host_key"), tls_fingerprint=node.get("tls_fingerprint"),
            ssh_private_key=admin_key, overwrite=True,
        )
        names.append(node["name"])
    return names
