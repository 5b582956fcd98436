"""The child runs: each trains one schedule in a fresh interpreter, under a memory cap or not.

:class:`Pool` runs them a few at a time; :func:`child_main` is what each runs. A step's need is
measured above a baseline taken after a warm-up step, and the cap applies above it. On CPU the need
is the peak RSS and the cap is ``RLIMIT_DATA`` above the baseline's ``VmData``. On CUDA the need is
what the step's tensors take at their peak (``max_memory_allocated``). After the warm-up every child
empties the allocator's cache, so its reserved memory R0 holds only live tensors (the weights), and
its allocator limit is R0 + cap (``set_per_process_memory_fraction``, which the allocator checks
against reserved memory). The caching allocator frees its cache and retries before it fails
(``num_alloc_retries``: a step that reserves 2.5 GB in a fresh process can run in 1.5 GB), but
reserved memory is never below allocated memory, so a step whose tensors need more than the cap
(plus the free room inside R0's segments, ``baseline_slack_bytes``) fails whatever the allocator
does. cuDNN would defeat this: it catches an out-of-memory error of a convolution's workspace and
falls back to an algorithm with less workspace (seen on an H100: max-size-first survived the low cap
after 150 to 190 such errors). So the calibration and the capped runs use PyTorch's native
convolutions, which have no fallback; the allocator profiles keep cuDNN, as training does. Each child
still counts the allocator's out-of-memory errors that did not end it (``ooms_caught``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any, NamedTuple

import torch
from tqdm import tqdm

from fastresize.memory import MemoryProfiler, read_status_kib, reset_peak_rss
from fastresize.verify.schedules import conv_net

# Pin glibc's allocator so that a step's need depends on its size, not on the history before it:
# large blocks go straight to mmap (and back on free), and oneDNN caches no per-shape primitives.
CPU_CHILD_ENV = {"MALLOC_MMAP_THRESHOLD_": "131072", "ONEDNN_PRIMITIVE_CACHE_CAPACITY": "0"}
_CODE = (
    "import json, sys; from fastresize.verify.child import child_main; "
    "print(json.dumps(child_main(json.loads(sys.argv[1]))))"
)
_OOM_MARKERS = ("out of memory", "can't allocate memory", "could not create a primitive", "std::bad_alloc")


def is_oom(error: BaseException, allocator_failed: bool = False) -> bool:
    """Whether ``error`` is an out-of-memory error; ``allocator_failed``: the CUDA allocator counted one.

    cuDNN can turn an allocator out-of-memory error into "unable to find an engine", hence the count.
    """
    oom_type = isinstance(error, (MemoryError, torch.cuda.OutOfMemoryError))
    return oom_type or allocator_failed or any(marker in str(error).lower() for marker in _OOM_MARKERS)


def _num_ooms(device: torch.device) -> int:
    return int(torch.cuda.memory_stats(device).get("num_ooms", 0))


def child_main(config: dict[str, Any]) -> dict[str, Any]:
    """Train one schedule in this (fresh) process and return what every step used.

    The warm-up step at the smallest size creates the kernels and sets the baseline. On CUDA,
    ``share_bytes`` bounds the whole process from the start, so that children can share a GPU.
    """
    device = torch.device(config["device"])
    cuda = device.type == "cuda"
    if cuda and device.index is None:
        # set_per_process_memory_fraction wants an index: "cuda" means the current device.
        device = torch.device("cuda", torch.cuda.current_device())
    total = torch.cuda.mem_get_info(device)[1] if cuda else 0  # what the allocator's fraction refers to
    share, cap, sizes = config.get("share_bytes"), config["cap_bytes"], config["sizes"]
    if cuda:
        # The capped runs need a step's memory to depend on its size alone (see the module docstring).
        torch.backends.cudnn.enabled = config.get("cudnn", True)
        if share is not None:
            torch.cuda.set_per_process_memory_fraction(min(1.0, share / total), device)
    torch.manual_seed(config["seed"])
    model = conv_net(config["channels"], config["layers"]).to(device)

    def train_step(side: int, update: bool) -> None:
        x = torch.rand(config["batch"], 3, side, side, device=device)
        model(x).square().mean().backward()
        # Plain SGD written out: a torch.optim optimizer imports torch._dynamo, a second or more per
        # child, and an optimizer's state is tiny next to the activations of a step.
        with torch.no_grad():
            for parameter in model.parameters():
                if update and parameter.grad is not None:
                    parameter.sub_(parameter.grad, alpha=1e-3)
                parameter.grad = None

    train_step(min(sizes), update=True)
    result: dict[str, Any] = {}
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()  # what stays reserved is what no retry can free: live tensors' segments
        baseline = torch.cuda.memory_reserved(device)
        baseline_allocated = torch.cuda.memory_allocated(device)
        limit = share if cap is None else baseline + cap if share is None else min(share, baseline + cap)
        if limit is not None:
            torch.cuda.set_per_process_memory_fraction(min(1.0, limit / total), device)
        ooms_before = _num_ooms(device)
        result.update(baseline_allocated_bytes=baseline_allocated, limit_bytes=limit, total_bytes=total)
    else:
        reset_peak_rss()
        baseline = read_status_kib("VmRSS") or 0
        if cap is not None:
            import resource

            data = read_status_kib("VmData") or 0
            resource.setrlimit(resource.RLIMIT_DATA, (data + cap, resource.RLIM_INFINITY))

    profiler = MemoryProfiler(device)
    fail_step: int | None = None
    error_text = None
    for index, side in enumerate(sizes):
        ooms = _num_ooms(device) if cuda else 0
        try:
            with profiler.step((side, side)):
                train_step(side, update=not (config["prealloc"] and index == 0))
        except (RuntimeError, MemoryError) as error:
            if not is_oom(error, allocator_failed=cuda and _num_ooms(device) > ooms):
                raise
            fail_step, error_text = index, f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"
            break
    records = profiler.records
    result.update(
        baseline_bytes=baseline,
        peak_bytes=[r.peak_bytes - baseline for r in records],
        seconds=[r.seconds for r in records],
        new_shape=[r.new_shape for r in records],
        fail_step=fail_step,
        error=error_text,
    )
    if cuda:
        result.update(
            peak_allocated_bytes=[(r.peak_allocated_bytes or 0) - baseline_allocated for r in records],
            num_alloc_retries=[r.num_alloc_retries for r in records],
            inactive_split_bytes=[r.inactive_split_bytes for r in records],
            ooms_caught=max(0, _num_ooms(device) - ooms_before - (fail_step is not None)),
        )
    return result


class Job(NamedTuple):
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
    def __init__(self, job: Job) -> None:
        env = {name: value for name, value in {**os.environ, **job.env}.items() if value is not None}
        package_root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
        self.job, self.started = job, time.monotonic()
        self.stdout, self.stderr = tempfile.TemporaryFile(), tempfile.TemporaryFile()  # a pipe could fill up
        command = [sys.executable, "-c", _CODE, json.dumps(job.config)]
        self.process = subprocess.Popen(command, stdout=self.stdout, stderr=self.stderr, env=env)

    def result(self, killed_after: float | None) -> dict[str, Any]:
        out, err = _read(self.stdout), _read(self.stderr)
        if killed_after is not None:
            return {"crashed": f"timed out after {killed_after:.0f} s"}
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
    or a hang as ``{"crashed": reason}``). Leaving the ``with`` block (on ``KeyboardInterrupt`` too)
    kills the children still running.

    Args:
        workers: Children at once.
        timeout: Seconds a child may take; a longer one is killed and counts as a hang.
        folder: Where each child's key, configuration and result go as it finishes (``<key>.json``).
        total: With it, a progress bar counts the finished children up to ``total``.
    """

    def __init__(self, workers: int, timeout: float, folder: Path | None = None, total: int | None = None) -> None:
        self.workers, self.timeout, self.folder = workers, timeout, folder
        self.bar = tqdm(total=total, disable=total is None, unit="run", desc=f"memory verification, {workers} at once")
        self.pending: list[Job] = []
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
                self.running.append(_Child(self.pending.pop(0)))
            time.sleep(0.02)
            for run in list(self.running):
                late = run.process.poll() is None and time.monotonic() - run.started > self.timeout
                if run.process.returncode is None and not late:
                    continue
                run.process.kill()  # a no-op once the child has exited
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
