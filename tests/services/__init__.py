"""Tests of services/, mirroring the source tree."""
