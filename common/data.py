"""Datasets: a registry of resources, a verified cache, an offline mirror, and loaders.

Every file the course uses is a :class:`Resource` with an upstream URL and a checksum. A file is
looked for, in order, in the cache (``COURSE_DATA``), then in a local mirror directory
(``COURSE_DATA_MIRROR``, same relative paths as the cache), then downloaded. Whatever the
source, its checksum is verified on every use, and files only appear in the cache complete:
they are written to a temporary file, verified, then atomically renamed.

Folders (unpacked archives, datasets built by a recipe) appear the same way, complete or not at
all, with a marker file written last that names what they were built from; a folder without
that marker is rebuilt. Temporary ``.part`` files and folders carry the host name and process id
of their writer, so that the ones a killed process left behind are swept away, and only those.
"""
from __future__ import annotations

import contextlib
import difflib
import gzip
import hashlib
import math
import os
import re
import secrets
import shutil
import socket
import struct
import sys
import tarfile
import time
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

from .checks import check_int
from .config import estimate_steps, repo_root, resolve_device

D2L_URL = "http://d2l-data.s3-accelerate.amazonaws.com/"
D2L_IMG_URL = "https://raw.githubusercontent.com/d2l-ai/d2l-en/23d7a5aecceee57d1292c56e90cce307f183bb0a/img/"
FASHION_MNIST_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
MNIST_URL = "https://ossci-datasets.s3.amazonaws.com/mnist/"
TORCHVISION_WEIGHTS_URL = "https://download.pytorch.org/models/"


class DataUnavailableError(RuntimeError):
    """A resource could not be found in the cache or the mirror, nor downloaded and verified."""


class CacheError(RuntimeError):
    """A path in the data cache (``COURSE_DATA``) is in the way or cannot be written."""


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



@dataclass(frozen=True)
class PackagedFile:
    """A real dataset that a declared dependency ships inside its wheel (no download needed).

    ``path`` is relative to the installed ``package``; ``sha1`` is checked on every use, so a
    package release that changed its copy is noticed instead of silently used.
    """

    name: str
    package: str
    path: str
    sha1: str
    install: str  # what to pip install when the package is missing


# digits.csv.gz is the same file in scikit-learn 1.3.0 (the declared floor) and 1.9.1.
# vega_datasets 0.9.0 (the declared floor, and its latest release) ships NOAA's Seattle weather:
# observed daily weather of 2012-2015, and hourly temperatures labelled 2010 (degrees F) that are a
# smooth climatological curve, not observations (each day nearly repeats the one before: the same
# hour a day earlier is off by 0.16 F on average, the next hour by 0.94 F). Forecast the daily file.
PACKAGED_FILES: dict[str, PackagedFile] = {
    "sklearn-digits": PackagedFile("sklearn-digits", "sklearn", "datasets/data/digits.csv.gz",
                                   "e0cd714d06606e7585101a8fd0314cbd1307e336", "scikit-learn"),
    "seattle-temps": PackagedFile("seattle-temps", "vega_datasets", "_data/seattle-temps.csv",
                                  "23f4ae673d593f9568fcf895da8d4d8e6f1bac2d", "vega_datasets"),
    "seattle-weather": PackagedFile("seattle-weather", "vega_datasets", "_data/seattle-weather.csv",
                                    "7c9ee714375f57d2108b2fb521f56be662545658", "vega_datasets"),
}


def packaged_file(name: str) -> Path:
    """Path of the verified file ``name`` of :data:`PACKAGED_FILES`, inside its installed package."""
    import importlib.util

    if name not in PACKAGED_FILES:
        raise KeyError(f"No packaged data file called {name!r}; known: {', '.join(sorted(PACKAGED_FILES))}.")
    entry = PACKAGED_FILES[name]
    spec = importlib.util.find_spec(entry.package)
    if spec is None or not spec.submodule_search_locations:
        raise DataUnavailableError(f"{name} ships with the package {entry.package!r}, which is not installed: "
                                   f"pip install {entry.install} (a dependency of the course).")
    path = Path(list(spec.submodule_search_locations)[0]) / entry.path
    if not path.is_file():
        raise DataUnavailableError(f"{name}: {path} is missing from the installed {entry.package!r}. Reinstall it "
                                   f"(pip install --force-reinstall {entry.install}).")
    found = digest_of(path)
    if found != entry.sha1:
        raise DataUnavailableError(f"{name}: {path} has SHA-1 {found}, not the registered {entry.sha1}: this "
                                   f"release of {entry.install} ships a different file. Check it and update "
                                   "PACKAGED_FILES in common/data.py.")
    return path


# ---------------------------------------------------------------------------------------------
# Where files live
# ---------------------------------------------------------------------------------------------

def data_dir() -> Path:
    """The cache: ``COURSE_DATA``, else ``data/`` at the root of a checkout, else the user cache."""
    if os.environ.get("COURSE_DATA"):
        path = Path(os.environ["COURSE_DATA"]).expanduser().resolve()
        if path.exists() and not path.is_dir():
            raise CacheError(f"COURSE_DATA={os.environ['COURSE_DATA']!r} names {path}, which is a file, not a "
                             "folder. Set COURSE_DATA to a folder (it is created if missing), or unset it.")
        return path
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
    """Path of the verified file of resource ``name`` in the cache, fetching it if needed.

    A damaged cached file is replaced in one atomic rename, never deleted first, so that
    processes sharing the cache always find either the old file or the new one.
    """
    res = resource(name)
    target = data_dir() / res.path
    problems: list[str] = []
    sweep_stale_parts(target.parent)
    cached = _cached_file_state(target, res)
    if cached == "verified":
        return target
    if cached == "damaged":
        problems.append(f"the cached file {target} failed its checksum (corrupt or truncated)")
    mirror = mirror_dir()
    if mirror is not None:
        mirrored = mirror / res.path
        if mirrored.is_file() and is_verified(mirrored, res):
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
        if cached == "damaged" and _remove_if_damaged(target, res):
            problems[0] += " and was removed"
        raise DataUnavailableError(_unavailable_message(res, problems)) from None
    return target


def _cached_file_state(target: Path, res: Resource) -> str:
    """``"verified"``, ``"damaged"`` or ``"missing"`` (also when another process just removed it)."""
    if target.is_dir():
        raise _cache_error(target, f"is a folder where the file of resource {res.name!r} belongs",
                           "Move that folder away (or delete it) and run again.")
    try:
        return "verified" if is_verified(target, res) else "damaged"
    except (FileNotFoundError, NotADirectoryError):
        return "missing"
    except PermissionError:
        raise _cache_error(target, "cannot be read (permission denied)",
                           "Make it readable (chmod a+r), or set COURSE_DATA to a cache of your own.") from None


def _remove_if_damaged(target: Path, res: Resource) -> bool:
    """Remove ``target`` if it still fails its checksum; whether it is gone (removed by anyone)."""
    try:
        if is_verified(target, res):
            return False  # another process replaced it meanwhile
        target.unlink()
    except FileNotFoundError:
        return True
    except OSError:  # e.g. a read-only cache: the message then does not claim it was removed
        return False
    return True


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


def _cache_error(path: Path, what: str, todo: str) -> CacheError:
    cache = os.environ.get("COURSE_DATA") or f"(not set: the cache is {data_dir()})"
    return CacheError(f"The data cache cannot be used: {path} {what}.\n"
                      f"  COURSE_DATA: {cache}\n{todo}")


def _make_dirs(folder: Path) -> None:
    """Create ``folder`` and its parents, or say which path is in the way and why."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        blocker = next((p for p in (folder, *folder.parents) if p.exists() and not p.is_dir()), folder)
        raise _cache_error(blocker, "is a file where a folder belongs",
                           "Move that file away (or delete it), or set COURSE_DATA to another folder.") from None
    except PermissionError:
        raise _cache_error(folder, "cannot be created (permission denied: a read-only folder?)",
                           "Set COURSE_DATA to a folder you can write to.") from None


# ---------------------------------------------------------------------------------------------
# Temporary .part files and folders, and sweeping up after killed processes
# ---------------------------------------------------------------------------------------------

# A .part entry whose writer cannot be checked (another host, Windows, an old name) is stale
# only after this long; a live process touches its download file much more often than that.
STALE_PART_AGE_S = 24 * 3600
_PART_NAME = re.compile(r"\.(?P<host>[A-Za-z0-9-]*)-pid(?P<pid>\d+)\.[0-9a-f]{8}\.part$")


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())


def _part_path(target: Path) -> Path:
    """A fresh name beside ``target``: ``.<name>.<host>-pid<pid>.<random>.part``."""
    return target.parent / f".{target.name}.{_host()}-pid{os.getpid()}.{secrets.token_hex(4)}.part"


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0 only asks whether the process exists
    except ProcessLookupError:
        return False
    except OSError:  # e.g. PermissionError: it exists, and belongs to another user
        return True
    return True


def is_stale_part(entry: Path) -> bool:
    """Whether ``entry`` is a ``.part`` file or folder that no live process is writing.

    On this host its writer's process id is in the name: stale when that process is gone. Else
    (another host sharing the cache, Windows, names from older versions) stale by age.
    """
    if not (entry.name.startswith(".") and entry.name.endswith(".part")):
        return False
    try:
        age = time.time() - entry.lstat().st_mtime
    except FileNotFoundError:
        return False
    match = _PART_NAME.search(entry.name)
    if match and match["host"] == _host() and os.name == "posix":  # os.kill(pid, 0) kills on Windows
        return not _process_alive(int(match["pid"])) or age > STALE_PART_AGE_S
    return age > STALE_PART_AGE_S


def sweep_stale_parts(folder: Path) -> list[Path]:
    """Remove the stale ``.part`` entries in ``folder`` (see :func:`is_stale_part`); return them."""
    removed = []
    with contextlib.suppress(OSError):
        for entry in list(folder.iterdir()):
            if is_stale_part(entry):
                _remove(entry)
                removed.append(entry)
    return removed


def _remove(path: Path) -> None:
    """Remove a file or folder; fine if it is gone already (another process may be removing it)."""
    with contextlib.suppress(FileNotFoundError):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink()


def _temporary_sibling(target: Path) -> Path:
    """A new empty ``.part`` file beside ``target`` (mode from the umask, unlike mkstemp's 0600)."""
    _make_dirs(target.parent)
    sweep_stale_parts(target.parent)
    while True:
        tmp = _part_path(target)
        try:
            os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
            return tmp
        except FileExistsError:
            continue
        except PermissionError:
            raise _cache_error(target.parent, "cannot be written (permission denied: a read-only folder?)",
                               "Set COURSE_DATA to a folder you can write to.") from None


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


# ---------------------------------------------------------------------------------------------
# Downloading, with a one-line progress report
# ---------------------------------------------------------------------------------------------

LARGE_DOWNLOAD_BYTES = 100 * 2**20
_told_cache_is_temporary = False


def on_colab() -> bool:
    """True in a Google Colab runtime."""
    return "COLAB_RELEASE_TAG" in os.environ or "google.colab" in sys.modules


def _say_cache_is_temporary(size: int) -> None:
    """Once per process: on Colab the default cache disappears with the runtime."""
    global _told_cache_is_temporary
    if _told_cache_is_temporary or size < LARGE_DOWNLOAD_BYTES or not on_colab() or os.environ.get("COURSE_DATA"):
        return
    _told_cache_is_temporary = True
    print(f"Note: this download ({size / 1e9:.1f} GB) goes to the data cache {data_dir()}, which Colab deletes "
          "when the runtime ends. To keep the data, mount Google Drive and set COURSE_DATA to a folder on it "
          "before the download.", flush=True)


class _DownloadProgress:
    """``downloading x: 120 of 1999 MB (6%)`` redrawn in place with a carriage return.

    A carriage return rewrites the line in a terminal and in Jupyter's output alike, so no
    widget is needed. Redrawn at most every ``interval`` seconds; the last line stays.
    """

    def __init__(self, label: str, size: int, interval: float = 1.0):
        self.label, self.size, self.interval = label, size, interval
        self.done, self.start, self.last = 0, time.perf_counter(), 0.0

    def add(self, n: int) -> None:
        self.done += n
        now = time.perf_counter()
        if now - self.last >= self.interval:
            self.last = now
            of = f" of {self.size / 1e6:.0f} MB ({100 * self.done / self.size:.0f}%)" if self.size else " MB"
            print(f"\rdownloading {self.label}: {self.done / 1e6:.0f}{of}", end="", flush=True)

    def finish(self, failure: str | None = None) -> None:
        seconds = time.perf_counter() - self.start
        end = f"failed ({failure})" if failure else f"{self.done / 1e6:.1f} MB in {seconds:.1f} s"
        print(f"\rdownloading {self.label}: {end}", flush=True)


def _download(res: Resource, target: Path, timeout: float = 60.0) -> None:
    """Stream ``res.url`` to a temporary file, verify it and rename it into place."""
    if res.url is None:
        raise ValueError(f"{res.path} has no upstream URL: it is distributed only through a data mirror")
    tmp = _temporary_sibling(target)
    progress = _DownloadProgress(res.url, 0)
    try:
        try:
            with urllib.request.urlopen(res.url, timeout=timeout) as response, open(tmp, "wb") as out:
                progress.size = int(response.headers.get("Content-Length") or 0)
                _say_cache_is_temporary(progress.size)
                for chunk in iter(lambda: response.read(1 << 20), b""):
                    out.write(chunk)
                    progress.add(len(chunk))
        except (urllib.error.URLError, OSError) as err:
            progress.finish(failure=str(getattr(err, "reason", err)))
            raise
        progress.finish()
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


# ---------------------------------------------------------------------------------------------
# Folders that appear complete or not at all: unpacked archives and built datasets
# ---------------------------------------------------------------------------------------------

COMPLETE_MARKER = ".complete"


def is_complete(folder: Path, source: str) -> bool:
    """Whether ``folder`` was finished by :func:`build_folder` from ``source`` (its marker says so)."""
    try:
        return (Path(folder) / COMPLETE_MARKER).read_text(encoding="utf-8") == source + "\n"
    except (OSError, UnicodeDecodeError):
        return False


@contextlib.contextmanager
def build_folder(folder: Path, source: str = "") -> Iterator[Path]:
    """Build ``folder`` so that it appears complete or not at all.

    Yields an empty temporary folder beside it to fill. When the block ends, a marker naming
    ``source`` (what the folder is built from: an archive and its checksum, a recipe and its
    version) is written into it last, and it is renamed to ``folder``, replacing an incomplete
    one; use :func:`is_complete` to decide whether to build. When the block fails, it is
    removed. If another process finished the same folder first, that one is kept.
    """
    folder = Path(folder)
    _make_dirs(folder.parent)
    if folder.exists() and not folder.is_dir():
        raise _cache_error(folder, "is a file where a folder belongs",
                           "Move that file away (or delete it) and run again.")
    sweep_stale_parts(folder.parent)
    tmp = _part_path(folder)
    try:
        tmp.mkdir(mode=0o777)  # the umask decides who may read it (mkdtemp would give 0700)
    except PermissionError:
        raise _cache_error(folder.parent, "cannot be written (permission denied: a read-only folder?)",
                           "Set COURSE_DATA to a folder you can write to.") from None
    try:
        yield tmp
        (tmp / COMPLETE_MARKER).write_text(source + "\n", encoding="utf-8")
        _publish_folder(tmp, folder, source)
    finally:
        _remove(tmp)


def _publish_folder(tmp: Path, folder: Path, source: str) -> None:
    """Rename the finished ``tmp`` to ``folder``, never touching a complete ``folder``.

    Other processes may be reading a complete folder, so one that is there is kept. Only an
    incomplete folder in the way (no marker for ``source``) is moved aside, and the rename tried
    again. A rename onto an existing non-empty folder fails, so two builders cannot both win.
    """
    for _ in range(10):
        try:
            os.replace(tmp, folder)
            return
        except OSError:
            if is_complete(folder, source):
                return  # another process finished it first
            _discard_incomplete(folder, source)
    raise _cache_error(folder, "could not be replaced by the newly built folder",
                       "Check that no other program holds files open in it, delete it and run again.")


def _discard_incomplete(folder: Path, source: str) -> None:
    """Move an incomplete folder out of the way in one rename, then delete it."""
    aside = _part_path(folder)
    try:
        os.replace(folder, aside)
    except FileNotFoundError:
        return
    if is_complete(aside, source):  # another process finished it just now: put it back
        with contextlib.suppress(OSError):  # fails only if yet another complete one is in place
            os.replace(aside, folder)
    _remove(aside)


def _unpack_tar(archive: Path, destination: Path) -> None:
    """Unpack a tar archive, refusing members that would land outside ``destination``."""
    with tarfile.open(archive) as t:
        if hasattr(tarfile, "data_filter"):  # Python >= 3.10.12, 3.11.4, 3.12
            try:
                t.extractall(destination, filter="data")
            except tarfile.FilterError as err:
                raise ValueError(f"{archive} has an unsafe member ({err}): refusing to unpack it. "
                                 "Delete the archive and fetch it again from the course's source.") from None
            return
        members = t.getmembers()
        for member in members:
            _check_tar_member(member, archive)
        t.extractall(destination, members)


def _check_tar_member(member: tarfile.TarInfo, archive: Path) -> None:
    """The checks of tarfile's "data" filter that matter here, for Pythons that lack it."""
    def unsafe(name: str) -> bool:
        return name.startswith(("/", "\\")) or Path(name).is_absolute() or ".." in re.split(r"[/\\]", name)

    why = None
    if unsafe(member.name):
        why = "an absolute path or a '..' component"
    elif (member.issym() or member.islnk()) and unsafe(member.linkname):
        why = f"a link to {member.linkname!r}, outside the archive"
    elif member.isdev():
        why = "a device file"
    if why:
        raise ValueError(f"{archive} has an unsafe member {member.name!r} ({why}): refusing to unpack it. "
                         "Delete the archive and fetch it again from the course's source.")


def extract(name: str) -> Path:
    """Unpack the zip or tar resource ``name`` next to it and return the unpacked folder.

    The archive is unpacked with :func:`build_folder`, so a half-unpacked folder never poses as
    a whole one, and an existing folder is reused only when its marker names this archive and
    checksum (else it is unpacked again). An archive holding a single top-level folder is
    unwrapped.
    """
    archive = fetch(name)
    res = resource(name)
    folder = archive.parent / archive.name.split(".")[0]
    source = f"{archive.name} {res.algorithm} {res.checksum}"
    if is_complete(folder, source):
        return folder
    with build_folder(folder, source) as tmp:
        unpacked = tmp / ".unpacked"
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as z:
                z.extractall(unpacked)  # zipfile drops absolute paths and '..' itself
        elif tarfile.is_tarfile(archive):
            _unpack_tar(archive, unpacked)
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
# Trained models cached by their recipe (the course backbone, the FID classifier, BERT...)
# ---------------------------------------------------------------------------------------------

def recipe_key(recipe: dict) -> str:
    """A file-name-safe key that changes whenever any setting of ``recipe`` changes."""
    if not recipe:
        raise ValueError("recipe is empty: give the settings that determine the trained model "
                         "(sizes, epochs, learning rate, a version number), so that changing one retrains it.")
    key = "-".join(f"{name}{value}" for name, value in sorted(recipe.items()))
    return re.sub(r"[^A-Za-z0-9_.=-]", "_", key)


def cached_state(name: str, recipe: dict, train: Callable[[dict], dict]) -> dict:
    """The state dict that ``train(recipe)`` returns, trained once and then read from the cache.

    It is saved under ``<data cache>/derived/<name>-<recipe key>.pt``: a change of any setting
    trains a new model. Training runs with the random generators seeded 0 (the same model whichever
    notebook trains it first) and restores the caller's random state afterwards. The file appears
    complete or not at all; one that cannot be read is trained again. In estimate mode nothing is
    saved: its training stops early.
    """
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise ValueError(f"name must be letters, digits, '.', '_' or '-' (it names a file), got {name!r}.")
    path = data_dir() / "derived" / f"{name}-{recipe_key(recipe)}.pt"
    if path.exists():
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # a damaged file (disk full, edited by hand): train again
            print(f"The cached {path.name} cannot be read ({type(err).__name__}); training it again.")
    with torch.random.fork_rng():  # the CPU's and the GPUs' generators
        torch.manual_seed(0)
        state = train(recipe)
    if not isinstance(state, dict):
        raise TypeError(f"train must return a state dict (module.state_dict()), got {type(state).__name__}.")
    if estimate_steps() is not None:  # estimate mode stopped its training early (common.progress)
        print(f"estimate mode: {path.name} is only partly trained and is not cached")
        return state
    tmp = _temporary_sibling(path)
    try:
        torch.save({k: v.detach().cpu() if torch.is_tensor(v) else v for k, v in state.items()}, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return state


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
        batch_size = check_int("batch_size", batch_size, minimum=1)
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
    check_int("batch_size", batch_size, minimum=1)
    resize = None if resize is None else check_int("resize", resize, minimum=1)
    n_train = None if n_train is None else check_int("n_train", n_train, minimum=1)
    n_test = None if n_test is None else check_int("n_test", n_test, minimum=1)
    dev = resolve_device(device)
    loaders = []
    for train, limit in ((True, n_train), (False, n_test)):
        images, labels = _read_mnist_like(dataset_name, train)
        if limit is not None:
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
