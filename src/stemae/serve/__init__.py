"""Trained bundles served over the Open Inference Protocol (KServe v2):
model repository, request and response bodies, dynamic batching, the
FastAPI server. Needs the ``serve`` extra."""
