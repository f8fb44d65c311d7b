"""The worker process of a task: `python -m dapx.lab.pvesim.worker` with a JSON job on stdin.

Prints its UPID on stdout (then closes it) so the API can answer, then runs the operation
named in the job (see ops.py) and records TASK OK / TASK ERROR in the task log.
"""

from __future__ import annotations

import json
import os
import sys

from . import ops, tasks


def main() -> int:
    """Read the job, announce the UPID, run the op; exit status 0 on OK."""
    job = json.loads(sys.stdin.read())
    upid = tasks.make_upid(job["node"], job["type"], job["id"], job["user"])
    tasks.TaskLog(upid)  # create the log before announcing, so status never misses it
    sys.stdout.write(upid + "\n")
    sys.stdout.flush()
    os.dup2(os.open(os.devnull, os.O_WRONLY), 1)  # closes the pipe: the API stops waiting
    fn = ops.OPS[job["op"]]
    result = tasks.run_body(upid, lambda log: fn(log, **job["args"]))
    return 0 if result == "OK" or result.startswith("WARNINGS: ") else 1


if __name__ == "__main__":
    sys.exit(main())
