"""`adatune report` end to end: a real SQLite store, the CLI, and the page in Chromium."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest

from adatune.store import EpochRecord, NewRun, StepRecord, open_store
from adatune_cli.main import main

EVIL = "<script>alert(1)</script>"
EXPERIMENT = "lr <study> & co"
CHROMIUM = "/usr/bin/chromium"


def _epoch(e: int, val: float, *, tuner: bool, loss: float | None = None, lr: float = 0.1):
    return EpochRecord(
        epoch=e,
        lr=lr,
        lr_mean=lr,
        mu=0.99 if tuner else None,  # constant, as with the default mu
        hyper_lr=1e-4 if tuner else None,  # constant, as with alpha = 0
        train_loss=1.0 / e if loss is None else loss,
        train_acc=val,
        val_loss=1.0 - val,
        val_acc=val,
        test_loss=1.0 - val,
        test_acc=val - 0.05,
        elapsed_s=2.0 * e,
    )


def build_store(path: Path) -> dict[str, list[int]]:
    """Three methods x seeds in EXPERIMENT (one run named EVIL, one diverged), a
    find-alpha search with four probes, and one run in another experiment."""
    ids: dict[str, list[int]] = {}
    with open_store(path) as store:

        def new(kind, method, seed, **kw) -> int:
            run_id = store.create_run(
                NewRun(
                    kind=kind,
                    method=method,
                    optimizer="sgd",
                    network="mlp",
                    dataset=kw.pop("dataset", "digits"),
                    seed=seed,
                    config=kw.pop("config", {"method": method, "seed": seed, "lr": 0.1}),
                    experiment=kw.pop("experiment", EXPERIMENT),
                    **kw,
                )
            )
            ids.setdefault(method if kind in ("train", "baseline") else kind, []).append(run_id)
            return run_id

        for method, seeds in (("marthe", 3), ("hd", 2)):
            for seed in range(seeds):
                name = EVIL if (method, seed) == ("marthe", 0) else f"{method}-{seed}"
                rid = new("train", method, seed, name=name)
                for e in range(1, 5):
                    steps = [
                        StepRecord(
                            step=(e - 1) * 5 + s,
                            epoch=e,
                            lr=0.1 + 0.01 * s,
                            mu=0.99,
                            hyper_lr=1e-3,
                            hypergradient=1e-4,
                            train_loss=1.0 / e,
                        )
                        for s in range(5)
                    ]
                    store.record_epoch(
                        rid,
                        _epoch(e, 0.5 + 0.1 * e + 0.01 * seed, tuner=True, lr=0.1 + 0.01 * e),
                        steps,
                    )
                store.finish_run(rid, "completed")
        for seed in range(3):
            rid = new("baseline", "constant", seed, name=f"constant-{seed}")
            diverged = seed == 2
            for e in range(1, 5):
                bad = diverged and e >= 3
                store.record_epoch(
                    rid,
                    _epoch(
                        e,
                        math.nan if bad else 0.4 + 0.05 * e,
                        tuner=False,
                        loss=math.inf if bad else None,
                    ),
                )
            store.finish_run(
                rid,
                "diverged" if diverged else "completed",
                error="loss is inf" if diverged else None,
            )
        search = new("find-alpha", "marthe", 0, name="search")
        for alpha, ok in ((1e-6, True), (1e-5, True), (1e-4, True), (1e-3, False)):
            pid = new(
                "probe", "marthe", 0, parent_id=search, config={"method": "marthe", "alpha": alpha}
            )
            store.record_epoch(pid, _epoch(1, 0.5 if ok else math.nan, tuner=True))
            store.finish_run(
                pid, "completed" if ok else "diverged", error=None if ok else "hypergradient is nan"
            )
        store.finish_run(search, "completed", summary={"alpha": 1e-4, "search": "alpha"})
        new("train", "cosine", 0, experiment="other", dataset="cifar10")
    return ids


@pytest.fixture(scope="module")
def store_path(tmp_path_factory) -> tuple[Path, dict[str, list[int]]]:
    path = tmp_path_factory.mktemp("report") / "runs.db"
    return path, build_store(path)


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main(args)
    captured = capsys.readouterr()
    return exc.value.code, captured.out, captured.err


@pytest.fixture(scope="module")
def report_html(store_path, tmp_path_factory) -> Path:
    path, _ = store_path
    out = tmp_path_factory.mktemp("html") / "report.html"
    with pytest.raises(SystemExit) as exc:
        main(["report", "html", "--store", str(path), "--experiment", EXPERIMENT, "-o", str(out)])
    assert exc.value.code == 0
    return out


# --------------------------------------------------------------------------- CLI


def test_html_command_writes_the_report(report_html, store_path, capsys, tmp_path, monkeypatch):
    path, ids = store_path
    page = report_html.read_text(encoding="utf-8")
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and EVIL not in page
    assert "<h1>adatune report: lr &lt;study&gt; &amp; co</h1>" in page
    opened = []
    monkeypatch.setattr("webbrowser.open", opened.append)
    out = tmp_path / "one.html"
    code, stdout, stderr = run_cli(
        [
            "report",
            "html",
            "--store",
            str(path),
            "--run",
            str(ids["hd"][0]),
            "-o",
            str(out),
            "--open",
        ],
        capsys,
    )
    assert code == 0, stderr
    assert stdout.startswith(f"wrote {out} (") and "1 runs" in stdout
    assert opened == [out.resolve().as_uri()]


def test_table_command_and_json(store_path, capsys, monkeypatch):
    from adatune_cli._common import out

    monkeypatch.setattr(out, "width", 160)  # captured output is not a terminal: 80 columns
    path, ids = store_path
    code, stdout, _ = run_cli(["report", "table", "--store", str(path), "-e", EXPERIMENT], capsys)
    assert code == 0
    for text in ("constant", "hd", "marthe", "2 completed, 1 diverged", "best val acc"):
        assert text in stdout
    assert "cosine" not in stdout and "probe" not in stdout
    code, stdout, _ = run_cli(
        [
            "report",
            "table",
            "--store",
            str(path),
            "-e",
            EXPERIMENT,
            "--json",
            "-m",
            "marthe",
            "-m",
            "constant",
        ],
        capsys,
    )
    assert code == 0
    rows = {r["method"]: r for r in json.loads(stdout)}
    assert set(rows) == {"marthe", "constant"}
    assert rows["marthe"]["run_ids"] == ids["marthe"]
    assert rows["marthe"]["best_val_acc"]["mean"] == pytest.approx(0.91)  # 0.9 + 0.01*(0,1,2)/3
    assert rows["constant"]["status"] == {"completed": 2, "diverged": 1}
    assert rows["constant"]["best_val_acc"]["n"] == 3


def test_selected_search_brings_its_probes(store_path, capsys, tmp_path):
    path, ids = store_path
    out = tmp_path / "s.html"
    code, _, stderr = run_cli(
        [
            "report",
            "html",
            "--store",
            str(path),
            "--run",
            str(ids["find-alpha"][0]),
            "-o",
            str(out),
        ],
        capsys,
    )
    assert code == 0, stderr
    page = out.read_text(encoding="utf-8")
    assert f'id="fig-find-alpha-{ids["find-alpha"][0]}"' in page
    assert page.count("hypergradient is nan") >= 1 and 'id="fig-val-acc"' not in page
    # a table of only searches and probes has no method rows
    code, _, stderr = run_cli(
        ["report", "table", "--store", str(path), "--run", str(ids["find-alpha"][0])], capsys
    )
    assert code == 2 and "no train or baseline runs match" in stderr


def test_empty_selection_exits_2_with_one_line(store_path, capsys, tmp_path):
    path, _ = store_path
    out = tmp_path / "empty.html"
    code, stdout, stderr = run_cli(
        [
            "report",
            "html",
            "--store",
            str(path),
            "-e",
            EXPERIMENT,
            "--dataset",
            "imagenet",
            "-o",
            str(out),
        ],
        capsys,
    )
    assert code == 2 and stdout == ""
    assert stderr.strip().splitlines() == [
        f"adatune: error: no runs match --experiment {EXPERIMENT} --dataset imagenet in {path} "
        f"(`adatune runs list --store {path}` lists the runs it holds)"
    ]
    assert not out.exists()
    code, _, stderr = run_cli(["report", "table", "--store", str(path), "--method", "nope"], capsys)
    assert code == 2 and len(stderr.strip().splitlines()) == 1


def test_missing_store_is_an_error_not_a_new_file(tmp_path, capsys):
    missing = tmp_path / "nope.db"
    code, _, stderr = run_cli(["report", "table", "--store", str(missing)], capsys)
    assert code == 2 and "no store at" in stderr
    assert not missing.exists()


def test_unwritable_output_is_one_line(store_path, tmp_path, capsys):
    path, _ = store_path
    target = tmp_path / "no-such-dir" / "r.html"
    code, _, stderr = run_cli(["report", "html", "--store", str(path), "-o", str(target)], capsys)
    assert code == 2
    assert stderr.strip().splitlines() == [
        f"adatune: error: cannot write {target}: No such file or directory"
    ]


# --------------------------------------------------------------------------- browser

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def browser():
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is absent (Debian package chromium; .ci/run installs it)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


def open_page(browser, path: Path, width: int = 1300):
    """Load ``path``; return (page, problems) where problems lists console errors,
    page errors, dialogs and every request that is not the file itself."""
    page = browser.new_page(viewport={"width": width, "height": 900})
    problems: list[str] = []
    page.on(
        "console",
        lambda m: (
            problems.append(f"console {m.type}: {m.text}")
            if m.type in ("error", "warning")
            else None
        ),
    )
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))

    def on_dialog(dialog):
        problems.append(f"dialog: {dialog.message}")
        dialog.dismiss()

    page.on("dialog", on_dialog)

    def route(r):
        if r.request.url.startswith("file://"):
            r.continue_()
        else:
            problems.append(f"request: {r.request.url}")
            r.abort()

    page.route("**/*", route)
    page.on("requestfailed", lambda r: problems.append(f"failed request: {r.url}"))
    page.goto(path.as_uri())
    # generous: rendering waits on a loaded machine too (tests/_wait.py)
    page.wait_for_function("document.body.dataset.rendered !== 'pending'", timeout=600_000)
    return page, problems


def assert_no_constant_series_on_a_default_axis(page, expected: dict[str, float]) -> None:
    """A figure whose y values are all one value v != 0 has a tight range around v (or a
    log axis): never Plotly's v ± 1 default, where 1e-4 reads "0" and 0.99 sits mid 0..2.

    ``expected``: the figures of the page whose series is constant, and their values.
    """
    figures = page.evaluate(
        """Array.from(document.querySelectorAll('.js-plotly-plot')).map(d => {
            const ys = d.data.flatMap(t => Array.from(t.y || []))
                .filter(v => typeof v === 'number' && isFinite(v));
            const ax = d._fullLayout.yaxis;
            return {id: d.id, ys: ys, type: ax.type, range: ax.range};
        })"""
    )
    constant = {}
    for f in figures:
        ys = f["ys"]
        if f["type"] == "category" or not ys or max(ys) != min(ys):
            continue
        value = ys[0]
        constant[f["id"]] = value
        if value == 0 or f["type"] == "log":
            continue
        lo, hi = f["range"]
        assert lo < value < hi and hi - lo <= 0.2 * abs(value), f
    assert constant == pytest.approx(expected)


_RECTS = """(sel) => Array.from(document.querySelectorAll(sel)).map(e => {
    const r = e.getBoundingClientRect();
    return {x: r.x, y: r.y, w: r.width, h: r.height};
})"""


def _overlap(a: dict, b: dict) -> bool:
    return (
        a["x"] < b["x"] + b["w"]
        and b["x"] < a["x"] + a["w"]
        and a["y"] < b["y"] + b["h"]
        and b["y"] < a["y"] + a["h"]
    )


def assert_buttons_clear_the_modebar(page, must_have: set[str]) -> None:
    """The linear/log buttons of every figure lie inside it and clear of Plotly's toolbar."""
    ids = page.evaluate(
        "Array.from(document.querySelectorAll('.js-plotly-plot'))"
        ".filter(d => d.querySelector('.updatemenu-button')).map(d => d.id)"
    )
    assert must_have <= set(ids), ids
    for fid in ids:
        page.hover(f"#{fid} .nsewdrag")  # the toolbar shows while the pointer is on the plot
        (bar,) = page.evaluate(_RECTS, f"#{fid} .modebar")
        (fig,) = page.evaluate(_RECTS, f"#{fid}")
        buttons = page.evaluate(_RECTS, f"#{fid} .updatemenu-button")
        assert bar["w"] > 100 and bar["h"] > 10, (fid, bar)
        assert len(buttons) == 2, fid
        for button in buttons:
            assert button["w"] > 10 and button["h"] > 10, (fid, button)
            assert not _overlap(button, bar), (fid, button, bar)
            assert fig["x"] <= button["x"] and button["x"] + button["w"] <= fig["x"] + fig["w"]
            assert fig["y"] <= button["y"], (fid, button, fig)


@pytest.mark.slow
def test_report_renders_in_chromium(browser, report_html, store_path):
    _, ids = store_path
    page, problems = open_page(browser, report_html)
    try:
        assert page.evaluate("document.body.dataset.rendered") == "ok", page.inner_text(
            "#adatune-status"
        )
        traces = dict(
            page.evaluate(
                "Array.from(document.querySelectorAll('.js-plotly-plot'))"
                ".map(d => [d.id, d.data.length])"
            )
        )
        search = ids["find-alpha"][0]
        assert traces == {
            "fig-val-acc": 9,  # 3 methods x (band low, band high, mean)
            "fig-test-acc": 9,
            "fig-train-loss": 9,
            "fig-val-loss": 9,
            "fig-test-loss": 9,
            "fig-incumbent": 9,
            "fig-lr-epoch": 8,  # one per run: 3 marthe + 2 hd + 3 constant
            "fig-lr-step": 5,  # the tuner runs traced steps
            "fig-mu": 5,
            "fig-hyper-lr": 5,
            f"fig-find-alpha-{search}": 2,  # completed, diverged
        }
        # each figure drew its lines (SVG paths), not just an empty frame
        drawn = page.evaluate(
            "Array.from(document.querySelectorAll('.js-plotly-plot'))"
            ".map(d => [d.id, d.querySelectorAll('.scatterlayer .trace').length])"
        )
        assert all(n == traces[fid] for fid, n in drawn), drawn
        # the loss plots draw the losses: marthe's mean over seeds 0, 1, 2 of 1 - val_acc
        for fid in ("fig-val-loss", "fig-test-loss"):
            mean = page.evaluate(
                f"document.getElementById('{fid}').data"
                ".find(t => t.name.startsWith('marthe') && t.hovertemplate).y"
            )
            assert mean == pytest.approx([1 - (0.5 + 0.1 * e + 0.01) for e in range(1, 5)]), fid
        assert page.evaluate(
            "['fig-val-loss', 'fig-test-loss']"
            ".map(id => document.getElementById(id)._fullLayout.yaxis.title.text)"
        ) == ["validation loss", "test loss"]
        # every legend names the runs behind its lines, as drawn on the page
        marthe, hd, constant = (ids[m] for m in ("marthe", "hd", "constant"))
        legends = page.evaluate(
            "Array.from(document.querySelectorAll('#fig-val-acc .legendtext'))"
            ".map(t => t.textContent)"
        )
        assert legends == [f"constant (#{constant[0]}–#{constant[-1]})",
                           f"hd (#{hd[0]}, #{hd[1]})", f"marthe (#{marthe[0]}–#{marthe[-1]})"]
        for fid in ("fig-lr-epoch", "fig-incumbent", "fig-mu"):
            shown = page.evaluate(
                f"Array.from(document.querySelectorAll('#{fid} .legendtext'))"
                ".map(t => t.textContent)"
            )
            assert shown and all("(#" in text for text in shown), (fid, shown)
        # find-alpha speaks the CLI's words: stable / diverged, with the probes' run ids
        probes = ids["probe"]
        assert page.evaluate(
            f"document.getElementById('fig-find-alpha-{search}').data.map(t => t.name)"
        ) == [f"stable (#{probes[0]}–#{probes[2]})", f"diverged (#{probes[3]})"]
        # its axis holds every probe and the recommended value, ticked at their values
        fa = page.evaluate(
            f"""(() => {{ const d = document.getElementById('fig-find-alpha-{search}');
                const ax = d._fullLayout.xaxis;
                return {{range: ax.range, ticks: Array.from(d.querySelectorAll('.xtick text'))
                    .map(t => t.textContent)}}; }})()"""
        )
        assert fa["ticks"] == ["1e-06", "1e-05", "0.0001", "0.001"]
        assert fa["range"][0] < -6 and fa["range"][1] > -3  # log10 units
        # the run name is text: in the runs table, and in a Plotly hover label
        page.evaluate("document.querySelectorAll('details').forEach(d => { d.open = true; })")
        assert EVIL in page.inner_text("body")
        assert page.locator("td", has_text=EVIL).count() == 1
        assert "lr <study> & co" in page.inner_text("h1")
        hover = page.evaluate(
            """() => {
                const div = document.getElementById('fig-lr-epoch');
                const i = div.data.findIndex(t => (t.meta || [''])[0].includes('alert'));
                Plotly.Fx.hover(div, [{curveNumber: i, pointNumber: 0}]);
                return div.querySelector('.hoverlayer').textContent;
            }"""
        )
        assert EVIL in hover
        assert page.evaluate("document.querySelectorAll('script:not([type])').length") == 2
        assert_no_constant_series_on_a_default_axis(page, {"fig-mu": 0.99, "fig-hyper-lr": 1e-4})
        assert page.evaluate(
            "Array.from(document.querySelectorAll('#fig-hyper-lr .ytick text'))"
            ".map(t => t.textContent)"
        ) == ["0.0001"]
        assert "Hyper-LR (beta) is constant: 0.0001 at every epoch" in page.inner_text("body")
        assert_buttons_clear_the_modebar(page, {"fig-train-loss", "fig-lr-epoch", "fig-lr-step"})
        # the log-scale toggle works
        page.locator("#fig-lr-epoch .updatemenu-button").nth(1).click()
        page.wait_for_function(
            "document.getElementById('fig-lr-epoch').layout.yaxis.type === 'log'"
        )
        assert problems == []
    finally:
        page.close()


@pytest.mark.slow
def test_plain_plotlyjs_report_renders(browser, tmp_path):
    from adatune.report import write_html
    from adatune.report.synthetic import synthetic_details

    path = write_html(
        synthetic_details(6, 5, methods=("hd", "cosine")),
        tmp_path / "p.html",
        compress_plotlyjs=False,
    )
    page, problems = open_page(browser, path, width=720)  # a narrow window
    try:
        assert page.evaluate("document.body.dataset.rendered") == "ok"
        assert page.evaluate("document.getElementById('fig-lr-epoch').data.length") == 6
        # a hyper-LR that changes is drawn on a log axis from the start
        assert page.evaluate(
            "document.getElementById('fig-hyper-lr')._fullLayout.yaxis.type"
        ) == "log"
        assert_no_constant_series_on_a_default_axis(page, {"fig-mu": 0.99})
        assert page.evaluate("document.getElementById('fig-val-loss')._fullLayout.width") < 720
        assert_buttons_clear_the_modebar(page, {"fig-val-loss", "fig-test-loss", "fig-hyper-lr"})
        assert problems == []
    finally:
        page.close()
