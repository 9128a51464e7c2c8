"""Session fixtures: a trained digits baseline, and the real data of ../shared/data.

* ``digits_weights``: the digits CNN trained once per session (offline, a few seconds).
* ``shared_data``: ``<repo>/../shared/data`` (or ``$MOPRUNE_SHARED_DATA``); skips when absent.
* ``cifar_root``: the CIFAR-10 JPEG zips unzipped once into ``$MOPRUNE_DATA_CACHE`` (default
  ``~/.cache/moprune/cifar10-jpeg``), a folder with ``train/`` and ``test/``.
* ``torch_home``: a ``$TORCH_HOME`` whose hub cache holds the published ResNet weights, so
  ``torch.hub.load_state_dict_from_url(..., check_hash=True)`` works offline.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "analysis"))  # analysis/common.py: the local-copy helpers
sys.path.insert(0, str(REPO / "tests"))  # tests/helpers.py: tiny models and made-up data

from common import seed_hub_cache, unpack_zips  # noqa: E402

CIFAR_CLASSES = 10
CIFAR_SPLITS = ("train", "test")


@pytest.fixture(scope="session")
def digits_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """State_dict file of the digits CNN, trained once per session with the demo's recipe."""
    from moprune.tasks.digits import train_baseline

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


@pytest.fixture(scope="session")
def cifar_root(shared_data: Path) -> Path:
    """Folder with the unzipped CIFAR-10 JPEG copy (``train/``, ``test/``), unzipped once."""
    zips = {s: shared_data / "cifar10-jpeg" / f"{s}.zip" for s in CIFAR_SPLITS}
    missing = [str(z) for z in zips.values() if not z.is_file()]
    if missing:
        pytest.skip(f"CIFAR-10 JPEG zips missing: {', '.join(missing)}")
    cache = Path(os.environ.get("MOPRUNE_DATA_CACHE", "~/.cache/moprune/cifar10-jpeg"))
    root = unpack_zips(list(zips.values()), cache.expanduser())
    for split in CIFAR_SPLITS:
        n = sum(1 for p in (root / split).iterdir() if p.is_dir())
        assert n == CIFAR_CLASSES, f"{root / split} has {n} class folders, expected 10"
    return root


@pytest.fixture
def torch_home(shared_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A ``$TORCH_HOME`` (set for this test) whose hub cache holds the shared ``*.th`` weights."""
    weights = sorted((shared_data / "weights").glob("*.th"))
    if not weights:
        pytest.skip(f"no published weights (*.th) in {shared_data / 'weights'}")
    home = tmp_path / "torch_home"
    seed_hub_cache(weights, home / "hub")
    monkeypatch.setenv("TORCH_HOME", str(home))
    return home

