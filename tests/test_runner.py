"""The stage runner: anti-join, errors rows, reads/requires, reprocess, kill safety."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from conftest import rows, tone, write_audio
from songmill.annotate.ingest import ingest
from songmill.annotate.runner import run_stages
from stages_for_tests import DerivedStage, LevelConfig, LevelStage

TESTS = os.path.dirname(__file__)


@pytest.fixture
def small_corpus(tmp_path, corpus):
    for i in range(5):
        write_audio(tmp_path / "src" / f"t{i}.wav", tone(0.5, amp=0.1 * (i + 1), seed=i))
    write_audio(tmp_path / "src" / "broken_take.wav", tone(0.5, seed=99))
    ingest(corpus, [str(tmp_path / "src")])
    return corpus


def test_runs_only_what_is_missing_and_records_errors_and_runs(small_corpus):
    corpus = small_corpus
    (summary,) = run_stages(corpus, [LevelStage()], batch_size=2)
    assert (summary.n_input, summary.n_ok, summary.n_error) == (6, 5, 1)
    assert summary.audio_seconds == pytest.approx(2.5, abs=0.01)
    (err,) = rows(corpus, "SELECT stage, error_type, message, retryable FROM errors")
    assert err[:2] == ("test_level", "ValueError") and "broken_take" in err[2] and err[3] is False
    # louder tones give larger rms, computed from the real audio
    levels = [
        r[0]
        for r in rows(
            corpus, "SELECT q.rms FROM test_level q JOIN tracks USING (track_id) ORDER BY uri"
        )
    ]
    assert levels == sorted(levels) and levels[0] > 0

    (again,) = run_stages(corpus, [LevelStage()])
    assert again.n_input == 0  # done tracks and non-retryable failures are skipped
    assert rows(corpus, "SELECT count(*) FROM raw_test_level")[0][0] == 5
    runs = rows(
        corpus,
        "SELECT stage, n_input, n_ok, n_error FROM runs WHERE stage <> 'ingest' ORDER BY started_at",
    )
    assert runs == [("test_level", 6, 5, 1)]


def test_config_change_is_a_new_current_result_and_latest_wins(small_corpus):
    corpus = small_corpus
    run_stages(corpus, [LevelStage()])
    (s,) = run_stages(corpus, [LevelStage(LevelConfig(gain=2.0))])
    assert s.n_ok == 5
    assert rows(corpus, "SELECT DISTINCT gain FROM test_level") == [(2.0,)]
    assert rows(corpus, "SELECT count(*) FROM test_level")[0][0] == 5
    # batch_size / device are runtime settings: not part of the hash
    assert LevelStage(LevelConfig(batch_size=3)).config_hash == LevelStage().config_hash


def test_reads_and_requires_within_one_run_and_where(small_corpus):
    corpus = small_corpus
    summaries = run_stages(corpus, [LevelStage(), DerivedStage()], where="uri NOT LIKE '%t4%'")
    assert [(s.stage, s.n_ok) for s in summaries] == [("test_level", 4), ("test_derived", 4)]
    pairs = rows(
        corpus,
        "SELECT d.rms_db, 20*log10(l.rms) FROM test_derived d JOIN test_level l USING (track_id)",
    )
    assert pairs and all(a == pytest.approx(b) for a, b in pairs)
    # the derived stage alone waits for its requirement
    (derived,) = run_stages(corpus, [DerivedStage()])
    assert derived.n_input == 0


def test_unavailable_stage_writes_retryable_errors_and_is_retried(small_corpus, tmp_path):
    corpus = small_corpus
    weights = tmp_path / "weights.bin"
    config = LevelConfig(weights=str(weights), fail_on_substring="")
    (s,) = run_stages(corpus, [LevelStage(config)])
    assert s.unavailable and "weights.bin" in s.unavailable and s.n_error == 6
    run_stages(corpus, [LevelStage(config)])
    # retried, but the errors view does not repeat the same failure
    assert rows(corpus, "SELECT count(*) FROM errors WHERE retryable")[0][0] == 6
    weights.write_bytes(b"ok")
    (s,) = run_stages(corpus, [LevelStage(config)])
    assert s.n_ok == 6 and s.unavailable is None


def test_reprocess_redoes_selected_tracks_without_duplicating_view_rows(small_corpus):
    from songmill.annotate.runner import plan

    corpus = small_corpus
    run_stages(corpus, [LevelStage()])
    p = plan(corpus, [LevelStage()], where="uri LIKE '%t1%'", force=True)
    assert p.n_tracks == 1
    (s,) = run_stages(corpus, [LevelStage()], where="uri LIKE '%t1%'", force=True)
    assert s.n_ok == 1
    assert rows(corpus, "SELECT count(*) FROM raw_test_level")[0][0] == 6
    assert rows(corpus, "SELECT count(*) FROM test_level")[0][0] == 5


DRIVER = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, {tests!r})
    from stages_for_tests import LevelConfig, LevelStage
    from songmill.annotate.runner import run_stages
    from songmill.data_schema.store import Corpus
    run_stages(Corpus(sys.argv[1]), [LevelStage(LevelConfig(delay_s=float(sys.argv[2])))], batch_size=2)
    """
)


def _annotate_in_subprocess(corpus_root, delay):
    code = DRIVER.format(tests=TESTS)
    return subprocess.Popen([sys.executable, "-c", code, str(corpus_root), str(delay)])


def _stage_table(corpus, table="test_level"):
    return sorted(
        rows(corpus, f"SELECT track_id, rms, gain, stage_version, config_hash FROM {table}")
    )


def test_sigkill_mid_run_then_rerun_equals_uninterrupted_run(tmp_path):
    from songmill.data_schema.store import Corpus

    src = tmp_path / "src"
    for i in range(12):
        write_audio(src / f"t{i:02d}.wav", tone(0.3, amp=0.02 * (i + 1), seed=i))
    killed, clean = Corpus(tmp_path / "killed"), Corpus(tmp_path / "clean")
    for c in (killed, clean):
        ingest(c, [str(src)])

    proc = _annotate_in_subprocess(killed.root, 0.15)
    deadline = time.time() + 60
    while len(killed.part_files("test_level")) < 2 and time.time() < deadline:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = rows(killed, "SELECT count(*) FROM test_level")[0][0]
    assert 0 < done_before < 12, "the kill must land mid-run"
    leftovers = [p for p in os.listdir(killed.table_dir("test_level")) if not p.startswith("part-")]
    assert all(p.startswith(".tmp-") for p in leftovers)  # never a partial part file

    assert _annotate_in_subprocess(killed.root, 0).wait() == 0
    assert _annotate_in_subprocess(clean.root, 0).wait() == 0
    assert _stage_table(killed) == _stage_table(clean)
    assert rows(killed, "SELECT count(*) FROM raw_test_level")[0][0] == 12  # no duplicate rows
