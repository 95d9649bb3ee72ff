"""Network namespaces: finding them (discovery.py), naming them after their pod
(pods.py, identity.py), entering them (enter.py) and holding the descriptors opened
inside each one (context.py). Imports nothing of the engine, the sources or the web.
"""
