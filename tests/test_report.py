"""`rlaif report` and `rlaif compare` on a store written by two real rounds of the tiny model."""

from __future__ import annotations

import base64
import json
from html import escape
from html.parser import HTMLParser

import pytest
from typer.testing import CliRunner

from flows.cli import app
from store.db import Store

runner = CliRunner()
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class Images(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.images: list[dict[str, str]] = []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.images.append(dict(attrs))


@pytest.fixture()
def two_rounds(prefect_harness, round_config, tmp_path):
    from flows.round import rlaif_round

    config = round_config.model_copy(update={"eval": round_config.eval.model_copy(update={"probes": ["bundled:sycophancy"]})})
    summaries = [rlaif_round(config=config), rlaif_round(config=config)]
    config_file = tmp_path / "config.yaml"
    config_file.write_text(json.dumps(config.model_dump(mode="json")))
    return config, config_file, summaries


def test_the_html_report_has_every_plot_labelled_and_the_markdown_every_round(two_rounds, tmp_path):
    from evals.report import figures
    from evals.report_data import build_report

    config, _, summaries = two_rounds
    db = str(config.store.file)
    out = tmp_path / "report.html"
    done = runner.invoke(app, ["report", "2", "--db", db, "--out", str(out)])
    assert done.exit_code == 0 and f"wrote {out}" in done.output, done.output

    html = out.read_text()
    parser = Images()
    parser.feed(html)
    assert len(parser.images) == 5
    for img in parser.images:
        assert img["src"].startswith("data:image/png;base64,") and img["alt"]
        data = base64.b64decode(img["src"].split(",", 1)[1])
        assert data.startswith(PNG_SIGNATURE) and len(data) > 5000  # a real, non-empty picture
    assert "<script" not in html and "http" not in html.split("<body>")[1]  # self-contained
    assert escape(summaries[1].decision) in html and "Example pairs" in html and "probe: sycophancy" in html

    with Store(db, read_only=True) as store:
        report = build_report(store, 2)
    assert [p.round_index for p in report.history] == [1, 2] and report.steps and report.examples
    for _, fig in figures(report):  # what a person sees: every plot has a title and labelled axes
        for ax in fig.axes:
            assert ax.get_title() and ax.get_xlabel() and ax.get_ylabel(), ax

    md = runner.invoke(app, ["report", "2", "--db", db, "--format", "md"])
    assert md.exit_code == 0, md.output
    assert md.output.startswith("# rlaif round 2") and "| 1 | finished |" in md.output and "| 2 | finished |" in md.output
    assert "length-controlled win rate" in md.output and "## Example pairs" in md.output
    missing = runner.invoke(app, ["report", "9", "--db", db])
    assert missing.exit_code == 1 and "has no round 9" in missing.output
    bad = runner.invoke(app, ["report", "2", "--db", db, "--format", "pdf"])
    assert bad.exit_code == 2 and "use html or md" in bad.output


def test_a_round_that_trained_nothing_says_why_instead_of_drawing_empty_plots(prefect_harness, round_config, tmp_path):
    from flows.round import rlaif_round

    config = round_config.model_copy(update={"training": round_config.training.model_copy(update={"min_pairs": 10**6})})
    summary = rlaif_round(config=config)
    assert not summary.train.trained
    out = tmp_path / "report.html"
    done = runner.invoke(app, ["report", "1", "--db", str(config.store.file), "--out", str(out)])
    assert done.exit_code == 0, done.output
    html = out.read_text()
    parser = Images()
    parser.feed(html)
    assert len(parser.images) == 2  # lengths (this round's samples) and judge trust (both orders) have data
    assert html.count('class="nothing"') == 3
    assert "No round has been evaluated yet" in html and f"Round 1 trained nothing: {escape(summary.decision)}" in html


def test_compare_runs_the_held_out_comparison_for_any_two_stored_models(two_rounds):
    config, config_file, summaries = two_rounds
    base, first = summaries[0].policy_id, summaries[0].candidate_id
    done = runner.invoke(app, ["compare", first, base, "--config", str(config_file)], env={"COLUMNS": "200"})
    assert done.exit_code == 0, done.output
    assert "length-controlled win rate of A" in done.output and "probe: sycophancy" in done.output
    with Store(config.store, read_only=True) as store:
        compare_ids = {r.round_id for r in store.rounds()}
        assert compare_ids == {"round-0001", "round-0002"}  # a comparison is not a round
    missing = runner.invoke(app, ["compare", "nope", base, "--config", str(config_file)])
    assert missing.exit_code == 1 and "has no model nope" in missing.output
