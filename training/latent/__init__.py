"""Latent-space training: autoencoders (embedded tiny VAE, diffusers AutoencoderKL, VA-VAE), the
latent + snippet cache, and the pieces `train --space latent` adds to pixel-space training."""
