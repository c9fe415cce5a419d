"""siammae.allocator: the CPU allocator setting that keeps a CPU run's activations out of the page-fault path."""

import platform
import subprocess
import sys

import pytest

glibc = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's (Linux)"
)

# The frame encoder on a CPU, a few passes over one frame: with glibc's defaults its large activations are mmap'd
# and unmapped, or trimmed off the heap, every pass, so each pass faults their pages in anew.
_PROBE = """
import json, resource, sys
import torch
from siammae.allocator import tune_cpu_allocator
from siammae.model.encoder import ViTEncoder
from siammae.model.registry import model_config
applied = tune_cpu_allocator() if sys.argv[1] == "tune" else None
again = tune_cpu_allocator() if sys.argv[1] == "tune" else None
if sys.argv[2:] == ["no-run"]:
    print(json.dumps({"applied": applied, "again": again}))
    raise SystemExit
torch.set_num_threads(1)
torch.manual_seed(0)
model = ViTEncoder(model_config("vits16", depth=2)).eval()
x = torch.randn(1, 3, 320, 576)
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
with torch.inference_mode():
    model.features(x)
    model.features(x)
    start = faults()
    for _ in range(5):
        model.features(x)
print(json.dumps({"applied": applied, "again": again, "faults": faults() - start}))
"""


def _probe(mode: str, env: dict | None = None, run: bool = True) -> dict:
    import json
    import os

    full = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k not in ("LD_PRELOAD",)}
    full.pop("GLIBC_TUNABLES", None)
    full.update(env or {})
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, mode, *([] if run else ["no-run"])],
        capture_output=True,
        text=True,
        env=full,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


@glibc
def test_tuned_allocator_reuses_large_blocks_instead_of_faulting_them_in():
    default, tuned = _probe("default"), _probe("tune")
    assert tuned["applied"] is True and tuned["again"] is True  # idempotent
    # thousands of faults by default (7 000 to 38 000 here); tuned, the blocks are reused and stay mapped (500 to 1 100)
    assert default["faults"] > 2000, default
    assert tuned["faults"] < default["faults"] / 3, (tuned, default)


@glibc
@pytest.mark.parametrize(
    "env",
    [
        {"MALLOC_ARENA_MAX": "2"},
        {"GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=65536"},
        {"SIAMMAE_NO_MALLOC_TUNING": "1"},  # the documented opt-out
    ],
)
def test_an_allocator_the_environment_chooses_is_left_alone(env):
    probe = _probe("tune", env, run=False)
    assert probe["applied"] is False and probe["again"] is False, probe


_ENTRY = """
import sys
import siammae.allocator as allocator
from siammae.propagation.features import TorchEncoder
from siammae.model.registry import create_model
TorchEncoder(create_model("tiny"), device="cpu")
library = allocator._CPU_ALLOCATOR_TUNED
from siammae.cli.track import main
try:
    main(["missing.mp4", "--mask", "m.png"])
except SystemExit:
    pass
print(library, allocator._CPU_ALLOCATOR_TUNED)
"""


@glibc
@pytest.mark.parametrize(("env", "command"), [({}, True), ({"SIAMMAE_NO_MALLOC_TUNING": "1"}, False)])
def test_the_library_leaves_malloc_alone_and_the_command_tunes_it_once(tmp_path, env, command):
    """Building an encoder on a CPU changes nothing of the process; ``siammae-track`` tunes malloc at its entry
    (even when it then stops on bad input), unless ``SIAMMAE_NO_MALLOC_TUNING=1``."""
    import os

    full = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k not in ("LD_PRELOAD",)}
    full.pop("GLIBC_TUNABLES", None)
    full.pop("SIAMMAE_NO_MALLOC_TUNING", None)
    full.update(env)
    out = subprocess.run([sys.executable, "-c", _ENTRY], cwd=tmp_path, capture_output=True, text=True, env=full,
                         check=True)  # fmt: skip
    assert out.stdout.split() == ["False", str(command)], out.stdout + out.stderr
