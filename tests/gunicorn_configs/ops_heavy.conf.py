# Production settings carried over from the old sync-worker setup.
import socket

bind = ["0.0.0.0:8000"]
workers = 2
worker_class = "gevent"
threads = 1
worker_connections = 2000
max_requests = 1000
max_requests_jitter = 50
timeout = 30
graceful_timeout = 30
keepalive = 5
reuse_port = True
sendfile = True
umask = 0o007
user = None
group = None
tmp_upload_dir = None
worker_tmp_dir = "/dev/shm"
statsd_host = "localhost:8125"
statsd_prefix = "app." + socket.gethostname()
syslog = False
daemon = False
spew = False
check_config = False
forwarded_allow_ips = "10.0.0.0/8,127.0.0.1"
strip_header_spaces = False
