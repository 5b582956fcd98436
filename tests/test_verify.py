import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from fastresize import MultiScalePolicy
from fastresize.verify import build_report, report_figure, run_verification
from fastresize.verify.child import Job, Pool, is_oom
from fastresize.verify.report import calibrate, runs_expected
from fastresize.verify.schedules import DEFAULTS, SCHEDULES, VARIANTS, Schedule, conv_net, schedule_sizes, seeds_of

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--lower", "64", "--upper", "96", "--steps", "6", "--seeds", "1", "--batch-size", "4", "--channels", "8"]


def _cli(*args, **kwargs):
    return subprocess.Popen(
        [sys.executable, "-m", "fastresize", "memory", "--device", "cpu", "--no-progress", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        **kwargs,
    )


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("memory")
    process = _cli(*TINY, "--jobs", "2", "--out", str(out))
    stdout, stderr = process.communicate(timeout=600)
    assert process.returncode == 0, stderr[-2000:]
    return stdout, out


def test_schedules():
    policy = MultiScalePolicy(32, 96, max_first_steps=3, seed=2)
    sizes = {name: schedule_sizes(name, policy, 12) for name in SCHEDULES}
    assert sizes["max_first"][:3] == [96] * 3 and sizes["max_first"][3:] == sizes["random_first"][3:]
    assert sizes["prealloc_first"] == [96, *sizes["random_first"]]
    assert sizes["ascending"] == sorted(sizes["ascending"]) and set(sizes["ascending"]) == set(policy.sizes)
    assert sizes["max_only"] == [96] * 12
    with pytest.raises(ValueError, match=r"schedule must be one of 'max_first', .*; got 'zigzag'"):
        schedule_sizes("zigzag", policy, 3)


@pytest.mark.parametrize("layers", [2, 5])
def test_conv_net(layers):
    model = conv_net(8, layers)
    convs = [m for m in model if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == layers and convs[0].in_channels == 3 and convs[-1].out_channels == 3
    assert not isinstance(model[-1], torch.nn.ReLU)
    assert model(torch.rand(2, 3, 16, 16)).shape == (2, 3, 16, 16)


def test_out_of_memory_errors_are_recognised():
    assert is_oom(RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 1 bytes"))
    assert is_oom(RuntimeError("could not create a primitive"))
    assert is_oom(MemoryError())
    assert is_oom(torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert not is_oom(RuntimeError("shape mismatch"))
    # cuDNN reports an allocator failure as a failed engine search: the allocator's count decides.
    assert is_oom(RuntimeError("GET was unable to find an engine to execute this computation"), allocator_failed=True)
    assert not is_oom(RuntimeError("GET was unable to find an engine to execute this computation"))


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"device": "tpu"}, ValueError, r"device must be a torch device such as 'cuda' or 'cpu', got 'tpu'"),
        ({"device": "meta"}, ValueError, r"device must be a cpu or cuda device, got 'meta'"),
        (
            {"lower": 64, "upper": 70},
            ValueError,
            r"the verification needs at least two sizes in \[64, 70\], got \(64,\)",
        ),
        ({"steps": 1}, ValueError, r"steps must be an int >= 2, got 1"),
        ({"layers": 1}, ValueError, r"layers must be an int >= 2, got 1"),
        ({"jobs": 0}, ValueError, r"jobs must be an int >= 1, got 0"),
        ({"jobs": 1.5}, TypeError, r"jobs must be an int, got 1.5"),
        ({"timeout": 0}, ValueError, r"timeout must be >= 1.0, got 0"),
    ],
)
def test_bad_settings_fail_before_any_run(kwargs, error, match, tmp_path):
    with pytest.raises(error, match=match):
        run_verification(progress=False, out=tmp_path, **{"device": "cpu", **kwargs})
    assert not (tmp_path / "children").exists() or not any((tmp_path / "children").iterdir())


def test_the_pool_waits_for_one_job_or_all_and_reports_crashes_and_hangs(tmp_path):
    config = {"device": "cpu", "batch": 1, "channels": 1, "layers": 2, "seed": 0, "cap_bytes": None, "prealloc": False}
    with Pool(workers=1, timeout=120, folder=tmp_path) as pool:
        pool.submit([Job("crash", {**config, "sizes": [0]}, {}), Job("hang", {**config, "sizes": [160] * 1000}, {})])
        crash = pool.wait("crash")  # the first phase ends there, before the second job starts
        assert "exit status" in crash["crashed"] and "RuntimeError" in crash["crashed"]
        assert [job.key for job in pool.pending] == ["hang"] and not pool.running
        pool.timeout = 2
        assert pool.wait() is None and not pool.pending
    assert pool.results["hang"] == {"crashed": "timed out after 2 s"}
    assert json.loads((tmp_path / "crash.json").read_text())["result"] == crash


def test_memory_cli_with_tiny_sizes(tiny_run):
    stdout, out = tiny_run
    report = json.loads((out / "report.json").read_text())
    assert report["device"] == "cpu" and report["crashed"] == [] and not report["interrupted"]
    assert report["runs_finished"] == report["runs_expected"] == len(list((out / "children").glob("*.json")))
    assert report["settings"]["jobs"] == 2 and report["settings"]["layers"] == 4
    assert set(report["schedules"]) == set(SCHEDULES) and "schedules_expandable_segments" not in report
    for name, entry in report["schedules"].items():
        assert (
            len(entry["peak_bytes"])
            == len(entry["sizes"])
            == len(entry["seconds"])
            == (7 if name == "prealloc_first" else 6)
        )
        assert entry["peak_step"] == max(range(len(entry["peak_bytes"])), key=entry["peak_bytes"].__getitem__)
        assert entry["mean_step_seconds"] == pytest.approx(sum(entry["seconds"]) / len(entry["seconds"]))
        assert isinstance(entry["finished_above_cap"], bool)
        assert len(entry["fail_fast_by_seed"]) == 1
    calibration = report["calibration"]
    assert calibration["need_largest_bytes"] > calibration["need_next_largest_bytes"] > 0
    assert (
        calibration["cap_below_bytes"]
        == (calibration["need_largest_bytes"] + calibration["need_next_largest_bytes"]) // 2
    )
    # A 96px step needs more than a 64px one: the figures measure real memory.
    assert max(report["schedules"]["max_only"]["peak_bytes"]) > report["schedules"]["ascending"]["peak_bytes"][0] * 1.5
    assert report["schedules"]["max_first"]["fail_step_below_cap"] == 0
    assert report["schedules"]["max_first"]["finished_above_cap"]
    assert report["verdicts"]["fail_fast"] == ("held" if all(report["checks"].values()) else "did not hold")
    assert report["verdicts"]["allocator"] == "not applicable" and "glibc" in report["allocator"]["reason"]
    assert f"fail-fast {report['verdicts']['fail_fast']}" in stdout and "allocator not applicable" in stdout
    assert (out / "report.txt").read_text() in stdout
    assert (out / "memory.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    child = json.loads((out / "children" / "cap_below-max_first-0.json").read_text())
    assert child["key"] == "cap_below/max_first/0" and child["config"]["cap_bytes"] == calibration["cap_below_bytes"]
    assert child["result"]["fail_step"] == 0 and "Error" in child["result"]["error"]


def _crosses(axis):
    return [(x, y) for line in axis.lines if line.get_marker() == "x" for x, y in zip(*line.get_data(), strict=True)]


def _lines(axis, prefix):
    return [line for line in axis.lines if line.get_label().startswith(prefix)]


def test_the_figure_draws_each_schedule_s_running_peak_and_both_caps_in_its_own_panel(tiny_run):
    report = json.loads((tiny_run[1] / "report.json").read_text())
    figure = report_figure(report)
    figure.canvas.draw()
    low, high = (report["calibration"][f"cap_{which}_bytes"] / 2**20 for which in ("below", "above"))
    assert len(figure.axes) == len(SCHEDULES) and "fail-fast held" in figure.get_suptitle()
    for axis, (name, entry) in zip(figure.axes, report["schedules"].items(), strict=True):
        (line,) = _lines(axis, "running peak")
        running = [max(entry["peak_bytes"][: i + 1]) / 2**20 for i in range(len(entry["peak_bytes"]))]
        assert list(line.get_ydata()) == pytest.approx(running)
        reached = min(i for i, peak in enumerate(running) if peak >= 0.99 * running[-1])
        assert axis.get_title(loc="left") == f"{name}\npeak reached at step {reached} (±1%)"
        assert [line.get_ydata()[0] for line in _lines(axis, "low cap")] == pytest.approx([low])
        assert [line.get_ydata()[0] for line in _lines(axis, "high cap")] == pytest.approx([high])
        # One seed in this run: the cross sits on the low cap at the step where the capped run failed.
        assert _crosses(axis) == [(entry["fail_step_below_cap"], low)]
        assert not figure.legends[0].get_window_extent().overlaps(axis.get_window_extent())


def test_the_figure_marks_every_seed_s_failure_on_the_cap_it_failed_under():
    settings = {"device": "cuda:0", "lower": 64, "upper": 96, "sizes": [64, 80, 96], "steps": 12, "seeds": 3,
                "max_first_steps": 5}  # fmt: skip
    results = _cuda_shaped_results(settings, dict.fromkeys(SCHEDULES, 3 * 2**20))
    results["cap_below/max_only/0"]["fail_step"] = None
    results["cap_above/max_only/0"]["fail_step"] = 2
    results["cap_above/max_first/2"]["fail_step"] = 4
    report = build_report(settings, results)
    figure = report_figure(report)
    panels = dict(zip(SCHEDULES, figure.axes, strict=True))
    low, high = (report["calibration"][f"cap_{which}_bytes"] / 2**20 for which in ("below", "above"))
    by_seed = report["schedules"]["random_first"]["fail_fast_by_seed"]
    assert sorted(_crosses(panels["random_first"])) == sorted((row["first_max_step"], low) for row in by_seed.values())
    assert _crosses(panels["max_first"]) == [(0, low)] * 3 + [(4, high)]
    assert _crosses(panels["max_only"]) == [(2, high)]
    assert all(len(_lines(axis, "running peak")) == len(VARIANTS) for axis in figure.axes)  # one per allocator
    assert figure.get_suptitle().startswith("fail-fast did not hold, allocator held")


def test_a_schedule_is_added_in_one_place(monkeypatch):
    ramp = Schedule(
        "the largest size at the end", lambda policy, steps: sorted(schedule_sizes("max_first", policy, steps))
    )
    monkeypatch.setitem(SCHEDULES, "ramp", ramp)
    settings = {"device": "cuda:0", "lower": 64, "upper": 96, "sizes": [64, 80, 96], "steps": 12, "seeds": 2,
                "max_first_steps": 5}  # fmt: skip
    results = _cuda_shaped_results(settings, dict.fromkeys(SCHEDULES, 1000))
    report = build_report(settings, results)
    assert report["runs_expected"] == runs_expected(cuda=True, seeds=2) == len(results)
    entry = report["schedules"]["ramp"]
    assert entry["sizes"] == sorted(entry["sizes"]) and entry["sizes"][-1] == 96
    assert (
        entry["fail_step_below_cap"] == entry["sizes"].index(96)
        and "ramp" in report["allocator"]["variants"]["default"]
    )
    figure = report_figure(report)
    assert [axis.get_title(loc="left").split()[0] for axis in figure.axes] == list(SCHEDULES)


def test_a_stopped_run_reports_what_finished(tmp_path):
    process = _cli(*TINY, "--jobs", "1", "--out", str(tmp_path))
    calibration = tmp_path / "children" / "calibration.json"
    deadline = time.monotonic() + 300
    while not calibration.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 0, stderr[-2000:]
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["interrupted"] and 1 <= report["runs_finished"] < report["runs_expected"]
    assert report["calibration"]["need_largest_bytes"] > 0  # the calibration had finished and is reported
    assert report["verdicts"]["fail_fast"].startswith("incomplete")
    assert f"interrupted: {report['runs_finished']} of {report['runs_expected']} runs had finished" in stdout


def _cuda_shaped_results(settings, reserved, retries=0):
    """Children's results shaped as on CUDA, with each profile's reserved peak given per schedule."""
    steps = settings["steps"]
    results = {
        "calibration": {
            "baseline_bytes": 4 * 2**20,
            "baseline_allocated_bytes": 2**20,
            "peak_bytes": [900, 880, 880, 700, 700, 700],
            "peak_allocated_bytes": [500, 500, 500, 400, 400, 400],
            "fail_step": None,
        }
    }
    for variant in VARIANTS:
        for name in SCHEDULES:
            length = steps + SCHEDULES[name].prealloc
            results[f"profile/{variant}/{name}"] = {
                "peak_bytes": [reserved[name]] * length,
                "peak_allocated_bytes": [reserved[name] // 2] * length,
                "num_alloc_retries": [0] * (length - 1) + [retries],
                "inactive_split_bytes": [0] * length,
                "seconds": [0.01] * length,
                "new_shape": [False] * length,
                "fail_step": None,
            }
    for name in SCHEDULES:
        for seed in seeds_of(name, settings["seeds"]):
            policy = MultiScalePolicy(settings["lower"], settings["upper"], seed=seed)
            first = schedule_sizes(name, policy, steps).index(settings["upper"])
            below = {"fail_step": first, "error": "OutOfMemoryError", "ooms_caught": 0, "num_alloc_retries": [0]}
            results[f"cap_below/{name}/{seed}"] = below
            results[f"cap_above/{name}/{seed}"] = {"fail_step": None, "error": None, "num_alloc_retries": [3]}
    return results


@pytest.mark.parametrize(
    ("random_first", "retries", "verdict"),
    [(2000, 0, "held"), (1000, 0, "held"), (900, 0, "did not hold"), (2000, 1, "inconclusive")],
)
def test_allocator_verdict_on_cuda_shaped_results(random_first, retries, verdict):
    settings = {"device": "cuda:0", "lower": 64, "upper": 96, "sizes": [64, 80, 96], "steps": 12, "seeds": 2,
                "max_first_steps": 5}  # fmt: skip
    reserved = {"max_first": 1000, "prealloc_first": 1000, "random_first": random_first, "ascending": 3000,
                "ramp": 1000, "max_only": 1000}  # fmt: skip
    report = build_report(settings, _cuda_shaped_results(settings, reserved, retries))
    assert report["verdicts"]["allocator"] == verdict
    assert set(report["allocator"]["variants"]) == set(VARIANTS) == set(report["allocator"]["held_by_variant"])
    row = report["allocator"]["variants"]["expandable_segments"]["random_first"]
    assert row["max_reserved_bytes"] == random_first and row["num_alloc_retries"] == retries
    assert row["mean_step_seconds"] == pytest.approx(0.01) and row["max_inactive_split_bytes"] == 0
    assert report["verdicts"]["fail_fast"] == "held"
    assert report["schedules"]["max_first"]["fail_fast_by_seed"][0]["retries_above_cap"] == 3
    assert any(line.startswith(f"allocator {verdict}") for line in report["summary"])


@pytest.mark.parametrize(("device", "verdict"), [("cuda:0", "held"), ("cpu", "did not hold")])
def test_a_random_order_failing_before_its_largest_step(device, verdict):
    # As measured on an H200: under the low cap, random-first failed at steps 1-2, before its first
    # max-size step, because on CUDA the allocator's history adds to a step's need. Fail-fast is about
    # max-size-first failing at step 0; on CPU, where the need depends on the size alone, a random
    # order failing elsewhere than at its first max-size step means the protocol is broken.
    settings = {"device": device, "lower": 64, "upper": 96, "sizes": [64, 80, 96], "steps": 12, "seeds": 2,
                "max_first_steps": 5}  # fmt: skip
    reserved = dict.fromkeys(SCHEDULES, 1000)
    results = _cuda_shaped_results(settings, reserved)
    for seed in range(settings["seeds"]):
        results[f"cap_below/random_first/{seed}"]["fail_step"] = 1
    report = build_report(settings, results)
    assert report["verdicts"]["fail_fast"] == verdict
    assert ("random_first_fails_at_its_first_max_step" in report["checks"]) == (device == "cpu")
    assert any("random-first under the low cap failed at steps [1, 1]" in line for line in report["summary"])


def test_cuda_caps_come_from_allocated_needs():
    calibration = {"baseline_bytes": 6, "baseline_allocated_bytes": 2, "peak_bytes": [900, 950, 900, 700, 700, 700],
                   "peak_allocated_bytes": [500, 510, 500, 400, 420, 400]}  # fmt: skip
    cuda = calibrate(calibration, 96, 80, cuda=True)
    assert cuda["need_largest_bytes"] == 510 and cuda["need_next_largest_bytes"] == 420
    assert cuda["cap_below_bytes"] == 465 and cuda["cap_above_bytes"] == 950 + 4 * 2**20  # 5%, at least 4 MiB
    assert cuda["baseline_slack_bytes"] == 4
    cpu = calibrate({**calibration, "peak_allocated_bytes": None}, 96, 80, cuda=False)
    assert cpu["need_largest_bytes"] == 950 and cpu["cap_below_bytes"] == 825 and cpu["baseline_slack_bytes"] is None


@pytest.mark.cuda
def test_cuda_low_cap_fails_max_first_at_step_0_and_the_high_cap_lets_it_finish():
    # The default CUDA model: at 512 and 496 px the gap between the needs is far above the allocator's rounding.
    defaults = DEFAULTS["cuda"]
    config = {"device": "cuda", "batch": defaults["batch_size"], "channels": defaults["channels"],
              "layers": defaults["layers"], "seed": 0, "cap_bytes": None, "prealloc": False,
              "share_bytes": None, "cudnn": False}  # fmt: skip
    calibration = Job("calibration", {**config, "sizes": [512] * 3 + [496] * 3}, VARIANTS["default"])
    with Pool(1, 300) as pool:
        pool.submit([calibration])
        cal = calibrate(pool.wait("calibration"), 512, 496, cuda=True)
    assert cal["need_largest_bytes"] > cal["need_next_largest_bytes"] > 0
    assert (cal["need_largest_bytes"] - cal["need_next_largest_bytes"]) // 2 > cal["baseline_slack_bytes"]
    sizes = schedule_sizes("max_first", MultiScalePolicy(256, 512), 8)
    with Pool(2, 300) as pool:
        pool.submit(
            Job(f"cap_{which}", {**config, "sizes": sizes, "cap_bytes": cal[f"cap_{which}_bytes"]}, VARIANTS["default"])
            for which in ("below", "above")
        )
        pool.wait()
    results = pool.results
    assert results["cap_below"]["fail_step"] == 0, results["cap_below"]
    assert "OutOfMemoryError" in results["cap_below"]["error"]
    above = results["cap_above"]
    assert above["fail_step"] is None and len(above["peak_bytes"]) == len(sizes)
    assert all(r >= a for r, a in zip(above["peak_bytes"], above["peak_allocated_bytes"], strict=True))
    assert above["limit_bytes"] == above["baseline_bytes"] + cal["cap_above_bytes"]
