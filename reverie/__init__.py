"""Reverie: streaming continual-learning memory for LLM agents.

This package is the composition root: settings and the CLI.
"""
