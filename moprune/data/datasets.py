"""Datasets as uint8 tensors with a seeded hold-out split of the training data."""

from __future__ import annotations

import importlib.resources
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import numpy as np
import torch
import torchvision
from PIL import Image, ImageOps

from moprune.core.execution import normalize
from moprune.core.registry import Registry
from moprune.errors import DataError  # noqa: F401 (re-exported)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
CIFAR10_NORMALIZATION_VALUES = ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
CIFAR100_NORMALIZATION_VALUES = ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))
IMAGENET_NORMALIZATION_VALUES = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
DIGITS_TEST_SEED = 0  # fixed: the digits test split never changes with the run seed
DIGITS_TEST_FRACTION = 0.2
PARALLEL_MIN_FILES = 64  # fewer files are decoded in the calling thread

_LAYOUTS = (
    "expected one of these layouts:\n"
    "  imagefolder: ROOT/train/<class>/*.jpg|png and ROOT/test/<class>/*.jpg|png\n"
    "  cifar10:     ROOT/cifar-10-batches-py/ (torchvision's CIFAR-10 folder)\n"
    "  cifar100:    ROOT/cifar-100-python/ (torchvision's CIFAR-100 folder)"
)


@dataclass(frozen=True)
class Normalization:
    """Per-channel mean and standard deviation of pixel values scaled to [0, 1]."""

    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.mean) != len(self.std) or not self.mean:
            raise DataError(
                f"Normalization needs one mean and one std per channel; got {len(self.mean)} "
                f"means and {len(self.std)} stds. Pass tuples of equal, non-zero length."
            )
        if any(s <= 0 for s in self.std):
            raise DataError(f"Normalization std must be positive; got {self.std}.")

    def apply(self, images_uint8: torch.Tensor) -> torch.Tensor:
        """Return ``(images / 255 - mean) / std`` as float32 on the images' device.

        Args:
            images_uint8: uint8 tensor of shape (N, C, H, W) with C equal to len(mean).

        Returns:
            A float32 tensor of the same shape.

        """
        if images_uint8.dtype != torch.uint8 or images_uint8.dim() != 4:
            raise DataError(
                "Normalization.apply expects a uint8 tensor of shape (N, C, H, W); got "
                f"{images_uint8.dtype} of shape {tuple(images_uint8.shape)}. Pass the raw "
                "uint8 images of a Split (add a batch dimension with unsqueeze(0) if needed)."
            )
        channels = images_uint8.shape[1]
        if channels != len(self.mean):
            raise DataError(
                f"images have {channels} channels but the normalization has {len(self.mean)}; "
                "use the normalization of the data set the images come from."
            )
        device = images_uint8.device
        mean = torch.tensor(self.mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        return normalize(images_uint8, mean, std)


@dataclass
class Split:
    """Images and labels of one part of a data set.

    Attributes:
        images: uint8 tensor of shape (N, C, H, W).
        labels: int64 tensor of shape (N,).

    """

    images: torch.Tensor
    labels: torch.Tensor

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise DataError(
                "Split.images must be a uint8 tensor of shape (N, C, H, W); got "
                f"{self.images.dtype} of shape {tuple(self.images.shape)}."
            )
        if self.labels.dtype != torch.int64 or self.labels.dim() != 1:
            raise DataError(
                "Split.labels must be an int64 tensor of shape (N,); got "
                f"{self.labels.dtype} of shape {tuple(self.labels.shape)}."
            )
        if self.images.shape[0] != self.labels.shape[0]:
            raise DataError(
                f"Split has {self.images.shape[0]} images but {self.labels.shape[0]} labels; "
                "pass one label per image."
            )

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, n: int | None, generator: torch.Generator | None = None) -> Split:
        """Return ``n`` examples: the first ``n``, or a random ``n`` drawn with ``generator``.

        Args:
            n: How many examples to keep; ``None`` or ``n >= len(self)`` keeps all (``self``).
            generator: If given, the examples are a random sample drawn with it.

        Returns:
            A new Split (or ``self`` when nothing is dropped).

        """
        if n is None or n >= len(self):
            return self
        if n < 0:
            raise DataError(f"subset size must be >= 0 or None; got {n}.")
        if generator is None:
            index = torch.arange(n)
        else:
            index = torch.randperm(len(self), generator=generator)[:n]
        return Split(self.images[index], self.labels[index])


@dataclass
class DataBundle:
    """A data set ready for search: fine-tuning, selection (val) and report (test) splits.

    Attributes:
        name: Registry name of the data set.
        train: Training data minus the hold-out (used for fine-tuning).
        val: Seeded hold-out part of the training data (used for selection).
        test: The official test split (only reported, never used to choose).
        num_classes: Number of classes.
        class_names: Class names in label order.
        normalization: Mean/std to apply to the uint8 images.
        input_shape: (C, H, W) of one image.

    """

    name: str
    train: Split
    val: Split
    test: Split
    num_classes: int
    class_names: tuple[str, ...]
    normalization: Normalization
    input_shape: tuple[int, int, int]


@dataclass(frozen=True)
class LoadRequest:
    """The options of one ``load_dataset`` call, as handed to a registered loader."""

    name: str
    root: Path | None
    seed: int
    val_fraction: float
    max_val: int | None
    max_train: int | None
    max_test: int | None
    load_train: bool
    download: bool
    num_workers: int
    image_size: tuple[int, int] | None = None


Loader = Callable[[LoadRequest], DataBundle]
DATASETS: Registry[Loader] = Registry("dataset")


def load_dataset(
    name: str,
    *,
    root: str | Path | None,
    seed: int,
    val_fraction: float = 0.2,
    max_val: int | None = None,
    max_test: int | None = None,
    load_train: bool = True,
    max_train: int | None = None,
    download: bool = False,
    num_workers: int = 2,
    image_size: tuple[int, int] | None = None,
) -> DataBundle:
    """Load a registered data set as uint8 tensors with a seeded hold-out split.

    Args:
        name: A name in ``DATASETS`` ("digits", "cifar10", "cifar100", "imagefolder").
        root: Data folder; ignored by "digits", required by the others.
        seed: Seeds the train/val permutation and the ``max_test`` sample.
        val_fraction: Fraction of the training data held out as ``val`` (0 < f < 1).
        max_val: Keep (and decode) only the first ``max_val`` held-out examples.
        max_test: Keep (and decode) only a seeded random ``max_test`` test examples.
        load_train: If False, ``train`` is empty and nothing of it is decoded.
        max_train: Keep (and decode) only a seeded random ``max_train`` of the training part
            (for reduced-budget fine-tuning); the hold-out split is unaffected.
        download: Let torchvision download CIFAR into ``root`` when it is missing.
        num_workers: Threads used to decode image files.
        image_size: ``(H, W)`` every image is brought to ("imagefolder" only): resized so it
            covers that size, then centre-cropped (``PIL.ImageOps.fit``). None: the images
            must all have one size already.

    Returns:
        The DataBundle.

    Raises:
        UnknownNameError: ``name`` is not registered.
        DataError: The data are missing or malformed, or an option is out of range.

    """
    loader = DATASETS.get(name)
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"val_fraction must be between 0 and 1 (exclusive); got {val_fraction}.")
    for label, value in (("max_val", max_val), ("max_test", max_test),
                         ("max_train", max_train)):
        if value is not None and value < 1:
            raise DataError(f"{label} must be a positive integer or None; got {value}.")
    if num_workers < 0:
        raise DataError(f"num_workers must be >= 0; got {num_workers}.")
    if image_size is not None and (len(image_size) != 2 or min(image_size) < 1):
        raise DataError(f"image_size must be (height, width) with positive sides; got "
                        f"{image_size!r}.")
    request = LoadRequest(
        name=name,
        root=None if root is None else Path(root).expanduser(),
        seed=seed,
        val_fraction=val_fraction,
        max_val=max_val,
        max_train=max_train,
        max_test=max_test,
        load_train=load_train,
        download=download,
        num_workers=num_workers,
        image_size=None if image_size is None else (int(image_size[0]), int(image_size[1])),
    )
    return loader(request)


def check_num_classes(bundle: DataBundle, model_num_outputs: int) -> None:
    """Raise ``DataError`` if a model's output count differs from the data set's classes."""
    if model_num_outputs != bundle.num_classes:
        raise DataError(
            f"model has {model_num_outputs} outputs but dataset {bundle.name!r} has "
            f"{bundle.num_classes} classes; build the model with num_classes="
            f"{bundle.num_classes} or use a checkpoint trained on {bundle.name!r}."
        )


def detect_dataset(root: str | Path) -> str:
    """Guess the registry name of the data set stored under ``root``.

    Returns:
        "imagefolder", "cifar10" or "cifar100".

    Raises:
        DataError: ``root`` does not exist or has none of the known layouts.

    """
    root = Path(root).expanduser()
    _require_dir(root, "data root")
    if _class_dirs(root / "train") and _class_dirs(root / "test"):
        return "imagefolder"
    for name, folder in (
        ("cifar10", torchvision.datasets.CIFAR10.base_folder),
        ("cifar100", torchvision.datasets.CIFAR100.base_folder),
    ):
        if root.name == folder or (root / folder).is_dir():
            return name
    raise DataError(f"cannot tell which data set is in {root}; {_LAYOUTS}\n{_listing(root)}")


# --- shared helpers -------------------------------------------------------------------------


def holdout_indices(
    n: int, seed: int, val_fraction: float, max_val: int | None, max_train: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Split ``range(n)`` into (train, val) indices with a permutation seeded by ``seed``.

    The first ``round(val_fraction * n)`` permuted indices are val, the rest train; ``max_val``
    keeps only the first ``max_val`` val indices and ``max_train`` the first ``max_train``
    train indices. Both keep the permuted (random) order.
    """
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_val = round(val_fraction * n)
    if n_val < 1 or n_val >= n:
        raise DataError(
            f"val_fraction={val_fraction} of {n} training examples leaves {n_val} for val and "
            f"{n - n_val} for train; both need at least one. Choose another val_fraction."
        )
    val = perm[:n_val]
    if max_val is not None:
        val = val[:max_val]
    train = perm[n_val:] if max_train is None else perm[n_val:][:max_train]
    return train, val


def sample_indices(n: int, seed: int, max_n: int | None) -> torch.Tensor:
    """All of ``range(n)`` in order, or a seeded random ``max_n`` of them if ``max_n < n``."""
    if max_n is None or max_n >= n:
        return torch.arange(n)
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:max_n]


def _require_dir(path: Path, what: str) -> None:
    if not path.is_dir():
        raise DataError(
            f"{what} {path} does not exist or is not a folder; point --data-root at the "
            "folder that holds the data set."
        )


def _listing(root: Path, limit: int = 10) -> str:
    entries = sorted(p.name + ("/" if p.is_dir() else "") for p in root.iterdir())
    shown = ", ".join(entries[:limit]) or "(empty)"
    more = f" ... ({len(entries) - limit} more)" if len(entries) > limit else ""
    return f"found in {root}: {shown}{more}"


def _class_dirs(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted((p for p in folder.iterdir() if p.is_dir()), key=lambda p: p.name)


def _empty_split(input_shape: tuple[int, int, int]) -> Split:
    return Split(
        torch.empty((0, *input_shape), dtype=torch.uint8), torch.empty(0, dtype=torch.int64)
    )


def _splits_from_arrays(
    images: torch.Tensor,
    labels: torch.Tensor,
    test_images: torch.Tensor,
    test_labels: torch.Tensor,
    request: LoadRequest,
) -> tuple[Split, Split, Split]:
    train_idx, val_idx = holdout_indices(
        len(labels), request.seed, request.val_fraction, request.max_val, request.max_train
    )
    test_idx = sample_indices(len(test_labels), request.seed, request.max_test)
    shape = cast(tuple[int, int, int], tuple(images.shape[1:]))
    train = (
        Split(images[train_idx], labels[train_idx]) if request.load_train else _empty_split(shape)
    )
    val = Split(images[val_idx], labels[val_idx])
    test = Split(test_images[test_idx], test_labels[test_idx])
    return train, val, test


# --- digits -----------------------------------------------------------------------------------


def _load_digits(request: LoadRequest) -> DataBundle:
    resource = importlib.resources.files("moprune") / "data" / "digits.npz"
    with resource.open("rb") as handle, np.load(handle) as archive:
        images = torch.from_numpy(archive["images"].copy())
        labels = torch.from_numpy(archive["labels"].astype(np.int64))
    perm = torch.randperm(len(labels), generator=torch.Generator().manual_seed(DIGITS_TEST_SEED))
    n_test = round(DIGITS_TEST_FRACTION * len(labels))
    test_part, train_part = perm[:n_test].sort().values, perm[n_test:].sort().values
    pool = images[train_part].to(torch.float64) / 255.0
    normalization = Normalization((float(pool.mean()),), (float(pool.std()),))
    train, val, test = _splits_from_arrays(
        images[train_part], labels[train_part], images[test_part], labels[test_part], request
    )
    return DataBundle(
        name=request.name,
        train=train,
        val=val,
        test=test,
        num_classes=10,
        class_names=tuple(str(d) for d in range(10)),
        normalization=normalization,
        input_shape=(1, 8, 8),
    )


# --- CIFAR ------------------------------------------------------------------------------------


def _load_cifar(
    request: LoadRequest,
    dataset_class: type[torchvision.datasets.CIFAR10],
    values: tuple[tuple[float, ...], tuple[float, ...]],
) -> DataBundle:
    folder = dataset_class.base_folder
    hint = f"pass --download to fetch it, or point --data-root at the folder that holds {folder}/"
    if request.root is None:
        raise DataError(f"dataset {request.name!r} needs a data root; {hint}.")
    root = request.root.parent if request.root.name == folder else request.root
    if not request.download and not (root / folder).is_dir():
        raise DataError(f"{root / folder} not found; {hint}.")
    try:
        train_ds = dataset_class(str(root), train=True, download=request.download)
        test_ds = dataset_class(str(root), train=False, download=request.download)
    except RuntimeError as err:  # torchvision: "Dataset not found or corrupted"
        raise DataError(
            f"{request.name} in {root} is missing or corrupted ({err}); {hint}."
        ) from err
    except OSError as err:  # failed download
        raise DataError(
            f"could not download {request.name} into {root} ({err}); download it by hand and "
            f"point --data-root at the folder that holds {folder}/."
        ) from err

    def to_tensors(ds: torchvision.datasets.CIFAR10) -> tuple[torch.Tensor, torch.Tensor]:
        images = torch.from_numpy(np.ascontiguousarray(ds.data)).permute(0, 3, 1, 2).contiguous()
        return images, torch.as_tensor(ds.targets, dtype=torch.int64)

    images, labels = to_tensors(train_ds)
    test_images, test_labels = to_tensors(test_ds)
    train, val, test = _splits_from_arrays(images, labels, test_images, test_labels, request)
    return DataBundle(
        name=request.name,
        train=train,
        val=val,
        test=test,
        num_classes=len(train_ds.classes),
        class_names=tuple(train_ds.classes),
        normalization=Normalization(*values),
        input_shape=cast(tuple[int, int, int], tuple(images.shape[1:])),
    )


# --- image folders ----------------------------------------------------------------------------


def _scan_split(folder: Path) -> tuple[list[str], list[Path], list[int]]:
    classes = _class_dirs(folder)
    if not classes:
        raise DataError(
            f"{folder} has no class folders; put the images of each class in "
            f"{folder}/<class>/*.jpg|png."
        )
    files: list[Path] = []
    labels: list[int] = []
    for label, class_dir in enumerate(classes):
        found = sorted(
            p for p in class_dir.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
        )
        if not found:
            raise DataError(
                f"class folder {class_dir} holds no {'/'.join(IMAGE_SUFFIXES)} images; add "
                "images or remove the folder."
            )
        files.extend(found)
        labels.extend([label] * len(found))
    return [c.name for c in classes], files, labels


def _read_image(path: Path, size: tuple[int, int] | None = None) -> np.ndarray:
    try:
        with Image.open(path) as image:
            rgb = image.convert("RGB")
            if size is not None and rgb.size != (size[1], size[0]):
                rgb = ImageOps.fit(rgb, (size[1], size[0]), method=Image.Resampling.BILINEAR)
            return np.asarray(rgb)
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        raise DataError(f"cannot read image file {path} ({err}); replace or delete it.") from err


def _fill(out: np.ndarray, paths: Sequence[Path], start: int, resize: bool = False) -> None:
    for offset, path in enumerate(paths):
        array = _read_image(path, (out.shape[1], out.shape[2]) if resize else None)
        if array.shape != out.shape[1:]:
            raise DataError(
                f"image file {path} is {array.shape[1]}x{array.shape[0]} pixels but the others "
                f"are {out.shape[2]}x{out.shape[1]}; all images must have one size, so resize "
                "or remove it (or let moprune resize them: load_dataset(image_size=...), as "
                "problems/torchvision_imagefolder.py does)."
            )
        out[start + offset] = array


def _decode(paths: Sequence[Path], hw: tuple[int, int], num_workers: int,
            resize: bool = False) -> torch.Tensor:
    """Decode ``paths`` into a uint8 (N, 3, H, W) tensor, in parallel threads.

    With ``resize`` every image is fitted to ``hw``; otherwise it must have that size.
    """
    out = np.empty((len(paths), hw[0], hw[1], 3), dtype=np.uint8)
    if num_workers <= 1 or len(paths) < PARALLEL_MIN_FILES:
        _fill(out, paths, 0, resize)
    else:
        chunk = -(-len(paths) // (num_workers * 4))
        with ThreadPoolExecutor(max_workers=num_workers) as pool:
            futures: list[Future[None]] = [
                pool.submit(_fill, out, paths[i : i + chunk], i, resize)
                for i in range(0, len(paths), chunk)
            ]
            try:
                for future in futures:
                    future.result()
            except BaseException:
                for future in futures:
                    future.cancel()
                raise
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()


def _load_imagefolder(request: LoadRequest) -> DataBundle:
    if request.root is None:
        raise DataError(
            "dataset 'imagefolder' needs a data root; pass --data-root DIR with "
            "DIR/train/<class>/*.jpg and DIR/test/<class>/*.jpg."
        )
    root = request.root
    _require_dir(root, "data root")
    if not (root / "train").is_dir() or not (root / "test").is_dir():
        raise DataError(f"{root} has no train/ and test/ folders; {_LAYOUTS}\n{_listing(root)}")
    classes, files, labels = _scan_split(root / "train")
    test_classes, test_files, test_labels = _scan_split(root / "test")
    if classes != test_classes:
        only_train = sorted(set(classes) - set(test_classes))
        only_test = sorted(set(test_classes) - set(classes))
        raise DataError(
            f"train and test class folders differ in {root}: only in train: {only_train}, "
            f"only in test: {only_test}; both need the same class folders."
        )
    train_idx, val_idx = holdout_indices(
        len(files), request.seed, request.val_fraction, request.max_val, request.max_train
    )
    test_idx = sample_indices(len(test_files), request.seed, request.max_test)
    if request.image_size is not None:
        hw = request.image_size
    else:
        first = _read_image(files[int(val_idx[0])])
        hw = (first.shape[0], first.shape[1])
    resize = request.image_size is not None

    def split(paths: list[Path], targets: list[int], index: torch.Tensor) -> Split:
        chosen = [paths[i] for i in index.tolist()]
        images = _decode(chosen, hw, request.num_workers, resize)
        return Split(images, torch.tensor([targets[i] for i in index.tolist()], dtype=torch.int64))

    val = split(files, labels, val_idx)
    test = split(test_files, test_labels, test_idx)
    input_shape = (3, hw[0], hw[1])
    train = split(files, labels, train_idx) if request.load_train else _empty_split(input_shape)
    return DataBundle(
        name=request.name,
        train=train,
        val=val,
        test=test,
        num_classes=len(classes),
        class_names=tuple(classes),
        normalization=Normalization(*IMAGENET_NORMALIZATION_VALUES),
        input_shape=input_shape,
    )


DATASETS.register("digits", _load_digits)
DATASETS.register(
    "cifar10",
    lambda request: _load_cifar(
        request, torchvision.datasets.CIFAR10, CIFAR10_NORMALIZATION_VALUES
    ),
)
DATASETS.register(
    "cifar100",
    lambda request: _load_cifar(
        request, torchvision.datasets.CIFAR100, CIFAR100_NORMALIZATION_VALUES
    ),
)
DATASETS.register("imagefolder", _load_imagefolder)
