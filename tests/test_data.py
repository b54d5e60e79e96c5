"""Dataset readers on tiny files written in each real format, their errors, and the shipped sample."""

import gzip
import pickle
import struct
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from spectriton import datasets
from spectriton.datasets import load_dataset

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)
FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")


def write_idx(path: Path, array: np.ndarray) -> None:
    data = bytes((0, 0, 8, array.ndim)) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wb") if path.suffix == ".gz" else open(path, "wb") as f:
        f.write(data)


def mnist_arrays(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), (np.arange(n) % 10).astype(np.uint8)


def write_mnist(folder: Path, gz: bool = True, n_train: int = 5, n_test: int = 3) -> dict:
    """IDX files of both splits in ``folder``; returns the arrays written."""
    suffix = ".gz" if gz else ""
    arrays = {"train": mnist_arrays(n_train, 0), "t10k": mnist_arrays(n_test, 1)}
    for prefix, (images, labels) in arrays.items():
        write_idx(folder / f"{prefix}-images-idx3-ubyte{suffix}", images)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte{suffix}", labels)
    return arrays


def cifar_arrays(n: int, seed: int) -> tuple[np.ndarray, list[int]]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 3 * 32 * 32), dtype=np.uint8), [int(v) for v in rng.integers(0, 10, n)]


def write_cifar(folder: Path) -> dict:
    """Five training batches of 2 images and a test batch of 3; returns the arrays written."""
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    batches = {name: cifar_arrays(3 if name == "test_batch" else 2, seed) for seed, name in enumerate(names)}
    for name, (data, labels) in batches.items():
        with open(folder / name, "wb") as f:
            pickle.dump({"data": data, "labels": labels, "batch_label": name}, f)
    return batches


def normalised(pixel, mean, std) -> float:
    return (pixel / 255 - mean) / std


# --- MNIST / Fashion-MNIST ---------------------------------------------------------------


@pytest.mark.parametrize("gz", [True, False])
@pytest.mark.parametrize("layout", ["flat", "raw"])
def test_idx_formats_and_layouts(tmp_path, gz, layout):
    arrays = write_mnist(tmp_path / "raw" if layout == "raw" else tmp_path, gz=gz)
    data = load_dataset("mnist", data_dir=tmp_path)
    images, labels = arrays["train"]
    assert len(data) == 5
    image, label = data[3]
    assert image.shape == (1, 28, 28) and image.dtype == torch.float32
    assert type(label) is int and label == labels[3]
    expected = torch.from_numpy(normalised(images[3].astype(np.float64), MNIST_MEAN, MNIST_STD)).float()
    torch.testing.assert_close(image[0], expected)


def test_train_and_test_splits(tmp_path):
    arrays = write_mnist(tmp_path)
    train, test = (
        load_dataset("mnist", data_dir=tmp_path),
        load_dataset("mnist", train=False, data_dir=tmp_path),
    )
    assert (len(train), len(test)) == (5, 3)
    assert [test[i][1] for i in range(3)] == arrays["t10k"][1].tolist()
    assert test[0][0][0, 0, 0] == pytest.approx(normalised(arrays["t10k"][0][0, 0, 0], MNIST_MEAN, MNIST_STD))


def test_fashion_mnist_normalisation(tmp_path):
    write_idx(tmp_path / "t10k-images-idx3-ubyte", np.full((2, 28, 28), 255, np.uint8))
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.array([4, 9], np.uint8))
    image, label = load_dataset("fashion-mnist", train=False, data_dir=tmp_path)[1]
    assert label == 9
    assert torch.allclose(image, torch.tensor((1 - 0.2860) / 0.3530))


def test_image_size_pads_with_black(tmp_path):
    write_mnist(tmp_path)
    native, padded = (load_dataset("mnist", data_dir=tmp_path, image_size=s)[0][0] for s in (None, 32))
    assert padded.shape == (1, 32, 32)
    torch.testing.assert_close(padded[:, 2:30, 2:30], native)
    border = padded.clone()
    border[:, 2:30, 2:30] = normalised(0, MNIST_MEAN, MNIST_STD)
    assert torch.allclose(border, torch.tensor(normalised(0, MNIST_MEAN, MNIST_STD)))


def test_loader_batches(tmp_path):
    write_mnist(tmp_path)
    images, labels = next(
        iter(torch.utils.data.DataLoader(load_dataset("mnist", data_dir=tmp_path), batch_size=4))
    )
    assert images.shape == (4, 1, 28, 28) and images.dtype == torch.float32
    assert labels.tolist() == [0, 1, 2, 3]


# --- CIFAR-10 ------------------------------------------------------------------------------


@pytest.mark.parametrize("subfolder", [True, False])
def test_cifar(tmp_path, subfolder):
    batches = write_cifar(tmp_path / "cifar-10-batches-py" if subfolder else tmp_path)
    train = load_dataset("cifar10", data_dir=tmp_path, augment=False)
    test = load_dataset("cifar10", train=False, data_dir=tmp_path)
    assert (len(train), len(test)) == (10, 3)
    data, labels = batches["data_batch_2"]
    image, label = train[3]  # second image of the second batch
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32 and label == labels[1]
    raw = data[1].reshape(3, 32, 32)
    for c in range(3):
        assert image[c, 5, 7] == pytest.approx(
            normalised(raw[c, 5, 7], CIFAR_MEAN[c], CIFAR_STD[c]), abs=1e-5
        )
    assert [test[i][1] for i in range(3)] == batches["test_batch"][1]


def test_cifar_augmentation_only_for_training(tmp_path):
    write_cifar(tmp_path)
    plain = load_dataset("cifar10", train=False, data_dir=tmp_path, augment=False)[0][0]
    for augment in (None, True, False):
        assert torch.equal(
            load_dataset("cifar10", train=False, data_dir=tmp_path, augment=augment)[0][0], plain
        )
    train_plain = load_dataset("cifar10", data_dir=tmp_path, augment=False)
    for augment in (None, True):
        train = load_dataset("cifar10", data_dir=tmp_path, augment=augment)
        draws = [train[0][0] for _ in range(8)]
        assert all(d.shape == (3, 32, 32) for d in draws)
        assert any(not torch.equal(d, train_plain[0][0]) for d in draws)


def test_cifar_augmentation_is_a_padded_crop_and_flip(tmp_path):
    write_cifar(tmp_path)
    plain = load_dataset("cifar10", data_dir=tmp_path, augment=False)[0][0]
    train = load_dataset("cifar10", data_dir=tmp_path)
    black = torch.tensor([normalised(0, m, s) for m, s in zip(CIFAR_MEAN, CIFAR_STD)]).view(3, 1, 1)
    padded = black.expand(3, 40, 40).clone()
    padded[:, 4:36, 4:36] = plain
    crops = {
        (i, j, flip): padded[:, i : i + 32, j : j + 32] for i in range(9) for j in range(9) for flip in (0, 1)
    }
    seen = set()
    for _ in range(20):
        image = train[0][0]
        (match,) = [
            key for key, crop in crops.items() if torch.allclose(image, crop.flip(-1) if key[2] else crop)
        ]
        seen.add(match)
    assert {flip for _, _, flip in seen} == {0, 1} and len({(i, j) for i, j, _ in seen}) > 1


def test_cifar_augmentation_is_seeded(tmp_path):
    write_cifar(tmp_path)
    train = load_dataset("cifar10", data_dir=tmp_path)
    torch.manual_seed(123)
    first = [train[i][0] for i in range(10)]
    torch.manual_seed(123)
    assert all(torch.equal(a, train[i][0]) for i, a in enumerate(first))


# --- SVHN ----------------------------------------------------------------------------------


def test_svhn(tmp_path):
    scipy_io = pytest.importorskip("scipy.io")
    x = np.random.default_rng(0).integers(0, 256, (32, 32, 3, 4), dtype=np.uint8)
    scipy_io.savemat(tmp_path / "test_32x32.mat", {"X": x, "y": np.array([[1], [10], [5], [10]], np.uint8)})
    data = load_dataset("svhn", train=False, data_dir=tmp_path, augment=True)
    assert len(data) == 4 and [data[i][1] for i in range(4)] == [1, 0, 5, 0]
    image = data[2][0]
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32
    mean, std = (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)
    expected = torch.stack([(torch.from_numpy(x[:, :, c, 2]) / 255 - mean[c]) / std[c] for c in range(3)])
    torch.testing.assert_close(image, expected.float())
    with pytest.raises(FileNotFoundError, match="train_32x32.mat"):
        load_dataset("svhn", data_dir=tmp_path)


def test_svhn_needs_scipy(tmp_path, monkeypatch):
    (tmp_path / "train_32x32.mat").write_bytes(b"")
    monkeypatch.setitem(sys.modules, "scipy.io", None)
    with pytest.raises(ImportError, match="pip install scipy"):
        load_dataset("svhn", data_dir=tmp_path)


# --- download --------------------------------------------------------------------------------


def test_download_uses_torchvision_then_our_reader(tmp_path, monkeypatch):
    calls = []

    def fashion(root, train, download):
        calls.append((root, train, download))
        write_mnist(Path(root) / "FashionMNIST" / "raw")

    fake = types.ModuleType("torchvision")
    fake.datasets = types.SimpleNamespace(FashionMNIST=fashion)
    monkeypatch.setitem(sys.modules, "torchvision", fake)
    data = load_dataset("fashion-mnist", train=False, data_dir=tmp_path, download=True)
    assert calls == [(str(tmp_path), False, True)]
    assert len(data) == 3 and data[0][0].shape == (1, 28, 28)


def test_download_needs_torchvision(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torchvision", None)
    with pytest.raises(ImportError, match="pip install torchvision"):
        load_dataset("mnist", data_dir=tmp_path, download=True)


# --- errors ----------------------------------------------------------------------------------


def test_unknown_name():
    with pytest.raises(ValueError, match="'imagenet'.*mnist, fashion-mnist, cifar10, svhn, sample"):
        load_dataset("imagenet")
    with pytest.raises(ValueError, match="imagenet"):
        datasets.num_classes("imagenet")


def test_missing_folder(tmp_path):
    folder = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match="nowhere") as error:
        load_dataset("mnist", data_dir=folder)
    assert "--download" in str(error.value) and "--data-dir" in str(error.value)


def test_missing_file(tmp_path):
    write_mnist(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(FileNotFoundError) as error:
        load_dataset("mnist", train=False, data_dir=tmp_path)
    message = str(error.value)
    assert "t10k-labels-idx1-ubyte" in message and "t10k-images" not in message
    assert str(tmp_path) in message and "--download" in message and "--data-dir" in message


def test_missing_cifar_batch(tmp_path):
    write_cifar(tmp_path)
    (tmp_path / "data_batch_4").unlink()
    with pytest.raises(FileNotFoundError, match="data_batch_4"):
        load_dataset("cifar10", data_dir=tmp_path)


def test_bad_idx_magic(tmp_path):
    write_mnist(tmp_path, gz=False)
    path = tmp_path / "train-labels-idx1-ubyte"
    path.write_bytes(b"\x00\x00\x09\x01" + path.read_bytes()[4:])
    with pytest.raises(ValueError, match="train-labels-idx1-ubyte.*magic"):
        load_dataset("mnist", data_dir=tmp_path)


@pytest.mark.parametrize(
    "labels, match",
    [(np.zeros(4, np.uint8), "5 images but .* 4 labels"), (np.zeros((5, 1), np.uint8), "magic")],
)
def test_idx_sizes_checked(tmp_path, labels, match):
    write_mnist(tmp_path, gz=False)
    write_idx(tmp_path / "train-labels-idx1-ubyte", labels)
    with pytest.raises(ValueError, match=match):
        load_dataset("mnist", data_dir=tmp_path)


def test_truncated_idx(tmp_path):
    write_mnist(tmp_path, gz=False)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(ValueError, match="train-images-idx3-ubyte.*bytes"):
        load_dataset("mnist", data_dir=tmp_path)


def test_wrong_image_size_in_idx(tmp_path):
    write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((2, 32, 32), np.uint8))
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(2, np.uint8))
    with pytest.raises(ValueError, match="train-images-idx3-ubyte.*expected \\(28, 28\\)"):
        load_dataset("mnist", data_dir=tmp_path)


def test_malformed_cifar_batch(tmp_path):
    write_cifar(tmp_path)
    (tmp_path / "test_batch").write_bytes(b"not a pickle")
    with pytest.raises(ValueError, match="test_batch"):
        load_dataset("cifar10", train=False, data_dir=tmp_path)


def test_image_size_smaller_than_native(tmp_path):
    write_mnist(tmp_path)
    with pytest.raises(ValueError, match="image_size 24 .*28"):
        load_dataset("mnist", data_dir=tmp_path, image_size=24)


# --- shipped sample, info, make_sample -----------------------------------------------------------


def test_sample():
    for train, n in ((True, 3000), (False, 1000)):
        data = load_dataset("sample", train=train, data_dir="/ignored")
        assert len(data) == n
        assert torch.bincount(data.labels).tolist() == [n // 10] * 10
        image, label = data[0]
        assert image.shape == (1, 28, 28) and image.dtype == torch.float32 and 0 <= label < 10
        pixels = torch.stack([data[i][0] for i in range(0, n, 10)])
        assert abs(pixels.mean().item()) < 0.1 and abs(pixels.std().item() - 1) < 0.1
    assert load_dataset("sample", image_size=32)[0][0].shape == (1, 32, 32)


def test_info():
    assert [datasets.num_classes(n) for n in datasets.DATASETS] == [10] * 5
    assert datasets.image_shape("mnist") == (1, 28, 28) and datasets.image_shape("cifar10") == (3, 32, 32)
    assert datasets.dataset_info("svhn").mean == (0.4377, 0.4438, 0.4728)


def test_make_sample(tmp_path):
    arrays = write_mnist(tmp_path, n_train=40, n_test=20)
    out = datasets.make_sample(tmp_path, tmp_path / "s.npz", n_train=20, n_test=10, seed=3)
    again = datasets.make_sample(tmp_path, tmp_path / "t.npz", n_train=20, n_test=10, seed=3)
    with np.load(out) as s, np.load(again) as t:
        for split, source in (("train", "train"), ("test", "t10k")):
            images, labels, index = s[f"{split}_images"], s[f"{split}_labels"], s[f"{split}_index"]
            assert images.dtype == labels.dtype == np.uint8
            assert np.bincount(labels).tolist() == [len(labels) // 10] * 10
            assert (np.diff(index) > 0).all()
            np.testing.assert_array_equal(images, arrays[source][0][index])
            np.testing.assert_array_equal(index, t[f"{split}_index"])
    with pytest.raises(ValueError, match="multiple"):
        datasets.make_sample(tmp_path, tmp_path / "u.npz", n_train=15, n_test=10)


@pytest.mark.skipif(not FASHION_DIR.is_dir(), reason="no Fashion-MNIST at /usr/share/datasets")
def test_real_fashion_mnist_test_split():
    data = load_dataset("fashion-mnist", train=False)
    assert len(data) == 10000
    image, label = data[9999]
    assert image.shape == (1, 28, 28) and 0 <= label < 10
