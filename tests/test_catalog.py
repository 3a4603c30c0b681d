"""`<corpus>/songmill.duckdb`: plain DuckDB sees what songmill sees, kept current by writes and
compaction, and still right after the corpus folder moves."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import duckdb
from songmill.data_schema import manifest_cache
from songmill.data_schema.store import Corpus, utcnow

VIEWS = ["tracks", "qc", "music", "errors", "manifest", "near_duplicates", "raw_qc", "stale"]
CHECKS = [
    "SELECT track_id, uris FROM tracks ORDER BY 1",
    "SELECT track_id, duration_s, qc_pass FROM qc ORDER BY 1",
    "SELECT track_id, qc_pass, bpm, keyscale FROM manifest ORDER BY 1",
    "SELECT count(*) FROM raw_qc",
]


def _write(corpus, n, offset=0, version=1):
    corpus.write(
        "tracks",
        [
            dict(track_id=f"t{i}", uri=f"/m/{i}.wav", duration_s=float(i), created_at=utcnow())
            for i in range(offset, offset + n)
        ],
    )
    corpus.write(
        "qc",
        [
            dict(
                track_id=f"t{i}",
                stage_version=version,
                config_hash="c",
                run_id="r",
                created_at=utcnow(),
                duration_s=float(i + version),
                qc_pass=i % 2 == 0,
                qc_reasons=[],
            )
            for i in range(offset, offset + n)
        ],
    )


def _plain(path, sql, cwd):
    """A fresh interpreter with no songmill import, from another working directory."""
    code = f"import duckdb, json; con = duckdb.connect({path!r}, read_only=True); print(json.dumps(con.execute({sql!r}).fetchall(), default=str))"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, check=True
    )
    return out.stdout


def _songmill(corpus, sql):
    import json

    con = corpus.connect()
    try:
        return json.dumps(con.execute(sql).fetchall(), default=str) + "\n"
    finally:
        con.close()


def test_plain_duckdb_sees_songmill_rows_after_writes_compaction_and_a_move(tmp_path, monkeypatch):
    monkeypatch.setattr(
        manifest_cache, "MANIFEST_MAX_DELTA", 1000.0
    )  # tiny parts: the snapshot + delta path
    corpus = Corpus(tmp_path / "corpus")
    _write(corpus, 5)
    catalog = corpus.catalog_path
    assert os.path.exists(catalog)
    con = duckdb.connect(catalog, read_only=True)
    names = {
        r[0]
        for r in con.execute("SELECT view_name FROM duckdb_views() WHERE NOT internal").fetchall()
    }
    con.close()
    assert set(VIEWS) <= names
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for sql in CHECKS:
        assert _plain(catalog, sql, elsewhere) == _songmill(corpus, sql)

    _write(
        corpus, 3, offset=2, version=2
    )  # newer rows: no rebuild needed, the parts glob sees them
    corpus.compact("tracks", manifest=False)
    corpus.compact("qc")  # also writes the manifest snapshot the catalog's manifest reads
    assert corpus.manifest_snapshot() is not None
    _write(corpus, 2, offset=6)
    for sql in CHECKS:
        assert _plain(catalog, sql, elsewhere) == _songmill(corpus, sql)

    moved = tmp_path / "mounted" / "somewhere"
    moved.parent.mkdir()
    shutil.move(str(tmp_path / "corpus"), moved)
    for sql in CHECKS:  # no songmill call in between: the catalog resolves against its folder
        assert _plain(str(moved / "songmill.duckdb"), sql, elsewhere) == _songmill(
            Corpus(moved), sql
        )
    assert Corpus(moved).manifest_snapshot() is not None  # still the one to read after the move


def test_catalog_is_rebuilt_when_it_is_missing_or_stale(tmp_path):
    corpus = Corpus(tmp_path / "c")
    _write(corpus, 2)
    os.remove(corpus.catalog_path)
    corpus.connect().close()  # any read puts it back
    assert _plain(corpus.catalog_path, "SELECT count(*) FROM tracks", tmp_path) == "[[2]]\n"


def test_a_query_opens_the_catalog_as_it_is_and_imports_no_pandas(tmp_path):
    corpus = Corpus(tmp_path / "c")
    _write(corpus, 3)
    # Built by a plain process, as the query below is: this pytest process may have the test
    # stages' tables registered (tests/stages_for_tests.py), which are views of their own.
    build = "import sys; from songmill.data_schema.store import Corpus; Corpus(sys.argv[1]).connect().close()"
    subprocess.run([sys.executable, "-c", build, corpus.path], check=True)
    built = os.stat(corpus.catalog_path).st_mtime_ns
    code = (
        "import sys; from songmill.flows.cli import main; "
        "rc = main(['query', 'SELECT count(*) AS n FROM manifest', '--corpus', sys.argv[1], '--format', 'csv']); "
        "print('pandas' in sys.modules); sys.exit(rc)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, corpus.path], capture_output=True, text=True, check=True
    )
    assert out.stdout.split() == ["n", "3", "False"]
    assert os.stat(corpus.catalog_path).st_mtime_ns == built  # nothing changed: no rebuild
    corpus.write(
        "music",
        [
            dict(
                track_id="t0",
                stage_version=1,
                config_hash="m",
                run_id="r",
                created_at=utcnow(),
                bpm=99.0,
            )
        ],
    )
    assert os.stat(corpus.catalog_path).st_mtime_ns != built  # a table's first part: rebuilt
    assert (
        _plain(corpus.catalog_path, "SELECT bpm FROM manifest WHERE track_id = 't0'", tmp_path)
        == "[[99.0]]\n"
    )
