"""Options of the commands that read labelled images the way ``kcnn split`` does (split, doctor).

These say how a source is read and split, not how a run trains, so they are not config
fields (:mod:`keras_cnn.cli.options`); each is still defined once, here.
"""

from __future__ import annotations

from collections.abc import Callable

import click

from keras_cnn.cli import options
from keras_cnn.cli.common import option_group

label_csv_images = click.option(
    "--images", default=None, metavar="DIR",
    help="Folder of the files a label CSV names, when they are not named by their SHA-1 "
         "(any names or relative paths; their bytes are hashed).")
id_column = click.option("--id-column", default="objectId", show_default=True, help="Column holding the file names.")
label_column = click.option("--label-column", default="value", show_default=True, help="Column holding the labels.")
test_keys = click.option(
    "--test-keys", default="0-24", show_default=True, metavar="FIRST-LAST",
    help="Keys (last byte of the SHA-1, 0..255) that go to the test part; 'none' for no test part.")
validation_keys = click.option(
    "--validation-keys", default="25-49", show_default=True, metavar="FIRST-LAST",
    help="Keys that go to the validation part; 'none' for no validation part.")
balance = click.option(
    "--balance/--no-balance", default=True, show_default=True,
    help="Keep the same number of rows per label in test and validation (the rest go to train).")


def source_options() -> Callable:
    """``--images``, ``--layout``, ``--id-column``, ``--label-column``, ``--allow-label``: how a source is read."""
    return option_group(label_csv_images, options.layout(), id_column, label_column, options.allow_labels())


def split_rule_options() -> Callable:
    """``--test-keys``, ``--validation-keys``, ``--balance``: the SHA-1 split rule."""
    return option_group(test_keys, validation_keys, balance)
