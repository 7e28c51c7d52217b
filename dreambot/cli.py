"""`dreambot`: one console script, one subcommand per process kind; the top of the tree, above the shared
core (dreamcore) and the two sides it starts (bot, worker).

Subcommands import their side lazily, so `dreambot bot` never loads torch.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import get_args

from dreamcore.job import ASPECTS, FaceChoice
from dreamcore.settings import SettingsError, load_settings
from dreamcore.styles import style_names


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dreambot", description="Discord SDXL dream bot: bots, workers, demo.")
    sub = p.add_subparsers(dest="cmd", required=True)

    w = sub.add_parser("worker", help="serve the dream queues on this machine's GPU (or CPU)")
    w.add_argument("--burst", action="store_true", help="exit when the queues are empty")
    w.add_argument("--max-jobs", type=int, default=None, help="exit after this many jobs")

    f = sub.add_parser("fetch-models", help="download the model files the worker will load (fp16 where published), "
                                            "with progress; printing the bytes first")
    f.add_argument("--dry-run", action="store_true", help="print what would be downloaded, and stop")

    sub.add_parser("bot", help="run one Discord bot instance (DISCORD_TOKEN, DREAMBOT_INSTANCE)")

    d = sub.add_parser("demo", help="make images locally: queue -> worker -> files, no Discord needed")
    d.add_argument("prompt")
    d.add_argument("--negative", default="", help="negative prompt")
    d.add_argument("--style", default="none", choices=style_names())
    d.add_argument("--aspect", default="1:1", choices=list(ASPECTS))
    d.add_argument("--seed", type=int, default=None, help="0..4294967295; random when left out")
    d.add_argument("--count", type=int, default=1, help="images, 1..4")
    d.add_argument("--steps", type=int, default=None)
    d.add_argument("--guidance", type=float, default=None)
    d.add_argument("--split", type=float, default=None, help="fraction of steps on the base model (1.0 = no refiner)")
    d.add_argument("--mode", choices=("quality", "turbo"), default=None,
                   help="turbo: the 4-step LoRA on the base alone (steps, guidance and split are its own)")
    d.add_argument("--faces", choices=get_args(FaceChoice), default=None,
                   help="the face pass: small faces redrawn close up (default: DREAMBOT_LIMIT_FACES)")
    d.add_argument("--out", default=None, help="folder for the images (default: DREAMBOT_OUTPUT_DIR)")
    # A plain flag: with an optional value, `--tiny "a prompt"` would take the prompt for the folder.
    d.add_argument("--tiny", action="store_true",
                   help="use the tiny offline test model (random weights; built on first use)")
    d.add_argument("--tiny-dir", default=None, metavar="DIR",
                   help="where the tiny model lives (default ~/.cache/dreambot/tiny-sdxl)")

    v = sub.add_parser("export-votes", help="write every vote round: JSON lines (prompt, settings, seeds, tallies) "
                                            "or a Parquet preference dataset with both images")
    v.add_argument("--format", choices=("jsonl", "parquet"), default="jsonl")
    v.add_argument("--out", required=True, help="jsonl: a file, or - for standard output; parquet: a folder")

    c = sub.add_parser("catalogs", help="the translation catalogs (Babel): extract the texts, update or start a "
                                        "language's .po, compile them all, check them against the code")
    c.add_argument("action", choices=("extract", "update", "init", "compile", "check"))
    c.add_argument("locale", nargs="?", help="init: the new language's Discord locale code (e.g. pl)")

    t = sub.add_parser("make-tiny-model", help="build the tiny SDXL-architecture base+refiner (random weights)")
    t.add_argument("dir")

    sub.add_parser("adopt-jobs", help="once, when upgrading from a release whose bots kept no records of their "
                                      "jobs, with the workers stopped: record the jobs they queued, so their "
                                      "results are posted")

    s = sub.add_parser("server", help="the operator's policy for one Discord server: its queue's priority and "
                                      "ceilings over what its admins set (no argument but the id: show it)")
    s.add_argument("guild_id", type=_snowflake, help="the server's id")
    s.add_argument("--priority", choices=("high", "default", "low"), help="the queue its dreams wait in")
    for name, what in (("max-queued", "dreams queued or running"), ("units-hour", "standard images an hour"),
                       ("units-day", "standard images a day")):
        s.add_argument(f"--{name}", type=_ceiling, metavar="N|none", help=f"a ceiling on the server's {what}")
    s.add_argument("--clear", action="store_true", help="back to the default policy")
    return p


def _snowflake(text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 2**64:
        raise argparse.ArgumentTypeError(f"{text!r} is not a Discord id (a positive integer)")
    return int(text)


def _ceiling(text: str) -> int | str:
    if text == "none":
        return text
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: a whole number from 1, or none (no ceiling)")
    return int(text)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = load_settings()
    except SettingsError as err:
        print(f"dreambot: {err}", file=sys.stderr)
        return 2

    if args.cmd == "worker":
        from worker.runner import run

        return run(settings, burst=args.burst, max_jobs=args.max_jobs)
    if args.cmd == "fetch-models":
        from worker.fetch import run as fetch

        return fetch(settings, dry_run=args.dry_run)
    if args.cmd == "bot":
        from bot.main import run as run_bot

        return run_bot(settings)
    if args.cmd == "demo":
        from worker.demo import run_demo

        return run_demo(settings, args)
    if args.cmd == "export-votes":
        return _export_votes(settings, args)
    if args.cmd == "server":
        return _server(settings, args)
    if args.cmd == "adopt-jobs":
        return _adopt_jobs(settings)
    if args.cmd == "catalogs":
        from dreambot.catalogs import main as catalogs

        return catalogs(args.action, args.locale)
    if args.cmd == "make-tiny-model":
        from worker.tiny import make_tiny_model

        path = make_tiny_model(args.dir)
        print(f"tiny SDXL base and refiner written to {path}")
        return 0
    return 2


def _adopt_jobs(settings) -> int:
    import redis

    from dreamcore.delivery import adopt_records as adopt
    from dreamcore.queue.rq_queues import queue_names
    from dreamcore.redisconn import connect

    try:
        adopted = adopt(connect(settings, timeout_s=30, connect_timeout_s=5), settings, queue_names())
    except redis.RedisError as err:
        print(f"dreambot adopt-jobs: Redis can't be reached ({type(err).__name__}: {err})", file=sys.stderr)
        return 1
    total = sum(adopted.values())
    print(f"adopted {total} job{'s' * (total != 1)}" + (": " + ", ".join(f"{n} of {i}" for i, n in
                                                              sorted(adopted.items())) if adopted else ""))
    return 0


def _server(settings, args) -> int:
    import redis

    from dreamcore import servers
    from dreamcore.redisconn import connect

    changes = {field: getattr(args, field) for field in servers.FIELDS if getattr(args, field) is not None}
    changes = {k: None if v == "none" else v for k, v in changes.items()}
    try:
        conn = connect(settings, timeout_s=5, connect_timeout_s=5)
        if args.clear:
            servers.clear(conn, args.guild_id)
        policy = servers.change(conn, args.guild_id, **changes) if changes else servers.get(conn, args.guild_id)
    except ValueError as err:
        print(f"dreambot server: {err}", file=sys.stderr)
        return 2
    except redis.RedisError as err:
        print(f"dreambot server: Redis can't be reached ({type(err).__name__}: {err})", file=sys.stderr)
        return 1
    shown = {k: ("none" if v is None else v) for k, v in policy.model_dump().items()}
    print(f"server {args.guild_id}: " + ", ".join(f"{k.replace('_', '-')} {v}" for k, v in shown.items()))
    return 0


def _export_votes(settings, args) -> int:
    import redis

    from dreamcore.images import ImageStoreError, open_store
    from dreamcore.redisconn import connect
    from dreamcore.votes import export_jsonl, export_parquet

    conn = connect(settings, connect_timeout_s=5)
    note = ""
    try:
        if args.format == "parquet":
            if args.out == "-":
                print("dreambot export-votes: --format parquet writes a folder; give --out DIR", file=sys.stderr)
                return 2
            salt = settings.export_salt.get_secret_value().encode() if settings.export_salt else os.urandom(32)
            if not settings.export_salt:
                note = (" (member ids hashed with a one-off salt: set DREAMBOT_EXPORT_SALT to keep them the same "
                        "across exports)")
            n, missing = export_parquet(conn, open_store(settings), args.out, salt)
            if missing:
                note += f"; {missing} rounds have an image no longer kept (written as null)"
        elif args.out == "-":
            n = export_jsonl(conn, sys.stdout)
        else:
            with open(args.out, "w", encoding="utf-8") as out:
                n = export_jsonl(conn, out)
    except redis.RedisError as err:
        print(f"dreambot export-votes: can't read Redis at REDIS_URL ({type(err).__name__}: {err})", file=sys.stderr)
        return 1
    except ImageStoreError as err:
        print(f"dreambot export-votes: can't read the image store ({err})", file=sys.stderr)
        return 1
    except OSError as err:
        print(f"dreambot export-votes: can't write {args.out} ({err.strerror or err})", file=sys.stderr)
        return 1
    print(f"exported {n} vote rounds" + (f" to {args.out}" if args.out != "-" else "") + note, file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
