"""TF Serving wire formats, readable and writable without importing TensorFlow."""
