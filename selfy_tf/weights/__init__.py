"""Weight import from the official PyTorch release and ImageNet ResNets."""
