"""Screenshots of the Prefect UI for the README, taken from a real `dapx up` with the lab.

Run as root: `.venv/bin/python scripts/screenshots.py` (needs Debian's chromium). It starts
`dapx up` in a Prefect home of its own on a free port (holding the lab lock, as the tests do),
runs a replica job's plan and then the job, logs headless Chromium into the UI with the
server's credential (the UI keeps it in localStorage, as its login page does) and saves PNGs
of the run page and its artifacts in docs/screenshots/. Chromium runs with no network beyond
127.0.0.1 (background networking, updates and sync off).
"""

from __future__ import annotations

import asyncio
import base64
import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
OUT = ROOT / "docs" / "screenshots"
LAB_LOCK = Path("/tmp/.dapx-lab-session.lock")
JOB, NEW = "vm100-to-pve3", 9100


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def dapx(*argv: str) -> str:
    return subprocess.run([str(BIN / "dapx"), *argv], check=True, capture_output=True,
                          text=True).stdout


def wait_for(proc: subprocess.Popen, text: str, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if text in line:
            return
    raise RuntimeError(f"dapx up never said {text!r}")


class Browser:
    """Headless Chromium driven over the DevTools protocol (one page)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.profile = tempfile.mkdtemp(prefix="dapx-chromium-")
        self.proc = subprocess.Popen(
            [shutil.which("chromium") or "/usr/bin/chromium", "--headless", "--no-sandbox",
             "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-sync",
             "--disable-background-networking", "--disable-component-update",
             f"--user-data-dir={self.profile}", f"--remote-debugging-port={self.port}",
             "--window-size=1440,1000", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.ids = iter(range(1, 10_000))

    async def __aenter__(self) -> "Browser":
        import websockets

        for _ in range(100):
            try:
                pages = httpx.get(f"http://127.0.0.1:{self.port}/json/list").json()
                break
            except httpx.HTTPError:
                await asyncio.sleep(0.1)
        page = next(p for p in pages if p["type"] == "page")
        self.ws = await websockets.connect(page["webSocketDebuggerUrl"], max_size=2**26)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.ws.close()
        self.proc.terminate()
        self.proc.wait()
        shutil.rmtree(self.profile, ignore_errors=True)

    async def call(self, method: str, **params: object) -> dict:
        ident = next(self.ids)
        await self.ws.send(json.dumps({"id": ident, "method": method, "params": params}))
        while True:
            message = json.loads(await self.ws.recv())
            if message.get("id") == ident:
                return message.get("result", {})

    async def shot(self, url: str, path: Path, settle: float = 6.0) -> None:
        await self.call("Page.navigate", url=url)
        await asyncio.sleep(settle)
        data = (await self.call("Page.captureScreenshot", format="png"))["data"]
        path.write_bytes(base64.b64decode(data))
        print(f"saved {path.relative_to(ROOT)}")


async def take(ui: str, credential: str, run_id: str, result: str, plan: str) -> None:
    async with Browser() as browser:
        await browser.call("Page.navigate", url=ui)
        await asyncio.sleep(2)
        secret = base64.b64encode(credential.encode()).decode()
        await browser.call("Runtime.evaluate",
                           expression=f"localStorage.setItem('prefect-password', '{secret}')")
        OUT.mkdir(parents=True, exist_ok=True)
        await browser.shot(f"{ui}/runs/flow-run/{run_id}", OUT / "run-page.png")
        await browser.shot(f"{ui}/artifacts/artifact/{result}", OUT / "result.png")
        await browser.shot(f"{ui}/artifacts/artifact/{plan}", OUT / "plan.png")


def main() -> None:
    home = Path(tempfile.mkdtemp(prefix="dapx-screenshots-"))
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    env.update(PREFECT_HOME=str(home), PYTHONUNBUFFERED="1")
    os.environ.update(env)
    with open(LAB_LOCK, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        up = subprocess.Popen([str(BIN / "dapx"), "up", "--port", str(port), "--lab", "yes"],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True)
        try:
            wait_for(up, "worker started")
            ui = f"http://127.0.0.1:{port}"
            from dapx.deployments import server

            credential = server.api_credential(home)
            subprocess.run([str(BIN / "prefect"), "deployment", "run", "trust-nodes/default",
                            "-p", "source=pve1", "-p", "destination=pve3"], check=True,
                           env={**env, "PREFECT_API_URL": f"{ui}/api"}, capture_output=True)
            time.sleep(8)
            os.environ["PREFECT_API_URL"] = f"{ui}/api"
            dapx("job", "create", "replica", "--source", "pve1", "--guest", "100", "--dest",
                 "pve3", "--dest-vmid", str(NEW), "--bridge-map", "vmbr0=vmbr1", "--cpu-host",
                 "--keep", "2", "--schedule", "*/15 * * * *", "--paused")
            dapx("job", "run", JOB, "--plan")
            done = dapx("job", "run", JOB, "--wait")
            run_id = done.strip().splitlines()[-1].split()[2]
            from prefect.client.orchestration import get_client
            from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterType

            def artifact(kind: str) -> str:
                with get_client(sync_client=True) as client:
                    found = client.read_artifacts(artifact_filter=ArtifactFilter(
                        type=ArtifactFilterType(any_=[kind])))
                return str(found[-1].id)

            asyncio.run(take(ui, credential, run_id, artifact("table"), artifact("markdown")))
        finally:
            up.send_signal(signal.SIGTERM)
            up.wait(timeout=60)
            from dapx.lab import estate

            if estate.status()["nodes"]["pve3"]["state"] != "running":
                return  # dapx up started the lab, and took it down with everything it made
            estate.run("pve3", ["rm", "-f", f"/etc/pve/nodes/pve3/qemu-server/{NEW}.conf"])
            for disk in (0, 1):
                estate.run("pve3", ["zfs", "destroy", "-r", f"rpool/replica/vm-{NEW}-disk-{disk}"])
                out = estate.run("pve1", ["zfs", "list", "-H", "-o", "name", "-t", "snapshot",
                                          "-r", f"rpool/data/vm-100-disk-{disk}"]).stdout
                for snap in out.split():
                    if f"@dapx_pve3-{NEW}_" in snap:
                        estate.run("pve1", ["zfs", "destroy", snap])
            shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
