"""The subprocess pool: every child run in a fresh interpreter, a few at a time."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

_CODE = (
    "import json, sys; from fastresize.verify.child import child_main; "
    "print(json.dumps(child_main(json.loads(sys.argv[1]))))"
)


@dataclass
class Job:
    """One child run: its key in the report, its configuration and its environment changes.

    Attributes:
        key: ``calibration``, ``profile/<variant>/<schedule>`` or ``cap_<below|above>/<schedule>/<seed>``.
        config: What :func:`fastresize.verify.child.child_main` is given.
        env: Environment variables to set (``None`` removes one).
    """

    key: str
    config: dict[str, Any]
    env: dict[str, str | None]


class _Child:
    """A job's child process, started now, with the files that take its output (a pipe could fill up)."""

    def __init__(self, job: Job) -> None:
        env = {name: value for name, value in {**os.environ, **job.env}.items() if value is not None}
        package_root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
        self.job, self.started = job, time.monotonic()
        self.stdout, self.stderr = tempfile.TemporaryFile(), tempfile.TemporaryFile()
        command = [sys.executable, "-c", _CODE, json.dumps(job.config)]
        self.process = subprocess.Popen(command, stdout=self.stdout, stderr=self.stderr, env=env)

    def result(self, timeout: float | None) -> dict[str, Any]:
        """What the child returned, or ``{"crashed": reason}``; ``timeout``: it was killed after so long."""
        out, err = _read(self.stdout), _read(self.stderr)
        if timeout is not None:
            return {"crashed": f"timed out after {timeout:.0f} s"}
        if self.process.returncode != 0 or not out:
            tail = (err or out).splitlines()[-3:]
            return {"crashed": f"exit status {self.process.returncode}: {' | '.join(tail)}"}
        return json.loads(out.splitlines()[-1])  # type: ignore[no-any-return]


def _read(file: IO[bytes]) -> str:
    file.seek(0)
    with file:
        return file.read().decode(errors="replace").strip()


class Pool:
    """Runs the submitted jobs in order, ``workers`` at a time, each in a fresh interpreter.

    Jobs run only inside :meth:`wait`. Each result is kept in :attr:`results` by the job's key (a crash
    or a hang as ``{"crashed": reason}``) and, with ``folder``, saved as ``folder/<key>.json`` as it
    finishes. Leaving the ``with`` block (on ``KeyboardInterrupt`` too) kills the children still running.

    Args:
        workers: Children at once.
        timeout: Seconds a child may take; a longer one is killed and counts as a hang.
        folder: Where each child's key, configuration and result go as it finishes.
        total: With it, a progress bar counts the finished children up to ``total``.
    """

    def __init__(self, workers: int, timeout: float, folder: Path | None = None, total: int | None = None) -> None:
        from tqdm import tqdm

        self.workers, self.timeout, self.folder = workers, timeout, folder
        self.bar = tqdm(total=total, disable=total is None, unit="run", desc=f"memory verification, {workers} at once")
        self.pending: deque[Job] = deque()
        self.running: list[_Child] = []
        self.results: dict[str, dict[str, Any]] = {}
        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True)

    def submit(self, jobs: Iterable[Job]) -> None:
        """Queue jobs behind those already submitted."""
        self.pending.extend(jobs)

    def wait(self, key: str | None = None) -> dict[str, Any] | None:
        """Run jobs until the one named ``key`` has finished and return its result, or until all have."""
        while (self.pending or self.running) and key not in self.results:
            while self.pending and len(self.running) < self.workers:
                self.running.append(_Child(self.pending.popleft()))
            time.sleep(0.02)
            for run in list(self.running):
                late = run.process.poll() is None and time.monotonic() - run.started > self.timeout
                if run.process.returncode is None and not late:
                    continue
                if late:
                    run.process.kill()
                    run.process.wait()
                self.running.remove(run)
                self.results[run.job.key] = result = run.result(self.timeout if late else None)
                if self.folder is not None:
                    text = json.dumps({"key": run.job.key, "config": run.job.config, "result": result})
                    (self.folder / f"{run.job.key.replace('/', '-')}.json").write_text(text)
                self.bar.update(1)
        return self.results.get(key) if key is not None else None

    def __enter__(self) -> Pool:
        return self

    def __exit__(self, *exc: object) -> None:
        for run in self.running:
            run.process.kill()
            run.process.wait()
        self.bar.close()
