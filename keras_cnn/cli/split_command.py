"""``kcnn split``: label.csv -> split CSV by the SHA-1 key of every objectId (seed 004)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from keras_cnn.cli.common import debug_option, json_option, run_command
from keras_cnn.errors import UserError
from keras_cnn.runs import check_output_path


@click.command("split")
@click.argument("label_csv", metavar="LABEL_CSV")
@click.option("-o", "--output", required=True, metavar="SPLIT_CSV",
              help="Where to write objectId,value,type (written atomically).")
@click.option("--test-keys", default="0-24", show_default=True, metavar="FIRST-LAST",
              help="Keys (last byte of the SHA-1, 0..255) that go to the test part; 'none' for no test part.")
@click.option("--validation-keys", default="25-49", show_default=True, metavar="FIRST-LAST",
              help="Keys that go to the validation part; 'none' for no validation part.")
@click.option("--balance/--no-balance", default=True, show_default=True,
              help="Keep the same number of rows per label in test and validation (the rest go to train).")
@click.option("--id-column", default="objectId", show_default=True, help="Column holding the file names.")
@click.option("--label-column", default="value", show_default=True, help="Column holding the labels.")
@json_option
@debug_option
def split(label_csv: str, output: str, test_keys: str, validation_keys: str, balance: bool,
          id_column: str, label_column: str, as_json: bool) -> None:
    """Split LABEL_CSV (objectId,value) into train/validation/test by each objectId's SHA-1.

    The key of an image is the last byte of its SHA-1 name, so the split is stable: adding
    images never moves an existing one.  Prints the rows per label per part; warns when a
    part is empty or tiny.
    """
    def work() -> dict[str, Any]:
        return split_label_file(label_csv, output, test_keys, validation_keys, balance,
                                id_column, label_column)

    # pandas only: no TensorFlow start-up for a split.
    run_command(as_json, work, render_split, needs_tensorflow=False)


def split_label_file(label_csv: str, output: str, test_keys_text: str = "0-24",
                     validation_keys_text: str = "25-49", balance: bool = True,
                     id_column: str = "objectId", label_column: str = "value") -> dict[str, Any]:
    """Read, split and write; return ``{"output", "labels", "counts", "sizes", "warnings"}``.

    Every check happens before the output is written, so a refused input leaves no file.
    """
    from keras_cnn.data import split as splitting

    test_keys = splitting.parse_key_range(test_keys_text, "--test-keys")
    validation_keys = splitting.parse_key_range(validation_keys_text, "--validation-keys")
    splitting.check_key_ranges(test_keys, validation_keys)
    check_output_path(output, option="-o")
    if Path(output).resolve() == Path(label_csv).resolve():
        raise UserError(f"the output '{output}' is the input file; choose another -o")
    labels = splitting.read_label_csv(label_csv, id_column=id_column, label_column=label_column)
    frame = splitting.split_labels(labels, test_keys, validation_keys, balance=balance, source=label_csv)
    names = splitting.class_names(frame["value"])
    counts = splitting.split_counts(frame, names)
    unbalanced = None
    if balance:
        unbalanced = splitting.split_counts(
            splitting.split_labels(labels, test_keys, validation_keys, balance=False, source=label_csv), names
        )
    warnings = splitting.split_warnings(counts, unbalanced)
    splitting.write_split_csv(frame, output)
    for warning in warnings:
        click.echo(f"kcnn: warning: {warning}", err=True)
    return {
        "output": str(output),
        "labels": names,
        "counts": counts,
        "sizes": splitting.part_sizes(counts),
        "warnings": warnings,
    }


def render_split(result: dict[str, Any]) -> None:
    """The human form: the count table, then where the split went."""
    from keras_cnn.data.split import format_counts

    click.echo(format_counts(result["counts"]))
    click.echo(f"wrote {result['output']} ({result['sizes']['total']} rows)")
