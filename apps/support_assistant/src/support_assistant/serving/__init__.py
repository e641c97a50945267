"""The Ray Serve layer: one thin deployment per stage, the HTTP ingress, and the app builder that
serveConfigV2's import_path names (support_assistant.serving.app:build_app). Nothing below this
package imports Ray."""
