"""The shared core of dreambot: what the bots and the GPU workers both need.

Nothing in this package imports torch, diffusers or discord.py; a test holds it to that.
"""

__version__ = "0.1.0"
