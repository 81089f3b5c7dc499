"""`finecut serve` on the command line: options, one-line errors, nothing heavy imported early."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest

from finecut.cli import main


def test_help_lists_the_limits(capsys):
    with pytest.raises(SystemExit) as done:
        main(["serve", "--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--host", "--port", "--max-upload-mb", "--max-pixels", "--queue", "--workers"):
        assert flag in text
    assert "127.0.0.1" in text


def test_parser_imports_neither_fastapi_nor_torch():
    code = (
        "import sys\n"
        "from finecut.cli import build_parser\n"
        "build_parser().parse_args(['serve', '--port', '0'])\n"
        "print('fastapi' in sys.modules, 'torch' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    ).stdout.strip()
    assert out == "False False"


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["--port", "70000"], "port must be in 0..65535"),
        (["--workers", "0"], "workers must be >= 1"),
        (["--queue", "-1"], "queue must be >= 0"),
        (["--max-upload-mb", "0"], "max upload"),
    ],
)
def test_bad_options_are_one_line(capsys, argv, words):
    assert main(["serve", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("finecut: error:") and words in err and "\n" not in err


def test_port_in_use_is_one_line_before_the_model_loads(capsys):
    pytest.importorskip("fastapi")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        assert main(["serve", "--port", str(port)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"finecut: error: cannot listen on 127.0.0.1:{port}") and "\n" not in err


def test_missing_extras_are_named(capsys, monkeypatch):
    import finecut.serve

    monkeypatch.setattr(finecut.serve, "missing_requirements", lambda: ["fastapi", "uvicorn"])
    assert main(["serve"]) == 2
    err = capsys.readouterr().err
    assert "fastapi, uvicorn" in err and "pip install 'finecut[serve]'" in err
