import json

import pytest
import torch

from fastresize.memory import MemoryProfiler, read_status_kib, reset_peak_rss


def test_cpu_peak_rss_is_per_step(tmp_path):
    if not reset_peak_rss() or read_status_kib("VmHWM") is None:
        pytest.skip("this OS cannot reset the peak RSS")
    profiler = MemoryProfiler("cpu")
    with profiler.step(size=(512, 512)):
        big = torch.ones(64, 2**20 // 4 * 4)  # 64 MiB, touched
        del big
    with profiler.step(size=(16, 16)):
        small = torch.ones(16, 16)
        del small
    first, second = profiler.records
    assert first.peak_bytes - second.peak_bytes > 48 * 2**20  # the second step did not inherit the peak
    assert first.peak_reset and first.seconds > 0 and first.size == (512, 512)
    assert first.peak_allocated_bytes is None  # CUDA-only fields stay empty on CPU
    saved = json.loads(profiler.to_json(tmp_path / "memory.json"))
    assert saved == json.loads((tmp_path / "memory.json").read_text())
    assert saved["device"] == "cpu" and [s["size"] for s in saved["steps"]] == [[512, 512], [16, 16]]


def test_wrap_records_one_step_per_call():
    profiler = MemoryProfiler()
    step = profiler.wrap(lambda x, scale=1: (x * scale).sum().item(), size_of=lambda x, **_: tuple(x.shape[-2:]))
    assert step(torch.ones(1, 3, 8, 8), scale=2) == 384.0
    step(torch.ones(1, 3, 4, 4))
    step(torch.ones(1, 3, 8, 8))
    assert [(r.step, r.size, r.new_shape) for r in profiler.records] == [
        (0, (8, 8), True),
        (1, (4, 4), True),
        (2, (8, 8), False),
    ]


def test_a_failing_step_is_not_recorded_and_the_error_propagates():
    profiler = MemoryProfiler()
    with pytest.raises(RuntimeError, match="boom"), profiler.step((4, 4)):
        raise RuntimeError("boom")
    assert profiler.records == []


def test_bad_devices():
    with pytest.raises(ValueError, match=r"device must be a cpu or cuda device, got 'meta'"):
        MemoryProfiler("meta")
    with pytest.raises(ValueError, match=r"device must be a torch device such as 'cuda' or 'cpu', got 'gpu0'"):
        MemoryProfiler("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match=r"device='cuda' was asked for, but CUDA is not available"):
            MemoryProfiler("cuda")


@pytest.mark.cuda
def test_cuda_statistics():
    profiler = MemoryProfiler("cuda")
    with profiler.step((256, 256)):
        x = torch.ones(64, 2**20 // 4, device="cuda")
        del x
    (record,) = profiler.records
    assert record.peak_allocated_bytes >= 64 * 2**20 and record.peak_reserved_bytes >= record.peak_allocated_bytes
    assert record.peak_bytes == record.peak_reserved_bytes
    assert record.num_alloc_retries is not None and record.num_ooms == 0 and record.inactive_split_bytes is not None
