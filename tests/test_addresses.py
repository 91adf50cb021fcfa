import errno

from gshutdown.config.addresses import bind_failure_reason, describe_address, describe_listener


def test_describe_address_ipv4_ipv6_unix():
    assert describe_address(("127.0.0.1", 8000)) == "http://127.0.0.1:8000"
    assert describe_address(("::1", 8000, 0, 0)) == "http://[::1]:8000"
    assert describe_address("/run/app.sock") == "unix:/run/app.sock"


def test_describe_address_of_a_tls_listener_is_https():
    assert describe_address(("127.0.0.1", 8443), tls=True) == "https://127.0.0.1:8443"
    assert describe_address(("::1", 8443, 0, 0), tls=True) == "https://[::1]:8443"


def test_describe_listener_keeps_the_users_spelling():
    assert describe_listener("unix:/run/app.sock") == "unix:/run/app.sock"
    assert describe_listener(("0.0.0.0", 80)) == "0.0.0.0:80"
    assert describe_listener(("::", 80)) == "[::]:80"
    assert describe_listener(object()) == "inherited socket"


def test_bind_failure_reason_in_words():
    assert bind_failure_reason(OSError(errno.EADDRINUSE, "Address in use")) == "address already in use"
    assert bind_failure_reason(OSError(errno.EACCES, "Permission denied")) == "Permission denied"
    assert bind_failure_reason(OSError("no errno")) == "no errno"
