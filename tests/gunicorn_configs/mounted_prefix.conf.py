# The app lives under https://example.com/shop/ behind the company's load balancer.
bind = "unix:/run/shop/gunicorn.sock"
bind = "127.0.0.1:9000"
workers = 1
worker_class = "gevent"
raw_env = ["SCRIPT_NAME=/shop", "FEATURE_FLAGS=checkout-v2,search"]
forwarded_allow_ips = "127.0.0.1"
proxy_protocol = "off"
