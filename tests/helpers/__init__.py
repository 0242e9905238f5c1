"""Helpers shared by the tests: fake outside world, real processes, job data."""
