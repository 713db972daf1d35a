"""Small command line: ``python -m dnd_cache [--addr HOST:PORT] get KEY | set KEY VALUE [TTL] | delete KEY``.

``get`` writes the raw value to stdout and exits 1 on a miss.
"""

from __future__ import annotations

import argparse
import sys

from .client import CacheClient
from .errors import CacheError


def main(argv: "list[str] | None" = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dnd_cache")
    parser.add_argument(
        "--addr",
        help="host:port, or seeds host:port,host:port (default $DND_CACHE_ADDR or 127.0.0.1:7000)",
    )
    parser.add_argument("--service-id", default="dnd_cache_cli")
    parser.add_argument("--token")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("get").add_argument("key")
    p_set = sub.add_parser("set")
    p_set.add_argument("key")
    p_set.add_argument("value")
    p_set.add_argument("ttl", nargs="?", type=int, default=0)
    sub.add_parser("delete").add_argument("key")
    args = parser.parse_args(argv)
    with CacheClient(args.service_id, address=args.addr, token=args.token) as client:
        try:
            if args.command == "get":
                value = client.get(args.key)
                if value is None:
                    return 1
                sys.stdout.buffer.write(value)
            elif args.command == "set":
                client.set(args.key, args.value, ttl=args.ttl)
            else:
                return 0 if client.delete(args.key) else 1
        except CacheError as exc:
            print(exc, file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
