"""The demo problem: a 3-conv CNN on the embedded 8x8 digits (what `moprune demo` runs).

Train a baseline first (the demo does): `moprune finetune problems/digits_demo.py --epochs 40
--lr 0.05 --out digits.pt`, then `moprune search problems/digits_demo.py --weights digits.pt
--out RUN`.
"""

from moprune.tasks.digits import build_task

__all__ = ["build_task"]
