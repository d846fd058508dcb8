"""Computer vision: CIFAR-10, ResNet-18, pretrained backbones and transfer-learning data.

Upstream data comes first: torchvision's CIFAR-10 archive, d2l's hotdog images and torchvision's
ImageNet weights, all fetched and verified through :mod:`common.data`. When they cannot be had
(offline), documented substitutes built from real data stand in, and every loader returns a
:class:`~common.data.DataSource` that says which one was used:

* CIFAR-10: a JPEG re-encoding of all 60,000 images in image-folder layout (data mirror only);
  same images and order, lossy pixels.
* ImageNet weights: a ResNet-18 the course pretrains on the eight CIFAR-10 classes other than
  ship and truck (:func:`course_backbone`), cached after the first run.
* hotdog (fine-tuning target): ship vs truck from CIFAR-10, two classes that backbone never saw.
"""
from __future__ import annotations

import csv
import io
import pickle
import re
import tarfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from . import config, data
from .checks import check_float_tensor
from .data import DataSource, DataUnavailableError

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# ---------------------------------------------------------------------------------------------
# CIFAR-10
# ---------------------------------------------------------------------------------------------

_CIFAR_BATCHES = {True: [f"data_batch_{i}" for i in range(1, 6)], False: ["test_batch"]}
_JPEG_MEMBER = re.compile(r"(?:^|/)(train|test)/([a-z]+)/(\d+)\.jpg$")


def _first_per_class(labels: np.ndarray, per_class: int | None) -> np.ndarray:
    """Indices of the first ``per_class`` examples of each class, grouped by class."""
    return np.concatenate([np.flatnonzero(labels == c)[:per_class] for c in range(len(CIFAR10_CLASSES))])


Split = tuple[torch.Tensor, torch.Tensor]


def read_cifar10_python(archive: Path, per_class: dict[bool, int | None]) -> dict[bool, Split]:
    """From torchvision's ``cifar-10-python.tar.gz``: ``{train: (images, labels)}`` for train in
    ``per_class``; images uint8 (N, 3, 32, 32), labels int64, the first ``per_class[train]`` of
    each class (all when None), grouped by class."""
    arrays: dict[bool, list] = {True: [], False: []}
    with tarfile.open(archive) as tar:
        members = {Path(m.name).name: m for m in tar.getmembers() if m.isfile()}
        for train in per_class:
            for batch in _CIFAR_BATCHES[train]:
                if batch not in members:
                    raise ValueError(f"{archive} has no {batch}: not a CIFAR-10 python archive "
                                     "(expected cifar-10-batches-py/data_batch_1..5 and test_batch).")
                entry = pickle.load(tar.extractfile(members[batch]), encoding="bytes")
                arrays[train].append((np.asarray(entry[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32),
                                      np.asarray(entry[b"labels"], dtype=np.int64)))
    result = {}
    for train, limit in per_class.items():
        images = np.concatenate([x for x, _ in arrays[train]])
        labels = np.concatenate([y for _, y in arrays[train]])
        keep = _first_per_class(labels, limit)
        result[train] = torch.from_numpy(images[keep]), torch.from_numpy(labels[keep])
    return result


def read_cifar10_jpeg(archive: Path, per_class: dict[bool, int | None]) -> dict[bool, Split]:
    """The same from the JPEG copy, in one pass over the archive: ``{train,test}/<class>/<k>.jpg``
    is the k-th image of that class in the original order."""
    from PIL import Image

    found: dict[bool, dict[tuple[int, int], np.ndarray]] = {train: {} for train in per_class}
    with tarfile.open(archive) as tar:
        for member in tar:
            match = _JPEG_MEMBER.search(member.name)
            if not member.isfile() or match is None or (match[1] == "train") not in per_class:
                continue
            train, label, index = match[1] == "train", CIFAR10_CLASSES.index(match[2]), int(match[3])
            if per_class[train] is None or index < per_class[train]:
                with Image.open(io.BytesIO(tar.extractfile(member).read())) as img:
                    found[train][label, index] = np.asarray(img.convert("RGB")).transpose(2, 0, 1)
    result = {}
    for train, images in found.items():
        if not images:
            raise ValueError(f"{archive} has no {'train' if train else 'test'}/<class>/<index>.jpg images: "
                             "not the CIFAR-10 JPEG copy.")
        keys = sorted(images)  # grouped by class, then by index: the original order within each class
        result[train] = (torch.from_numpy(np.stack([images[k] for k in keys])),
                         torch.tensor([k[0] for k in keys], dtype=torch.int64))
    return result


CIFAR10_UPSTREAM = DataSource("CIFAR-10 (torchvision's cifar-10-python.tar.gz)", upstream=True)
CIFAR10_JPEG = DataSource("CIFAR-10 JPEG copy", upstream=False,
                          note="the same images re-encoded as JPEG (quality 75): lossy pixels, so numbers "
                               "are not comparable with published CIFAR-10 results")


def load_cifar10_images(n_train_per_class: int | None = None, n_test_per_class: int | None = None
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, DataSource]:
    """CIFAR-10 as ``(train_images, train_labels, test_images, test_labels, source)``.

    Images are uint8 (N, 3, 32, 32), grouped by class; the first ``n_*_per_class`` images of each
    class are kept (all when None). Upstream: torchvision's archive. Offline: the JPEG copy.
    """
    for n in (n_train_per_class, n_test_per_class):
        if n is not None and n < 1:
            raise ValueError(f"Images per class must be positive (or None for all), got {n}.")
    try:
        archive, reader, source = data.fetch("cifar-10-python"), read_cifar10_python, CIFAR10_UPSTREAM
    except DataUnavailableError as upstream_error:
        try:
            archive, reader = data.fetch("cifar-10-jpeg"), read_cifar10_jpeg
        except DataUnavailableError as mirror_error:
            raise DataUnavailableError(f"{upstream_error}\n\nThe offline substitute is missing too:\n"
                                       f"{mirror_error}") from None
        source = CIFAR10_JPEG
    splits = reader(archive, {True: n_train_per_class, False: n_test_per_class})
    return (*splits[True], *splits[False], source)


class ImageDataset(torch.utils.data.Dataset):
    """Images held in memory (uint8 tensors or PIL images) with labels, and a per-example transform.

    The transform receives one image; a uint8 result is scaled to floats in [0, 1].
    """

    def __init__(self, images, labels, transform: Callable | None = None):
        if len(images) != len(labels):
            raise ValueError(f"Got {len(images)} images but {len(labels)} labels.")
        self.images, self.labels, self.transform = images, torch.as_tensor(labels), transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = self.images[i]
        if self.transform is not None:
            image = self.transform(image)
        if isinstance(image, torch.Tensor) and image.dtype == torch.uint8:
            image = image.float().div_(255)
        return image, self.labels[i]


# ---------------------------------------------------------------------------------------------
# ResNet-18 with torchvision's layer names (so ImageNet weights load into it)
# ---------------------------------------------------------------------------------------------

class BasicBlock(nn.Module):
    """Two 3x3 conv + batch-norm layers and a shortcut (1x1 conv + BN when the shape changes)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.downsample = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                                            nn.BatchNorm2d(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(y)) + shortcut)


class ResNet18(nn.Module):
    """ResNet-18 (He et al., 2016) with torchvision's module names and order.

    ``width`` is the channel count of the first stage (64 in the paper; the four stages have
    width, 2 width, 4 width, 8 width). ``small_images=True`` swaps the 7x7 stride-2 stem and its
    max-pool for one 3x3 stride-1 convolution, the usual choice for 32x32 CIFAR images (the
    network then downsamples 8x instead of 32x). ``list(net.children())[:-2]`` is the
    convolutional body in both cases.
    """

    def __init__(self, num_classes: int = 1000, width: int = 64, small_images: bool = False):
        super().__init__()
        if num_classes < 1 or width < 1:
            raise ValueError(f"num_classes and width must be positive, got {num_classes} and {width}.")
        self.conv1 = (nn.Conv2d(3, width, 3, 1, 1, bias=False) if small_images
                      else nn.Conv2d(3, width, 7, 2, 3, bias=False))
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.Identity() if small_images else nn.MaxPool2d(3, 2, 1)
        widths = [width, 2 * width, 4 * width, 8 * width]
        self.layer1 = nn.Sequential(BasicBlock(width, width), BasicBlock(width, width))
        self.layer2 = nn.Sequential(BasicBlock(widths[0], widths[1], 2), BasicBlock(widths[1], widths[1]))
        self.layer3 = nn.Sequential(BasicBlock(widths[1], widths[2], 2), BasicBlock(widths[2], widths[2]))
        self.layer4 = nn.Sequential(BasicBlock(widths[2], widths[3], 2), BasicBlock(widths[3], widths[3]))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[3], num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


# ---------------------------------------------------------------------------------------------
# Pretrained backbones
# ---------------------------------------------------------------------------------------------

SOURCE_CLASSES = [c for c in CIFAR10_CLASSES if c not in ("ship", "truck")]


def backbone_recipe() -> dict:
    """The course backbone's training settings: sizes differ between full and smoke mode."""
    return {"width": config.pick(full=64, smoke=16), "per_class": config.pick(full=5000, smoke=500),
            "image_size": config.pick(full=64, smoke=32),  # CIFAR images upsampled (or not) to this size
            "epochs": config.pick(full=30, smoke=4), "batch_size": 128, "lr": 0.1, "weight_decay": 5e-4,
            "version": 2}


def normalize_imagenet(images: torch.Tensor) -> torch.Tensor:
    """Standardise float RGB images in [0, 1], ``(3, H, W)`` or ``(N, 3, H, W)``, with ImageNet's
    channel means and deviations."""
    check_float_tensor("images", images, "RGB values in [0, 1]",
                       "Scale 0-255 images to [0, 1] first: images.float() / 255.")
    if images.ndim not in (3, 4) or images.shape[-3] != 3:
        raise ValueError(f"images must be RGB, (3, H, W) or (N, 3, H, W), got shape {tuple(images.shape)}. "
                         "Repeat a gray image to 3 channels first, e.g. images.repeat(1, 3, 1, 1) for (N, 1, H, W).")
    mean = torch.tensor(IMAGENET_MEAN, device=images.device).view(-1, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=images.device).view(-1, 1, 1)
    return (images - mean) / std


def _train_course_backbone(recipe: dict) -> ResNet18:
    """Train ResNet-18 on the eight source classes (flips and crops, SGD + one-cycle schedule)."""
    from .train import StepEveryBatch, train_classifier

    images, labels, test_images, test_labels, source = load_cifar10_images(recipe["per_class"], 100)
    source_ids = [CIFAR10_CLASSES.index(c) for c in SOURCE_CLASSES]
    relabel = torch.full((10,), -1, dtype=torch.int64)
    relabel[source_ids] = torch.arange(len(source_ids))
    keep, keep_test = relabel[labels] >= 0, relabel[test_labels] >= 0
    print(f"training the course backbone on {int(keep.sum())} {source.name} images of {len(SOURCE_CLASSES)} classes "
          f"({recipe['epochs']} epochs, width {recipe['width']}); it is cached for later runs")

    def prepare(x: torch.Tensor, augment: bool) -> torch.Tensor:
        x = x.float().div(255)
        if augment:  # random flips and shifts of up to 4 pixels
            x = torch.where(torch.rand(len(x), 1, 1, 1) < 0.5, x.flip(-1), x)
            x = F.pad(x, (4, 4, 4, 4), mode="reflect")
            i, j = torch.randint(0, 9, (2,)).tolist()
            x = x[..., i:i + 32, j:j + 32]
        if recipe["image_size"] != 32:
            x = F.interpolate(x, size=recipe["image_size"], mode="bilinear", align_corners=False)
        return normalize_imagenet(x)

    train_iter = data.TensorLoader(images[keep], relabel[labels[keep]], batch_size=recipe["batch_size"],
                                   shuffle=True, transform=lambda x: prepare(x, augment=True))
    test_iter = data.TensorLoader(test_images[keep_test], relabel[test_labels[keep_test]], batch_size=256,
                                  transform=lambda x: prepare(x, augment=False))
    net = ResNet18(num_classes=len(SOURCE_CLASSES), width=recipe["width"])
    optimizer = torch.optim.SGD(net.parameters(), lr=recipe["lr"], momentum=0.9,
                                weight_decay=recipe["weight_decay"], nesterov=True)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, recipe["lr"],
                                                    total_steps=recipe["epochs"] * len(train_iter))
    train_classifier(net, train_iter, test_iter, recipe["epochs"], StepEveryBatch(optimizer, scheduler), plot=False,
                     device=config.device(), desc="course backbone")  # a progress bar: in full mode, it takes a while
    return net.cpu()


def course_backbone() -> tuple[ResNet18, DataSource]:
    """The course's ResNet-18 pretrained on eight CIFAR-10 classes (no ship, no truck), cached.

    It stands in for ImageNet weights offline. It is trained on first use (seconds in smoke
    mode, a GPU job in full mode) and saved under the data cache, keyed by its recipe.
    """
    recipe = backbone_recipe()
    net = ResNet18(num_classes=len(SOURCE_CLASSES), width=recipe["width"])
    net.load_state_dict(data.cached_state("course-resnet18-cifar8", recipe,
                                          lambda r: _train_course_backbone(r).state_dict()))
    source = DataSource("course ResNet-18 pretrained on 8 CIFAR-10 classes", upstream=False,
                        note=f"width {recipe['width']}, {recipe['per_class']} images per class, "
                             f"{recipe['epochs']} epochs at {recipe['image_size']}x{recipe['image_size']} pixels; "
                             "stands in for torchvision's ImageNet weights")
    return net, source


def pretrained_resnet18() -> tuple[ResNet18, DataSource]:
    """ResNet-18 with torchvision's ImageNet weights, else (offline) :func:`course_backbone`."""
    try:
        path = data.fetch("resnet18-imagenet")
    except DataUnavailableError as err:
        print(f"ImageNet weights unavailable ({str(err).splitlines()[0]}); using the course backbone.")
        return course_backbone()
    net = ResNet18(num_classes=1000)
    net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return net, DataSource("torchvision ResNet-18 ImageNet weights (resnet18-f37072fd.pth)", upstream=True)


# ---------------------------------------------------------------------------------------------
# Fine-tuning target: hotdog, or ship vs truck
# ---------------------------------------------------------------------------------------------

def fine_tuning_data(n_train_per_class: int | None = None, n_test_per_class: int | None = None
                     ) -> tuple[dict, DataSource]:
    """Two-class target data for fine-tuning: ``({"train": (images, labels), "test": ...,
    "classes": [...], "image_size": int, "resize": int}, source)``.

    Upstream: d2l's hotdog dataset (PIL images; 224-pixel crops of images resized to 256).
    Offline: CIFAR-10 ship vs truck images (uint8 tensors; crops of the course backbone's input
    size), classes the course backbone never saw. The first images of each class are kept.
    """
    try:
        folder = data.extract("hotdog")
    except DataUnavailableError as err:
        print(f"hotdog unavailable ({str(err).splitlines()[0]}); using ship vs truck from CIFAR-10.")
        return _ship_vs_truck(n_train_per_class, n_test_per_class)
    classes = ["hotdog", "not-hotdog"]
    splits = {split: read_image_folder(folder / split, classes, n) for split, n in
              (("train", n_train_per_class), ("test", n_test_per_class))}
    return ({**splits, "classes": classes, "image_size": 224, "resize": 256},
            DataSource("hotdog (d2l's hotdog.zip)", upstream=True))


def read_image_folder(folder: Path, classes: list[str], per_class: int | None = None) -> tuple[list, torch.Tensor]:
    """PIL images and labels from ``folder/<class>/*`` (sorted names; the first ``per_class`` kept)."""
    from PIL import Image

    images, labels = [], []
    for label, name in enumerate(classes):
        files = sorted((folder / name).glob("*"))
        if not files:
            raise ValueError(f"{folder / name} has no images: expected the layout <split>/<class>/<image files>.")
        for file in files[:per_class]:
            with Image.open(file) as img:
                images.append(img.convert("RGB"))
            labels.append(label)
    return images, torch.tensor(labels)


def _ship_vs_truck(n_train_per_class, n_test_per_class) -> tuple[dict, DataSource]:
    images, labels, test_images, test_labels, cifar_source = load_cifar10_images(n_train_per_class, n_test_per_class)
    ids = torch.tensor([CIFAR10_CLASSES.index("ship"), CIFAR10_CLASSES.index("truck")])
    size = backbone_recipe()["image_size"]

    def select(x, y):
        keep = torch.isin(y, ids)
        return x[keep], (y[keep] == ids[1]).long()

    target = {"train": select(images, labels), "test": select(test_images, test_labels),
              "classes": ["ship", "truck"], "image_size": size, "resize": size * 9 // 8}
    return target, DataSource("ship vs truck from CIFAR-10", upstream=False,
                              note=f"from {cifar_source.name}; stands in for d2l's hotdog dataset; "
                                   "classes the course backbone never saw")


# ---------------------------------------------------------------------------------------------
# A Kaggle-style copy of CIFAR-10
# ---------------------------------------------------------------------------------------------

def kaggle_cifar10_folder(n_train_per_class: int | None = None, n_test_per_class: int | None = None
                          ) -> tuple[Path, Path, DataSource]:
    """CIFAR-10 written in the Kaggle competition's layout, as a competitor receives it.

    Returns ``(folder, answers, source)``: ``folder/train/<id>.png`` with ``trainLabels.csv``
    (``id,label``), ``folder/test/<id>.png`` and ``sampleSubmission.csv``; the test labels are
    withheld from ``folder`` and written to the ``answers`` CSV beside it, for scoring. Ids are
    shuffled (seeded) so that nothing about a label can be read from the file order. Written once
    under the data cache, keyed by the sizes and the source.
    """
    def paths(source: DataSource) -> tuple[Path, Path, Path]:
        root = data.data_dir() / "composed" / (f"kaggle-cifar10-v2-{n_train_per_class or 'all'}-"
                                               f"{n_test_per_class or 'all'}-{'upstream' if source.upstream else 'jpeg'}")
        return root, root / "competition", root / "test-labels.csv"

    for source in (CIFAR10_UPSTREAM, CIFAR10_JPEG):
        root, folder, answers = paths(source)
        if data.is_complete(root, root.name):  # built with build_folder: its marker is written last
            return folder, answers, source
    images, labels, test_images, test_labels, source = load_cifar10_images(n_train_per_class, n_test_per_class)
    root, folder, answers = paths(source)
    with data.build_folder(root, root.name) as tmp:
        rng = np.random.default_rng(0)
        for split, x, y in (("train", images, labels), ("test", test_images, test_labels)):
            (tmp / "competition" / split).mkdir(parents=True)
            rows = []
            for new_id, i in enumerate(rng.permutation(len(x)), start=1):
                _save_png(x[i], tmp / "competition" / split / f"{new_id}.png")
                rows.append((new_id, CIFAR10_CLASSES[int(y[i])]))
            _write_csv(tmp / ("competition/trainLabels.csv" if split == "train" else answers.name), ["id", "label"], rows)
        _write_csv(tmp / "competition" / "sampleSubmission.csv", ["id", "label"],
                   [(i, "cat") for i in range(1, len(test_images) + 1)])
    return folder, answers, source


def _save_png(image: torch.Tensor, path: Path) -> None:
    from PIL import Image

    Image.fromarray(image.permute(1, 2, 0).numpy()).save(path)


def _write_csv(path: Path, header: list[str], rows) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
