"""Live sources (siammae/data/live.py): a bad capture format is one error before any byte is read, and standard
input spooled to a temporary file leaves nothing behind, even when the process is killed while the pipe stalls."""

import io
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from siammae.data.live import LiveSource, check_format
from siammae.errors import VideoError

ROOT = Path(__file__).resolve().parents[2]
# an MP4 prelude whose media (mdat) comes before its index: the case that is copied to a temporary file
FTYP = (16).to_bytes(4, "big") + b"ftypisom" + (512).to_bytes(4, "big")
MDAT_FIRST = FTYP + (1 << 20).to_bytes(4, "big") + b"mdat" + b"\0" * 4096


def test_an_unknown_format_is_one_error_before_reading():
    stdin = io.BytesIO(b"G" * 1000)
    with pytest.raises(VideoError, match=r"--format nosuchformat: not an input format this FFmpeg knows \(e\.g\."):
        LiveSource("-", format="nosuchformat", stdin=stdin)
    assert stdin.tell() == 0  # refused before the stream was touched
    check_format("mpegts")  # a real one passes
    check_format(None)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="kill -9 and /proc: Linux")
def test_kill_while_spooling_a_stalled_pipe_leaves_nothing(tmp_path):
    """README: nothing is left behind. The copy has no name in TMPDIR at any moment, so a kill -9 cannot leave one."""
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    env = {**os.environ, "TMPDIR": str(tmpdir), "PYTHONPATH": str(ROOT)}
    code = "from siammae.data.live import LiveSource; LiveSource('-')"
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        proc.stdin.write(MDAT_FIRST)  # then the writer stalls: the pipe stays open, nothing more comes
        proc.stdin.flush()
        stderr, deadline = b"", time.monotonic() + 60
        while b"copying it to a temporary file" not in stderr and time.monotonic() < deadline:
            if select.select([proc.stderr], [], [], 1)[0]:
                stderr += os.read(proc.stderr.fileno(), 4096)
        assert b"copying it to a temporary file" in stderr, stderr.decode()
        time.sleep(0.5)  # in the copy loop, waiting on the pipe
        spool = [os.readlink(f"/proc/{proc.pid}/fd/{fd}") for fd in os.listdir(f"/proc/{proc.pid}/fd")]
        assert any(str(tmpdir) in target for target in spool), spool  # the copy exists, open...
        assert list(tmpdir.iterdir()) == []  # ...and has no name
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        proc.stdin.close()
        proc.stderr.close()
    assert list(tmpdir.iterdir()) == []
