"""certify.allocator: glibc malloc keeps freed memory (no page faults for a re-allocated batch buffer)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

import certify.cli
from certify import allocator

glibc_linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc is Linux only")

# page faults of repeated forward passes of one conv layer (64 MiB of activations, above glibc's largest dynamic
# mmap threshold of 32 MiB): with the defaults every pass maps fresh memory and faults it in page by page; with
# keep_freed_memory the passes after the first reuse the freed blocks
_CHILD = textwrap.dedent("""
    import json, resource, sys
    import torch
    from certify.allocator import keep_freed_memory
    torch.set_num_threads(1)
    applied = keep_freed_memory() if sys.argv[1] == "keep" else None
    conv = torch.nn.Conv2d(1, 16, 3, padding=1)
    x = torch.rand(256, 1, 64, 64)
    def faults_of_one_pass():
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        with torch.inference_mode():
            conv(x).relu()
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    faults_of_one_pass()
    print(json.dumps({"applied": applied, "faults": sum(faults_of_one_pass() for _ in range(4))}))
""")

#: pages of the activations of one pass (4 KiB pages)
_PAGES = 64 * 2 ** 20 // 4096


def _child(mode: str, **env: str) -> dict:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
    out = subprocess.run([sys.executable, "-c", _CHILD, mode], check=True, capture_output=True, text=True,
                         env={**environ, **env}, timeout=120)
    return json.loads(out.stdout.strip().splitlines()[-1])


@glibc_linux
def test_keep_freed_memory_stops_page_faults_of_repeated_forward_passes():
    default = _child("default")
    kept = _child("keep")
    assert default["faults"] > 4 * _PAGES  # four passes, each faulting its activations in again
    assert kept["applied"] is True
    assert kept["faults"] < default["faults"] / 4


@glibc_linux
@pytest.mark.parametrize("env", [{"MALLOC_TRIM_THRESHOLD_": "131072"}, {"MALLOC_MMAP_THRESHOLD_": "131072"},
                                 {"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=131072"}])
def test_settings_the_user_chose_are_kept(env):
    child = _child("keep", **env)
    assert child["applied"] is False
    assert child["faults"] > 4 * _PAGES  # the user's small thresholds hold


def test_not_linux_leaves_the_allocator_alone(monkeypatch):
    monkeypatch.setattr(allocator, "_applied", False)
    monkeypatch.setattr(allocator.sys, "platform", "darwin")
    assert allocator.keep_freed_memory() is False


def test_the_command_line_keeps_freed_memory(monkeypatch):
    calls = []
    monkeypatch.setattr(certify.cli, "keep_freed_memory", lambda: calls.append(True) or True)
    with pytest.raises(SystemExit):
        certify.cli.main(["report", "--help"])  # --help exits before the command runs
    assert calls == []
    with pytest.raises(SystemExit) as info:
        certify.cli.main(["report", "/nonexistent/run-dir"])
    assert info.value.code == 2 and calls == [True]


def test_worker_environment_matches_the_in_process_settings():
    assert allocator.MALLOC_ENV == {"MALLOC_MMAP_THRESHOLD_": str(allocator.MALLOC_THRESHOLD),
                                    "MALLOC_TRIM_THRESHOLD_": str(allocator.MALLOC_THRESHOLD)}
    from certify.distributed import worker_runtime_env

    assert worker_runtime_env()["env_vars"] == allocator.MALLOC_ENV
