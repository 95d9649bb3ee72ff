"""The HTTP surface, after exporter-toolkit's web/ package: the server (server.py),
the web config file and its checks (config.py), TLS (tls.py), basic auth (auth.py) and
live reload (reload.py). It serves bytes rendered elsewhere (exporter.engine.exposition)
and imports nothing of the sources.
"""
