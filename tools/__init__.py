"""Generators that serve only this repository (not installed): they write committed files from the code, and
a test checks each committed file equals its generator's output."""
