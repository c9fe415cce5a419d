"""Weights by name: download once into torch's cache, checked by sha256, offline errors, against a local server.

The server (127.0.0.1, a thread) serves tiny ViTs in the official files' layouts (DINO: a plain state dict; MAE:
under "model", with decoder keys) at the official paths; SIAMMAE_WEIGHTS_URL_BASE points the names at it.
"""

from __future__ import annotations

import hashlib
import time

import pytest
import timm
import torch
from click.testing import CliRunner
from weight_server import Server, as_tiny, tiny_vit, to_bytes

from siammae.errors import CheckpointError
from siammae.model import hub
from siammae.model.checkpoint import load_model
from siammae.model.hub import file_sha256
from siammae.model.weights import WEIGHTS, import_weights, resolve_weights, weights_stem

DINO_S16 = WEIGHTS["dino-vits16"]
MAE_B16 = WEIGHTS["mae-vitb16"]


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
def vit(monkeypatch):
    """The tiny ViT; dino-vits16 and mae-vitb16 expect its architecture (patch 8, width 128, 2 blocks)."""
    as_tiny(monkeypatch, "dino-vits16")
    return tiny_vit()


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
    assert model.provenance.to_dict()["weights"] == "dino-vits16" and model.provenance.to_dict()["sha256"] == sha
    assert model.provenance.to_dict()["url"] == server.base + dino_file

    again = load_model("dino-vits16")
    assert server.requests == [dino_file]  # served from the cache
    assert "downloading" not in capfd.readouterr().err
    assert again.provenance.to_dict()["sha256"] == sha


def test_named_dino_weights_give_timm_features(server, dino_file, vit):
    model = load_model("dino-vits16")
    x = torch.randn(2, 3, 32, 32)
    ours = model.features(x)  # (B, h, w, D)
    with torch.no_grad():
        ref = vit.forward_features(x)[:, 1:].reshape(2, 4, 4, 128)  # timm: [CLS] + patches after the final norm
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)


def test_truncated_download_leaves_nothing_and_next_run_retries(server, dino_file, tmp_path):
    server.faults[dino_file] = "truncate"
    with pytest.raises(CheckpointError, match=r"truncated or corrupt.*nothing was kept"):  # the check before keeping
        resolve_weights("dino-vits16", progress=False)
    assert folder_listing(tmp_path) == []  # neither the final file nor a temp file
    server.faults.clear()
    w = resolve_weights("dino-vits16", progress=False)
    assert w.path == cached(tmp_path) and len(server.requests) == 2


def test_stalled_download_times_out(server, dino_file, tmp_path, monkeypatch):
    monkeypatch.setenv("SIAMMAE_DOWNLOAD_TIMEOUT", "0.5")
    server.faults[dino_file] = "stall"
    t0 = time.perf_counter()
    with pytest.raises(
        CheckpointError, match=r"did not finish within SIAMMAE_DOWNLOAD_TIMEOUT=0\.5 s.*nothing was kept"
    ):
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
    assert server.requests == [] and model.provenance.to_dict()["sha256"] == file_sha256(path)
    assert (path.parent / (path.name + ".sha256")).exists()


def mae_bytes(vit) -> bytes:
    """The tiny ViT in MAE's layout: under "model", with the decoder's keys."""
    state = {**vit.state_dict(), "decoder_embed.weight": torch.zeros(8, 128), "mask_token": torch.zeros(1, 1, 8)}
    return to_bytes({"model": state})


def test_mae_weights_load_with_licence_notice_and_verified_pin(server, vit, monkeypatch, capfd):
    from siammae.model.weights import Pin

    data = mae_bytes(vit)
    md5 = hashlib.md5(data).hexdigest()
    as_tiny(monkeypatch, "mae-vitb16", pin=Pin("md5", md5[:6], "the test"))  # the file's own md5 prefix, as MAE's
    server.files[MAE_B16.url_path] = data
    model = load_model("mae-vitb16", progress=False)
    assert "CC-BY-NC 4.0" in capfd.readouterr().err
    prov = model.provenance
    assert prov.licence == "CC-BY-NC-4.0" and model.config.embed_dim == 128
    assert prov.verified and prov.to_dict()["status"] == "verified"
    assert prov.check == f"md5 prefix {md5[:6]} published at the test"


def test_pinned_name_refuses_a_file_that_does_not_match(server, vit, monkeypatch, tmp_path):
    """mae-vitb16 keeps MAE's published md5 prefix 8cad7c: a file served under its URL that does not match is not
    kept, whatever its architecture."""
    as_tiny(monkeypatch, "mae-vitb16", pin=WEIGHTS["mae-vitb16"].pin)
    data = mae_bytes(vit)
    assert not hashlib.md5(data).hexdigest().startswith("8cad7c")
    server.files[MAE_B16.url_path] = data
    with pytest.raises(CheckpointError, match=r"does not match the md5 prefix 8cad7c published at https://github"):
        resolve_weights("mae-vitb16", progress=False)
    assert folder_listing(tmp_path) == []


# ----------------------------------------------------------------------------------------------------- offline
@pytest.mark.parametrize("var", ["SIAMMAE_OFFLINE", "HF_HUB_OFFLINE"])
def test_offline_cold_cache_names_url_and_path(server, dino_file, tmp_path, monkeypatch, var):
    monkeypatch.setenv(var, "1")
    with pytest.raises(CheckpointError) as info:
        load_model("dino-vits16")
    msg = str(info.value)
    assert "\n" not in msg and f"{var}=1" in msg
    assert f"fetch {server.base}{dino_file} and put it at {cached(tmp_path)}" in msg
    assert "or run 'siammae-weights import FILE dino-vits16' with the file" in msg
    assert server.requests == []


def test_offline_warm_cache_works(server, dino_file, monkeypatch):
    resolve_weights("dino-vits16", progress=False)
    monkeypatch.setenv("SIAMMAE_OFFLINE", "1")
    assert load_model("dino-vits16").provenance.to_dict()["weights"] == "dino-vits16"


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
    with pytest.raises(CheckpointError, match=r"huggingface\.co/owner/repo/resolve/0123abc/w\.pth"):  # pinned
        resolve_weights("hf:owner/repo/w.pth@0123abc")
    with pytest.raises(CheckpointError, match="expected hf:<owner>/<repo>/<file>"):
        resolve_weights("hf:owner/w.pth")


def test_timm_offline_cold_cache(server, monkeypatch, tmp_path):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("SIAMMAE_OFFLINE", "1")
    hub_url = r"huggingface\.co/timm/vit_small_patch8_224\.dino"
    with pytest.raises(CheckpointError, match=rf"not in the Hugging Face cache .*SIAMMAE_OFFLINE=1.*{hub_url}"):
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
    assert server.requests == [] and model.provenance.to_dict()["weights"] == "dino-vits16"
    assert model.provenance.to_dict()["path"] == "dino-vits16" and model.provenance.to_dict()["url"] is None


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
    assert model.provenance.to_dict()["sha256"] == file_sha256(file) and model.provenance.to_dict()["path"] == str(file)
    x = torch.randn(1, 3, 224, 224)  # timm's ViT takes its own size only
    with torch.no_grad():
        expected = ref.forward_features(x)[:, 1:].reshape(1, 28, 28, 384)
    torch.testing.assert_close(model.features(x), expected)


# ------------------------------------------------------------------------- nothing bad enters the cache (issue 19)
@pytest.mark.parametrize(
    "fault, expect",
    [
        ("cut", "truncated or corrupt"),  # no Content-Length: only the check of the file catches it
        ("empty", "empty body"),
        ("html", "HTML page"),
    ],
)
def test_bad_download_is_not_kept_and_the_next_run_retries(server, dino_file, tmp_path, fault, expect):
    server.faults[dino_file] = fault
    with pytest.raises(CheckpointError) as info:
        resolve_weights("dino-vits16", progress=False)
    msg = str(info.value)
    assert expect in msg and f"nothing was kept at {cached(tmp_path)}" in msg and "\n" not in msg
    assert folder_listing(tmp_path) == []  # no file, no sha256 record, no temp file
    server.faults.clear()
    assert load_model("dino-vits16").provenance.origin == f"downloaded from {server.base}{dino_file}"


def test_html_page_served_as_binary_is_named(server, dino_file, tmp_path):
    from weight_server import HTML

    server.files[dino_file] = HTML  # a proxy that does not say what it sends
    with pytest.raises(CheckpointError, match=r"an HTML page, not a PyTorch checkpoint.*nothing was kept"):
        resolve_weights("dino-vits16", progress=False)
    assert folder_listing(tmp_path) == []


def test_wrong_architecture_is_not_kept(server, tmp_path, monkeypatch):
    as_tiny(monkeypatch, "dino-vits16")  # expects patch 8, width 128, 2 blocks
    server.files[DINO_S16.url_path] = to_bytes(tiny_vit(embed_dim=64).state_dict())
    with pytest.raises(CheckpointError, match=r"not the dino-vits16 \(ViT-S/16\) weights: patch 8, width 64, 2 blocks"):
        resolve_weights("dino-vits16", progress=False)
    assert folder_listing(tmp_path) == []


def test_trickle_past_the_total_deadline(server, dino_file, tmp_path, monkeypatch):
    """A byte every 0.5 s never trips a per-read timeout; SIAMMAE_DOWNLOAD_TIMEOUT bounds the whole download (before,
    a 40 KB file trickled this way held the run for hours). The bound on the time is loose (a loaded machine)."""
    monkeypatch.setenv("SIAMMAE_DOWNLOAD_TIMEOUT", "1.2")
    server.faults[dino_file], server.trickle_s = "trickle", 0.5
    t0 = time.perf_counter()
    late = r"did not finish within SIAMMAE_DOWNLOAD_TIMEOUT=1\.2 s.*nothing was kept"
    with pytest.raises(CheckpointError, match=late):
        resolve_weights("dino-vits16", progress=False)
    assert time.perf_counter() - t0 < 10
    assert folder_listing(tmp_path) == []


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "0", "-3", "soon"])
def test_download_timeout_must_be_finite_positive(server, dino_file, monkeypatch, value):
    monkeypatch.setenv("SIAMMAE_DOWNLOAD_TIMEOUT", value)
    with pytest.raises(CheckpointError, match=rf"SIAMMAE_DOWNLOAD_TIMEOUT='{value}'"):
        resolve_weights("dino-vits16", progress=False)
    assert server.requests == []


def test_redirect_loop_is_one_line(server, tmp_path):
    server.redirects[DINO_S16.url_path] = "/a"
    server.redirects["/a"] = DINO_S16.url_path
    with pytest.raises(CheckpointError) as info:
        resolve_weights("dino-vits16", progress=False)
    msg = str(info.value)
    assert "\n" not in msg and f"cannot download {server.base}{DINO_S16.url_path}: redirect loop" in msg


def test_hand_placed_bad_file_names_the_file_to_delete(server, dino_file, tmp_path):
    path = cached(tmp_path)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"<html>proxy says no</html>")
    with pytest.raises(CheckpointError) as info:
        load_model("dino-vits16")
    assert f"delete {path} to fetch it again" in str(info.value) and "HTML page" in str(info.value)
    assert folder_listing(tmp_path) == [path.name]  # not recorded: a record would make it look good
    assert server.requests == []


def test_bad_file_recorded_by_an_older_version_names_the_file_to_delete(server, dino_file, tmp_path):
    """A torn file that an older siammae renamed into the cache and recorded: the load error says what to delete."""
    path = cached(tmp_path)
    path.parent.mkdir(parents=True)
    data = server.files[dino_file]
    path.write_bytes(data[: len(data) // 2])
    hub.record_sha256(path, file_sha256(path))
    with pytest.raises(CheckpointError, match=rf"truncated or corrupt.*; delete {path} and {path.name}\.sha256"):
        load_model("dino-vits16")


# ---------------------------------------------------------------------------------------- provenance (issue 20.5)
def test_unpinned_name_is_reported_unverified_with_its_real_origin(server, dino_file, tmp_path):
    prov = load_model("dino-vits16").provenance
    assert not prov.verified and prov.to_dict()["status"] == "unverified"
    assert "trust on first use" in prov.check
    assert prov.url == f"{server.base}{dino_file}" and prov.origin == f"downloaded from {server.base}{dino_file}"
    assert load_model("dino-vits16").provenance.origin == "in the cache"


def test_hand_placed_file_is_not_reported_as_downloaded(server, vit, tmp_path):
    path = cached(tmp_path)
    path.parent.mkdir(parents=True)
    torch.save(vit.state_dict(), path)
    prov = load_model("dino-vits16").provenance
    assert prov.origin == "placed in the cache by hand" and prov.status == "unverified"


def test_weights_are_hashed_once_per_process(server, dino_file, tmp_path, monkeypatch):
    calls = []
    real = hub._hash_file
    monkeypatch.setattr(hub, "_hash_file", lambda path, *a: calls.append(path) or real(path, *a))
    resolve_weights("dino-vits16", progress=False)  # downloaded: hashed once, under its temporary name
    assert len(calls) == 1 and calls[0].name == DINO_S16.filename and calls[0].parent != cached(tmp_path).parent
    load_model("dino-vits16")
    load_model("dino-vits16")
    assert len(calls) == 1  # the rename kept the inode and mtime: not read again
    calls.clear()
    path = cached(tmp_path)
    with open(path, "ab") as f:  # changed: hashed again (and refused)
        f.write(b"\0")
    with pytest.raises(CheckpointError, match="differs"):
        resolve_weights("dino-vits16", progress=False)
    assert calls == [path]


def test_local_file_provenance(tmp_path, vit):
    torch.save(vit.state_dict(), tmp_path / "w.pth")
    prov = load_model(tmp_path / "w.pth").provenance
    assert prov.weights == prov.path == str(tmp_path / "w.pth") and prov.url is None
    assert prov.sha256 == hashlib.sha256((tmp_path / "w.pth").read_bytes()).hexdigest()
    assert prov.status == "unverified"


def test_long_ckpt_name_is_one_line(server):
    with pytest.raises(CheckpointError, match=r"'a{60}\.\.\. \(300 characters\)' is neither a file nor"):
        resolve_weights("a" * 300)
    with pytest.raises(CheckpointError, match=r"\(306 characters\): no such file"):
        load_model("d/" + "a" * 300 + ".pth")


# ------------------------------------------------------------------------------------- import and path (issue 22)
def test_import_places_the_file_where_the_loader_looks(server, vit, tmp_path, monkeypatch):
    monkeypatch.setenv("SIAMMAE_OFFLINE", "1")
    src = tmp_path / "from-a-usb-stick.pth"
    torch.save(vit.state_dict(), src)
    prov = import_weights(src, "dino-vits16")
    path = cached(tmp_path)
    assert prov.path == str(path) and path.read_bytes() == src.read_bytes()
    assert (path.parent / (path.name + ".sha256")).read_text().split() == [file_sha256(src), path.name]
    assert prov.status == "unverified" and prov.origin == f"imported from {src.resolve()}"
    assert folder_listing(tmp_path) == [path.name, path.name + ".sha256"]  # no temp file
    assert load_model("dino-vits16").provenance.sha256 == prov.sha256  # offline, from the cache
    assert server.requests == []


def test_import_refuses_a_wrong_file(server, vit, tmp_path, monkeypatch):
    from siammae.model.weights import Pin

    src = tmp_path / "other.pth"
    torch.save(tiny_vit(embed_dim=64).state_dict(), src)
    with pytest.raises(CheckpointError, match=r"other\.pth: not the dino-vits16 \(ViT-S/16\) weights"):
        import_weights(src, "dino-vits16")
    torch.save(vit.state_dict(), src)
    as_tiny(monkeypatch, "mae-vitb16", pin=Pin("md5", "8cad7c", "MAE's README"))
    if not hashlib.md5(src.read_bytes()).hexdigest().startswith("8cad7c"):
        with pytest.raises(CheckpointError, match="does not match the md5 prefix 8cad7c published at MAE's README"):
            import_weights(src, "mae-vitb16")
    with pytest.raises(CheckpointError, match="did you mean dino-vits16"):
        import_weights(src, "dino-vits61")
    assert folder_listing(tmp_path) == []


def test_weights_cli_path_downloads_nothing_and_import(server, dino_file, vit, tmp_path):
    from siammae.cli.weights import main

    runner = CliRunner()
    got = runner.invoke(main, ["path", "dino-vits16"])
    assert got.exit_code == 0 and got.stdout.strip() == str(cached(tmp_path))
    assert "dino-vits16 is not downloaded yet" in got.stderr
    assert server.requests == [] and folder_listing(tmp_path) == []

    src = tmp_path / "w.pth"
    torch.save(vit.state_dict(), src)
    got = runner.invoke(main, ["import", str(src), "dino-vits16"])
    assert got.exit_code == 0 and got.stdout.startswith(f"dino-vits16: {cached(tmp_path)} (unverified: ")
    got = runner.invoke(main, ["path", "dino-vits16"])
    assert got.stdout.strip() == str(cached(tmp_path)) and got.stderr == ""
    bad = runner.invoke(main, ["import", str(tmp_path / "nope.pth"), "dino-vits16"])
    assert bad.exit_code == 2 and bad.output.startswith("error: ") and "nope.pth" in bad.output


def test_weights_cli_path_of_hub_names_downloads_nothing(monkeypatch, tmp_path):
    import huggingface_hub.constants

    from siammae.cli.weights import main

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("SIAMMAE_OFFLINE", "1")
    for name, folder in [
        ("hf:owner/repo/w.pth", "models--owner--repo"),
        ("timm:vit_small_patch8_224.dino", "models--timm--vit_small_patch8_224.dino"),
    ]:
        got = CliRunner().invoke(main, ["path", name])
        assert got.exit_code == 0 and got.stdout.strip() == str(tmp_path / "hf" / folder)
        assert f"{name} is not downloaded yet" in got.stderr
    assert not (tmp_path / "hf").exists()


# ------------------------------------------------------------------------------------------------- issue 29
def test_download_checks_a_recorded_file_loads(server, dino_file, tmp_path):
    """A forged ``.sha256`` record beside an HTML page: ``siammae-weights download`` loads the file before it reports
    it present (a record proves the file did not change, not that it loads)."""
    from siammae.cli.weights import main

    path = cached(tmp_path)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"<!DOCTYPE html><html>sign in</html>")
    hub.record_sha256(path, file_sha256(path))
    got = CliRunner().invoke(main, ["download", "--quiet", "dino-vits16"])
    assert got.exit_code == 2 and got.output.startswith("error: ") and len(got.output.splitlines()) == 1
    assert "HTML page" in got.output and f"delete {path} and {path.name}.sha256" in got.output
    assert server.requests == []


@pytest.mark.parametrize("fault", ["404", "html", "no-network", "offline", "changed"])
def test_every_weights_error_names_import(server, dino_file, tmp_path, monkeypatch, fault):
    if fault == "404":
        server.files.clear()
    elif fault == "html":
        server.faults[dino_file] = "html"
    elif fault == "no-network":
        server.close()
    elif fault == "offline":
        monkeypatch.setenv("SIAMMAE_OFFLINE", "1")
    else:
        resolve_weights("dino-vits16", progress=False)
        with open(cached(tmp_path), "ab") as f:
            f.write(b"\0")
    with pytest.raises(CheckpointError) as info:
        load_model("dino-vits16", progress=False)
    assert "siammae-weights import FILE dino-vits16" in str(info.value) and "\n" not in str(info.value)


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens once it is closed


@pytest.mark.parametrize("spec", ["hf:owner/repo/w.pth", "timm:vit_small_patch8_224.dino"])
def test_hub_names_fail_fast_without_network(spec, monkeypatch, tmp_path):
    """No network and downloads not turned off: one connection attempt, no retry loop (huggingface_hub's own retries
    took 31 s for hf: and 57 s for timm: names here)."""
    import huggingface_hub.constants as C
    import huggingface_hub.utils._http as hf_http

    base = f"http://127.0.0.1:{_closed_port()}"
    monkeypatch.setattr(C, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(C, "ENDPOINT", base)
    monkeypatch.setattr(C, "HUGGINGFACE_CO_URL_TEMPLATE", base + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.delenv("SIAMMAE_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    sleeps = []
    monkeypatch.setattr(hf_http.time, "sleep", lambda s: sleeps.append(s))  # huggingface_hub's back-off between tries
    t0 = time.perf_counter()
    with pytest.raises(CheckpointError) as info:
        resolve_weights(spec, progress=False)
    assert time.perf_counter() - t0 < 10 and sleeps == []
    msg = str(info.value)
    assert msg.startswith(f"{spec}: cannot download {base}/") and "no connection to 127.0.0.1" in msg
    assert "pass the file to --ckpt" in msg and "\n" not in msg
