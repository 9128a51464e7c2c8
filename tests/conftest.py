"""Session fixtures: a trained digits baseline, and the real data of ../shared/data.

* ``digits_weights``: the digits CNN trained once per session (offline, a few seconds).
* ``shared_data``: ``<repo>/../shared/data`` (or ``$MOPRUNE_SHARED_DATA``); skips when absent.
* ``cifar_root``: the CIFAR-10 JPEG zips unzipped once into ``$MOPRUNE_DATA_CACHE`` (default
  ``~/.cache/moprune/cifar10-jpeg``), a folder with ``train/`` and ``test/``.
* ``torch_home``: a ``$TORCH_HOME`` whose hub cache holds the published ResNet weights, so
  ``torch.hub.load_state_dict_from_url(..., check_hash=True)`` works offline.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CIFAR_CLASSES = 10
CIFAR_SPLITS = ("train", "test")
UNZIP_MARKER = ".moprune-unzip-complete"


@pytest.fixture(scope="session")
def digits_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """State_dict file of the digits CNN, trained once per session with the demo's recipe."""
    from moprune.demo import train_baseline

    path = tmp_path_factory.mktemp("digits_weights") / "digits_baseline.pt"
    train_baseline(path, seed=0, progress=False)
    return path


def _shared_data_dir() -> Path:
    env = os.environ.get("MOPRUNE_SHARED_DATA")
    return Path(env).expanduser() if env else REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The shared real-data folder, or skip the test when it is absent."""
    path = _shared_data_dir()
    if not path.is_dir():
        pytest.skip(f"shared data folder {path} is absent (set MOPRUNE_SHARED_DATA)")
    return path


def _n_class_dirs(folder: Path) -> int:
    if not folder.is_dir():
        return 0
    return sum(1 for p in folder.iterdir() if p.is_dir())


def _unzipped(cache: Path, stamp: dict) -> bool:
    marker = cache / UNZIP_MARKER
    if not marker.is_file():
        return False
    try:
        if json.loads(marker.read_text()) != stamp:
            return False
    except (OSError, json.JSONDecodeError):
        return False
    return all(_n_class_dirs(cache / s) == CIFAR_CLASSES for s in CIFAR_SPLITS)


@pytest.fixture(scope="session")
def cifar_root(shared_data: Path) -> Path:
    """Folder with the unzipped CIFAR-10 JPEG copy (``train/``, ``test/``), unzipped once."""
    zips = {s: shared_data / "cifar10-jpeg" / f"{s}.zip" for s in CIFAR_SPLITS}
    missing = [str(z) for z in zips.values() if not z.is_file()]
    if missing:
        pytest.skip(f"CIFAR-10 JPEG zips missing: {', '.join(missing)}")
    cache = Path(os.environ.get("MOPRUNE_DATA_CACHE", "~/.cache/moprune/cifar10-jpeg"))
    cache = cache.expanduser()
    cache.parent.mkdir(parents=True, exist_ok=True)
    stamp = {s: z.stat().st_size for s, z in zips.items()}
    # A lock, so that concurrent test sessions do not unzip over each other.
    with open(cache.parent / f".{cache.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if not _unzipped(cache, stamp):
                (cache / UNZIP_MARKER).unlink(missing_ok=True)
                for split, archive in zips.items():
                    shutil.rmtree(cache / split, ignore_errors=True)
                    with zipfile.ZipFile(archive) as zf:
                        zf.extractall(cache)
                (cache / UNZIP_MARKER).write_text(json.dumps(stamp))
                if not _unzipped(cache, stamp):
                    pytest.fail(f"unzipping {list(zips.values())} into {cache} did not give "
                                f"train/ and test/ with {CIFAR_CLASSES} class folders each")
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return cache


@pytest.fixture
def torch_home(shared_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A ``$TORCH_HOME`` (set for this test) whose hub cache holds the shared ``*.th`` weights."""
    weights = sorted((shared_data / "weights").glob("*.th"))
    if not weights:
        pytest.skip(f"no published weights (*.th) in {shared_data / 'weights'}")
    home = tmp_path / "torch_home"
    checkpoints = home / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    for w in weights:
        shutil.copyfile(w, checkpoints / w.name)
    monkeypatch.setenv("TORCH_HOME", str(home))
    return home
