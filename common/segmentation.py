"""Semantic segmentation data: Pascal VOC2012, its colormap, random crops and minibatches.

Introduced in ``chapter_computer-vision/semantic-segmentation-and-dataset.ipynb`` and used by the
FCN notebook.

The upstream dataset
--------------------
Resource ``"voc2012"`` (``VOCtrainval_11-May-2012.tar``) unpacks to ``VOCdevkit/VOC2012/`` with

* ``JPEGImages/<id>.jpg``: the photos (RGB, mostly about 500 x 375 pixels);
* ``SegmentationClass/<id>.png``: the label maps, palette ("P" mode) PNGs whose pixel values
  are class indices 0..20, with 255 ("void") on a thin band around each object and on pixels the
  annotators could not decide; the palette is the VOC colormap, so a viewer shows class colours;
* ``ImageSets/Segmentation/train.txt`` and ``val.txt``: the image ids of each split.

Label maps are read as palette *indices* (a class index per pixel, 255 = void). Losses and
metrics must ignore 255: ``F.cross_entropy(..., ignore_index=VOID)``.

The offline substitute (``source.upstream`` is False)
-----------------------------------------------------
When ``voc2012`` can be neither found in the cache or the mirror nor downloaded, :func:`voc_folder`
builds a small dataset in the same layout, so that the reader and the FCN code run unchanged.
Recipe ``banana-voc-v1``:

1. scenes from ``common.bananas.compose_banana_scenes`` (the real banana photo composited onto
   real backgrounds, the same kind of scenes as the detection substitute), of size
   ``SUBSTITUTE_IMAGE_SIZE`` = (375, 500) (height, width; VOC's typical size, so 320 x 480 crops
   fit), ``SUBSTITUTE_SIZES`` = 300 train and 100 val scenes with seeds ``SUBSTITUTE_SEEDS``
   (distinct from the detection substitute's);
2. each image saved as ``JPEGImages/<id>.jpg`` with JPEG quality 95;
3. each label map saved as a palette PNG with the VOC palette: 1 on the banana's pixels (the
   pixel-exact composition mask), 255 (void) on a ring ``SUBSTITUTE_VOID_WIDTH`` = 2 pixels wide
   just outside the banana (like VOC's object borders), 0 elsewhere;
4. ``ImageSets/Segmentation/train.txt`` / ``val.txt``, and ``labelmap.txt`` (``background``,
   ``banana``: the only file VOC does not have; :func:`voc_classes` reads class names from it);
5. all written to a temporary folder that is renamed to
   ``data_dir()/composed/banana-voc-v1/`` when complete; built once, then reused.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset

from . import data
from .vision import IMAGENET_MEAN, IMAGENET_STD, normalize_imagenet  # the backbones' input normalisation

__all__ = [
    "VOC_CLASSES",
    "VOC_COLORMAP",
    "VOID",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "voc_colormap",
    "colormap_to_label",
    "rgb_to_label",
    "label_to_rgb",
    "voc_folder",
    "check_voc_layout",
    "read_voc_images",
    "voc_classes",
    "voc_rand_crop",
    "VOCSegDataset",
    "load_voc_segmentation",
    "build_banana_voc",
]

VOC_CLASSES: list[str] = [
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
    "cow", "diningtable", "dog", "horse", "motorbike", "person", "potted plant", "sheep", "sofa",
    "train", "tv/monitor",
]

VOID = 255  # label of VOC's "void" pixels (object borders, undecided): ignored by losses and metrics


def voc_colormap(n: int = 256) -> list[tuple[int, int, int]]:
    """The VOC colormap for indices ``0..n-1``, by the devkit's bit-interleaving rule.

    The bits of the index are dealt out in turn to red, green and blue (bit 0 to red, bit 1 to
    green, bit 2 to blue, bit 3 to red again, ...), filling each channel from its most significant
    bit down. So class 1 is (128, 0, 0), 2 is (0, 128, 0), 4 is (0, 0, 128), 8 is (64, 0, 0).
    The rule is a bijection of 8-bit indices into colours: all 256 colours differ.
    """
    if not isinstance(n, int) or not 1 <= n <= 256:
        raise ValueError(f"n must be an integer in 1..256, got {n!r}.")
    colormap = []
    for index in range(n):
        rgb, c = [0, 0, 0], index
        for shift in range(7, -1, -1):  # bit position in the channel, most significant first
            for channel in range(3):
                rgb[channel] |= (c & 1) << shift
                c >>= 1
        colormap.append((rgb[0], rgb[1], rgb[2]))
    return colormap


VOC_COLORMAP: list[tuple[int, int, int]] = voc_colormap(256)


def _palette() -> list[int]:
    """The colormap flattened to the 768 numbers of a PIL palette."""
    return [v for rgb in VOC_COLORMAP for v in rgb]


def colormap_to_label(colormap: list[tuple[int, int, int]] | None = None) -> torch.Tensor:
    """A lookup table (256**3,) int16 from colour code ``(R * 256 + G) * 256 + B`` to class index.

    Colours that are not in the colormap map to -1. Defaults to the full 256-entry VOC colormap,
    so VOC's void colour (224, 224, 192) maps to 255. (int16 keeps the table at 32 MiB.)
    """
    colormap = VOC_COLORMAP if colormap is None else colormap
    codes = torch.tensor([(r * 256 + g) * 256 + b for r, g, b in colormap], dtype=torch.int64)
    if codes.unique().numel() != len(codes):
        raise ValueError("The colormap has repeated colours: a colour would map to two classes.")
    table = torch.full((256 ** 3,), -1, dtype=torch.int16)
    table[codes] = torch.arange(len(codes), dtype=torch.int16)
    return table


def rgb_to_label(rgb: torch.Tensor, table: torch.Tensor | None = None) -> torch.Tensor:
    """An RGB rendering (3, H, W) uint8 of a label map -> class indices (H, W) int64.

    ``table`` is a lookup table from :func:`colormap_to_label` (built each call if omitted).
    Raises if a pixel has a colour outside the colormap.
    """
    if not isinstance(rgb, torch.Tensor) or rgb.ndim != 3 or rgb.shape[0] != 3 or rgb.dtype != torch.uint8:
        raise ValueError(f"rgb must be a uint8 tensor (3, H, W), got {_describe(rgb)}.")
    table = colormap_to_label() if table is None else table
    rgb = rgb.long()
    labels = table.to(rgb.device)[(rgb[0] * 256 + rgb[1]) * 256 + rgb[2]].long()
    if (labels < 0).any():
        bad = rgb[:, labels < 0][:, 0].tolist()
        raise ValueError(f"{int((labels < 0).sum())} pixels have colours outside the colormap, e.g. {tuple(bad)}.")
    return labels


def label_to_rgb(label: torch.Tensor) -> torch.Tensor:
    """Class indices (..., H, W) (0..255) -> their VOC colours (..., 3, H, W) uint8, for display."""
    if not isinstance(label, torch.Tensor) or label.ndim < 2 or label.is_floating_point():
        raise ValueError(f"label must be an integer tensor (..., H, W), got {_describe(label)}.")
    if label.numel() and (label.min() < 0 or label.max() > 255):
        raise ValueError(f"label values must be in 0..255, got {int(label.min())}..{int(label.max())}.")
    colours = torch.tensor(VOC_COLORMAP, dtype=torch.uint8, device=label.device)
    return colours[label.long()].movedim(-1, -3)


def _describe(x) -> str:
    if isinstance(x, torch.Tensor):
        return f"a {x.dtype} tensor of shape {tuple(x.shape)}"
    return f"a {type(x).__name__}"


# ---------------------------------------------------------------------------------------------
# Where the data is: upstream VOC2012, else the composed substitute
# ---------------------------------------------------------------------------------------------

UPSTREAM_NOTE = "Pascal VOC2012 segmentation, train 1464 / val 1449 images, 21 classes (void = 255)"

SUBSTITUTE_VERSION = "banana-voc-v1"
SUBSTITUTE_IMAGE_SIZE = (375, 500)  # (height, width), VOC's typical image size
SUBSTITUTE_SIZES = {"train": 300, "val": 100}
SUBSTITUTE_SEEDS = {"train": 2012, "val": 2013}
SUBSTITUTE_VOID_WIDTH = 2
SUBSTITUTE_CLASSES = ["background", "banana"]


def check_voc_layout(voc_dir: Path) -> Path:
    """Check that ``voc_dir`` has the VOC2012 segmentation layout; return it as a Path.

    Raises ``FileNotFoundError`` naming every missing folder or file.
    """
    voc_dir = Path(voc_dir)
    required = ["JPEGImages", "SegmentationClass", "ImageSets/Segmentation/train.txt",
                "ImageSets/Segmentation/val.txt"]
    missing = [name for name in required if not (voc_dir / name).exists()]
    if missing:
        raise FileNotFoundError(
            f"{voc_dir} does not have the VOC2012 segmentation layout: missing {', '.join(missing)}. "
            "Expected JPEGImages/<id>.jpg, SegmentationClass/<id>.png and ImageSets/Segmentation/{train,val}.txt.")
    return voc_dir


def _find_voc2012(folder: Path) -> Path:
    """The VOC2012 folder inside an unpacked VOCtrainval archive (with or without VOCdevkit/)."""
    for candidate in (folder / "VOCdevkit" / "VOC2012", folder / "VOC2012", folder):
        if (candidate / "ImageSets").is_dir():
            return check_voc_layout(candidate)
    raise FileNotFoundError(f"No VOCdevkit/VOC2012/ folder with ImageSets/ found in {folder}.")


def voc_folder() -> tuple[Path, data.DataSource]:
    """The VOC2012 folder and where it came from: upstream VOC2012, else the composed substitute.

    Tries the upstream resource ``"voc2012"`` first (cache, mirror, download); only when it is
    unavailable (``DataUnavailableError``) builds (once) or reuses the offline substitute.
    """
    try:
        folder = data.extract("voc2012")
    except data.DataUnavailableError as err:
        reason = str(err).splitlines()[0]
        voc_dir = build_banana_voc()
        note = (f"recipe {SUBSTITUTE_VERSION}: composed banana scenes with pixel-exact masks in the VOC layout, "
                f"{SUBSTITUTE_SIZES['train']} train / {SUBSTITUTE_SIZES['val']} val images "
                f"{SUBSTITUTE_IMAGE_SIZE[0]}x{SUBSTITUTE_IMAGE_SIZE[1]}, classes background/banana, "
                f"{SUBSTITUTE_VOID_WIDTH}-pixel void (255) ring; used because: {reason}")
        return voc_dir, data.DataSource("banana-voc (substitute for Pascal VOC2012)", False, note)
    return _find_voc2012(folder), data.DataSource("voc2012", True, UPSTREAM_NOTE)


def _substitute_root() -> Path:
    """``data_dir()/composed/banana-voc-v1``; other sizes (tests) get their own folder."""
    name = SUBSTITUTE_VERSION
    if (SUBSTITUTE_SIZES, SUBSTITUTE_IMAGE_SIZE) != ({"train": 300, "val": 100}, (375, 500)):
        name += f"-{SUBSTITUTE_SIZES['train']}-{SUBSTITUTE_SIZES['val']}-{SUBSTITUTE_IMAGE_SIZE[0]}x{SUBSTITUTE_IMAGE_SIZE[1]}"
    return data.data_dir() / "composed" / name


def build_banana_voc() -> Path:
    """Build (once) the offline substitute in the VOC layout; return its ``VOC2012`` folder."""
    root = _substitute_root()
    recipe = f"{root.name}: sizes {SUBSTITUTE_SIZES}, image size {SUBSTITUTE_IMAGE_SIZE}"
    if data.is_complete(root, recipe):
        return check_voc_layout(root / "VOC2012")
    from .bananas import compose_banana_scenes  # imported here: only the substitute needs it

    with data.build_folder(root, recipe) as tmp:
        voc = tmp / "VOC2012"
        for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
            (voc / sub).mkdir(parents=True)
        for split in ("train", "val"):
            images, masks, _ = compose_banana_scenes(SUBSTITUTE_SIZES[split], size=SUBSTITUTE_IMAGE_SIZE,
                                                     seed=SUBSTITUTE_SEEDS[split])
            labels = _mask_to_label(masks, SUBSTITUTE_VOID_WIDTH)
            ids = [f"banana_{split}_{i:06d}" for i in range(len(images))]
            for image_id, image, label in zip(ids, images, labels):
                _write_example(voc, image_id, image, label)
            (voc / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("\n".join(ids) + "\n", encoding="utf-8")
        (voc / "labelmap.txt").write_text("\n".join(SUBSTITUTE_CLASSES) + "\n", encoding="utf-8")
    return check_voc_layout(root / "VOC2012")


def _mask_to_label(masks: torch.Tensor, void_width: int) -> torch.Tensor:
    """Masks (N, H, W) bool -> labels (N, H, W) uint8: 1 inside, 255 on a ring outside, 0 elsewhere."""
    masks = torch.as_tensor(masks).bool()
    labels = masks.to(torch.uint8)
    if void_width > 0:
        k = 2 * void_width + 1  # a square neighbourhood: the ring is void_width pixels thick
        grown = F.max_pool2d(masks[:, None].float(), k, stride=1, padding=void_width)[:, 0].bool()
        labels[grown & ~masks] = VOID
    return labels


def _write_example(voc: Path, image_id: str, image: torch.Tensor, label: torch.Tensor) -> None:
    from PIL import Image

    rgb = image.permute(1, 2, 0).contiguous().numpy()
    Image.fromarray(rgb).save(voc / "JPEGImages" / f"{image_id}.jpg", quality=95)
    png = Image.fromarray(label.numpy())  # mode "L"; putpalette makes it a palette ("P") image
    png.putpalette(_palette())
    png.save(voc / "SegmentationClass" / f"{image_id}.png")


# ---------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------

def voc_classes(voc_dir: Path) -> list[str]:
    """Class names: one per line of ``labelmap.txt`` when the folder has one, else VOC's 21."""
    labelmap = Path(voc_dir) / "labelmap.txt"
    if not labelmap.exists():
        return list(VOC_CLASSES)
    names = [line.strip() for line in labelmap.read_text(encoding="utf-8").splitlines() if line.strip()]
    if len(names) < 2:
        raise ValueError(f"{labelmap} must list at least two class names (background first), got {names}.")
    return names


def _split_ids(voc_dir: Path, is_train: bool, limit: int | None) -> list[str]:
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 1):
        raise ValueError(f"limit must be None or a positive integer, got {limit!r}.")
    split = voc_dir / "ImageSets" / "Segmentation" / ("train.txt" if is_train else "val.txt")
    ids = [line.strip() for line in split.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not ids:
        raise ValueError(f"{split} lists no image ids.")
    return ids[:limit]


def _read_image(path: Path) -> torch.Tensor:
    """A photo -> (3, H, W) uint8 RGB."""
    from PIL import Image

    with Image.open(path) as img:
        return torch.from_numpy(np.array(img.convert("RGB"), dtype=np.uint8)).permute(2, 0, 1).contiguous()


def _read_label(path: Path) -> torch.Tensor:
    """A label PNG -> (H, W) uint8 class indices: palette indices, or colours mapped back."""
    from PIL import Image

    with Image.open(path) as png:
        if png.mode in ("P", "L"):
            return torch.from_numpy(np.array(png, dtype=np.uint8))
        rgb = torch.from_numpy(np.array(png.convert("RGB"), dtype=np.uint8)).permute(2, 0, 1)
    return rgb_to_label(rgb, _lookup_table()).to(torch.uint8)


_TABLE: torch.Tensor | None = None


def _lookup_table() -> torch.Tensor:
    global _TABLE
    if _TABLE is None:
        _TABLE = colormap_to_label()
    return _TABLE


def _read_split(voc_dir: Path, is_train: bool, limit: int | None) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Images (3, H, W) uint8 and label maps (H, W) uint8 (compact: full VOC is ~1500 images)."""
    voc_dir = check_voc_layout(voc_dir)
    ids = _split_ids(voc_dir, is_train, limit)
    missing = [f"{sub}/{i}{ext}" for i in ids for sub, ext in (("JPEGImages", ".jpg"), ("SegmentationClass", ".png"))
               if not (voc_dir / sub / f"{i}{ext}").exists()]
    if missing:
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise FileNotFoundError(f"{voc_dir} lacks files of the {'train' if is_train else 'val'} split: "
                                f"{', '.join(missing[:5])}{more}.")
    images, labels = [], []
    for i in ids:
        image = _read_image(voc_dir / "JPEGImages" / f"{i}.jpg")
        label = _read_label(voc_dir / "SegmentationClass" / f"{i}.png")
        if image.shape[1:] != label.shape:
            raise ValueError(f"Image {i} is {tuple(image.shape[1:])} but its label map is {tuple(label.shape)}.")
        images.append(image)
        labels.append(label)
    return images, labels


def read_voc_images(voc_dir: Path, is_train: bool = True,
                    limit: int | None = None) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The images and label maps of the train (or val) split, in the order of its id list.

    Returns two lists: images ``(3, H, W)`` uint8 and label maps ``(H, W)`` int64 of class
    indices (255 = void), read as the PNGs' palette indices. ``limit`` keeps the first ids only.
    """
    images, labels = _read_split(Path(voc_dir), is_train, limit)
    return images, [label.long() for label in labels]


# ---------------------------------------------------------------------------------------------
# Cropping, the dataset and minibatches
# ---------------------------------------------------------------------------------------------

def _check_crop_size(height, width) -> None:
    for name, value in (("height", height), ("width", width)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"Crop {name} must be a positive integer, got {value!r}.")


def voc_rand_crop(image: torch.Tensor, label: torch.Tensor, height: int,
                  width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The same random ``height x width`` window of an image (C, H, W) and its label map (H, W).

    The window's corner is drawn uniformly with torch's global generator (seed it to repeat).
    """
    _check_crop_size(height, width)
    if not isinstance(image, torch.Tensor) or image.ndim != 3:
        raise ValueError(f"image must be a tensor (C, H, W), got {_describe(image)}.")
    if not isinstance(label, torch.Tensor) or label.shape != image.shape[1:]:
        raise ValueError(f"label must be a tensor (H, W) = {tuple(image.shape[1:])}, got {_describe(label)}.")
    h, w = label.shape
    if height > h or width > w:
        raise ValueError(f"Cannot crop {height}x{width} out of a {h}x{w} image.")
    top = int(torch.randint(h - height + 1, ()))
    left = int(torch.randint(w - width + 1, ()))
    return image[:, top:top + height, left:left + width], label[top:top + height, left:left + width]


class VOCSegDataset(Dataset):
    """VOC-layout segmentation examples as random crops, normalised with ImageNet's statistics.

    Each access crops a new random ``crop_size = (height, width)`` window of an image and its
    label map and returns ``(features, labels)``: features (3, height, width) float32,
    ``(x / 255 - mean) / std`` per channel; labels (height, width) int64. Images smaller than the
    crop are dropped (the count kept is printed).
    """

    def __init__(self, is_train: bool, crop_size: tuple[int, int], voc_dir: Path, limit: int | None = None):
        if not isinstance(crop_size, (tuple, list)) or len(crop_size) != 2:
            raise ValueError(f"crop_size must be (height, width), got {crop_size!r}.")
        _check_crop_size(*crop_size)
        self.crop_size = tuple(crop_size)
        images, labels = _read_split(Path(voc_dir), is_train, limit)
        keep = [i for i, img in enumerate(images)
                if img.shape[1] >= self.crop_size[0] and img.shape[2] >= self.crop_size[1]]
        if not keep:
            largest = max((tuple(img.shape[1:]) for img in images), key=lambda s: s[0] * s[1])
            raise ValueError(f"The crop {self.crop_size[0]}x{self.crop_size[1]} is larger than every one of the "
                             f"{len(images)} {'train' if is_train else 'val'} images (largest {largest[0]}x{largest[1]}).")
        self.images = [images[i] for i in keep]
        self.labels = [labels[i] for i in keep]  # uint8 here; int64 per crop in __getitem__
        print(f"{'train' if is_train else 'val'}: kept {len(keep)} of {len(images)} images "
              f"(at least {self.crop_size[0]}x{self.crop_size[1]})")

    def normalize_image(self, image: torch.Tensor) -> torch.Tensor:
        """uint8 (3, H, W) -> float32 normalised with ImageNet's per-channel mean and std."""
        return normalize_imagenet(image.float() / 255)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, label = voc_rand_crop(self.images[index], self.labels[index], *self.crop_size)
        return self.normalize_image(image), label.long()

    def __len__(self) -> int:
        return len(self.images)


def load_voc_segmentation(batch_size: int, crop_size: tuple[int, int], n_train: int | None = None,
                          n_val: int | None = None) -> tuple[DataLoader, DataLoader, list[str], data.DataSource]:
    """Minibatches of VOC2012 segmentation (or its offline substitute, see the module docstring).

    Returns ``(train_iter, val_iter, classes, source)``. Each batch is features (B, 3, h, w)
    float32 normalised with ImageNet's mean/std and labels (B, h, w) int64 (255 = void), with
    ``(h, w) = crop_size``. ``n_train`` / ``n_val`` keep the first ids of each split. The train
    iterator is shuffled and drops its last partial batch; ``num_workers=0`` (data in memory).
    """
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
    if not isinstance(crop_size, (tuple, list)) or len(crop_size) != 2:
        raise ValueError(f"crop_size must be (height, width), got {crop_size!r}.")
    _check_crop_size(*crop_size)
    for name, n in (("n_train", n_train), ("n_val", n_val)):
        if n is not None and (not isinstance(n, int) or isinstance(n, bool) or n < 1):
            raise ValueError(f"{name} must be None or a positive integer, got {n!r}.")
    voc_dir, source = voc_folder()
    train_set = VOCSegDataset(True, crop_size, voc_dir, n_train)
    val_set = VOCSegDataset(False, crop_size, voc_dir, n_val)
    if len(train_set) < batch_size:
        raise ValueError(f"Only {len(train_set)} train images fit the crop, fewer than batch_size={batch_size}: "
                         "the train iterator (which drops the last partial batch) would be empty.")
    train_iter = DataLoader(train_set, batch_size, shuffle=True, drop_last=True, num_workers=0)
    val_iter = DataLoader(val_set, batch_size, shuffle=False, drop_last=False, num_workers=0)
    return train_iter, val_iter, voc_classes(voc_dir), source
