"""Datasets: a registry of resources, a verified cache, an offline mirror, and loaders.

Every file the course uses is a :class:`Resource` with an upstream URL and a checksum. A file is
looked for, in order, in the cache (``COURSE_DATA``), then in a local mirror directory
(``COURSE_DATA_MIRROR``, same relative paths as the cache), then downloaded. Whatever the
source, its checksum is verified on every use, and files only appear in the cache complete:
they are written to a temporary file, verified, then atomically renamed.
"""
from __future__ import annotations

import contextlib
import difflib
import gzip
import hashlib
import math
import os
import shutil
import struct
import tarfile
import tempfile
import urllib.error
import urllib.request
import warnings
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from .config import device as default_device
from .config import repo_root

D2L_URL = "http://d2l-data.s3-accelerate.amazonaws.com/"
D2L_IMG_URL = "https://raw.githubusercontent.com/d2l-ai/d2l-en/23d7a5aecceee57d1292c56e90cce307f183bb0a/img/"
FASHION_MNIST_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
MNIST_URL = "https://ossci-datasets.s3.amazonaws.com/mnist/"
TORCHVISION_WEIGHTS_URL = "https://download.pytorch.org/models/"


class DataUnavailableError(RuntimeError):
    """A resource could not be found in the cache or the mirror, nor downloaded and verified."""


@dataclass(frozen=True)
class Resource:
    """One file of the course's data.

    ``path`` is where the file lives below the cache (and the mirror); ``checksum`` is its hex
    digest with ``algorithm`` (any name ``hashlib`` knows). A checksum shorter than a full digest
    is a prefix: torchvision publishes only the first 8 hex digits of its weight files' SHA-256.
    When ``archive_member`` is set, ``url`` points to an archive (SHA-1 ``archive_sha1``) and the
    resource is the member of that archive named ``archive_member``. ``url`` is None for a file
    that is only distributed through a data mirror (an offline substitute, never upstream data).
    """

    name: str
    url: str | None
    checksum: str
    path: str
    archive_member: str | None = None
    archive_sha1: str | None = None
    algorithm: str = "sha1"


@dataclass(frozen=True)
class DataSource:
    """Where a dataset came from: the upstream files, or an offline substitute built by a recipe.

    Notebooks print it, and compare their numbers with published ones only when ``upstream``.
    """

    name: str
    upstream: bool
    note: str = ""

    def __str__(self) -> str:
        kind = "upstream data" if self.upstream else "OFFLINE SUBSTITUTE (not the upstream data)"
        return f"{self.name} [{kind}]" + (f": {self.note}" if self.note else "")


def _d2l(name: str, file: str, sha1: str) -> Resource:
    return Resource(name, D2L_URL + file, sha1, file)


def _image(file: str, sha1: str) -> Resource:
    return Resource(f"img/{file}", D2L_IMG_URL + file, sha1, f"img/{file}")


def _idx(folder: str, base_url: str, file: str, sha1: str) -> Resource:
    return Resource(f"{folder}/{file}", base_url + file, sha1, f"{folder}/raw/{file}")


def _weights(file: str) -> Resource:
    """torchvision's ImageNet weights; the file name ends with the first 8 hex digits of its SHA-256."""
    return Resource(file.split("-")[0] + "-imagenet", TORCHVISION_WEIGHTS_URL + file, file.split("-")[1][:8],
                    f"weights/{file}", algorithm="sha256")


RESOURCES: dict[str, Resource] = {
    r.name: r
    for r in [
        _d2l("time_machine", "timemachine.txt", "090b5e7e70c295757f55df93cb0a180b9691891a"),
        _d2l("airfoil", "airfoil_self_noise.dat", "76e5be1548fd8222e5074cf0faae75edff8cf93f"),
        _d2l("kaggle_house_train", "kaggle_house_pred_train.csv", "585e9cc93e70b39160e7921475f9bcd7d31219ce"),
        _d2l("kaggle_house_test", "kaggle_house_pred_test.csv", "fa19780a7b011d9b009e8bff8e99922a8ee2eb90"),
        _d2l("ptb", "ptb.zip", "319d85e578af0cdc590547f26231e4e31cdf1e42"),
        _d2l("banana-detection", "banana-detection.zip", "5de26c8fce5ccdea9f91267273464dc968d20d72"),
        _d2l("voc2012", "VOCtrainval_11-May-2012.tar", "4e443f8a2eca6b1dac8a6c57641b67dd40621a49"),
        _d2l("hotdog", "hotdog.zip", "fba480ffa8aa7e0febbb511d181409f899b9baa5"),
        Resource("cifar-10-python", "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
                 "c58f30108f718f92721af3b95e74349a", "cifar-10-python.tar.gz", algorithm="md5"),
        # A lossy JPEG copy of all 60,000 CIFAR-10 images in image-folder layout; no upstream URL.
        Resource("cifar-10-jpeg", None, "3c3cb5281bf08b463400684d6958055e444f48ee",
                 "CIFAR10-jpg/CIFAR-10-images.tar.gz"),
        _weights("resnet18-f37072fd.pth"),
        _weights("vgg19-dcbb9e9d.pth"),
        _d2l("cifar10_tiny", "kaggle_cifar10_tiny.zip", "2068874e4b9a9f0fb07ebe0ad2b29754449ccacd"),
        # d2l's fra-eng.zip is verified as an archive, then the sentence file inside it by content.
        Resource("fra-eng", D2L_URL + "fra-eng.zip", "c43f99dce27311d3afd4d3e0716848194cfcc103",
                 "fra-eng/fra.txt", archive_member="fra-eng/fra.txt",
                 archive_sha1="94646ad1522d915e7b0f9296181140edcf86a4f5"),
        _image("cat1.jpg", "f9c5b905d908b97eeeb64ff34a46fa8b143f88f8"),
        _image("catdog.jpg", "60b7d540db03eef6b9834329bccc4417ef349bf6"),
        _image("rainier.jpg", "b0193ffd8ecea1631ac1092130017b884faafa30"),
        _image("autumn-oak.jpg", "bbe11f01403b9726bbc625589550e574fc45980a"),
        _image("banana.jpg", "cdcc1e668faf05c173389b6a73d33ed8d44cf4b4"),
        _idx("FashionMNIST", FASHION_MNIST_URL, "train-images-idx3-ubyte.gz", "95978b76b6897f6ca69a25145d01716efb615989"),
        _idx("FashionMNIST", FASHION_MNIST_URL, "train-labels-idx1-ubyte.gz", "09814cfef5a041118ceace42f8dae995319d331a"),
        _idx("FashionMNIST", FASHION_MNIST_URL, "t10k-images-idx3-ubyte.gz", "5edda96c6d8c36ff915115a0e8136d370a021576"),
        _idx("FashionMNIST", FASHION_MNIST_URL, "t10k-labels-idx1-ubyte.gz", "9caad14e1aff9adac77d3744963212d36af15bee"),
        _idx("MNIST", MNIST_URL, "train-images-idx3-ubyte.gz", "6c95f4b05d2bf285e1bfb0e7960c31bd3b3f8a7d"),
        _idx("MNIST", MNIST_URL, "train-labels-idx1-ubyte.gz", "2a80914081dc54586dbdf242f9805a6b8d2a15fc"),
        _idx("MNIST", MNIST_URL, "t10k-images-idx3-ubyte.gz", "c3a25af1f52dad7f726cce8cacb138654b760d48"),
        _idx("MNIST", MNIST_URL, "t10k-labels-idx1-ubyte.gz", "763e7fa3757d93b0cdec073cef058b2004252c17"),
    ]
}


# ---------------------------------------------------------------------------------------------
# Where files live
# ---------------------------------------------------------------------------------------------

def data_dir() -> Path:
    """The cache: ``COURSE_DATA``, else ``data/`` at the root of a checkout, else the user cache."""
    if os.environ.get("COURSE_DATA"):
        return Path(os.environ["COURSE_DATA"]).expanduser().resolve()
    root = repo_root()
    if root is not None:
        return root / "data"
    cache_home = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache_home) / "dl-course"


def mirror_dir() -> Path | None:
    """The offline mirror named by ``COURSE_DATA_MIRROR``, or None."""
    value = os.environ.get("COURSE_DATA_MIRROR")
    return Path(value).expanduser().resolve() if value else None


def resource(name: str) -> Resource:
    """The registered resource called ``name``; a clear error names the close matches."""
    try:
        return RESOURCES[name]
    except KeyError:
        close = difflib.get_close_matches(name, RESOURCES, n=3)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        raise ValueError(f"Unknown dataset resource {name!r}.{hint} Known: {', '.join(sorted(RESOURCES))}.") from None


def digest_of(path: Path, algorithm: str = "sha1") -> str:
    """Hex digest of a file (SHA-1 unless ``algorithm`` says otherwise), read in chunks."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def is_verified(path: Path, res: Resource) -> bool:
    """Whether the file at ``path`` has the checksum of ``res`` (a short checksum is a prefix)."""
    return digest_of(path, res.algorithm).startswith(res.checksum)


# ---------------------------------------------------------------------------------------------
# Fetching: cache -> mirror -> download, always verified
# ---------------------------------------------------------------------------------------------

def fetch(name: str) -> Path:
    """Path of the verified file of resource ``name`` in the cache, fetching it if needed."""
    res = resource(name)
    target = data_dir() / res.path
    problems: list[str] = []
    if target.exists():
        if is_verified(target, res):
            return target
        problems.append(f"the cached file {target} failed its checksum (corrupt or truncated) and was removed")
        target.unlink()
    mirror = mirror_dir()
    if mirror is not None:
        mirrored = mirror / res.path
        if mirrored.exists() and is_verified(mirrored, res):
            _atomic_copy(mirrored, target, res)
            return target
        if mirrored.exists():
            problems.append(f"the mirror file {mirrored} failed its checksum")
            warnings.warn(problems[-1] + "; trying the network", stacklevel=2)
        else:
            problems.append(f"the mirror {mirror} has no {res.path}")
    try:
        _download(res, target)
    except (urllib.error.URLError, OSError, ValueError) as err:
        problems.append(f"the download failed: {err}")
        raise DataUnavailableError(_unavailable_message(res, problems)) from None
    return target


def _unavailable_message(res: Resource, problems: list[str]) -> str:
    mirror = os.environ.get("COURSE_DATA_MIRROR") or "(not set)"
    return (
        f"Cannot get the data resource {res.name!r} ({res.path}).\n"
        f"  upstream URL: {res.url or '(none: this file is only distributed through a data mirror)'}\n"
        f"  cache dir (COURSE_DATA): {data_dir()}\n"
        f"  COURSE_DATA_MIRROR: {mirror}\n"
        f"  what happened: {'; '.join(problems)}.\n"
        "Connect to the network, or put a verified copy at that path in the cache or the mirror."
    )


def _temporary_sibling(target: Path) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    os.close(handle)
    return Path(name)


def _publish(tmp: Path, target: Path, res: Resource, source: str) -> None:
    """Verify ``tmp`` against ``res`` and atomically rename it to ``target``; remove it if it fails."""
    try:
        if not is_verified(tmp, res):
            raise ValueError(f"{source} has {res.algorithm} {digest_of(tmp, res.algorithm)}, expected {res.checksum}")
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def _atomic_copy(source: Path, target: Path, res: Resource) -> None:
    tmp = _temporary_sibling(target)
    shutil.copyfile(source, tmp)
    _publish(tmp, target, res, str(source))


def _download(res: Resource, target: Path, timeout: float = 60.0) -> None:
    """Stream ``res.url`` to a temporary file, verify it and rename it into place."""
    if res.url is None:
        raise ValueError(f"{res.path} has no upstream URL: it is distributed only through a data mirror")
    print(f"Downloading {res.url} ...", end=" ", flush=True)
    tmp = _temporary_sibling(target)
    try:
        try:
            with urllib.request.urlopen(res.url, timeout=timeout) as response, open(tmp, "wb") as out:
                shutil.copyfileobj(response, out, length=1 << 20)
        except (urllib.error.URLError, OSError) as err:
            print(f"failed ({getattr(err, 'reason', err)})", flush=True)
            raise
        print("done", flush=True)
        if res.archive_member is None:
            _publish(tmp, target, res, res.url)
            return
        if digest_of(tmp) != res.archive_sha1:
            raise ValueError(f"{res.url} does not have the expected SHA-1 {res.archive_sha1}")
        member = _temporary_sibling(target)
        with zipfile.ZipFile(tmp) as archive, archive.open(res.archive_member) as src, open(member, "wb") as dst:
            shutil.copyfileobj(src, dst)
        _publish(member, target, res, f"{res.archive_member} in {res.url}")
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def build_folder(folder: Path) -> Iterator[Path]:
    """Build ``folder`` so that it appears complete or not at all.

    Yields an empty temporary folder beside it to fill; when the block ends it is renamed to
    ``folder``, and when the block fails it is removed. If another process finished the same
    folder first, that one is kept.
    """
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.", suffix=".part"))
    try:
        yield tmp
        try:
            os.replace(tmp, folder)
        except OSError:
            if not folder.is_dir():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def extract(name: str) -> Path:
    """Unpack the zip or tar resource ``name`` next to it and return the unpacked folder.

    The archive is unpacked with :func:`build_folder`, so a half-unpacked folder never poses as
    a whole one. An archive holding a single top-level folder is unwrapped.
    """
    archive = fetch(name)
    folder = archive.parent / archive.name.split(".")[0]
    if folder.is_dir():
        return folder
    with build_folder(folder) as tmp:
        unpacked = tmp / ".unpacked"
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as z:
                z.extractall(unpacked)
        elif tarfile.is_tarfile(archive):
            with tarfile.open(archive) as t:
                t.extractall(unpacked, filter="data")
        else:
            raise ValueError(f"{archive} is neither a zip nor a tar archive.")
        entries = list(unpacked.iterdir())
        inner = entries[0] if len(entries) == 1 and entries[0].is_dir() else unpacked
        for entry in inner.iterdir():
            entry.rename(tmp / entry.name)
        shutil.rmtree(unpacked)
    return folder


def read_text(name: str) -> str:
    """The text of a text resource, decoded as UTF-8."""
    return fetch(name).read_text(encoding="utf-8")


# ---------------------------------------------------------------------------------------------
# In-memory minibatches
# ---------------------------------------------------------------------------------------------

class TensorLoader:
    """Minibatches of in-memory tensors, made by index slicing (no per-sample Python work).

    ``transform``, if given, is applied to the first tensor of each batch (e.g. a resize on the
    training device). ``len()`` is the number of batches per epoch; ``tensors`` holds the whole
    data and ``num_examples`` its size.
    """

    def __init__(self, *tensors: torch.Tensor, batch_size: int, shuffle: bool = False,
                 transform: Callable[[torch.Tensor], torch.Tensor] | None = None):
        if not tensors:
            raise ValueError("TensorLoader needs at least one tensor.")
        n = len(tensors[0])
        if n == 0:
            raise ValueError("TensorLoader got empty tensors: there is nothing to batch.")
        if any(len(t) != n for t in tensors):
            raise ValueError(f"All tensors need the same first dimension, got {[len(t) for t in tensors]}.")
        if batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size}.")
        self.tensors, self.batch_size, self.shuffle, self.transform = tensors, batch_size, shuffle, transform

    @property
    def num_examples(self) -> int:
        return len(self.tensors[0])

    def __len__(self) -> int:
        return math.ceil(self.num_examples / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        n, first = self.num_examples, self.tensors[0]
        order = torch.randperm(n, device=first.device) if self.shuffle else None
        for start in range(0, n, self.batch_size):
            index = order[start:start + self.batch_size] if order is not None else slice(start, start + self.batch_size)
            batch = [t[index] for t in self.tensors]
            if self.transform is not None:
                batch[0] = self.transform(batch[0])
            yield tuple(batch)


def load_array(tensors: tuple[torch.Tensor, ...], batch_size: int, shuffle: bool = True) -> TensorLoader:
    """Minibatches over tensors that share their first dimension."""
    return TensorLoader(*tensors, batch_size=batch_size, shuffle=shuffle)


# ---------------------------------------------------------------------------------------------
# Fashion-MNIST (and MNIST)
# ---------------------------------------------------------------------------------------------

FASHION_MNIST_LABELS = ["t-shirt", "trouser", "pullover", "dress", "coat",
                        "sandal", "shirt", "sneaker", "bag", "ankle boot"]

# Resizing the whole set at once is faster, but above this size the resize is done per batch.
_RESIZE_ONCE_LIMIT_BYTES = 1 << 30


def fashion_mnist_labels(indices) -> list[str]:
    """Text labels of Fashion-MNIST class indices."""
    return [FASHION_MNIST_LABELS[int(i)] for i in indices]


def read_idx(path: Path) -> torch.Tensor:
    """The uint8 tensor stored in an IDX file (the MNIST format), gzipped or not.

    The format: two zero bytes, a type code (0x08 for unsigned bytes), the number of dimensions
    n, then n big-endian 32-bit sizes, then the values in row-major order.
    """
    with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[:2] != b"\0\0" or raw[2] != 0x08:
        raise ValueError(f"{path} is not an IDX file of unsigned bytes (header {raw[:4].hex()}).")
    ndim = raw[3]
    shape = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
    values = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if values.size != math.prod(shape):
        raise ValueError(f"{path} holds {values.size} values, but its header promises {shape}: truncated?")
    return torch.from_numpy(values.copy()).reshape(shape)


def _read_mnist_like(dataset_name: str, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (N, 1, 28, 28) as floats in [0, 1] and labels (N,) as int64."""
    if dataset_name not in ("FashionMNIST", "MNIST"):
        raise ValueError(f"Unknown dataset {dataset_name!r}: use 'FashionMNIST' or 'MNIST'.")
    prefix = "train" if train else "t10k"
    images = read_idx(fetch(f"{dataset_name}/{prefix}-images-idx3-ubyte.gz"))
    labels = read_idx(fetch(f"{dataset_name}/{prefix}-labels-idx1-ubyte.gz"))
    if len(images) != len(labels):
        raise ValueError(f"{dataset_name}: {len(images)} images but {len(labels)} labels.")
    return images.unsqueeze(1).float().div_(255), labels.long()


def resize_images(images: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of a batch of images (N, C, H, W) to ``size``."""
    size = (size, size) if isinstance(size, int) else tuple(size)
    return F.interpolate(images, size=size, mode="bilinear", align_corners=False, antialias=False)


def load_mnist_like(dataset_name: str, batch_size: int, resize: int | None = None,
                    n_train: int | None = None, n_test: int | None = None,
                    device: torch.device | str | None = None) -> tuple[TensorLoader, TensorLoader]:
    """Training and test minibatches of Fashion-MNIST or MNIST, held as tensors on ``device``.

    ``n_train``/``n_test`` keep the first examples only (smoke mode). ``resize`` is applied once
    to the whole set when the result is small enough, else per batch on the device.
    """
    dev = torch.device(device) if device is not None else default_device()
    loaders = []
    for train, limit in ((True, n_train), (False, n_test)):
        images, labels = _read_mnist_like(dataset_name, train)
        if limit is not None:
            if limit < 1:
                raise ValueError(f"n_train and n_test must be positive, got {limit}.")
            images, labels = images[:limit], labels[:limit]
        images, labels = images.to(dev), labels.to(dev)
        transform = None
        if resize is not None and resize != images.shape[-1]:
            resized_bytes = images.shape[0] * images.shape[1] * resize * resize * images.element_size()
            if resized_bytes <= _RESIZE_ONCE_LIMIT_BYTES:
                images = resize_images(images, resize)
            else:
                transform = lambda batch, size=resize: resize_images(batch, size)
        loaders.append(TensorLoader(images, labels, batch_size=batch_size, shuffle=train, transform=transform))
    return loaders[0], loaders[1]


def load_fashion_mnist(batch_size: int, resize: int | None = None, n_train: int | None = None,
                       n_test: int | None = None, device: torch.device | str | None = None
                       ) -> tuple[TensorLoader, TensorLoader]:
    """Fashion-MNIST as in-memory minibatches: ``(train_iter, test_iter)``; see :func:`load_mnist_like`."""
    return load_mnist_like("FashionMNIST", batch_size, resize, n_train, n_test, device)
