"""Paper reproductions, one module each with ``add_arguments(parser)`` and ``run(args) -> int``."""

REPRODUCTIONS = {
    "scan-snap": "sslens.reproduce.scan_snap",
    "rank-collapse": "sslens.reproduce.rank_collapse",
    "wikitext": "sslens.reproduce.wikitext",
}
