"""ACE-Step v1 parity figures and import cost.

1. Parity: max |diff| of songmill's DiT (reference_forward), log_mel, DCAE (encode / decode),
   vocoder and the whole DCAE + vocoder decode against ACE-Step's own classes, fp32 on CPU: by
   default against the committed fixtures (tests/fixtures/acestep), or, with --reference PATH
   --ref-python PY, against fixtures regenerated now from that checkout in that interpreter
   (a venv with diffusers; see make_fixtures.py). Targets: DiT 1e-4, mel 1e-5, DCAE 1e-4,
   vocoder 1e-4. Printed next to each: the same comparison with the weights the reference did
   not run (another seed), the scale of a real mismatch.
2. Import cost: `import_release` of a random checkpoint at base widths (the release's
   ace_step_transformer with --dit-depth of its 24 blocks, the full lyric encoder and projectors;
   the full-size DCAE and vocoder) against the baseline of plain safetensors.load_file of the
   same files, same run: the ratio is what the key and shape checks and the songmill write add.

  .venv/bin/python benchmarks/bench_parity.py
  .venv/bin/python benchmarks/bench_parity.py --reference /path/to/ACE-Step --ref-python /tmp/refvenv/bin/python
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures" / "acestep"
sys.path.insert(0, str(FIXTURES))
# MKL's CPU-independent kernels (read when MKL starts): the fixtures' fp32 rounding, not this CPU's
os.environ.setdefault("MKL_CBWR", "COMPATIBLE")

import torch  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from seeded import seeded_state  # noqa: E402
from songmill.model import acestep  # noqa: E402
from songmill.model.mel import log_mel  # noqa: E402

TARGETS = {
    "dit": 1e-4,
    "mel": 1e-5,
    "dcae_encode": 1e-4,
    "dcae_decode": 1e-4,
    "vocoder": 1e-4,
    "decode_audio": 1e-4,
}


def _release(fixtures: Path, root: Path, seed_offset: int = 0) -> Path:
    manifest = json.loads((fixtures / "manifest.json").read_text())
    for part, directory in (
        ("dit", acestep.TRANSFORMER_DIR),
        ("dcae", acestep.DCAE_DIR),
        ("vocoder", acestep.VOCODER_DIR),
    ):
        target = root / directory
        target.mkdir(parents=True)
        (target / "config.json").write_text(json.dumps(manifest[part]["release_config"]))
        save_file(
            seeded_state(manifest[part]["shapes"], manifest["seed"] + seed_offset),
            str(target / acestep.WEIGHTS_FILE),
        )
    return root


@torch.no_grad()
def parity(fixtures: Path, release: Path) -> dict[str, float]:
    io = load_file(str(fixtures / "io.safetensors"))
    inputs = {k[len("dit.in.") :]: v for k, v in io.items() if k.startswith("dit.in.")}
    dit = acestep.load_dit(release)
    dcae = acestep.load_dcae(release)
    vocoder = acestep.load_vocoder(release)
    decoded = dcae.decode(io["dcae.out.latent"])
    stereo = torch.cat([vocoder(decoded[:, c]) for c in range(decoded.shape[1])], dim=1)[0]
    diffs = {
        "dit": acestep.reference_forward(dit, **inputs) - io["dit.out.sample"],
        "mel": log_mel(io["mel.in.audio"]) - io["mel.out.mel"],
        "dcae_encode": dcae.encode_audio(io["mel.in.audio"][None]) - io["dcae.out.latent"],
        "dcae_decode": decoded - io["dcae.out.log_mel"],
        "vocoder": vocoder(io["vocoder.in.mel"]) - io["vocoder.out.audio"],
        "decode_audio": stereo - io["dcae.out.audio"],
    }
    return {k: float(v.abs().max()) for k, v in diffs.items()}


def _base_release(root: Path, dit_depth: int) -> Path:
    from songmill.model.adamos import ADaMoSConfig, ADaMoSHiFiGAN
    from songmill.model.config import DiTConfig, preset
    from songmill.model.dcae import MusicDCAE
    from songmill.model.dit import LinearDiT

    torch.manual_seed(0)
    base = preset("base")
    cfg = DiTConfig.from_dict({**base.dit.to_dict(), "depth": dit_depth, "repa_block": 1})
    dit = LinearDiT(cfg)
    acestep.write_part(
        root / acestep.TRANSFORMER_DIR,
        acestep.dit_config_to_release(cfg),
        acestep.export_dit_tensors(dit),
    )
    del dit
    dcae = MusicDCAE(base.dcae)
    state = {
        k: v for k, v in dcae.state_dict().items() if k not in ("latent_shift", "latent_scale")
    }
    acestep.write_part(root / acestep.DCAE_DIR, acestep.dcae_config_to_release(base.dcae), state)
    vocoder_cfg = ADaMoSConfig()
    vocoder = ADaMoSHiFiGAN(vocoder_cfg)
    acestep.write_part(
        root / acestep.VOCODER_DIR,
        vocoder_cfg.to_dict(),
        {**vocoder.state_dict(), **acestep.vocoder_derived_buffers(vocoder_cfg)},
    )
    return root


def import_cost(dit_depth: int, repeats: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        release = _base_release(Path(tmp) / "release", dit_depth)
        files = sorted(release.glob(f"*/{acestep.WEIGHTS_FILE}"))
        size = sum(f.stat().st_size for f in files)
        baseline, copied, imported = [], [], []
        for i in range(repeats):
            start = time.perf_counter()
            for f in files:
                tensors = load_file(str(f))
                del tensors
            baseline.append(time.perf_counter() - start)
            start = time.perf_counter()
            for j, f in enumerate(files):  # the least any converter does: read every byte, write it
                save_file(load_file(str(f)), str(Path(tmp) / f"copy{i}-{j}.safetensors"))
            copied.append(time.perf_counter() - start)
            start = time.perf_counter()
            acestep.import_release(release, Path(tmp) / f"out{i}")
            imported.append(time.perf_counter() - start)
        return {
            "bytes": size,
            "baseline_s": min(baseline),
            "copy_s": min(copied),
            "import_s": min(imported),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--reference", help="a checkout of ace-step/ACE-Step to regenerate the fixtures from"
    )
    parser.add_argument(
        "--ref-python", default="python3", help="interpreter with ACE-Step's dependencies"
    )
    parser.add_argument(
        "--dit-depth",
        type=int,
        default=1,
        help="DiT blocks in the import benchmark (24 in the release)",
    )
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--skip-import", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)

    with tempfile.TemporaryDirectory() as tmp:
        fixtures = FIXTURES
        source = "committed fixtures"
        if args.reference:
            fixtures = Path(tmp) / "fixtures"
            subprocess.run(
                [
                    args.ref_python,
                    str(FIXTURES / "make_fixtures.py"),
                    "--reference",
                    args.reference,
                    "--out",
                    str(fixtures),
                ],
                check=True,
                stdout=subprocess.DEVNULL,
            )
            source = f"fixtures regenerated now from {args.reference}"
        same = parity(fixtures, _release(fixtures, Path(tmp) / "release"))
        other = parity(fixtures, _release(fixtures, Path(tmp) / "other", seed_offset=1))
    print(f"parity against ACE-Step's classes ({source}), fp32 CPU, max |diff|:")
    print(
        f"  {'part':<13} {'songmill':>10} {'target':>8} {'other weights (scale of a mismatch)':>38}"
    )
    for part, value in same.items():
        verdict = "ok" if value <= TARGETS[part] else "OVER"
        mismatch = "(no weights)" if part == "mel" else f"{other[part]:.3g}"
        print(f"  {part:<13} {value:>10.3g} {TARGETS[part]:>8.0e} {mismatch:>38}  {verdict}")
    if args.skip_import:
        return
    cost = import_cost(args.dit_depth, args.repeats)
    print(
        f"import of a random base-width checkpoint ({cost['bytes'] / 1e9:.2f} GB fp32; DiT depth {args.dit_depth}/24):"
    )
    print(
        f"  baseline safetensors.load_file of the same files (memory-mapped): {cost['baseline_s']:.3f} s"
    )
    print(f"  baseline load_file + save_file copy of the same files: {cost['copy_s']:.2f} s")
    print(
        f"  songmill model import-acestep (read + check + write): {cost['import_s']:.2f} s "
        f"= {cost['import_s'] / cost['baseline_s']:.0f} x load_file, {cost['import_s'] / cost['copy_s']:.2f} x copy"
    )


if __name__ == "__main__":
    main()
