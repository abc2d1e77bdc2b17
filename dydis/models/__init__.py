"""Neural network modules: the VQ-GAN, the conditional U-Net, the feature extractor."""
