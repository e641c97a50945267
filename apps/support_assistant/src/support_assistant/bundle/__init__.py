"""Model bundles: build them, describe them in a manifest, verify them before serving."""

from support_assistant.bundle.manifest import Bundle, BundleError, load_bundle, write_manifest

__all__ = ["Bundle", "BundleError", "load_bundle", "write_manifest"]
