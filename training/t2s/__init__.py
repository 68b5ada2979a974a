"""Text to snippet (GMem ICLR version, section 4.4): captions, text encoders, the T2S adapter, train-t2s."""
