"""The examples run to completion, in a subprocess under a hard timeout, and learn."""

import re
import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def run_example(name, *args, timeout=120):
    result = subprocess.run([sys.executable, str(EXAMPLES / name), *args], capture_output=True, text=True,
                            timeout=timeout)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_spirals_learns_a_nonlinear_boundary():
    out = run_example("spirals.py", "--epochs", "60")
    accuracy = float(re.search(r"final test accuracy: ([0-9.]+)", out).group(1))
    assert accuracy >= 0.95, out


def test_readme_first_command_trains_data_parallel_on_two_workers():
    """The README's first command: distdl-run -n 2 examples/mlp.py, on the embedded digits."""
    result = subprocess.run([sys.executable, "-m", "launcher", "-n", "2", str(EXAMPLES / "mlp.py"), "--epochs", "8"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    accuracy = float(re.search(r"final test accuracy: ([0-9.]+) \(2 workers, 359 test samples\)",
                               result.stdout).group(1))
    assert accuracy >= 0.9, result.stdout
