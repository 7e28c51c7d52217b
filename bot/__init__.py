"""The Discord bot side of dreambot: one discord.py client per application, relaying jobs to the GPU workers."""
