"""Tooling for this GitOps repository: render overlays, validate, diff, serve-config, promote."""
