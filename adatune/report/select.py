"""Which runs a report shows, read from the store."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from adatune.report.info import replay_source_id
from adatune.store.records import RunDetail

if TYPE_CHECKING:
    from adatune.store import Store


def load_details(
    store: Store,
    *,
    experiment: str | None = None,
    run_ids: Sequence[int] | None = None,
    methods: Sequence[str] | None = None,
    dataset: str | None = None,
    steps: bool = True,
) -> list[RunDetail]:
    """The selected runs with their epochs (and steps), ordered by id.

    Filters combine (AND); several ``run_ids`` or ``methods`` match any of
    them. The probes of every selected ``find-alpha`` search come along even
    when the filters alone would not select them, so a search is never shown
    without its probes; so does the source run of every selected replay.
    """
    runs = store.list_runs(
        experiment=experiment,
        method=list(methods) if methods else None,
        dataset=dataset,
        ids=list(run_ids) if run_ids else None,
    )
    by_id = {r.id: r for r in runs}
    for search in [r for r in runs if r.kind == "find-alpha"]:
        for probe in store.list_runs(parent_id=search.id, kind="probe"):
            by_id.setdefault(probe.id, probe)
    sources = {replay_source_id(r) for r in runs} - set(by_id) - {None}
    if sources:  # a replay is shown next to its source
        for source in store.list_runs(ids=sorted(sources)):
            by_id.setdefault(source.id, source)
    return [store.get_run(run_id, steps=steps) for run_id in sorted(by_id)]
