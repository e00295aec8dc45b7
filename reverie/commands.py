"""What each ``reverie`` command does (the parser and the exit codes are in ``reverie.cli``).

Every command validates its arguments before it opens anything, then opens what it needs: a
command that loads no model never imports one.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
from pathlib import Path
from typing import Any

from reverie.logs import use_json_logs
from reverie.memory.errors import InvalidInputError, NotFoundError

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_UNAVAILABLE = 0, 1, 2, 3


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
        erased = client.forget(args.id, tenant=args.tenant, prove=args.prove or None)
        proof = client.erasures(args.tenant)[-1]["proof"]
    line = f"forgot {args.id} of tenant {args.tenant}"
    if erased:
        line += f"; erased adapter versions {', '.join(erased)}"
    if proof is not None and proof.get("holds") is not None:
        line += (
            f"; proof: the served model answers {proof['served_correct']} of its "
            f"{proof['questions']} probe questions, the base model {proof['base_correct']} "
            f"({'holds' if proof['holds'] else 'DOES NOT HOLD'})"
        )
    _emit(
        args,
        {"forgotten": args.id, "tenant": args.tenant, "erased_versions": erased, "proof": proof},
        line,
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
    from reverie.agent.client import writable
    from reverie.consolidator.cycle import Consolidator

    with _client(args) as client:
        writable(client)  # a cycle writes versions and marks the buffer
        consolidator = Consolidator(client.settings, buffer=client.buffer, embedder=client.embedder)
        tenants = (
            [args.tenant]
            if args.tenant
            else [t for t, c in client.buffer.stats().items() if c["buffered"]]
        )
        results = [consolidator.run_cycle(t).to_json() for t in tenants]
    from reverie.consolidator.result import summary_table

    lines = [summary_table(results)] if results else []
    lines += [f"{r['tenant']}: {'; '.join(r['reasons'])}" for r in results if r["reasons"]]
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
    if "json" in (settings.log_format, settings.daemon.log_format):
        use_json_logs()
    from reverie.agent.client import writable

    with MemoryClient(settings) as client:
        writable(client)
        Daemon(
            settings, stream=client.stream, buffer=client.buffer, embedder=client.embedder
        ).run_forever()
    return EXIT_OK


def _port_free(host: str, port: int) -> bool:
    """Whether ``host:port`` can be bound now (checked before any model loads)."""
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def cmd_serve(args: argparse.Namespace) -> int:
    from reverie.memory.extras import require

    require("fastapi", "server", "reverie serve")
    uvicorn = require("uvicorn", "server", "reverie serve")
    from reverie.agent import MemoryClient
    from reverie.agent.server import create_app
    from reverie.settings import load_settings

    if args.port and not _port_free(args.host, args.port):
        print(
            f"reverie: error: {args.host}:{args.port} is in use (another server?); "
            "stop it or choose another --port",
            file=sys.stderr,
        )
        return EXIT_UNAVAILABLE
    settings = load_settings(args.config)
    if settings.log_format == "json":
        use_json_logs()
    with MemoryClient(settings) as client:
        load = getattr(client.embedder, "load", None)
        if load is not None:
            load()  # the first request should not pay for loading the embedder
        # The language model loads while the server already answers (/healthz: 503 until then).
        threading.Thread(target=client.load_model, name="load-model", daemon=True).start()
        app = create_app(client, max_request_bytes=args.max_request_bytes)
        url = f"http://{args.host}:{args.port}"
        print(f"serving on {url} (OpenAI-compatible base URL {url}/v1)", file=sys.stderr)
        # JSON logs: uvicorn's own lines go through our handlers too (its config would add
        # plain-text handlers of its own).
        logs: dict[str, Any] = {"log_config": None} if settings.log_format == "json" else {}
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning", **logs)
    return EXIT_OK


def cmd_export(args: argparse.Namespace) -> int:
    from reverie.agent.archive import export_tenant

    with _client(args) as client:
        manifest = export_tenant(client, args.tenant, Path(args.file))
    _emit(
        args,
        manifest,
        f"exported {manifest['experiences']} experiences and {len(manifest['versions'])} "
        f"adapter versions of {args.tenant} to {args.file}",
    )
    return EXIT_OK


def cmd_import(args: argparse.Namespace) -> int:
    from reverie.agent.archive import import_tenant

    with _client(args) as client:
        done = import_tenant(client, Path(args.file), args.tenant)
    _emit(
        args,
        done,
        f"imported {done['experiences']} experiences ({done['consolidated']} consolidated) and "
        f"{done['versions']} adapter versions into {done['tenant']} (current: "
        f"{done['current'] or 'none'})",
    )
    return EXIT_OK


def cmd_mcp(args: argparse.Namespace) -> int:
    """MCP over stdio: stdout carries the protocol, so nothing else may print there."""
    from reverie.memory.extras import require

    require("mcp", "mcp", "reverie mcp")
    from reverie.agent import MemoryClient
    from reverie.agent.mcp_server import build_server
    from reverie.memory.experience import validate_tenant
    from reverie.settings import load_settings

    if args.http:
        uvicorn = require("uvicorn", "server", "reverie mcp --http")
        from reverie.agent.mcp_server import http_app

        if args.port and not _port_free(args.host, args.port):
            print(f"reverie: error: {args.host}:{args.port} is in use", file=sys.stderr)
            return EXIT_UNAVAILABLE
        with MemoryClient(load_settings(args.config)) as client:
            url = f"http://{args.host}:{args.port}/mcp"
            print(f"MCP (streamable HTTP) on {url}; bearer tokens name tenants", file=sys.stderr)
            uvicorn.run(http_app(client), host=args.host, port=args.port, log_level="warning")
        return EXIT_OK
    if not args.tenant:
        raise InvalidInputError("tenant", "give --tenant or set REVERIE_TENANT (or use --http)")
    tenant = validate_tenant(args.tenant)
    with MemoryClient(load_settings(args.config)) as client:
        build_server(client, lambda _ctx: tenant, fixed_tenant=tenant).run("stdio")
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
        "adapter_overruled": reply.overruled,
        "recalled_ids": list(reply.recalled_ids),
    }
    _emit(args, payload, reply.text)
    return EXIT_OK


def cmd_adapters(args: argparse.Namespace) -> int:
    from reverie.memory.adapters import AdapterRegistry
    from reverie.memory.files import require_writable
    from reverie.settings import load_settings

    data_dir = load_settings(args.config).data_dir
    if args.action in ("promote", "rollback"):
        require_writable(data_dir)
    registry = AdapterRegistry(data_dir / "adapters")
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
    from reverie.consolidator.report import load_report, plot_forgetting
    from reverie.memory.adapters import AdapterRegistry
    from reverie.settings import load_settings

    settings = load_settings(args.config)
    report = load_report(AdapterRegistry(settings.data_dir / "adapters"), args.tenant)
    if not report["versions"]:
        raise NotFoundError(
            f"tenant {args.tenant!r} has no adapter versions yet: nothing to report "
            "(a consolidation cycle writes the first)"
        )
    if args.plot:
        plot_forgetting(report, Path(args.plot), settings.gate.model_dump())
    fmt = "json" if args.json else args.format
    with _client(args) as client:
        out = client.retention_report(args.tenant, format=fmt)
    print(json.dumps(out, indent=2) if fmt == "json" else out)
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    from reverie.demo import run_demo

    return run_demo(args, _client, _emit)


def cmd_bench(args: argparse.Namespace) -> int:
    from reverie.benchmarks.suite import build_parser as bench_parser
    from reverie.benchmarks.suite import main as bench_main

    parser = bench_parser(argparse.ArgumentParser(prog="reverie bench"))
    return bench_main(parser.parse_args(args.rest))
