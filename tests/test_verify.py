import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fastresize import MultiScalePolicy
from fastresize.verify import SCHEDULES, _is_oom, _run_child, run_verification, schedule_sizes

ROOT = Path(__file__).resolve().parents[1]


def test_schedules():
    policy = MultiScalePolicy(32, 96, max_first_steps=3, seed=2)
    sizes = {name: schedule_sizes(name, policy, 12) for name in SCHEDULES}
    assert sizes["max_first"][:3] == [96] * 3 and sizes["max_first"][3:] == sizes["random_first"][3:]
    assert sizes["prealloc_first"] == [96, *sizes["random_first"]]
    assert sizes["ascending"] == sorted(sizes["ascending"]) and set(sizes["ascending"]) == set(policy.sizes)
    assert sizes["max_only"] == [96] * 12
    with pytest.raises(ValueError, match=r"schedule must be one of .* got 'zigzag'"):
        schedule_sizes("zigzag", policy, 3)


def test_out_of_memory_errors_are_recognised():
    assert _is_oom(RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 1 bytes"))
    assert _is_oom(RuntimeError("could not create a primitive"))
    assert _is_oom(MemoryError())
    assert not _is_oom(RuntimeError("shape mismatch"))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"device": "tpu"}, r"device must be a torch device such as 'cuda' or 'cpu', got 'tpu'"),
        ({"device": "meta"}, r"device must be a cpu or cuda device, got 'meta'"),
        ({"lower": 64, "upper": 70}, r"the verification needs at least two sizes in \[64, 70\], got \(64,\)"),
        ({"steps": 1}, r"steps must be an int >= 2, got 1"),
    ],
)
def test_bad_settings_fail_before_any_run(kwargs, match):
    with pytest.raises(ValueError, match=match):
        run_verification(progress=False, **{"device": "cpu", **kwargs})


def test_a_crashing_child_is_reported_not_raised():
    config = {"device": "cpu", "sizes": [0], "seed": 0, "batch": 1, "channels": 1, "cap_bytes": None, "prealloc": False}
    result = _run_child(config, timeout=120, extra_env={})
    assert "crashed" in result and "exit status" in result["crashed"]


def test_memory_cli_with_tiny_sizes(tmp_path):
    out, plot = tmp_path / "report.json", tmp_path / "memory.png"
    done = subprocess.run(
        [sys.executable, "-m", "fastresize", "memory", "--device", "cpu", "--lower", "64", "--upper", "96",
         "--steps", "6", "--seeds", "1", "--batch-size", "4", "--channels", "8", "--json", str(out),
         "--plot", str(plot)],
        capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["device"] == "cpu" and report["crashed"] == []
    assert set(report["schedules"]) == set(SCHEDULES)
    for name, entry in report["schedules"].items():
        assert len(entry["peak_bytes"]) == len(entry["sizes"]) == (7 if name == "prealloc_first" else 6)
        assert entry["peak_step"] == max(range(len(entry["peak_bytes"])), key=entry["peak_bytes"].__getitem__)
        assert entry["fail_step_below_cap"] is None or isinstance(entry["fail_step_below_cap"], int)
        assert isinstance(entry["finished_above_cap"], bool)
        assert isinstance(entry["growth_after_max_first_bytes"], int)
    calibration = report["calibration"]
    assert calibration["need_largest_bytes"] > calibration["need_next_largest_bytes"] > 0
    # A 96px step needs more than a 64px one: the figures measure real memory.
    ascending = report["schedules"]["ascending"]
    assert max(report["schedules"]["max_only"]["peak_bytes"]) > ascending["peak_bytes"][0] * 1.5
    assert report["verdict"] == ("held" if all(report["checks"].values()) else "did not hold")
    assert isinstance(report["max_first_growth_ratio"], float)
    assert report["schedules"]["max_first"]["fail_step_below_cap"] == 0
    assert "fail-fast" in done.stdout and "max_first" in done.stdout
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
