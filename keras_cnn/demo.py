"""``kcnn demo``: the whole flow on the built-in sample data, step by step.

sample-data → split → transfer (EfficientNet-B0, frozen) → finetune (block7a on) →
evaluate → export → predict.  Small images keep it to a few minutes on two CPU cores.
Each step calls the same function its ``kcnn`` command calls.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from keras_cnn.messages import frozen_random_base_warning
from keras_cnn.progress import say as say_progress
from keras_cnn.progress import warn

DEMO_BASE = "efficientnet_b0"
DEMO_IMAGE_SIZE = 96
WEIGHTS_HINT = ("ImageNet weights for EfficientNet-B0 could be neither downloaded nor found in the Keras "
                "cache; with internet they download once, offline put efficientnetb0_notop.h5 in "
                "~/.keras/models/ or pass --weights PATH")


def _step(number: int, title: str) -> None:
    say_progress(f"\n[{number}/7] {title}")


def _accuracy_text(summary: dict[str, Any]) -> str:
    if summary.get("test_accuracy") is not None:
        return f"test accuracy {summary['test_accuracy']:.3f}"
    return f"validation accuracy {summary['val_accuracy']:.3f} (no test part)"


def run_demo(out_dir: str | Path = "kcnn-demo", per_class: int = 100, head_epochs: int = 8,
             finetune_epochs: int = 3, weights: str | None = None,
             say: Callable[[str], None] = say_progress) -> dict[str, Any]:
    """Run the demo into ``out_dir``; returns where everything is and the headline numbers.

    ``weights``: ``None`` = ImageNet when it can be had (downloaded or cached), otherwise
    random initial weights, said clearly; or any ``--weights`` value.
    """
    from keras_cnn.data.collection import split_to_file
    from keras_cnn.config import DataConfig, FineTuneConfig, ModelConfig, RunConfig, TrainingConfig
    from keras_cnn.data.sample import write_sample_data
    from keras_cnn.evaluate import evaluate_run
    from keras_cnn.export import export_run
    from keras_cnn.models.bases import get_base_spec
    from keras_cnn.models.weights import imagenet_weights_available
    from keras_cnn.predict import load_exported_model, predict_files
    from keras_cnn.train.two_stage import fine_tune_run, train_head

    out_dir = Path(out_dir)
    data_dir, run_dir, export_dir = out_dir / "data", out_dir / "run", out_dir / "export"

    _step(1, "sample data: coloured shapes named by the SHA-1 of their bytes")
    sample = write_sample_data(data_dir, classes=3, per_class=per_class, size=128, seed=0)
    say(f"  {sample['count']} images and label.csv in {data_dir}")

    _step(2, "stable split by the last byte of each file's SHA-1: 0-24 test, 25-49 validation, rest train")
    split_csv = out_dir / "split.csv"
    split = split_to_file(sample["label_csv"], str(split_csv))
    sizes = split["sizes"]
    say(f"  train {sizes['train']}, validation {sizes['validation']}, test {sizes['test']} -> {split_csv}")

    if weights is None:
        if imagenet_weights_available(get_base_spec(DEMO_BASE)):
            weights = "imagenet"
            say("  using ImageNet weights for EfficientNet-B0")
        else:
            weights = "none"
            warn(WEIGHTS_HINT)
    if weights == "none":
        warn(frozen_random_base_warning("EfficientNet-B0"))

    _step(3, f"transfer: frozen {DEMO_BASE} at {DEMO_IMAGE_SIZE}px + new head, features cached")
    config = RunConfig(
        command="transfer",
        model=ModelConfig(kind="transfer", name=DEMO_BASE, weights=weights),
        data=DataConfig(split=str(split_csv), images=str(data_dir), image_size=(DEMO_IMAGE_SIZE, DEMO_IMAGE_SIZE)),
        training=TrainingConfig(epochs=head_epochs),
    )
    head = train_head(config, run_dir)
    say(f"  stage 1: {_accuracy_text(head)}, trainable {head['trainable_params']:,} of {head['total_params']:,}")

    _step(4, "finetune: unfreeze from block7a (BatchNorm stays frozen), Adam 1e-5")
    tuned = fine_tune_run(FineTuneConfig(unfreeze_from="block7a", training=TrainingConfig(epochs=finetune_epochs)),
                          run_dir)
    say(f"  stage 2: {_accuracy_text(tuned)}, trainable {tuned['trainable_params']:,}")

    # A very small sample set can leave the test part empty; then the validation part stands in.
    subset = "test" if sizes["test"] else "validation"
    _step(5, f"evaluate on the {subset} part")
    evaluation = evaluate_run(run_dir, subset=subset)
    report = evaluation["files"]["report"]
    say(f"  accuracy {evaluation['accuracy']:.3f}, macro F1 {evaluation['macro_f1']:.3f}; report: {report}")
    calibration = evaluation["calibration"]
    if calibration.get("temperature") is not None:
        say(f"  calibrated on the validation part: temperature {calibration['temperature']:.3g}, expected "
            f"calibration error {calibration['ece_before']:.3f} -> {calibration['ece_after']:.3f}")

    _step(6, "export a SavedModel (TF Serving layout) that takes encoded image bytes")
    exported = export_run(run_dir, export_dir, version=1, formats=("saved_model",), force=True)
    say(f"  {exported['path']} (checked against the Keras model: max abs difference "
        f"{exported['max_abs_diff']['saved_model']:.1e})")

    _step(7, f"predict a few {subset} images with the exported model only")
    from keras_cnn.data.split import read_split_csv

    frame = read_split_csv(split_csv)
    test_rows = frame[frame["type"] == subset].head(4)
    model = load_exported_model(exported["path"])
    predictions, failures = predict_files(model, [data_dir / object_id for object_id in test_rows["objectId"]])
    truth_of = dict(zip(test_rows["objectId"], test_rows["value"], strict=True))
    for prediction in predictions:
        name = Path(prediction["path"]).name
        say(f"  {name[:12]}…  true {truth_of[name]:<9} predicted {prediction['label']:<9} "
            f"p={prediction['probability']:.2f}")

    return {
        "out": str(out_dir), "weights": weights, "split": str(split_csv), "run": str(run_dir),
        "head_test_accuracy": head["test_accuracy"], "finetune_test_accuracy": tuned["test_accuracy"],
        "evaluated_subset": subset, "accuracy": evaluation["accuracy"], "report": report,
        "export": exported["path"], "predictions": predictions, "failures": failures,
    }
