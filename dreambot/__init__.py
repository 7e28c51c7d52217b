"""The `dreambot` command (cli.py): the entry point the bot and the worker hang from."""
