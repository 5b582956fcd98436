import io
import json
import math
import os
import subprocess
import sys

import pytest
import torch

from fastresize.finder import find_max_size
from fastresize.policy import MultiScalePolicy


class FakeStep:
    """A training step that runs out of memory above an area, and records the sizes it is given."""

    def __init__(self, max_area, error=lambda: torch.OutOfMemoryError("CUDA out of memory. Tried to allocate")):
        self.max_area, self.error, self.seen = max_area, error, []

    def __call__(self, images):
        self.seen.append(tuple(images.shape))
        if images.shape[-2] * images.shape[-1] > self.max_area:
            raise self.error()


def _find(step, policy, batch=None, **kwargs):
    lines = []
    batch = torch.zeros(2, 3, 20, 20, dtype=torch.uint8) if batch is None else batch
    found = find_max_size(step, batch, policy, log=lines.append, **kwargs)
    return found, lines


@pytest.mark.parametrize(
    "policy",
    [
        MultiScalePolicy(64, 512, multiple=32),  # 15 sizes
        MultiScalePolicy(sizes=[96, 160, 224, 288]),
        MultiScalePolicy(sizes=[(512, 768), (640, 640), (768, 512), (384, 896), (256, 256)]),
        MultiScalePolicy((96, 192), (160, 320), ramp=(0, 100)),
    ],
)
def test_bisection_returns_the_largest_size_that_fits(policy):
    shapes = policy.shapes
    for h0, w0 in shapes:
        step = FakeStep(max_area=h0 * w0)
        # Of two buckets of the same area (512x768, 768x512), the finder keeps the later, as max_shape.
        answer = max(i for i, (h, w) in enumerate(shapes) if h * w <= h0 * w0)
        h, w = shapes[answer]
        found, lines = _find(step, policy)
        expected = h if h == w else (h, w)
        assert found.size == expected
        assert found.policy.max_shape == (h, w)
        assert found.policy.state_dict() == policy.capped(expected).state_dict()
        assert len(step.seen) == len(lines) <= 1 + math.ceil(math.log2(len(shapes)))
        assert step.seen[0][-2:] == policy.max_shape  # the largest first
        if answer < len(shapes) - 1:  # the answer and the size above it were both tried
            assert (2, 3, h, w) in step.seen and (2, 3, *shapes[answer + 1]) in step.seen
        else:
            assert len(step.seen) == 1 and found.policy.state_dict() == policy.state_dict()


def test_the_lines():
    policy = MultiScalePolicy(64, 256, multiple=64)
    found, lines = _find(FakeStep(max_area=128 * 128), policy)
    assert found.size == 128
    assert lines == [
        "find_max_size: try 1: 256x256: out of memory (OutOfMemoryError: CUDA out of memory. Tried to allocate)",
        "find_max_size: try 2: 128x128: fits",
        "find_max_size: try 3: 192x192: out of memory (OutOfMemoryError: CUDA out of memory. Tried to allocate)",
    ]
    out = io.StringIO()
    find_max_size(FakeStep(max_area=128 * 128), torch.zeros(1, 3, 8, 8), policy, file=out)
    assert out.getvalue().splitlines() == lines


def test_the_lines_go_to_stdout_by_default(capsys):
    find_max_size(FakeStep(max_area=10**9), torch.zeros(1, 3, 8, 8), MultiScalePolicy(64, 128))
    assert capsys.readouterr().out == "find_max_size: try 1: 128x128: fits\n"


@pytest.mark.parametrize(
    "error",
    [
        lambda: torch.OutOfMemoryError("CUDA out of memory"),
        lambda: MemoryError(),
        lambda: RuntimeError(
            "[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: "
            "you tried to allocate 4503599627370496 bytes. Error code 12 (Cannot allocate memory)"
        ),
        lambda: RuntimeError("cuDNN error: CUDNN_STATUS_NOT_SUPPORTED. This error may appear if you passed in a"),
        lambda: RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`"),
    ],
    ids=["cuda", "python", "cpu", "cudnn", "cublas"],
)
def test_every_kind_of_out_of_memory_is_caught(error):
    found, lines = _find(FakeStep(max_area=96 * 96, error=error), MultiScalePolicy(64, 160, multiple=32))
    assert found.size == 96
    assert "out of memory (" in lines[0]


@pytest.mark.parametrize("error", [RuntimeError("shape mismatch"), ValueError("bad"), KeyError("label")])
def test_other_errors_are_raised(error):
    def step(images):
        raise error

    with pytest.raises(type(error), match=str(error.args[0])):
        _find(step, MultiScalePolicy(64, 160))


def test_memory_is_freed_after_every_out_of_memory(monkeypatch):
    import fastresize.finder as finder

    collected = []
    monkeypatch.setattr(finder.gc, "collect", lambda *args: collected.append(1) or 0)
    step = FakeStep(max_area=96 * 96)
    _find(step, MultiScalePolicy(64, 512, multiple=32))
    ooms = sum(1 for shape in step.seen if shape[-1] > 96)
    assert ooms >= 2 and len(collected) == ooms


def test_even_the_smallest_size_running_out_raises():
    with pytest.raises(RuntimeError, match=r"even the smallest size \(64, 64\) runs out of memory with a batch"):
        _find(FakeStep(max_area=10), MultiScalePolicy(64, 256))


def test_the_step_gets_the_batch_resized_as_asked(device):
    seen = []

    def step(images):
        seen.append((tuple(images.shape), images.dtype, images.device.type, float(images.max())))
        if images.shape[-1] > 192:
            raise torch.OutOfMemoryError("out of memory")

    batch = torch.full((2, 30, 40, 3), 255, dtype=torch.uint8)  # NHWC: H = 30, W = 40
    policy = MultiScalePolicy(128, 256, multiple=32, side="short")
    found, _ = _find(step, policy, batch, device=device, layout="NHWC", value_range=(0, 1), dtype=torch.float32)
    assert found.size == 128  # the short side (the height) 160 gives a width of 213 -> 224 > 192
    assert seen[0] == ((2, 3, 256, 352), torch.float32, device.type, 1.0)  # 40 * 256 / 30 = 341.3 -> 352
    assert all(shape[-2] * 40 // 30 - shape[-1] in range(-16, 17) for shape, *_ in seen)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"step_fn": None}, TypeError, r"step_fn must be a callable that runs one training step on a batch, got None"),
        ({"batch": [[0]]}, TypeError, r"batch must be a torch.Tensor of images, got list"),
        ({"policy": (64, 128)}, TypeError, r"policy must be a MultiScalePolicy \(the finder .*\), got tuple"),
        ({"file": io.StringIO(), "log": print}, ValueError, r"give file= or log=, not both"),
        ({"log": "lines.txt"}, TypeError, r"log must be a callable that takes one line, got 'lines.txt'"),
        ({"device": "gpu"}, ValueError, r"device must be a torch device such as 'cuda' or 'cpu', got 'gpu'"),
    ],
)
def test_bad_arguments(kwargs, error, match):
    arguments = {"step_fn": FakeStep(10**9), "batch": torch.zeros(1, 3, 8, 8), "policy": MultiScalePolicy(64, 128)}
    with pytest.raises(error, match=match):
        find_max_size(**{**arguments, **kwargs})


# A step that needs BYTES_PER_PIXEL bytes per output pixel, run under a cap halfway between the needs of
# the answer and of the size above it: the answer is the largest size that fits, by construction.
CHILD = r"""
import json, sys
import torch
from fastresize.finder import find_max_size
from fastresize.functional import resize
from fastresize.policy import MultiScalePolicy

device, answer = sys.argv[1], int(sys.argv[2])
bytes_per_pixel = 1024 if device == "cpu" else 4096
torch.set_num_threads(1)
policy = MultiScalePolicy(64, 256, multiple=32)
batch = torch.zeros(1, 3, 16, 16, dtype=torch.uint8, device=device)

def step(images):
    work = torch.ones(bytes_per_pixel // 4 * images.shape[-2] * images.shape[-1], device=device)
    work.sum().item()

def need(side):
    return bytes_per_pixel * side * side

# Warm-up, so that lazy initialisation (kernels, thread pools) happens before the cap.
step(resize(batch, 64, value_range=(0, 1), dtype=torch.float32))
cap = (need(answer) + need(answer + 32)) // 2
if device == "cpu":
    import resource
    with open("/proc/self/status") as status:
        data = next(int(line.split()[1]) for line in status if line.startswith("VmData:")) * 1024
    resource.setrlimit(resource.RLIMIT_DATA, (data + cap, resource.RLIM_INFINITY))
else:
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    total = torch.cuda.mem_get_info()[1]
    torch.cuda.set_per_process_memory_fraction((torch.cuda.memory_reserved() + cap) / total)
lines = []
found = find_max_size(step, batch, policy, value_range=(0, 1), dtype=torch.float32, log=lines.append)
print(json.dumps({"size": found.size, "sizes": list(found.policy.sizes), "lines": lines}))
"""


def _run_child(device, answer):
    # Large blocks go straight to mmap and back on free, so a failed try leaves nothing behind
    # (the setting the memory verification uses too).
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
    out = subprocess.run(
        [sys.executable, "-c", CHILD, device, str(answer)], capture_output=True, text=True, env=env, timeout=300
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_DATA caps mmap only on Linux")
@pytest.mark.parametrize("answer", [128, 192])
@pytest.mark.parametrize(
    ("device", "error"),
    [
        ("cpu", "DefaultCPUAllocator: can't allocate memory"),
        pytest.param("cuda", "OutOfMemoryError", marks=pytest.mark.cuda),
    ],
    ids=["cpu", "cuda"],
)
def test_under_a_memory_cap_the_largest_size_that_fits(device, error, answer):
    result = _run_child(device, answer)
    assert result["size"] == answer, result["lines"]
    assert result["sizes"] == list(range(64, answer + 1, 32))
    tried = {line.split(": ")[2]: line for line in result["lines"]}
    assert tried[f"{answer}x{answer}"].endswith("fits")
    assert error in tried[f"{answer + 32}x{answer + 32}"]
