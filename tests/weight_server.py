"""A local HTTP server (127.0.0.1, a thread) standing in for the weights' host, and tiny ViTs in the official layouts.

Routes serve files by URL path, with faults chosen per path: ``truncate`` (half the bytes of an announced length),
``cut`` (half the bytes, no Content-Length, then close), ``stall`` (half, then silence), ``trickle`` (one byte every
``trickle_s`` seconds), ``html`` (a login page as text/html), ``empty`` (a 0-byte body); ``redirects`` map a path to
another (a loop when they point at each other). Used by tests/model/test_weights*.py and the weights rows of
tests/test_faults.py.
"""

from __future__ import annotations

import dataclasses
import io
import socketserver
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import timm
import torch

HTML = b"<!DOCTYPE html>\n<html><head><title>Sign in</title></head><body>Please sign in</body></html>\n"


def tiny_vit(seed: int = 0, embed_dim: int = 128, patch_size: int = 8, depth: int = 2):
    torch.manual_seed(seed)
    # heads of 64 channels, as the DINO / MAE ViTs (siammae infers heads = width / 64)
    return timm.models.vision_transformer.VisionTransformer(
        img_size=32, patch_size=patch_size, embed_dim=embed_dim, depth=depth, num_heads=max(1, embed_dim // 64),
        num_classes=0,
    ).eval()  # fmt: skip


def to_bytes(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def as_tiny(monkeypatch, name: str, embed_dim: int = 128, patch_size: int = 8, depth: int = 2, **changes):
    """Make the named weight ``name`` expect the tiny ViT's architecture (the real files are 87-330 MB), so that
    the architecture check before a file enters the cache runs on test-sized files."""
    from siammae.model.weights import WEIGHTS

    tiny = dataclasses.replace(WEIGHTS[name], embed_dim=embed_dim, patch_size=patch_size, depth=depth, **changes)
    monkeypatch.setitem(WEIGHTS, name, tiny)
    return tiny


class _Quick(ThreadingHTTPServer):
    owner: Server  # whose files, faults and redirects the handler serves

    def server_bind(self):  # HTTPServer's looks the host name up (socket.getfqdn): seconds on some machines
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]


class _Handler(BaseHTTPRequestHandler):
    """One GET: a redirect, a 404, or the file at the path with the path's fault (module docstring)."""

    def do_GET(self):
        server = self.server.owner
        server.requests.append(self.path)
        if self.path in server.redirects:
            self.send_response(302)
            self.send_header("Location", server.redirects[self.path])
            self.end_headers()
            return
        data = server.files.get(self.path)
        if data is None:
            self.send_error(404)
            return
        fault = server.faults.get(self.path)
        if fault == "html":
            data = HTML
        elif fault == "empty":
            data = b""
        self.send_response(200)
        self.send_header("Content-Type", "text/html" if fault == "html" else "application/octet-stream")
        if fault != "cut":
            self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self._write_body(data, fault)

    def _write_body(self, data: bytes, fault: str | None) -> None:
        try:
            if fault in ("truncate", "stall", "cut"):
                self.wfile.write(data[: len(data) // 2])
                self.wfile.flush()
                if fault == "stall":
                    time.sleep(3)
            elif fault == "trickle":
                for i in range(len(data)):
                    self.wfile.write(data[i : i + 1])
                    self.wfile.flush()
                    time.sleep(self.server.owner.trickle_s)
            else:
                self.wfile.write(data)
        except OSError:  # the client gave up (the tests' point)
            pass

    def log_message(self, *args):
        pass


class Server:
    """Files by URL path, with a fault per path (module docstring); counts the requests per path."""

    def __init__(self, trickle_s: float = 2.0):
        self.files: dict[str, bytes] = {}
        self.redirects: dict[str, str] = {}
        self.faults: dict[str, str] = {}
        self.requests: list[str] = []
        self.trickle_s = trickle_s
        self.httpd = _Quick(("127.0.0.1", 0), _Handler)
        self.httpd.owner = self
        self.httpd.daemon_threads = True
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
