"""Training data where users train: a manifest exported as ACE-Step 1.5's and ACE-Step v1's datasets.

`songmill export acestep15 --manifest M --out DIR` writes what ACE-Step 1.5's dataset builder
(`acestep/training/dataset_builder_modules`) loads:
- `DIR/dataset.json`: `{"metadata": DatasetMetadata, "samples": [AudioSample, ...]}`, the file its
  builder's `load_dataset` reads (the Gradio "load dataset" box) and `save_dataset` writes;
- per sample, next to its audio: `X.caption.txt`, `X.lyrics.txt` (vocal tracks only: the builder's
  folder scan takes a lyrics file to mean "not instrumental") and `X.json` (caption, bpm, keyscale,
  timesignature, language, is_instrumental), the sidecars its folder scan reads.

`songmill export acestep-v1 --manifest M --out DIR` writes the folder ACE-Step v1's
`convert2hf_dataset.py` reads (`X.mp3`, `X_prompt.txt` with comma-separated tags, `X_lyrics.txt`)
and, with `--hf-dataset NAME`, the HF dataset that script saves (`keys`, `filename`, `tags`,
`speaker_emb_path`, `norm_lyrics`, `recaption`), which its trainer's `Text2MusicDataset` loads.

Labels come from songmill's measurements, in the spellings those trainers parse: bpm an int in
[30, 300], keyscale `F# minor`, timesignature the numerator ACE-Step 1.5 accepts (2, 3, 4, 6;
`4/4` -> `4`, `6/8` -> `6`, others left blank), language an ISO 639-1 code of its list or `unknown`
(always `unknown` for instrumentals). A track nothing is known about (no separation, transcript or
lyrics) is written as those trainers' own default, instrumental. Lyrics carry section tags (`[Verse]`, `[Chorus]`, ... from the
`tokens` stage, or per window from transcript times); instrumentals are `[Instrumental]` (v1:
`[inst]`, a token of its lyric vocabulary). A track whose caption contradicts a measurement, or
whose labels disagree (separation vs lyrics, transcript vs lyric language, a transcript flagged
as hallucinated, a language v1's lyric tokenizer rejects), is dropped (`--conflicts drop`), kept
for review (`review`: ACE-Step 1.5 gets it with `labeled: false`, which its preprocessing skips
until someone edits it), or kept (`keep`); either way `export.json` lists each with its reasons.

DIR is new, empty, or an earlier export of the same kind: songmill never writes over a file it
did not make. Every file is written under a temporary name and renamed; re-running replaces the
earlier export's files and removes those no longer wanted (songmill's own, listed in
`.songmill-export.json`), so nothing is duplicated.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pyarrow.parquet as pq

KINDS = ("acestep15", "acestep-v1")
AUDIO_MODES = ("copy", "link", "none")
CONFLICT_MODES = ("drop", "review", "keep")
# songmill's caption styles (captions table), the chosen one first, then these in order.
CAPTION_STYLES = ("description", "detailed", "recaption", "tags", "use_case")
MARKER = ".songmill-export.json"
JOURNAL = ".songmill-export.journal"
REPORT = "export.json"
DATASET_JSON = "dataset.json"

# ACE-Step 1.5 (acestep/constants.py): the languages its labels use, BPM range, metres.
ACESTEP15_LANGUAGES = frozenset(
    "ar az bg bn ca cs da de el en es fa fi fr he hi hr ht hu id is it ja ko la lt ms ne nl no pa pl pt ro ru "
    "sa sk sr sv sw ta te th tl tr uk ur vi yue zh".split()
)
ACESTEP15_AUDIO = frozenset({".wav", ".mp3", ".flac", ".ogg", ".opus"})
ACESTEP15_TIME_SIGNATURES = {"2/4": "2", "2/2": "2", "3/4": "3", "4/4": "4", "6/8": "6"}
BPM_RANGE = (30, 300)
# ACE-Step v1 (acestep/text2music_dataset.py SUPPORT_LANGUAGES): its lyric tokenizer raises on others.
ACESTEP_V1_LANGUAGES = frozenset("en de fr es it pt pl tr ru cs nl ar zh ja hu ko hi".split())
_KEYSCALE = re.compile(r"^[A-G][#b]? (major|minor)$")
_TAG_LINE = re.compile(r"^\[([^\]\n]{1,40})\]\s*$", flags=re.M)
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")


class ExportError(ValueError):
    pass


@dataclass
class ExportOptions:
    kind: str
    audio: str = "copy"
    custom_tag: str = ""
    caption_style: str = "description"
    conflicts: str = "drop"
    name: str = "songmill"
    hf_dataset: str | None = None  # acestep-v1: also save the HF dataset under DIR/<name>
    repeat: int = (
        1  # acestep-v1: rows per sample in the HF dataset (convert2hf_dataset's repeat_count)
    )
    split: str | None = None  # only the rows of this split (a manifest cut with --split)
    # bpm / keyscale whose calibrated confidence (the music stage's probability of being right)
    # is below this are written blank (ACE-Step's "N/A"), not asserted
    min_confidence: float = 0.5

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ExportError(f"unknown export {self.kind!r}: one of {', '.join(KINDS)}")
        if self.audio not in AUDIO_MODES:
            raise ExportError(f"--audio {self.audio!r}: one of {', '.join(AUDIO_MODES)}")
        if self.conflicts not in CONFLICT_MODES:
            raise ExportError(f"--conflicts {self.conflicts!r}: one of {', '.join(CONFLICT_MODES)}")
        if self.caption_style not in CAPTION_STYLES:
            raise ExportError(
                f"--caption-style {self.caption_style!r}: one of {', '.join(CAPTION_STYLES)}"
            )
        if self.repeat < 1:
            raise ExportError("--repeat: at least 1")
        if not 0.0 <= self.min_confidence <= 1.0:
            raise ExportError("--min-confidence: a probability in [0, 1]")


@dataclass
class ExportResult:
    out: str
    kind: str
    written: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    flagged: int = 0
    audio: dict[str, int] = field(default_factory=dict)
    removed_stale: int = 0
    dataset: str | None = None
    hf_dataset: str | None = None

    def summary(self) -> str:
        drops = ", ".join(f"{n} {why}" for why, n in sorted(self.dropped.items())) or "none"
        audio = ", ".join(f"{n} {how}" for how, n in sorted(self.audio.items())) or "no audio"
        extra = f", HF dataset {self.hf_dataset}" if self.hf_dataset else ""
        return (
            f"export {self.kind}: {self.written} samples ({self.flagged} flagged) -> {self.out}{extra}; "
            f"left out: {drops}; audio: {audio}; reasons per sample in {os.path.join(self.out, REPORT)}"
        )


# -- labels ---------------------------------------------------------------------------------------
def title_tag(label: str) -> str:
    """`pre-chorus` -> `Pre-Chorus`, `verse 2` -> `Verse 2` (ACE-Step 1.5's spelling of tags)."""
    return "-".join(
        " ".join(w[:1].upper() + w[1:] for w in part.split(" ")) for part in label.split("-")
    )


def retag(lyrics: str, kind: str) -> str:
    """Section tag lines in the trainer's spelling: ACE-Step 1.5 `[Chorus]`, v1 `[chorus]`."""
    if kind == "acestep15":
        return _TAG_LINE.sub(lambda m: f"[{title_tag(m.group(1).strip().lower())}]", lyrics)
    return _TAG_LINE.sub(lambda m: f"[{m.group(1).strip().lower()}]", lyrics)


def normalise_language(code: str | None) -> str | None:
    if not code:
        return None
    code = code.strip().lower().replace("_", "-")
    if code.startswith("zh") and code not in ("zh-yue",):
        return "zh"
    return {"zh-yue": "yue", "nb": "no", "nn": "no", "iw": "he", "jw": "jv"}.get(
        code, code.split("-")[0]
    )


def bpm_label(value: Any) -> int | None:
    if value is None or not math.isfinite(float(value)):
        return None
    bpm = int(round(float(value)))
    return bpm if BPM_RANGE[0] <= bpm <= BPM_RANGE[1] else None


def trusted(row: dict[str, Any], confidence_column: str, minimum: float) -> bool:
    """Whether a measurement is confident enough to state (no confidence recorded: trusted)."""
    confidence = row.get(confidence_column)
    return confidence is None or float(confidence) >= minimum


def keyscale_label(row: dict[str, Any]) -> str:
    text = row.get("keyscale") or (
        f"{row['key_tonic']} {row['key_mode']}"
        if row.get("key_tonic") and row.get("key_mode")
        else ""
    )
    return text if _KEYSCALE.match(text or "") else ""


def lyrics_of(row: dict[str, Any]) -> tuple[str | None, bool | None]:
    """(lyrics with lowercase section tags, instrumental): from the `tokens` stage (or a window's
    slice), else the matched canonical lyrics, else the transcript; (None, None) when unknown."""
    tagged = row.get("lyrics_tagged")
    if row.get("window_id") is not None and tagged is None and not row.get("is_instrumental"):
        return None, None  # a window of a track whose lyrics have no times
    if (
        row.get("is_instrumental")
        or row.get("lyrics_source") == "instrumental"
        or (tagged or "").strip().lower() == "[instrumental]"
    ):
        return "", True
    for text in (
        tagged,
        row.get("lyrics"),
        None if row.get("transcript_hallucination") else row.get("transcript"),
    ):
        if text and text.strip():
            return text.strip(), False
    return None, None


def language_of(row: dict[str, Any]) -> str | None:
    return normalise_language(row.get("lyrics_language") or row.get("transcript_language"))


_CAPTION_BPM = re.compile(r"\b\d{2,3}(?:\.\d+)?(\s*(?:BPM|bpm|beats per minute))")
_CAPTION_FORM = re.compile(r"\s*\bForm: [^.]*\.")
_CAPTION_LENGTH = re.compile(r"\b(about )?(\d+ seconds|\d+:\d\d)( long)")


def _length_phrase(seconds: float) -> str:
    """The recaption's spelling of a duration (annotate/caption.py)."""
    if seconds < 90:
        return f"{round(seconds)} seconds"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes}:{rest:02d}"


def caption_of(row: dict[str, Any], style: str) -> tuple[str, str | None]:
    """The caption of the chosen style (else the next non-empty one). A window's caption is its
    track's with the tempo and length it states made the window's own (the recaption states both)
    and the track's form left out."""
    for name in (style, *CAPTION_STYLES):
        text = row.get(f"caption_{name}")
        if text and text.strip():
            text = " ".join(text.split())
            if row.get("window_id") is not None:
                if row.get("bpm"):
                    text = _CAPTION_BPM.sub(
                        lambda m: f"{round(float(row['bpm']))}{m.group(1)}", text
                    )
                text = _CAPTION_LENGTH.sub(
                    lambda m: (
                        f"{m.group(1) or ''}{_length_phrase(float(row['duration_s']))}{m.group(3)}"
                    ),
                    text,
                )
                text = _CAPTION_FORM.sub("", text)  # the track's form is not the window's
            return text, name
    return "", None


_BPM_TAG = re.compile(r"^\d{2,3}(\.\d+)? ?bpm$", flags=re.I)
_KEY_TAG = re.compile(r"^[A-G][#b]? (major|minor)$")


def tags_of(row: dict[str, Any], min_confidence: float = 0.0) -> list[str]:
    """Comma-free tags: the `tags` caption style's, else genres + moods + instruments; a tempo or
    key tag whose measurement is below `min_confidence` is left out."""
    raw = (
        (row.get("caption_tags") or "").split(",")
        if row.get("caption_tags")
        else [
            *(row.get("genres") or []),
            *(row.get("moods") or []),
            *(row.get("instruments") or []),
        ]
    )
    tags = (" ".join(str(x).replace(",", " ").split()) for x in raw)
    untrusted = [
        pattern
        for pattern, column in ((_BPM_TAG, "bpm_confidence"), (_KEY_TAG, "key_confidence"))
        if not trusted(row, column, min_confidence)
    ]
    return list(dict.fromkeys(t for t in tags if t and not any(p.match(t) for p in untrusted)))


def label_problems(row: dict[str, Any], kind: str) -> list[str]:
    """Why a row's labels should not be trusted as they are (empty: nothing found)."""
    problems = [f"caption: {c}" for c in row.get("contradictions") or []]
    if row.get("caption_flagged") and not problems:
        problems.append("caption: flagged by the caption stage")
    lyrics, instrumental = lyrics_of(row)
    if row.get("is_instrumental") and row.get("lyric_id") and row.get("lyrics"):
        problems.append(
            f"instrumental: separation hears no vocals, lyrics {row['lyric_id']} matched"
        )
    if row.get("is_instrumental") is False and instrumental:
        problems.append("lyrics: separation hears vocals, no lyrics found")
    if lyrics is None and row.get("is_instrumental") is False:
        problems.append(
            "lyrics: vocals without timed lyrics"
            if row.get("window_id")
            else "lyrics: vocals without lyrics"
        )
    heard, matched = (
        normalise_language(row.get("transcript_language")),
        normalise_language(row.get("lyrics_language")),
    )
    if heard and matched and heard != matched and not instrumental:
        problems.append(f"language: transcript {heard}, matched lyrics {matched}")
    if row.get("transcript_hallucination") and row.get("lyrics_source") == "transcript":
        problems.append("lyrics: from a transcript flagged as hallucinated")
    language = language_of(row)
    if (
        kind == "acestep-v1"
        and lyrics
        and not instrumental
        and language
        and language not in ACESTEP_V1_LANGUAGES
    ):
        problems.append(f"language: {language} is not one ACE-Step v1's lyric tokenizer reads")
    return problems


def sample_stem(row: dict[str, Any]) -> str:
    """File stem: the source's name (safe characters) and the track id, plus the window index."""
    base = os.path.splitext(os.path.basename(str(row.get("uri") or "")))[0]
    base = _UNSAFE.sub("_", base).strip("_")[:60] or "track"
    stem = f"{base}-{row['track_id'][:12]}"
    return stem if row.get("window_index") is None else f"{stem}-w{int(row['window_index']):03d}"


def manifest_rows(path: str, batch_rows: int = 2048) -> Iterator[dict[str, Any]]:
    """The manifest's rows, a batch at a time (memory bounded by one batch)."""
    try:
        parquet = pq.ParquetFile(path)
    except (OSError, ValueError) as exc:
        raise ExportError(f"cannot read manifest {path}: {exc}") from None
    missing = {"track_id", "uri", "duration_s"} - set(parquet.schema_arrow.names)
    if missing:
        raise ExportError(
            f"manifest {path} lacks column(s) {sorted(missing)}; export it with `songmill manifest --out FILE`"
        )
    for batch in parquet.iter_batches(batch_size=batch_rows):
        yield from batch.to_pylist()


# -- the output directory -------------------------------------------------------------------------
class ExportDir:
    """DIR, written only where songmill may: new files, or files an earlier export of the same
    kind wrote (its marker lists them; a journal covers a run killed before its marker)."""

    def __init__(self, out: str, kind: str):
        self.out, self.kind = os.path.abspath(out), kind
        self.previous: set[str] = set()
        self.written: list[str] = []
        os.makedirs(self.out, exist_ok=True)
        entries = set(os.listdir(self.out))
        marker = os.path.join(self.out, MARKER)
        if MARKER in entries:
            try:
                with open(marker) as f:
                    meta = json.load(f)
            except (OSError, ValueError) as exc:
                raise ExportError(f"cannot read {marker}: {exc}") from None
            if meta.get("kind") != kind:
                raise ExportError(
                    f"{self.out} holds a songmill {meta.get('kind')} export; write {kind} to another directory"
                )
            self.previous = set(meta.get("files") or [])
        if JOURNAL in entries:
            with open(os.path.join(self.out, JOURNAL)) as f:
                self.previous |= {line.rstrip("\n") for line in f if line.strip()}
        elif MARKER not in entries and entries:
            raise ExportError(
                f"{self.out} is not empty and was not written by songmill export; choose a new or empty directory"
            )
        self.previous |= {MARKER, JOURNAL}
        for name in entries:  # temporaries of a killed run of ours
            if name.startswith(".tmp-") and name[38:] in self.previous:
                os.remove(os.path.join(self.out, name))
        self._journal = open(os.path.join(self.out, JOURNAL), "a")

    def claim(self, name: str) -> tuple[str, str]:
        """(final path, temporary path) for a file of this export; refuses a file songmill did not write."""
        path = os.path.join(self.out, name)
        if name not in self.previous and os.path.lexists(path):
            raise ExportError(
                f"{path} exists and was not written by songmill export; not overwriting it"
            )
        if name not in self.previous:
            self._journal.write(name + "\n")
            self._journal.flush()
            self.previous.add(name)
        self.written.append(name)
        return path, os.path.join(self.out, f".tmp-{uuid.uuid4().hex[:32]}-{name}")

    def write_text(self, name: str, text: str) -> str:
        path, tmp = self.claim(name)
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
        return path

    def write_json(self, name: str, data: Any) -> str:
        return self.write_text(name, json.dumps(data, indent=2, ensure_ascii=False) + "\n")

    def finish(self, meta: dict[str, Any]) -> int:
        """Remove the earlier export's files not written this time, then the marker; returns the removed count."""
        keep = set(self.written) | {MARKER, JOURNAL}
        removed = 0
        for name in sorted(self.previous - keep):
            path = os.path.join(self.out, name)
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)
                removed += 1
            elif os.path.lexists(path):
                os.remove(path)
                removed += 1
        tmp = os.path.join(self.out, f".tmp-{uuid.uuid4().hex[:32]}-{MARKER}")
        with open(tmp, "w") as f:
            json.dump(meta | {"kind": self.kind, "files": sorted(self.written)}, f, indent=1)
        os.replace(tmp, os.path.join(self.out, MARKER))
        self._journal.close()
        os.remove(os.path.join(self.out, JOURNAL))
        return removed


# -- audio ----------------------------------------------------------------------------------------
def _ffmpeg(
    src: str, dst: str, codec: list[str], offset: float | None, duration: float | None
) -> None:
    if shutil.which("ffmpeg") is None:
        raise ExportError(
            "ffmpeg is needed to cut windows or transcode audio (Debian package ffmpeg)"
        )
    cmd = ["ffmpeg", "-nostdin", "-loglevel", "error", "-y"]
    if offset is not None:
        cmd += ["-ss", f"{offset:.4f}"]
    if duration is not None:
        cmd += ["-t", f"{duration:.4f}"]
    cmd += ["-i", src, "-map", "0:a:0", "-map_metadata", "-1", *codec, dst]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise OSError((done.stderr.strip().splitlines() or [f"ffmpeg exit {done.returncode}"])[-1])


def _local(uri: str) -> str | None:
    if uri.startswith("file://"):
        return uri[len("file://") :]
    return uri if "://" not in uri else None


def place_audio(
    out: ExportDir,
    row: dict[str, Any],
    stem: str,
    mode: str,
    allowed: frozenset[str],
    transcode_ext: str,
) -> tuple[str, str]:
    """(path the trainer reads, how it got there): copied, linked, cut or transcoded into DIR, or
    (mode none) the source itself."""
    uri = str(row["uri"])
    ext = os.path.splitext(uri)[1].lower()
    window = row.get("window_id") is not None
    if mode == "none":
        return _local(uri) or uri, "source"
    codec = {".mp3": ["-c:a", "libmp3lame", "-q:a", "2"], ".flac": ["-c:a", "flac"]}[transcode_ext]
    local = _local(uri)
    if window or ext not in allowed or local is None and mode == "link":
        src = local or uri
        if local is None:  # fsspec: ffmpeg reads a local copy
            import fsspec

            src = os.path.join(out.out, f".tmp-{uuid.uuid4().hex[:32]}-src{ext}")
            with fsspec.open(uri, "rb") as fin, open(src, "wb") as fout:
                shutil.copyfileobj(fin, fout, 1 << 20)
        path, tmp = out.claim(stem + transcode_ext)
        try:
            _ffmpeg(
                src,
                tmp,
                codec,
                row.get("offset_s") if window else None,
                row.get("duration_s") if window else None,
            )
            os.replace(tmp, path)
        finally:
            for p in (tmp, src if local is None else None):
                if p and os.path.exists(p):
                    os.remove(p)
        return path, "cut" if window else "transcoded"
    path, tmp = out.claim(stem + ext)
    try:
        if mode == "link":
            os.symlink(os.path.abspath(local), tmp)
        else:
            import fsspec

            with fsspec.open(uri, "rb") as fin, open(tmp, "wb") as fout:
                shutil.copyfileobj(fin, fout, 1 << 20)
        os.replace(tmp, path)
    finally:
        if os.path.lexists(tmp):
            os.remove(tmp)
    return path, "linked" if mode == "link" else "copied"


# -- the exports ----------------------------------------------------------------------------------
@dataclass
class Prepared:
    row: dict[str, Any]
    stem: str
    caption: str
    caption_style: str | None
    lyrics: str
    instrumental: bool
    language: str
    problems: list[str]


def prepare(row: dict[str, Any], options: ExportOptions) -> tuple[Prepared | None, str | None]:
    """The labels of one row in the trainer's spelling, or why it is left out."""
    if options.split is not None and row.get("split", "train") != options.split:
        return None, "other split"
    if row.get("qc_pass") is False:
        return None, "qc failed"
    if not row.get("duration_s"):
        return None, "no duration"
    problems = label_problems(row, options.kind)
    if problems and options.conflicts == "drop":
        return None, "label conflicts"
    lyrics, instrumental = lyrics_of(row)
    caption, style = caption_of(row, options.caption_style)
    language = language_of(row)
    if instrumental or lyrics is None:
        lyrics_text = "[Instrumental]" if options.kind == "acestep15" else "[inst]"
        instrumental = True if instrumental or lyrics is None else instrumental
    else:
        lyrics_text = retag(lyrics, options.kind)
    if options.kind == "acestep15":
        language = language if language in ACESTEP15_LANGUAGES and not instrumental else "unknown"
    return Prepared(
        row,
        sample_stem(row),
        caption,
        style,
        lyrics_text,
        bool(instrumental),
        language or "unknown",
        problems,
    ), None


def acestep15_sample(p: Prepared, audio_path: str, options: ExportOptions) -> dict[str, Any]:
    """One ACE-Step 1.5 AudioSample record (its models.py fields), plus songmill's provenance."""
    row = p.row
    labeled = bool(p.caption) and not (p.problems and options.conflicts == "review")
    sample = {
        "id": row["track_id"][:16]
        + (f"-w{int(row['window_index']):03d}" if row.get("window_index") is not None else ""),
        "audio_path": audio_path,
        "filename": os.path.basename(audio_path),
        "caption": p.caption,
        "genre": ", ".join(row.get("genres") or []),
        "lyrics": p.lyrics,
        "raw_lyrics": "" if p.instrumental else p.lyrics,
        "formatted_lyrics": "",
        "bpm": bpm_label(row.get("bpm"))
        if trusted(row, "bpm_confidence", options.min_confidence)
        else None,
        "keyscale": keyscale_label(row)
        if trusted(row, "key_confidence", options.min_confidence)
        else "",
        "timesignature": ACESTEP15_TIME_SIGNATURES.get(str(row.get("time_signature") or ""), ""),
        "duration": int(math.floor(float(row["duration_s"]))),
        "language": p.language,
        "is_instrumental": p.instrumental,
        "custom_tag": options.custom_tag,
        "labeled": labeled,
        "prompt_override": None,
    }
    # Not an AudioSample field: its from_dict leaves it out; kept for lineage and review.
    sample["songmill"] = {
        "track_id": row["track_id"],
        "window_id": row.get("window_id"),
        "offset_s": row.get("offset_s"),
        "caption_style": p.caption_style,
        "flags": p.problems,
        "split": row.get("split"),
    }
    return sample


def export_dataset(manifest: str, out: str, options: ExportOptions) -> ExportResult:
    """Write `manifest`'s rows as the dataset of `options.kind` into `out` (see the module doc).
    Rows stream through in batches: the dataset JSON and the HF dataset's rows are written as
    they come, so memory stays bounded by a batch (plus the flagged list of the report)."""
    started = time.perf_counter()
    rows = manifest_rows(manifest)
    first = next(rows, None)
    if first is not None and first.get("window_id") is not None and options.audio != "copy":
        raise ExportError(
            "a windowed manifest needs --audio copy (each window is a cut of its track)"
        )
    directory = ExportDir(out, options.kind)
    result = ExportResult(directory.out, options.kind)
    dropped: Counter[str] = Counter()
    audio: Counter[str] = Counter()
    flagged: list[dict[str, Any]] = []
    all_instrumental = True
    sink = _RowSink(
        directory,
        DATASET_JSON
        if options.kind == "acestep15"
        else (f"{options.hf_dataset}.rows.jsonl" if options.hf_dataset else None),
    )
    try:
        for row in _chain(first, rows):
            prepared, why = prepare(row, options)
            if prepared is None:
                dropped[why or "left out"] += 1
                if why == "label conflicts":
                    flagged.append(
                        {
                            "track_id": row["track_id"],
                            "window_id": row.get("window_id"),
                            "dropped": True,
                            "reasons": label_problems(row, options.kind),
                        }
                    )
                continue
            try:
                if options.kind == "acestep15":
                    path, how = place_audio(
                        directory, row, prepared.stem, options.audio, ACESTEP15_AUDIO, ".flac"
                    )
                else:
                    path, how = place_audio(
                        directory, row, prepared.stem, options.audio, frozenset({".mp3"}), ".mp3"
                    )
            except (OSError, ValueError) as exc:
                if isinstance(exc, ExportError):
                    raise
                dropped["audio unreadable"] += 1
                flagged.append(
                    {
                        "track_id": row["track_id"],
                        "window_id": row.get("window_id"),
                        "dropped": True,
                        "reasons": [f"audio: {str(exc).strip()[:200]}"],
                    }
                )
                continue
            audio[how] += 1
            if prepared.problems:
                flagged.append(
                    {
                        "track_id": row["track_id"],
                        "window_id": row.get("window_id"),
                        "dropped": False,
                        "reasons": prepared.problems,
                    }
                )
            if options.kind == "acestep15":
                sample = acestep15_sample(prepared, path, options)
                all_instrumental &= prepared.instrumental
                sink.add(sample)
                _acestep15_sidecars(directory, prepared, sample)
            else:
                sink.add(_acestep_v1_files(directory, prepared, path, options))
            result.written += 1
        if options.kind == "acestep15":
            metadata = {
                "name": options.name,
                "custom_tag": options.custom_tag,
                "tag_position": "prepend",
                "created_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
                "num_samples": result.written,
                "all_instrumental": all_instrumental and result.written > 0,
                "genre_ratio": 0,
            }
            result.dataset = sink.close_json(metadata)
        elif options.hf_dataset:
            result.hf_dataset = _save_hf_dataset(
                directory, options.hf_dataset, sink.close_rows(), options.repeat
            )
    finally:
        sink.discard()
    result.dropped, result.audio, result.flagged = dict(dropped), dict(audio), len(flagged)
    directory.write_json(
        REPORT,
        {
            "manifest": os.path.abspath(manifest),
            "options": options.__dict__,
            "written": result.written,
            "dropped": result.dropped,
            "audio": result.audio,
            "flagged": flagged,
            "seconds": round(time.perf_counter() - started, 3),
        },
    )
    result.removed_stale = directory.finish({"manifest": os.path.abspath(manifest)})
    return result


class _RowSink:
    """Records written as they come: ACE-Step 1.5's dataset JSON (`samples` first, `metadata`
    once the count is known: its loader reads keys, not positions), or the HF dataset's rows as
    JSON lines in a temporary file."""

    def __init__(self, directory: ExportDir, name: str | None):
        self.directory, self.name, self.count = directory, name, 0
        self.path = self.tmp = None
        self.file = None
        if name is None:
            return
        if name == DATASET_JSON:
            self.path, self.tmp = directory.claim(name)
        else:
            self.tmp = os.path.join(directory.out, f".tmp-{uuid.uuid4().hex[:32]}-{name}")
        self.file = open(self.tmp, "w", encoding="utf-8")
        if name == DATASET_JSON:
            self.file.write('{\n  "samples": [')

    def add(self, record: dict[str, Any]) -> None:
        if self.file is None:
            return
        if self.name == DATASET_JSON:
            text = json.dumps(record, indent=2, ensure_ascii=False).replace("\n", "\n    ")
            self.file.write(("," if self.count else "") + "\n    " + text)
        else:
            self.file.write(json.dumps(record, ensure_ascii=False) + "\n")
        self.count += 1

    def close_json(self, metadata: dict[str, Any]) -> str:
        assert self.file is not None and self.path is not None and self.tmp is not None
        meta = json.dumps(metadata, indent=2, ensure_ascii=False).replace("\n", "\n  ")
        self.file.write(("\n  " if self.count else "") + '],\n  "metadata": ' + meta + "\n}\n")
        self.file.close()
        self.file = None
        os.replace(self.tmp, self.path)
        return self.path

    def close_rows(self) -> str:
        assert self.file is not None and self.tmp is not None
        self.file.close()
        self.file = None
        return self.tmp

    def discard(self) -> None:
        if self.file is not None:
            self.file.close()
        if self.tmp and os.path.exists(self.tmp):
            os.remove(self.tmp)


def _chain(
    first: dict[str, Any] | None, rest: Iterator[dict[str, Any]]
) -> Iterator[dict[str, Any]]:
    if first is not None:
        yield first
        yield from rest


def _acestep15_sidecars(directory: ExportDir, p: Prepared, sample: dict[str, Any]) -> None:
    """`X.caption.txt`, `X.lyrics.txt` and `X.json` beside the audio (the builder's folder scan).
    A sample kept for review gets no caption sidecar, so a folder scan leaves it unlabeled too."""
    if p.caption and sample["labeled"]:
        directory.write_text(p.stem + ".caption.txt", p.caption + "\n")
    if not p.instrumental:
        directory.write_text(p.stem + ".lyrics.txt", p.lyrics + "\n")
    fields = ("genre", "bpm", "keyscale", "timesignature", "language", "is_instrumental")
    meta = {k: sample[k] for k in fields if sample[k] not in (None, "")}
    if sample["labeled"]:
        meta["caption"] = p.caption
    directory.write_json(p.stem + ".json", meta)


def _acestep_v1_files(
    directory: ExportDir, p: Prepared, audio_path: str, options: ExportOptions
) -> dict[str, Any]:
    """`X_prompt.txt` (tags joined by ", ", as convert2hf_dataset splits them) and `X_lyrics.txt`;
    returns the HF dataset row."""
    tags = tags_of(p.row, options.min_confidence)
    if options.custom_tag:
        tags = [options.custom_tag, *[t for t in tags if t != options.custom_tag]]
    directory.write_text(p.stem + "_prompt.txt", ", ".join(tags) + "\n")
    directory.write_text(p.stem + "_lyrics.txt", p.lyrics + "\n")
    recaption = {
        style: " ".join((p.row.get(f"caption_{style}") or "").split())
        for style in CAPTION_STYLES
        if style != "tags"
    }
    return {
        "keys": p.stem,
        "filename": audio_path,
        "tags": tags,
        # Empty: v1's Text2MusicDataset only reads a speaker file when this is empty (its test is
        # inverted), and a non-empty path leaves its embedding unset.
        "speaker_emb_path": "",
        "norm_lyrics": p.lyrics,
        "recaption": recaption,
    }


def _save_hf_dataset(directory: ExportDir, name: str, rows_jsonl: str, repeat: int) -> str:
    """The HF dataset convert2hf_dataset.py would save from this folder (its rows `repeat` times,
    as its --repeat_count does), saved under DIR/name; built through an Arrow cache, not in memory."""
    try:
        from datasets import Dataset
        from datasets.utils import logging as hf_logging
    except ImportError:
        raise ExportError(
            "--hf-dataset needs the `datasets` package (pip install datasets)"
        ) from None
    if os.path.getsize(rows_jsonl) == 0:
        raise ExportError("no samples to put in the HF dataset")
    if os.sep in name or name.startswith("."):
        raise ExportError(f"--hf-dataset {name!r}: a plain directory name inside --out")

    def generate(path: str, times: int) -> Iterator[dict[str, Any]]:
        for _ in range(times):
            with open(path, encoding="utf-8") as f:
                for line in f:
                    yield json.loads(line)

    path, tmp = directory.claim(name)
    cache = os.path.join(directory.out, f".tmp-{uuid.uuid4().hex[:32]}-hf-cache")
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        Dataset.from_generator(
            generate, gen_kwargs={"path": rows_jsonl, "times": repeat}, cache_dir=cache
        ).save_to_disk(tmp)
        if os.path.isdir(path):
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        if bars:
            hf_logging.enable_progress_bar()
        for leftover in (tmp, cache):
            if os.path.isdir(leftover):
                shutil.rmtree(leftover)
    return path
