"""A new user's first hour: nothing of theirs is deleted, suggested commands run as typed, the
query output is readable, the demo's settings live in its corpus, errors keep the useful part."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pyarrow as pa
import pytest
from conftest import tone, write_audio
from songmill.flows.cli import main

VENV_BIN = os.path.dirname(sys.executable)


# -- 1. the demo never deletes what it did not make -----------------------------------------------
@pytest.mark.parametrize("where", ["corpus", "out"])
def test_demo_refuses_a_folder_holding_user_files(tmp_path, capsys, where):
    user = tmp_path / "mine"
    user.mkdir()
    (user / "important.txt").write_text("do not lose me")
    (user / "photos").mkdir()
    (user / "photos" / "a.jpg").write_bytes(b"\xff\xd8")
    args = ["demo", "--no-train", "--tracks", "2", "--engine", "local"]
    args += (
        ["--corpus", str(user), "--out", str(tmp_path / "demo")]
        if where == "corpus"
        else ["--out", str(user)]
    )
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "did not make" in err[0] and str(user) in err[0]
    assert (user / "important.txt").read_text() == "do not lose me"
    assert (user / "photos" / "a.jpg").exists()
    assert sorted(os.listdir(user)) == ["important.txt", "photos"]  # nothing written either
    assert not (tmp_path / "demo" / "audio").exists()


def test_demo_folder_with_its_marker_is_cleared_but_a_user_file_there_is_refused(tmp_path):
    from songmill.flows.demo import (
        DEMO_MARKER,
        DemoFolderError,
        _corpus_entries,
        _reset_demo_folder,
        claim_demo_folder,
    )

    root = tmp_path / "corpus"
    claim_demo_folder(str(root), _corpus_entries(), "corpus")  # a new folder is fine
    _reset_demo_folder(str(root), _corpus_entries())
    assert (root / DEMO_MARKER).exists()
    (root / "tracks").mkdir()
    (root / "tracks" / "part-1.parquet").write_bytes(b"x")
    (root / "songmill.json").write_text("{}")
    claim_demo_folder(str(root), _corpus_entries(), "corpus")  # an earlier demo's corpus: ok
    _reset_demo_folder(str(root), _corpus_entries())
    assert sorted(os.listdir(root)) == [DEMO_MARKER]
    (root / "important.txt").write_text("mine")
    with pytest.raises(DemoFolderError, match="important.txt"):
        claim_demo_folder(str(root), _corpus_entries(), "corpus")
    # a real corpus that no demo made (no marker) is never the demo's
    other = tmp_path / "real"
    (other / "tracks").mkdir(parents=True)
    (other / "songmill.json").write_text("{}")
    with pytest.raises(DemoFolderError, match="did not make"):
        claim_demo_folder(str(other), _corpus_entries(), "corpus")


def test_demo_refuses_a_user_file_inside_a_table_folder_of_its_corpus(tmp_path):
    """The demo clears its corpus's table folders whole, so a file of the user's anywhere inside
    one (here corpus/tracks/notes.txt) makes it refuse, and the file stays."""
    from songmill.flows.demo import (
        DEMO_MARKER,
        DemoFolderError,
        _corpus_entries,
        _is_songmill_corpus_file,
        _reset_demo_folder,
        claim_demo_folder,
    )

    root = tmp_path / "corpus"
    _reset_demo_folder(str(root), _corpus_entries())
    own = [
        "tracks/part-20260101T000000-abc.parquet",
        "tracks/current-x.parquet",
        "tracks/.compact.lock",
        "features/ab/abcdef.safetensors",
        "_manifest/manifest-x.parquet",
        "indexes/lyrics-lsh-k.pkl",
        "stems/ab/abc/htdemucs-12345678-vocals.flac",
        "_prefect/prefect.db",
    ]
    for rel in own:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"x")
    claim_demo_folder(
        str(root), _corpus_entries(), "corpus", _is_songmill_corpus_file
    )  # all songmill's
    for rel in ("tracks/notes.txt", "features/ab/mine.wav", "music/old/part-1.parquet"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text("mine")
        with pytest.raises(DemoFolderError, match=rel.replace(".", r"\.")):
            claim_demo_folder(str(root), _corpus_entries(), "corpus", _is_songmill_corpus_file)
        (root / rel).unlink()
    # through the command: one line, exit 2, the file is still there
    (root / "tracks" / "notes.txt").write_text("mine")
    assert main(["demo", "--out", str(tmp_path / "demo"), "--corpus", str(root), "--no-train"]) == 2
    assert (root / "tracks" / "notes.txt").read_text() == "mine" and (root / DEMO_MARKER).exists()


def test_demo_help_names_its_own_default_corpus(capsys):
    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "OUT/corpus" in text and "$SONGMILL_CORPUS or ./corpus" not in text


# -- 4. the demo's settings in its corpus -----------------------------------------------------------
def test_demo_settings_round_trip_through_the_corpus_toml(tmp_path):
    from songmill.annotate.settings import load_settings, write_settings
    from songmill.flows.demo import demo_settings
    from songmill.flows.demo_text import OFFLINE_SETTINGS

    settings = demo_settings(
        {"transcribe": {"beam_size": 3}, "qc": {"min_duration_s": 1.5, "flags": ["a", "b"]}}
    )
    assert settings["transcribe"] == {
        **OFFLINE_SETTINGS["transcribe"],
        "beam_size": 3,
    }  # the user's wins
    assert settings["caption"] == OFFLINE_SETTINGS["caption"]
    write_settings(str(tmp_path / "songmill.toml"), settings, header="written by a test")
    assert load_settings(None, str(tmp_path)) == settings


# -- 2. hints that run as typed, and a DuckDB shell that opens the catalog ---------------------------
def test_hints_name_the_venv_scripts(tmp_path, monkeypatch):
    from songmill.flows.demo import next_steps

    monkeypatch.chdir(tmp_path)
    lines = "\n".join(next_steps(str(tmp_path / "c")))
    songmill = os.path.join(VENV_BIN, "songmill")
    assert f"{songmill} query" in lines and f"{songmill} status" in lines
    assert f"{os.path.join(VENV_BIN, 'prefect')} server start" in lines
    assert " songmill query" not in lines.replace(f"{songmill} query", "")


def test_errors_from_below_flows_print_songmill_as_it_runs(tmp_path, monkeypatch, capsys):
    """train/ says bare `songmill manifest --out FILE` (it cannot import flows/hints.py); the CLI
    prints it spelled as it runs from a fresh shell."""
    import pyarrow.parquet as pq
    from songmill.flows.hints import venv_command

    monkeypatch.chdir(tmp_path)  # before asking: the spelling is relative to where the user stands
    songmill = venv_command()
    if songmill == "songmill":
        pytest.skip("songmill is not run from a virtualenv here: the bare name is right")
    pq.write_table(pa.table({"track_id": ["a"]}), tmp_path / "narrow.parquet")
    assert (
        main(
            [
                "export",
                "acestep15",
                "--manifest",
                str(tmp_path / "narrow.parquet"),
                "--out",
                str(tmp_path / "ds"),
            ]
        )
        != 0
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert (
        len(err) == 1
        and f"`{songmill} manifest --out FILE`" in err[0]
        and "`songmill " not in err[0]
    )


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("first_hour") / "corpus"
    audio = root.parent / "audio"
    audio.mkdir()
    for i in range(3):
        write_audio(str(audio / f"t{i}.wav"), tone(3.0, freq=220.0 * (i + 1), seed=i))
    assert main(["ingest", str(audio), "--corpus", str(root), "--engine", "local", "--quiet"]) == 0
    assert (
        main(
            [
                "annotate",
                "--corpus",
                str(root),
                "--engine",
                "local",
                "--quiet",
                "--stages",
                "qc,music",
            ]
        )
        == 0
    )
    return str(root)


@pytest.mark.skipif(
    not os.path.exists(os.path.join(VENV_BIN, "duckdb")),
    reason="duckdb-cli not installed (setup.sh installs it)",
)
def test_the_duckdb_shell_opens_every_view_of_the_catalog(small_corpus, tmp_path):
    moved = tmp_path / "moved"
    shutil.copytree(small_corpus, moved)  # and the catalog stays right when the folder moves
    duckdb_cli = os.path.join(VENV_BIN, "duckdb")
    views = subprocess.run(
        [
            duckdb_cli,
            "-readonly",
            "-csv",
            "-noheader",
            str(moved / "songmill.duckdb"),
            "-c",
            "SELECT view_name FROM duckdb_views() WHERE NOT internal ORDER BY 1",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert views.returncode == 0, views.stderr
    names = views.stdout.split()
    assert {"tracks", "music", "qc", "errors", "manifest"} <= set(names)
    sql = (
        "; ".join(f'SELECT count(*) FROM "{n}"' for n in names)
        + "; SELECT count(*) FROM manifest WHERE qc_pass IS NOT NULL"
    )
    out = subprocess.run(
        [duckdb_cli, "-readonly", "-csv", "-noheader", str(moved / "songmill.duckdb"), "-c", sql],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[-1] == "3"


# -- 3. query output a person reads ------------------------------------------------------------------
def test_wide_results_are_shown_one_record_per_block(capsys):
    from songmill.flows.display import print_table

    table = pa.table(
        {f"column_{i}": [i * 1.5, None] for i in range(40)}
        | {"beats": [[0.5 * k for k in range(300)], []]}
    )
    print_table(table, width=100)
    out = capsys.readouterr().out
    assert "-[ RECORD 1 ]" in out and "-[ RECORD 2 ]" in out
    assert "column_39 | 58.5" in out
    assert (
        "(300 items)" in out and "149.5" not in out
    )  # a long list shows its first items and its length
    assert max(len(line) for line in out.splitlines()) <= 100
    print_table(pa.table({"a": [1], "b": ["x"]}), width=100)  # a narrow one stays a grid
    assert "RECORD" not in capsys.readouterr().out


def _songmill(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "songmill.flows.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        **kwargs,
    )


def test_query_into_a_closed_pipe_exits_quietly(small_corpus):
    script = f"{sys.executable} -m songmill.flows.cli query 'SELECT * FROM range(20000)' --corpus {small_corpus} | head -2; echo rc=${{PIPESTATUS[0]}}"
    done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=120)
    assert "rc=0" in done.stdout and done.stderr == ""
    # a small result still sits in stdout's buffer when the reader has already gone
    script = f"{sys.executable} -m songmill.flows.cli query 'SELECT 1 AS one' --corpus {small_corpus} | true; echo rc=${{PIPESTATUS[0]}}"
    done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=120)
    assert "rc=0" in done.stdout and done.stderr == ""


def test_errors_keep_duckdbs_hints_and_name_the_way_out(small_corpus, tmp_path):
    done = _songmill("query", "SELECT * FROM musi", "--corpus", small_corpus)
    assert (
        done.returncode == 2
        and 'Did you mean "music"' in done.stderr
        and len(done.stderr.splitlines()) == 1
    )
    done = _songmill("query", "SELECT bmp FROM music", "--corpus", small_corpus)
    assert "Candidate bindings" in done.stderr and '"bpm"' in done.stderr
    done = _songmill("annotate", "--stages", "musik", "--corpus", small_corpus, "--engine", "local")
    assert done.returncode == 2 and "did you mean 'music'" in done.stderr
    done = _songmill(
        "status", cwd=tmp_path, env={k: v for k, v in os.environ.items() if k != "SONGMILL_CORPUS"}
    )
    assert done.returncode == 2 and "--corpus" in done.stderr and "$SONGMILL_CORPUS" in done.stderr


# -- 1. other removals: an import replaces only its own earlier output ----------------------------
def test_import_acestep_never_replaces_a_folder_holding_user_files(tmp_path, capsys):
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "fixtures", "acestep"))
    from release_layout import release_dir

    release = release_dir(tmp_path / "release", parts=("dit",))
    out = tmp_path / "out"
    assert main(["model", "import-acestep", str(release), "--out", str(out)]) == 0
    assert (
        main(["model", "import-acestep", str(release), "--out", str(out)]) == 0
    )  # its own output: replaced
    (out / "dit" / "my_notes.txt").write_text("mine")
    capsys.readouterr()
    assert main(["model", "import-acestep", str(release), "--out", str(out)]) != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "my_notes.txt" in err
    assert (out / "dit" / "my_notes.txt").read_text() == "mine"


# -- 8. setup says what it installs and how long that usually takes -------------------------------
@pytest.mark.skipif(
    subprocess.run("ldconfig -p | grep -q libchromaprint", shell=True).returncode != 0,
    reason="setup.sh would apt-get libchromaprint here",
)
def test_setup_announces_each_step_with_its_usual_time(tmp_path):
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    shutil.copy(os.path.join(repo, "setup.sh"), tmp_path / "setup.sh")
    (tmp_path / ".venv" / "bin").mkdir(parents=True)
    log = tmp_path / "pip.log"
    for name in (
        "python",
        "pip",
        "songmill",
    ):  # a virtualenv whose scripts only record what they were asked
        script = tmp_path / ".venv" / "bin" / name
        script.write_text(f'#!/bin/sh\necho "$@" >> {log}\n')
        script.chmod(0o755)
    done = subprocess.run(
        ["bash", str(tmp_path / "setup.sh")], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    installs = log.read_text().splitlines()
    announced = [line for line in lines if line.startswith("setup: ") and "(usually " in line]
    assert len(announced) == len(installs) >= 3  # every install announced, with its usual time
    assert any("torch" in line for line in announced)
    assert sum("done in" in line for line in lines) == len(installs)


# -- 6. a one-off command on a busy machine neither fails nor waits for a server ------------------
def _spin(seconds: float) -> None:
    import time

    end = time.time() + seconds
    while time.time() < end:
        pass


def test_one_off_ingest_on_a_busy_machine_runs_in_process(tmp_path):
    import multiprocessing
    import time

    from conftest import tone, write_audio

    src = tmp_path / "src"
    src.mkdir()
    for i in range(3):
        write_audio(str(src / f"a{i}.wav"), tone(2.0, freq=300.0 + 50 * i, seed=i))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env["PREFECT_HOME"] = str(tmp_path / "prefect-home")  # no profile: no server configured
    busy = [
        multiprocessing.Process(target=_spin, args=(90.0,), daemon=True)
        for _ in range(os.cpu_count() or 1)
    ]
    for p in busy:
        p.start()
    try:
        started = time.perf_counter()
        done = _songmill("ingest", str(src), "--corpus", str(tmp_path / "corpus"), env=env)
        wall = time.perf_counter() - started
    finally:
        for p in busy:
            p.terminate()
            p.join()
    assert done.returncode == 0, done.stderr
    assert "3 new tracks" in done.stdout
    assert (
        "no Prefect server is configured" in done.stderr
        and "PREFECT_API_URL=http://127.0.0.1:4200/api" in done.stderr
    )
    assert not (
        tmp_path / "prefect-home" / "prefect.db"
    ).exists()  # no temporary Prefect server was started
    assert wall < 60, wall


# -- 5. offline training: every missing model at once, and the settings that run offline -----------
def test_train_dit_names_every_missing_feature_model_at_once(tmp_path, capsys):
    import time

    from songmill.model.config import preset
    from songmill.model.dcae import MusicDCAE
    from songmill.model.weights import save_module
    from songmill.train.prepare import synthetic_manifest

    manifest = synthetic_manifest(str(tmp_path / "audio"), n_tracks=1, duration_s=1.0)
    dcae_cfg = preset("tiny").dcae
    save_module(MusicDCAE(dcae_cfg), dcae_cfg.to_dict(), tmp_path / "dcae", "dcae")
    base = [
        "train",
        "dit",
        "--manifest",
        manifest,
        "--run-dir",
        str(tmp_path / "run"),
        "--max-steps",
        "1",
        "--dcae-checkpoint",
        str(tmp_path / "dcae"),
        "--corpus",
        str(tmp_path / "corpus"),
        "--set",
        "features.text_encoder=/nowhere/umt5",
        "--set",
        "features.mert=/nowhere/mert",
        "--set",
        "features.mhubert=/nowhere/mhubert",
        "--set",
        "features.speaker=/nowhere/wavlm",
    ]
    started = time.perf_counter()
    assert main(base) != 0
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error")]
    assert len(err) == 1 and time.perf_counter() - started < 30
    for name in ("umt5", "mert", "mhubert", "wavlm"):
        assert f"/nowhere/{name}" in err[0]
    offline = [
        "--set",
        "features.text_encoder=tiny-random",
        "--set",
        "features.mert=none",
        "--set",
        "features.mhubert=none",
        "--set",
        "features.speaker=none",
    ]
    assert " ".join(offline) in err[0]
    assert not (tmp_path / "corpus" / "features").exists()  # refused before any work
    # (that these offline settings train: tests/test_train_cli.py)


def test_train_dit_refuses_textless_features_before_computing_them(tmp_path, capsys):
    from songmill.model.config import preset
    from songmill.model.dcae import MusicDCAE
    from songmill.model.weights import save_module
    from songmill.train.prepare import synthetic_manifest

    manifest = synthetic_manifest(str(tmp_path / "audio"), n_tracks=1, duration_s=1.0)
    dcae_cfg = preset("tiny").dcae
    save_module(MusicDCAE(dcae_cfg), dcae_cfg.to_dict(), tmp_path / "dcae", "dcae")
    code = main(
        [
            "train",
            "dit",
            "--manifest",
            manifest,
            "--run-dir",
            str(tmp_path / "run"),
            "--max-steps",
            "1",
            "--dcae-checkpoint",
            str(tmp_path / "dcae"),
            "--corpus",
            str(tmp_path / "corpus"),
            "--set",
            "features.text_encoder=none",
            "--set",
            "features.mert=none",
            "--set",
            "features.mhubert=none",
            "--set",
            "features.speaker=none",
        ]
    )
    assert code != 0
    err = capsys.readouterr().err
    assert (
        "text_encoder=tiny-random" in err and len([x for x in err.splitlines() if x.strip()]) == 1
    )
    assert not (tmp_path / "corpus" / "features").exists()


def test_resuming_a_dit_run_reuses_the_features_computed_from_its_manifest(tmp_path, capsys):
    from songmill.model.config import preset
    from songmill.model.dcae import MusicDCAE
    from songmill.model.weights import save_module
    from songmill.train.prepare import synthetic_manifest

    manifest = synthetic_manifest(str(tmp_path / "audio"), n_tracks=1, duration_s=1.0)
    dcae_cfg = preset("tiny").dcae
    save_module(MusicDCAE(dcae_cfg), dcae_cfg.to_dict(), tmp_path / "dcae", "dcae")
    quiet = [
        "--set",
        "train.progress=false",
        "--set",
        "train.val_every=0",
        "--set",
        "train.max_crop_s=1.0",
        "--batch-size",
        "1",
    ]
    offline = [
        "--set",
        "features.text_encoder=tiny-random",
        "--set",
        "features.mert=none",
        "--set",
        "features.mhubert=none",
        "--set",
        "features.speaker=none",
    ]
    assert (
        main(
            [
                "train",
                "dit",
                "--manifest",
                manifest,
                "--preset",
                "tiny",
                "--run-dir",
                str(tmp_path / "run"),
                "--max-steps",
                "1",
                "--dcae-checkpoint",
                str(tmp_path / "dcae"),
                "--corpus",
                str(tmp_path / "corpus"),
                *offline,
                *quiet,
            ]
        )
        == 0
    )
    capsys.readouterr()
    # as the README has it: the same manifest, --resume, no feature settings on the line
    assert (
        main(
            [
                "train",
                "dit",
                "--manifest",
                manifest,
                "--resume",
                str(tmp_path / "run"),
                "--max-steps",
                "2",
                "--corpus",
                str(tmp_path / "corpus"),
                *quiet,
            ]
        )
        == 0
    )
    assert "computed from it earlier" in capsys.readouterr().err
