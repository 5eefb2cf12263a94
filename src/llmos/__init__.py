"""llmos: an operating system for AI workloads.

Kept import-light on purpose: job processes import ``llmos`` at start-up.
"""

__version__ = "0.1.0"
