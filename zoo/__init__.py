"""seqzoo model families: latent-state sequence models on Pyro and PyTorch."""
