"""Export for TF Serving, clients, a protocol-compatible local server, TFLite."""
