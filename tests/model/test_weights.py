"""Weights by name: download once into torch's cache, checked by sha256, offline errors, against a local server.

The server (127.0.0.1, a thread) serves tiny ViTs in the official files' layouts (DINO: a plain state dict; MAE:
under "model", with decoder keys) at the official paths; SIAMMAE_WEIGHTS_URL_BASE points the names at it.
"""

from __future__ import annotations

import io
import socketserver
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import timm
import torch
from click.testing import CliRunner

from siammae.errors import CheckpointError
from siammae.model.checkpoint import load_model
from siammae.model.hub import file_sha256
from siammae.model.weights import WEIGHTS, resolve_weights, weights_stem

DINO_S16 = WEIGHTS["dino-vits16"]
MAE_B16 = WEIGHTS["mae-vitb16"]


def tiny_timm_vit(seed: int = 0):
    torch.manual_seed(seed)
    # heads of 64 channels, as the DINO / MAE ViTs (siammae infers heads = width / 64)
    return timm.models.vision_transformer.VisionTransformer(
        img_size=32, patch_size=8, embed_dim=128, depth=2, num_heads=2, num_classes=0
    ).eval()


def to_bytes(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


class _Quick(ThreadingHTTPServer):
    def server_bind(self):  # HTTPServer's looks the host name up (socket.getfqdn): seconds on some machines
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]


class Server:
    """Files by URL path; redirects; a truncating or stalling route; counts the requests per path."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.redirects: dict[str, str] = {}
        self.truncate: set[str] = set()  # send half the bytes, then close
        self.stall: set[str] = set()  # send half the bytes, then wait
        self.requests: list[str] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
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
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.path in server.truncate or self.path in server.stall:
                    self.wfile.write(data[: len(data) // 2])
                    self.wfile.flush()
                    if self.path in server.stall:
                        time.sleep(3)
                    return
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.httpd = _Quick(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server(tmp_path, monkeypatch):
    srv = Server()
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("SIAMMAE_WEIGHTS_URL_BASE", srv.base)
    monkeypatch.setenv("SIAMMAE_DOWNLOAD_TIMEOUT", "10")
    monkeypatch.delenv("SIAMMAE_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    yield srv
    srv.close()


@pytest.fixture
def vit():
    return tiny_timm_vit()


@pytest.fixture
def dino_file(server, vit):
    """The tiny ViT served as the official DINO ViT-S/16 file (DINO's layout: a plain backbone state dict)."""
    server.files[DINO_S16.url_path] = to_bytes(vit.state_dict())
    return DINO_S16.url_path


def cached(tmp_path, w=DINO_S16):
    return tmp_path / "torch" / "hub" / "checkpoints" / w.filename


def folder_listing(tmp_path) -> list[str]:
    folder = tmp_path / "torch" / "hub" / "checkpoints"
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


# ------------------------------------------------------------------------------------------- download and cache
def test_first_use_downloads_second_use_makes_no_request(server, dino_file, tmp_path, capfd):
    model = load_model("dino-vits16")
    err = capfd.readouterr().err
    assert "downloading dino_deitsmall16_pretrain.pth" in err  # the progress bar, on stderr
    path = cached(tmp_path)
    assert path.is_file() and server.requests == [dino_file]
    sha = file_sha256(path)
    assert (path.parent / (path.name + ".sha256")).read_text().split() == [sha, path.name]
    assert model.weights_info["weights"] == "dino-vits16" and model.weights_info["sha256"] == sha
    assert model.weights_info["url"] == server.base + dino_file

    again = load_model("dino-vits16")
    assert server.requests == [dino_file]  # served from the cache
    assert "downloading" not in capfd.readouterr().err
    assert again.weights_info["sha256"] == sha


def test_named_dino_weights_give_timm_features(server, dino_file, vit):
    model = load_model("dino-vits16")
    x = torch.randn(2, 3, 32, 32)
    ours = model.features(x)  # (B, h, w, D)
    with torch.no_grad():
        ref = vit.forward_features(x)[:, 1:].reshape(2, 4, 4, 128)  # timm: [CLS] + patches after the final norm
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)


def test_truncated_download_leaves_nothing_and_next_run_retries(server, dino_file, tmp_path):
    server.truncate.add(dino_file)
    with pytest.raises(CheckpointError, match=r"stopped after \d+ of \d+ bytes.*nothing was kept"):
        resolve_weights("dino-vits16", progress=False)
    assert folder_listing(tmp_path) == []  # neither the final file nor a temp file
    server.truncate.clear()
    w = resolve_weights("dino-vits16", progress=False)
    assert w.path == cached(tmp_path) and len(server.requests) == 2


def test_stalled_download_times_out(server, dino_file, tmp_path, monkeypatch):
    monkeypatch.setenv("SIAMMAE_DOWNLOAD_TIMEOUT", "0.5")
    server.stall.add(dino_file)
    t0 = time.perf_counter()
    with pytest.raises(CheckpointError, match="failed after .*nothing was kept"):
        resolve_weights("dino-vits16", progress=False)
    assert time.perf_counter() - t0 < 2.5
    assert folder_listing(tmp_path) == []


def test_changed_cached_file_is_refused(server, dino_file, tmp_path):
    resolve_weights("dino-vits16", progress=False)
    path = cached(tmp_path)
    with open(path, "ab") as f:
        f.write(b"\0")
    with pytest.raises(CheckpointError, match=f"{path.name}: sha256 .* differs .* changed"):
        load_model("dino-vits16")
    assert len(server.requests) == 1


def test_redirect_is_followed(server, vit, tmp_path):
    server.files["/mirror/dino.pth"] = to_bytes(vit.state_dict())
    server.redirects[DINO_S16.url_path] = "/mirror/dino.pth"
    w = resolve_weights("dino-vits16", progress=False)
    assert server.requests == [DINO_S16.url_path, "/mirror/dino.pth"]
    assert file_sha256(w.path) == w.sha256 and w.path == cached(tmp_path)


def test_404_is_a_clean_error(server, tmp_path):
    with pytest.raises(CheckpointError, match=rf"cannot download {server.base}{DINO_S16.url_path}: HTTP 404"):
        resolve_weights("dino-vits16", progress=False)
    assert folder_listing(tmp_path) == []


def test_hand_placed_file_is_used_and_recorded(server, vit, tmp_path):
    path = cached(tmp_path)
    path.parent.mkdir(parents=True)
    torch.save(vit.state_dict(), path)
    model = load_model("dino-vits16")
    assert server.requests == [] and model.weights_info["sha256"] == file_sha256(path)
    assert (path.parent / (path.name + ".sha256")).exists()


def test_mae_weights_load_with_licence_notice(server, vit, capfd):
    state = {**vit.state_dict(), "decoder_embed.weight": torch.zeros(8, 128), "mask_token": torch.zeros(1, 1, 8)}
    server.files[MAE_B16.url_path] = to_bytes({"model": state})
    model = load_model("mae-vitb16", progress=False)
    assert "CC-BY-NC 4.0" in capfd.readouterr().err
    assert model.weights_info["licence"] == "CC-BY-NC-4.0" and model.config.embed_dim == 128


# ----------------------------------------------------------------------------------------------------- offline
@pytest.mark.parametrize("var", ["SIAMMAE_OFFLINE", "HF_HUB_OFFLINE"])
def test_offline_cold_cache_names_url_and_path(server, dino_file, tmp_path, monkeypatch, var):
    monkeypatch.setenv(var, "1")
    with pytest.raises(CheckpointError) as info:
        load_model("dino-vits16")
    msg = str(info.value)
    assert "\n" not in msg and f"{var}=1" in msg
    assert f"fetch {server.base}{dino_file} and put it at {cached(tmp_path)}" in msg
    assert server.requests == []


def test_offline_warm_cache_works(server, dino_file, monkeypatch):
    resolve_weights("dino-vits16", progress=False)
    monkeypatch.setenv("SIAMMAE_OFFLINE", "1")
    assert load_model("dino-vits16").weights_info["weights"] == "dino-vits16"


def test_no_network_is_a_clean_error(server, tmp_path, monkeypatch):
    base = server.base
    server.close()  # nothing listens on the port any more
    with pytest.raises(CheckpointError, match=rf"cannot download {base}.*put it at {cached(tmp_path)}"):
        resolve_weights("dino-vits16", progress=False)


def test_hf_offline_cold_cache(server, monkeypatch, tmp_path):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("SIAMMAE_OFFLINE", "1")
    with pytest.raises(CheckpointError, match=r"https://huggingface\.co/owner/repo/resolve/main/sub/w\.pth"):
        resolve_weights("hf:owner/repo/sub/w.pth")
    with pytest.raises(CheckpointError, match="expected hf:<owner>/<repo>/<file>"):
        resolve_weights("hf:owner/w.pth")


def test_timm_offline_cold_cache(server, monkeypatch, tmp_path):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("SIAMMAE_OFFLINE", "1")
    with pytest.raises(CheckpointError, match=r"not in timm's cache .*huggingface\.co/timm/vit_small_patch8_224\.dino"):
        load_model("timm:vit_small_patch8_224.dino")
    with pytest.raises(CheckpointError, match=r"did you mean vit_small_patch8_224\.dino"):
        load_model("timm:vit_small_patch8_224.dnio")


# ------------------------------------------------------------------------------------------------------- names
def test_unknown_name_suggests_close_names(server):
    with pytest.raises(CheckpointError, match="did you mean dino-vits16"):
        load_model("dino-vit16")
    with pytest.raises(CheckpointError, match="no such file"):  # a path-like string stays a missing file
        load_model("runs/dino-vits16.pth")
    assert server.requests == []


def test_existing_path_wins_over_name(server, dino_file, vit, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    torch.save(vit.state_dict(), tmp_path / "dino-vits16")
    model = load_model("dino-vits16")
    assert server.requests == [] and model.weights_info["weights"] == "dino-vits16"
    assert model.weights_info["path"] == "dino-vits16" and model.weights_info["url"] is None


def test_weights_stem():
    assert weights_stem("dino-vits8") == "dino-vits8"
    assert weights_stem("timm:vit_small_patch8_224.dino") == "timm-vit_small_patch8_224.dino"
    assert weights_stem("runs/model.pt") == "model"


# --------------------------------------------------------------------------------------------------------- CLI
def test_weights_cli(server, dino_file, tmp_path):
    from siammae.cli.weights import main

    runner = CliRunner()
    listing = runner.invoke(main, ["list"])
    assert listing.exit_code == 0
    row = next(line for line in listing.output.splitlines() if line.startswith("dino-vits8"))
    assert "ViT-S/8" in row and "69.9" in row and "Apache-2.0" in row and row.endswith("no")

    got = runner.invoke(main, ["download", "--quiet", "dino-vits16"])
    assert got.exit_code == 0 and str(cached(tmp_path)) in got.output
    listing = runner.invoke(main, ["list"]).output
    assert next(line for line in listing.splitlines() if line.startswith("dino-vits16")).endswith("yes")
    assert runner.invoke(main, ["path", "dino-vits16"]).output.strip() == str(cached(tmp_path))
    assert len(server.requests) == 1

    bad = runner.invoke(main, ["path", "dino-vitb"])
    assert bad.exit_code == 2 and bad.output.startswith("error: ") and "did you mean" in bad.output


def test_export_by_name_lands_in_the_current_folder(server, dino_file, tmp_path, monkeypatch):
    from siammae.export.metadata import read_info
    from siammae.export.onnx import export_onnx

    monkeypatch.chdir(tmp_path)
    path = export_onnx("dino-vits16", height=32, width=48, max_batch=1, verify=False)
    assert path == tmp_path / "dino-vits16_32x48.onnx" or path.resolve() == tmp_path / "dino-vits16_32x48.onnx"
    info = read_info(path)
    assert info.checkpoint == "dino-vits16" and info.checkpoint_sha256 == file_sha256(cached(tmp_path))


def test_timm_weights_from_the_hugging_face_cache_offline(monkeypatch, tmp_path):
    """timm:<name> with its file in the HF cache: loaded by timm from that file, no network, same features."""
    import huggingface_hub.constants
    from safetensors.torch import save_file

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("SIAMMAE_OFFLINE", "1")
    torch.manual_seed(0)
    ref = timm.create_model("vit_small_patch8_224", pretrained=False, num_classes=0).eval()
    repo = tmp_path / "hf" / "models--timm--vit_small_patch8_224.dino"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    (repo / "snapshots" / ("0" * 40)).mkdir(parents=True)
    file = repo / "snapshots" / ("0" * 40) / "model.safetensors"
    save_file(ref.state_dict(), str(file))

    model = load_model("timm:vit_small_patch8_224.dino")
    assert model.weights_info["sha256"] == file_sha256(file) and model.weights_info["path"] == str(file)
    x = torch.randn(1, 3, 224, 224)  # timm's ViT takes its own size only
    with torch.no_grad():
        expected = ref.forward_features(x)[:, 1:].reshape(1, 28, 28, 384)
    torch.testing.assert_close(model.features(x), expected)
