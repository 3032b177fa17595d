"""The training datasets, registered through the same hook as any plugin: `manifest`, the JSONL manifest data
set of omnivox.training.data (the format `omnivox synth-data` writes and `omnivox prepare` completes)."""

from __future__ import annotations

from omnivox.core.contracts.hookspecs import hookimpl


def make_manifest_dataset(path: str, tasks: list[str] | None = None, limit: int | None = None):
    """The examples of the prepared manifest `path`, optionally only `tasks` and the first `limit`."""
    from omnivox.training.data import ManifestDataset

    return ManifestDataset(path, tasks=tasks, limit=limit)


@hookimpl
def register_datasets(registry):
    registry.add("manifest", make_manifest_dataset,
                 description="JSONL manifest of spoken/text Q->A examples (omnivox.training.data)")
