"""tf.distribute strategies for training: one device, several GPUs, several machines, TPUs."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import tensorflow as tf

from kcap.training.config import STRATEGIES


def make_strategy(name: str = "default") -> tf.distribute.Strategy:
    """The strategy `kcap train --strategy NAME` trains under.

    - `default`: one device (the first GPU if any, else the CPU).
    - `mirrored`: every local GPU (without GPUs: every logical CPU device),
      synchronous all-reduce.
    - `multi-worker`: `MultiWorkerMirroredStrategy`; each machine runs the same
      command with its own `TF_CONFIG`. Create it before any other TensorFlow op.
    - `tpu`: `TPUStrategy` on the TPU named by the environment.

    `--batch-size` is always the global batch, split across replicas.
    """
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
        return tf.distribute.MirroredStrategy([d.name for d in devices])
    if name == "multi-worker":
        if "TF_CONFIG" not in os.environ:
            raise ValueError("--strategy multi-worker needs TF_CONFIG naming the cluster and this task; see the README.")
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "tpu":
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver()
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)
    raise ValueError(f"Unknown strategy {name!r}; expected one of {STRATEGIES}.")


def is_chief(strategy: tf.distribute.Strategy | None = None) -> bool:
    """Whether this process writes the run's files (checkpoints, vocabulary, exports).

    The chief is the `chief` task, or worker 0 when the cluster has no chief;
    a process outside any cluster is its own chief.
    """
    resolver = getattr(strategy, "cluster_resolver", None) if strategy is not None else None
    if resolver is not None and getattr(resolver, "task_type", None):
        task_type, task_id = resolver.task_type, resolver.task_id
        cluster = resolver.cluster_spec().as_dict()
    else:
        config = json.loads(os.environ.get("TF_CONFIG") or "{}")
        task = config.get("task") or {}
        task_type, task_id = task.get("type"), task.get("index", 0)
        cluster = config.get("cluster") or {}
    if task_type in (None, "chief"):
        return True
    return task_type == "worker" and task_id == 0 and "chief" not in cluster


@contextlib.contextmanager
def writable_directory(
    path: str | Path, strategy: tf.distribute.Strategy, copy_existing: bool = False
) -> Iterator[Path]:
    """Where this process writes the files of `path`: `path` itself on the chief.

    Another worker gets a temporary folder instead (holding a copy of `path`'s
    files with `copy_existing`), removed when the block ends. The other workers
    must still write somewhere: saving takes part in collectives.
    """
    if is_chief(strategy):
        yield Path(path)
        return
    scratch = Path(tempfile.mkdtemp(prefix="kcap-worker-"))
    try:
        if copy_existing and Path(path).is_dir():
            shutil.copytree(path, scratch, dirs_exist_ok=True)
        yield scratch
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def mean_over_workers(values: dict[str, float], strategy: tf.distribute.Strategy) -> dict[str, float]:
    """`values` averaged over the workers of a `MultiWorkerMirroredStrategy`; else as they are.

    For numbers each worker computes on its own, like the validation captioning
    scores: the callbacks that act on them (early stopping, the best checkpoint)
    then decide alike on every worker, as they must to stay in step.
    """
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) or not values:
        return values
    names = sorted(values)
    local = tf.constant([float(values[name]) for name in names], tf.float64)
    mean = strategy.reduce(tf.distribute.ReduceOp.MEAN, _on_every_replica(strategy, local), axis=None)
    return dict(zip(names, mean.numpy().tolist()))


# Traced once per strategy and shape, not per call: these run every epoch (and every trial).
# In a tf.function because run eagerly the strategy warns of its overhead; autograph off
# because there is no Python control flow to convert.
@tf.function(autograph=False)
def _on_every_replica(strategy: tf.distribute.Strategy, value: tf.Tensor):
    return strategy.run(tf.identity, args=(value,))


def barrier(strategy: tf.distribute.Strategy) -> None:
    """Returns once every worker of a `MultiWorkerMirroredStrategy` has called it; else at once.

    For files one worker writes and the others read afterwards (on a shared file
    system): the writer calls it after writing, the readers before reading.
    """
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        # A sum over every replica is a collective: no worker gets past it alone.
        strategy.reduce(tf.distribute.ReduceOp.SUM, _on_every_replica(strategy, tf.constant(1.0)), axis=None)
