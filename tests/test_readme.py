import importlib
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_readme_example_runs(tmp_path):
    example = (ROOT / "README.md").read_text().split("\n## Example\n", 1)[1]
    script = tmp_path / "example.py"
    script.write_text(re.findall(r"```python\n(.*?)```", example, re.S)[0])
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert "epoch=4, batch=0" in done.stdout  # the printed counter: four whole epochs


def test_readme_own_schedule_example_runs(tmp_path):
    example = (ROOT / "README.md").read_text().split("\n### Your own schedule\n", 1)[1]
    script = tmp_path / "own.py"
    code = re.findall(r"```python\n(.*?)```", example, re.S)[0]
    script.write_text("import torch\n\nimport fastresize\n\n" + code + "print(resize.policy.size_for(2000, 10))\n")
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "(512, 512)"  # 128 * 2 ** 2, past its first 5 steps


def test_every_name_the_readme_uses_exists():
    names = set(re.findall(r"\bfastresize\.([A-Za-z_][\w.]*\w)", (ROOT / "README.md").read_text()))
    assert {"ImageFolder", "find_max_size", "SizePolicy", "folder.find_images"} <= names
    for name in sorted(names):
        found, parts = importlib.import_module("fastresize"), name.split(".")
        for i, part in enumerate(parts):
            if not hasattr(found, part):  # a module not imported yet
                found = importlib.import_module("fastresize." + ".".join(parts[: i + 1]))
            else:
                found = getattr(found, part)
