"""The data layer: cache, mirror, verified downloads from a local HTTP server, loaders."""
import gzip
import hashlib
import io
import multiprocessing
import os
import stat
import subprocess
import sys
import tarfile
import time
import zipfile
from pathlib import Path

import pytest
import torch

from common import data


def sha1(content: bytes) -> str:
    return hashlib.sha1(content).hexdigest()


@pytest.fixture
def served_resource(http_server, monkeypatch):
    """A resource 'demo' whose upstream file is served by the local HTTP server."""
    folder, url = http_server
    content = b"hello, course\n" * 1000
    (folder / "demo.txt").write_bytes(content)
    res = data.Resource("demo", url + "demo.txt", sha1(content), "sub/demo.txt")
    monkeypatch.setitem(data.RESOURCES, "demo", res)
    return res, content, folder


def leftovers(folder):
    return [p for p in folder.rglob("*") if p.name.endswith(".part")]


def test_download_is_verified_and_cached(isolated_data, served_resource):
    res, content, _ = served_resource
    path = data.fetch("demo")
    assert path == isolated_data / "sub" / "demo.txt"
    assert path.read_bytes() == content
    assert not leftovers(isolated_data)


def test_checksum_mismatch_of_download_leaves_nothing(isolated_data, served_resource, monkeypatch):
    res, _, _ = served_resource
    monkeypatch.setitem(data.RESOURCES, "demo", data.Resource("demo", res.url, "0" * 40, res.path))
    with pytest.raises(data.DataUnavailableError, match="sha1 [0-9a-f]+, expected"):
        data.fetch("demo")
    assert not (isolated_data / res.path).exists()
    assert not leftovers(isolated_data)


@pytest.mark.parametrize("damage", [lambda b: b[:-100], lambda b: b"x" + b[1:]], ids=["truncated", "corrupt"])
def test_damaged_cache_file_is_replaced(isolated_data, served_resource, damage):
    _, content, _ = served_resource
    path = data.fetch("demo")
    path.write_bytes(damage(content))
    assert data.fetch("demo").read_bytes() == content


def test_mirror_is_used_before_the_network(isolated_data, served_resource, tmp_path, monkeypatch):
    res, content, folder = served_resource
    (folder / "demo.txt").unlink()  # the network no longer has it
    mirror = tmp_path / "mirror"
    (mirror / "sub").mkdir(parents=True)
    (mirror / "sub" / "demo.txt").write_bytes(content)
    monkeypatch.setenv("COURSE_DATA_MIRROR", str(mirror))
    assert data.fetch("demo").read_bytes() == content


def test_corrupt_mirror_file_falls_back_to_download(isolated_data, served_resource, tmp_path, monkeypatch):
    _, content, _ = served_resource
    mirror = tmp_path / "mirror"
    (mirror / "sub").mkdir(parents=True)
    (mirror / "sub" / "demo.txt").write_bytes(b"not the right bytes")
    monkeypatch.setenv("COURSE_DATA_MIRROR", str(mirror))
    with pytest.warns(UserWarning, match="failed its checksum"):
        assert data.fetch("demo").read_bytes() == content
    assert (mirror / "sub" / "demo.txt").read_bytes() == b"not the right bytes"  # mirror untouched


def test_unavailable_resource_gives_one_clear_error(isolated_data, monkeypatch, tmp_path):
    # Nothing listens on this port: the download fails like an offline machine.
    url = "http://127.0.0.1:9/missing.txt"
    monkeypatch.setitem(data.RESOURCES, "gone", data.Resource("gone", url, "0" * 40, "missing.txt"))
    monkeypatch.setenv("COURSE_DATA_MIRROR", str(tmp_path / "empty-mirror"))
    with pytest.raises(data.DataUnavailableError) as err:
        data.fetch("gone")
    message = str(err.value)
    for part in ("'gone'", url, str(isolated_data), "COURSE_DATA_MIRROR", "empty-mirror"):
        assert part in message
    assert err.value.__cause__ is None and err.value.__suppress_context__


def test_fashion_mnist_offline_without_mirror_fails_clearly(isolated_data, monkeypatch):
    for name, res in list(data.RESOURCES.items()):
        if name.startswith("FashionMNIST/"):
            monkeypatch.setitem(data.RESOURCES, name, data.Resource(name, "http://127.0.0.1:9/x.gz", res.checksum, res.path))
    with pytest.raises(data.DataUnavailableError, match="FashionMNIST"):
        data.load_fashion_mnist(32)


def test_unknown_names_are_reported_with_suggestions():
    with pytest.raises(ValueError, match="Did you mean 'time_machine'"):
        data.resource("time_machin")
    with pytest.raises(ValueError, match="Unknown dataset 'CIFAR'"):
        data.load_mnist_like("CIFAR", 32)


def test_archive_member_resource(isolated_data, http_server, monkeypatch):
    folder, url = http_server
    member = b"bonjour\n"
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        z.writestr("inner/text.txt", member)
    (folder / "pack.zip").write_bytes(buffer.getvalue())
    res = data.Resource("pack", url + "pack.zip", sha1(member), "pack/text.txt",
                        archive_member="inner/text.txt", archive_sha1=sha1(buffer.getvalue()))
    monkeypatch.setitem(data.RESOURCES, "pack", res)
    assert data.read_text("pack") == "bonjour\n"


@pytest.mark.parametrize("kind", ["zip", "tar"])
def test_extract_unpacks_atomically_into_a_folder(isolated_data, http_server, monkeypatch, kind):
    folder, url = http_server
    buffer = io.BytesIO()
    if kind == "zip":
        with zipfile.ZipFile(buffer, "w") as z:
            z.writestr("things/a.txt", "a")
            z.writestr("things/b/c.txt", "c")
    else:
        with tarfile.open(fileobj=buffer, mode="w:gz") as t:
            for name, text in (("things/a.txt", b"a"), ("things/b/c.txt", b"c")):
                info = tarfile.TarInfo(name)
                info.size = len(text)
                t.addfile(info, io.BytesIO(text))
    file = f"things.{'zip' if kind == 'zip' else 'tar.gz'}"
    (folder / file).write_bytes(buffer.getvalue())
    monkeypatch.setitem(data.RESOURCES, "things", data.Resource("things", url + file, sha1(buffer.getvalue()), file))
    out = data.extract("things")
    assert out == isolated_data / "things"
    assert (out / "a.txt").read_text() == "a" and (out / "b" / "c.txt").read_text() == "c"
    assert data.extract("things") == out  # second call reuses the folder
    assert [p.name for p in isolated_data.iterdir() if p.name.startswith(".")] == []


def test_cache_defaults_to_repo_data_folder(monkeypatch):
    monkeypatch.delenv("COURSE_DATA", raising=False)
    from common.config import repo_root

    assert data.data_dir() == repo_root() / "data"


def test_tensor_loader_visits_every_example_once():
    X, y = torch.arange(10).float().reshape(10, 1), torch.arange(10)
    loader = data.TensorLoader(X, y, batch_size=3, shuffle=True)
    assert len(loader) == 4
    seen = torch.cat([yb for _, yb in loader])
    assert sorted(seen.tolist()) == list(range(10))
    for Xb, yb in loader:
        assert torch.equal(Xb[:, 0].long(), yb)  # rows stay paired


def test_tensor_loader_rejects_bad_input():
    with pytest.raises(ValueError, match="same first dimension"):
        data.TensorLoader(torch.zeros(3), torch.zeros(4), batch_size=2)
    with pytest.raises(ValueError, match="empty"):
        data.TensorLoader(torch.zeros(0), batch_size=2)
    with pytest.raises(ValueError, match="batch_size"):
        data.TensorLoader(torch.zeros(3), batch_size=0)


@pytest.fixture
def mirror_or_skip():
    if not os.environ.get("COURSE_DATA_MIRROR") and not (data.data_dir() / "FashionMNIST").exists():
        pytest.skip("needs Fashion-MNIST: set COURSE_DATA_MIRROR or run a notebook that downloads it")


def test_fashion_mnist_loader(mirror_or_skip):
    train_iter, test_iter = data.load_fashion_mnist(100, n_train=500, n_test=200, device="cpu")
    assert (train_iter.num_examples, test_iter.num_examples) == (500, 200)
    X, y = next(iter(test_iter))
    assert X.shape == (100, 1, 28, 28) and X.dtype == torch.float32
    assert 0 <= X.min() and X.max() <= 1 and y.dtype == torch.int64
    assert set(y.tolist()) <= set(range(10))
    assert data.fashion_mnist_labels([0, 9]) == ["t-shirt", "ankle boot"]


def test_fashion_mnist_resize(mirror_or_skip):
    _, test_iter = data.load_fashion_mnist(50, resize=32, n_train=10, n_test=50, device="cpu")
    X, _ = next(iter(test_iter))
    assert X.shape == (50, 1, 32, 32)


def test_other_algorithms_and_checksum_prefixes(tmp_path):
    file = tmp_path / "weights.pth"
    file.write_bytes(b"weights")
    sha256 = hashlib.sha256(b"weights").hexdigest()
    assert data.is_verified(file, data.Resource("w", None, sha256[:8], "w.pth", algorithm="sha256"))
    assert data.is_verified(file, data.Resource("w", None, hashlib.md5(b"weights").hexdigest(), "w.pth", algorithm="md5"))
    assert not data.is_verified(file, data.Resource("w", None, "0" * 8, "w.pth", algorithm="sha256"))


def test_mirror_only_resource_without_mirror_says_so(isolated_data, monkeypatch):
    monkeypatch.setitem(data.RESOURCES, "only", data.Resource("only", None, "0" * 40, "only/file.bin"))
    with pytest.raises(data.DataUnavailableError, match="only distributed through a data mirror"):
        data.fetch("only")


def idx_bytes(values: bytes, shape: tuple[int, ...], type_code: int = 0x08) -> bytes:
    return b"\0\0" + bytes([type_code, len(shape)]) + b"".join(n.to_bytes(4, "big") for n in shape) + values


def test_read_idx_plain_and_gzipped(tmp_path):
    values = bytes(range(24))
    (tmp_path / "a.idx").write_bytes(idx_bytes(values, (2, 3, 4)))
    (tmp_path / "a.idx.gz").write_bytes(gzip.compress(idx_bytes(values, (2, 3, 4))))
    for name in ("a.idx", "a.idx.gz"):
        tensor = data.read_idx(tmp_path / name)
        assert tensor.shape == (2, 3, 4) and tensor.dtype == torch.uint8
        assert tensor.flatten().tolist() == list(range(24))


@pytest.mark.parametrize("content, message", [
    (idx_bytes(bytes(10), (2, 3, 4)), "truncated"),
    (idx_bytes(bytes(24), (2, 3, 4), type_code=0x0D), "not an IDX file"),
    (b"PK\x03\x04", "not an IDX file"),
], ids=["truncated", "float-type", "zip"])
def test_read_idx_refuses_bad_files(tmp_path, content, message):
    (tmp_path / "bad.idx").write_bytes(content)
    with pytest.raises(ValueError, match=message):
        data.read_idx(tmp_path / "bad.idx")


def test_build_folder_appears_whole_or_not_at_all(tmp_path):
    target = tmp_path / "made"
    with pytest.raises(RuntimeError):
        with data.build_folder(target) as tmp:
            (tmp / "half.txt").write_text("half")
            raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []  # neither the folder nor the temporary one
    with data.build_folder(target) as tmp:
        (tmp / "whole.txt").write_text("whole")
    assert [p.name for p in tmp_path.iterdir()] == ["made"] and (target / "whole.txt").read_text() == "whole"


# ---------------------------------------------------------------------------------------------
# Faults: damaged caches shared by processes, unusable cache paths, half-built folders
# ---------------------------------------------------------------------------------------------

@pytest.fixture
def mirrored_resource(isolated_data, tmp_path, monkeypatch):
    """A resource 'demo' that only a local mirror holds (no network)."""
    content = b"mirrored bytes\n" * 500
    mirror = tmp_path / "mirror"
    (mirror / "sub").mkdir(parents=True)
    (mirror / "sub" / "demo.txt").write_bytes(content)
    monkeypatch.setenv("COURSE_DATA_MIRROR", str(mirror))
    monkeypatch.setitem(data.RESOURCES, "demo", data.Resource("demo", "http://127.0.0.1:9/demo.txt", sha1(content),
                                                              "sub/demo.txt"))
    return isolated_data / "sub" / "demo.txt", content


def test_damaged_file_removed_by_another_process_meanwhile(mirrored_resource, monkeypatch):
    target, content = mirrored_resource
    target.parent.mkdir(parents=True)
    target.write_bytes(b"damaged")
    original = data.is_verified

    def other_process_removes_it_first(path, res):
        if path == target and path.exists():
            path.unlink()  # the other process got there between our two steps
        return original(path, res)

    monkeypatch.setattr(data, "is_verified", other_process_removes_it_first)
    assert data.fetch("demo").read_bytes() == content


def test_damaged_file_is_replaced_in_one_rename(mirrored_resource, monkeypatch):
    """No moment without a file: a reader in another process never finds it missing."""
    target, content = mirrored_resource
    target.parent.mkdir(parents=True)
    target.write_bytes(b"damaged")
    unlinked, real_unlink = [], Path.unlink

    def unlink(self, missing_ok=False):
        unlinked.append(self)
        real_unlink(self, missing_ok=missing_ok)

    monkeypatch.setattr(Path, "unlink", unlink)
    assert data.fetch("demo").read_bytes() == content
    assert target not in unlinked


def _report(work, args, queue) -> None:
    """Run ``work(*args)`` in a child process and tell the parent "ok" or the error."""
    try:
        work(*args)
        queue.put("ok")
    except BaseException as err:  # noqa: BLE001 - report anything to the parent
        queue.put(f"{type(err).__name__}: {err}")


def _in_processes(work, args: tuple, count: int) -> list[str]:
    """What each of ``count`` forked processes running ``work(*args)`` at once reported."""
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    workers = [context.Process(target=_report, args=(work, args, queue)) for _ in range(count)]
    for w in workers:
        w.start()
    results = [queue.get(timeout=60) for _ in workers]
    for w in workers:
        w.join(timeout=10)
    return results


def _hammer(name: str, rounds: int) -> None:
    """One of several processes that fetch and damage the same cached file, again and again."""
    for i in range(rounds):
        path = data.fetch(name)
        if i % 3 == 0:  # damage it for the others: truncated, then written over in place
            with open(path, "r+b") as f:
                f.truncate(10)


@pytest.mark.skipif(sys.platform != "linux", reason="uses fork")
def test_parallel_processes_never_crash_on_a_damaged_cache(mirrored_resource):
    target, content = mirrored_resource
    assert _in_processes(_hammer, ("demo", 30), count=4) == ["ok"] * 4
    assert data.fetch("demo").read_bytes() == content
    assert not leftovers(target.parent)


def test_course_data_naming_a_file_is_reported(tmp_path, monkeypatch):
    file = tmp_path / "not-a-folder"
    file.write_text("x")
    monkeypatch.setenv("COURSE_DATA", str(file))
    with pytest.raises(data.CacheError, match="names .*not-a-folder, which is a file, not a folder"):
        data.fetch("time_machine")


def test_read_only_cache_is_reported(mirrored_resource, monkeypatch):
    cache = data.data_dir()
    (cache / "sub").mkdir(parents=True)
    real_open = os.open

    def read_only(path, *args, **kwargs):  # what a read-only folder does (root ignores chmod)
        if str(path).startswith(str(cache)):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", read_only)
    with pytest.raises(data.CacheError, match=r"(?s)sub cannot be written \(permission denied.*COURSE_DATA"):
        data.fetch("demo")


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root may write to read-only folders")
def test_read_only_cache_folder_for_real(mirrored_resource):
    cache = data.data_dir()
    cache.mkdir()
    cache.chmod(0o555)
    try:
        with pytest.raises(data.CacheError, match="permission denied"):
            data.fetch("demo")
    finally:
        cache.chmod(0o755)


def test_folder_where_a_file_belongs_is_reported(mirrored_resource):
    target, _ = mirrored_resource
    target.mkdir(parents=True)
    with pytest.raises(data.CacheError, match="demo.txt is a folder where the file of resource 'demo' belongs"):
        data.fetch("demo")


def test_file_where_a_folder_belongs_is_reported(mirrored_resource):
    target, _ = mirrored_resource
    target.parent.parent.mkdir(parents=True)
    target.parent.write_text("a file named like the folder")
    with pytest.raises(data.CacheError, match=r"cache[/\\]sub is a file where a folder belongs"):
        data.fetch("demo")


@pytest.fixture
def served_zip(isolated_data, http_server, monkeypatch):
    """A zip resource 'things' with things/a.txt and things/b/c.txt."""
    folder, url = http_server
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        z.writestr("things/a.txt", "a")
        z.writestr("things/b/c.txt", "c")
    (folder / "things.zip").write_bytes(buffer.getvalue())
    monkeypatch.setitem(data.RESOURCES, "things", data.Resource("things", url + "things.zip", sha1(buffer.getvalue()),
                                                                "things.zip"))
    return isolated_data / "things"


@pytest.mark.parametrize("state", ["empty", "half-deleted", "other-archive"])
def test_extract_rebuilds_a_folder_not_known_complete(served_zip, state):
    data.fetch("things")
    served_zip.mkdir()
    if state == "half-deleted":
        (served_zip / "a.txt").write_text("a")  # b/c.txt is gone, and so is the marker
    if state == "other-archive":
        (served_zip / "a.txt").write_text("old a")
        (served_zip / data.COMPLETE_MARKER).write_text("things.zip sha1 0000\n")
    out = data.extract("things")
    assert (out / "a.txt").read_text() == "a" and (out / "b" / "c.txt").read_text() == "c"
    assert not leftovers(out.parent)


def test_extract_reuses_a_complete_folder(served_zip):
    out = data.extract("things")
    (out / "a.txt").write_text("changed by the learner")
    assert data.extract("things") == out and (out / "a.txt").read_text() == "changed by the learner"


def test_build_folder_keeps_what_another_process_finished_first(tmp_path):
    target = tmp_path / "made"
    with data.build_folder(target, "recipe 1") as tmp:
        (tmp / "mine.txt").write_text("mine")
        with data.build_folder(target, "recipe 1") as other:  # the other process, faster
            (other / "theirs.txt").write_text("theirs")
    assert data.is_complete(target, "recipe 1") and [p.name for p in target.iterdir() if p.suffix] == ["theirs.txt"]
    with data.build_folder(target, "recipe 2") as tmp:  # another recipe replaces it
        (tmp / "new.txt").write_text("new")
    assert data.is_complete(target, "recipe 2") and not data.is_complete(target, "recipe 1")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["made"]


def test_a_complete_folder_is_never_removed_under_its_readers(tmp_path, monkeypatch):
    target = tmp_path / "made"
    with data.build_folder(target, "r") as theirs:  # another process finished first
        (theirs / "theirs.txt").write_text("theirs")
    inode = target.stat().st_ino
    real_is_complete, looks = data.is_complete, []

    def first_look_too_early(folder, source):  # our first look came before theirs was in place
        looks.append(folder)
        return False if len(looks) == 1 else real_is_complete(folder, source)

    monkeypatch.setattr(data, "is_complete", first_look_too_early)
    with data.build_folder(target, "r") as mine:
        (mine / "mine.txt").write_text("mine")
    assert target.stat().st_ino == inode and (target / "theirs.txt").exists()  # theirs, never moved for long
    assert sorted(p.name for p in tmp_path.iterdir()) == ["made"]


def test_built_folders_and_files_are_readable_by_others(mirrored_resource, tmp_path):
    old = os.umask(0o022)
    try:
        with data.build_folder(tmp_path / "built", "r") as tmp:
            (tmp / "x.txt").write_text("x")
        path = data.fetch("demo")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "built").stat().st_mode) == 0o755  # mkdtemp would give 0700
    assert stat.S_IMODE(path.stat().st_mode) == 0o644  # mkstemp would give 0600


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


@pytest.mark.skipif(os.name != "posix", reason="process ids are checked on POSIX only")
def test_stale_part_files_and_folders_are_swept(mirrored_resource):
    target, content = mirrored_resource
    folder = target.parent
    folder.mkdir(parents=True)
    host, dead, alive = data._host(), _dead_pid(), os.getppid()
    two_days_ago = time.time() - 2 * 24 * 3600
    entries = {
        f".demo.txt.{host}-pid{dead}.0123abcd.part": True,      # its process was killed
        f".banana.{host}-pid{dead}.89abcdef.part/": True,       # a folder, same
        f".demo.txt.{host}-pid{alive}.0123abcd.part": False,    # a live process is writing it
        f".demo.txt.other-host-pid{dead}.0123abcd.part": False,  # another machine: too young to tell
        ".demo.txt.k3j4h5.part": False,                          # an old-style name, young
        ".demo.txt.old1234.part": True,                          # an old-style name, two days old
        "keep.part": False,                                      # not ours: no leading dot
    }
    for name, _ in entries.items():
        path = folder / name.rstrip("/")
        if name.endswith("/"):
            (path / "inner").mkdir(parents=True)
            (path / "inner" / "big.bin").write_bytes(b"0" * 1000)
        else:
            path.write_bytes(b"partial")
        if "old1234" in name:
            os.utime(path, (two_days_ago, two_days_ago))
    assert data.fetch("demo").read_bytes() == content
    left = {p.name for p in folder.iterdir()}
    for name, stale in entries.items():
        assert (name.rstrip("/") not in left) == stale, name


def _tar(members: dict[str, bytes], links: dict[str, str] | None = None) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as t:
        for name, content in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            t.addfile(info, io.BytesIO(content))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            t.addfile(info)
    return buffer.getvalue()


@pytest.mark.parametrize("bad", ["../evil.txt", "ok/../../evil.txt", "ABSOLUTE", "symlink"],
                         ids=["dotdot", "nested-dotdot", "absolute", "symlink-out"])
@pytest.mark.parametrize("python", ["with-data-filter", "older"])
def test_tar_members_cannot_land_outside_the_folder(isolated_data, monkeypatch, tmp_path, bad, python):
    if python == "older":
        monkeypatch.delattr(tarfile, "data_filter")  # as on Python < 3.10.12 / 3.11.4: the fallback checks
    outside = tmp_path / "evil.txt"
    members = {"pack/a.txt": b"a"}
    if bad != "symlink":
        members[str(outside) if bad == "ABSOLUTE" else bad] = b"x"
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    monkeypatch.setenv("COURSE_DATA_MIRROR", str(mirror))
    for name, content in (("good", _tar({"pack/a.txt": b"a"}, {"pack/link": "a.txt"})),
                          ("bad", _tar(members, {"pack/link": "/etc/passwd"} if bad == "symlink" else {}))):
        (mirror / f"{name}.tar").write_bytes(content)
        monkeypatch.setitem(data.RESOURCES, name, data.Resource(name, None, sha1(content), f"{name}.tar"))
    assert (data.extract("good") / "a.txt").read_text() == "a"
    if bad == "ABSOLUTE" and python == "with-data-filter":
        data.extract("bad")  # the data filter strips the leading '/': the member lands inside the folder
        assert list((isolated_data / "bad").rglob("evil.txt"))
    else:
        with pytest.raises(ValueError, match="unsafe member .*refusing to unpack"):
            data.extract("bad")
        assert not (isolated_data / "bad").exists() and not list(isolated_data.rglob("evil.txt"))
    assert not outside.exists()


def test_large_download_on_colab_says_once_the_cache_is_temporary(http_server, tmp_path, monkeypatch, capsys):
    folder, url = http_server
    monkeypatch.delenv("COURSE_DATA", raising=False)
    monkeypatch.delenv("COURSE_DATA_MIRROR", raising=False)
    monkeypatch.setattr(data, "repo_root", lambda: None)  # only the package is installed
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "home-cache"))
    monkeypatch.setenv("COLAB_RELEASE_TAG", "test")
    monkeypatch.setattr(data, "LARGE_DOWNLOAD_BYTES", 1000)
    monkeypatch.setattr(data, "_told_cache_is_temporary", False)
    for name in ("big1", "big2"):
        content = name.encode() * 1000
        (folder / f"{name}.bin").write_bytes(content)
        monkeypatch.setitem(data.RESOURCES, name, data.Resource(name, url + f"{name}.bin", sha1(content), f"{name}.bin"))
        assert data.fetch(name).read_bytes() == content
    out = capsys.readouterr().out
    assert out.count("which Colab deletes when the runtime ends") == 1
    assert str(tmp_path / "home-cache" / "dl-course") in out
    assert f"\rdownloading {url}big2.bin: 0.0 MB in" in out  # the progress line's final state


def test_download_progress_shows_the_share_done(capsys):
    progress = data._DownloadProgress("x", size=4_000_000, interval=0.0)
    progress.add(1_000_000)
    progress.add(1_000_000)
    progress.finish()
    out = capsys.readouterr().out
    assert "\rdownloading x: 1 of 4 MB (25%)" in out and "\rdownloading x: 2 of 4 MB (50%)" in out
    assert out.endswith("2.0 MB in 0.0 s\n") and "\n" not in out[:-1]


@pytest.mark.parametrize("batch_size, error, message", [
    (2.5, TypeError, "batch_size must be a whole number.*got 2.5"),
    ("256", TypeError, "without quotes: batch_size=256"),
    (True, TypeError, "batch_size must be a whole number"),
])
def test_tensor_loader_refuses_non_integer_batch_sizes(batch_size, error, message):
    with pytest.raises(error, match=message):
        data.TensorLoader(torch.zeros(3), batch_size=batch_size)


@pytest.mark.parametrize("kwargs, error, message", [
    ({"resize": 0}, ValueError, "resize must be a positive integer, got 0"),
    ({"resize": -28}, ValueError, "resize must be a positive integer"),
    ({"resize": 32.0}, TypeError, "resize must be a whole number"),
    ({"batch_size": "256"}, TypeError, "batch_size must be a whole number"),
    ({"n_train": 0.5}, TypeError, "n_train must be a whole number"),
    ({"device": "gpu"}, ValueError, "Unknown device 'gpu'"),
])
def test_fashion_mnist_loader_checks_its_arguments_before_reading(isolated_data, kwargs, error, message):
    # isolated_data is an empty cache without a mirror: the checks come before any file is read
    with pytest.raises(error, match=message):
        data.load_fashion_mnist(**({"batch_size": 32} | kwargs))


def _extract_each(names: list[str]) -> None:
    for name in names:  # the processes race to unpack each archive first
        folder = data.extract(name)
        assert (folder / "a.txt").read_text() == "a" and (folder / "b" / "c.txt").read_text() == "c"


@pytest.mark.skipif(sys.platform != "linux", reason="uses fork")
def test_parallel_processes_extract_the_same_archive(isolated_data, tmp_path, monkeypatch):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        z.writestr("things/a.txt", "a")
        z.writestr("things/b/c.txt", "c")
    (tmp_path / "mirror").mkdir()
    monkeypatch.setenv("COURSE_DATA_MIRROR", str(tmp_path / "mirror"))
    names = [f"things{i}" for i in range(15)]
    for name in names:
        (tmp_path / "mirror" / f"{name}.zip").write_bytes(buffer.getvalue())
        monkeypatch.setitem(data.RESOURCES, name, data.Resource(name, None, sha1(buffer.getvalue()), f"{name}.zip"))
    assert _in_processes(_extract_each, (names,), count=3) == ["ok"] * 3
    assert sorted(p.name for p in isolated_data.iterdir() if p.is_dir()) == sorted(names)
    assert all(data.is_complete(isolated_data / name, f"{name}.zip sha1 {sha1(buffer.getvalue())}") for name in names)
    assert not leftovers(isolated_data)


def test_tensor_loader_takes_numpy_integers():
    import numpy as np

    assert len(data.TensorLoader(torch.zeros(5), batch_size=np.int64(2))) == 3


def test_packaged_file_is_verified(monkeypatch):
    path = data.packaged_file("sklearn-digits")
    assert path.is_file() and data.digest_of(path) == data.PACKAGED_FILES["sklearn-digits"].sha1
    bad = data.PackagedFile("sklearn-digits", "sklearn", "datasets/data/digits.csv.gz", "0" * 40, "scikit-learn")
    monkeypatch.setitem(data.PACKAGED_FILES, "sklearn-digits", bad)
    with pytest.raises(data.DataUnavailableError, match="ships a different file"):
        data.packaged_file("sklearn-digits")
    missing = data.PackagedFile("x", "no_such_package_here", "a.csv", "0" * 40, "no-such-package")
    monkeypatch.setitem(data.PACKAGED_FILES, "x", missing)
    with pytest.raises(data.DataUnavailableError, match="pip install no-such-package"):
        data.packaged_file("x")
    with pytest.raises(KeyError, match="sklearn-digits"):
        data.packaged_file("nope")


@pytest.mark.parametrize("name", sorted(data.PACKAGED_FILES))
def test_every_packaged_file_is_installed_and_matches(name):
    # A declared dependency's release that changed its copy of the data fails here first.
    assert data.digest_of(data.packaged_file(name)) == data.PACKAGED_FILES[name].sha1


# ---------------------------------------------------------------------------------------------
# cached_state: trained models cached by their recipe
# ---------------------------------------------------------------------------------------------

def _counting_trainer(calls):
    def train(recipe):
        calls.append(recipe)
        return torch.nn.Linear(recipe["width"], 1).state_dict()
    return train


def test_cached_state_trains_once_per_recipe(isolated_data):
    calls = []
    first = data.cached_state("tiny", {"width": 3, "version": 1}, _counting_trainer(calls))
    again = data.cached_state("tiny", {"version": 1, "width": 3}, _counting_trainer(calls))  # order-free key
    assert len(calls) == 1
    torch.testing.assert_close(again, first)
    data.cached_state("tiny", {"width": 4, "version": 1}, _counting_trainer(calls))
    assert len(calls) == 2  # a changed setting is a new model
    assert sorted(p.name for p in (isolated_data / "derived").iterdir()) == [
        "tiny-version1-width3.pt", "tiny-version1-width4.pt"]  # no .part files left behind


def test_cached_state_saves_nothing_in_estimate_mode(isolated_data, monkeypatch, capsys):
    monkeypatch.setenv("COURSE_ESTIMATE_STEPS", "5")  # training stopped early: never a cache entry
    calls = []
    data.cached_state("tiny", {"width": 3}, _counting_trainer(calls))
    assert "not cached" in capsys.readouterr().out
    assert not (isolated_data / "derived").exists() or not any((isolated_data / "derived").iterdir())
    monkeypatch.delenv("COURSE_ESTIMATE_STEPS")
    data.cached_state("tiny", {"width": 3}, _counting_trainer(calls))
    assert len(calls) == 2 and (isolated_data / "derived" / "tiny-width3.pt").exists()


def test_cached_state_trains_seeded_and_keeps_the_callers_random_state(isolated_data):
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    state = data.cached_state("tiny", {"width": 2}, lambda r: torch.nn.Linear(r["width"], 1).state_dict())
    torch.testing.assert_close(torch.rand(3), expected_next)
    torch.manual_seed(0)
    torch.testing.assert_close(state["weight"], torch.nn.Linear(2, 1).weight.detach())


def test_cached_state_retrains_a_damaged_file(isolated_data, capsys):
    calls = []
    data.cached_state("tiny", {"width": 3}, _counting_trainer(calls))
    (isolated_data / "derived" / "tiny-width3.pt").write_bytes(b"half a file")
    state = data.cached_state("tiny", {"width": 3}, _counting_trainer(calls))
    assert len(calls) == 2 and "cannot be read" in capsys.readouterr().out
    assert state["weight"].shape == (1, 3)


def test_cached_state_rejects_bad_input(isolated_data):
    with pytest.raises(ValueError, match="recipe is empty"):
        data.cached_state("tiny", {}, _counting_trainer([]))
    with pytest.raises(ValueError, match="names a file"):
        data.cached_state("../escape", {"width": 1}, _counting_trainer([]))
    with pytest.raises(TypeError, match="state dict"):
        data.cached_state("tiny", {"width": 1}, lambda r: torch.nn.Linear(1, 1))
    assert not list((isolated_data / "derived").glob("*.pt"))
