"""The examples run to completion, in a subprocess under a hard timeout, and learn."""

import json
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


def launched(name, *args, timeout=300):
    result = subprocess.run([sys.executable, "-m", "launcher", "-n", "2", str(EXAMPLES / name), *map(str, args)],
                            capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr
    return result.stdout


def figure(pattern, output):
    return float(re.search(pattern, output).group(1))


def test_digits_cnn_reaches_95_percent():
    out = launched("digits.py")
    assert figure(r"final test accuracy: ([0-9.]+) \(2 workers", out) >= 0.95, out


def test_mnist_mlp_on_the_embedded_digits():
    out = launched("mnist_mlp.py", "--epochs", 3)
    assert figure(r"final test accuracy: ([0-9.]+)", out) >= 0.85, out


def test_cifar_cnn_on_a_generated_set():
    out = launched("cifar_cnn.py", "--epochs", 2, "--samples", 800)
    assert figure(r"final test accuracy: ([0-9.]+)", out) > 0.3, out  # 10 classes: chance is 0.1


def test_lstm_runs_a_few_epochs():
    out = launched("lstm.py", "--epochs", 2, "--samples", 400)
    assert 0 <= figure(r"final test accuracy: ([0-9.]+)", out) <= 1, out


def test_autoencoder_reports_its_reconstruction_error():
    out = launched("autoencoder.py", "--epochs", 2)
    assert figure(r"final reconstruction error: mse ([0-9.]+)", out) < 0.1, out


def test_linear_regression_recovers_the_weights():
    out = launched("linear_regression.py")
    assert figure(r"largest error: ([0-9.]+)", out) < 0.05, out


def test_scaling_script_measures_1_and_2_workers_and_writes_its_record(tmp_path):
    out = tmp_path / "scaling.json"
    result = subprocess.run([sys.executable, str(EXAMPLES.parent / "scripts" / "scaling.py"), "--model", "mlp",
                             "--workers", "1,2", "--seconds", "0.2", "--backend", "zmq", "--out", str(out),
                             "--predict", "8,64"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "| workers | global batch | step ms | samples/s | speed-up | efficiency |" in result.stdout
    record = json.loads(out.read_text())
    assert [m["workers"] for m in record["measured"]] == [1, 2]
    assert record["measured"][1]["global_batch"] == 256
    assert record["beta"] > 0 and [p["workers"] for p in record["predicted"]] == [8, 64]
    assert all(0 < p["efficiency"] <= 1.5 for p in record["predicted"])
