"""sslens: Scan&Snap and condensation/rank-collapse experiments on TransformerLens models."""

from sslens import data, models
from sslens.errors import SslensError
from sslens.schedule import log_schedule

__version__ = "0.1.0"
__all__ = ["data", "models", "log_schedule", "SslensError", "__version__"]
