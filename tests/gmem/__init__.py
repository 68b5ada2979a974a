"""Tests of gmem/, mirroring the source tree."""
