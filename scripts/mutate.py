"""A tiny mutation tester: apply one simple mutation at a time to some source files and see whether tests notice.

Mutations (inside function bodies only; docstrings and annotations are left alone):
  * comparisons flipped: < <=, > >=, == !=, in / not in, is / is not (each to its neighbour)
  * arithmetic swapped: + -, * /, // *, and augmented += -=
  * integer and float constants +1 (0 -> 1, 0.2 -> 1.2), True <-> False
  * `and` <-> `or`, `not x` -> `x`, if/while/ternary/assert conditions negated
  * calls to min <-> max
Each mutant is written into a scratch copy of the repository (the working tree is never touched), the given
pytest command runs there with `-x`, and the mutant is KILLED (tests failed or timed out) or SURVIVED (tests
passed). Survivors are printed with their line and what changed.

Run it from the repository root with the project's venv:

    python scripts/mutate.py pyserving/core/transitions.py pyserving/core/version_policy.py \
        --tests "tests/core/test_transitions.py tests/core/test_version_policy.py"

    # only some functions, at most 40 mutants, selected tests (--tests is one string of pytest arguments)
    python scripts/mutate.py pyserving/core/canary.py --functions _check window --max-mutants 40 \
        --tests "tests/test_safety_net_canary.py tests/test_canary.py -k 'rollback or window'"

    # list the mutants without running anything
    python scripts/mutate.py pyserving/core/canary.py --list

Options: --timeout-factor (a mutant gets factor x the clean run's time, at least 30 s), --workdir (default: a new
temporary directory), --json PATH (write every result). Test data: PYSERVING_SHARED is set to ../shared when it
is not set and that directory exists, as tests/conftest.py expects.
"""

from __future__ import annotations

import argparse
import ast
import copy
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

_COMPARE_SWAP: dict[type, type] = {
    ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt, ast.Eq: ast.NotEq, ast.NotEq: ast.Eq,
    ast.In: ast.NotIn, ast.NotIn: ast.In, ast.Is: ast.IsNot, ast.IsNot: ast.Is,
}
_BINOP_SWAP: dict[type, type] = {ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Div, ast.Div: ast.Mult,
                                 ast.FloorDiv: ast.Mult}


@dataclass
class Mutant:
    file: str
    index: int
    line: int
    function: str
    kind: str
    before: str
    after: str
    status: str = "not run"
    seconds: float = 0.0


def _function_bodies(tree: ast.Module) -> Iterator[tuple[str, ast.AST]]:
    """(qualified function name, statement) for every statement inside a function, docstrings skipped."""
    def visit(node: ast.AST, prefix: str) -> Iterator[tuple[str, ast.AST]]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.ClassDef):
                yield from visit(child, f"{prefix}{child.name}.")
            elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                name = f"{prefix}{child.name}"
                body = child.body
                if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                        and isinstance(body[0].value.value, str):
                    body = body[1:]
                for stmt in body:
                    yield name, stmt
    yield from visit(tree, "")


def _candidates(stmt: ast.AST) -> Iterator[tuple[ast.AST, str]]:
    """Nodes under `stmt` that can be mutated, with the kind of mutation; nested functions' own bodies too,
    annotations never."""
    skip: set[int] = set()
    for node in ast.walk(stmt):
        if isinstance(node, (ast.arg, ast.AnnAssign)):
            for sub in ast.walk(node.annotation) if node.annotation is not None else ():
                skip.add(id(sub))
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.returns is not None:
            for sub in ast.walk(node.returns):
                skip.add(id(sub))
    for node in ast.walk(stmt):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Compare):
            for i, op in enumerate(node.ops):
                if type(op) in _COMPARE_SWAP:
                    yield node, f"compare:{i}"
        elif isinstance(node, ast.BinOp) and type(node.op) in _BINOP_SWAP:
            yield node, "binop"
        elif isinstance(node, ast.AugAssign) and type(node.op) in _BINOP_SWAP:
            yield node, "augassign"
        elif isinstance(node, ast.Constant) and type(node.value) in (int, float, bool):
            yield node, "constant"
        elif isinstance(node, ast.BoolOp):
            yield node, "boolop"
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            yield node, "drop-not"
        elif isinstance(node, (ast.If, ast.While, ast.IfExp, ast.Assert)):
            yield node, "negate"
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("min", "max"):
            yield node, "minmax"


def _apply(node: ast.AST, kind: str) -> ast.AST | None:
    """Mutate `node` in place (returns a replacement node when the node itself must be replaced)."""
    if kind.startswith("compare:"):
        i = int(kind.split(":")[1])
        node.ops[i] = _COMPARE_SWAP[type(node.ops[i])]()  # type: ignore[attr-defined]
    elif kind in ("binop", "augassign"):
        node.op = _BINOP_SWAP[type(node.op)]()  # type: ignore[attr-defined]
    elif kind == "constant":
        value = node.value  # type: ignore[attr-defined]
        node.value = (not value) if isinstance(value, bool) else value + 1  # type: ignore[attr-defined]
    elif kind == "boolop":
        node.op = ast.Or() if isinstance(node.op, ast.And) else ast.And()  # type: ignore[attr-defined]
    elif kind == "drop-not":
        return node.operand  # type: ignore[attr-defined]
    elif kind == "negate":
        node.test = ast.UnaryOp(ast.Not(), node.test)  # type: ignore[attr-defined]
    elif kind == "minmax":
        node.func.id = "max" if node.func.id == "min" else "min"  # type: ignore[attr-defined]
    return None


class _Replace(ast.NodeTransformer):
    def __init__(self, target: ast.AST, replacement: ast.AST) -> None:
        self.target, self.replacement = target, replacement

    def generic_visit(self, node: ast.AST) -> ast.AST:
        if node is self.target:
            return self.replacement
        return super().generic_visit(node)


def mutants_of(path: Path, functions: set[str] | None) -> list[tuple[Mutant, str]]:
    """Every mutant of `path` as (description, full mutated source)."""
    source = path.read_text()
    tree = ast.parse(source)
    out = []
    sites = []
    for function, stmt in _function_bodies(tree):
        short = function.rsplit(".", 1)[-1]
        if functions and function not in functions and short not in functions:
            continue
        for node, kind in _candidates(stmt):
            sites.append((function, node, kind))
    for index, (function, node, kind) in enumerate(sites):
        mutated_tree = copy.deepcopy(tree)
        # find the same node in the copy: same walk order
        original_nodes = list(ast.walk(tree))
        copied_nodes = list(ast.walk(mutated_tree))
        target = copied_nodes[next(i for i, n in enumerate(original_nodes) if n is node)]
        before = ast.unparse(target) if not isinstance(target, (ast.If, ast.While, ast.Assert)) \
            else ast.unparse(target.test)  # type: ignore[attr-defined]
        replacement = _apply(target, kind)
        if replacement is not None:
            mutated_tree = _Replace(target, replacement).visit(mutated_tree)
            after = ast.unparse(replacement)
        else:
            after = ast.unparse(target) if not isinstance(target, (ast.If, ast.While, ast.Assert)) \
                else ast.unparse(target.test)  # type: ignore[attr-defined]
        ast.fix_missing_locations(mutated_tree)
        mutant = Mutant(str(path), index, getattr(node, "lineno", 0), function, kind.split(":")[0],
                        _short(before), _short(after))
        out.append((mutant, ast.unparse(mutated_tree)))
    return out


def _short(text: str, limit: int = 110) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def run_tests(workdir: Path, tests: list[str], timeout_s: float) -> tuple[str, float]:
    env = {**os.environ, "PYTHONPATH": str(workdir), "PYTHONDONTWRITEBYTECODE": "1"}
    shared = REPO.parent / "shared"
    if "PYSERVING_SHARED" not in env and shared.is_dir():
        env["PYSERVING_SHARED"] = str(shared)
    started = time.monotonic()
    try:
        result = subprocess.run(
            [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests],
            cwd=workdir, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=timeout_s,
        )
    except subprocess.TimeoutExpired:
        return "killed (timeout)", time.monotonic() - started
    return ("survived" if result.returncode == 0 else "killed"), time.monotonic() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="+", help="source files to mutate, relative to the repository root")
    parser.add_argument("--tests", default="tests/core",
                        help='pytest arguments in one string, e.g. "tests/test_canary.py -k sticky"')
    parser.add_argument("--functions", nargs="*", help="only mutate these functions (name or Class.name)")
    parser.add_argument("--max-mutants", type=int, default=0, help="stop after this many mutants (0: all)")
    parser.add_argument("--timeout-factor", type=float, default=3.0)
    parser.add_argument("--workdir", type=Path, help="scratch copy of the repository (default: a new temp dir)")
    parser.add_argument("--json", type=Path, help="write every result here")
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    args = parser.parse_args(argv)

    functions = set(args.functions) if args.functions else None
    all_mutants: list[tuple[Mutant, str]] = []
    for file in args.files:
        all_mutants.extend(mutants_of(REPO / file, functions))
    for mutant, _ in all_mutants:
        mutant.file = str(Path(mutant.file).relative_to(REPO))
    if args.max_mutants:
        all_mutants = all_mutants[: args.max_mutants]
    if args.list:
        for m, _ in all_mutants:
            print(f"{m.file}:{m.line} {m.function} [{m.kind}] {m.before}  ->  {m.after}")
        print(f"{len(all_mutants)} mutants")
        return 0

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="pyserving-mutate-"))
    if not (workdir / "pyserving").is_dir():
        shutil.copytree(REPO, workdir, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns(".git", ".venv", "mutants", "__pycache__", "*.pyc"))
    print(f"scratch copy: {workdir}", flush=True)
    tests = shlex.split(args.tests)
    status, clean_s = run_tests(workdir, tests, 1800)
    if status != "survived":
        print("the tests fail without any mutation: fix them first", file=sys.stderr)
        return 2
    timeout_s = max(30.0, args.timeout_factor * clean_s)
    print(f"clean run: {clean_s:.1f} s; {len(all_mutants)} mutants, each up to {timeout_s:.0f} s", flush=True)

    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    # SIGTERM (or SIGINT even when started in the background) stops the run and still reports what ran
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    originals = {m.file: (workdir / m.file).read_text() for m, _ in all_mutants}
    results = []
    try:
        for n, (mutant, source) in enumerate(all_mutants, 1):
            target = workdir / mutant.file
            target.write_text(source)
            mutant.status, mutant.seconds = run_tests(workdir, tests, timeout_s)
            target.write_text(originals[mutant.file])
            results.append(mutant)
            print(f"[{n}/{len(all_mutants)}] {mutant.status:16} {mutant.file}:{mutant.line} {mutant.function} "
                  f"[{mutant.kind}] {mutant.before} -> {mutant.after} ({mutant.seconds:.1f} s)", flush=True)
    except KeyboardInterrupt:
        print("interrupted: reporting what ran", file=sys.stderr)
    finally:
        for file, text in originals.items():
            (workdir / file).write_text(text)

    survivors = [m for m in results if m.status == "survived"]
    print(f"\n{len(results)} run, {len(results) - len(survivors)} killed, {len(survivors)} survived")
    for m in survivors:
        print(f"SURVIVED {m.file}:{m.line} {m.function} [{m.kind}] {m.before}  ->  {m.after}")
    if args.json:
        args.json.write_text(json.dumps([asdict(m) for m in results], indent=1))
    return 1 if survivors else 0


if __name__ == "__main__":
    sys.exit(main())
