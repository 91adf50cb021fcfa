"""Processes: one lifecycle for a server process, and the master of workers.

Owns: the runner (signals as data, drain, exit), the master (fork,
supervision, reload, upgrade), the worker link, systemd, pid file, logging,
app loading, exit statuses and Prometheus metrics.
May import: every layer below (``wsgi``, ``server``, ``config``, ``protocol``).
"""
