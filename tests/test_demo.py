import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fastresize.demo import ConvAutoencoder, SyntheticImages, _images_of, run_demo

ROOT = Path(__file__).resolve().parents[1]


def _cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "fastresize", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


def _rows(stdout):
    lines = stdout.strip().splitlines()
    assert lines[0].startswith("device: ") and lines[1].split() == ["step", "epoch", "size", "lr", "loss", "img/s"]
    return [line.split() for line in lines[2:]]


def test_demo_cli_trains_with_workers_and_prints_the_table():
    done = _cli("demo", "--steps", "12", "--workers", "2", "--images", "16", "--batch-size", "4", "--no-progress")
    assert done.returncode == 0, done.stderr
    rows = _rows(done.stdout)
    assert [int(r[0]) for r in rows] == list(range(12))
    assert [int(r[1]) for r in rows] == [0] * 4 + [1] * 4 + [2] * 4
    assert [r[2] for r in rows[:5]] == ["128x128"] * 5  # max size first
    assert len({r[2] for r in rows}) > 1
    assert all(int(r[2].split("x")[0]) % 16 == 0 and 64 <= int(r[2].split("x")[0]) <= 128 for r in rows)
    lrs = [float(r[3]) for r in rows]
    assert lrs[:4] == pytest.approx([0.0, 0.0005, 0.001, 0.0015])  # warmup over the first epoch
    assert all(float(r[4]) > 0 for r in rows)


def test_demo_progress_bar_shows_size_lr_loss_and_throughput():
    done = _cli("demo", "--steps", "3", "--workers", "0", "--images", "8", "--batch-size", "4")
    assert done.returncode == 0, done.stderr
    for field in ("size=", "lr=", "loss=", "img_s="):
        assert field in done.stderr


def test_demo_on_an_image_folder(tmp_path):
    from PIL import Image

    for i, size in enumerate([(40, 30), (64, 64), (20, 50), (33, 70)]):
        Image.new("RGB", size, (i * 60, 100, 200 - i * 40)).save(tmp_path / f"{i}.png")
    (tmp_path / "notes.txt").write_text("not an image")
    records = run_demo(
        steps=4,
        batch_size=2,
        workers=0,
        lower=32,
        upper=48,
        image_size=48,
        data=str(tmp_path),
        progress=False,
        device="cpu",
    )
    assert [r.size for r in records] == [(48, 48)] * 4  # images of four sizes, cropped and resized once
    with pytest.raises(ValueError, match=r"--data must be a folder of images, got '.*0.png'"):
        _images_of(str(tmp_path / "0.png"))
    dataset = _images_of(str(tmp_path))
    image, _ = dataset[2]
    assert len(dataset) == 4 and image.shape == (50, 20, 3) and image.dtype == torch.uint8  # at the file's size
    assert dataset[0][0][0, 0].tolist() == [0, 100, 200]


def test_bad_command_lines_fail_clearly(tmp_path):
    done = _cli("demo", "--lower", "200", "--upper", "100", "--no-progress")
    assert done.returncode == 2 and "lower must be <= upper, got lower=200 and upper=100" in done.stderr
    done = _cli("demo", "--data", str(tmp_path), "--no-progress")
    assert done.returncode == 2 and "no images" in done.stderr
    done = _cli("demo", "--steps", "0", "--no-progress")
    assert done.returncode == 2 and "steps must be an int >= 1, got 0" in done.stderr
    assert _cli().returncode == 2


def test_synthetic_images_and_model():
    data = SyntheticImages(count=3, size=32)
    assert data[1].shape == (3, 32, 32) and data[1].dtype == torch.uint8 and torch.equal(data[1], data[1])
    with pytest.raises(IndexError, match=r"index 3 is out of range for 3 images"):
        data[3]
    model = ConvAutoencoder()
    for side in (48, 64):
        assert model(torch.rand(2, 3, side, side + 16)).shape == (2, 3, side, side + 16)


def _help(capsys, *argv):
    from fastresize.__main__ import main

    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--help"])
    assert exit_info.value.code == 0
    return capsys.readouterr().out


def test_help_is_plain_text_with_every_option_explained(capsys):
    import argparse

    from fastresize.__main__ import build_parser

    top = _help(capsys)
    assert "``" not in top and "python -m fastresize COMMAND --help" in top
    subparsers = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    for name, parser in subparsers.choices.items():
        for action in parser._actions:
            assert action.help, f"{name} {action.option_strings} has no help"
        text = _help(capsys, name)
        assert "``" not in text and ":func:" not in text
    demo = _help(capsys, "demo")
    for default in ("images per batch (default: 8)", "(default: 0.002)", "model (default: 0)"):
        assert default in " ".join(demo.split()), default
    assert "--data DIR" in demo and "synthetic" in demo  # not only synthetic images
    memory = " ".join(_help(capsys, "memory").split())
    assert "A default run takes about" in memory and "H100" in memory
    assert "(default: 64 on cpu, 256 on cuda)" in memory and "(default: 3)" in memory
    assert "(default: None)" not in memory and "(default: True)" not in memory


def test_demo_ramp_grows_the_size_and_starts_at_the_largest():
    records = run_demo(steps=24, batch_size=8, workers=0, lower=32, upper=64, ramp=(0, 2), progress=False,
                       device="cpu")  # fmt: skip
    sizes = [r.size[0] for r in records]
    assert sizes[:5] == [64] * 5  # max-size-first: the ramp's end, the largest size of the run
    assert sizes[5] < 64 and sizes[5:] == sorted(sizes[5:]) and sizes[-1] == 64  # then the ramp itself
