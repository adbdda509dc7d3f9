"""A loopback HTTP server with routes a test sets: images, redirects, slow or broken replies."""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class BackloggedHTTPServer(ThreadingHTTPServer):
    """socketserver listens with a backlog of 5: a sixth concurrent client's SYN is dropped
    and retried a second later, which looks like a 1 s stall of whoever fetches from it."""

    request_queue_size = 128
    daemon_threads = True


@dataclass
class Route:
    body: bytes = b""
    status: int = 200
    headers: dict[str, str] = field(default_factory=lambda: {"Content-Type": "image/png"})
    delay: float = 0.0
    drip: float = 0.0  # seconds between 16-byte pieces of the body
    send_length: bool = True
    cut_after: int | None = None  # send this many bytes of the body, then close the connection


class LoopbackServer:
    """Serves `routes` (path -> Route) on 127.0.0.1 and records request headers per path."""

    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}
        self.seen: dict[str, list[dict[str, str]]] = {}
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                path = self.path.split("?", 1)[0]
                server.seen.setdefault(path, []).append(dict(self.headers))
                route = server.routes.get(path, Route(b"not found", 404, {}))
                if route.delay:
                    time.sleep(route.delay)
                self.send_response(route.status)
                for key, value in route.headers.items():
                    self.send_header(key, value)
                if route.send_length:
                    self.send_header("Content-Length", str(len(route.body)))
                else:
                    self.send_header("Connection", "close")
                    self.close_connection = True
                self.end_headers()
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    if route.cut_after is not None:
                        self.wfile.write(route.body[:route.cut_after])
                        self.close_connection = True
                        return
                    if not route.drip:
                        self.wfile.write(route.body)
                        return
                    for start in range(0, len(route.body), 16):
                        self.wfile.write(route.body[start:start + 16])
                        self.wfile.flush()
                        time.sleep(route.drip)

            def log_message(self, *args: object) -> None:
                pass

        self._httpd = BackloggedHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self._httpd.server_address[1]
        self.base = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    def __enter__(self) -> LoopbackServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def add(self, path: str, body: bytes = b"", **kwargs: object) -> str:
        self.routes[path] = Route(body, **kwargs)  # type: ignore[arg-type]
        return self.base + path


def serve_folder(folder: str, port: int) -> None:
    """Serve a folder's files on 127.0.0.1:port until killed (benchmarks' image server)."""
    from functools import partial
    from http.server import SimpleHTTPRequestHandler

    class Quiet(SimpleHTTPRequestHandler):
        # Keep-alive, as real image hosts (Azure Blob, Label Studio) answer: HTTP/1.0 would
        # cost a connection, and a server thread, per image.
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

    BackloggedHTTPServer(("127.0.0.1", port), partial(Quiet, directory=folder)).serve_forever()


if __name__ == "__main__":
    import sys

    serve_folder(sys.argv[1], int(sys.argv[2]))
