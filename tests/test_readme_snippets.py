"""Every Python block of the README runs as written: alone with python, or under ``distdl-run -n 2`` where it starts
a communicator (``dl.init()``), with a checkpoint directory for the blocks that keep checkpoints."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCKS = re.findall(r"^```python\n(.*?)^```", README.read_text(), re.S | re.M)


def test_the_readme_has_python_blocks():
    assert len(BLOCKS) >= 6


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_a_readme_block_runs_as_written(index, tmp_path):
    code = BLOCKS[index]
    script = tmp_path / f"readme_block_{index}.py"
    script.write_text(code)
    if "dl.init()" in code:
        command = [sys.executable, "-m", "launcher", "-n", "2", "--timeout", "30", "--checkpoint-dir",
                   tmp_path / "checkpoints", script]
    else:
        command = [sys.executable, script]
    process = subprocess.Popen(list(map(str, command)), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               cwd=tmp_path, start_new_session=True)
    try:
        output = process.communicate(timeout=120)[0]
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, 9)
        pytest.fail(f"README block {index} ran past 120 s:\n{code}")
    assert process.returncode == 0, f"README block {index}:\n{code}\n--- output\n{output}"
