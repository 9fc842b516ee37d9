"""``kcnn devices``: what TensorFlow sees and how training would run (the Docker smoke check)."""

from __future__ import annotations

import click

from keras_cnn.cli.common import debug_option, json_option, run_command
from keras_cnn.progress import emit


@click.command()
@click.option("--require-gpu", is_flag=True, help="Exit 1 when TensorFlow sees no GPU.")
@json_option
@debug_option
def devices(require_gpu: bool, as_json: bool) -> int:
    """Show the TensorFlow version, the GPUs it sees, and the resolved training plan; writes no files.

    The plan line is the one every training command prints at start (device, strategy,
    precision, XLA with their `auto` defaults). In a container:
    `docker run --rm --gpus all kcnn devices --require-gpu`.
    """

    def work():
        import tensorflow as tf

        from keras_cnn.train.devices import describe, resolve_execution

        plan = resolve_execution()
        return {**plan.to_dict(), "tensorflow": tf.__version__, "plan": describe(plan),
                "cuda_build": {key: str(value) for key, value in tf.sysconfig.get_build_info().items()}}

    def render(result):
        click.echo(f"tensorflow {result['tensorflow']}: {result['plan']}")
        for index, gpu in enumerate(result["gpus"]):
            click.echo(f"  GPU {index}: {gpu['name']} (compute capability {gpu['compute_capability']})")

    result = run_command(as_json, work, render)
    if require_gpu and not result["gpus"]:
        emit("kcnn: error: no GPU visible to TensorFlow (is the container started with --gpus all?)")
        return 1
    return 0
