"""`omnivox plugins`: every loaded plugin with what it registers, and the plugins skipped with the reason."""

from __future__ import annotations

import argparse
import json
import os
import warnings


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "plugins",
        help="list loaded plugins and what they register",
        description="List every loaded plugin (built-in and entry-point group 'omnivox'), the components it "
        "registers per kind, and the plugins that were skipped with the reason. "
        "OMNIVOX_LOAD_PLUGINS=a,b limits what loads.",
    )
    parser.add_argument("--json", action="store_true", help="print a JSON object instead of text")
    parser.set_defaults(func=run)


def collect() -> dict:
    """{"loaded": {plugin: {"source", "registers": {kind: {name: description}}}}, "skipped": {plugin: why},
    "load_limit": OMNIVOX_LOAD_PLUGINS or None, "stage_kinds": {kind: description}, "core_stages":
    {"kind/name": description}}, from a fresh plugin manager."""
    from omnivox.core.contracts.manager import KINDS, PluginManager
    from omnivox.core.runtime.pipeline import CORE_STAGES, stage_kinds

    with warnings.catch_warnings():  # skipped plugins are listed, not warned about
        warnings.simplefilter("ignore")
        manager = PluginManager()
    loaded = {
        name: {"source": manager.sources.get(name, "?"), "registers": {}} for name, _ in manager.pm.list_name_plugin()
    }
    for kind in KINDS:
        for entry in manager.registry(kind).entries.values():
            plugin = loaded.setdefault(entry.plugin, {"source": "?", "registers": {}})
            plugin["registers"].setdefault(kind, {})[entry.name] = entry.description
    return {
        "loaded": loaded,
        "skipped": dict(manager.skipped),
        "load_limit": os.environ.get("OMNIVOX_LOAD_PLUGINS"),
        "stage_kinds": {kind: schema.description for kind, schema in stage_kinds().items()},
        "core_stages": {
            f"{kind}/{name}": stage.description + "".join(f" ({p}: a plugin of {k})" for p, k in stage.plugins.items())
            for kind, stages in CORE_STAGES.items()
            for name, stage in stages.items()
        },
    }


def format_text(info: dict) -> str:
    lines = []
    if info["load_limit"] is not None:
        lines.append(f"OMNIVOX_LOAD_PLUGINS={info['load_limit']!r} limits loading")
    lines.append(f"loaded plugins ({len(info['loaded'])}):")
    for name, plugin in info["loaded"].items():
        lines.append(f"  {name} [{plugin['source']}]")
        if not plugin["registers"]:
            lines.append("    (registers no components)")
        for kind, entries in plugin["registers"].items():
            for entry, description in entries.items():
                lines.append(f"    {kind}: {entry}" + (f" - {description}" if description else ""))
    if info["skipped"]:
        lines.append(f"skipped plugins ({len(info['skipped'])}):")
        lines.extend(f"  {name}: {why}" for name, why in info["skipped"].items())
    lines.append("pipeline stages (`plugin: KIND/NAME`; NAME: a plugin of KIND above, or a stage core provides):")
    for kind, description in info["stage_kinds"].items():
        core = {s: d for s, d in info["core_stages"].items() if s.startswith(f"{kind}/")}
        lines.append(f"  {kind} - {description}")
        lines.extend(f"    {stage} - {d}" for stage, d in core.items())
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    info = collect()
    print(json.dumps(info, indent=2) if args.json else format_text(info))
    return 0
