"""Model layer: ONNX Runtime sessions, rerankers (bi-/cross-encoder), the decoder runtime, and the
converters/exporters that produce bundle models. Submodules are imported explicitly, so importing
this package stays cheap (no onnxruntime until a model is used)."""
