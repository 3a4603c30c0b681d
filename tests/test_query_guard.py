"""`songmill query` stays read-only: one case per way a query could reach a file or change state,
and list / struct columns render in every output format."""

from __future__ import annotations

import csv
import io
import json
import os

import pytest
from songmill.data_schema.query import QueryFailed, QueryRefused, run_query
from songmill.data_schema.store import utcnow
from songmill.flows.cli import main
from songmill.flows.display import render_csv, render_json


def _seed(corpus):
    corpus.write(
        "tracks", [dict(track_id="a", uri="/x/a.wav", duration_s=1.0, created_at=utcnow())]
    )
    corpus.write(
        "qc",
        [
            dict(
                track_id="a",
                stage_version=1,
                config_hash="c",
                run_id="r",
                created_at=utcnow(),
                duration_s=1.0,
                qc_pass=False,
                qc_reasons=["silence", "clipping"],
            )
        ],
    )


@pytest.fixture
def seeded(corpus, tmp_path):
    _seed(corpus)
    return corpus


def _refused(corpus, sql, match="read-only|reads only|parse"):
    with pytest.raises(QueryRefused, match=match):
        run_query(corpus, sql)


def test_plain_select_and_explain_run(seeded):
    assert run_query(seeded, "SELECT track_id FROM tracks").to_pylist() == [{"track_id": "a"}]
    assert run_query(seeded, "FROM qc SELECT qc_reasons").to_pylist() == [
        {"qc_reasons": ["silence", "clipping"]}
    ]
    assert run_query(seeded, "EXPLAIN SELECT * FROM manifest").num_rows >= 1


def test_explain_analyze_copy_does_not_write(seeded, tmp_path):
    target = tmp_path / "x.csv"
    _refused(seeded, f"EXPLAIN ANALYZE COPY (SELECT 1) TO '{target}'")
    _refused(seeded, "EXPLAIN ANALYZE SELECT 1")  # ANALYZE runs its statement: refused as a whole
    _refused(seeded, f"EXPLAIN COPY (SELECT 1) TO '{target}'")
    assert not target.exists()


def test_several_statements_are_refused(seeded):
    _refused(seeded, "SELECT 1; SELECT 2")
    _refused(seeded, "SELECT 1; DROP VIEW tracks")
    assert run_query(seeded, "SELECT count(*) AS n FROM tracks").to_pylist() == [{"n": 1}]


def test_copy_to_a_corpus_part_is_refused(seeded):
    target = seeded.table_dir("tracks") + "/part-evil.parquet"
    _refused(seeded, f"COPY (SELECT * FROM tracks) TO '{target}' (FORMAT parquet)")
    _refused(seeded, f"COPY tracks TO '{target}'")
    assert not os.path.exists(target) and len(seeded.part_files("tracks")) == 1


def test_file_functions_cannot_reach_outside_the_corpus(seeded, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("password")
    for sql in (
        f"SELECT * FROM read_text('{secret}')",
        f"SELECT * FROM read_csv('{secret}')",
        f"SELECT * FROM read_parquet('{tmp_path}/*.parquet')",
        "SELECT * FROM glob('/etc/*')",
    ):
        _refused(seeded, sql)


@pytest.mark.parametrize(
    "sql",
    [
        "ATTACH '/tmp/x.duckdb' AS x",
        "INSTALL httpfs",
        "LOAD httpfs",
        "SET enable_external_access = true",
        "RESET lock_configuration",
        "PRAGMA enable_profiling",
        "CALL pragma_version()",
        "CREATE TABLE t AS SELECT 1",
        "CREATE MACRO evil() AS 1",
        "INSERT INTO tracks VALUES (1)",
        "EXPORT DATABASE '/tmp/songmill-export'",
        "CHECKPOINT",
        "DETACH memory",
    ],
)
def test_statements_other_than_select_are_refused(seeded, sql):
    _refused(seeded, sql)


def test_configuration_cannot_be_changed_from_inside_a_select(seeded):
    with pytest.raises(Exception, match="(?i)lock|config|permission|refused|not allowed|read-only"):
        run_query(
            seeded,
            "SELECT current_setting('enable_external_access') AS v FROM (SELECT set_config('enable_external_access', 'true'))",
        )


def test_list_and_struct_columns_render_in_every_format(seeded, capsys):
    table = run_query(seeded, "SELECT track_id, qc_reasons, {'a': 1, 'b': [2, 3]} AS s FROM qc")
    rows = list(csv.reader(io.StringIO(render_csv(table))))
    assert rows[0] == ["track_id", "qc_reasons", "s"]
    assert json.loads(rows[1][1]) == ["silence", "clipping"] and json.loads(rows[1][2]) == {
        "a": 1,
        "b": [2, 3],
    }
    assert json.loads(render_json(table)) == [
        {"track_id": "a", "qc_reasons": ["silence", "clipping"], "s": {"a": 1, "b": [2, 3]}}
    ]
    root = seeded.root
    for fmt in ("csv", "json", "table"):
        assert (
            main(
                [
                    "query",
                    "SELECT uris, {'n': 1} AS s FROM tracks",
                    "--format",
                    fmt,
                    "--corpus",
                    root,
                ]
            )
            == 0
        )
        out = capsys.readouterr().out
        assert "/x/a.wav" in out and "n" in out.split("\n", 1)[1] and ": 1" in out, (
            fmt,
            out,
        )  # list and struct


def test_cli_errors_are_one_line_without_traceback(seeded, capsys, tmp_path):
    root = seeded.root
    cases = [
        ["query", "SELECT no_such_column FROM tracks"],
        ["query", "COPY tracks TO 'x.csv'"],
        ["query", "SELEC 1"],
        ["manifest", "--out", str(tmp_path / "m.parquet"), "--where", "no_such_column > 1"],
        ["manifest", "--out", str(tmp_path / "m.parquet"), "--split", "val=2"],
        [
            "manifest",
            "--out",
            str(tmp_path / "m.parquet"),
            "--reproduce",
            str(tmp_path / "missing.json"),
        ],
    ]
    for argv in cases:
        code = main([*argv, "--corpus", root])
        err = capsys.readouterr().err
        assert code != 0, argv
        assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, (
            argv,
            err,
        )
    assert main(["query", "SELECT 1", "--corpus", str(tmp_path / "nowhere")]) != 0
    assert capsys.readouterr().err.count("\n") == 1
    with pytest.raises(QueryFailed, match="no_such_column"):  # --debug: the exception itself
        main(["query", "SELECT no_such_column FROM tracks", "--corpus", root, "--debug"])
