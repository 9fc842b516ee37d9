"""`kcnn demo`: the whole flow on sample data, through the real console entry point, piped."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import stderr_problems

from keras_cnn.evaluate import MISTAKE_HEATMAP_CAPTION


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


def test_demo_runs_end_to_end_small(tmp_path, chromium_page):
    out = tmp_path / "demo"
    summary = check_demo_output(run_demo(out, "--per-class", "30", "--head-epochs", "2", "--finetune-epochs", "1"),
                                out)
    check_report_in_a_browser(chromium_page, Path(summary["report"]), summary, tmp_path / "report.png")


def check_report_in_a_browser(page, report: Path, summary, screenshot: Path):
    """What a reader sees first on the demo's report.html, in headless Chromium: the accuracy and,
    offline, why it is near chance; the pictures load."""
    page.set_viewport_size({"width": 1280, "height": 800})
    page.goto(report.resolve().as_uri())
    page.screenshot(path=str(screenshot), full_page=True)
    assert screenshot.read_bytes().startswith(b"\x89PNG") and screenshot.stat().st_size > 50_000
    lines = [line.strip() for line in page.inner_text("body").splitlines() if line.strip()]
    assert lines[0].startswith("kcnn evaluation: ")
    assert lines[1].startswith(f"Accuracy {summary['accuracy']:.4f} on ")
    if summary["weights"] == "none":
        assert lines[2] == "Read this first"
        assert "has random weights (--weights none" in lines[3] and "near chance is expected" in lines[3]
        # Above the fold: in the first screen, not at the bottom of the run configuration.
        notes = page.locator("div.notes").bounding_box()
        assert notes is not None and notes["y"] + notes["height"] < 800
    # Every picture loads; beside the history and the confusion matrix, the calibration's reliability
    # diagram, the coverage-accuracy curve and the mistakes (with heat maps: the demo's model has a feature map).
    images = page.locator("img")
    assert all(images.nth(index).evaluate("image => image.complete && image.naturalWidth > 0")
               for index in range(images.count()))
    captions = page.locator("figure figcaption").all_inner_texts()
    mistakes = "Most confident mistakes" + (MISTAKE_HEATMAP_CAPTION if summary["accuracy"] < 1 else "")
    assert captions == ["Training history", "Confusion matrix", "Reliability diagram", "Coverage and accuracy",
                        mistakes] and images.count() == len(captions)


@pytest.mark.slow
def test_demo_with_defaults(tmp_path):
    out = tmp_path / "demo"
    check_demo_output(run_demo(out), out)
