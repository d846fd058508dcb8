"""The banana-detection dataset: d2l's small object-detection set, or an offline substitute.

Upstream (d2l's resource ``banana-detection``) the unpacked folder holds::

    bananas_train/label.csv        header ``img_name,label,xmin,ymin,xmax,ymax``
    bananas_train/images/0.png     256 x 256 RGB, one banana each (1000 images)
    bananas_val/label.csv
    bananas_val/images/0.png       (100 images)

with pixel corner coordinates and class 0 ("banana"). d2l made these images by pasting a banana
photo at random places and scales onto background photos.

When the upstream archive cannot be had (offline, no mirror copy), :func:`banana_folder` builds a
substitute by the same recipe from real photos of the course's data mirror, and writes it in the
upstream layout so that one reader serves both. The recipe (version :data:`RECIPE_VERSION`):

1. **Sprite.** ``img/banana.jpg`` is one of d2l's composed samples (a bear on grass with five
   pasted bananas). The top banana lies in the box ``SPRITE_BOX`` (x 130..205, y 8..78). Its mask
   is the set of pixels in that crop whose PIL HSV colour is banana yellow
   (``HUE_RANGE`` 22..48 of 255, saturation > ``MIN_SATURATION``, value > ``MIN_VALUE``), cleaned by
   a 3x3 closing (fills pinholes), keeping the largest 4-connected part and filling its holes. The
   sprite is the RGB crop and boolean mask trimmed to the mask's bounding box.
2. **Backgrounds.** A random crop of one of ``img/rainier.jpg``, ``img/autumn-oak.jpg``,
   ``img/cat1.jpg``, ``img/catdog.jpg`` (photo chosen uniformly; crop side
   ``BACKGROUND_SCALE`` = 35%..100% of the photo's shorter side at the scene's aspect ratio; random
   position), resized bilinearly to the scene size. (The two large photos are first shrunk once,
   Lanczos, to a shorter side of ``MAX_PHOTO_SIDE`` = 768 pixels, which only saves time.)
3. **Pasting.** The sprite is flipped horizontally with probability 1/2, rotated by a uniform
   angle in ``ROTATION_DEGREES`` (-15..15 degrees) and scaled so that its longer side is
   ``BOX_FRACTION`` = 10%..40% of the scene's shorter side, all in one bilinear resampling of the
   *premultiplied* sprite (RGB times mask, and the mask): the transformed mask is the resampled
   mask > 1/2 and the transformed colour is the resampled RGB divided by the resampled mask, so
   pasted pixels mix banana pixels only, never the bear behind the photo's banana. It is pasted at
   a uniform position fully inside the scene.
4. **The box** is the bounding box of the pasted mask, so it is exact: ``[x0, y0, x1, y1]`` with
   ``x0 <= x < x1`` for every mask column ``x`` (``x1`` = last column + 1), the same for ``y``.

Scene ``i`` of seed ``s`` uses the random generator ``numpy.random.default_rng([s, i])``, so the
scenes are deterministic, and the first ``k`` scenes of ``num`` do not depend on ``num``. The
substitute has d2l's sizes (1000 train + 100 val scenes of 256 x 256, train seed
``TRAIN_SEED``, val seed ``VAL_SEED``) and is cached under
``common.data.data_dir() / "composed" / "banana-detection-v1"`` (written to a temporary folder,
renamed when complete). Smoke runs take subsets in :func:`load_bananas`.
"""
from __future__ import annotations

import csv
import math
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from . import data
from .config import resolve_device

__all__ = [
    "RECIPE_VERSION",
    "LABEL_HEADER",
    "banana_sprite",
    "compose_banana_scenes",
    "banana_folder",
    "read_bananas",
    "load_bananas",
]

# ---------------------------------------------------------------------------------------------
# Constants of the recipe (changing any of them must bump RECIPE_VERSION)
# ---------------------------------------------------------------------------------------------

RECIPE_VERSION = 1
SPRITE_PHOTO = "img/banana.jpg"
SPRITE_BOX = (130, 8, 205, 78)  # (left, top, right, bottom) in banana.jpg, right/bottom exclusive
HUE_RANGE = (22, 48)  # PIL HSV hue, 0..255, inclusive
MIN_SATURATION = 60
MIN_VALUE = 200
BACKGROUND_PHOTOS = ("img/rainier.jpg", "img/autumn-oak.jpg", "img/cat1.jpg", "img/catdog.jpg")
BACKGROUND_SCALE = (0.35, 1.0)  # crop side / shorter side of the photo
MAX_PHOTO_SIDE = 768  # photos are first shrunk to this shorter side (0.35 * 768 > 256)
BOX_FRACTION = (0.10, 0.40)  # longer side of the scaled sprite / shorter side of the scene
ROTATION_DEGREES = (-15.0, 15.0)
FLIP_PROBABILITY = 0.5
MIN_SCENE_SIDE = 16

# The substitute's sizes: d2l's. Tests may monkeypatch them smaller; the folder name then says so.
NUM_TRAIN, NUM_VAL, IMAGE_SIZE = 1000, 100, 256
TRAIN_SEED, VAL_SEED = 1, 2

LABEL_HEADER = ["img_name", "label", "xmin", "ymin", "xmax", "ymax"]
SPLITS = {True: "bananas_train", False: "bananas_val"}
LAYOUT_HELP = ("Expected d2l's banana-detection layout: <folder>/bananas_train/label.csv and "
               "<folder>/bananas_val/label.csv with header 'img_name,label,xmin,ymin,xmax,ymax', and the "
               "images at <folder>/bananas_<split>/images/<img_name>.")


# ---------------------------------------------------------------------------------------------
# The sprite
# ---------------------------------------------------------------------------------------------

def _dilate(mask: np.ndarray) -> np.ndarray:
    """3x3 binary dilation (outside the array counts as False)."""
    p = np.pad(mask, 1)
    h, w = mask.shape
    return np.logical_or.reduce([p[i:i + h, j:j + w] for i in range(3) for j in range(3)])


def _erode(mask: np.ndarray) -> np.ndarray:
    """3x3 binary erosion (outside the array counts as True, so borders do not shrink)."""
    p = np.pad(mask, 1, constant_values=True)
    h, w = mask.shape
    return np.logical_and.reduce([p[i:i + h, j:j + w] for i in range(3) for j in range(3)])


def _components(mask: np.ndarray) -> np.ndarray:
    """Labels of the 4-connected components of ``mask`` (0 = background), by flood fill."""
    labels = np.zeros(mask.shape, dtype=np.int32)
    h, w = mask.shape
    count = 0
    for y0, x0 in zip(*np.nonzero(mask)):
        if labels[y0, x0]:
            continue
        count += 1
        labels[y0, x0] = count
        stack = [(y0, x0)]
        while stack:
            y, x = stack.pop()
            for ny, nx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
                if 0 <= ny < h and 0 <= nx < w and mask[ny, nx] and not labels[ny, nx]:
                    labels[ny, nx] = count
                    stack.append((ny, nx))
    return labels


def _clean_mask(mask: np.ndarray) -> np.ndarray:
    """Close pinholes, keep the largest 4-connected part, and fill the holes inside it."""
    mask = _erode(_dilate(mask))
    labels = _components(mask)
    if labels.max() == 0:
        return mask
    sizes = np.bincount(labels.ravel())[1:]
    mask = labels == 1 + int(np.argmax(sizes))
    # Holes: background pixels not 4-connected to the border (a padded ring joins the border).
    background = _components(np.pad(~mask, 1, constant_values=True))
    return background[1:-1, 1:-1] != background[0, 0]


@lru_cache(maxsize=1)
def _sprite_arrays() -> tuple[np.ndarray, np.ndarray]:
    from PIL import Image

    with Image.open(data.fetch(SPRITE_PHOTO)) as photo:
        crop = photo.convert("RGB").crop(SPRITE_BOX)
    rgb = np.asarray(crop, dtype=np.uint8)
    hsv = np.asarray(crop.convert("HSV"), dtype=np.int32)
    hue, sat, val = hsv[..., 0], hsv[..., 1], hsv[..., 2]
    mask = (hue >= HUE_RANGE[0]) & (hue <= HUE_RANGE[1]) & (sat > MIN_SATURATION) & (val > MIN_VALUE)
    mask = _clean_mask(mask)
    ys, xs = np.nonzero(mask)
    if len(ys) == 0:
        raise RuntimeError(f"No banana-yellow pixels in {SPRITE_BOX} of {SPRITE_PHOTO}: the recipe does not fit this photo.")
    rows, cols = slice(ys.min(), ys.max() + 1), slice(xs.min(), xs.max() + 1)
    return rgb[rows, cols].copy(), mask[rows, cols].copy()


def banana_sprite() -> tuple[torch.Tensor, torch.Tensor]:
    """The pasted banana: RGB uint8 (3, h, w) and its boolean mask (h, w), trimmed to the mask."""
    rgb, mask = _sprite_arrays()
    return torch.from_numpy(rgb).permute(2, 0, 1).contiguous(), torch.from_numpy(mask)


# ---------------------------------------------------------------------------------------------
# Composing scenes
# ---------------------------------------------------------------------------------------------

@lru_cache(maxsize=None)
def _photo(name: str):
    """A background photo, shrunk once so its shorter side is at most ``MAX_PHOTO_SIDE``."""
    from PIL import Image

    with Image.open(data.fetch(name)) as img:
        img = img.convert("RGB")
    shrink = MAX_PHOTO_SIDE / min(img.size)
    if shrink < 1:  # the smallest crop still has about IMAGE_SIZE pixels per side: no detail lost
        img = img.resize((round(img.width * shrink), round(img.height * shrink)), Image.LANCZOS)
    return img


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A random crop of a random background photo, resized to (height, width, 3) uint8."""
    from PIL import Image

    photo = _photo(BACKGROUND_PHOTOS[int(rng.integers(len(BACKGROUND_PHOTOS)))])
    pw, ph = photo.size
    side = rng.uniform(*BACKGROUND_SCALE) * min(pw, ph)
    # Crop at the scene's aspect ratio, as large as `side` allows along the shorter scene side.
    if width >= height:
        cw, ch = side, side * height / width
    else:
        cw, ch = side * width / height, side
    cw, ch = min(cw, pw), min(ch, ph)
    left, top = rng.uniform(0, pw - cw), rng.uniform(0, ph - ch)
    img = photo.resize((width, height), Image.BILINEAR, box=(left, top, left + cw, top + ch))
    return np.asarray(img, dtype=np.uint8)


def _transform_sprite(rgb: np.ndarray, mask: np.ndarray, scale: float, angle: float, flip: bool
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Flip, rotate and scale the sprite in one bilinear resampling of its premultiplied colour.

    Returns RGB float (h, w, 3) in [0, 255] and a boolean mask (h, w) trimmed to the mask.
    """
    h, w = mask.shape
    theta = math.radians(angle)
    cos, sin = math.cos(theta), math.sin(theta)
    # Output size: the bounding box of the rotated, scaled sprite (+1 pixel of margin each side).
    out_w = int(math.ceil(scale * (w * abs(cos) + h * abs(sin)))) + 2
    out_h = int(math.ceil(scale * (w * abs(sin) + h * abs(cos)))) + 2
    # Map output pixel centres (pixels relative to the output centre) back into the source.
    ys, xs = torch.meshgrid(torch.arange(out_h, dtype=torch.float64) - (out_h - 1) / 2,
                            torch.arange(out_w, dtype=torch.float64) - (out_w - 1) / 2, indexing="ij")
    src_x = (cos * xs + sin * ys) / scale
    src_y = (-sin * xs + cos * ys) / scale
    if flip:
        src_x = -src_x
    # grid_sample's normalised coordinates with align_corners=False: pixel centre j -> (2j+1)/n - 1.
    grid = torch.stack((2 * src_x / w, 2 * src_y / h), dim=-1)[None].float()
    alpha = torch.from_numpy(mask.astype(np.float32))
    premult = torch.from_numpy(rgb.astype(np.float32)).permute(2, 0, 1) * alpha
    source = torch.cat((premult, alpha[None]))[None]  # (1, 4, h, w)
    out = F.grid_sample(source, grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0]
    a = out[3]
    new_mask = a > 0.5
    colour = (out[:3] / a.clamp_min(1e-6)).clamp(0, 255).permute(1, 2, 0)
    rows, cols = torch.nonzero(new_mask.any(1)).flatten(), torch.nonzero(new_mask.any(0)).flatten()
    r0, r1, c0, c1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    return colour[r0:r1, c0:c1].numpy(), new_mask[r0:r1, c0:c1].numpy()


def _compose(num: int, size: tuple[int, int], seed: int
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`compose_banana_scenes` plus the backgrounds before pasting (for the tests)."""
    height, width = _check_size(size)
    if isinstance(num, bool) or not isinstance(num, (int, np.integer)) or num < 1:
        raise ValueError(f"num must be a positive integer (the number of scenes), got {num!r}.")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}.")
    sprite_rgb, sprite_mask = _sprite_arrays()
    images = np.empty((num, height, width, 3), dtype=np.uint8)
    backgrounds = np.empty_like(images)
    masks = np.zeros((num, height, width), dtype=bool)
    boxes = np.empty((num, 4), dtype=np.float32)
    for i in range(num):
        rng = np.random.default_rng([int(seed), i])
        background = _background(rng, height, width)
        flip = bool(rng.random() < FLIP_PROBABILITY)
        angle = float(rng.uniform(*ROTATION_DEGREES))
        fraction = float(rng.uniform(*BOX_FRACTION))
        scale = fraction * min(height, width) / max(sprite_mask.shape)
        colour, mask = _transform_sprite(sprite_rgb, sprite_mask, scale, angle, flip)
        mh, mw = mask.shape
        if mh > height or mw > width:  # only possible for extreme aspect ratios: shrink to fit
            shrink = min(height / mh, width / mw) * 0.95
            colour, mask = _transform_sprite(sprite_rgb, sprite_mask, scale * shrink, angle, flip)
            mh, mw = mask.shape
        top, left = int(rng.integers(0, height - mh + 1)), int(rng.integers(0, width - mw + 1))
        scene = background.copy()
        region = scene[top:top + mh, left:left + mw]
        region[mask] = np.rint(colour[mask]).astype(np.uint8)
        images[i], backgrounds[i] = scene, background
        masks[i, top:top + mh, left:left + mw] = mask
        # The box of the pasted mask itself (exact, whatever the trimming above did).
        rows, cols = np.nonzero(masks[i].any(1))[0], np.nonzero(masks[i].any(0))[0]
        boxes[i] = (cols[0], rows[0], cols[-1] + 1, rows[-1] + 1)
    to_chw = lambda a: torch.from_numpy(a).permute(0, 3, 1, 2).contiguous()  # noqa: E731
    return to_chw(images), torch.from_numpy(masks), torch.from_numpy(boxes), to_chw(backgrounds)


def _check_size(size) -> tuple[int, int]:
    if (not isinstance(size, (tuple, list)) or len(size) != 2
            or not all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) for s in size)):
        raise ValueError(f"size must be a pair of integers (height, width), got {size!r}.")
    if min(size) < MIN_SCENE_SIDE:
        raise ValueError(f"size must be at least {MIN_SCENE_SIDE} pixels on each side (the banana "
                         f"needs room), got {tuple(size)}.")
    return int(size[0]), int(size[1])


def compose_banana_scenes(num: int, size: tuple[int, int] = (256, 256), seed: int = 0
                          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``num`` scenes of one banana pasted on a real photo, by the recipe of this module.

    ``size`` is ``(height, width)``. Returns images uint8 ``(num, 3, H, W)``, the banana masks
    bool ``(num, H, W)`` and the boxes float32 ``(num, 4)``: pixel corners ``[x0, y0, x1, y1]``
    of each mask's bounding box (``x1``, ``y1`` exclusive). Deterministic given ``seed``.
    """
    images, masks, boxes, _ = _compose(num, size, seed)
    return images, masks, boxes


# ---------------------------------------------------------------------------------------------
# The folder: upstream or the composed substitute
# ---------------------------------------------------------------------------------------------

UPSTREAM_NOTE = "d2l's banana-detection (1000 train + 100 val images, 256 x 256, one banana each)"


def _composed_folder() -> Path:
    name = f"banana-detection-v{RECIPE_VERSION}"
    if (NUM_TRAIN, NUM_VAL, IMAGE_SIZE) != (1000, 100, 256):
        name += f"-{NUM_TRAIN}-{NUM_VAL}-{IMAGE_SIZE}px"
    return data.data_dir() / "composed" / name


def _write_split(folder: Path, num: int, seed: int) -> None:
    from PIL import Image

    images, _, boxes = compose_banana_scenes(num, (IMAGE_SIZE, IMAGE_SIZE), seed)
    (folder / "images").mkdir(parents=True)
    rows = []
    for i, (image, box) in enumerate(zip(images, boxes)):
        name = f"{i}.png"
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(folder / "images" / name, compress_level=1)
        rows.append([name, 0, *(int(v) for v in box)])
    with open(folder / "label.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(LABEL_HEADER)
        writer.writerows(rows)


def _build_substitute() -> Path:
    folder = _composed_folder()
    recipe = f"banana-detection substitute, recipe v{RECIPE_VERSION}, {NUM_TRAIN}/{NUM_VAL} images of {IMAGE_SIZE} px"
    if data.is_complete(folder, recipe):
        return folder
    with data.build_folder(folder, recipe) as tmp:
        _write_split(tmp / SPLITS[True], NUM_TRAIN, TRAIN_SEED)
        _write_split(tmp / SPLITS[False], NUM_VAL, VAL_SEED)
    return folder


def banana_folder() -> tuple[Path, data.DataSource]:
    """Folder holding ``bananas_train/`` and ``bananas_val/``, and where it came from.

    The upstream resource ``banana-detection`` if it can be had (cache, mirror, download), else
    the composed substitute of this module's recipe (built once, then cached).
    """
    try:
        folder = data.extract("banana-detection")
        return folder, data.DataSource("banana-detection", True, UPSTREAM_NOTE)
    except data.DataUnavailableError:
        pass
    folder = _build_substitute()
    note = (f"composed offline by recipe v{RECIPE_VERSION} (common/bananas.py): a banana cut from "
            f"{SPRITE_PHOTO} pasted on random crops of {', '.join(BACKGROUND_PHOTOS)}; "
            f"{NUM_TRAIN} train + {NUM_VAL} val images, {IMAGE_SIZE} x {IMAGE_SIZE}")
    return folder, data.DataSource("banana-detection substitute", False, note)


# ---------------------------------------------------------------------------------------------
# Reading and loading
# ---------------------------------------------------------------------------------------------

def _read(folder: Path, is_train: bool, limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    from PIL import Image

    split = Path(folder) / SPLITS[bool(is_train)]
    labels_file = split / "label.csv"
    if not labels_file.is_file():
        raise FileNotFoundError(f"Missing {labels_file}. {LAYOUT_HELP}")
    with open(labels_file, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    if not rows or [c.strip() for c in rows[0]] != LABEL_HEADER:
        found = ",".join(rows[0]) if rows else "(empty file)"
        raise ValueError(f"{labels_file} has header {found!r}, expected {','.join(LABEL_HEADER)!r}. {LAYOUT_HELP}")
    rows = [r for r in rows[1:] if r]
    if not rows:
        raise ValueError(f"{labels_file} lists no images.")
    if limit is not None:
        rows = rows[:limit]
    images, targets = [], []
    for line, row in enumerate(rows, start=2):
        if len(row) != len(LABEL_HEADER):
            raise ValueError(f"{labels_file}, line {line}: expected {len(LABEL_HEADER)} fields, got {row!r}.")
        path = split / "images" / row[0]
        if not path.is_file():
            raise FileNotFoundError(f"{labels_file}, line {line} names {row[0]!r}, but {path} is missing. {LAYOUT_HELP}")
        with Image.open(path) as img:
            pixels = np.asarray(img.convert("RGB"), dtype=np.uint8)
        height, width = pixels.shape[:2]
        try:
            label, x0, y0, x1, y1 = (float(v) for v in row[1:])
        except ValueError:
            raise ValueError(f"{labels_file}, line {line}: label and corners must be numbers, got {row!r}.") from None
        if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):
            raise ValueError(f"{labels_file}, line {line}: box ({x0}, {y0}, {x1}, {y1}) is not a box inside the "
                             f"{width} x {height} image {row[0]!r} (need 0 <= xmin < xmax <= width, same for y).")
        if images and pixels.shape != images[0].shape:
            raise ValueError(f"{path} is {width} x {height}, but the first image of {split} is "
                             f"{images[0].shape[1]} x {images[0].shape[0]}: all images must have one size.")
        images.append(pixels)
        targets.append([label, x0 / width, y0 / height, x1 / width, y1 / height])
    images_t = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
    return images_t, torch.tensor(targets, dtype=torch.float32).unsqueeze(1)


def read_bananas(folder: Path, is_train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Images uint8 ``(N, 3, H, W)`` and targets float32 ``(N, 1, 5)`` of one split of ``folder``.

    A target is ``[class, x0, y0, x1, y1]`` with the corners divided by the image width and height,
    so in ``[0, 1]``. ``folder`` is in d2l's layout (see :data:`LAYOUT_HELP`); rows keep the order of
    ``label.csv``.
    """
    return _read(folder, is_train)


def load_bananas(batch_size: int, n_train: int | None = None, n_val: int | None = None,
                 size: int | None = None, device=None, dataset: tuple[Path, data.DataSource] | None = None
                 ) -> tuple[data.TensorLoader, data.TensorLoader, data.DataSource]:
    """Banana detection as in-memory minibatches: ``(train_iter, val_iter, source)``.

    Images are float32 in [0, 1], ``(N, 3, size, size)`` (resized once when ``size`` is given; the
    targets ``(N, 1, 5)`` are relative, so they stay as they are). The training set is shuffled;
    ``n_train``/``n_val`` keep the first examples only (smoke mode). Tensors live on ``device``
    (default: :func:`common.config.device`). ``dataset`` is what :func:`banana_folder` returned, if
    the caller has it already: passing it saves a second search (and, offline, a second failed
    download attempt).
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
    for name, value in (("n_train", n_train), ("n_val", n_val), ("size", size)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"{name} must be a positive integer or None, got {value!r}.")
    dev = resolve_device(device)
    folder, source = dataset if dataset is not None else banana_folder()
    loaders = []
    for is_train, limit in ((True, n_train), (False, n_val)):
        images, targets = _read(folder, is_train, limit)
        images = images.to(dev).float().div_(255)
        if size is not None and tuple(images.shape[-2:]) != (size, size):
            images = data.resize_images(images, size)
        loaders.append(data.TensorLoader(images, targets.to(dev), batch_size=batch_size, shuffle=is_train))
    return loaders[0], loaders[1], source
