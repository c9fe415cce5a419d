"""A prepared data set trusts nothing it reads: shard names are plain file names, every index field is checked,
offsets.npy is never unpickled, remote bodies are read within stated bounds, and a wrong answer (HTML, garbage, a
short 206) is one error naming the file. siammae-prepare cleans a killed run's temporary tar and holds its folder."""

import http.server
import json
import os
import pathlib
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest

import siammae.data.shards as S
from siammae.data.shards import PreparedFrames
from siammae.data.video import write_video
from siammae.errors import InputError, OutputError, VideoError
from siammae.io import TMP_PREFIX
from siammae.output_folder import OutputFolder
from siammae.train.prepare import PrepareSettings, prepare


def _frames(n: int, seed: int):
    rng = np.random.default_rng(seed)
    for _ in range(n):
        yield rng.integers(0, 256, (32, 40, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("src")
    for i in range(3):
        write_video(root / f"clip{i}.mp4", _frames(6, i), fps=10)
    return root


@pytest.fixture(scope="module")
def good(videos, tmp_path_factory):
    out = tmp_path_factory.mktemp("prep") / "set"
    prepare([videos], out, PrepareSettings(short_side=32, videos_per_shard=2), quiet=True)
    return out


@pytest.fixture
def damaged(good, tmp_path):
    """A copy of the good set and a function that rewrites its index (a dict -> dict edit)."""
    out = tmp_path / "set"
    shutil.copytree(good, out)

    def edit(change):
        index = json.loads((out / "index.json").read_text())
        (out / "index.json").write_text(json.dumps(change(index)))
        return out

    return out, edit


# ------------------------------------------------------------------------------------------------ the index
@pytest.mark.parametrize("name", ["../../etc/passwd", "/etc/passwd", "sub/shard-000000.tar", "..", "x.tar\0",
                                  "http://evil/shard.tar", ".hidden.tar", "shard-000000.tgz", 7])  # fmt: skip
def test_shard_names_must_be_plain_file_names(damaged, name, monkeypatch):
    out, edit = damaged
    opened = []
    real_open = os.open
    monkeypatch.setattr(os, "open", lambda p, *a, **k: opened.append(str(p)) or real_open(p, *a, **k))
    edit(lambda ix: ix | {"shards": [name, *ix["shards"][1:]]})
    with pytest.raises(
        InputError, match=r"index.json: not a usable prepared data set: shard name .* is not a plain file"
    ):
        PreparedFrames(out)
    assert not any("passwd" in p or "evil" in p for p in opened)


def _video0(ix, drop=None, **change):
    v = {k: x for k, x in ix["videos"][0].items() if k != drop}
    return ix | {"videos": [v | change]}


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda ix: {k: v for k, v in ix.items() if k != "shards"}, "its 'shards' entry is missing or not a list"),
        (lambda ix: _video0(ix, drop="first"), "video 0 lacks 'first'"),
        (lambda ix: _video0(ix, shard=9), "video 0: shard 9 is not one of the 2 shards"),
        (lambda ix: _video0(ix, frames="6"), "frames '6' is not a whole number"),
        (lambda ix: _video0(ix, first=10**9), "video 0: rows 1000000000..1000000005 beyond the index's 18 frames"),
        (lambda ix: ix | {"total_frames": 30}, "offsets.npy: not a usable prepared data set: 18 rows but index.json"),
        # integers past int64 (an OverflowError in the numpy columns before): each bounded, named
        (lambda ix: _video0(ix, height=10**30), "video 0: height 1000000000000000000000000000000 is outside 1..65535"),
        (lambda ix: _video0(ix, width=2**63), f"video 0: width {2**63} is outside 1..65535"),
        (lambda ix: _video0(ix, id=2**63), f"video 0: id {2**63} is outside 0..{2**40}"),
        (lambda ix: _video0(ix, id=-1), f"video 0: id -1 is outside 0..{2**40}"),
        (lambda ix: ix | {"total_frames": 10**30}, "total_frames 1000000000000000000000000000000 is outside"),
        (lambda ix: _video0(ix, height=True), "video 0: height True is not a whole number"),
    ],
)
def test_index_fields_are_checked(damaged, change, message):
    out, edit = damaged
    edit(change)
    with pytest.raises(InputError) as e:
        PreparedFrames(out)
    assert message in str(e.value) and "siammae-prepare" in str(e.value), str(e.value)


class Touch:
    """Unpickling this creates a file: proof that a pickle was loaded."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.path),))


def test_a_pickled_offsets_array_is_never_loaded(damaged, tmp_path):
    out, _ = damaged
    marker = tmp_path / "unpickled"
    np.save(out / "offsets.npy", np.array([Touch(marker)] * 18, dtype=object), allow_pickle=True)
    with pytest.raises(InputError, match="offsets.npy is not a numpy integer array"):
        PreparedFrames(out)
    assert not marker.exists()


def test_offsets_of_another_shape_or_type(damaged):
    out, _ = damaged
    np.save(out / "offsets.npy", np.zeros((18, 3), np.int64))
    with pytest.raises(InputError, match=r"expected a \(frames, 2\) integer array, found int64 \(18, 3\)"):
        PreparedFrames(out)
    np.save(out / "offsets.npy", np.zeros((18, 2), np.float32))
    with pytest.raises(InputError, match="found float32"):
        PreparedFrames(out)


def test_a_frame_length_beyond_the_bound_is_refused(damaged):
    out, _ = damaged
    offsets = np.load(out / "offsets.npy")
    offsets[0, 1] = S.MAX_FRAME_BYTES + 1
    np.save(out / "offsets.npy", offsets)
    frames = PreparedFrames(out)
    with pytest.raises(VideoError, match=rf"offsets.npy says {S.MAX_FRAME_BYTES + 1} bytes at"):
        frames.read(0, [0])


# ---------------------------------------------------------------------------------------------------- HTTP
class Server(http.server.SimpleHTTPRequestHandler):
    """Serves a folder with byte ranges, or what ``override`` says for a path: (status, body, send_length)."""

    override: dict = {}
    short = False  # answer a range with 206 and fewer bytes
    sent = 0

    def log_message(self, *args):
        pass

    def do_GET(self):
        name = self.path.lstrip("/")
        if name in self.override:
            status, body, send_length = self.override[name]
        else:
            path = Path(self.translate_path(self.path))
            if not path.is_file():
                self.send_error(404)
                return
            body, status = path.read_bytes(), 200
            if self.headers.get("Range"):
                a, b = (int(x) for x in self.headers["Range"].removeprefix("bytes=").split("-"))
                body = body[a : b + 1 - (10 if self.short else 0)]
                status = 206
            send_length = True
        self.send_response(status)
        if send_length:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        try:
            for k in range(0, len(body), 65536):
                self.wfile.write(body[k : k + 65536])
                Server.sent += len(body[k : k + 65536])
        except (BrokenPipeError, ConnectionResetError):
            pass


@pytest.fixture
def serve(good):
    servers = []

    def start(override=None, short=False, root=good):
        handler = type("H", (Server,), {"override": override or {}, "short": short})
        server = http.server.ThreadingHTTPServer(
            ("127.0.0.1", 0), lambda *a, **kw: handler(*a, directory=str(root), **kw)
        )
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/"

    yield start
    for s in servers:
        s.shutdown()
        s.server_close()


@pytest.mark.parametrize(
    "body, message",
    [
        (b"<!DOCTYPE html><html><body>Sign in</body></html>", "index.json is an HTML page"),
        (b"\x00\x01garbage\xff", "index.json is not readable JSON"),
        (b'{"format": "other"}', "index.json is not a siammae-prepared-frames index"),
        (b"[" * 100_000, "index.json is JSON nested too deeply"),  # a RecursionError before
    ],
)
def test_wrong_answers_for_the_index(serve, body, message):
    url = serve({"index.json": (200, body, True)})
    with pytest.raises(InputError) as e:
        PreparedFrames(url)
    assert str(e.value).startswith(f"{url}index.json: ") and message in str(e.value), str(e.value)


@pytest.mark.parametrize("send_length", [True, False])
def test_remote_bodies_are_bounded(serve, monkeypatch, send_length):
    """A 5 MB 'index' against a 1 MB bound: refused by its Content-Length, or after reading just past the bound."""
    monkeypatch.setattr(S, "MAX_INDEX_BYTES", 2**20)
    url = serve({"index.json": (200, b" " * (5 * 2**20), send_length)})
    what = "announces 5242880 bytes, more than the 1048576 accepted" if send_length else "larger than the 1048576"
    with pytest.raises(VideoError, match=what):
        PreparedFrames(url)


def test_remote_shard_names_and_pickles(serve, damaged, tmp_path):
    out, edit = damaged
    edit(lambda ix: ix | {"shards": ["../../../etc/passwd", *ix["shards"][1:]]})
    with pytest.raises(InputError, match="'../../../etc/passwd' is not a plain file name"):
        PreparedFrames(serve(root=out))
    marker = tmp_path / "unpickled"
    edit(lambda ix: ix | {"shards": ["shard-000000.tar", "shard-000001.tar"]})
    np.save(out / "offsets.npy", np.array([Touch(marker)] * 18, dtype=object), allow_pickle=True)
    with pytest.raises(InputError, match="offsets.npy is not a numpy integer array"):
        PreparedFrames(serve(root=out))
    assert not marker.exists()


def test_a_short_range_answer_is_an_error(serve):
    frames = PreparedFrames(serve(short=True))
    n = int(frames.offsets[frames.first[1], 1])
    with pytest.raises(VideoError, match=rf"got {n - 10} bytes of {n} at offset"):
        frames.read(1, [0])


# ------------------------------------------------------------------------------------------------- prepare
def test_a_killed_runs_temporary_tar_is_removed_on_the_next_run(videos, tmp_path):
    out = tmp_path / "set"
    settings = PrepareSettings(short_side=32, videos_per_shard=2)
    prepare([videos], out, settings, quiet=True)
    # what a kill -9 during shard 1 leaves: the half-written tar under atomic_write's temporary name
    (out / "shard-000001.json").unlink()
    leftover = out / f"{TMP_PREFIX}shard-000001.k9x2a.tmp.tar"
    leftover.write_bytes(b"\0" * 4096)
    result = prepare([videos], out, settings, quiet=True)
    assert not leftover.exists() and not list(out.glob(f"{TMP_PREFIX}*"))
    assert (result.shards_made, result.shards_kept, result.videos) == (1, 1, 3)
    assert not (out / ".siammae.lock").exists()  # released


def test_prepare_takes_the_output_folder_lock(videos, tmp_path):
    out = tmp_path / "set"
    with OutputFolder(out), pytest.raises(OutputError, match="another siammae run"):
        prepare([videos], out, PrepareSettings(short_side=32), quiet=True)
    assert not (out / "index.json").exists()
