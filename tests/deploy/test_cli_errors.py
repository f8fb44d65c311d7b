"""Deploy tier: a mistake a person can make with `dapx` gets one line on stderr and exit 2, never
a traceback: here a node that cannot be reached (the lab's closed port). The mistakes that need
no lab are in test_cli_without_lab.py."""

from __future__ import annotations

from tests.deploy.conftest import assert_one_line, run_cli


def test_a_node_that_cannot_be_reached(lab_nodes: str) -> None:
    run_cli("dapx", "init")  # the orchestrator key the new node logs in with
    run_cli("dapx", "node", "add", "closed-port", "--host", "198.18.213.11", "--port", "2",
            "--overwrite")
    try:
        result = run_cli("dapx", "node", "test", "closed-port", check=False)
        assert_one_line(result, "cannot reach", "closed-port")
    finally:
        run_cli("dapx", "node", "remove", "closed-port")
