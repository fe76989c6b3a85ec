"""Front-end worker processes over one model process: the channel between them (framing, tensors in shared
memory), the model process's side of it, and the front end's stand-ins for InferenceService and ControlPlane.

Imports no TensorFlow and no front end (the front-end worker imports this, not the other way round)."""
