"""Running the app: bind the socket, print the address, serve until Ctrl-C."""

from __future__ import annotations

import logging
import socket
import sys
import warnings

from finecut.errors import ConfigError
from finecut.serve.config import ServeConfig
from finecut.serve.models import Models

log = logging.getLogger(__name__)

__all__ = ["bind", "run"]


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (port 0: a free one); ConfigError if it cannot."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ConfigError(f"cannot listen on {host!r}: {exc.strerror}") from None
    family, _, _, _, address = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.set_inheritable(True)
    return sock


def url_of(sock: socket.socket) -> str:
    """``http://host:port/`` of a bound socket (IPv6 hosts in brackets)."""
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/"


def run(config: ServeConfig) -> None:
    """Serve ``config`` until interrupted (Ctrl-C: KeyboardInterrupt after a clean shutdown).

    The socket is bound first (a port in use fails at once), then the refiner is loaded (unless
    ``config.preload`` is False), then the address is printed on stdout, so a caller may wait
    for that line: connections made before it wait in the socket's backlog.
    """
    import uvicorn

    from finecut.serve.app import create_app

    sock = bind(config.host, config.port)  # first: a port in use is reported at once
    try:
        models = Models(config)
        if config.preload:
            log.info("loading the refiner ...")
            models.refiner()
    except BaseException:
        sock.close()
        raise
    # the refiner warns about empty/full masks; the server says so in a header instead
    warnings.filterwarnings("ignore", message=r"the mask is (empty|full)")
    # PIL warns (with a source line) about corrupt metadata in uploads it still reads
    warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.")
    app = create_app(config, models=models)
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            log_config=None,  # the CLI's logging: one line per message
            timeout_keep_alive=5,
            timeout_graceful_shutdown=5,
            limit_concurrency=max(64, 4 * config.capacity),
            server_header=False,
        )
    )
    url = url_of(sock)
    if config.host not in ("127.0.0.1", "localhost", "::1"):
        log.warning(
            "listening on %s: anyone who can reach it can use it (no authentication)", config.host
        )
    print(f"finecut serve: {url}  (Ctrl-C stops)", flush=True)
    print(f"  API: {url}openapi.json  health: {url}healthz", flush=True)
    sys.stdout.flush()
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
