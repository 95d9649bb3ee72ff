"""Socket-destroy events: exact connection counts per bucket.

socket.py joins the kernel's destroy groups and receives events in batches, table.py
counts them per namespace and bucket, ranking.py picks the node-wide top K so that sums
stay exact, and feed.py registers the whole as a feed of the engine. Imports the
sockdiag codec, keys and classifier, never the engine's poller.
"""
