"""Golden-file problem: the digits demo with the per-group ratio encoding (FPGM ranking)."""

import dataclasses

from moprune.tasks.digits import build_task as digits_task
from moprune.tasks.task import PruningTask, TaskOptions


def build_task(options: TaskOptions) -> PruningTask:
    return dataclasses.replace(digits_task(options), encoding="ratio", criterion="fpgm")
