"""`songmill report`: one self-contained HTML file whose plots show the corpus's numbers."""

from __future__ import annotations

import re

from songmill.data_schema.store import utcnow
from songmill.flows.cli import main


def _corpus(corpus):
    now = utcnow()
    corpus.write("tracks", [dict(track_id=f"t{i}", uri=f"/m/{i}.wav", duration_s=30.0 + i, created_at=now) for i in range(20)])
    corpus.write("qc", [dict(track_id=f"t{i}", stage_version=1, config_hash="c", run_id="r", created_at=now, loudness_lufs=-14.0 - i % 5,
                             qc_pass=i % 4 != 0, qc_reasons=[] if i % 4 else ["too_quiet"]) for i in range(20)])
    corpus.write("music", [dict(track_id=f"t{i}", stage_version=1, config_hash="m", run_id="r", created_at=now, bpm=80.0 + 5 * i,
                                keyscale=("A minor" if i < 15 else "C major")) for i in range(20)])
    corpus.write("errors", [dict(track_id=None, uri="/m/bad.wav", stage="ingest", error_type="DecodeError", message="x", created_at=now)])


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
