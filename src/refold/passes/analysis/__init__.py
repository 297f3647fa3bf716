"""Whole-graph analyses shared by passes: views derived from the IR, never a second IR."""
