"""The CLI answers --help and reports a wrong path without importing torch (seconds)."""

from __future__ import annotations

import subprocess
import sys

import pytest


def _run(code: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    return done.stdout.strip()


def test_parser_does_not_import_torch():
    out = _run(
        "import sys\n"
        "from finecut.cli import build_parser\n"
        "build_parser()\n"
        "print('torch' in sys.modules)"
    )
    assert out == "False"


@pytest.mark.parametrize("command", ["refine", "segment"])
def test_missing_image_is_reported_before_torch_loads(tmp_path, command):
    argv = [command, str(tmp_path / "missing.jpg"), "-o", str(tmp_path / "out.png")]
    if command == "refine":
        argv += ["--mask", str(tmp_path / "m.png")]
    out = _run(
        "import sys\n"
        "from finecut.cli import main\n"
        f"rc = main({argv!r})\n"
        "print(rc, 'torch' in sys.modules)"
    )
    assert out == "2 False"
    assert not (tmp_path / "out.png").exists()


def test_segment_package_loads_its_names_on_use():
    import finecut.segment as segment
    from finecut.segment.predict import segment_image

    assert segment.segment_image is segment_image
    for name in segment.__all__:  # every advertised name resolves
        assert getattr(segment, name) is not None
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        _ = segment.nope
