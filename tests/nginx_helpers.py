"""A real nginx in front of gshutdown, for the tests that deploy it so.

Needs nginx (Debian: ``apt-get install nginx-light``); without it the tests that use it fail.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path

NGINX_CONF = """\
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log info;
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    # WebSockets pass (Upgrade), and other requests keep the upstream
    # connection alive (Connection: ""): nginx's documented idiom.
    map $http_upgrade $connection_upgrade {{
        default upgrade;
        ""      "";
    }}
    upstream app {{
        {servers}
        keepalive 16;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
            proxy_connect_timeout 2s;
            proxy_read_timeout 10s;
        }}
    }}
}}
"""


class Nginx:
    """nginx in the foreground on ``port``, proxying to ``upstreams`` (loopback ports)."""

    def __init__(self, directory: Path, port: int, upstreams: list[int]) -> None:
        binary = shutil.which("nginx") or "/usr/sbin/nginx"
        assert os.path.exists(binary), "nginx is not installed (Debian: apt-get install nginx-light)"
        self.port = port
        servers = "\n        ".join(f"server 127.0.0.1:{upstream} max_fails=0;" for upstream in upstreams)
        (directory / "nginx.conf").write_text(NGINX_CONF.format(dir=directory, servers=servers, port=port))
        self.proc = subprocess.Popen(
            [binary, "-p", str(directory), "-c", str(directory / "nginx.conf"), "-g", "daemon off;"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.error_log = directory / "error.log"

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
