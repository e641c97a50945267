"""Building model bundles (`support-assistant-bundle`): converters and exporters that produce the
ONNX models, the retriever's index, and the manifest. Runs at image build or `make bundle`, never in
a replica: serving code does not import this package."""
