"""Network namespaces: finding them (discovery.py), naming them after their pod
(pods.py), tracking, labelling and opening them (tracker.py), entering them (enter.py)
and holding the files and handles opened inside each one (context.py). Imports only the
declarations of exporter.sources (what to open), never the engine or the web.
"""
