"""Small test doubles shared by several test files."""
import contextlib
import socket
import sys
import threading
import time
import uuid
from pathlib import Path


class CharTok:
    """bytes as tokens; id 0 = EOS."""
    eos_id = 0
    vocab_size = 256

    def encode(self, s):
        return list(s.encode())

    def decode(self, ids):
        return bytes(i for i in ids if i).decode("utf-8", "replace")


@contextlib.contextmanager
def serving(app):
    """Run an ASGI app with uvicorn on a free 127.0.0.1 port in a thread; yields the /v1 base URL."""
    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    th = threading.Thread(target=srv.run, daemon=True)
    th.start()
    for _ in range(200):
        if srv.started:
            break
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        srv.should_exit = True
        th.join(timeout=10)


@contextlib.contextmanager
def fake_package(tmp_path: Path, monkeypatch, prefix: str):
    """A throwaway importable package `<prefix>_<tag>` (empty `__init__.py`) under tmp_path/src; yields
    (tag, package dir) for the caller to write modules into, and forgets its modules afterwards."""
    tag = uuid.uuid4().hex[:8]
    pkg = tmp_path / "src" / f"{prefix}_{tag}"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(pkg.parent))
    try:
        yield tag, pkg
    finally:
        for k in [m for m in sys.modules if m.startswith(f"{prefix}_{tag}")]:
            del sys.modules[k]
