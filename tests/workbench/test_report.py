"""The run page tells the truth: samples from the very best to the very worst, SAMSum context, demo data labelled."""

from __future__ import annotations

from flant5_lib.workbench import report

from tests.helpers.workbench import small_run


def test_spread_includes_both_ends_evenly():
    assert report.spread(100, 6) == [0, 20, 40, 59, 79, 99]
    assert report.spread(3, 6) == [0, 1, 2] and report.spread(0, 6) == [] and report.spread(5, 1) == [0]


def test_samples_show_the_worst_with_their_flags_and_the_spread_ends_at_the_last_rank(tmp_path):
    ids = small_run(tmp_path)
    page = (tmp_path / "index.html").read_text()
    spread, worst = page.split("The worst", 1)
    assert ids["best"] in spread and ids["worst"] in spread
    assert worst.index(ids["worst"]) < worst.index("dlg-038")  # worst first
    assert "repeats “bob”" in worst and "cut at max_new_tokens" in worst
    assert "from rank 1 (best) to rank 40 (worst)" in spread


def test_published_samsum_figures_only_beside_a_samsum_run():
    assert "Gliwa et al. 2019" in report.published_html("knkarthick/samsum")
    assert "Gliwa et al. 2019" in report.published_html("/data/samsum/corpus.7z")
    assert report.published_html("synthetic:1000") == "" and report.published_html("/data/dialogsum") == ""
    assert "not comparable" in report.published_html("knkarthick/samsum", 100)
    assert "not comparable" not in report.published_html("knkarthick/samsum", 819)
    assert "Synthetic demo data" in report.synthetic_banner("synthetic:1000") and report.synthetic_banner("x/samsum") == ""


def test_capped_share_is_flagged_only_above_one_percent():
    m = {"finetuned": {"capped_share": 0.004, "params": {"max_new_tokens": 64}}}
    assert report.quality_warnings_html(m) == ""
    m["finetuned"]["capped_share"] = 0.03
    assert "3.0% of summaries reached max_new_tokens=64" in report.quality_warnings_html(m)
