"""What attaches to a HookedTransformer: permanent variant hooks and the circuit recorder."""

from sslens.hooks.variants import VARIANTS, apply_variants
from sslens.hooks.recorder import CircuitRecorder, Recording, default_probe, log_schedule

__all__ = ["VARIANTS", "apply_variants", "CircuitRecorder", "Recording", "default_probe", "log_schedule"]
