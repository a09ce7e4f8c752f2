"""nginx as the baseline: storing request bodies, and serving static files.

Upload baseline: ``client_body_in_file_only`` makes nginx read the whole body
into a file of its own, which it keeps; ``proxy_pass_request_body off`` then
sends only the headers on to a ``return 201`` server block, the usual recipe
for "nginx stores the upload, the app gets the file name" (``return`` alone
would discard the body unread). :meth:`Nginx.take_body_files` checks that
the file is really there, whole, and removes it.

Static baseline: a plain ``location`` on the same bytes, with Debian's default
``sendfile on; tcp_nopush on``.
"""

from __future__ import annotations

import os
from pathlib import Path

from tests.perf.harness import Server, free_port
from tests.perf.tools import program

CONFIG = """\
daemon off;
worker_processes 1;
{user}
error_log {prefix}/error.log warn;
pid {prefix}/nginx.pid;
events {{ worker_connections 1024; }}
http {{
    access_log {prefix}/access.log combined buffer=64k;
    sendfile on;
    tcp_nopush on;
    default_type application/octet-stream;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    server {{
        listen 127.0.0.1:{port};
        client_max_body_size 0;
        location = /healthz {{ return 200 "ok\\n"; }}
        location = /upload {{
            client_body_in_file_only on;
            client_body_buffer_size 1m;
            proxy_pass_request_body off;
            proxy_set_header Content-Length "";
            proxy_set_header X-Body-File $request_body_file;
            proxy_pass http://127.0.0.1:{upstream}/stored;
        }}
        location /files/ {{ alias {static}/; }}
    }}
    server {{
        listen 127.0.0.1:{upstream};
        access_log off;
        location = /stored {{ return 201 "stored\\n"; }}
    }}
}}
"""


class Nginx(Server):
    """One nginx master with one worker: uploads at ``/upload``, files at ``/files/NAME``."""

    def __init__(self, prefix: Path, *, static_root: Path | None = None) -> None:
        port = free_port()
        self.prefix = prefix
        self.body_dir = prefix / "body"
        self.body_dir.mkdir(parents=True, exist_ok=True)
        static = static_root or prefix / "static"
        static.mkdir(parents=True, exist_ok=True)
        config = prefix / "nginx.conf"
        config.write_text(
            CONFIG.format(
                # As root nginx would switch its worker to "nobody", who cannot write here.
                user="user root;" if os.geteuid() == 0 else "",
                prefix=prefix,
                port=port,
                upstream=free_port(),
                static=static.resolve(),
            )
        )
        super().__init__(
            "nginx",
            [program("nginx"), "-c", str(config), "-p", str(prefix)],
            port=port,
            log=prefix / "nginx.out",
            ready_path="/healthz",
        )

    def take_body_files(self) -> list[int]:
        """Sizes of the request bodies nginx stored since last asked; the files are removed."""
        sizes = []
        for path in sorted(self.body_dir.rglob("*")):
            if path.is_file():
                sizes.append(path.stat().st_size)
                path.unlink()
        return sizes
