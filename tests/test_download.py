"""`dydis download` against a real HTTP server on 127.0.0.1 (never the internet): resume, verify, refuse."""

from __future__ import annotations

import hashlib
import re
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import write_dsprites
from dydis.cli.main import app
from dydis.data import DATASETS, download
from dydis.data.download import DOWNLOADS, RemoteFile

runner = CliRunner()
NAME = DOWNLOADS["dsprites"].name
HEX_LENGTHS = {"sha256": 64, "md5": 32}


class FileServer(ThreadingHTTPServer):
    """Serves ``body`` at /file; records each request's Range header. ``honour_range=False``
    answers every request 200 with the whole body; ``cut_after=n`` promises the whole length
    and closes the connection after n bytes."""

    def __init__(self, body: bytes):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.body, self.honour_range, self.cut_after, self.ranges = body, True, None, []

    def url(self, path: str = "/file") -> str:
        return f"http://127.0.0.1:{self.server_port}{path}"


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (http.server's name)
        server: FileServer = self.server
        server.ranges.append(self.headers.get("Range"))
        if self.path != "/file":
            self.send_error(404)
            return
        start, body = 0, server.body
        wanted = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
        if wanted and server.honour_range:
            start = int(wanted.group(1))
            if start >= len(body):
                self.send_error(416)
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        self.wfile.write(body[start:][: server.cut_after])

    def log_message(self, *args):
        pass


@pytest.fixture
def payload(tmp_path) -> bytes:
    """A tiny dsprites npz: the bytes the registry's (patched) dsprites entry describes."""
    return write_dsprites(tmp_path / "served.npz").read_bytes()


@pytest.fixture
def server(payload):
    httpd = FileServer(payload)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def register(monkeypatch, url: str, payload: bytes, algorithm: str = "sha256", size: int | None = None) -> None:
    digest = hashlib.new(algorithm, payload).hexdigest()
    monkeypatch.setitem(DOWNLOADS, "dsprites", RemoteFile(NAME, url, algorithm, digest, size))


@pytest.fixture
def dest(tmp_path) -> Path:
    return tmp_path / "downloads"


def fetch(dest: Path, name: str = "dsprites"):
    return runner.invoke(app, ["download", name, "--dest", str(dest)])


def error_lines(result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("error:")]


@pytest.mark.parametrize("algorithm", ["sha256", "md5"])
def test_fresh_download_is_verified_and_put_in_place(monkeypatch, server, payload, dest, algorithm):
    register(monkeypatch, server.url(), payload, algorithm)
    result = fetch(dest)
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(dest / NAME)
    assert (dest / NAME).read_bytes() == payload and not (dest / f"{NAME}.part").exists()
    assert server.ranges == [None]
    assert "downloaded and verified" in result.stderr


def leave_part(dest: Path, data: bytes) -> None:
    """What an earlier, interrupted run left behind."""
    dest.mkdir()
    (dest / f"{NAME}.part").write_bytes(data)


@pytest.mark.parametrize("honour_range", [True, False], ids=["range", "server-ignores-range"])
def test_an_interrupted_download_continues_with_a_range_request(monkeypatch, server, payload, dest, honour_range):
    """A server that ignores the range answers 200 with the whole file: appending that to the
    half already there would make a damaged file."""
    register(monkeypatch, server.url(), payload)
    server.honour_range = honour_range
    half = len(payload) // 2
    leave_part(dest, payload[:half])
    result = fetch(dest)
    assert result.exit_code == 0, result.output
    assert server.ranges == [f"bytes={half}-"]
    assert (dest / NAME).read_bytes() == payload


def test_a_transfer_that_breaks_off_keeps_its_part_and_the_next_run_completes_it(monkeypatch, server, payload, dest):
    register(monkeypatch, server.url(), payload)
    server.cut_after = len(payload) // 3
    broken = fetch(dest)
    assert broken.exit_code == 2, broken.output
    assert len(error_lines(broken)) == 1 and "broke off" in error_lines(broken)[0]
    assert not (dest / NAME).exists() and (dest / f"{NAME}.part").read_bytes() == payload[: len(payload) // 3]
    server.cut_after = None
    assert fetch(dest).exit_code == 0
    assert server.ranges == [None, f"bytes={len(payload) // 3}-"]
    assert (dest / NAME).read_bytes() == payload


def test_a_part_longer_than_the_file_starts_over(monkeypatch, server, payload, dest):
    register(monkeypatch, server.url(), payload)
    leave_part(dest, payload + b"stale tail")  # the server answers 416
    assert fetch(dest).exit_code == 0
    assert server.ranges == [f"bytes={len(payload) + 10}-", None]
    assert (dest / NAME).read_bytes() == payload


def test_a_complete_part_of_known_size_is_checked_without_a_request(monkeypatch, server, payload, dest):
    register(monkeypatch, server.url(), payload, size=len(payload))
    leave_part(dest, payload)  # the last run stopped between its transfer and its check
    assert fetch(dest).exit_code == 0
    assert server.ranges == [] and (dest / NAME).read_bytes() == payload


def test_checksum_mismatch_exits_2_naming_both_digests_and_keeps_nothing(monkeypatch, server, payload, dest):
    register(monkeypatch, server.url(), payload)
    server.body = payload[:-1] + bytes([payload[-1] ^ 1])  # one bit off
    result = fetch(dest)
    assert result.exit_code == 2, result.output
    [line] = error_lines(result)
    assert NAME in line and DOWNLOADS["dsprites"].digest in line and hashlib.sha256(server.body).hexdigest() in line
    assert list(dest.iterdir()) == [] and result.stdout == ""


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("where", ["closed-port", "http-404"])
def test_unreachable_url_is_one_line_exit_2_and_leaves_no_file(monkeypatch, server, payload, dest, where):
    url = f"http://127.0.0.1:{_closed_port()}/file" if where == "closed-port" else server.url("/gone")
    register(monkeypatch, url, payload)
    result = fetch(dest)
    assert result.exit_code == 2, result.output
    assert result.stderr.strip().startswith(f"error: could not reach {url}: ")
    assert len(result.stderr.strip().splitlines()) == 1
    if where == "http-404":
        assert "404" in result.stderr
    assert not dest.exists() or list(dest.iterdir()) == []


def test_a_verified_file_in_place_is_kept_without_any_request(monkeypatch, server, payload, dest):
    register(monkeypatch, server.url(), payload)
    dest.mkdir()
    (dest / NAME).write_bytes(payload)
    result = fetch(dest)
    assert result.exit_code == 0, result.output
    assert server.ranges == [] and "already there and verified" in result.stderr
    assert result.stdout.strip() == str(dest / NAME)


def test_a_different_file_in_place_is_refused_and_left_alone(monkeypatch, server, payload, dest):
    register(monkeypatch, server.url(), payload)
    dest.mkdir()
    (dest / NAME).write_bytes(b"someone else's file")
    result = fetch(dest)
    assert result.exit_code == 2 and server.ranges == []
    [line] = error_lines(result)
    assert str(dest / NAME) in line and "move it away" in line
    assert (dest / NAME).read_bytes() == b"someone else's file"


def test_celeba_says_where_to_get_it_and_exits_2(server, dest):
    result = fetch(dest, "celeba")
    assert result.exit_code == 2 and result.stdout == ""
    [line] = error_lines(result)
    assert "https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html" in line and "agreement" in line
    assert str(dest / "celeba") in line and "list_eval_partition.txt" in line
    assert not dest.exists()


def test_prepare_data_reads_the_download_folder_without_source(monkeypatch, server, payload, tmp_path):
    register(monkeypatch, server.url(), payload)
    monkeypatch.setenv("DYDIS_DATA", str(tmp_path / "data"))
    root = str(tmp_path / "artifacts")
    missing = runner.invoke(app, ["prepare-data", "--dataset", "dsprites", "--root", root])
    assert missing.exit_code == 2
    assert "dydis download dsprites" in missing.stderr and str(tmp_path / "data" / NAME) in missing.stderr
    assert runner.invoke(app, ["download", "dsprites"]).exit_code == 0
    made = runner.invoke(app, ["prepare-data", "--dataset", "dsprites", "--root", root])
    assert made.exit_code == 0, made.output
    manifest = (Path(made.stdout.strip()) / "manifest.yaml").read_text()
    assert str((tmp_path / "data" / NAME).resolve()) in manifest
    assert "n_images: 288" in manifest  # the tiny npz: 1 x 3 x 6 x 4 x 2 x 2 rows


def test_every_real_dataset_has_a_well_formed_entry():
    assert set(DOWNLOADS) == set(DATASETS) - {"synthetic", "celeba"}
    for entry in DOWNLOADS.values():
        assert len(entry.digest) == HEX_LENGTHS[entry.algorithm] and int(entry.digest, 16) >= 0
        assert entry.url.startswith(("https://", "http://")) and "/" not in entry.name
    # prepare-data reads the cars3d archive as it is downloaded
    assert download.default_source("cars3d", "d") == Path("d/nips2015-analogy-data.tar.gz")
