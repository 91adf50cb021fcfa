"""Scraping a metrics path: with ``curl`` or ``http.client``, parsed by prometheus-client's parser."""

from __future__ import annotations

import http.client
import shutil
import subprocess
from pathlib import Path
from typing import Any, Mapping, Optional

from prometheus_client.parser import text_string_to_metric_families

from tests.process_helpers import PROCESS_IO_TIMEOUT, ROOT, GProcess, gshutdown_argv

METRICS_PATH = "/-/metrics"


class Scrape:
    """One parsed exposition: families by name, and every sample by name and labels."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.families = {family.name: family for family in text_string_to_metric_families(text)}
        self.samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
        for family in self.families.values():
            for sample in family.samples:
                self.samples[(sample.name, frozenset(sample.labels.items()))] = sample.value

    def value(self, name: str, **labels: str) -> float:
        """The sample ``name`` with exactly ``labels`` (``status_class`` and so on); fails if absent."""
        key = (name, frozenset(labels.items()))
        assert key in self.samples, f"no sample {name}{labels} in:\n{self.text}"
        return self.samples[key]

    def by_label(self, name: str, label: str) -> dict[str, float]:
        """Samples ``name`` by the value of their ``label``."""
        return {dict(labels)[label]: value for (sample, labels), value in self.samples.items() if sample == name}

    def type_of(self, family: str) -> str:
        return str(self.families[family].type)


def curl(port: int, path: str = METRICS_PATH) -> Scrape:
    """Scrape with the ``curl`` binary (a missing ``curl`` fails the test: ``apt-get install -y curl``)."""
    binary = shutil.which("curl")
    assert binary, "curl is not installed: apt-get install -y curl"
    done = subprocess.run(
        [
            binary,
            "--silent",
            "--show-error",
            "--fail",
            "--max-time",
            str(PROCESS_IO_TIMEOUT),
            f"http://127.0.0.1:{port}{path}",
        ],
        capture_output=True,
        text=True,
        timeout=PROCESS_IO_TIMEOUT + 5,
    )
    assert done.returncode == 0, f"curl failed ({done.returncode}): {done.stderr}"
    return Scrape(done.stdout)


def fetch(
    port: int, path: str = METRICS_PATH, headers: Optional[Mapping[str, str]] = None
) -> tuple[int, dict[str, str], str]:
    """Status, lower-cased headers and body of one GET with ``http.client``, on a new connection."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=PROCESS_IO_TIMEOUT)
    try:
        conn.request("GET", path, headers=dict(headers or {}))
        response = conn.getresponse()
        body = response.read().decode()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, body
    finally:
        conn.close()


def scrape(port: int, path: str = METRICS_PATH) -> Scrape:
    """Scrape with ``http.client``."""
    status, _, body = fetch(port, path)
    assert status == 200, body
    return Scrape(body)


def metrics_cli(log_path: Path, *args: str, env: Optional[dict[str, Any]] = None) -> GProcess:
    """``gshutdown --metrics-path /-/metrics ARGS``, not yet waited for."""
    return GProcess(gshutdown_argv("--metrics-path", METRICS_PATH, *args), log_path, env=env, cwd=ROOT)
