"""Paper reproductions as functions: settings in (a dataclass), results out, rendering separate.

``sslens.reproduce.scan_snap.reproduce(ScanSnapSettings(...))`` and
``sslens.reproduce.wikitext.reproduce(WikitextSettings(...))``; the CLI verbs in
``sslens.commands.reproduce`` only parse flags and call them.
"""
