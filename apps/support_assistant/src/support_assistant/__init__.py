"""Support assistant: a multi-stage Ray Serve inference pipeline."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("support-assistant")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"
