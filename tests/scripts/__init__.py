"""Tests of scripts/, mirroring the source tree."""
