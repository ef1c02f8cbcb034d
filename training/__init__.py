# Networks, losses, augmentation, datasets, samplers and the training loop.
