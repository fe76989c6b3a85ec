"""Operator tools that talk to a running server from outside: the load generator behind `pyserving bench` and
`pyserving batching tune`."""
