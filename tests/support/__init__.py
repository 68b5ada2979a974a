"""Helpers the tests share (banks, processes); conftests only turn them into fixtures."""
