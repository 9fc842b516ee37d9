"""`kcnn demo`: the whole flow on sample data, through the real console entry point, piped."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import stderr_problems


def run_demo(out, *options):
    environment = dict(os.environ, KERAS_HOME=str(out.parent / "keras-home"))
    return subprocess.run([sys.executable, "-m", "keras_cnn", "demo", "--out", str(out), *options, "--json"],
                          capture_output=True, text=True, timeout=900, env=environment)


def check_demo_output(result, out: Path):
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout)
    for step in range(1, 8):
        assert f"[{step}/7]" in result.stderr
    assert Path(summary["report"]).is_file() and Path(summary["report"]).stat().st_size > 10_000
    assert (Path(summary["export"]) / "saved_model.pb").is_file()
    assert (Path(summary["export"]) / "assets" / "labels.txt").read_text().split() == ["circle", "square",
                                                                                       "triangle"]
    assert len(summary["predictions"]) >= 3 and not summary["failures"]
    assert {prediction["label"] for prediction in summary["predictions"]} <= {"circle", "square", "triangle"}
    assert 0.0 <= summary["accuracy"] <= 1.0 and summary["evaluated_subset"] in ("test", "validation")
    if summary["weights"] == "none":
        assert "has random weights (--weights none)" in result.stderr
        assert "--unfreeze-from all" in result.stderr
    # Piped (not a terminal): plain lines, one per epoch, nothing from other libraries.
    assert stderr_problems(result.stderr) == [], result.stderr[-3000:]
    epoch_lines = [line for line in result.stderr.splitlines()
                   if line.startswith(("[head] epoch", "[finetune] epoch"))]
    assert epoch_lines and all("loss" in line and "took" in line for line in epoch_lines)
    return summary


def test_demo_runs_end_to_end_small(tmp_path):
    out = tmp_path / "demo"
    check_demo_output(run_demo(out, "--per-class", "30", "--head-epochs", "2", "--finetune-epochs", "1"), out)


@pytest.mark.slow
def test_demo_with_defaults(tmp_path):
    out = tmp_path / "demo"
    check_demo_output(run_demo(out), out)
