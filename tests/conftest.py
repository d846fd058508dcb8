import http.server
import threading
from functools import partial

import pytest


@pytest.fixture
def http_server(tmp_path):
    """A static file server on 127.0.0.1 serving a temporary folder: ``(folder, base_url)``."""
    folder = tmp_path / "served"
    folder.mkdir()
    handler = partial(QuietHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield folder, f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


@pytest.fixture
def one_thread():
    """Tiny models run fastest on one thread (and do not fight parallel test workers)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def isolated_data(tmp_path, monkeypatch):
    """An empty cache and no mirror, whatever the environment says."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("COURSE_DATA", str(cache))
    monkeypatch.delenv("COURSE_DATA_MIRROR", raising=False)
    return cache
