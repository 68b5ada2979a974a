"""Tests of shared/, mirroring the source tree."""
