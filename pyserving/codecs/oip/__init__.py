"""The Open Inference Protocol (KServe V2) wire formats: tensors by V2 datatype name, JSON and binary data."""
