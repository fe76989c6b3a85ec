"""`pyserving auth new-key --name NAME --scope MODEL:ACTION ...`: a fresh random API key, printed once, and the
`api_key { ... }` line (holding only the key's SHA-256) to paste into --auth_config_file."""

from __future__ import annotations

import argparse
import hashlib
import secrets
import sys
from collections.abc import Sequence

from pyserving.config.auth_config import check_scope


def new_key_line(name: str, scopes: Sequence[str], key: str) -> str:
    scope_text = " ".join(f'scope: "{s}"' for s in scopes)
    digest = hashlib.sha256(key.encode()).hexdigest()
    return f'api_key {{ name: "{name}" sha256: "{digest}" {scope_text} }}'


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="pyserving auth", description="Manage credentials for --auth_config_file.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    new = sub.add_parser("new-key", help="make a random API key and print its api_key { ... } config line")
    new.add_argument("--name", required=True, help="who holds the key (logged as the caller)")
    new.add_argument("--scope", required=True, nargs="+", metavar="MODEL:ACTION",
                     help="what it may do: MODEL:predict, MODEL:metadata, MODEL:admin; * for any model")
    args = parser.parse_args(argv)
    for scope in args.scope:
        problem = check_scope(scope)
        if problem:
            parser.error(problem)
    if '"' in args.name or "\\" in args.name:
        parser.error("--name may not contain quotes or backslashes")
    key = secrets.token_urlsafe(32)  # 256 random bits
    print(f"API key (shown once; give it to {args.name}, store it as a secret):\n{key}\n", file=sys.stderr)
    print(key)
    print(new_key_line(args.name, args.scope, key))
    return 0
