"""CLI verbs, one module each: ``register(subparsers)`` adds the verb and sets ``func``."""
