"""What a replica runs besides the stages: ONNX Runtime sessions, the encoders and the decoder, and
the reader that verifies a model bundle. Never imports the bundle builder (support_assistant.bundler).
Submodules are imported explicitly, so importing this package stays cheap."""
