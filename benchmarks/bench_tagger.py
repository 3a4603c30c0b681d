"""The musicnn tagger (caption stage, `tags` backend) on real productions: agreement of its tags
with what LMMS demo projects say about themselves, and x realtime per core of the bare tagger
against the caption stage that wraps it, in the same run.

    # render the LMMS demos once (about 30 s each on two cores):
    for f in /usr/share/lmms/projects/demos/*.mmp* /usr/share/lmms/projects/demos/*/*.mmp*; do
        n=$(basename "${f%.*}"); QT_QPA_PLATFORM=offscreen lmms --allowroot -r "$f" -o "/tmp/lmms/$n.wav" -f wav
    done
    .venv/bin/python benchmarks/bench_tagger.py --renders /tmp/lmms [--seconds 60]

What a project says: its instrument plug-ins (synthesisers: TripleOscillator, ZynAddSubFX, LB302,
SID, BitInvader, Kicker...; AudioFileProcessor with samples from drums/ or beats/) and a genre in
its name where there is one (House, Reggae, 80s, C64). Agreement: the tagger's top 5 tags (MTT
and MSD, by probability) include a tag of the expected family. Baselines in the same run: the
same top-5 rule with 5 tags drawn at random (mean of 2000 draws), and one constant top 5 (the
tags most often in the tagger's own top 5 over all projects).
"""

from __future__ import annotations

import argparse
import glob
import os
import re
import sys
import time
import zlib
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from songmill.annotate.audio import decode, to_mono_resampled  # noqa: E402
from songmill.annotate.base import Track  # noqa: E402
from songmill.annotate.caption import CaptionConfig, CaptionStage  # noqa: E402
from songmill.annotate.tagger import MusicTagger  # noqa: E402
from songmill.model.musicnn import MSD_LABELS, MTT_LABELS  # noqa: E402

SYNTHS = {
    "tripleoscillator",
    "zynaddsubfx",
    "lb302",
    "sid",
    "bitinvader",
    "kicker",
    "monstro",
    "watsyn",
    "organic",
    "nes",
    "opl2",
    "sfxr",
}
ELECTRONIC = {
    "electronic",
    "techno",
    "electro",
    "electronica",
    "dance",
    "house",
    "synth",
    "beat",
    "beats",
    "ambient",
    "experimental",
    "trance",
}
DRUMS = {"drums", "beat", "beats", "techno", "dance"}
NAME_GENRES = {
    "house": {"house", "dance", "electronic"},
    "reggae": {"reggae"},
    "80s": {"80s"},
    "c64": {"electronic", "synth", "electro"},
}
DEMOS = "/usr/share/lmms/projects/demos"


def project_facts(path: str) -> dict:
    raw = open(path, "rb").read()
    xml = (
        zlib.decompress(raw[4:]).decode("utf-8", "replace")
        if path.endswith("z")
        else raw.decode("utf-8", "replace")
    )
    plugins = Counter(re.findall(r'<instrument name="([^"]+)"', xml))
    samples = re.findall(r'src="([^"]+)"', xml)
    expected: dict[str, set[str]] = {}
    if any(p in SYNTHS for p in plugins):
        expected["synth plug-ins"] = ELECTRONIC
    if plugins.get("kicker") or any(s.startswith(("drums/", "beats/")) for s in samples):
        expected["drum samples / Kicker"] = DRUMS
    name = os.path.basename(path).lower()
    for word, tags in NAME_GENRES.items():
        if word in name.replace("progressivehouse", "house"):
            expected[f"name: {word}"] = tags
    return {"plugins": dict(plugins), "expected": expected}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--renders", default="/tmp/lmms", help="folder of <project>.wav renders")
    parser.add_argument(
        "--seconds", type=float, default=60.0, help="tag this much from the middle of each render"
    )
    args = parser.parse_args()
    projects = sorted(glob.glob(f"{DEMOS}/*.mmp*") + glob.glob(f"{DEMOS}/*/*.mmp*"))
    items = []
    for project in projects:
        wav = os.path.join(args.renders, os.path.basename(project).rsplit(".", 1)[0] + ".wav")
        if os.path.exists(wav):
            items.append((project, wav))
    if not items:
        raise SystemExit(f"no renders in {args.renders}: see this script's docstring")
    tagger = MusicTagger.load()
    import torch

    threads = torch.get_num_threads()
    audios, audio_s = [], 0.0
    for _, wav in items:
        samples, sr = decode(wav)
        mono = to_mono_resampled(samples, sr, 16000)
        n = int(args.seconds * 16000)
        start = max(0, (mono.size - n) // 2)
        audios.append(np.ascontiguousarray(mono[start : start + n], np.float32))
        audio_s += audios[-1].size / 16000
    start = time.perf_counter()
    results = [tagger.tag(a) for a in audios]
    bare_s = time.perf_counter() - start
    import soundfile as sf

    clips = []
    for audio in audios:  # the same excerpts, through the stage (which decodes them itself)
        clips.append(f"/tmp/bench-tagger-{os.getpid()}-{len(clips)}.wav")
        sf.write(clips[-1], audio, 16000)
    stage = CaptionStage(CaptionConfig(backend="tags"))
    stage.setup()
    start = time.perf_counter()
    rows = stage.process(
        [
            Track({"track_id": str(i), "uri": c, "duration_s": args.seconds})
            for i, c in enumerate(clips)
        ]
    )
    stage_s = time.perf_counter() - start
    for clip in clips:
        os.remove(clip)
    print(
        f"{len(items)} LMMS demo renders, {audio_s:.0f} s tagged ({args.seconds:.0f} s from the middle of each), {threads} torch threads"
    )
    print(f"bare tagger (mel + MTT + MSD musicnn): {audio_s / bare_s / threads:.0f}x realtime per core; "
          f"caption stage (tags backend: decode, tagger, recaption): {audio_s / stage_s / threads:.0f}x per core; "
          f"stage overhead {100 * (stage_s / bare_s - 1):+.0f} %")  # fmt: skip

    tops = [[t for t, _ in r.top(5)] for r in results]
    constant = [t for t, _ in Counter(t for top in tops for t in top).most_common(5)]
    vocabulary = sorted({x.lower() for x in MTT_LABELS + MSD_LABELS})
    rng = np.random.default_rng(0)
    print("\nproject | plug-ins | says | top 5 tags | agrees | caption genres / instruments")
    print("---|---|---|---|---|---")
    hits = {"tagger": [], "constant top 5": [], "random 5 tags": []}
    for (project, _), top, row in zip(items, tops, rows, strict=True):
        facts = project_facts(project)
        for family in facts["expected"].values():
            hits["tagger"].append(bool(set(top) & family))
            hits["constant top 5"].append(bool(set(constant) & family))
            draws = [
                bool(set(rng.choice(vocabulary, 5, replace=False)) & family) for _ in range(2000)
            ]
            hits["random 5 tags"].append(float(np.mean(draws)))
        agree = (
            ", ".join(
                f"{c}: {'yes' if set(top) & f else 'no'}" for c, f in facts["expected"].items()
            )
            or "-"
        )
        plugins = ", ".join(f"{k} x{v}" for k, v in facts["plugins"].items())
        print(f"{os.path.basename(project)} | {plugins} | {', '.join(facts['expected'])} | {', '.join(top)} | {agree} | "
              f"{', '.join(row['genres'])} / {', '.join(row['instruments'])}")  # fmt: skip
    print(
        "\nagreement with what the projects say (claims checked: " + str(len(hits["tagger"])) + ")"
    )
    for name, values in hits.items():
        print(f"  {name}: {np.mean(values):.2f}")
    print(f"  (constant top 5: {', '.join(constant)})")


if __name__ == "__main__":
    main()
