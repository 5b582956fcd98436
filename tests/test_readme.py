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
