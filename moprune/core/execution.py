"""How networks run on a device: precision, memory format, compilation.

:class:`Execution` is shared by the evaluator and the fine-tuner. ``"auto"`` resolves per
device to the fastest settings that keep results trustworthy:

- CUDA: bf16 autocast (fp16 where the GPU has no bf16), channels-last;
- CPU: fp32, channels-last (oneDNN's blocked convolutions; about 1.5x on ResNet-56 here).
  ``precision="bf16"`` is another 3x on CPUs with AVX512-BF16 or AMX (see
  ``docs/benchmarks.md``) but is opt-in on the CPU, where fp32 results are exact relations
  the tests check.

Images stay uint8 wherever they are held; :func:`normalize` turns a batch into the model's
input on the device, in the chosen memory format.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from moprune.errors import ConfigError, DeviceError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def resolve_device(device: str | torch.device) -> torch.device:
    """A torch device, refusing CUDA where there is none (with a clear message)."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise DeviceError(f"device must be 'cpu' or 'cuda[:N]'; got {str(device)!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(
            f"device {str(device)!r} was requested but CUDA is not available on this machine "
            f"(torch {torch.__version__}); use --device cpu."
        )
    if dev.type not in ("cpu", "cuda"):
        raise DeviceError(f"device must be 'cpu' or 'cuda[:N]'; got {str(device)!r}")
    return dev
DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class Execution:
    """Run settings of a network on a device.

    Attributes:
        precision: ``"fp32"``, ``"bf16"`` or ``"fp16"`` autocast, or ``"auto"`` (bf16 on
            CUDA, fp16 on GPUs without bf16, fp32 on the CPU).
        channels_last: Run convolutions in the channels-last memory format; None: on
            (CUDA and CPU alike; it is faster on both).
        compile: ``torch.compile`` the evaluator's population pass (gate mode, static
            shapes) and the fine-tuner's model. The first call compiles (tens of seconds);
            worth it for long searches and fine-tuning runs, not for a few candidates.

    """

    precision: str = "auto"
    channels_last: bool | None = None
    compile: bool = False

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}; got "
                             f"{self.precision!r}")
        if self.channels_last not in (None, True, False):
            raise ConfigError(f"channels_last must be True, False or None (auto); got "
                             f"{self.channels_last!r}")
        if not isinstance(self.compile, bool):
            raise ConfigError(f"compile must be a bool; got {self.compile!r}")

    def resolve(self, device: torch.device | str) -> Execution:
        """The concrete settings on ``device`` (no ``"auto"``, no None)."""
        device = torch.device(device)
        precision = self.precision
        if precision == "auto":
            if device.type == "cuda":
                with torch.cuda.device(device):  # emulated bf16 (pre-Ampere) is slow
                    native = torch.cuda.is_bf16_supported(including_emulation=False)
                precision = "bf16" if native else "fp16"
            else:
                precision = "fp32"
        channels_last = True if self.channels_last is None else self.channels_last
        return Execution(precision, channels_last, self.compile)

    @property
    def dtype(self) -> torch.dtype | None:
        """The autocast dtype, or None for fp32 (call :meth:`resolve` first)."""
        if self.precision == "auto":
            raise ConfigError("resolve the execution on a device first (precision is 'auto')")
        return DTYPES[self.precision]

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format

    def autocast(self, device: torch.device) -> contextlib.AbstractContextManager:
        """Autocast to the precision's dtype on ``device`` (a no-op for fp32)."""
        dtype = self.dtype
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=dtype)

    def prepare(self, model: torch.nn.Module) -> torch.nn.Module:
        """Put ``model``'s 4-d weights in the memory format (in place; returns the model)."""
        return model.to(memory_format=self.memory_format)

    def to_dict(self) -> dict:
        return {"precision": self.precision, "channels_last": self.channels_last,
                "compile": self.compile}


def normalize(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor,
              memory_format: torch.memory_format = torch.contiguous_format) -> torch.Tensor:
    """``(images / 255 - mean) / std`` in float32 from uint8, in ``memory_format``.

    Bit-identical to :meth:`moprune.data.datasets.Normalization.apply`; ``mean``/``std`` are
    (1, C, 1, 1) float32 tensors on the images' device.
    """
    x = (images.to(torch.float32) / 255.0 - mean) / std
    if x.dim() == 4:
        x = x.contiguous(memory_format=memory_format)
    return x


__all__ = ["DTYPES", "Execution", "PRECISIONS", "normalize"]
