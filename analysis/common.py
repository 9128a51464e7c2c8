"""Point the real download code at local copies: unpack dataset zips, seed the hub cache."""

from __future__ import annotations

import fcntl
import json
import shutil
import zipfile
from collections.abc import Sequence
from pathlib import Path

import torch

MARKER = ".moprune-unzip-complete"


def _complete(dest: Path, stamp: dict[str, int], folders: Sequence[str]) -> bool:
    try:
        if json.loads((dest / MARKER).read_text()) != stamp:
            return False
    except (OSError, json.JSONDecodeError):
        return False
    return all((dest / f).is_dir() and any((dest / f).iterdir()) for f in folders)


def unpack_zips(archives: Sequence[Path], dest: Path, folders: Sequence[str] = ("train", "test"),
                ) -> Path:
    """Unzip ``archives`` into ``dest`` once (e.g. the CIFAR-10 JPEG copy's train/test zips).

    A lock file keeps concurrent processes from unzipping over each other, and a marker
    (written last, holding the archives' sizes) makes a half-finished unzip start again.

    Args:
        archives: The zip files.
        dest: Target folder (created).
        folders: Top-level folders the archives must produce.

    Returns:
        ``dest``.

    """
    archives = [Path(a) for a in archives]
    missing = [str(a) for a in archives if not a.is_file()]
    if missing:
        raise FileNotFoundError(f"archives not found: {', '.join(missing)}")
    dest = Path(dest).expanduser()
    dest.parent.mkdir(parents=True, exist_ok=True)
    stamp = {a.name: a.stat().st_size for a in archives}
    with open(dest.parent / f".{dest.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if not _complete(dest, stamp, folders):
                (dest / MARKER).unlink(missing_ok=True)
                for f in folders:
                    shutil.rmtree(dest / f, ignore_errors=True)
                for archive in archives:
                    with zipfile.ZipFile(archive) as zf:
                        zf.extractall(dest)
                if not all((dest / f).is_dir() for f in folders):
                    raise ValueError(f"unzipping {[str(a) for a in archives]} did not produce "
                                     f"the folders {list(folders)} in {dest}")
                (dest / MARKER).write_text(json.dumps(stamp))
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return dest


def seed_hub_cache(weights: Sequence[Path], hub_dir: Path | None = None) -> list[Path]:
    """Copy weight files into torch.hub's checkpoint cache.

    There ``torch.hub.load_state_dict_from_url(..., check_hash=True)`` finds them offline.

    Args:
        weights: Files named as published (``name-<sha256 prefix>.ext``).
        hub_dir: The hub folder (default: ``torch.hub.get_dir()``, i.e. ``$TORCH_HOME/hub``).

    Returns:
        The cached paths.

    """
    target = Path(hub_dir or torch.hub.get_dir()) / "checkpoints"
    target.mkdir(parents=True, exist_ok=True)
    out = []
    for w in weights:
        dest = target / Path(w).name
        if not dest.is_file() or dest.stat().st_size != Path(w).stat().st_size:
            shutil.copyfile(w, dest)
        out.append(dest)
    return out
