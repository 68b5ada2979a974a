"""Tests of deploy/, mirroring the source tree."""
