"""Smoke tests of the benchmark scripts, so they cannot silently rot.

Each script's ``main`` runs end to end on a tiny input with ``--no-record`` (the results
file it would append to must stay untouched); the benchmarks themselves, at their real
sizes, are never run by the test suite.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import write_hub_module

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.fixture(scope="module")
def load_script():
    """Import ``benchmarks/<name>.py`` (its ``import common`` needs benchmarks/ on sys.path)."""
    sys.path.insert(0, str(BENCHMARKS))

    def load(name: str):
        spec = importlib.util.spec_from_file_location(f"kcnn_benchmark_{name}", BENCHMARKS / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    yield load
    sys.path.remove(str(BENCHMARKS))
    sys.modules.pop("common", None)


def test_append_section_writes_the_header_once_then_dated_sections(load_script, tmp_path):
    common = load_script("common")
    results = tmp_path / "RESULTS.md"
    machine = common.machine_description()
    assert set(machine) == {"cpu", "cores", "gpu", "load", "platform", "python", "tensorflow", "keras"}
    assert int(machine["cores"]) >= 1

    common.append_section("First", ["line one", "", common.describe_machine(machine, "0.5, 0.5, 0.5")], results,
                          stamp="2030-01-01 10:00 UTC")
    common.append_section("Second", ["line two"], results)
    text = results.read_text()
    assert text.startswith(common.RESULTS_HEADER) and text.count("# Benchmark results") == 1
    assert "\n## First — 2030-01-01 10:00 UTC\n\nline one\n" in text
    assert f"{machine['cores']} usable cores" in text and "after: 0.5, 0.5, 0.5" in text
    assert text.index("## First") < text.index("## Second") and text.endswith("line two\n")


def test_pipeline_benchmark_runs_on_tiny_images(load_script, tmp_path, capsys):
    pipeline = load_script("pipeline")
    results = tmp_path / "RESULTS.md"
    assert pipeline.main(["--images", "12", "--width", "64", "--height", "48", "--size", "32", "--batch-size", "4",
                          "--repeats", "1", "--breakdown", "--results", str(results)]) == 0
    output = capsys.readouterr().out
    assert "ImageDataGenerator.flow_from_dataframe" in output and "make_dataset cached epoch" in output
    assert "make_dataset later epoch, no cache" in output
    assert "breakdown: load_image (DCT-scaled decode + area resize)" in output
    assert "breakdown: DCT-scaled decode + the box-bilinear resize tried" in output
    # 64x48 to 32: under twice the target, so the decode is full size and the difference none.
    assert "decode ratio 1/1; mean absolute difference from full decode + resize: 0.00" in output
    assert "CPU time per image (all threads, lowest of the rounds): ImageDataGenerator" in output
    assert "Ceiling: decoding alone" in output
    # Training on uint8 batches ends with the weights of float32 batches; the filters are compared.
    assert "on uint8 and on float32 batches (same seed): weights identical" in output
    assert "between the box-bilinear resize tried and kcnn's area resize of the same pixels" in output
    assert "target: cached epoch (uint8 batches) vs ImageDataGenerator" in output
    section = results.read_text()
    assert "| `make_dataset`, later epoch, no cache (every file read again) |" in section
    assert "bits per pixel" in section and "Ceiling: decoding alone" in section


def test_predict_benchmark_runs_on_a_tiny_export(load_script, tmp_path, capsys):
    predict = load_script("predict")
    results = tmp_path / "RESULTS.md"
    assert predict.main(["--base", "small_cnn", "--images", "6", "--image-height", "40", "--image-width", "48",
                         "--model-size", "32", "--batch-size", "4", "--repeats", "1", "--no-write",
                         "--results", str(results)]) == 0
    output = capsys.readouterr().out
    assert "| combined limit: 1 / (model s/img + decode s/img) |" in output and "usable cores" in output
    assert "target: share of the combined decode + model limit" in output and "| PIL loop" in output
    assert not results.exists()


def test_transfer_stage1_benchmark_reads_epoch_times_of_both_runs(load_script, tmp_path, capsys):
    transfer_stage1 = load_script("transfer_stage1")
    hub_module = write_hub_module(tmp_path / "hub")
    results = tmp_path / "RESULTS.md"
    # A tiny TF Hub module as the base (its "imagenet" weights are its own): fast to build and save.
    assert transfer_stage1.main(["--base", f"hub:{hub_module}", "--weights", "imagenet", "--image-size", "32",
                                 "--epochs", "2", "--batch-size", "8", "--per-class", "8", "--sample-size", "32",
                                 "--no-record", "--results", str(results)]) == 0
    output = capsys.readouterr().out
    assert "Per-epoch ratio (later epochs, uncached / cached)" in output and "Break-even" in output
    assert not results.exists()

    analysis = transfer_stage1.analyse({"epoch_seconds": [3.0, 0.1, 0.1], "extraction_seconds": 2.0,
                                        "stage_seconds": 5.0},
                                       {"epoch_seconds": [6.0, 1.1, 1.1], "extraction_seconds": 0.0,
                                        "stage_seconds": 9.0})
    assert analysis["ratio"] == pytest.approx(11.0)
    assert analysis["break_even"] == pytest.approx(2.0)


def test_scratch_training_benchmark_times_both_approaches(load_script, tmp_path, capsys):
    scratch_training = load_script("scratch_training")
    archive = scratch_training.write_cifar10_archive(tmp_path, 23, test_images=4)
    from keras_cnn.data.datasets import load_dataset

    arrays = load_dataset("cifar10", archive)
    assert arrays.x_train.shape == (23, 32, 32, 3) and arrays.x_test.shape == (4, 32, 32, 3)

    results = tmp_path / "RESULTS.md"
    assert scratch_training.main(["--images", "40", "--batch-size", "16", "--rounds", "1", "--no-record",
                                  "--results", str(results)]) == 0
    output = capsys.readouterr().out
    assert "Ratio kcnn / reference, training" in output and "ImageDataGenerator.flow" in output
    assert not results.exists()


@pytest.mark.slow
def test_split_benchmark_runs_on_a_small_input(load_script, tmp_path, capsys):
    split = load_script("split")
    results = tmp_path / "RESULTS.md"
    assert split.main(["--rows", "3000", "--files", "60", "--classes", "3", "--loop-sample", "20",
                       "--no-record", "--results", str(results)]) == 0
    output = capsys.readouterr().out
    assert "`kcnn split DIR`, warm (list + hash + split) | 60 |" in output
    assert "the original pandas split script, same file | 3,000 |" in output and "pre-flight" in output
    assert not results.exists()


@pytest.mark.slow
def test_kill_safety_benchmark_survives_a_few_random_kills(load_script, tmp_path, capsys):
    kill_safety = load_script("kill_safety")
    results = tmp_path / "RESULTS.md"
    assert kill_safety.main(["--kills", "3", "--epochs", "3", "--seed", "1", "--no-record",
                             "--results", str(results)]) == 0
    output = capsys.readouterr().out
    assert "Kills survived / tried" in output and not results.exists()


@pytest.mark.slow
def test_schedules_benchmark_runs_one_short_seed(load_script, tmp_path, capsys):
    pytest.importorskip("sklearn", reason="the schedules benchmark reads scikit-learn's digits")
    schedules = load_script("schedules")
    results = tmp_path / "RESULTS.md"
    schedules.main(["--seeds", "1", "--epochs", "1", "--no-record", "--results", str(results)])
    output = capsys.readouterr().out
    assert "| onecycle |" in output and "| constant, EMA 0.9 |" in output and not results.exists()


@pytest.mark.slow
def test_recipe_benchmark_smoke(load_script, tmp_path):
    pytest.importorskip("sklearn")
    recipe = load_script("recipe")
    results = tmp_path / "RESULTS.md"
    outcome = recipe.main(["--limit", "300", "--epochs", "1", "--rows", "plain", "MixUp 0.2", "--no-record",
                           "--results", str(results)])
    assert set(outcome["rows"]) == {"plain", "MixUp 0.2"}
    assert len(outcome["tta"]["views"]) == recipe.TTA_VIEWS
    assert outcome["quantization"]["size_ratio"] < 0.34
    assert not results.exists()


@pytest.mark.slow
def test_finetune_cache_benchmark_times_both_runs(load_script, tmp_path, capsys):
    finetune_cache = load_script("finetune_cache")
    results = tmp_path / "RESULTS.md"
    assert finetune_cache.main(["--bases", "efficientnet_b0", "--images", "4", "--image-size", "32",
                                "--batch-size", "2", "--epochs", "2", "--results", str(results)]) == 0
    section = results.read_text()
    assert "| efficientnet_b0 at 32, `block7a` |" in section
    # Every epoch is listed: two uncached, at least six cached.
    epochs = next(line for line in section.splitlines() if line.startswith("All epochs of efficientnet_b0"))
    uncached, cached = epochs.split("; cached ")
    assert len(uncached.split(", ")) == 2 and len(cached.split(", ")) >= 6


@pytest.mark.slow
def test_serve_benchmark_loads_both_servers_without_errors(load_script, tmp_path, capsys):
    pytest.importorskip("uvicorn", reason="kcnn serve needs the serve extra: pip install -e '.[serve]'")
    serve = load_script("serve")
    results = tmp_path / "RESULTS.md"
    assert serve.main(["--requests", "40", "--clients", "4", "--images", "6", "--image-height", "48",
                       "--image-width", "64", "--model-size", "32", "--repeats", "1", "--results", str(results)]) == 0
    output = capsys.readouterr().out
    assert "| batching (`--max-batch 32" in output and "| no batching (`--max-batch 1`) | 0 |" in output
    assert "Server exit codes after SIGTERM: batching 0, no batching 0." in output
    assert results.read_text().count("## kcnn serve under load") == 1


def test_cli_startup_benchmark_times_help_against_the_bare_interpreter(load_script, capsys):
    startup = load_script("cli_startup")
    assert startup.main(["--rounds", "1", "--no-record"]) == 0
    output = capsys.readouterr().out
    assert "| `kcnn --help` |" in output and "x the bare interpreter with click" in output


def test_input_check_benchmark_runs_on_a_small_tree(load_script, tmp_path, capsys):
    input_check = load_script("input_check")
    results = tmp_path / "RESULTS.md"
    assert input_check.main(["--files", "200", "--classes", "4", "--size", "256", "--repeats", "1",
                             "--no-record", "--results", str(results)]) == 0
    output = capsys.readouterr().out
    assert "| check, nothing changed |" in output and "0 changes" in output
    assert "2 stamps refreshed" in output and "200 hashed" in output
    assert not results.exists()


@pytest.mark.slow
def test_doctor_benchmark_runs_on_a_small_input(load_script, tmp_path, capsys):
    pytest.importorskip("cleanlab", reason="kcnn doctor needs pip install 'kcnn[doctor]'")
    doctor = load_script("doctor")
    assert doctor.main(["--images", "120", "--copies", "8", "--side", "64", "--base", "mobilenet_v3_small",
                        "--image-size", "32", "--vectors", "3000", "--dimensions", "64", "--reference-size", "1000",
                        "--no-record"]) == 0
    output = capsys.readouterr().out
    assert "| 5-fold head (1 BLAS thread) |" in output and "| full n x n distance matrix | 1,000 |" in output
    assert "Planted copies paired: " in output


@pytest.mark.slow  # about fifteen minutes on two cores: the checks of calibration and heat maps on the full digits
def test_calibration_benchmark_meets_its_targets_on_the_digits_and_the_patches(load_script, tmp_path):
    pytest.importorskip("sklearn", reason="the calibration benchmark reads scikit-learn's digits")
    calibration = load_script("calibration")
    results = tmp_path / "RESULTS.md"
    kept = "lenet, 30 % wrong labels"   # the model kcnn keeps of that run: its lowest validation loss
    outcome = calibration.main(["--parts", "calibration", "patches", "--rows", kept, calibration.OVERCONFIDENT_ROW,
                                "--no-record", "--results", str(results)])
    # An overconfident lenet (trained long on partly wrong labels, the memorised end kept): the stored
    # temperature softens it, at least halves its test ECE and lowers its NLL, with the same accuracy.
    checks = outcome["done_when"]
    assert checks["temperature"] > 1 and checks["ece_halved"] and checks["nll_lower"] and checks["same_accuracy"]
    # At the threshold chosen for 0.99, the accepted test images are as accurate as the validation images
    # behind it vouch for (its 95 % lower bound).
    assert checks["accepted"] > 0 and checks["accepted_accuracy"] >= checks["validation"]["accuracy_lower_bound"]
    # The model kcnn keeps of the same run: at least 97 % of the accepted test images are right.
    selective = outcome["calibration"][kept]["evaluation"]["selective"]
    assert selective["accepted"] > 0 and selective["accuracy"] >= 0.97, selective
    # Heat maps: the peak lands on the coloured patch for at least 90 % of the test images.
    assert outcome["patches"]["share"] >= 0.9, outcome["patches"]
    assert not results.exists()


def test_the_steadier_threshold_stops_at_the_first_dip_below_the_target(load_script):
    calibration = load_script("calibration")
    from keras_cnn.metrics import threshold_for_accuracy

    confidence = np.array([0.95, 0.9, 0.9, 0.8, 0.7, 0.6, 0.5])
    correct = np.array([True, True, False, True, True, False, True])
    # Accepted accuracy from the top: 1, 2/3, 3/4, 4/5, 4/6, 5/7.  kcnn's rule takes 0.5 for 0.7 (5/7
    # climbs back above it); the steadier reading stops before the first dip, at 0.95.
    assert threshold_for_accuracy(confidence, correct, 0.7) == 0.5
    assert calibration.steady_threshold(confidence, correct, 0.7) == 0.95
    assert calibration.steady_threshold(confidence, correct, 0.6) == 0.5         # never dips below 0.6
    assert calibration.steady_threshold(confidence, ~correct, 0.5) is None       # the most confident is wrong
    # Where every accepted sample is right, both readings agree.
    right_first = np.array([True, True, True, True, True, False, False])
    assert calibration.steady_threshold(confidence, right_first, 0.99) == threshold_for_accuracy(
        confidence, right_first, 0.99) == 0.7


def test_the_calibration_benchmark_validates_on_as_many_digits_as_it_tests(load_script, tmp_path):
    pytest.importorskip("sklearn", reason="the calibration benchmark reads scikit-learn's digits")
    calibration = load_script("calibration")
    from keras_cnn.data.split import read_split_csv

    split, _ = calibration.digits_data(tmp_path, None)
    counts = read_split_csv(split)["type"].value_counts()
    # The balanced split's counts: at least as many validation images as test ones, and over half training.
    assert (counts["validation"], counts["test"], counts["train"]) == (360, 340, 1097)


def test_multilabel_benchmark_builds_mosaics_from_disjoint_digits(load_script, tmp_path, capsys):
    pytest.importorskip("sklearn", reason="the multi-label benchmark reads scikit-learn's digits")
    import pandas as pd

    multilabel = load_script("multilabel")
    pools = multilabel.digit_pools(seed=1)
    assert sum(len(labels) for _, labels in pools.values()) == 1797
    multi, single, images = multilabel.write_mosaics(tmp_path, {"train": 30, "validation": 10, "test": 10}, seed=1)
    table = pd.read_csv(multi, dtype=str, keep_default_na=False)
    assert list(table.columns) == ["objectId", "labels", "type"] and len(table) == 50
    assert table["labels"].map(lambda cell: 1 <= len(cell.split(";")) <= 4).all()
    first = pd.read_csv(single, dtype=str)
    assert all(value in labels.split(";") for value, labels in zip(first["value"], table["labels"]))
    results = tmp_path / "RESULTS.md"
    outcome = multilabel.main(["--nets", "lenet", "--epochs", "1", "--train", "60", "--no-single", "--no-record",
                               "--results", str(results)])
    assert 0 <= outcome["lenet"]["test"]["macro_map"] <= 1 and not results.exists()
    assert "| `lenet` |" in capsys.readouterr().out


@pytest.mark.slow
def test_a_scratch_net_reaches_a_map_of_0_9_on_digit_mosaics(load_script):
    """The acceptance figure: lenet on 2x2 mosaics of digits no training mosaic uses, mAP >= 0.9."""
    pytest.importorskip("sklearn")
    multilabel = load_script("multilabel")
    outcome = multilabel.main(["--nets", "lenet", "--epochs", "10", "--train", "3000", "--no-single", "--no-record"])
    assert outcome["lenet"]["test"]["macro_map"] >= 0.9, outcome
