"""Fixtures of the checkpoint tests: a toy model with ``PretrainedMixin``, a trained checkpoint, a local server."""

from __future__ import annotations

import functools
import http.server
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest
from scvi.data import AnnDataManager

from cellformers.data import synthetic_counts
from cellformers.pretrained import PretrainedMixin

N_CELLS, N_GENES = 90, 24


def _make_adata(random_state: int = 0):
    return synthetic_counts(n_cells=N_CELLS, n_genes=N_GENES, n_batches=2, n_labels=3, random_state=random_state)


@pytest.fixture(scope="session")
def make_adata():
    """Factory of the data the toy checkpoint is trained on (a fresh object each call)."""
    return _make_adata


@pytest.fixture(scope="session")
def ptoy_cls(toy_model_cls):
    """The shared toy model with ``save_pretrained`` / ``from_pretrained`` (and a ``setup_anndata`` whose setup
    arguments are only its parameters)."""
    bases = (toy_model_cls,) if issubclass(toy_model_cls, PretrainedMixin) else (PretrainedMixin, toy_model_cls)

    class PretrainedToy(*bases):
        @classmethod
        def setup_anndata(cls, adata, layer=None, batch_key=None, labels_key=None, **kwargs):
            setup_method_args = cls._get_setup_method_args(**locals())
            cls._prepare_setup(adata, layer)
            manager = AnnDataManager(
                fields=cls._anndata_fields(layer, batch_key, labels_key), setup_method_args=setup_method_args
            )
            manager.register_fields(adata, **kwargs)
            cls.register_manager(manager)

    return PretrainedToy


@pytest.fixture(scope="session")
def trained(ptoy_cls, tmp_path_factory):
    """A toy model trained for two epochs on counts in ``layers['counts']`` with batch and labels, and its checkpoint.

    Read-only: tests load the checkpoint into fresh AnnData objects.
    """
    adata = _make_adata()
    ptoy_cls.setup_anndata(adata, layer="counts", batch_key="batch", labels_key="labels")
    model = ptoy_cls(adata, d=6)
    model.train(max_epochs=2, batch_size=32, plan_kwargs={"lr": 1e-2}, enable_progress_bar=False)
    z = model.get_latent_representation()
    path = tmp_path_factory.mktemp("ckpt") / "toy"
    model.save_pretrained(path)
    return SimpleNamespace(model=model, adata=adata, z=z, path=path)


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Serves files; ``/truncated/<name>`` announces the full size but closes the connection halfway."""

    def log_message(self, *args):  # keep test output clean
        pass

    def do_GET(self):
        self.server.requests.append(self.path)
        if self.path.startswith("/truncated/"):
            data = (Path(self.directory) / self.path.removeprefix("/truncated/")).read_bytes()
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[: len(data) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        super().do_GET()


@pytest.fixture
def server(tmp_path, monkeypatch):
    """A file server on 127.0.0.1 (ephemeral port) serving ``tmp_path / "www"``; ``stop()`` shuts it down."""
    www = tmp_path / "www"
    www.mkdir()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Handler, directory=str(www)))
    httpd.requests = []
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    stopped = []

    def stop():
        if not stopped:
            httpd.shutdown()
            httpd.server_close()
            thread.join(timeout=5)
            stopped.append(True)

    yield SimpleNamespace(
        www=www, url=f"http://127.0.0.1:{httpd.server_address[1]}", requests=httpd.requests, stop=stop
    )
    stop()
