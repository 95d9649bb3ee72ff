"""The sockdiag source: TCP sockets per state, quadruplet buckets and port capacity from
one NETLINK_SOCK_DIAG dump per namespace.

codec.py decodes the kernel's records (numpy), dump.py streams a dump through them,
keys.py holds the address layout shared with the destroy events, buckets.py and
capacity.py aggregate and rate the buckets, tally.py turns a dump into SocketStats, and
source.py declares the source (reader, result, metric families). Imports exporter.sources
and exporter.engine.source only.
"""
