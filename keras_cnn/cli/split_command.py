"""``kcnn split``: class folders, a pre-split tree or a label CSV -> split CSV by each image's SHA-1 key."""

from __future__ import annotations

from typing import Any

import click

from keras_cnn.cli import options
from keras_cnn.cli.common import InputPath, debug_option, json_option, run_command
from keras_cnn.cli.source_options import source_options, split_rule_options


@click.command("split")
@click.argument("source", metavar="LABEL_CSV|DIR", type=InputPath())
@click.option("-o", "--output", required=True, metavar="SPLIT_CSV",
              help="Where to write objectId,value,type[,sha1] (written atomically).")
@source_options()
@split_rule_options()
@options.data_edit_options()
@options.multi_label_options()
@json_option
@debug_option
def split(source: str, output: str, images: str | None, layout: str | None, test_keys: str,
          validation_keys: str, balance: bool, id_column: str, label_column: str,
          allow_labels: tuple[str, ...], exclude: str | None, relabel: str | None, multi_label: bool,
          label_delimiter: str, as_json: bool) -> None:
    """Split images into train/validation/test by the SHA-1 of each one.

    \b
    LABEL_CSV|DIR is one of:
      DIR/<label>/…/*.jpg                a folder per class (any file names)
      DIR/{train,val,test}/<label>/…     a tree already split (kept; a missing part is drawn from train)
      LABEL_CSV                          objectId,value with files named <sha1>.jpg
      LABEL_CSV --images DIR             objectId = any file name or relative path under DIR

    The key of an image is the last byte of its SHA-1 (of its name when that is a SHA-1,
    else of its bytes), so the split is stable: adding, renaming or moving images never
    moves an existing one. Identical images under two labels are refused; under one label
    they are kept once. Prints the rows per label per part; warns when a part is empty,
    tiny, or much shrunk by balancing.

    With --multi-label an image may have several labels: 'cat;dog' in a label CSV (an
    empty cell: no label), or the same picture under several class folders, which
    becomes one image with all their labels. Test and validation are then not balanced;
    the table counts the images of each label per part, and a warning names labels with
    no image in validation or test. The split CSV is objectId,labels,type[,sha1].

    \b
    Examples:
      kcnn split photos/ -o split.csv
      kcnn split labels.csv --images photos/ -o split.csv
      kcnn split tags.csv --images photos/ --multi-label -o split.csv
    """
    def work() -> dict[str, Any]:
        from keras_cnn.data.collection import split_to_file  # pandas: not imported for --help
        from keras_cnn.io import remove_abandoned_temporaries

        remove_abandoned_temporaries(output)   # what a killed split of this file left
        return split_to_file(source, output, images, layout, test_keys, validation_keys, balance,
                             id_column, label_column, allow_labels, exclude, relabel, multi_label, label_delimiter)

    # pandas only: no TensorFlow start-up for a split.
    run_command(as_json, work, render_split, needs_tensorflow=False)


def render_split(result: dict[str, Any]) -> None:
    """The human form: the count table, then where the split went."""
    from keras_cnn.data.split import format_counts

    click.echo(format_counts(result["counts"], images=result["sizes"] if result.get("multi_label") else None,
                             unlabelled=result.get("unlabelled")))
    click.echo(f"wrote {result['output']} ({result['sizes']['total']} rows)")
