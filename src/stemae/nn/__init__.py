"""PyTorch building blocks: spatial transforms, model bundles."""
