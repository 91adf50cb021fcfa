# Behind an SSL-terminating proxy that sets X-Forwarded-Ssl and passes the mount point.
bind = "0.0.0.0:5000"
workers = 3
worker_class = "gevent"
forwarded_allow_ips = "*"
secure_scheme_headers = {
    "X-FORWARDED-PROTOCOL": "ssl",
    "X-FORWARDED-PROTO": "https",
    "X-FORWARDED-SSL": "on",
}
forwarder_headers = "SCRIPT_NAME,PATH_INFO,REMOTE_USER"
proxy_allow_ips = "*"
