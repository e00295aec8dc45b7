"""The ``reverie`` command: wires settings, memory, consolidation and serving together.

Exit codes: 0 success, 1 runtime failure or not found, 2 invalid input or settings.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import warnings
from collections.abc import Callable, Sequence
from typing import Any

from reverie.commands import (
    EXIT_FAILURE,
    EXIT_USAGE,
    cmd_adapters,
    cmd_ask,
    cmd_bench,
    cmd_consolidate,
    cmd_daemon,
    cmd_delete_tenant,
    cmd_demo,
    cmd_export,
    cmd_forget,
    cmd_import,
    cmd_list,
    cmd_log,
    cmd_mcp,
    cmd_recall,
    cmd_report,
    cmd_serve,
    cmd_status,
    cmd_tokens,
    cmd_update,
)
from reverie.memory.errors import ConflictError, InvalidInputError, NotFoundError, ReverieError


def _add_common(p: argparse.ArgumentParser, *, tenant: bool = True) -> None:
    if tenant:
        p.add_argument("--tenant", required=True, help="tenant (1-64 of A-Z a-z 0-9 _ . -)")
    p.add_argument("--json", action="store_true", help="print JSON")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="reverie", description="Streaming continual-learning memory for LLM agents."
    )
    parser.add_argument("--config", help="TOML settings file (default: ./reverie.toml if present)")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(
        name: str, func: Callable[[argparse.Namespace], int], help: str, **kw: Any
    ) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        p.set_defaults(func=func)
        _add_common(p, **kw)
        return p

    p = command("log", cmd_log, "log an experience (durable and recallable on return)")
    p.add_argument("text", help="the experience; '-' reads it from standard input")
    p.add_argument("--id", help="client-chosen id (re-logging the same id is idempotent)")
    p.add_argument("--source", help="where the experience came from")
    p.add_argument("--metadata", help="a JSON object, at most 16 KiB")
    p.add_argument("--created-at", help="when it happened (ISO-8601; default now)")

    p = command("list", cmd_list, "list a tenant's experiences in logging order, a page at a time")
    p.add_argument("--status", choices=["buffered", "consolidated", "unconsolidated"])
    p.add_argument("--since", help="created at or after this time (ISO-8601)")
    p.add_argument("--until", help="created before this time (ISO-8601)")
    p.add_argument("--limit", type=int, default=50, help="page size (1-1000, default 50)")
    p.add_argument("--cursor", help="the next_cursor of the previous page")

    p = command("recall", cmd_recall, "recall a tenant's experiences closest to a query")
    p.add_argument("query")
    p.add_argument("-k", type=int, default=5, help="how many (1-100, default 5)")

    p = command("update", cmd_update, "replace an experience by a new revision")
    p.add_argument("id")
    p.add_argument("text", help="the new text; '-' reads it from standard input")

    p = command("forget", cmd_forget, "erase an experience")
    p.add_argument("id")
    p.add_argument(
        "--prove",
        action="store_true",
        help="load the model and record the proof: its probe questions answered by the served "
        "and by the base model",
    )

    p = command(
        "delete-tenant", cmd_delete_tenant, "erase a tenant: memory, adapters, tokens (for good)"
    )
    p.add_argument("--yes", action="store_true", help="confirm: nothing of the tenant is kept")

    p = command("status", cmd_status, "counts per tenant and stream offsets", tenant=False)
    p.add_argument("--tenant", help="only this tenant")

    p = command(
        "consolidate", cmd_consolidate, "distil buffered experiences into adapters", tenant=False
    )
    p.add_argument("--once", action="store_true", help="run one cycle per tenant and exit")
    p.add_argument("--tenant", help="only this tenant (default: every tenant with new ones)")

    p = command(
        "daemon", cmd_daemon, "run consolidation as a service (stop with SIGTERM)", tenant=False
    )
    when = p.add_mutually_exclusive_group()
    when.add_argument("--interval", type=float, help="seconds between cycles")
    when.add_argument("--cron", help="crontab schedule, e.g. '*/15 * * * *'")

    p = command(
        "serve", cmd_serve, "serve the HTTP API (OpenAI-compatible chat included)", tenant=False
    )
    p.add_argument("--host", default="127.0.0.1", help="bind address (default loopback)")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--max-request-bytes", type=int, default=1024 * 1024)

    p = command("export", cmd_export, "write a tenant (experiences and adapters) to one file")
    p.add_argument("file", help="the archive to write (a tar file)")

    p = command("import", cmd_import, "load a tenant exported by `reverie export`", tenant=False)
    p.add_argument("file", help="the archive to read")
    p.add_argument("--tenant", help="the tenant to create (default: the exported tenant's name)")

    p = command("mcp", cmd_mcp, "serve memory tools over MCP (stdio for one tenant)", tenant=False)
    p.add_argument(
        "--tenant",
        default=os.environ.get("REVERIE_TENANT"),
        help="the tenant whose memory the tools use over stdio (default: $REVERIE_TENANT)",
    )
    p.add_argument(
        "--http", action="store_true", help="serve streamable HTTP; bearer tokens name tenants"
    )
    p.add_argument("--host", default="127.0.0.1", help="bind address for --http")
    p.add_argument("--port", type=int, default=8765, help="port for --http (default 8765)")

    p = command("tokens", cmd_tokens, "create, list or revoke API bearer tokens", tenant=False)
    p.add_argument("action", choices=["create", "list", "revoke"])
    p.add_argument("--tenant", help="tenant the new token may act for (create)")
    p.add_argument("--label", help="a note to recognise the token by (create)")
    p.add_argument("token", nargs="?", help="the token or its first 10 characters (revoke)")

    p = command("ask", cmd_ask, "answer with the tenant's adapter (and recalled memory)")
    p.add_argument("question")
    p.add_argument(
        "--recall",
        choices=["all", "unconsolidated", "none"],
        default="all",
        help="which memories go in the prompt: all (default: consolidated or not), "
        "unconsolidated (only those not yet in the adapter), none (the weights alone)",
    )
    p.add_argument(
        "--no-recall",
        action="store_true",
        help="the same as --recall none: the answer must come from the adapter's weights",
    )

    p = command("adapters", cmd_adapters, "list, show, promote or roll back adapter versions")
    p.add_argument("action", choices=["list", "show", "promote", "rollback"])
    p.add_argument("--version", help="vNNNN (show, promote; rollback defaults to the parent)")

    p = command("report", cmd_report, "retention report: per fact per version")
    p.add_argument(
        "--format",
        choices=["md", "json", "html"],
        default="md",
        help="html: one self-contained page (charts, answers, the buffer): > report.html",
    )
    p.add_argument(
        "--plot", help="also write a PNG here: forgetting curves per cohort and the gate scores"
    )

    # The suite's own parser reads the rest of the line, so building this parser never imports
    # the benchmarks (``reverie bench --help`` prints the suite's options).
    p = sub.add_parser(
        "bench",
        help="run the benchmark suite (JSON + Markdown); see reverie bench --help",
        description="run the benchmark suite (JSON + Markdown)",
        add_help=False,
    )
    p.set_defaults(func=cmd_bench, json=False)

    command("demo", cmd_demo, "run the end-to-end demo on embedded defaults", tenant=False)
    return parser


def _configure_logging(verbose: int) -> None:
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    if verbose < 2:
        # transformers reads this when it is first imported (by the commands that load a
        # model): importing it here to switch its bars off cost every command 0.7-3 s.
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        # Deprecation notices between the model libraries (peft calling transformers) are for
        # their developers, not for users of this command; -vv shows them.
        for library in ("transformers", "peft", "sentence_transformers"):
            warnings.filterwarnings("ignore", category=FutureWarning, module=rf"{library}(\.|$)")
            warnings.filterwarnings("ignore", category=UserWarning, module=rf"{library}(\.|$)")


def main(argv: Sequence[str] | None = None) -> int:
    # Before torch loads: OpenMP threads that spin while waiting collapse throughput whenever
    # another process (a daemon, a server, a test) shares the cores. Passive waiting costs little.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if rest and args.command != "bench":
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    args.rest = rest
    # Long-running commands report progress by default; the rest stay quiet unless -v.
    long_running = args.command in ("bench", "consolidate", "daemon", "serve", "demo")
    _configure_logging(args.verbose + (1 if long_running else 0))
    try:
        code: int = args.func(args)
        return code
    except (InvalidInputError, ConflictError) as err:
        return _fail(args, err, EXIT_USAGE)
    except (NotFoundError, ReverieError) as err:
        return _fail(args, err, EXIT_FAILURE)


def _fail(args: argparse.Namespace, err: Exception, code: int) -> int:
    field = getattr(err, "field", None)
    if getattr(args, "json", False):
        print(json.dumps({"error": str(err), "field": field, "type": type(err).__name__}))
    print(f"reverie: error: {err}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
