"""Tests for moprune.data.datasets on tiny image folders made here and the embedded digits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from moprune.data import datasets as data_module
from moprune.data.datasets import (
    DATASETS,
    DataBundle,
    Normalization,
    Split,
    check_num_classes,
    detect_dataset,
    load_dataset,
)
from moprune.errors import DataError, UnknownNameError

CLASSES = ("cat", "dog", "emu")
TRAIN_PER_CLASS = 10
TEST_PER_CLASS = 4


def _write_image(path: Path, value: int, size: tuple[int, int] = (8, 8)) -> None:
    rng = np.random.default_rng(value)
    array = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    array[0, 0] = value  # marks which file an image came from
    Image.fromarray(array).save(path)


def _make_folder(root: Path, per_class: dict[str, int], start: int) -> None:
    counter = start
    for label, name in enumerate(sorted(per_class)):
        class_dir = root / name
        class_dir.mkdir(parents=True)
        for i in range(per_class[name]):
            suffix = ".png" if (i + label) % 2 else ".jpg"
            _write_image(class_dir / f"{i:03d}{suffix}", counter)
            counter += 1


@pytest.fixture()
def image_root(tmp_path: Path) -> Path:
    root = tmp_path / "tiny"
    _make_folder(root / "train", dict.fromkeys(CLASSES, TRAIN_PER_CLASS), start=0)
    _make_folder(root / "test", dict.fromkeys(CLASSES, TEST_PER_CLASS), start=100)
    return root


def _load(
    root: Path,
    seed: int = 0,
    *,
    val_fraction: float = 0.2,
    max_val: int | None = None,
    max_test: int | None = None,
    load_train: bool = True,
    num_workers: int = 2,
) -> DataBundle:
    return load_dataset(
        "imagefolder",
        root=root,
        seed=seed,
        val_fraction=val_fraction,
        max_val=max_val,
        max_test=max_test,
        load_train=load_train,
        num_workers=num_workers,
    )


def test_registry_names() -> None:
    assert DATASETS.names() == ["cifar10", "cifar100", "digits", "imagefolder"]
    with pytest.raises(UnknownNameError, match="digits"):
        load_dataset("mnist", root=None, seed=0)


# --- Normalization and Split ----------------------------------------------------------------


def test_normalization_apply_numerics() -> None:
    norm = Normalization(mean=(0.5, 0.25), std=(0.5, 0.25))
    images = torch.tensor([0, 255, 51, 102], dtype=torch.uint8).view(1, 2, 1, 2)
    out = norm.apply(images)
    assert out.dtype == torch.float32
    assert out.shape == (1, 2, 1, 2)
    expected = torch.tensor([[(0 - 0.5) / 0.5, (1 - 0.5) / 0.5], [(0.2 - 0.25) / 0.25, 0.6]])
    torch.testing.assert_close(out.view(2, 2), expected.view(2, 2), atol=1e-6, rtol=0)


def test_normalization_rejects_bad_input() -> None:
    norm = Normalization(mean=(0.5,), std=(0.5,))
    with pytest.raises(DataError, match="uint8"):
        norm.apply(torch.zeros(1, 1, 2, 2))
    with pytest.raises(DataError, match="3 channels but the normalization has 1"):
        norm.apply(torch.zeros(1, 3, 2, 2, dtype=torch.uint8))
    with pytest.raises(DataError, match="one mean and one std"):
        Normalization(mean=(0.5, 0.5), std=(0.5,))


def test_split_subset_and_validation() -> None:
    split = Split(torch.arange(10, dtype=torch.uint8).view(10, 1, 1, 1), torch.arange(10))
    assert len(split) == 10
    assert split.subset(None) is split
    assert split.subset(20) is split
    assert split.subset(3).labels.tolist() == [0, 1, 2]
    a = split.subset(4, torch.Generator().manual_seed(5))
    b = split.subset(4, torch.Generator().manual_seed(5))
    assert a.labels.tolist() == b.labels.tolist()
    assert len(set(a.labels.tolist())) == 4
    assert torch.equal(a.images.view(-1).long(), a.labels)
    with pytest.raises(DataError, match="int64"):
        Split(torch.zeros(2, 1, 1, 1, dtype=torch.uint8), torch.zeros(2, dtype=torch.int32))
    with pytest.raises(DataError, match="2 images but 3 labels"):
        Split(torch.zeros(2, 1, 1, 1, dtype=torch.uint8), torch.zeros(3, dtype=torch.int64))


# --- image folders ----------------------------------------------------------------------------


def test_imagefolder_shapes_and_labels(image_root: Path) -> None:
    bundle = _load(image_root)
    n_train = len(CLASSES) * TRAIN_PER_CLASS
    assert bundle.class_names == CLASSES
    assert bundle.num_classes == 3
    assert bundle.input_shape == (3, 8, 8)
    assert len(bundle.val) == round(0.2 * n_train)
    assert len(bundle.train) + len(bundle.val) == n_train
    assert len(bundle.test) == len(CLASSES) * TEST_PER_CLASS
    for split in (bundle.train, bundle.val, bundle.test):
        assert split.images.dtype == torch.uint8
        assert split.images.shape[1:] == (3, 8, 8)
    # the full test split keeps file order: sorted classes, sorted files
    assert bundle.test.labels.tolist() == [c for c in range(3) for _ in range(TEST_PER_CLASS)]
    assert bundle.normalization == Normalization((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    # labels follow the class folders: files of class k were written with markers 10k..10k+9
    # (PNG is lossless; the pixel marker is exact there)
    first_png = np.array(Image.open(image_root / "train" / "cat" / "001.png").convert("RGB"))
    assert first_png[0, 0, 0] == 1
    all_train = torch.cat([bundle.train.images, bundle.val.images])
    all_labels = torch.cat([bundle.train.labels, bundle.val.labels])
    match = (all_train.permute(0, 2, 3, 1) == torch.from_numpy(first_png)).flatten(1).all(1)
    assert match.sum() == 1
    assert all_labels[match].item() == 0
    assert torch.bincount(all_labels).tolist() == [TRAIN_PER_CLASS] * 3


def test_imagefolder_split_is_seeded(image_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    a = _load(image_root, seed=1)
    b = _load(image_root, seed=1, num_workers=0)
    monkeypatch.setattr(data_module, "PARALLEL_MIN_FILES", 1)  # force the thread pool
    threaded = _load(image_root, seed=1, num_workers=3)
    assert torch.equal(a.train.images, threaded.train.images)
    assert torch.equal(a.test.images, threaded.test.images)
    c = _load(image_root, seed=2)
    assert torch.equal(a.val.images, b.val.images)
    assert torch.equal(a.train.labels, b.train.labels)
    assert not torch.equal(a.val.images, c.val.images)
    assert torch.equal(a.test.images, c.test.images)  # the full test split ignores the seed


def test_imagefolder_limits(image_root: Path) -> None:
    full = _load(image_root, seed=3)
    bundle = _load(image_root, seed=3, max_val=2, max_test=5, load_train=False)
    assert torch.equal(bundle.val.images, full.val.images[:2])
    assert len(bundle.test) == 5
    assert bundle.train.images.shape == (0, 3, 8, 8)
    assert bundle.train.labels.shape == (0,)
    again = _load(image_root, seed=3, max_test=5)
    assert torch.equal(again.test.images, bundle.test.images)
    other = _load(image_root, seed=4, max_test=5)
    assert not torch.equal(other.test.labels, bundle.test.labels) or not torch.equal(
        other.test.images, bundle.test.images
    )


def test_imagefolder_decodes_only_what_is_asked(
    image_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[Path] = []
    real = data_module._read_image

    def counting(path: Path, size: tuple[int, int] | None = None) -> np.ndarray:
        calls.append(path)
        return real(path, size)

    monkeypatch.setattr(data_module, "_read_image", counting)
    _load(image_root, max_val=2, max_test=3, load_train=False)
    assert len(calls) == 1 + 2 + 3  # one probe for the image size, then val and test


def test_detect_dataset(image_root: Path, tmp_path: Path) -> None:
    assert detect_dataset(image_root) == "imagefolder"
    (tmp_path / "c10" / "cifar-10-batches-py").mkdir(parents=True)
    assert detect_dataset(tmp_path / "c10") == "cifar10"
    assert detect_dataset(tmp_path / "c10" / "cifar-10-batches-py") == "cifar10"
    (tmp_path / "c100" / "cifar-100-python").mkdir(parents=True)
    assert detect_dataset(tmp_path / "c100") == "cifar100"
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("x")
    with pytest.raises(DataError, match="expected one of these layouts") as info:
        detect_dataset(tmp_path / "other")
    assert "notes.txt" in str(info.value)
    with pytest.raises(DataError, match="does not exist"):
        detect_dataset(tmp_path / "missing")


def test_imagefolder_error_root_none() -> None:
    with pytest.raises(DataError, match="needs a data root; pass --data-root"):
        load_dataset("imagefolder", root=None, seed=0)


def test_imagefolder_error_root_missing(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist") as info:
        _load(tmp_path / "nowhere")
    assert "--data-root" in str(info.value)


def test_imagefolder_error_no_layout(tmp_path: Path) -> None:
    (tmp_path / "flat" / "cat").mkdir(parents=True)
    with pytest.raises(DataError, match="no train/ and test/ folders") as info:
        _load(tmp_path / "flat")
    assert "ROOT/train/<class>" in str(info.value)
    assert "cat/" in str(info.value)


def test_imagefolder_error_empty_class(image_root: Path) -> None:
    (image_root / "train" / "fox").mkdir()
    (image_root / "test" / "fox").mkdir()
    with pytest.raises(DataError, match="fox holds no"):
        _load(image_root)


def test_imagefolder_error_classes_differ(image_root: Path) -> None:
    (image_root / "test" / "emu").rename(image_root / "test" / "owl")
    with pytest.raises(DataError, match="class folders differ") as info:
        _load(image_root)
    message = str(info.value)
    assert "only in train: ['emu']" in message
    assert "only in test: ['owl']" in message


def test_imagefolder_error_unreadable_file(image_root: Path) -> None:
    bad = image_root / "test" / "dog" / "zzz.jpg"
    bad.write_bytes(b"not an image")
    with pytest.raises(DataError, match="cannot read image file .*zzz.jpg"):
        _load(image_root)


def test_imagefolder_error_size_mismatch(image_root: Path) -> None:
    odd = image_root / "test" / "cat" / "zzz.png"
    _write_image(odd, 7, size=(9, 8))
    with pytest.raises(DataError, match="zzz.png is 9x8 pixels but the others are 8x8"):
        _load(image_root)


def test_imagefolder_error_in_thread_pool(
    image_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(data_module, "PARALLEL_MIN_FILES", 1)
    (image_root / "test" / "emu" / "zzz.png").write_bytes(b"broken")
    with pytest.raises(DataError, match="cannot read image file .*zzz.png"):
        _load(image_root, num_workers=4)


def test_option_validation(image_root: Path) -> None:
    with pytest.raises(DataError, match="val_fraction must be between 0 and 1"):
        _load(image_root, val_fraction=1.0)
    with pytest.raises(DataError, match="max_val must be a positive integer"):
        _load(image_root, max_val=0)


# --- digits -----------------------------------------------------------------------------------


def _rows(*splits: Split) -> list[tuple[int, ...]]:
    images = torch.cat([s.images.flatten(1) for s in splits])
    labels = torch.cat([s.labels for s in splits]).view(-1, 1)
    return sorted(map(tuple, torch.cat([images.long(), labels], 1).tolist()))


def test_digits_bundle() -> None:
    a = load_dataset("digits", root=None, seed=0)
    b = load_dataset("digits", root=None, seed=1)
    assert a.input_shape == (1, 8, 8)
    assert a.num_classes == 10
    assert a.class_names == tuple(str(d) for d in range(10))
    assert a.train.images.shape[1:] == (1, 8, 8)
    assert a.train.images.dtype == torch.uint8
    assert len(a.test) == 359
    assert len(a.val) == round(0.2 * (1797 - 359))
    assert len(a.train) + len(a.val) + len(a.test) == 1797
    # the test split is fixed; the hold-out moves with the seed
    assert torch.equal(a.test.images, b.test.images)
    assert not torch.equal(a.val.labels, b.val.labels)
    # train and val partition the same training part for every seed, and with test make up all
    assert _rows(a.train, a.val) == _rows(b.train, b.val)
    embedded = np.load(Path(data_module.__file__).parent / "digits.npz")
    everything = Split(torch.from_numpy(embedded["images"]), torch.from_numpy(embedded["labels"]))
    assert _rows(a.train, a.val, a.test) == _rows(everything)
    # normalization comes from the (seed-independent) training part
    assert a.normalization == b.normalization
    pool = torch.cat([a.train.images, a.val.images]).double() / 255
    assert a.normalization.mean[0] == pytest.approx(pool.mean().item())
    assert a.normalization.std[0] == pytest.approx(pool.std().item())


def test_digits_limits() -> None:
    full = load_dataset("digits", root=None, seed=7)
    small = load_dataset("digits", root=None, seed=7, max_val=25, max_test=40, load_train=False)
    assert torch.equal(small.val.images, full.val.images[:25])
    assert len(small.test) == 40
    assert small.train.images.shape == (0, 1, 8, 8)


def test_check_num_classes() -> None:
    bundle = load_dataset("digits", root=None, seed=0, load_train=False)
    check_num_classes(bundle, 10)
    with pytest.raises(DataError, match="model has 100 outputs but dataset 'digits' has 10"):
        check_num_classes(bundle, 100)


# --- CIFAR (offline: errors and tensor conversion with a stand-in dataset class) --------------


def test_cifar_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="needs a data root; pass --download"):
        load_dataset("cifar10", root=None, seed=0)
    with pytest.raises(DataError, match="cifar-100-python not found; pass --download") as info:
        load_dataset("cifar100", root=tmp_path, seed=0)
    assert "--data-root" in str(info.value)
    (tmp_path / "cifar-10-batches-py").mkdir()
    with pytest.raises(DataError, match="missing or corrupted"):
        load_dataset("cifar10", root=tmp_path, seed=0)


class _FakeCifar:
    base_folder = "cifar-10-batches-py"

    def __init__(self, root: str, train: bool, download: bool) -> None:
        n = 20 if train else 6
        rng = np.random.default_rng(int(train))
        self.data = rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)
        self.targets = [i % 10 for i in range(n)]
        self.classes = [f"c{i}" for i in range(10)]


def test_cifar_conversion(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torchvision.datasets, "CIFAR10", _FakeCifar)
    (tmp_path / "cifar-10-batches-py").mkdir()
    bundle = load_dataset("cifar10", root=tmp_path / "cifar-10-batches-py", seed=0, max_test=4)
    assert bundle.input_shape == (3, 32, 32)
    assert len(bundle.val) == 4
    assert len(bundle.train) == 16
    assert len(bundle.test) == 4
    assert bundle.normalization.mean == (0.4914, 0.4822, 0.4465)
    fake = _FakeCifar("", True, False)
    image = torch.from_numpy(fake.data).permute(0, 3, 1, 2)
    for img, label in zip(bundle.val.images, bundle.val.labels, strict=True):
        found = (image == img).flatten(1).all(1).nonzero().flatten()
        assert found.numel() == 1
        assert fake.targets[int(found)] == label.item()
