"""Datasets and splits: real loading code on tiny files in the torchvision formats."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from torch.utils.data import Dataset, Subset, TensorDataset

from adatune.data import batching as B
from adatune.data import datasets as D
from adatune.errors import ConfigError, DatasetError
from tests._fakedata import write_cifar10, write_cifar100, write_mnist

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081


def _rows(x: torch.Tensor) -> list[bytes]:
    return [r.tobytes() for r in x.numpy()]


def _unnormalise_mnist(ds: TensorDataset, mean=MNIST_MEAN, std=MNIST_STD) -> np.ndarray:
    x = ds.tensors[0][:, 0] * std + mean
    return np.rint(x.numpy() * 255).astype(np.uint8)


def _unnormalise_cifar(ds: TensorDataset, mean, std) -> np.ndarray:
    x = ds.tensors[0] * torch.tensor(std).view(1, 3, 1, 1) + torch.tensor(mean).view(1, 3, 1, 1)
    return np.rint(x.numpy() * 255).astype(np.uint8)


def _sorted_rows(x: np.ndarray) -> list[bytes]:
    return sorted(r.tobytes() for r in x)


# --------------------------------------------------------------------------- names


@pytest.mark.parametrize(
    ("alias", "canonical"),
    [
        ("cifar_10", "cifar10"),
        ("cifar_100", "cifar100"),
        ("mnist", "mnist"),
        ("CIFAR-10", "cifar10"),
        ("fashion-mnist", "fashion_mnist"),
        ("fashion_mnist", "fashion_mnist"),
        ("digits", "digits"),
        ("cifar100", "cifar100"),
    ],
)
def test_canonical_dataset_accepts_aliases(alias, canonical):
    assert D.canonical_dataset(alias) == canonical


def test_unknown_dataset_lists_choices():
    choices = r"unknown dataset 'imagenet' \(choose from: digits, mnist, fashion_mnist, cifar10"
    with pytest.raises(ConfigError, match=choices):
        D.canonical_dataset("imagenet")
    with pytest.raises(ConfigError):
        D.dataset_spec("svhn")


def test_dataset_spec_without_io():
    assert D.dataset_spec("digits") == D.DataSpec("digits", (1, 8, 8), 10)
    assert D.dataset_spec("mnist").input_shape == (1, 28, 28)
    assert D.dataset_spec("fashion_mnist").num_classes == 10
    assert D.dataset_spec("cifar_10") == D.DataSpec("cifar10", (3, 32, 32), 10)
    assert D.dataset_spec("cifar_100") == D.DataSpec("cifar100", (3, 32, 32), 100)
    assert tuple(D.dataset_spec(n).name for n in D.DATASET_NAMES) == D.DATASET_NAMES


def test_default_data_dir_is_per_user_and_overridable(monkeypatch, tmp_path):
    monkeypatch.delenv("ADATUNE_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert D.default_data_dir() == tmp_path / "cache" / "adatune" / "data"
    monkeypatch.setenv("ADATUNE_DATA", str(tmp_path / "elsewhere"))
    assert D.default_data_dir() == tmp_path / "elsewhere"
    folder = re.escape(str(tmp_path / "elsewhere" / "MNIST" / "raw"))
    with pytest.raises(DatasetError, match=folder):
        D.load_splits("mnist")


# --------------------------------------------------------------------------- digits


def test_digits_splits_shapes_sizes_and_fixed_test_set():
    a = D.load_splits("digits", seed=0)
    b = D.load_splits("digits", seed=1)
    assert a.spec == D.dataset_spec("digits")
    n_train, n_val, n_test = len(a.train), len(a.val), len(a.test)
    assert n_train + n_val + n_test == 1797
    assert n_test == round(0.2 * 1797)
    assert n_val == round(0.1 * (1797 - n_test))
    x, y = a.train.tensors
    assert x.shape == (n_train, 1, 8, 8) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert abs(float(x.mean())) < 0.05 and abs(float(x.std()) - 1) < 0.05  # normalised
    # the test set does not depend on the run's seed; the validation split does
    assert torch.equal(a.test.tensors[0], b.test.tensors[0])
    assert not torch.equal(a.val.tensors[1], b.val.tensors[1])
    # stratified: every class in val and test, in proportion
    for split in (a.val, a.test):
        counts = torch.bincount(split.tensors[1], minlength=10)
        assert counts.min() >= 0.7 * counts.float().mean()


def test_digits_seeded_determinism():
    a = D.load_splits("digits", seed=3)
    b = D.load_splits("digits", seed=3)
    for s, t in ((a.train, b.train), (a.val, b.val), (a.test, b.test)):
        assert all(torch.equal(u, v) for u, v in zip(s.tensors, t.tensors))


def test_val_source_test_warns_and_uses_test_set():
    with pytest.warns(D.TestAsValidationWarning, match="test set is used as the validation"):
        s = D.load_splits("digits", val_source="test")
    assert s.val is s.test
    assert len(s.train) + len(s.test) == 1797


def test_default_protocol_does_not_warn():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        D.load_splits("digits")


def test_train_subset_is_seeded_fraction_of_remaining_training_set():
    full = D.load_splits("digits", seed=2)
    half = D.load_splits("digits", seed=2, train_subset=0.5)
    assert len(half.train) == round(0.5 * len(full.train))
    assert torch.equal(half.val.tensors[0], full.val.tensors[0])  # val unchanged
    assert set(_rows(half.train.tensors[0])) <= set(_rows(full.train.tensors[0]))
    again = D.load_splits("digits", seed=2, train_subset=0.5)
    assert torch.equal(again.train.tensors[0], half.train.tensors[0])
    assert len(D.load_splits("digits", train_subset=1.0).train) == len(full.train)


@pytest.mark.parametrize(
    ("kwargs", "arg"),
    [
        ({"val_fraction": 0.0}, "val_fraction"),
        ({"val_fraction": 1.0}, "val_fraction"),
        ({"val_fraction": -0.1}, "val_fraction"),
        ({"val_fraction": "0.1"}, "val_fraction"),
        ({"val_fraction": True}, "val_fraction"),
        ({"val_fraction": 1e-5}, "val_fraction"),  # rounds to no validation example
        ({"val_source": "val"}, "val_source"),
        ({"train_subset": 0.0}, "train_subset"),
        ({"train_subset": 1.5}, "train_subset"),
        ({"seed": -1}, "seed"),
        ({"seed": 1.5}, "seed"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs, arg):
    with pytest.raises(ConfigError, match=f"Invalid {arg}"):
        D.load_splits("digits", **kwargs)


def test_stratified_split_partitions_indices():
    labels = np.repeat(np.arange(4), [10, 20, 30, 40])
    first, rest = D._stratified_split(labels, 25, seed=5, stream=1)
    assert len(first) == 25 and len(rest) == 75
    assert np.array_equal(np.sort(np.concatenate([first, rest])), np.arange(100))
    assert np.bincount(labels[first]).tolist() == [2, 5, 8, 10]  # proportional (+-1)
    again, _ = D._stratified_split(labels, 25, seed=5, stream=1)
    other, _ = D._stratified_split(labels, 25, seed=6, stream=1)
    assert np.array_equal(first, again) and not np.array_equal(first, other)


# --------------------------------------------------------------------------- MNIST


def test_mnist_loads_idx_files_and_splits_disjointly(tmp_path):
    written = write_mnist(tmp_path, n_train=200, n_test=50)
    s = D.load_splits("mnist", data_dir=tmp_path, val_fraction=0.25, seed=7)
    assert s.spec == D.dataset_spec("mnist")
    assert (len(s.train), len(s.val), len(s.test)) == (150, 50, 50)
    for ds in (s.train, s.val, s.test):
        x, y = ds.tensors
        assert x.shape[1:] == (1, 28, 28) and x.dtype == torch.float32
        assert y.dtype == torch.int64 and int(y.min()) >= 0 and int(y.max()) <= 9
    train_x, val_x = _unnormalise_mnist(s.train), _unnormalise_mnist(s.val)
    # val and train partition the training file; the test set is the test file, untouched
    assert not set(_sorted_rows(train_x)) & set(_sorted_rows(val_x))
    assert _sorted_rows(np.concatenate([train_x, val_x])) == _sorted_rows(written["train"][0])
    assert np.array_equal(_unnormalise_mnist(s.test), written["t10k"][0])
    assert np.array_equal(s.test.tensors[1].numpy(), written["t10k"][1])
    # labels travel with their images
    lookup = {x.tobytes(): y for x, y in zip(*written["train"])}
    assert [lookup[r.tobytes()] for r in val_x] == s.val.tensors[1].tolist()


def test_mnist_split_is_seeded(tmp_path):
    write_mnist(tmp_path)
    a = D.load_splits("mnist", data_dir=tmp_path, seed=1)
    b = D.load_splits("mnist", data_dir=tmp_path, seed=1)
    c = D.load_splits("mnist", data_dir=tmp_path, seed=2)
    assert torch.equal(a.val.tensors[0], b.val.tensors[0])
    assert not torch.equal(a.val.tensors[0], c.val.tensors[0])


def test_fashion_mnist_from_gzipped_files(tmp_path):
    written = write_mnist(tmp_path, folder="FashionMNIST", gz=True, n_train=100, n_test=20)
    s = D.load_splits("fashion_mnist", data_dir=tmp_path)
    assert (len(s.train) + len(s.val), len(s.test)) == (100, 20)
    assert np.array_equal(_unnormalise_mnist(s.test, 0.2860, 0.3530), written["t10k"][0])
    assert (tmp_path / "FashionMNIST" / "raw" / "train-images-idx3-ubyte").is_file()


def test_missing_mnist_is_one_line_naming_folder_and_download(tmp_path):
    with pytest.raises(DatasetError) as info:
        D.load_splits("mnist", data_dir=tmp_path / "data")
    message = str(info.value)
    assert "\n" not in message
    assert str(tmp_path / "data" / "MNIST" / "raw") in message
    assert "train-images-idx3-ubyte" in message and "download=True" in message


def test_partial_mnist_folder_is_missing(tmp_path):
    write_mnist(tmp_path)
    (tmp_path / "MNIST" / "raw" / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DatasetError, match="mnist not found"):
        D.load_splits("mnist", data_dir=tmp_path)


def test_corrupt_mnist_is_a_dataset_error(tmp_path):
    write_mnist(tmp_path)
    (tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte").write_bytes(b"\x00\x00\x08")
    with pytest.raises(DatasetError, match="cannot read mnist"):
        D.load_splits("mnist", data_dir=tmp_path)


def test_failed_download_is_one_line(tmp_path, monkeypatch):
    def offline(self):
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz:\nTried https://...")

    monkeypatch.setattr(torchvision.datasets.MNIST, "download", offline)
    with pytest.raises(DatasetError) as info:
        D.load_splits("mnist", data_dir=tmp_path, download=True)
    message = str(info.value)
    assert "\n" not in message and "could not download mnist" in message
    assert str(tmp_path / "MNIST" / "raw") in message


def test_download_is_not_attempted_when_files_exist(tmp_path, monkeypatch):
    write_mnist(tmp_path)

    def fail(*args, **kwargs):
        raise AssertionError("download attempted")

    monkeypatch.setattr(torchvision.datasets.MNIST, "download", fail)
    assert len(D.load_splits("mnist", data_dir=tmp_path, download=True).test) == 50


# --------------------------------------------------------------------------- CIFAR

CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


@pytest.mark.parametrize("protocol", [2, 5])
def test_cifar10_loads_pickles_without_md5(tmp_path, protocol):
    written = write_cifar10(tmp_path, n_per_batch=20, n_test=30, protocol=protocol)
    s = D.load_splits("cifar_10", data_dir=tmp_path, val_fraction=0.2, seed=0)
    assert s.spec == D.dataset_spec("cifar10")
    assert (len(s.train), len(s.val), len(s.test)) == (80, 20, 30)
    assert isinstance(s.train, D.AugmentedImages)
    # test set untouched and in order; val is not augmented and comes from train only
    assert np.array_equal(_unnormalise_cifar(s.test, CIFAR10_MEAN, CIFAR10_STD), written["test"][0])
    assert s.test.tensors[1].tolist() == written["test"][1].tolist()
    val_x = _unnormalise_cifar(s.val, CIFAR10_MEAN, CIFAR10_STD)
    train_x = s.train.images.numpy()
    assert not set(_sorted_rows(train_x)) & set(_sorted_rows(val_x))
    assert _sorted_rows(np.concatenate([train_x, val_x])) == _sorted_rows(written["train"][0])
    x, y = next(iter(B.batches(s.train, 16, shuffle=True, generator=torch.Generator())))
    assert x.shape == (16, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64


def test_cifar100_uses_fine_labels(tmp_path):
    written = write_cifar100(tmp_path, n_train=200, n_test=100)
    s = D.load_splits("cifar_100", data_dir=tmp_path, val_source="train", seed=0)
    assert s.spec.num_classes == 100
    assert s.test.tensors[1].tolist() == written["test"][1].tolist()
    labels = torch.cat([s.train.labels, s.val.tensors[1]])
    assert sorted(labels.tolist()) == sorted(written["train"][1].tolist())
    assert int(labels.max()) == 99


def test_cifar_val_source_test(tmp_path):
    write_cifar10(tmp_path)
    with pytest.warns(D.TestAsValidationWarning):
        s = D.load_splits("cifar10", data_dir=tmp_path, val_source="test")
    assert s.val is s.test and len(s.train) == 100


def test_missing_cifar_names_files_and_folder(tmp_path):
    with pytest.raises(DatasetError) as info:
        D.load_splits("cifar100", data_dir=tmp_path)
    message = str(info.value)
    assert "\n" not in message and str(tmp_path / "cifar-100-python") in message
    assert "train, test, meta" in message and "download=True" in message


def test_cifar_meta_with_wrong_class_count(tmp_path):
    write_cifar10(tmp_path)
    import pickle

    with open(tmp_path / "cifar-10-batches-py" / "batches.meta", "wb") as f:
        pickle.dump({"label_names": ["a", "b"]}, f)
    with pytest.raises(DatasetError, match="should list 10 label_names"):
        D.load_splits("cifar10", data_dir=tmp_path)


def test_cifar_pickle_with_foreign_objects_is_refused(tmp_path):
    write_cifar10(tmp_path)
    import pickle

    with open(tmp_path / "cifar-10-batches-py" / "test_batch", "wb") as f:
        pickle.dump({"data": Path("x"), "labels": []}, f)
    with pytest.raises(DatasetError, match="refusing to load"):
        D.load_splits("cifar10", data_dir=tmp_path)


def test_cifar_download_goes_through_torchvision(tmp_path, monkeypatch):
    calls = []

    class FakeCIFAR10:  # stands in for torchvision's class: "downloads" the files
        def __init__(self, root, train=True, download=False):
            calls.append((root, train, download))
            write_cifar10(Path(root))

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", FakeCIFAR10)
    s = D.load_splits("cifar10", data_dir=tmp_path, download=True)
    assert calls == [(str(tmp_path), True, True)]
    assert len(s.test) == 30


def test_cifar_failed_download_is_one_line(tmp_path, monkeypatch):
    def offline(self):
        raise OSError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torchvision.datasets.CIFAR10, "download", offline)
    with pytest.raises(DatasetError) as info:
        D.load_splits("cifar10", data_dir=tmp_path, download=True)
    message = str(info.value)
    assert "\n" not in message and "name resolution" in message
    assert str(tmp_path / "cifar-10-batches-py") in message


# --------------------------------------------------------------------------- augmentation


def test_augmentation_is_a_shifted_flipped_crop():
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (6, 3, 8, 8), dtype=torch.uint8)
    labels = torch.arange(6)
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    aug = D.AugmentedImages(images, labels, mean=mean, std=std, padding=2)
    x, y = aug.get_batch(torch.arange(6), gen)
    assert torch.equal(y, labels)
    raw = x * torch.tensor(std).view(1, 3, 1, 1) + torch.tensor(mean).view(1, 3, 1, 1)
    raw = torch.round(raw * 255)
    padded = torch.nn.functional.pad(images, (2, 2, 2, 2)).float()
    shifts = []
    for i in range(6):
        found = [
            (dy, dx, flip)
            for dy in range(5)
            for dx in range(5)
            for flip in (False, True)
            if torch.equal(
                padded[i, :, dy : dy + 8, dx : dx + 8].flip(-1)
                if flip
                else padded[i, :, dy : dy + 8, dx : dx + 8],
                raw[i],
            )
        ]
        assert found, f"image {i} is not a crop of its padded original"
        shifts.append(found[0])
    assert len(set(shifts)) > 1  # random, not the same crop for all


def test_augmentation_off_is_plain_normalisation():
    images = torch.randint(0, 256, (4, 3, 5, 5), dtype=torch.uint8)
    aug = D.AugmentedImages(
        images,
        torch.zeros(4, dtype=torch.long),
        mean=(0.0,) * 3,
        std=(1.0,) * 3,
        padding=0,
        flip=False,
    )
    x, _ = aug.get_batch(torch.arange(4))
    assert torch.allclose(x, images.float() / 255)
    assert torch.allclose(aug[2][0], images[2].float() / 255)


# --------------------------------------------------------------------------- batches


def _toy(n: int = 10) -> TensorDataset:
    return TensorDataset(torch.arange(n, dtype=torch.float32).view(n, 1), torch.arange(n))


class _PlainDataset(Dataset):
    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i):
        return torch.tensor([float(i)]), torch.tensor(i)


@pytest.mark.parametrize("make", [_toy, _PlainDataset, lambda n: Subset(_toy(n + 5), range(n))])
def test_batches_cover_each_example_once(make):
    ds = make(10)
    b = B.batches(ds, 4, shuffle=True, generator=torch.Generator().manual_seed(0))
    assert len(b) == 3
    got = [y for _, y in b]
    assert [len(y) for y in got] == [4, 4, 2]
    assert sorted(torch.cat(got).tolist()) == list(range(10))
    for x, y in b:
        assert torch.equal(x[:, 0].long(), y)  # inputs stay paired with labels


@pytest.mark.parametrize("make", [_toy, _PlainDataset])
def test_batches_deterministic_given_generator(make):
    def epochs(seed):
        b = B.batches(make(50), 8, shuffle=True, generator=torch.Generator().manual_seed(seed))
        return [torch.cat([y for _, y in b]).tolist() for _ in range(2)]

    first, second = epochs(1)
    assert epochs(1) == [first, second]
    assert first != second  # each epoch draws a new permutation
    assert epochs(2)[0] != first


def test_batches_without_shuffle_and_drop_last():
    b = B.batches(_toy(10), 4, shuffle=False, drop_last=True)
    assert len(b) == 2
    assert torch.cat([y for _, y in b]).tolist() == list(range(8))


def test_augmented_batches_deterministic_given_generator(tmp_path):
    images = torch.randint(0, 256, (20, 3, 8, 8), dtype=torch.uint8)
    aug = D.AugmentedImages(images, torch.arange(20), mean=(0.5,) * 3, std=(0.25,) * 3)

    def run(seed):
        b = B.batches(aug, 8, shuffle=True, generator=torch.Generator().manual_seed(seed))
        return torch.cat([x for x, _ in b])

    assert torch.equal(run(0), run(0))
    assert not torch.equal(run(0), run(1))


@pytest.mark.parametrize("size", [0, -1, 2.0, True])
def test_batches_reject_bad_batch_size(size):
    with pytest.raises(ConfigError, match="Invalid batch_size"):
        B.batches(_toy(), size, shuffle=False)
