"""The data layer: cache, mirror, verified downloads from a local HTTP server, loaders."""
import gzip
import hashlib
import io
import os
import tarfile
import zipfile

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
