"""Banana detection: the composed scenes, d2l's folder layout, and the upstream-or-substitute choice."""
import csv
import hashlib
import io
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from common import bananas, data

MIRROR = os.environ.get("COURSE_DATA_MIRROR")
CACHE = data.data_dir()  # the real cache, before any test isolates it
PHOTOS = (bananas.SPRITE_PHOTO, *bananas.BACKGROUND_PHOTOS)


def photos_available() -> bool:
    return all((CACHE / data.resource(p).path).exists()
               or (bool(MIRROR) and (Path(MIRROR) / data.resource(p).path).exists()) for p in PHOTOS)


needs_photos = pytest.mark.skipif(not photos_available(), reason="needs the img/*.jpg photos: set COURSE_DATA_MIRROR")


@pytest.fixture
def photos(isolated_data, monkeypatch):
    """An empty cache, the real photos from the mirror, and no way to reach the upstream archive."""
    has_all = MIRROR and all((Path(MIRROR) / data.resource(p).path).exists() for p in PHOTOS)
    # Else the photos are in the real cache, which has the mirror's layout: serve it as the mirror.
    monkeypatch.setenv("COURSE_DATA_MIRROR", MIRROR if has_all else str(CACHE))
    res = data.resource("banana-detection")
    # Port 9 (discard) on localhost refuses at once: the upstream archive is "unavailable".
    monkeypatch.setitem(data.RESOURCES, res.name, data.Resource(res.name, "http://127.0.0.1:9/banana-detection.zip",
                                                                res.checksum, res.path))
    return isolated_data


def bbox_of(mask: torch.Tensor) -> list[float]:
    rows, cols = torch.nonzero(mask.any(1)).flatten(), torch.nonzero(mask.any(0)).flatten()
    return [float(cols[0]), float(rows[0]), float(cols[-1] + 1), float(rows[-1] + 1)]


# ---------------------------------------------------------------------------------------------
# Composing scenes
# ---------------------------------------------------------------------------------------------

@needs_photos
def test_sprite_is_a_yellow_banana_trimmed_to_its_mask(photos):
    rgb, mask = bananas.banana_sprite()
    assert rgb.dtype == torch.uint8 and rgb.shape[0] == 3 and mask.dtype == torch.bool
    assert rgb.shape[1:] == mask.shape
    assert bbox_of(mask) == [0, 0, mask.shape[1], mask.shape[0]]  # trimmed
    assert 0.2 < mask.float().mean() < 0.6  # a crescent fills part of its box (0.32)
    inside, outside = rgb[:, mask].float(), rgb[:, ~mask].float()
    assert (inside[0] > inside[2] + 60).float().mean() > 0.95  # yellow: red well above blue
    assert inside.mean() > outside.mean() + 50  # brighter than the fur and grass around it


@needs_photos
def test_identity_and_flip_transforms_reproduce_the_sprite(photos):
    rgb, mask = bananas._sprite_arrays()
    colour, new_mask = bananas._transform_sprite(rgb, mask, scale=1.0, angle=0.0, flip=False)
    np.testing.assert_array_equal(new_mask, mask)
    np.testing.assert_allclose(colour[mask], rgb[mask].astype(np.float32), atol=1e-3)
    colour, new_mask = bananas._transform_sprite(rgb, mask, scale=1.0, angle=0.0, flip=True)
    np.testing.assert_array_equal(new_mask, mask[:, ::-1])
    np.testing.assert_allclose(colour[new_mask], rgb[:, ::-1][mask[:, ::-1]].astype(np.float32), atol=1e-3)


@needs_photos
def test_composed_scenes_have_exact_boxes_and_change_only_the_mask(photos):
    size = (96, 128)  # (height, width): not square, so a swapped axis would show
    images, masks, boxes, backgrounds = bananas._compose(6, size, seed=3)
    assert images.shape == (6, 3, 96, 128) and images.dtype == torch.uint8
    assert masks.shape == (6, 96, 128) and masks.dtype == torch.bool
    assert boxes.shape == (6, 4) and boxes.dtype == torch.float32
    for image, mask, box, background in zip(images, masks, boxes, backgrounds):
        assert box.tolist() == bbox_of(mask)
        side = float(max(box[2] - box[0], box[3] - box[1])) / min(size)
        assert 0.07 < side < 0.5  # roughly 10%..40% of the scene (rotation adds a little)
        assert torch.equal(image[:, ~mask], background[:, ~mask])
        pasted = image[:, mask].float()
        assert (pasted[0] > pasted[2] + 40).float().mean() > 0.9  # the pasted pixels are banana yellow
    public = bananas.compose_banana_scenes(6, size, seed=3)
    assert all(torch.equal(a, b) for a, b in zip(public, (images, masks, boxes)))


@needs_photos
def test_composition_is_deterministic_per_seed(photos):
    first = bananas.compose_banana_scenes(3, (64, 64), seed=5)
    again = bananas.compose_banana_scenes(3, (64, 64), seed=5)
    other = bananas.compose_banana_scenes(3, (64, 64), seed=6)
    prefix = bananas.compose_banana_scenes(2, (64, 64), seed=5)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not torch.equal(first[0], other[0]) and not torch.equal(first[2], other[2])
    assert all(torch.equal(a[:2], b) for a, b in zip(first, prefix))  # scene i depends on (seed, i) only


@pytest.mark.parametrize("kwargs, message", [
    (dict(num=0), "num must be a positive integer"),
    (dict(num=2.5), "num must be a positive integer"),
    (dict(num=2, size=(8, 64)), "at least 16 pixels"),
    (dict(num=2, size=64), r"pair of integers \(height, width\)"),
    (dict(num=2, size=(64, 64, 3)), "pair of integers"),
    (dict(num=2, seed=-1), "seed must be a non-negative integer"),
])
def test_compose_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        bananas.compose_banana_scenes(**kwargs)


# ---------------------------------------------------------------------------------------------
# Reading d2l's layout (fixtures written here, in the upstream format)
# ---------------------------------------------------------------------------------------------

WIDTH, HEIGHT = 40, 30
ROWS = [("0.png", 0, 2, 3, 12, 20), ("1.png", 0, 0, 0, 40, 30), ("2.png", 0, 25, 10, 39, 29)]


def write_split(split: Path, rows=ROWS, header=bananas.LABEL_HEADER) -> list[np.ndarray]:
    """Images with distinct pixels and a label.csv, as in d2l's banana-detection folders."""
    (split / "images").mkdir(parents=True)
    pixels = []
    for k, row in enumerate(rows):
        array = np.random.default_rng(k).integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)
        Image.fromarray(array).save(split / "images" / row[0])
        pixels.append(array)
    with open(split / "label.csv", "w", newline="") as f:
        csv.writer(f).writerows([header, *rows])
    return pixels


def write_upstream(folder: Path) -> dict[bool, list[np.ndarray]]:
    return {is_train: write_split(folder / bananas.SPLITS[is_train]) for is_train in (True, False)}


def test_read_bananas_reads_d2l_layout(tmp_path):
    pixels = write_upstream(tmp_path)
    images, targets = bananas.read_bananas(tmp_path, is_train=True)
    assert images.shape == (3, 3, HEIGHT, WIDTH) and images.dtype == torch.uint8
    assert targets.shape == (3, 1, 5) and targets.dtype == torch.float32
    assert torch.equal(images, torch.from_numpy(np.stack(pixels[True])).permute(0, 3, 1, 2))
    expected = [[[c, x0 / WIDTH, y0 / HEIGHT, x1 / WIDTH, y1 / HEIGHT]] for _, c, x0, y0, x1, y1 in ROWS]
    assert torch.allclose(targets, torch.tensor(expected))
    assert ((targets[..., 1:] >= 0) & (targets[..., 1:] <= 1)).all()


def test_read_bananas_missing_label_file_names_it_and_the_layout(tmp_path):
    write_split(tmp_path / "bananas_train")
    with pytest.raises(FileNotFoundError, match=r"bananas_val.label\.csv.*Expected d2l's banana-detection layout"):
        bananas.read_bananas(tmp_path, is_train=False)


def test_read_bananas_rejects_a_wrong_header(tmp_path):
    write_split(tmp_path / "bananas_train", header=["name", "label", "x0", "y0", "x1", "y1"])
    with pytest.raises(ValueError, match="header 'name,label,x0,y0,x1,y1', expected 'img_name,label,xmin"):
        bananas.read_bananas(tmp_path, is_train=True)


def test_read_bananas_missing_image_is_named(tmp_path):
    write_split(tmp_path / "bananas_train")
    (tmp_path / "bananas_train" / "images" / "1.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"line 3 names '1.png'.*is missing"):
        bananas.read_bananas(tmp_path, is_train=True)


@pytest.mark.parametrize("row, message", [
    (("0.png", 0, 2, 3, 41, 20), "not a box inside the 40 x 30 image"),
    (("0.png", 0, 12, 3, 2, 20), "need 0 <= xmin < xmax <= width"),
    (("0.png", 0, -1, 3, 12, 20), "not a box inside"),
    (("0.png", 0, "a", 3, 12, 20), "must be numbers"),
])
def test_read_bananas_rejects_bad_boxes(tmp_path, row, message):
    write_split(tmp_path / "bananas_train", rows=[row])
    with pytest.raises(ValueError, match=message):
        bananas.read_bananas(tmp_path, is_train=True)


@pytest.mark.parametrize("kwargs, message", [
    (dict(batch_size=0), "batch_size must be a positive integer"),
    (dict(batch_size=2, n_train=0), "n_train must be a positive integer"),
    (dict(batch_size=2, size=-3), "size must be a positive integer"),
])
def test_load_bananas_rejects_bad_sizes(kwargs, message):
    with pytest.raises(ValueError, match=message):
        bananas.load_bananas(**kwargs)


# ---------------------------------------------------------------------------------------------
# Upstream first, else the composed substitute
# ---------------------------------------------------------------------------------------------

@needs_photos
def test_without_upstream_the_substitute_is_built_once(photos, monkeypatch):
    monkeypatch.setattr(bananas, "NUM_TRAIN", 5)
    monkeypatch.setattr(bananas, "NUM_VAL", 3)
    monkeypatch.setattr(bananas, "IMAGE_SIZE", 48)
    folder, source = bananas.banana_folder()
    assert folder == photos / "composed" / "banana-detection-v1-5-3-48px"  # sizes in the name
    assert not source.upstream and "SUBSTITUTE" in str(source) and "substitute" in source.name
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")]  # no half-built folder left
    for is_train, num, seed in ((True, 5, bananas.TRAIN_SEED), (False, 3, bananas.VAL_SEED)):
        images, targets = bananas.read_bananas(folder, is_train)
        scenes, masks, boxes = bananas.compose_banana_scenes(num, (48, 48), seed)
        assert torch.equal(images, scenes)  # PNG is lossless
        assert torch.allclose(targets[:, 0, 1:], boxes / 48)
        assert (targets[:, 0, 0] == 0).all()
    monkeypatch.setattr(bananas, "_write_split", lambda *args: pytest.fail("the cached substitute was rebuilt"))
    assert bananas.banana_folder()[0] == folder
    train_iter, val_iter, source = bananas.load_bananas(batch_size=2, n_train=4, device="cpu")
    assert train_iter.num_examples == 4 and val_iter.num_examples == 3 and not source.upstream


def test_upstream_archive_is_used_when_available(isolated_data, http_server, monkeypatch, tmp_path):
    served, url = http_server
    pixels = write_upstream(tmp_path / "upstream" / "banana-detection")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        for path in sorted((tmp_path / "upstream").rglob("*")):
            z.write(path, path.relative_to(tmp_path / "upstream").as_posix())
    (served / "banana-detection.zip").write_bytes(buffer.getvalue())
    sha1 = hashlib.sha1(buffer.getvalue()).hexdigest()
    monkeypatch.setitem(data.RESOURCES, "banana-detection",
                        data.Resource("banana-detection", url + "banana-detection.zip", sha1, "banana-detection.zip"))
    folder, source = bananas.banana_folder()
    assert folder == isolated_data / "banana-detection" and source.upstream
    assert "substitute" not in str(source).lower()
    train_iter, val_iter, source = bananas.load_bananas(batch_size=2, n_val=2, size=20, device="cpu")
    assert source.upstream and train_iter.num_examples == 3 and val_iter.num_examples == 2
    monkeypatch.setattr(bananas, "banana_folder", lambda: pytest.fail("the folder was looked up again"))
    again = bananas.load_bananas(batch_size=2, n_val=2, size=20, device="cpu", dataset=(folder, source))
    assert torch.equal(next(iter(again[1]))[0], next(iter(val_iter))[0])
    x, y = next(iter(val_iter))
    assert x.shape == (2, 3, 20, 20) and x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1
    expected = torch.tensor([[[c, x0 / WIDTH, y0 / HEIGHT, x1 / WIDTH, y1 / HEIGHT]] for _, c, x0, y0, x1, y1 in ROWS[:2]])
    assert torch.allclose(y, expected)  # relative corners survive the resize unchanged
    full = torch.from_numpy(np.stack(pixels[False][:2])).permute(0, 3, 1, 2).float() / 255
    assert torch.allclose(x, data.resize_images(full, 20), atol=1e-6)
