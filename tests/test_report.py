"""`songmill report`: one self-contained HTML file whose plots show the corpus's numbers."""

from __future__ import annotations

import re

from songmill.data_schema.store import utcnow
from songmill.flows.cli import main


def _corpus(corpus):
    now = utcnow()
    corpus.write(
        "tracks",
        [
            dict(track_id=f"t{i}", uri=f"/m/{i}.wav", duration_s=30.0 + i, created_at=now)
            for i in range(20)
        ],
    )
    corpus.write(
        "qc",
        [
            dict(
                track_id=f"t{i}",
                stage_version=1,
                config_hash="c",
                run_id="r",
                created_at=now,
                loudness_lufs=-14.0 - i % 5,
                qc_pass=i % 4 != 0,
                qc_reasons=[] if i % 4 else ["too_quiet"],
            )
            for i in range(20)
        ],
    )
    corpus.write(
        "music",
        [
            dict(
                track_id=f"t{i}",
                stage_version=1,
                config_hash="m",
                run_id="r",
                created_at=now,
                bpm=80.0 + 5 * i,
                keyscale=("A minor" if i < 15 else "C major"),
            )
            for i in range(20)
        ],
    )
    corpus.write(
        "errors",
        [
            dict(
                track_id=None,
                uri="/m/bad.wav",
                stage="ingest",
                error_type="DecodeError",
                message="x",
                created_at=now,
            )
        ],
    )


def test_report_is_one_offline_file_with_the_corpus_numbers(corpus, tmp_path, capsys):
    _corpus(corpus)
    out = tmp_path / "r" / "report.html"
    assert main(["report", "--out", str(out), "--corpus", corpus.root]) == 0
    html = out.read_text()
    # self-contained: no scripts, stylesheets, images or fonts fetched from anywhere
    assert not re.search(r"<script|<link|<img|@import|url\(", html)
    assert set(re.findall(r"https?://[^\"' ]+", html)) <= {"http://www.w3.org/2000/svg"}
    assert html.count("<svg") >= 6
    assert "20 tracks" in html
    keys = re.search(r'aria-label="Keys".*?</svg>', html, re.S).group(0)
    assert "A minor: 15" in keys and "C major: 5" in keys  # bar tooltips carry the counts
    assert "too_quiet: 5" in html and "ingest: DecodeError: 1" in html
    assert "No data for languages" in html  # no transcripts yet: said, not drawn empty
    assert "Stage coverage" in html and "<polyline" in html


def test_report_has_a_summary_labelled_axes_whole_counts_and_a_coverage_plot(corpus, tmp_path):
    from songmill.flows.report import nice_ticks

    _corpus(corpus)  # every row written at the same instant: one step per table
    out = tmp_path / "report.html"
    assert main(["report", "--out", str(out), "--corpus", corpus.root]) == 0
    html = out.read_text()
    summary = re.search(r'<div class="summary">.*?</table>', html, re.S).group(0)
    assert ">20<" in summary and "75.0 % of 20" in summary  # tracks, QC pass rate
    assert "1 (1 files): ingest 1" in summary  # errors, by stage
    assert re.search(r"<td>qc</td><td class=\"n\">20</td><td class=\"n\">100.0 %</td>", summary)
    assert re.search(r"<td>captions</td><td class=\"n\">0</td><td class=\"n\">0.0 %</td>", summary)
    # axes are labelled, count ticks are whole numbers, labels are never cut
    durations = re.search(r'aria-label="Durations".*?</svg>', html, re.S).group(0)
    assert "duration (s)" in durations and ">tracks<" in durations
    ticks = re.findall(r'text-anchor="end" font-size="11" fill="#555">([^<]+)<', durations)
    assert ticks and all(re.fullmatch(r"[\d,]+", t) for t in ticks)
    assert nice_ticks(2.1, integer=True) == [0, 1, 2, 3] and nice_ticks(0.9, integer=True) == [0, 1]
    assert ">ingest: DecodeError<" in html
    # the coverage plot draws a rise even when a table was written in one run, legend under it
    coverage = re.search(r'aria-label="Stage coverage".*?</p>', html, re.S).group(0)
    assert coverage.count("<polyline") == 3 and all(
        len(p.split()) >= 4 for p in re.findall(r'points="([^"]+)"', coverage)
    )
    assert 'class="legend"' in coverage and "qc (20)" in coverage
    # no music row records bpm_agreement yet (the column exists, all null): the tempo confidence instead
    assert "BPM confidence" in html


def test_report_says_every_track_passed_qc_instead_of_no_data(corpus, tmp_path):
    now = utcnow()
    corpus.write(
        "tracks",
        [
            dict(track_id=f"t{i}", uri=f"/m/{i}.wav", duration_s=30.0, created_at=now)
            for i in range(3)
        ],
    )
    corpus.write(
        "qc",
        [
            dict(
                track_id=f"t{i}",
                stage_version=1,
                config_hash="c",
                run_id="r",
                created_at=now,
                loudness_lufs=-14.0,
                qc_pass=True,
                qc_reasons=[],
            )
            for i in range(3)
        ],
    )
    out = tmp_path / "report.html"
    assert main(["report", "--out", str(out), "--corpus", corpus.root]) == 0
    html = out.read_text()
    assert (
        "Every one of the 3 tracks with a QC result passed" in html
        and "No data for qc reasons" not in html
    )


def test_report_plots_bpm_agreement_once_music_rows_record_it(corpus, tmp_path):
    now = utcnow()
    corpus.write(
        "tracks",
        [
            dict(track_id=f"t{i}", uri=f"/m/{i}.wav", duration_s=30.0, created_at=now)
            for i in range(4)
        ],
    )
    corpus.write(
        "music",
        [
            dict(
                track_id=f"t{i}",
                stage_version=7,
                config_hash="m",
                run_id="r",
                created_at=now,
                bpm=120.0,
                bpm_confidence=0.9,
                bpm_agreement=[1.0, 1.0, 0.5, 0.25][i],
            )
            for i in range(4)
        ],
    )
    out = tmp_path / "report.html"
    assert main(["report", "--out", str(out), "--corpus", corpus.root]) == 0
    html = out.read_text()
    assert 'aria-label="BPM agreement"' in html and 'aria-label="BPM confidence"' not in html
