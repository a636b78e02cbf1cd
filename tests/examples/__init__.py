"""Tests of the reference VSE++ model in examples/."""
