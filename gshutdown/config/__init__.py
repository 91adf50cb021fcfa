"""Configuration: the settings table, the typed objects it fills, addresses.

Owns: ``settings`` (every option of the command, its parsers, config files,
the environment), ``server_config.Config`` (a server's timeouts and limits),
``addresses`` (listener names and unix-socket binding).
May import: ``gshutdown.protocol`` and the standard library; nothing above.
"""
