"""Image-classification datasets: MNIST, Fashion-MNIST, CIFAR-10 and SVHN read from the files
their authors distribute, and a small Fashion-MNIST sample shipped with the package.

A dataset keeps its images as one uint8 tensor and converts an item when it is read: pixels
scaled to [0, 1], padded with black to ``image_size``, augmented (CIFAR-10 training only),
then normalised with the dataset's channel means and standard deviations.
"""

from __future__ import annotations

import gzip
import math
import os
import pickle
import struct
import zlib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

DATASETS = ("mnist", "fashion-mnist", "cifar10", "svhn", "sample")
DOWNLOAD_ROOT = Path("~/.cache/spectriton")
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
SAMPLE_FILE = "fashion_mnist_sample.npz"

_HINT = "pass --data-dir with the folder that holds them, or --download to fetch them"
_TORCHVISION = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST", "cifar10": "CIFAR10", "svhn": "SVHN"}


@dataclass(frozen=True)
class DatasetInfo:
    """A dataset's native image shape ``(C, H, W)``, channel means and standard deviations
    (of pixels in [0, 1]) and number of classes."""

    shape: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    num_classes: int = 10


_FASHION = DatasetInfo((1, 28, 28), (0.2860,), (0.3530,))
_INFO = {
    "mnist": DatasetInfo((1, 28, 28), (0.1307,), (0.3081,)),
    "fashion-mnist": _FASHION,
    "cifar10": DatasetInfo((3, 32, 32), (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "svhn": DatasetInfo((3, 32, 32), (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)),
    "sample": _FASHION,
}


def dataset_info(name: str) -> DatasetInfo:
    """The :class:`DatasetInfo` of dataset ``name``; ValueError listing the known names if unknown."""
    try:
        return _INFO[name]
    except KeyError:
        raise ValueError(f"unknown dataset {name!r}; known datasets: {', '.join(DATASETS)}") from None


def num_classes(name: str) -> int:
    """Number of classes of dataset ``name``."""
    return dataset_info(name).num_classes


def image_shape(name: str) -> tuple[int, int, int]:
    """Native image shape ``(C, H, W)`` of dataset ``name``."""
    return dataset_info(name).shape


class ImageDataset(torch.utils.data.Dataset):
    """``(image, label)`` items from uint8 ``images`` ``(N, C, H, W)`` and int64 ``labels`` ``(N,)``.

    An image comes out as a float32 ``(C, size, size)`` tensor: scaled to [0, 1], padded
    symmetrically with black (pixel 0) to ``size``, randomly cropped and flipped if ``augment``
    (drawing from torch's global generator), then normalised with ``info``'s mean and std.
    """

    def __init__(
        self, images: torch.Tensor, labels: torch.Tensor, info: DatasetInfo, *, size: int, augment: bool
    ):
        self.images = images
        self.labels = labels
        self.augment = augment
        extra = size - images.shape[-1]
        self._pad = (extra // 2, extra - extra // 2) * 2
        std = torch.tensor(info.std).view(-1, 1, 1)
        self._scale = 1 / (255 * std)
        self._shift = -torch.tensor(info.mean).view(-1, 1, 1) / std

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = self.images[index].float()
        if any(self._pad):
            image = F.pad(image, self._pad)
        if self.augment:
            image = _crop_flip(image)
        return image * self._scale + self._shift, int(self.labels[index])


def _crop_flip(image: torch.Tensor, pad: int = 4) -> torch.Tensor:
    """A random crop of ``image``'s size from ``image`` padded with ``pad`` zeros on each side,
    flipped left-right half the time."""
    h, w = image.shape[-2:]
    i, j = torch.randint(0, 2 * pad + 1, (2,)).tolist()
    image = F.pad(image, (pad,) * 4)[:, i : i + h, j : j + w]
    return image.flip(-1) if torch.rand(()) < 0.5 else image


def load_dataset(
    name: str,
    *,
    train: bool = True,
    data_dir: str | os.PathLike | None = None,
    download: bool = False,
    image_size: int | None = None,
    augment: bool | None = None,
) -> ImageDataset:
    """The training (or test) split of dataset ``name`` as an :class:`ImageDataset`.

    ``data_dir`` holds the dataset's files (ignored by "sample"); by default it is
    ``/usr/share/datasets/fashion-mnist`` for "fashion-mnist" without ``download``, and
    ``~/.cache/spectriton`` otherwise. ``download`` fetches the files there first with
    torchvision. ``image_size`` pads images to that size (at least the native one).
    ``augment`` (random 32 x 32 crop of the image padded by 4, and horizontal flip) applies to
    CIFAR-10 training items only, where None means on.

    Raises ValueError for an unknown name, a too small ``image_size`` or a malformed file,
    FileNotFoundError for a missing folder or file, ImportError if scipy (SVHN) or
    torchvision (``download``) is needed but missing.
    """
    info = dataset_info(name)
    size = _image_size(name, info, image_size)
    if name == "sample":
        images, labels = _read_sample(train)
    else:
        root = _root(name, data_dir, download)
        if download:
            _download(name, root, train)
        images, labels = _READERS[name](name, root, train)
    augment = name == "cifar10" and train and augment is not False
    return ImageDataset(images, labels, info, size=size, augment=augment)


def _image_size(name: str, info: DatasetInfo, image_size: int | None) -> int:
    native = info.shape[-1]
    if image_size is None:
        return native
    if image_size < native:
        raise ValueError(f"image_size {image_size} is smaller than {name}'s native {native}")
    return image_size


def _root(name: str, data_dir: str | os.PathLike | None, download: bool) -> Path:
    if data_dir is not None:
        return Path(data_dir).expanduser()
    if name == "fashion-mnist" and not download:
        return FASHION_MNIST_DIR
    return DOWNLOAD_ROOT.expanduser()


def _download(name: str, root: Path, train: bool) -> None:
    """Fetch ``name``'s split into ``root`` with torchvision (which skips files it already has)."""
    try:
        from torchvision import datasets as tv_datasets
    except ImportError as error:
        raise ImportError("downloading needs torchvision: pip install torchvision") from error
    split = {"split": "train" if train else "test"} if name == "svhn" else {"train": train}
    getattr(tv_datasets, _TORCHVISION[name])(str(root), download=True, **split)


def _locate(name: str, root: Path, subdirs: tuple[str, ...], wanted: list[tuple[str, ...]]) -> list[Path]:
    """For each entry of ``wanted`` (alternative names of one file), the first file found in
    ``root`` or one of its ``subdirs``."""
    if not root.is_dir():
        raise FileNotFoundError(f"{name}: no folder {root}; {_HINT}")
    folders = [root, *(root / s for s in subdirs)]
    found, missing = [], []
    for names in wanted:
        hit = next((f / n for f in folders for n in names if (f / n).is_file()), None)
        found.append(hit)
        if hit is None:
            missing.append(" or ".join(names))
    if missing:
        where = f" (nor in its subfolders {', '.join(subdirs)})" if subdirs else ""
        raise FileNotFoundError(f"{name}: no {', '.join(missing)} in {root}{where}; {_HINT}")
    return found


def read_idx(path: str | os.PathLike, ndim: int) -> torch.Tensor:
    """The uint8 array of dimension ``ndim`` in IDX file ``path`` (gzipped if named ``*.gz``);
    ValueError naming the file if it is not one."""
    path = Path(path)
    try:
        with gzip.open(path) if path.suffix == ".gz" else open(path, "rb") as f:
            data = f.read()
    except (gzip.BadGzipFile, EOFError, zlib.error) as error:
        raise ValueError(f"{path}: corrupt gzip file ({error})") from error
    magic = data[:4]
    if magic != bytes((0, 0, 8, ndim)):
        raise ValueError(
            f"{path}: bad IDX magic number {magic.hex()}, expected {bytes((0, 0, 8, ndim)).hex()}"
        )
    start = 4 + 4 * ndim
    if len(data) < start:
        raise ValueError(f"{path}: truncated IDX header")
    dims = struct.unpack(f">{ndim}I", data[4:start])
    if len(data) - start != math.prod(dims):
        raise ValueError(
            f"{path}: IDX header gives shape {dims} but the file holds {len(data) - start} bytes"
        )
    return torch.from_numpy(np.frombuffer(data, np.uint8, offset=start).copy()).reshape(dims)


def _read_idx_split(name: str, root: Path, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """MNIST-style images ``(N, 1, H, W)`` and labels of a split, from ``root``, ``root/raw`` or
    torchvision's ``root/<Class>/raw``."""
    prefix = "train" if train else "t10k"
    stems = (f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte")
    subdirs = ("raw", f"{_TORCHVISION[name]}/raw")
    image_path, label_path = _locate(name, root, subdirs, [(s, s + ".gz") for s in stems])
    images, labels = read_idx(image_path, 3), read_idx(label_path, 1)
    if images.shape[1:] != _INFO[name].shape[1:]:
        raise ValueError(
            f"{image_path}: images are {tuple(images.shape[1:])}, expected {_INFO[name].shape[1:]}"
        )
    if len(images) != len(labels):
        raise ValueError(f"{image_path} holds {len(images)} images but {label_path} {len(labels)} labels")
    return images.unsqueeze(1), labels.long()


def _read_cifar_batch(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Images ``(N, 3, 32, 32)`` and labels of one pickled CIFAR-10 batch."""
    with open(path, "rb") as f:
        try:
            batch = pickle.load(f, encoding="latin1")
        except Exception as error:  # a malformed pickle can fail in many ways
            raise ValueError(f"{path}: not a CIFAR-10 batch ({error!r})") from error
    data = batch.get("data") if isinstance(batch, dict) else None
    labels = np.asarray(batch.get("labels") if isinstance(batch, dict) else None)
    if not (
        isinstance(data, np.ndarray)
        and data.dtype == np.uint8
        and data.shape[1:] == (3 * 32 * 32,)
        and labels.shape == data.shape[:1]
    ):
        raise ValueError(f"{path}: not a CIFAR-10 batch (want 'data' uint8 (N, 3072) and N 'labels')")
    return torch.from_numpy(data.reshape(-1, 3, 32, 32).copy()), torch.from_numpy(labels.astype(np.int64))


def _read_cifar(name: str, root: Path, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """CIFAR-10 images ``(N, 3, 32, 32)`` and labels of a split, from ``root`` or
    ``root/cifar-10-batches-py``."""
    files = [f"data_batch_{i}" for i in range(1, 6)] if train else ["test_batch"]
    batches = [
        _read_cifar_batch(p) for p in _locate(name, root, ("cifar-10-batches-py",), [(f,) for f in files])
    ]
    return torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])


def _read_svhn(name: str, root: Path, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """SVHN images ``(N, 3, 32, 32)`` and labels (digit 0 as 0, not 10) of a split."""
    (path,) = _locate(name, root, (), [("train_32x32.mat" if train else "test_32x32.mat",)])
    try:
        from scipy.io import loadmat
    except ImportError as error:
        raise ImportError("reading SVHN needs scipy: pip install scipy") from error
    try:
        mat = loadmat(path)
    except Exception as error:  # scipy raises several types for a malformed file
        raise ValueError(f"{path}: not a MATLAB file ({error!r})") from error
    x, y = mat.get("X"), mat.get("y")
    if not (
        isinstance(x, np.ndarray)
        and x.dtype == np.uint8
        and x.ndim == 4
        and x.shape[:3] == (32, 32, 3)
        and isinstance(y, np.ndarray)
        and y.size == x.shape[3]
    ):
        raise ValueError(f"{path}: not an SVHN file (want 'X' uint8 (32, 32, 3, N) and N labels 'y')")
    labels = y.reshape(-1).astype(np.int64)
    labels[labels == 10] = 0
    return torch.from_numpy(np.ascontiguousarray(x.transpose(3, 2, 0, 1))), torch.from_numpy(labels)


def _read_sample(train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Images ``(N, 1, 28, 28)`` and labels of a split of the shipped Fashion-MNIST sample."""
    split = "train" if train else "test"
    with (
        resources.as_file(resources.files("spectriton") / "data" / SAMPLE_FILE) as path,
        np.load(path) as npz,
    ):
        images, labels = npz[f"{split}_images"], npz[f"{split}_labels"]
    return torch.from_numpy(images).unsqueeze(1), torch.from_numpy(labels.astype(np.int64))


_READERS = {
    "mnist": _read_idx_split,
    "fashion-mnist": _read_idx_split,
    "cifar10": _read_cifar,
    "svhn": _read_svhn,
}


def make_sample(
    source_dir: str | os.PathLike,
    out_path: str | os.PathLike,
    n_train: int = 3000,
    n_test: int = 1000,
    seed: int = 0,
) -> Path:
    """Write a class-balanced random draw of ``n_train`` training and ``n_test`` test images of the
    Fashion-MNIST IDX files in ``source_dir`` to the compressed ``.npz`` file ``out_path``; returns it.

    Each class gives a tenth of a split, drawn without replacement (torch generator seeded with
    ``seed``) and kept in source order. The file holds uint8 arrays ``{split}_images`` ``(n, 28, 28)``
    and ``{split}_labels`` ``(n,)``, and int32 ``{split}_index``, their positions in the source.
    """
    generator = torch.Generator().manual_seed(seed)
    arrays = {}
    for split, n in (("train", n_train), ("test", n_test)):
        images, labels = _read_idx_split("fashion-mnist", Path(source_dir), split == "train")
        index = _balanced_draw(labels, n, generator)
        arrays[f"{split}_images"] = images[index, 0].numpy()
        arrays[f"{split}_labels"] = labels[index].to(torch.uint8).numpy()
        arrays[f"{split}_index"] = index.to(torch.int32).numpy()
    out_path = Path(out_path)
    with open(out_path, "wb") as f:
        np.savez_compressed(f, **arrays)
    return out_path


def _balanced_draw(labels: torch.Tensor, n: int, generator: torch.Generator) -> torch.Tensor:
    """Sorted indices of ``n / 10`` random items of each of the 10 classes of ``labels``."""
    if n % 10:
        raise ValueError(f"sample size {n} is not a multiple of the 10 classes")
    picks = []
    for c in range(10):
        members = torch.nonzero(labels == c).flatten()
        if len(members) < n // 10:
            raise ValueError(f"class {c} has {len(members)} items, fewer than {n // 10}")
        picks.append(members[torch.randperm(len(members), generator=generator)[: n // 10]])
    return torch.cat(picks).sort().values
