"""Parley: a self-hosted AI live chat for websites."""
