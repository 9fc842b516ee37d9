"""One definition per option: every config field has one command-line option, every choice reads its
type, every field round-trips through config.json, and runs written before still resume."""

from __future__ import annotations

import dataclasses
import json
import shutil
import zipfile
from pathlib import Path

import click
from click.testing import CliRunner

from keras_cnn import choices
from keras_cnn.cli import COMMANDS, cli
from keras_cnn.cli.options import OPTIONS, REGULARIZATION, ConfigParameter, config_values
from keras_cnn.config import DataConfig, FineTuneConfig, ModelConfig, RunConfig, TrainingConfig

# Fields no option sets, and why.  A new field either gets its option in keras_cnn.cli.options or a line here.
NOT_OPTIONS = {
    "data.channels": "the model's input channels, resolved from the architecture (3 for a base)",
    "data.augmentation": "the augmentation ranges; --augment picks the recipe's, the Python API may give others",
    "data.regularization": "one dict for the regularisation options, each with its own flag",
    "model.kind": "which command made the run (train: scratch, transfer: transfer)",
    "model.name": "train's ARCHITECTURE argument, or --base / --architecture of transfer and lr-find",
    "model.num_classes": "the number of labels in the data",
    "model.input_shape": "resolved from the architecture or the base and --image-size",
    "training.loss": "the loss matching the model's output layer",
    "finetune.training": "stage 2's training options, the training.* fields",
}
# Flags that name something other than a config field in these commands.
OTHER_MEANING = {
    ("evaluate", "--batch-size"): "images per prediction batch, not a training option",
    ("predict", "--batch-size"): "images per call of the exported model",
    ("calibrate", "--batch-size"): "images per prediction batch, not a training option",
    ("split", "--images"): "the folder the files of a label CSV are relative to, an input of the split",
    ("sample-data", "--seed"): "the seed of the generated images, not of training",
    ("doctor", "--images"): "the folder the files of a label or split CSV are relative to, as for split",
    ("doctor", "--batch-size"): "images per batch of the feature pass, not a training option",
    ("doctor", "--seed"): "how the images are dealt into the folds of the out-of-sample head",
}
SECTIONS = {"data": DataConfig, "model": ModelConfig, "training": TrainingConfig, "finetune": FineTuneConfig}


def field_paths() -> set[str]:
    paths = {f"{section}.{item.name}" for section, kind in SECTIONS.items() for item in dataclasses.fields(kind)}
    from keras_cnn.data.regularize import RegularizationSpec

    return paths | {f"{REGULARIZATION}.{item.name}" for item in dataclasses.fields(RegularizationSpec)}


def all_commands():
    return {name: cli.get_command(None, name) for name in COMMANDS}


def test_every_user_settable_field_has_exactly_one_option():
    settable = field_paths() - set(NOT_OPTIONS)
    assert set(OPTIONS) == settable, (f"fields without an option: {sorted(settable - set(OPTIONS))}; "
                                      f"options without a field: {sorted(set(OPTIONS) - settable)}")
    flags = [option.flag.split("/")[0] for option in OPTIONS.values()]
    assert len(flags) == len(set(flags))


def test_fine_tuning_declares_no_training_field_again():
    training = {item.name for item in dataclasses.fields(TrainingConfig)}
    assert not training & {item.name for item in dataclasses.fields(FineTuneConfig)}


def test_commands_take_config_options_only_through_their_one_definition():
    flag_of = {option.flag.split("/")[0]: path for path, option in OPTIONS.items()}
    used = set()
    for name, command in all_commands().items():
        for param in command.params:
            for flag in set(param.opts) & set(flag_of):
                if (name, flag) in OTHER_MEANING:
                    assert not isinstance(param, ConfigParameter)
                    continue
                assert isinstance(param, ConfigParameter) and param.config_path == flag_of[flag], \
                    f"kcnn {name} defines {flag} itself instead of using keras_cnn.cli.options"
                used.add(param.config_path)
    assert used == set(OPTIONS), f"options no command takes: {sorted(set(OPTIONS) - used)}"


def test_every_choice_reads_a_type_and_every_registry_matches_its_type():
    from keras_cnn.data.datasets import LOADERS
    from keras_cnn.export import EXPORT_FORMATS
    from keras_cnn.models.scratch import BUILDERS
    from keras_cnn.optimizers import OPTIMIZERS
    from keras_cnn.train.devices import STRATEGY_BUILDERS
    from keras_cnn.train.schedules import SCHEDULES

    registries = [(choices.OptimizerName, set(OPTIMIZERS)), (choices.ScheduleName, set(SCHEDULES)),
                  (choices.DatasetName, set(LOADERS)), (choices.ModelApi, set(BUILDERS)),
                  (choices.ExportFormatName, set(EXPORT_FORMATS)), (choices.StrategyName, {"auto", *STRATEGY_BUILDERS})]
    for alias, registry in registries:
        assert registry == set(choices.names(alias)), f"the command line offers {choices.names(alias)}, the " \
                                                      f"registry has {sorted(registry)}"
    aliases = [value for value in vars(choices).values() if getattr(value, "__origin__", None) is not None]
    offered = {choices.names(alias) for alias in aliases}
    for name, command in all_commands().items():
        for param in command.params:
            if isinstance(param.type, click.Choice):
                assert tuple(param.type.choices) in offered, f"kcnn {name} {param.opts[0]} lists its own choices"


def sample_value(option):
    """A value of the option's field other than its default, as the command line would give it."""
    attributes = option.attributes
    kind = attributes.get("type")
    if option.name == "randaugment":
        value = "2,9"
    elif isinstance(kind, click.Choice):
        value = kind.choices[-1] if kind.choices[-1] != attributes.get("default") else kind.choices[0]
    elif attributes.get("is_flag") or "/" in option.flag:
        value = not attributes.get("default", False)
    elif isinstance(kind, (click.IntRange,)) or kind is int:
        value = 33
    elif isinstance(kind, click.FloatRange):
        low = kind.min or 0.0
        value = (low + (kind.max if kind.max is not None else low + 2.0)) / 2   # inside the range, open or not
    else:
        value = "some/value"
    return (value,) if attributes.get("multiple") else value


def test_every_user_settable_field_round_trips_through_config_json():
    values = {option.name: sample_value(option) for option in OPTIONS.values()}
    sections = config_values(values)
    assert not values
    config = RunConfig(command="transfer", model=ModelConfig(**sections["model"]), data=DataConfig(**sections["data"]),
                       training=TrainingConfig(**sections["training"]))
    for path, option in OPTIONS.items():
        section, name = path.split(".", 1)
        if section == "finetune":
            continue
        default = SECTIONS[section]()
        holder = getattr(config, section)
        if path.startswith(REGULARIZATION):
            assert holder.regularization[option.name] not in (None, 0, 0.0), path
        else:
            assert getattr(holder, name) != getattr(default, name), f"{path}: the sample is its default"
    assert RunConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config

    # Stage 2's own options are recorded in config.json's stage record.
    from keras_cnn.train.two_stage import fine_tune_record

    finetune = FineTuneConfig(**sections["finetune"], training=config.training)
    record = json.loads(json.dumps(fine_tune_record(finetune, config.training, finetune.unfreeze_from,
                                                    finetune.cache_frozen)))
    for name, value in sections["finetune"].items():
        assert record[name] == value, name
    for name in ("epochs", "learning_rate", "schedule", "ema", "lr_mult"):
        assert record[name] == getattr(config.training, name)


RUN_FORMAT_1 = Path(__file__).parent / "data" / "run_format_1"


def recorded_run(tmp_path, sample_split, sample_data_dir) -> tuple[Path, dict[str, str]]:
    """A run folder holding RUN_FORMAT_1's config.json (state.json is the caller's) and the texts recorded."""
    shutil.copy(sample_split, tmp_path / "split.csv")
    (tmp_path / "data").symlink_to(sample_data_dir)
    run = tmp_path / "run"
    run.mkdir()
    recorded = {name: (RUN_FORMAT_1 / name).read_text().replace("{ROOT}", str(tmp_path))
                for name in ("config.json", "state.json")}
    (run / "config.json").write_text(recorded["config.json"])
    # A finished stage has its model file; these tests never read it, so an archive shaped like one does.
    with zipfile.ZipFile(run / "model.keras", "w") as archive:
        archive.writestr("config.json", "{}")
    return run, recorded


FINETUNE_AS_RECORDED = ["finetune", "--unfreeze-from", "expanded_conv_10", "--epochs", "1", "--learning-rate", "1e-4",
                        "--ema", "0.9"]


def test_a_run_written_before_resumes_with_the_options_it_recorded(tmp_path, sample_split, sample_data_dir):
    """config.json and state.json of a transfer + finetune run written before the options were
    restructured: the same commands find each stage finished with the same options."""
    run, recorded = recorded_run(tmp_path, sample_split, sample_data_dir)
    # First as it was after stage 1 (a finished fine-tune would make a stage-1 re-run a conflict).
    state = json.loads(recorded["state.json"])
    (run / "state.json").write_text(json.dumps({**state, "stages": {"head": state["stages"]["head"]}}))
    runner = CliRunner()
    head = runner.invoke(cli, ["transfer", "--base", "mobilenet_v3_small", "--weights", "none", "--split",
                               str(tmp_path / "split.csv"), "--images", str(tmp_path / "data"), "--out", str(run),
                               "--image-size", "32", "--epochs", "1", "--batch-size", "8", "--schedule", "cosine",
                               "--seed", "5", "--json"])
    assert head.exit_code == 0, head.output[-2000:]
    assert "stage 'head' of" in head.stderr and "already finished" in head.stderr

    (run / "state.json").write_text(recorded["state.json"])
    before = {path.name: path.read_bytes() for path in run.iterdir()}
    tuned = runner.invoke(cli, [*FINETUNE_AS_RECORDED, "--run", str(run), "--json"])
    assert tuned.exit_code == 0, tuned.output[-2000:]
    assert "stage 'finetune' of" in tuned.stderr and "already finished" in tuned.stderr
    assert {path.name: path.read_bytes() for path in run.iterdir()} == before
    # Another option is refused, naming it: the recorded options are compared, not ignored.
    other = runner.invoke(cli, ["finetune", "--run", str(run), "--unfreeze-from", "expanded_conv_10", "--epochs", "2",
                                "--learning-rate", "1e-4", "--ema", "0.9"])
    assert other.exit_code == 2 and "finetune.epochs (run: 1, now: 2)" in other.stderr


def test_an_option_added_after_a_run_was_recorded_counts_as_its_default(tmp_path, sample_split, sample_data_dir):
    """A fine-tune recorded before --base-dropout existed is finished for the same command, and
    refused when the new option is given another value than its default."""
    run, recorded = recorded_run(tmp_path, sample_split, sample_data_dir)
    state = json.loads(recorded["state.json"])
    del state["stages"]["finetune"]["options"]["finetune"]["base_dropout"]
    (run / "state.json").write_text(json.dumps(state))
    runner = CliRunner()
    tuned = runner.invoke(cli, [*FINETUNE_AS_RECORDED, "--run", str(run)])
    assert tuned.exit_code == 0 and "already finished" in tuned.stderr, tuned.output[-2000:]
    other = runner.invoke(cli, [*FINETUNE_AS_RECORDED, "--run", str(run), "--base-dropout"])
    assert other.exit_code == 2 and "finetune.base_dropout (run: false, now: true)" in other.stderr


def test_recorded_fingerprints_are_what_the_options_give_today():
    from keras_cnn.runs import options_fingerprint

    state = json.loads((RUN_FORMAT_1 / "state.json").read_text())
    config = RunConfig.from_dict(json.loads((RUN_FORMAT_1 / "config.json").read_text()))
    from keras_cnn.train.two_stage import fine_tune_record, resolve_fine_tune_training

    finetune = FineTuneConfig(unfreeze_from="expanded_conv_10",
                              training=TrainingConfig(epochs=1, learning_rate=1e-4, ema=0.9))
    training, boundary = resolve_fine_tune_training(config, finetune)
    from keras_cnn.train.stage import recorded_options

    options = recorded_options({"training": dataclasses.asdict(training),
                                "finetune": fine_tune_record(finetune, training, boundary, cache_frozen=True)})
    assert options_fingerprint(options) == state["stages"]["finetune"]["fingerprint"]
    assert options == state["stages"]["finetune"]["options"]


def test_execution_options_left_unset_are_auto_or_stage_1s():
    from keras_cnn.train.execution import with_execution_defaults

    assert with_execution_defaults(TrainingConfig()) == TrainingConfig(mixed_precision="auto", xla="auto",
                                                                       strategy="auto")
    inherited = TrainingConfig(mixed_precision="on", xla="off", strategy="mirrored")
    assert with_execution_defaults(TrainingConfig(xla="on"), inherited) == TrainingConfig(
        mixed_precision="on", xla="on", strategy="mirrored")
