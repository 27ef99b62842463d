"""Fit engine and GPU constants to measured serving runs, and validate predictions against them."""
