"""The README's "Your own model" section runs as written, in order, in an empty folder.

Blocks: ```python file=NAME``` writes NAME; ```python``` is executed (one namespace per block); ```bash``` holds
``certify ...`` commands (``\\`` continues a line; a leading ``PYTHONPATH=.`` is the folder itself, which is on
``sys.path`` here), each run through :func:`certify.cli.main` and required to exit with 0.
"""
import json
import re
import shlex
import sys
from pathlib import Path

import pytest

from certify import cli

README = Path(__file__).resolve().parents[1] / "README.md"
SECTION = "## Your own model\n"


def section() -> str:
    """The README's "Your own model" section (up to the next second-level heading)."""
    text = README.read_text()
    start = text.index(SECTION)
    end = text.find("\n## ", start + len(SECTION))
    return text[start:] if end < 0 else text[start:end]
FENCE = re.compile(r"^```(\w+)([^\n]*)\n(.*?)^```", re.S | re.M)


def blocks() -> list[tuple[str, str, str]]:
    return [(m.group(1), m.group(2).strip(), m.group(3)) for m in FENCE.finditer(section())]


def commands(script: str) -> list[list[str]]:
    out = []
    for line in script.replace("\\\n", " ").splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        argv = shlex.split(line)
        while argv and re.fullmatch(r"[A-Z_]+=.*", argv[0]):
            assert argv.pop(0) == "PYTHONPATH=.", line
        assert argv[0] == "certify", f"only certify commands can be run here: {line}"
        out.append(argv[1:])
    return out


def test_the_doc_has_every_part():
    kinds = [(k, info) for k, info, _ in blocks()]
    assert ("python", "file=my_net.py") in kinds and ("bash", "") in kinds
    text = section()
    for needle in ("state_dict", ".npz", "image folder", "--mean", "Normalized", "torchvision:resnet18",
                   "--arch-kwargs", "class_to_idx"):
        assert needle in text, needle


def test_every_block_runs_in_order(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "my_net", raising=False)
    try:
        ran = _run_blocks(tmp_path)
    finally:
        sys.modules.pop("my_net", None)     # imported from tmp_path by the doc's blocks
    assert ran == len(blocks())
    assert json.loads((tmp_path / "runs/mine_folder/run.json").read_text())["class_to_idx"] == {"3": 3, "7": 7}
    assert "img0.png" in (tmp_path / "runs/mine_folder/rows.tsv").read_text()
    assert (tmp_path / "runs/mine/rows.tsv").is_file() and (tmp_path / "runs/resnet18/rows.tsv").is_file()
    assert json.loads((tmp_path / "runs/width64/run.json").read_text())["arch_kwargs"] == {"width": 64}


def _run_blocks(tmp_path: Path) -> int:
    ran = 0
    for kind, info, body in blocks():
        if kind == "python" and info.startswith("file="):
            (tmp_path / info[len("file="):]).write_text(body)
        elif kind == "python":
            exec(compile(body, "README your-own-model block", "exec"), {"__name__": "__doc_block__"})  # noqa: S102
        elif kind == "bash":
            for argv in commands(body):
                assert cli.main(["-q", *argv]) == 0, argv
        else:  # pragma: no cover - the doc uses only these kinds
            pytest.fail(f"unexpected block kind {kind!r}")
        ran += 1
    return ran
