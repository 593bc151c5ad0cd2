"""Limits (fids, in-flight requests, xattr size) and a load test."""

from security.harness import pytest_exception_interact, pytest_runtest_protocol

# The hang guard: a test that hangs aborts the run with every thread's stack.
__all__ = ["pytest_exception_interact", "pytest_runtest_protocol"]
