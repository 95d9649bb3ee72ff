"""The engine: the poll, its snapshot, and their rendering.

Owns the registry of sources and feeds (registry.py), the poll that reads them in every
namespace (poller.py), the immutable Snapshot each poll builds (snapshot.py), and the
custom collector and per-poll exposition (collector.py, exposition.py). It imports the
declarations in exporter.sources, exporter.events and exporter.netns; nothing below it
imports the engine, save the source declaration types (engine/source.py).
"""
