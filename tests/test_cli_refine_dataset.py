"""`finecut refine-dataset` before any Ray work: a missing Ray and bad input are one line each.

The run on Ray itself (same masks as `finecut refine`, skip-done) is tests/cluster/test_ray.py.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from finecut.cli import main


def _run(capsys: pytest.CaptureFixture, *argv: object) -> tuple[int, str]:
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err


def _one_error_line(err: str, *needles: str) -> None:
    lines = [line for line in err.splitlines() if line.startswith("finecut:")]
    assert len(lines) == 1, err
    assert lines[0].startswith("finecut: error:") and "Traceback" not in err, err
    for needle in needles:
        assert needle in lines[0], (needle, err)


def test_without_ray_one_clear_line(capsys, monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    code, err = _run(capsys, "refine-dataset", tmp_path, "-o", tmp_path / "out")
    assert code == 2
    assert err.strip() == "finecut: error: refine-dataset needs Ray: pip install 'finecut[ray]'"


def test_import_finecut_does_not_import_ray() -> None:
    code = (
        "import sys, finecut, finecut.cli, finecut.cluster.items, finecut.cluster.work, "
        "finecut.cluster.ray_job; assert 'ray' not in sys.modules, 'ray imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize(
    ("case", "needles"),
    [
        ("missing folder", ("image folder", "no such folder")),
        ("missing manifest", ("manifest", "not found")),
        ("bad manifest", ("needs a header with the columns image and mask",)),
        ("bad url", ("cannot open 'nosuchproto://bucket/images'",)),
        ("manifest and --mask", ("--mask is for a folder SOURCE",)),
        ("bad workers", ("workers must be at least 1",)),
        ("output is a file", ("output prefix", "is a file")),
    ],
)
def test_bad_input_one_line(capsys, tmp_path: Path, case: str, needles: tuple[str, ...]) -> None:
    pytest.importorskip("ray")
    (tmp_path / "m.csv").write_text("path,mask\na.jpg,a.png\n")
    (tmp_path / "im").mkdir()
    (tmp_path / "im" / "a.jpg").write_bytes(b"x")
    (tmp_path / "im" / "a_mask.png").write_bytes(b"x")
    (tmp_path / "file").write_bytes(b"x")
    out = tmp_path / "out"
    argv = {
        "missing folder": [tmp_path / "nope", "-o", out],
        "missing manifest": [tmp_path / "nope.csv", "--manifest", "-o", out],
        "bad manifest": [tmp_path / "m.csv", "--manifest", "-o", out],
        "bad url": ["nosuchproto://bucket/images", "-o", out],
        "manifest and --mask": [tmp_path / "m.csv", "--manifest", "--mask", tmp_path, "-o", out],
        "bad workers": [tmp_path / "im", "-o", out, "--workers", "0"],
        "output is a file": [tmp_path / "im", "-o", tmp_path / "file"],
    }[case]
    code, err = _run(capsys, "refine-dataset", *argv)
    assert code == 2
    _one_error_line(err, *needles)
