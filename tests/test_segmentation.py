"""Semantic segmentation data: colormap, the VOC2012 reader on a self-written fixture, the substitute."""
import hashlib
import io
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from common import bananas, data
from common import segmentation as seg

# The real data mirror, read before any fixture hides it (for the test with the real composer).
REAL_MIRROR = os.environ.get("COURSE_DATA_MIRROR")
OFFLINE_URL = "http://127.0.0.1:9/VOCtrainval_11-May-2012.tar"  # nothing listens on port 9


# ---------------------------------------------------------------------------------------------
# Colormap
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("index, rgb", [
    (0, (0, 0, 0)), (1, (128, 0, 0)), (2, (0, 128, 0)), (3, (128, 128, 0)), (4, (0, 0, 128)),
    (8, (64, 0, 0)), (15, (192, 128, 128)), (20, (0, 64, 128)), (255, (224, 224, 192)),
])
def test_colormap_known_entries(index, rgb):
    assert seg.VOC_COLORMAP[index] == rgb


def test_colormap_is_256_distinct_colours_and_21_classes():
    assert len(seg.VOC_COLORMAP) == 256 and len(set(seg.VOC_COLORMAP)) == 256
    assert len(seg.VOC_CLASSES) == 21 and seg.VOC_CLASSES[15] == "person"
    assert seg.voc_colormap(21) == seg.VOC_COLORMAP[:21]
    for bad in (0, 257, 2.0):
        with pytest.raises(ValueError, match="n must be"):
            seg.voc_colormap(bad)


def test_rgb_to_label_inverts_the_colormap():
    torch.manual_seed(0)
    label = torch.randint(0, 256, (7, 9))
    rgb = seg.label_to_rgb(label)
    assert rgb.shape == (3, 7, 9) and rgb.dtype == torch.uint8
    assert tuple(rgb[:, 0, 0].tolist()) == seg.VOC_COLORMAP[int(label[0, 0])]
    assert torch.equal(seg.rgb_to_label(rgb), label)
    table = seg.colormap_to_label()
    assert table.shape == (256 ** 3,)
    assert int(table[(128 * 256 + 0) * 256 + 0]) == 1 and int(table[(224 * 256 + 224) * 256 + 192]) == 255
    assert int(table[(1 * 256 + 2) * 256 + 3]) == -1  # not a VOC colour


def test_rgb_to_label_rejects_bad_input():
    rgb = torch.zeros(3, 2, 2, dtype=torch.uint8)
    rgb[:, 1, 1] = torch.tensor([1, 2, 3], dtype=torch.uint8)
    with pytest.raises(ValueError, match=r"1 pixels have colours outside the colormap, e.g. \(1, 2, 3\)"):
        seg.rgb_to_label(rgb)
    with pytest.raises(ValueError, match=r"uint8 tensor \(3, H, W\)"):
        seg.rgb_to_label(torch.zeros(2, 2, 3, dtype=torch.uint8))
    with pytest.raises(ValueError, match="repeated colours"):
        seg.colormap_to_label([(0, 0, 0), (0, 0, 0)])
    with pytest.raises(ValueError, match="0..255"):
        seg.label_to_rgb(torch.full((2, 2), 256))


# ---------------------------------------------------------------------------------------------
# A tiny VOC2012 in the upstream layout, written by the tests
# ---------------------------------------------------------------------------------------------

def make_example(height, width, seed):
    """An RGB image (H, W, 3) uint8 and a label map (H, W) uint8 with classes 0, 15, 12 and void."""
    rng = np.random.default_rng(seed)
    image = np.zeros((height, width, 3), dtype=np.uint8)
    image[...] = rng.integers(0, 256, 3, dtype=np.uint8)  # a flat colour compresses losslessly enough
    label = np.zeros((height, width), dtype=np.uint8)
    label[height // 4: 3 * height // 4, width // 4: width // 2] = 15
    label[height // 2:, 3 * width // 4:] = 12
    label[height // 4 - 1, width // 4: width // 2] = 255  # a void border line
    return image, label


def write_voc(voc, examples, train_ids, val_ids, rgb_label_ids=()):
    """Write examples {id: (image, label)} in the VOC2012 layout under ``voc``."""
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (voc / sub).mkdir(parents=True, exist_ok=True)
    palette = [v for rgb in seg.VOC_COLORMAP for v in rgb]
    for image_id, (image, label) in examples.items():
        Image.fromarray(image).save(voc / "JPEGImages" / f"{image_id}.jpg", quality=95)
        png = Image.fromarray(label)
        png.putpalette(palette)
        if image_id in rgb_label_ids:  # some tools save the colour rendering instead of indices
            png = png.convert("RGB")
        png.save(voc / "SegmentationClass" / f"{image_id}.png")
    for name, ids in (("train", train_ids), ("val", val_ids)):
        (voc / "ImageSets" / "Segmentation" / f"{name}.txt").write_text("".join(f"{i}\n" for i in ids))


EXAMPLES = {
    "2007_000032": make_example(40, 60, 0),
    "2007_000039": make_example(48, 64, 1),
    "2007_000063": make_example(24, 30, 2),  # smaller than the crops used below
    "2008_000001": make_example(36, 52, 3),
}
TRAIN_IDS = ["2007_000032", "2007_000039", "2007_000063"]
VAL_IDS = ["2008_000001"]


@pytest.fixture
def voc_dir(tmp_path):
    voc = tmp_path / "VOCdevkit" / "VOC2012"
    write_voc(voc, EXAMPLES, TRAIN_IDS, VAL_IDS, rgb_label_ids={"2007_000039"})
    return voc


@pytest.fixture
def served_voc(isolated_data, http_server, monkeypatch, voc_dir):
    """The tiny VOC2012 as a tar like VOCtrainval_11-May-2012.tar, served as resource 'voc2012'."""
    folder, url = http_server
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        tar.add(voc_dir.parent, arcname="VOCdevkit")
    tar_bytes = buffer.getvalue()
    (folder / "VOCtrainval_11-May-2012.tar").write_bytes(tar_bytes)
    res = data.Resource("voc2012", url + "VOCtrainval_11-May-2012.tar", hashlib.sha1(tar_bytes).hexdigest(),
                        "VOCtrainval_11-May-2012.tar")
    monkeypatch.setitem(data.RESOURCES, "voc2012", res)
    return isolated_data


def test_upstream_voc_is_found_and_read_exactly(served_voc):
    folder, source = seg.voc_folder()
    assert source.upstream and source.name == "voc2012"
    assert folder.name == "VOC2012" and served_voc in folder.parents
    images, labels = seg.read_voc_images(folder, is_train=True)
    assert len(images) == len(labels) == 3
    for image_id, image, label in zip(TRAIN_IDS, images, labels):
        expected_image, expected_label = EXAMPLES[image_id]
        assert image.dtype == torch.uint8 and image.shape == (3, *expected_label.shape)
        assert label.dtype == torch.int64
        assert torch.equal(label, torch.from_numpy(expected_label).long())  # also the RGB-saved PNG
        # JPEG is lossy, but a flat colour survives almost exactly.
        assert (image.permute(1, 2, 0).int() - torch.from_numpy(expected_image).int()).abs().max() <= 2
    assert set(torch.cat([label.flatten() for label in labels]).unique().tolist()) == {0, 12, 15, 255}
    val_images, _ = seg.read_voc_images(folder, is_train=False)
    assert [tuple(i.shape[1:]) for i in val_images] == [EXAMPLES[i][1].shape for i in VAL_IDS]
    assert seg.voc_classes(folder) == seg.VOC_CLASSES
    assert len(seg.read_voc_images(folder, True, limit=2)[0]) == 2


def test_load_voc_segmentation_on_upstream_layout(served_voc, capsys):
    train_iter, val_iter, classes, source = seg.load_voc_segmentation(2, (32, 48))
    assert "train: kept 2 of 3 images" in capsys.readouterr().out  # the 24x30 image is dropped
    assert source.upstream and classes == seg.VOC_CLASSES
    batches = list(train_iter)
    assert len(batches) == 1  # 2 images, batch 2
    X, Y = batches[0]
    assert X.shape == (2, 3, 32, 48) and X.dtype == torch.float32
    assert Y.shape == (2, 32, 48) and Y.dtype == torch.int64
    assert set(Y.unique().tolist()) <= {0, 12, 15, 255}
    (Xv, Yv), = list(val_iter)
    assert Xv.shape == (1, 3, 32, 48) and Yv.shape == (1, 32, 48)


def test_dataset_normalises_with_imagenet_statistics(voc_dir):
    dataset = seg.VOCSegDataset(False, (36, 52), voc_dir)  # the crop is the whole val image
    features, labels = dataset[0]
    images, expected = seg.read_voc_images(voc_dir, is_train=False)
    mean = torch.tensor(seg.IMAGENET_MEAN).reshape(3, 1, 1)
    std = torch.tensor(seg.IMAGENET_STD).reshape(3, 1, 1)
    # (a plain comparison: torch.testing's first call costs over a second of imports)
    assert (features * std + mean - images[0].float() / 255).abs().max() < 1e-5
    assert torch.equal(labels, expected[0])


def test_missing_files_and_bad_layout_are_named(voc_dir):
    (voc_dir / "JPEGImages" / "2007_000039.jpg").unlink()
    with pytest.raises(FileNotFoundError, match="JPEGImages/2007_000039.jpg"):
        seg.read_voc_images(voc_dir, is_train=True)
    assert len(seg.read_voc_images(voc_dir, is_train=False)[0]) == 1  # the val split is whole
    (voc_dir / "SegmentationClass" / "2008_000001.png").unlink()
    with pytest.raises(FileNotFoundError, match="SegmentationClass/2008_000001.png"):
        seg.read_voc_images(voc_dir, is_train=False)
    (voc_dir / "ImageSets" / "Segmentation" / "val.txt").unlink()
    with pytest.raises(FileNotFoundError, match="missing ImageSets/Segmentation/val.txt"):
        seg.read_voc_images(voc_dir, is_train=True)
    with pytest.raises(FileNotFoundError, match="missing JPEGImages, SegmentationClass"):
        seg.read_voc_images(voc_dir.parent, is_train=True)


def test_mismatched_label_size_and_bad_labelmap(voc_dir):
    png = Image.fromarray(np.zeros((10, 10), dtype=np.uint8))
    png.save(voc_dir / "SegmentationClass" / "2008_000001.png")
    with pytest.raises(ValueError, match=r"2008_000001 is \(36, 52\) but its label map is \(10, 10\)"):
        seg.read_voc_images(voc_dir, is_train=False)
    (voc_dir / "labelmap.txt").write_text("background\n")
    with pytest.raises(ValueError, match="at least two class names"):
        seg.voc_classes(voc_dir)


def test_crop_larger_than_every_image_and_bad_arguments(voc_dir, served_voc):
    with pytest.raises(ValueError, match=r"crop 100x100 is larger than every one of the 3 train images \(largest 48x64\)"):
        seg.VOCSegDataset(True, (100, 100), voc_dir)
    for bad in [(0, 10), (10,), (10.0, 10), "32x48"]:
        with pytest.raises(ValueError, match="crop_size|Crop"):
            seg.load_voc_segmentation(2, bad)
    with pytest.raises(ValueError, match="batch_size"):
        seg.load_voc_segmentation(0, (32, 48))
    with pytest.raises(ValueError, match="n_train"):
        seg.load_voc_segmentation(2, (32, 48), n_train=0)
    with pytest.raises(ValueError, match="fewer than batch_size=3"):
        seg.load_voc_segmentation(3, (32, 48))  # 2 train images fit the crop
    with pytest.raises(ValueError, match="limit"):
        seg.read_voc_images(voc_dir, True, limit=0)


# ---------------------------------------------------------------------------------------------
# Random crops
# ---------------------------------------------------------------------------------------------

def test_rand_crop_takes_the_same_window_of_image_and_label():
    h, w = 12, 17
    # Each pixel's value encodes its position, in the image (3 channels) and in the label.
    position = torch.arange(h * w).reshape(h, w)
    image = torch.stack((position, position + 1, position + 2))
    torch.manual_seed(0)
    corners = set()
    for _ in range(30):
        crop, label = seg.voc_rand_crop(image, position, 5, 7)
        assert crop.shape == (3, 5, 7) and label.shape == (5, 7)
        assert torch.equal(crop[0], label) and torch.equal(crop[2], label + 2)
        top, left = divmod(int(label[0, 0]), w)
        assert torch.equal(label, position[top:top + 5, left:left + 7])
        corners.add((top, left))
    assert len(corners) > 10  # the window moves
    crop, label = seg.voc_rand_crop(image, position, h, w)  # the whole image is the only window
    assert torch.equal(label, position)


@pytest.mark.parametrize("height, width, match", [
    (13, 5, "Cannot crop 13x5 out of a 12x17 image"), (5, 18, "Cannot crop 5x18"),
    (0, 5, "height must be a positive integer"), (5, 2.5, "width must be a positive integer"),
])
def test_rand_crop_rejects_bad_sizes(height, width, match):
    with pytest.raises(ValueError, match=match):
        seg.voc_rand_crop(torch.zeros(3, 12, 17), torch.zeros(12, 17), height, width)


def test_rand_crop_rejects_mismatched_label():
    with pytest.raises(ValueError, match=r"label must be a tensor \(H, W\) = \(12, 17\)"):
        seg.voc_rand_crop(torch.zeros(3, 12, 17), torch.zeros(12, 16), 5, 5)


# ---------------------------------------------------------------------------------------------
# The offline substitute
# ---------------------------------------------------------------------------------------------

def fake_scenes(num, size=(256, 256), seed=0):
    """A stand-in for compose_banana_scenes: smooth colour ramps, one rectangle mask each."""
    h, w = size
    ramp = torch.linspace(0, 1, w).expand(h, w)
    colours = torch.tensor([[40.0, 90, 140], [200, 60, 20]])[:, :, None, None]
    images = torch.stack([(colours[(seed + i) % 2] * (0.5 + ramp)).clamp(0, 255) for i in range(num)]).to(torch.uint8)
    masks = torch.zeros(num, h, w, dtype=torch.bool)
    boxes = torch.zeros(num, 4)
    for i in range(num):
        top, left = 2 + i, 5 + 2 * i  # one rectangle touching nothing, and one at the border
        bottom, right = (top + 10, left + 15) if i % 2 == 0 else (h, w)
        masks[i, top:bottom, left:right] = True
        boxes[i] = torch.tensor([left, top, right, bottom])
    return images, masks, boxes


@pytest.fixture
def offline_voc(isolated_data, monkeypatch):
    """voc2012 unavailable; a small substitute (3 train + 2 val scenes of 30 x 40)."""
    monkeypatch.setitem(data.RESOURCES, "voc2012", data.Resource("voc2012", OFFLINE_URL, "0" * 40,
                                                                 "VOCtrainval_11-May-2012.tar"))
    monkeypatch.setattr(seg, "SUBSTITUTE_SIZES", {"train": 3, "val": 2})
    monkeypatch.setattr(seg, "SUBSTITUTE_IMAGE_SIZE", (30, 40))
    return isolated_data


def expected_labels(masks):
    """1 on the mask, 255 on the 2-pixel ring around it (8-neighbourhood), 0 elsewhere."""
    labels = masks.long()
    for i, mask in enumerate(masks):
        ys, xs = torch.nonzero(mask, as_tuple=True)
        for y in range(mask.shape[0]):
            for x in range(mask.shape[1]):
                if not mask[y, x] and ((ys - y).abs().maximum((xs - x).abs()) <= 2).any():
                    labels[i, y, x] = 255
    return labels


def test_substitute_is_built_when_upstream_is_unavailable(offline_voc, monkeypatch):
    calls = []

    def spy(num, size=(256, 256), seed=0):
        calls.append((num, size, seed))
        return fake_scenes(num, size, seed)

    monkeypatch.setattr(bananas, "compose_banana_scenes", spy)
    folder, source = seg.voc_folder()
    assert not source.upstream and "substitute" in source.name and "banana-voc-v1" in source.note
    assert folder.name == "VOC2012" and offline_voc / "composed" in folder.parents
    assert calls == [(3, (30, 40), seg.SUBSTITUTE_SEEDS["train"]), (2, (30, 40), seg.SUBSTITUTE_SEEDS["val"])]
    assert len(set(seg.SUBSTITUTE_SEEDS.values()) | {bananas.TRAIN_SEED, bananas.VAL_SEED}) == 4
    for is_train, num in ((True, 3), (False, 2)):
        images, labels = seg.read_voc_images(folder, is_train)
        scenes, masks, _ = fake_scenes(num, (30, 40), seg.SUBSTITUTE_SEEDS["train" if is_train else "val"])
        assert torch.equal(torch.stack(labels), expected_labels(masks))
        assert all(image.shape == (3, 30, 40) for image in images)
        # JPEG quality 95 is lossy, but smooth images come back within a few levels.
        error = (torch.stack(images).float() - scenes.float()).abs().mean()
        assert error < 2, error
    assert seg.voc_classes(folder) == ["background", "banana"]
    with Image.open(folder / "SegmentationClass" / "banana_train_000000.png") as png:
        assert png.mode == "P" and png.getpalette()[:9] == [0, 0, 0, 128, 0, 0, 0, 128, 0]
    # Built once: a second call reuses the folder and leaves no temporary folders behind.
    assert seg.voc_folder()[0] == folder and len(calls) == 2
    assert not [p for p in (offline_voc / "composed").iterdir() if p.name.startswith(".")]


@pytest.mark.skipif(not (REAL_MIRROR and (Path(REAL_MIRROR) / "img" / "banana.jpg").exists()),
                    reason="needs the data mirror's photos (COURSE_DATA_MIRROR)")
def test_substitute_with_the_real_composer(offline_voc, monkeypatch):
    monkeypatch.setenv("COURSE_DATA_MIRROR", REAL_MIRROR)
    monkeypatch.setattr(seg, "SUBSTITUTE_SIZES", {"train": 2, "val": 1})
    monkeypatch.setattr(seg, "SUBSTITUTE_IMAGE_SIZE", (75, 100))
    folder, source = seg.voc_folder()
    _, labels = seg.read_voc_images(folder, is_train=True)
    _, masks, _ = bananas.compose_banana_scenes(2, (75, 100), seg.SUBSTITUTE_SEEDS["train"])
    labels = torch.stack(labels)
    assert torch.equal(labels == 1, masks)
    assert set(labels.unique().tolist()) == {0, 1, 255}


def test_substitute_loader(offline_voc, monkeypatch, capsys):
    monkeypatch.setattr(bananas, "compose_banana_scenes", fake_scenes)
    train_iter, val_iter, classes, source = seg.load_voc_segmentation(2, (16, 24), n_val=1)
    assert "train: kept 3 of 3" in capsys.readouterr().out
    assert classes == ["background", "banana"] and not source.upstream
    assert len(train_iter) == 1 and len(val_iter) == 1  # drop_last on train only
    X, Y = next(iter(train_iter))
    assert X.shape == (2, 3, 16, 24) and Y.shape == (2, 16, 24) and Y.dtype == torch.int64
    assert set(Y.unique().tolist()) <= {0, 1, 255}
