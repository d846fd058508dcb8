import csv
import hashlib
import io
import pickle
import tarfile
import zipfile

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from common import data, vision

CLASSES = vision.CIFAR10_CLASSES


def cifar_batch(labels, seed):
    """One CIFAR-10 python batch: flat uint8 rows (N, 3072) and labels."""
    rng = np.random.default_rng(seed)
    return {b"data": rng.integers(0, 256, (len(labels), 3072), dtype=np.uint8), b"labels": list(labels)}


def add_bytes(tar, name, payload):
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    tar.addfile(info, io.BytesIO(payload))


def write_cifar_python(path):
    """A tiny cifar-10-python.tar.gz: 5 train batches of 20 (2 per class), a test batch of 10."""
    batches = {f"data_batch_{i}": cifar_batch(list(range(10)) * 2, i) for i in range(1, 6)}
    batches["test_batch"] = cifar_batch(list(range(10)), 9)
    with tarfile.open(path, "w:gz") as tar:
        for name, batch in batches.items():
            add_bytes(tar, f"cifar-10-batches-py/{name}", pickle.dumps(batch))
    return batches


def flat_jpeg(value):
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), (value, value, value)).save(buffer, "JPEG", quality=95)
    return buffer.getvalue()


def write_cifar_jpeg(path, per_class=3):
    """The mirror's JPEG layout; image k of class c is a flat grey of value 20 * c + k."""
    with tarfile.open(path, "w:gz") as tar:
        for split in ("train", "test"):
            for c, name in enumerate(CLASSES):
                for k in range(per_class):
                    add_bytes(tar, f"CIFAR-10-images/{split}/{name}/{k:04d}.jpg", flat_jpeg(20 * c + k))


def served(monkeypatch, http_server, name, file_name, payload, algorithm="sha1", path=None):
    folder, url = http_server
    (folder / file_name).write_bytes(payload)
    checksum = hashlib.new(algorithm, payload).hexdigest()
    monkeypatch.setitem(data.RESOURCES, name, data.Resource(name, url + file_name, checksum, path or file_name,
                                                            algorithm=algorithm))


def offline(monkeypatch, *names):
    for name in names:
        res = data.RESOURCES[name]
        monkeypatch.setitem(data.RESOURCES, name, data.Resource(name, "http://127.0.0.1:9/none", res.checksum,
                                                                res.path, algorithm=res.algorithm))


# --- CIFAR-10 ---------------------------------------------------------------------------------


def test_python_archive_keeps_the_first_images_of_each_class(tmp_path):
    batches = write_cifar_python(tmp_path / "c.tar.gz")
    splits = vision.read_cifar10_python(tmp_path / "c.tar.gz", {True: 3, False: None})
    images, labels = splits[True]
    assert images.shape == (30, 3, 32, 32) and images.dtype == torch.uint8
    assert labels.tolist() == [c for c in range(10) for _ in range(3)]
    # Class 4's images in order: rows 4 and 14 of batch 1, then row 4 of batch 2.
    expected = [batches["data_batch_1"][b"data"][4], batches["data_batch_1"][b"data"][14],
                batches["data_batch_2"][b"data"][4]]
    assert torch.equal(images[12:15].reshape(3, -1), torch.from_numpy(np.stack(expected)))
    assert splits[False][0].shape == (10, 3, 32, 32)


def test_jpeg_copy_is_read_in_class_then_index_order(tmp_path):
    write_cifar_jpeg(tmp_path / "j.tar.gz")
    splits = vision.read_cifar10_jpeg(tmp_path / "j.tar.gz", {True: 2, False: 1})
    images, labels = splits[True]
    assert images.shape == (20, 3, 32, 32) and labels.tolist() == [c for c in range(10) for _ in range(2)]
    means = images.float().mean(dim=(1, 2, 3))
    expected = torch.tensor([20.0 * c + k for c in range(10) for k in range(2)])
    torch.testing.assert_close(means, expected, atol=1.5, rtol=0)
    assert splits[False][0].shape == (10, 3, 32, 32)


def test_wrong_archives_are_named(tmp_path):
    write_cifar_jpeg(tmp_path / "j.tar.gz")
    with pytest.raises(ValueError, match="not a CIFAR-10 python archive"):
        vision.read_cifar10_python(tmp_path / "j.tar.gz", {True: None})
    write_cifar_python(tmp_path / "c.tar.gz")
    with pytest.raises(ValueError, match="not the CIFAR-10 JPEG copy"):
        vision.read_cifar10_jpeg(tmp_path / "c.tar.gz", {True: None})


def test_upstream_cifar_is_preferred(isolated_data, http_server, monkeypatch, tmp_path):
    write_cifar_python(tmp_path / "c.tar.gz")
    served(monkeypatch, http_server, "cifar-10-python", "cifar-10-python.tar.gz", (tmp_path / "c.tar.gz").read_bytes(),
           algorithm="md5")
    *tensors, source = vision.load_cifar10_images(1, 1)
    assert source.upstream and [len(t) for t in tensors] == [10, 10, 10, 10]


def test_offline_cifar_falls_back_to_the_mirrored_jpeg_copy(isolated_data, monkeypatch, tmp_path):
    mirror = tmp_path / "mirror"
    archive = mirror / data.RESOURCES["cifar-10-jpeg"].path
    archive.parent.mkdir(parents=True)
    write_cifar_jpeg(archive)
    monkeypatch.setenv("COURSE_DATA_MIRROR", str(mirror))
    offline(monkeypatch, "cifar-10-python")
    monkeypatch.setitem(data.RESOURCES, "cifar-10-jpeg",
                        data.Resource("cifar-10-jpeg", None, data.digest_of(archive), data.RESOURCES["cifar-10-jpeg"].path))
    *tensors, source = vision.load_cifar10_images(2, 1)
    assert not source.upstream and "OFFLINE SUBSTITUTE" in str(source)
    assert [len(t) for t in tensors] == [20, 20, 10, 10]


def test_no_cifar_anywhere_names_both_sources(isolated_data, monkeypatch):
    offline(monkeypatch, "cifar-10-python")
    with pytest.raises(data.DataUnavailableError, match="(?s)cifar-10-python.*substitute is missing too.*mirror"):
        vision.load_cifar10_images(1, 1)


def test_bad_sizes_are_refused():
    with pytest.raises(ValueError, match="positive"):
        vision.load_cifar10_images(0, 1)


# --- ImageDataset -----------------------------------------------------------------------------


def test_image_dataset_scales_uint8_and_applies_the_transform():
    images = torch.full((4, 3, 8, 8), 255, dtype=torch.uint8)
    ds = vision.ImageDataset(images, [0, 1, 2, 3], transform=lambda x: x[:, :4, :4])
    x, y = ds[2]
    assert x.shape == (3, 4, 4) and x.dtype == torch.float32 and x.max() == 1 and y == 2
    with pytest.raises(ValueError, match="4 images but 3 labels"):
        vision.ImageDataset(images, [0, 1, 2])


# --- ResNet-18 --------------------------------------------------------------------------------


def test_resnet18_takes_torchvision_weights_and_agrees(one_thread):
    reference = torchvision.models.resnet18(num_classes=10).eval()
    net = vision.ResNet18(num_classes=10).eval()
    net.load_state_dict(reference.state_dict())  # strict: same names and shapes
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(net(x), reference(x))


def test_resnet18_sizes(one_thread):
    small = vision.ResNet18(num_classes=10, width=8, small_images=True)
    assert small(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    body = torch.nn.Sequential(*list(small.children())[:-2])
    assert body(torch.randn(1, 3, 32, 32)).shape == (1, 64, 4, 4)  # 8x downsampling, 8 * width channels
    body = torch.nn.Sequential(*list(vision.ResNet18(width=8).children())[:-2])
    assert body(torch.randn(1, 3, 64, 96)).shape == (1, 64, 2, 3)  # 32x downsampling
    with pytest.raises(ValueError, match="positive"):
        vision.ResNet18(width=0)


# --- pretrained backbones ---------------------------------------------------------------------


def test_course_backbone_is_trained_once_then_cached(isolated_data, monkeypatch):
    calls = []

    def fake_training(recipe):
        calls.append(recipe)
        return vision.ResNet18(num_classes=len(vision.SOURCE_CLASSES), width=recipe["width"])

    monkeypatch.setattr(vision, "_train_course_backbone", fake_training)
    first, source = vision.course_backbone()
    second, _ = vision.course_backbone()
    assert len(calls) == 1 and not source.upstream
    for a, b in zip(first.state_dict().values(), second.state_dict().values()):
        assert torch.equal(a, b)
    assert not list((isolated_data / "derived").glob(".*"))  # no temporary files left behind


def test_imagenet_weights_are_used_when_they_can_be_had(isolated_data, http_server, monkeypatch):
    weights = torchvision.models.resnet18().state_dict()
    buffer = io.BytesIO()
    torch.save(weights, buffer)
    payload = buffer.getvalue()
    folder, url = http_server
    (folder / "resnet18.pth").write_bytes(payload)
    prefix = hashlib.sha256(payload).hexdigest()[:8]
    monkeypatch.setitem(data.RESOURCES, "resnet18-imagenet",
                        data.Resource("resnet18-imagenet", url + "resnet18.pth", prefix, "weights/r.pth", algorithm="sha256"))
    net, source = vision.pretrained_resnet18()
    assert source.upstream and net.fc.out_features == 1000
    assert torch.equal(net.conv1.weight, weights["conv1.weight"])


# --- fine-tuning data -------------------------------------------------------------------------


def fake_cifar(per_class=2):
    labels = torch.arange(10).repeat_interleave(per_class)
    images = labels.view(-1, 1, 1, 1).expand(-1, 3, 32, 32).to(torch.uint8)
    return images, labels, images.clone(), labels.clone(), data.DataSource("fake CIFAR-10", upstream=False)


def test_offline_fine_tuning_target_is_ship_vs_truck(isolated_data, monkeypatch):
    offline(monkeypatch, "hotdog")
    monkeypatch.setattr(vision, "load_cifar10_images", lambda *sizes: fake_cifar())
    task, source = vision.fine_tuning_data(2, 2)
    images, labels = task["train"]
    assert not source.upstream and task["classes"] == ["ship", "truck"]
    assert labels.tolist() == [0, 0, 1, 1]
    assert images[:, 0, 0, 0].tolist() == [8, 8, 9, 9]  # the fake images carry their CIFAR label


def test_hotdog_is_read_from_its_zip_layout(isolated_data, http_server, monkeypatch):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        for split in ("train", "test"):
            for label, name in enumerate(["hotdog", "not-hotdog"]):
                for k in range(3):
                    png = io.BytesIO()
                    Image.new("RGB", (5, 4), (100 * label, 0, k)).save(png, "PNG")
                    z.writestr(f"hotdog/{split}/{name}/{k}.png", png.getvalue())
    served(monkeypatch, http_server, "hotdog", "hotdog.zip", buffer.getvalue())
    task, source = vision.fine_tuning_data(2, None)
    assert source.upstream and task["image_size"] == 224
    images, labels = task["train"]
    assert labels.tolist() == [0, 0, 1, 1] and len(task["test"][0]) == 6
    assert images[2].size == (5, 4) and images[2].getpixel((0, 0)) == (100, 0, 0)


def test_image_folder_without_images_says_what_layout_is_expected(tmp_path):
    (tmp_path / "hotdog").mkdir()
    with pytest.raises(ValueError, match="expected the layout"):
        vision.read_image_folder(tmp_path, ["hotdog"])


# --- Kaggle layout ----------------------------------------------------------------------------


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.reader(f))


def test_kaggle_layout_withholds_test_labels(isolated_data, monkeypatch):
    monkeypatch.setattr(vision, "load_cifar10_images", lambda *sizes: fake_cifar(3))
    folder, answers, source = vision.kaggle_cifar10_folder(3, 3)
    train_rows = read_csv(folder / "trainLabels.csv")
    assert train_rows[0] == ["id", "label"] and len(train_rows) == 31
    assert sorted(p.name for p in folder.iterdir()) == ["sampleSubmission.csv", "test", "train", "trainLabels.csv"]
    assert len(list((folder / "test").glob("*.png"))) == 30 and answers.parent == folder.parent
    assert [row[1] for row in train_rows[1:]] != sorted(row[1] for row in train_rows[1:])  # shuffled ids
    for image_id, label in read_csv(answers)[1:]:  # each withheld label matches its image
        pixel = np.asarray(Image.open(folder / "test" / f"{image_id}.png"))[0, 0, 0]
        assert CLASSES[pixel] == label
    assert vision.kaggle_cifar10_folder(3, 3)[0] == folder  # the second call reuses the folder


def test_course_backbone_training_is_seeded_and_leaves_the_callers_random_numbers(isolated_data, monkeypatch):
    draws = []

    def fake_training(recipe):
        draws.append(torch.rand(3))
        return vision.ResNet18(num_classes=len(vision.SOURCE_CLASSES), width=recipe["width"])

    monkeypatch.setattr(vision, "_train_course_backbone", fake_training)
    torch.manual_seed(123)
    vision.course_backbone()  # trains (cold cache)
    after_cold = torch.rand(3)
    torch.manual_seed(123)
    vision.course_backbone()  # loads (warm cache)
    assert torch.equal(torch.rand(3), after_cold)
    torch.manual_seed(7)
    (isolated_data / "derived").rename(isolated_data / "old")
    vision.course_backbone()
    assert torch.equal(draws[0], draws[1])  # the training sees the same random numbers every time


@pytest.mark.parametrize("images, error, message", [
    (torch.rand(2, 1, 8, 8), ValueError, r"must be RGB.*got shape \(2, 1, 8, 8\).*repeat"),
    (torch.rand(8, 8), ValueError, "must be RGB"),
    (torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8), TypeError, r"floating-point.*images.float\(\) / 255"),
])
def test_normalize_imagenet_refuses_gray_and_0_255_images(images, error, message):
    with pytest.raises(error, match=message):
        vision.normalize_imagenet(images)


def test_normalize_imagenet_matches_torchvision():
    images = torch.rand(2, 3, 8, 8)
    reference = torchvision.transforms.Normalize(vision.IMAGENET_MEAN, vision.IMAGENET_STD)(images)
    torch.testing.assert_close(vision.normalize_imagenet(images), reference)
