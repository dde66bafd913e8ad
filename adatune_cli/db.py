"""``adatune db``: the experiment store's schema version and migrations."""

from __future__ import annotations

import typer

from adatune_cli._common import DEFAULT_STORE, StoreOption, out
from adatune_cli.main import app

db_app = typer.Typer(
    help="Inspect and migrate the experiment store's schema.",
    no_args_is_help=True,
)
app.add_typer(db_app, name="db")


@db_app.command("current")
def current(store: StoreOption = DEFAULT_STORE) -> None:
    """Show the store's schema revision and whether it needs `adatune db upgrade`.

    Changes nothing. Example: adatune db current --store runs/adatune.db
    """
    from adatune.store import VERSION_TABLE, inspect_store

    state = inspect_store(store)
    out.print(f"store: {state.location}", markup=False, highlight=False, soft_wrap=True)
    if state.state == "new":
        line = f"revision: none (no adatune tables yet; head is {state.head})"
    elif state.state == "current":
        line = f"revision: {state.current} (head, up to date)"
    elif state.state == "unversioned":
        line = (f"revision: missing (adatune's tables are there but {VERSION_TABLE} has no row: "
                "the store is damaged; run `adatune db check`)")
    elif state.state == "older":
        line = (
            f"revision: {state.current} (older than head {state.head}: back up the store, "
            "then run `adatune db upgrade`)"
        )
    else:
        line = (
            f"revision: {state.current} (newer than this adatune, which knows up to "
            f"{state.head}: upgrade adatune)"
        )
    out.print(line, markup=False, highlight=False, soft_wrap=True)


@db_app.command("upgrade")
def upgrade(store: StoreOption = DEFAULT_STORE) -> None:
    """Migrate the store to this adatune's schema, creating it if it does not exist.

    Back the store up first (copy the .db file, or pg_dump).
    Example: adatune db upgrade --store runs/adatune.db
    """
    from adatune.store import upgrade_store

    before, after = upgrade_store(store)
    if before.state == "current":
        message = f"{after.location} is already at revision {after.current} (head)"
    elif before.current is None:
        message = f"created the store schema in {after.location} at revision {after.current}"
    else:
        message = f"upgraded {after.location} from revision {before.current} to {after.current}"
    out.print(message, markup=False, highlight=False, soft_wrap=True)


@db_app.command("check")
def check(store: StoreOption = DEFAULT_STORE) -> None:
    """Check the store for damage: SQLite's full integrity check, and the schema revision.

    Changes nothing. Exit code 0 when healthy, 1 when a problem was found (one
    line each). On SQLite this runs PRAGMA integrity_check (every page, b-tree
    and index) and PRAGMA foreign_key_check; opening a store for training runs
    only the quicker PRAGMA quick_check, and only on stores up to 64 MB.
    Example: adatune db check --store runs/adatune.db
    """
    from adatune.store.health import check_store

    result = check_store(store)
    out.print(f"store: {result.location}", markup=False, highlight=False, soft_wrap=True)
    for problem in result.problems:
        out.print(f"problem: {problem}", markup=False, highlight=False, soft_wrap=True)
    checked = ", ".join(result.checks)
    if result.ok:
        out.print(f"ok ({checked}; revision {result.revision})", markup=False, highlight=False)
        return
    out.print(f"damaged: {len(result.problems)} problem{'s' if len(result.problems) > 1 else ''}"
              f" ({checked}); restore the store from a backup", markup=False, highlight=False)
    raise typer.Exit(1)
