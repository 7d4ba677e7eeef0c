"""Which build the suite runs against: `make test-compiled` must really test the compiled one."""

from __future__ import annotations

import ast
import os
from pathlib import Path

import gateway.compression.stage
import gateway.downstream.connection
import gateway.server
import gateway.upstream.connection


def test_the_suite_runs_against_the_build_it_was_asked_to() -> None:
    expect_compiled = os.environ.get("GATEWAY_EXPECT_COMPILED") == "1"
    modules = (
        gateway.server,
        gateway.downstream.connection,
        gateway.upstream.connection,
        gateway.compression.stage,
    )
    for module in modules:
        assert (module.__file__ or "").endswith(".so") == expect_compiled, module.__file__


REPO = Path(__file__).resolve().parents[2]


def _compiled_modules() -> list[str]:
    """setup.py's COMPILED list, read without running setup()."""
    tree = ast.parse((REPO / "setup.py").read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(target, ast.Name) and target.id == "COMPILED" for target in node.targets
        ):
            modules: list[str] = ast.literal_eval(node.value)
            return modules
    raise AssertionError("setup.py has no COMPILED list")


def test_no_compiled_finally_awaits() -> None:
    """mypyc (2.x) miscompiles a `finally` block that awaits: once an exception has left it,
    every later exit raises that exception again (mypyc/mypyc#1114 and #1177 are of the same
    family). In the gateway it turned one client gone mid-response into every later response
    going unlogged and uncounted, with a traceback growing per request. `async with` and
    `except BaseException: await ...; raise` compile correctly: use those."""
    modules = _compiled_modules()
    assert len(modules) > 10
    offenders = []
    for module in modules:
        tree = ast.parse((REPO / module).read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Try | ast.TryStar) and any(
                isinstance(inner, ast.Await | ast.AsyncFor | ast.AsyncWith)
                for statement in node.finalbody
                for inner in ast.walk(statement)
            ):
                offenders.append(f"{module}:{node.lineno}")
    assert offenders == []
