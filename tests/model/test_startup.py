"""Start-up of a run (issue 30): what a tracking run imports, how a model is built for its weights, and the hash
of the weights computed while torch imports. benchmarks/bench_startup.py measures the times."""

import hashlib
import os
import subprocess
import sys

import torch

from siammae.model import hub
from siammae.model.checkpoint import load_model
from siammae.model.encoder import ViTEncoder
from siammae.model.load import choose_weights
from siammae.model.registry import model_config


def test_loaded_model_holds_the_file_exactly_and_no_meta_tensors(tmp_path):
    """Loading builds the model on the meta device and loads into uninitialised memory: every value must come from
    the file, trainability as a freshly built model has it."""
    torch.manual_seed(0)
    enc = ViTEncoder(model_config("tiny"))
    torch.save(enc.state_dict(), tmp_path / "w.pth")
    loaded = load_model(tmp_path / "w.pth", arch="tiny")
    state = loaded.state_dict()
    assert all(torch.equal(state[k], v) for k, v in enc.state_dict().items())
    assert not any(t.is_meta for t in [*loaded.parameters(), *loaded.buffers()])
    fresh = {n: p.requires_grad for n, p in ViTEncoder(loaded.config).named_parameters()}
    assert {n: p.requires_grad for n, p in loaded.named_parameters()} == fresh
    assert not loaded.training


def _run(code: str) -> dict[str, set[str]]:
    """Run ``code`` in a fresh interpreter; -> {"ALL": every module imported, and what the code prints as
    ``NAME m1 m2 ...`` lines}."""
    code += "\nimport sys\nprint('ALL', ' '.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return {line.split()[0]: set(line.split()[1:]) for line in out.splitlines() if line[:1].isupper()}


def _heavy(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if m.split(".")[0] in ("timm", "torchvision"))


def test_the_model_imports_neither_timm_nor_torchvision():
    modules = _run(
        "import siammae.model.encoder, siammae.model.decoder, siammae.model.siammae, siammae.model.checkpoint\n"
        "import siammae.export.runtime, siammae.export.attention, siammae.tracking.job, siammae.cli.track"
    )["ALL"]
    assert "torch" in modules and _heavy(modules) == []


def test_a_tracking_run_imports_neither_timm_nor_torchvision_nor_dynamo(fixture_data, tmp_path):
    """A whole small siammae-track run on a local checkpoint: no timm, no torchvision; and the run pulls in no
    torch._dynamo / sympy that importing torch did not already load (building the meta-device skeleton with
    ``normal_`` / ``arange``, or ``to_empty``, goes through decompositions that import them: 1 s)."""
    torch.manual_seed(0)
    torch.save(ViTEncoder(model_config("tiny")).state_dict(), tmp_path / "w.pth")
    seq = fixture_data / "davis2016"
    frames = seq / "JPEGImages" / "480p" / "blackswan"
    mask = seq / "Annotations" / "480p" / "blackswan" / "00000.png"
    code = (
        "import sys, torch\n"
        "before = set(sys.modules)\n"
        "from siammae.cli.track import main\n"
        f"main([{str(frames)!r}, '--mask', {str(mask)!r}, '--ckpt', {str(tmp_path / 'w.pth')!r}, '--arch', 'tiny',"
        f" '--size', '64', '--quiet', '--out', {str(tmp_path / 'out')!r}], standalone_mode=False)\n"
        "new = set(sys.modules) - before\n"
        "print('NEW', ' '.join(sorted(m for m in new if m.split('.')[0] == 'sympy' or m.startswith('torch._dynamo'))))"
    )
    modules = _run(code)
    assert len(list((tmp_path / "out").glob("*.png"))) == len(list(frames.glob("*.jpg")))  # the run ran
    assert _heavy(modules["ALL"]) == []
    assert modules["NEW"] == set()
    assert "triton" not in modules["ALL"]  # the top-k op's Triton program is imported on a GPU launch only (75 ms)


def test_the_weights_hash_is_computed_once_in_a_thread_while_torch_imports(tmp_path, monkeypatch):
    """choose_weights (the commands' check, before torch) starts hashing a local file; loading then finds the
    digest done, hashed once; a file changed since is hashed again, not served the old digest."""
    path = tmp_path / "w.pth"
    path.write_bytes(os.urandom(3 << 20))
    calls = []
    real = hub._hash_file
    monkeypatch.setattr(hub, "_hash_file", lambda p, *a: calls.append(p) or real(p, *a))
    choose_weights(str(path))
    assert hub._PENDING[hub._file_key(path)].name == "siammae-hash"  # started, in a thread
    assert hub.file_sha256(path) == hashlib.sha256(path.read_bytes()).hexdigest()
    assert hub.file_sha256(path) == hashlib.sha256(path.read_bytes()).hexdigest()
    assert calls == [path]
    path.write_bytes(b"other weights")
    choose_weights(str(path))
    assert hub.file_sha256(path) == hashlib.sha256(b"other weights").hexdigest()
    assert calls == [path, path]
    pending = dict(hub._PENDING)
    hub.prefetch_digests(tmp_path / "gone.pth")  # a missing file: nothing started, no error (the loader says)
    assert pending == hub._PENDING


def test_choosing_weights_imports_no_torch(tmp_path):
    (tmp_path / "w.pth").write_bytes(b"x" * 1000)
    code = f"import sys\nfrom siammae.model.load import choose_weights\nchoose_weights({str(tmp_path / 'w.pth')!r})\n"
    assert "torch" not in _run(code)["ALL"]
