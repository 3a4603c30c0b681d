"""`songmill export acestep15|acestep-v1`: files the other trainers accept.

The reference fixtures were recorded during development by loading an export of this same corpus
with ACE-Step 1.5's own record classes (`AudioSample.from_dict` through its builder's
`load_dataset`, `get_training_prompt`, `build_metas_str`, and the folder scan of `.caption.txt` /
`.lyrics.txt` / `.json` sidecars) and by running ACE-Step v1's `convert2hf_dataset.create_dataset`
on the v1 export (tests/fixtures/acestep*_reference.json). Their code is not part of songmill:
these tests check the export against what their code produced.
"""

from __future__ import annotations

import json
import os

import pyarrow.parquet as pq
import pytest
import soundfile as sf
from export_corpus import build
from songmill.data_schema.manifest import write_manifest
from songmill.flows.cli import main
from songmill.train.export_datasets import (
    ExportError,
    ExportOptions,
    caption_of,
    export_dataset,
    tags_of,
)

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")


def _fixture(name: str) -> dict:
    with open(os.path.join(FIXTURES, name), encoding="utf-8") as f:
        return json.load(f)


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    """One annotated corpus and its manifest for every test here (the tests only read them)."""
    root = tmp_path_factory.mktemp("export")
    corpus, ids = build(root)
    path = str(root / "m.parquet")
    write_manifest(corpus, path)
    return corpus, ids, path


def _as_their_record(sample: dict, fields: list[dict]) -> dict:
    """What AudioSample.from_dict(sample).to_dict() holds: its fields only, defaults for the rest."""
    return {f["name"]: sample.get(f["name"], f["default"]) for f in fields}


def test_acestep15_dataset_is_what_their_loader_accepted(manifest, tmp_path):
    _, _, path = manifest
    ref = _fixture("acestep15_reference.json")
    out = tmp_path / "ex15"
    result = export_dataset(
        path, str(out), ExportOptions("acestep15", conflicts="review", custom_tag="smtag")
    )
    assert result.written == 5 and result.flagged == 2
    data = json.loads((out / "dataset.json").read_text())
    assert ref[
        "from_dict_drops_unknown_keys"
    ]  # the `songmill` provenance key is ignored by their loader
    fields = ref["audio_sample_fields"]
    ours = [
        _as_their_record(s, fields) | {"audio_path": os.path.relpath(s["audio_path"], out)}
        for s in data["samples"]
    ]
    assert ours == ref["loaded_samples"]
    for sample in ours:  # the types their dataclass declares
        assert isinstance(sample["bpm"], int | type(None)) and isinstance(sample["duration"], int)
        assert all(
            isinstance(sample[k], str)
            for k in ("caption", "lyrics", "keyscale", "timesignature", "language")
        )
        assert isinstance(sample["is_instrumental"], bool) and isinstance(sample["labeled"], bool)
        assert os.path.exists(out / sample["audio_path"])
    assert set(data["metadata"]) == set(ref["dataset_metadata_fields"])
    assert {k: v for k, v in data["metadata"].items() if k != "created_at"} == ref[
        "loaded_metadata"
    ]
    assert [s["filename"] for s in data["samples"] if s["labeled"]] == ref[
        "labeled_for_preprocessing"
    ]
    # spellings their prompt builder writes: bpm int, numerator time signature, sharps keyscale
    assert "- bpm: 120\n- timesignature: 4\n- keyscale: F# minor\n" in ref["metas"][0]
    by_name = {s["filename"]: s for s in data["samples"]}
    assert by_name["twelve_eight-05ababababab.flac"]["bpm"] is None  # 400 bpm is outside 30-300
    assert (
        by_name["twelve_eight-05ababababab.flac"]["timesignature"] == ""
    )  # 12/8 is none of 2, 3, 4, 6
    # the sidecars hold what their folder scan read back
    for scanned in ref["folder_scan"]:
        stem = os.path.splitext(scanned["filename"])[0]
        meta = json.loads((out / f"{stem}.json").read_text())
        caption_file = out / f"{stem}.caption.txt"
        caption = meta.get("caption") or (
            caption_file.read_text().strip() if caption_file.exists() else ""
        )
        assert caption == scanned["caption"] and bool(caption) == scanned["labeled"]
        lyrics_file = out / f"{stem}.lyrics.txt"
        assert (
            lyrics_file.read_text().strip() if lyrics_file.exists() else "[Instrumental]"
        ) == scanned["lyrics"]
        for key in ("bpm", "keyscale", "timesignature", "language", "is_instrumental"):
            if key in meta:
                assert meta[key] == scanned[key], (stem, key)
        assert scanned["is_instrumental"] == (not lyrics_file.exists())


def test_acestep15_drops_conflicting_labels_and_says_why(manifest, tmp_path):
    _, ids, path = manifest
    out = tmp_path / "ex"
    result = export_dataset(path, str(out), ExportOptions("acestep15"))
    assert result.written == 3 and result.dropped == {"label conflicts": 2}
    report = json.loads((out / "export.json").read_text())
    reasons = {f["track_id"]: f["reasons"] for f in report["flagged"]}
    assert reasons[ids["contradicted"]] == ["caption: bpm: caption says 90, measured 120"]
    assert reasons[ids["languages"]] == ["language: transcript en, matched lyrics de"]
    samples = json.loads((out / "dataset.json").read_text())["samples"]
    assert {s["songmill"]["track_id"] for s in samples} == {
        ids["vocal"],
        ids["instrumental"],
        ids["twelve_eight"],
    }
    inst = next(s for s in samples if s["songmill"]["track_id"] == ids["instrumental"])
    assert (
        inst["lyrics"] == "[Instrumental]"
        and inst["is_instrumental"]
        and inst["language"] == "unknown"
    )
    assert not (out / (os.path.splitext(inst["filename"])[0] + ".lyrics.txt")).exists()


def test_export_never_overwrites_what_it_did_not_write(manifest, tmp_path):
    corpus, ids, path = manifest
    user = tmp_path / "mine"
    user.mkdir()
    (user / "notes.txt").write_text("keep me")
    with pytest.raises(ExportError, match="not written by songmill"):
        export_dataset(path, str(user), ExportOptions("acestep15"))
    assert os.listdir(user) == ["notes.txt"]
    out = tmp_path / "ex"
    export_dataset(path, str(out), ExportOptions("acestep15", audio="link"))
    first = sorted(os.listdir(out))
    assert all(os.path.islink(out / n) for n in first if n.endswith((".wav", ".flac")))
    (out / "notes.txt").write_text("a user's file in the export dir")
    export_dataset(
        path, str(out), ExportOptions("acestep15", audio="link")
    )  # re-run: the same files, none doubled
    assert sorted(os.listdir(out)) == sorted([*first, "notes.txt"])
    # a narrower manifest: the samples it no longer has are removed (songmill's own files), the user's stay
    narrow = str(tmp_path / "narrow.parquet")
    write_manifest(corpus, narrow, where=f"track_id = '{ids['vocal']}'")
    export_dataset(narrow, str(out), ExportOptions("acestep15", audio="link"))
    left = sorted(os.listdir(out))
    assert "notes.txt" in left and len([n for n in left if n.endswith(".wav")]) == 1
    # a user's file where a sample would go is refused, not overwritten
    victim = next(n for n in first if n.startswith("instrumental") and n.endswith(".json"))
    (out / victim).write_text("user data")
    with pytest.raises(ExportError, match="not overwriting"):
        export_dataset(path, str(out), ExportOptions("acestep15", audio="link"))
    assert (out / victim).read_text() == "user data"
    with pytest.raises(ExportError, match="acestep15 export"):
        export_dataset(narrow, str(out), ExportOptions("acestep-v1"))
    # linked, then copied over the link: the link is replaced, its target (the user's file) untouched
    source = pq.read_table(narrow).column("uri")[0].as_py()
    before = open(source, "rb").read()
    export_dataset(narrow, str(out), ExportOptions("acestep15", audio="copy"))
    copied = next(n for n in os.listdir(out) if n.endswith(".wav"))
    assert not os.path.islink(out / copied) and open(source, "rb").read() == before


def test_acestep_v1_folder_is_what_convert2hf_dataset_read(manifest, tmp_path):
    _, ids, path = manifest
    ref = _fixture("acestep_v1_reference.json")
    out = tmp_path / "v1"
    result = export_dataset(
        path, str(out), ExportOptions("acestep-v1", conflicts="keep", hf_dataset="hf")
    )
    assert result.written == 5 and result.audio == {"transcoded": 5}
    from datasets import load_from_disk

    ours = sorted((dict(r) for r in load_from_disk(str(out / "hf"))), key=lambda r: r["keys"])
    assert {k: str(v) for k, v in load_from_disk(str(out / "hf")).features.items()} == ref[
        "our_features"
    ]
    assert set(ref["their_features"]) == set(ref["our_features"])
    for mine, theirs in zip(ours, ref["their_rows"], strict=True):
        assert {k: v for k, v in mine.items() if k != "recaption"} | {
            "filename": os.path.relpath(mine["filename"], out)
        } == {k: v for k, v in theirs.items() if k != "recaption"}
        assert (
            all(isinstance(v, str) for v in mine["recaption"].values())
            and mine["speaker_emb_path"] == ""
        )
        info = sf.info(str(out / theirs["filename"]))
        assert info.format == "MP3" and abs(info.duration - 20.0) < 0.2
    # a language v1's lyric tokenizer rejects is flagged (and dropped by default)
    report = json.loads((out / "export.json").read_text())
    assert any(
        f["track_id"] == ids["twelve_eight"] and "sw" in f["reasons"][0] for f in report["flagged"]
    )
    assert export_dataset(path, str(tmp_path / "v1d"), ExportOptions("acestep-v1")).written == 2


def test_windows_export_cut_audio_with_their_own_lyrics(manifest, tmp_path):
    corpus, ids, _ = manifest
    out = tmp_path / "w15"
    assert (
        main(
            [
                "export",
                "acestep15",
                "--corpus",
                corpus.root,
                "--manifest",
                manifest[2],
                "--out",
                str(out),
                "--window",
                "8",
                "--align",
                "section",
                "--conflicts",
                "keep",
            ]
        )
        == 0
    )
    samples = json.loads((out / "dataset.json").read_text())["samples"]
    vocal = sorted(
        (s for s in samples if s["songmill"]["track_id"] == ids["vocal"]),
        key=lambda s: s["songmill"]["offset_s"],
    )
    assert [s["songmill"]["offset_s"] for s in vocal] == [0.0, 6.0, 12.0]
    assert vocal[0]["lyrics"] == "[Verse]\nwalking down the empty street"
    assert vocal[2]["lyrics"] == "[Chorus]\nwe are the stars tonight"
    for s in vocal:
        info = sf.info(s["audio_path"])
        assert abs(info.duration - (8.0 if s["songmill"]["offset_s"] == 12.0 else 6.0)) < 0.05
        assert s["duration"] == int(info.duration)
    with pytest.raises(ExportError, match="--audio copy"):
        windowed = tmp_path / "wm.parquet"
        write_manifest(
            corpus,
            str(windowed),
            window=__import__("songmill.data_schema.windows", fromlist=["x"]).WindowOptions(
                8, "section"
            ),
        )
        assert pq.read_schema(windowed).names.count("offset_s") == 1
        export_dataset(
            str(windowed), str(tmp_path / "wl"), ExportOptions("acestep15", audio="link")
        )
    v1 = tmp_path / "wv1"
    assert (
        main(
            [
                "export",
                "acestep-v1",
                "--corpus",
                corpus.root,
                "--manifest",
                manifest[2],
                "--out",
                str(v1),
                "--window",
                "8",
                "--align",
                "section",
            ]
        )
        == 0
    )
    lyrics = sorted(
        n for n in os.listdir(v1) if n.startswith("Vocal") and n.endswith("_lyrics.txt")
    )
    assert [(v1 / n).read_text().strip() for n in lyrics] == [
        "[verse]\nwalking down the empty street",
        "[pre-chorus]\nechoes at my feet",
        "[chorus]\nwe are the stars tonight",
    ]


def test_bad_manifest_is_one_clear_error(tmp_path, capsys):
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"not parquet")
    assert main(["export", "acestep15", "--manifest", str(bad), "--out", str(tmp_path / "o")]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot read manifest" in err[0]


def test_unreadable_audio_is_a_dropped_row_not_a_failed_export(manifest, tmp_path):
    _, ids, path = manifest
    table = pq.read_table(path)
    uris = table.column("uri").to_pylist()
    uris[0] = str(tmp_path / "gone.wav")  # a source deleted since the manifest was cut
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF not really a wav")
    uris[1] = str(broken)
    hostile = tmp_path / "hostile.parquet"
    pq.write_table(
        table.set_column(
            table.schema.get_field_index("uri"), "uri", __import__("pyarrow").array(uris)
        ),
        hostile,
    )
    out = tmp_path / "v1"
    result = export_dataset(str(hostile), str(out), ExportOptions("acestep-v1", conflicts="keep"))
    assert result.written == 3 and result.dropped == {"audio unreadable": 2}
    report = json.loads((out / "export.json").read_text())
    assert (
        sum(f["dropped"] and f["reasons"][0].startswith("audio: ") for f in report["flagged"]) == 2
    )
    assert not any(n.startswith(".tmp-") for n in os.listdir(out))


def test_export_takes_one_split(manifest, tmp_path):
    corpus, _, _ = manifest
    split = tmp_path / "split.parquet"
    write_manifest(corpus, str(split), split="val=0.5", seed=4)
    sides = pq.read_table(split).column("split").to_pylist()
    assert 0 < sides.count("val") < len(sides)
    result = export_dataset(
        str(split),
        str(tmp_path / "val"),
        ExportOptions("acestep15", conflicts="keep", audio="none", split="val"),
    )
    assert result.written == sides.count("val") and result.dropped.get(
        "other split", 0
    ) == sides.count("train")
    samples = json.loads((tmp_path / "val" / "dataset.json").read_text())["samples"]
    assert {s["songmill"]["split"] for s in samples} <= {"val"}


def test_a_windows_caption_states_the_windows_tempo_and_length():
    track = {
        "bpm": 94.0,
        "duration_s": 235.0,
        "caption_recaption": "A piece of music in F major, at 94 BPM, in 6/8 time. "
        "It is instrumental, about 3:55 long. Form: verse, chorus, verse.",
    }
    assert caption_of({**track, "window_id": None}, "recaption")[0] == track["caption_recaption"]
    window = {**track, "window_id": "t:0", "bpm": 112.3, "duration_s": 60.4}
    assert caption_of(window, "description") == (
        "A piece of music in F major, at 112 BPM, in 6/8 time. It is instrumental, about 60 seconds long.",
        "recaption",
    )


def test_unsure_tempo_and_key_are_left_blank_not_stated(manifest, tmp_path):
    _, ids, path = manifest
    import pyarrow as pa

    table = pq.read_table(path)
    confidences = [0.2 if t == ids["vocal"] else 0.9 for t in table.column("track_id").to_pylist()]
    unsure = tmp_path / "unsure.parquet"
    pq.write_table(
        table.set_column(
            table.schema.get_field_index("key_confidence"), "key_confidence", pa.array(confidences)
        ).set_column(
            table.schema.get_field_index("bpm_confidence"), "bpm_confidence", pa.array(confidences)
        ),
        unsure,
    )
    result = export_dataset(
        str(unsure), str(tmp_path / "o"), ExportOptions("acestep15", audio="none")
    )
    samples = json.loads(open(result.dataset).read())["samples"]
    by_track = {s["songmill"]["track_id"]: s for s in samples}
    assert by_track[ids["vocal"]]["bpm"] is None and by_track[ids["vocal"]]["keyscale"] == ""
    assert (
        by_track[ids["instrumental"]]["bpm"] == 96
        and by_track[ids["instrumental"]]["keyscale"] == "C major"
    )
    loose = export_dataset(
        str(unsure),
        str(tmp_path / "all"),
        ExportOptions("acestep15", audio="none", min_confidence=0.0),
    )
    assert json.loads(open(loose.dataset).read())["samples"][0]["bpm"] == 120
    row = {
        "caption_tags": "synth-pop, 120 bpm, F# minor",
        "bpm_confidence": 0.2,
        "key_confidence": 0.9,
    }
    assert tags_of(row, 0.5) == ["synth-pop", "F# minor"] and tags_of(row) == [
        "synth-pop",
        "120 bpm",
        "F# minor",
    ]
