"""The ``reverie`` command: wires settings, memory, consolidation and serving together.

Exit codes: 0 success, 1 runtime failure or not found, 2 invalid input or settings.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from reverie.memory.errors import ConflictError, InvalidInputError, NotFoundError, ReverieError

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


def _emit(args: argparse.Namespace, payload: Any, text: str) -> None:
    if args.json:
        print(json.dumps(payload, indent=2, default=str))
    else:
        print(text)


def _client(args: argparse.Namespace) -> Any:
    from reverie.agent import MemoryClient
    from reverie.settings import load_settings

    return MemoryClient(load_settings(args.config))


def _experience_json(exp: Any) -> dict[str, Any]:
    return dict(exp.model_dump(mode="json"))


def cmd_log(args: argparse.Namespace) -> int:
    text = sys.stdin.read() if args.text == "-" else args.text
    metadata = None
    if args.metadata is not None:
        try:
            metadata = json.loads(args.metadata)
        except json.JSONDecodeError as err:
            raise InvalidInputError(
                "metadata",
                f"is not valid JSON ({err.msg} at column {err.colno}); "
                'give a JSON object such as \'{"topic": "rent"}\'',
            ) from None
        except RecursionError:
            raise InvalidInputError(
                "metadata", 'nests too deeply; give a flat JSON object such as {"topic": "rent"}'
            ) from None
    from reverie.memory.experience import make_experience

    fields = {"id": args.id, "source": args.source, "metadata": metadata}
    fields["created_at"] = args.created_at
    # Validate before loading models, so bad input fails fast and writes nothing.
    make_experience(text, tenant=args.tenant, **fields)
    with _client(args) as client:
        exp = client.log(text, tenant=args.tenant, **fields)
    _emit(args, _experience_json(exp), f"logged {exp.id} for tenant {exp.tenant}")
    return EXIT_OK


def cmd_list(args: argparse.Namespace) -> int:
    with _client(args) as client:
        page = client.list_experiences(
            tenant=args.tenant,
            status=args.status,
            since=args.since,
            until=args.until,
            limit=args.limit,
            cursor=args.cursor,
        )
    payload = {
        "experiences": [
            {"status": s.status, "version": s.version, **_experience_json(s.experience)}
            for s in page.items
        ],
        "next_cursor": page.next_cursor,
    }
    lines = [
        f"{s.experience.created_at:%Y-%m-%d %H:%M}  {s.status:<14} {s.experience.id}  "
        f"{s.experience.text}"
        for s in page.items
    ]
    if page.next_cursor:
        lines.append(f"(more: --cursor {page.next_cursor})")
    _emit(args, payload, "\n".join(lines) if lines else "(no experiences)")
    return EXIT_OK


def cmd_recall(args: argparse.Namespace) -> int:
    with _client(args) as client:
        hits = client.recall(args.query, tenant=args.tenant, k=args.k)
    payload = [
        {
            "score": round(h.score, 4),
            "status": h.status,
            "experience": _experience_json(h.experience),
        }
        for h in hits
    ]
    lines = [f"{h.score:.3f}  {h.experience.id}  {h.experience.text}" for h in hits]
    _emit(args, payload, "\n".join(lines) if lines else "(no experiences)")
    return EXIT_OK


def cmd_update(args: argparse.Namespace) -> int:
    text = sys.stdin.read() if args.text == "-" else args.text
    with _client(args) as client:
        exp = client.update(args.id, text, tenant=args.tenant)
    _emit(args, _experience_json(exp), f"updated {exp.id} of tenant {exp.tenant}")
    return EXIT_OK


def cmd_forget(args: argparse.Namespace) -> int:
    with _client(args) as client:
        client.forget(args.id, tenant=args.tenant)
    _emit(
        args,
        {"forgotten": args.id, "tenant": args.tenant},
        f"forgot {args.id} of tenant {args.tenant}",
    )
    return EXIT_OK


def cmd_delete_tenant(args: argparse.Namespace) -> int:
    if not args.yes:
        raise InvalidInputError(
            "yes",
            f"deleting tenant {args.tenant!r} erases all its memory, adapters and tokens for "
            "good; add --yes to confirm",
        )
    with _client(args) as client:
        deleted = client.delete_tenant(args.tenant)
    _emit(
        args,
        {"tenant": args.tenant, **deleted},
        f"deleted tenant {args.tenant}: {deleted['experiences']} experiences, "
        f"{deleted['versions']} adapter versions, {deleted['tokens']} tokens",
    )
    return EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    with _client(args) as client:
        status = client.status()
    if args.tenant:
        status["tenants"] = {t: c for t, c in status["tenants"].items() if t == args.tenant}
    lines = [f"data dir: {status['data_dir']}", f"stream:   {status['stream']['name']}"]
    lines.append(f"dead letters: {status['stream']['dead_letters']}")
    lines.append(f"{'tenant':<24}{'total':>8}{'buffered':>10}{'consolidated':>14}  adapter")
    for tenant, c in status["tenants"].items():
        lines.append(
            f"{tenant:<24}{c['total']:>8}{c['buffered']:>10}{c['consolidated']:>14}  "
            f"{c['adapter'] or '-'}"
        )
    _emit(args, status, "\n".join(lines))
    return EXIT_OK


def cmd_consolidate(args: argparse.Namespace) -> int:
    if not args.once:
        raise InvalidInputError("once", "give --once to run one cycle now, or run `reverie daemon`")
    from reverie.consolidator.cycle import Consolidator

    with _client(args) as client:
        consolidator = Consolidator(client.settings, buffer=client.buffer, embedder=client.embedder)
        tenants = (
            [args.tenant]
            if args.tenant
            else [t for t, c in client.buffer.stats().items() if c["buffered"]]
        )
        results = [consolidator.run_cycle(t).to_json() for t in tenants]
    lines = []
    for r in results:
        eff = r["probes"].get("efficacy") or {}
        loc = r["probes"].get("locality") or {}
        lines.append(
            f"{r['tenant']}: {r['outcome']} {r['version'] or ''} "
            f"({len(r['experience_ids'])} experiences"
            + (
                f"; efficacy {eff.get('accuracy', 0):.2f} of ceiling {eff.get('ceiling', 0):.2f}, "
                f"locality {loc.get('ratio', 0):.2f}"
                if eff
                else ""
            )
            + ")"
            + (f" - {'; '.join(r['reasons'])}" if r["reasons"] else "")
        )
    _emit(args, results, "\n".join(lines) if lines else "nothing to consolidate")
    failed = any(r["outcome"] == "failed" for r in results)
    return EXIT_FAILURE if failed else EXIT_OK


def cmd_daemon(args: argparse.Namespace) -> int:
    from reverie.agent import MemoryClient
    from reverie.consolidator.daemon import Daemon
    from reverie.settings import load_settings

    overrides: dict[str, Any] = {}
    if args.interval is not None:
        overrides = {"interval_s": args.interval, "cron": None}
    elif args.cron is not None:
        overrides = {"cron": args.cron}
    settings = load_settings(args.config)
    if overrides:
        settings = load_settings(args.config, daemon={**settings.daemon.model_dump(), **overrides})
    if settings.daemon.log_format == "json":
        _json_logging()
    with MemoryClient(settings) as client:
        Daemon(
            settings, stream=client.stream, buffer=client.buffer, embedder=client.embedder
        ).run_forever()
    return EXIT_OK


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def _json_logging() -> None:
    for handler in logging.getLogger().handlers:
        handler.setFormatter(_JsonFormatter())


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from reverie.agent import MemoryClient
    from reverie.agent.server import create_app
    from reverie.settings import load_settings

    with MemoryClient(load_settings(args.config)) as client:
        app = create_app(client, max_request_bytes=args.max_request_bytes)
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return EXIT_OK


def cmd_tokens(args: argparse.Namespace) -> int:
    from reverie.agent.auth import TokenStore
    from reverie.settings import load_settings

    store = TokenStore(load_settings(args.config).data_dir)
    try:
        if args.action == "create":
            if not args.tenant:
                raise InvalidInputError("tenant", "`tokens create` needs --tenant")
            token = store.create(args.tenant, args.label)
            _emit(
                args,
                {"token": token, "tenant": args.tenant},
                f"{token}\n(shown once: only its hash is stored)",
            )
        elif args.action == "list":
            rows = store.entries()
            _emit(
                args,
                rows,
                "\n".join(f"{r['prefix']}...  {r['tenant']:<20} {r['label'] or ''}" for r in rows)
                or "(no tokens)",
            )
        else:
            if not args.token:
                raise InvalidInputError("token", "`tokens revoke` needs the token or its prefix")
            store.revoke(args.token)
            _emit(args, {"revoked": args.token[:10]}, f"revoked {args.token[:10]}...")
    finally:
        store.close()
    return EXIT_OK


def cmd_ask(args: argparse.Namespace) -> int:
    with _client(args) as client:
        reply = client.chat(
            [{"role": "user", "content": args.question}],
            tenant=args.tenant,
            recall="none" if args.no_recall else args.recall,
        )
    payload = {
        "answer": reply.text,
        "adapter_version": reply.adapter_version,
        "routed": reply.routed,
        "recalled_ids": list(reply.recalled_ids),
    }
    _emit(args, payload, reply.text)
    return EXIT_OK


def cmd_adapters(args: argparse.Namespace) -> int:
    from reverie.memory.adapters import AdapterRegistry
    from reverie.settings import load_settings

    registry = AdapterRegistry(load_settings(args.config).data_dir / "adapters")
    tenant = args.tenant
    if args.action == "list":
        current = registry.current(tenant)
        rows = [
            {
                "version": v.version,
                "parent": v.parent,
                "outcome": v.outcome,
                "current": current is not None and v.version == current.version,
                "created_at": v.manifest.get("created_at"),
                "experiences": len(v.manifest.get("experiences", [])),
            }
            for v in registry.versions(tenant)
        ]
        text = (
            "\n".join(
                f"{'*' if r['current'] else ' '} {r['version']}  {r['outcome']:<20} "
                f"{r['experiences']:>3} experiences  parent {r['parent'] or '-'}"
                for r in rows
            )
            or "(no versions)"
        )
        _emit(args, rows, text)
    elif args.action == "show":
        info = registry.get(tenant, _need_version(args))
        _emit(args, info.manifest, json.dumps(info.manifest, indent=2))
    elif args.action == "promote":
        info = registry.promote(tenant, _need_version(args))
        _emit(args, {"current": info.version}, f"{tenant}: current is now {info.version}")
    else:
        info = registry.rollback(tenant, args.version)
        _emit(args, {"current": info.version}, f"{tenant}: rolled back to {info.version}")
    return EXIT_OK


def _need_version(args: argparse.Namespace) -> str:
    if not args.version:
        raise InvalidInputError("version", f"`adapters {args.action}` needs --version vNNNN")
    return str(args.version)


def cmd_report(args: argparse.Namespace) -> int:
    from reverie.consolidator.report import load_report, plot_forgetting, to_markdown
    from reverie.memory.adapters import AdapterRegistry
    from reverie.settings import load_settings

    registry = AdapterRegistry(load_settings(args.config).data_dir / "adapters")
    report = load_report(registry, args.tenant)
    if args.plot:
        plot_forgetting(report, Path(args.plot))
    if args.format == "json" or args.json:
        print(json.dumps(report, indent=2))
    else:
        print(to_markdown(report))
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    from reverie.demo import run_demo

    return run_demo(args, _client, _emit)


def cmd_bench(args: argparse.Namespace) -> int:
    from reverie.benchmarks.suite import build_parser as bench_parser
    from reverie.benchmarks.suite import main as bench_main

    parser = bench_parser(argparse.ArgumentParser(prog="reverie bench"))
    return bench_main(parser.parse_args(args.rest))


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
    p.add_argument("--format", choices=["md", "json"], default="md")
    p.add_argument("--plot", help="also write a forgetting-curve plot (PNG) here")

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
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if verbose < 2:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()


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
