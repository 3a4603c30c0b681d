"""`songmill model import-acestep` / `export-acestep`: the release layout in and out.

The release directory is rebuilt from the committed fixtures (weights ACE-Step's own classes ran
with, see tests/fixtures/acestep); make_fixtures.py --check-export loads an export into those
classes, and here the exported tensors are compared with the ones they ran.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from songmill.flows.cli import main
from songmill.model import acestep
from songmill.model.weights import WeightsMismatch

sys.path.insert(0, str(Path(__file__).parent / "fixtures" / "acestep"))
from release_layout import PARTS, fixture_io, load_manifest, release_dir  # noqa: E402

WEIGHTS = "diffusion_pytorch_model.safetensors"


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    root = tmp_path_factory.mktemp("acestep")
    release = release_dir(root / "release")
    written = acestep.import_release(release, root / "songmill")
    return release, root / "songmill", written


def _dit_inputs():
    io = fixture_io()
    return io, {k[len("dit.in.") :]: v for k, v in io.items() if k.startswith("dit.in.")}


def test_import_writes_checkpoints_the_rest_of_songmill_loads(imported):
    from songmill.annotate.features import load_dcae_for_features
    from songmill.model.mel import MelSpectrogram, load_vocoder
    from songmill.train.export import load_dit

    _, out, written = imported
    assert set(written) == {"dit", "dcae", "vocoder"}
    io, inputs = _dit_inputs()
    # generate / LoRA training / merge read a DiT checkpoint through train.export.load_dit
    dit, trainer = load_dit(str(out / "dit"))
    assert trainer["step"] == 0 and trainer["lora"] is False
    assert trainer["conditioning"]["dcae_checkpoint"] == str((out / "dcae").resolve())
    with torch.no_grad():
        sample = acestep.reference_forward(dit, **inputs)
    assert (sample - io["dit.out.sample"]).abs().max() <= 1e-4
    # the features stage's DCAE loader takes the imported dcae/ directory
    dcae, _, _ = load_dcae_for_features(str(out / "dcae"), "cpu")
    scaled = MelSpectrogram().scale(fixture_io()["mel.out.mel"][None])
    with torch.no_grad():
        assert (dcae.encode(scaled) - io["dcae.out.latent"]).abs().max() <= 1e-4
    # the imported vocoder is what load_vocoder gives for that directory (not Griffin-Lim)
    vocoder = load_vocoder(str(out / "vocoder"))
    assert type(vocoder).__name__ == "ADaMoSVocoder"
    audio = vocoder(MelSpectrogram().scale(io["vocoder.in.mel"][:, None]))
    assert (audio[0] - io["vocoder.out.audio"][0]).abs().max() <= 1e-4


def test_import_export_import_round_trip_is_exact(imported, tmp_path):
    release, out, _ = imported
    result = acestep.export_release(out / "dit", tmp_path / "export")
    assert set(result["written"]) == {"transformer", "dcae", "vocoder"}
    for part in PARTS.values():
        original = load_file(str(release / part / WEIGHTS))
        exported = load_file(str(tmp_path / "export" / part / WEIGHTS))
        if part == "music_vocoder":  # the release also stores its mel front end's constants
            assert {"mel_transform.spectrogram.window", "mel_transform.mel_scale.fb"} <= set(
                exported
            )
            exported = {k: v for k, v in exported.items() if not k.startswith("mel_transform.")}
        assert original.keys() == exported.keys(), part
        assert all(torch.equal(original[k], exported[k]) for k in original), part
    # the configs come back as the release had them (unused fields included)
    for part in PARTS.values():
        assert json.loads((tmp_path / "export" / part / "config.json").read_text()) == json.loads(
            (release / part / "config.json").read_text()
        ), part
    # and importing the export gives the same songmill files again
    again = acestep.import_release(tmp_path / "export", tmp_path / "again")
    for part, name in (("dit", "dit"), ("dcae", "dcae"), ("vocoder", "vocoder")):
        first = load_file(str(out / part / f"{name}.safetensors"))
        second = load_file(str(Path(again[part]) / f"{name}.safetensors"))
        assert first.keys() == second.keys() and all(
            torch.equal(first[k], second[k]) for k in first
        )
        assert json.loads((out / part / f"{name}.json").read_text()) == json.loads(
            (Path(again[part]) / f"{name}.json").read_text()
        )


def test_lora_exports_in_acestep_peft_naming(imported, tmp_path):
    from songmill.train.export import load_dit
    from songmill.train.lora import add_lora, load_adapter, save_adapter

    _, out, _ = imported
    dit, _ = load_dit(str(out / "dit"))
    targets = [
        "speaker_embedder",
        "linear_q",
        "linear_k",
        "linear_v",
        "to_q",
        "to_k",
        "to_v",
        "to_out.0",
    ]
    dit = add_lora(dit, rank=2, alpha=4.0, targets=targets)
    torch.manual_seed(0)
    for name, param in dit.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.1)
    run = tmp_path / "lora-run"
    save_adapter(dit, str(run), 2, 4.0, targets)
    spec = json.loads((run / "dit_lora.json").read_text())
    (run / "dit_lora.json").write_text(json.dumps({**spec, "base_checkpoint": str(out / "dit")}))
    (run / "trainer.json").write_text(json.dumps({"step": 3, "lora": True, "conditioning": {}}))
    result = acestep.export_release(run, tmp_path / "export")
    lora_file = tmp_path / "export" / "lora" / "pytorch_lora_weights.safetensors"
    adapters = load_file(str(lora_file))
    # diffusers' save_lora_adapter naming, which ACE-Step's pipeline.load_lora reads
    assert "transformer_blocks.0.attn.to_q.lora_A.weight" in adapters
    assert "lyric_encoder.encoders.0.self_attn.linear_q.lora_B.weight" in adapters
    assert "speaker_embedder.lora_A.weight" in adapters
    from safetensors import safe_open

    with safe_open(str(lora_file), "pt") as f:
        metadata = json.loads(f.metadata()["lora_adapter_metadata"])
    assert (
        metadata["r"] == 2
        and metadata["lora_alpha"] == 4.0
        and "to_out.0" in metadata["target_modules"]
    )
    assert result["written"]["transformer"].endswith("ace_step_transformer")
    # the adapters load back into the base and change its output
    io, inputs = _dit_inputs()
    base, _ = load_dit(str(out / "dit"))
    adapted = load_adapter(load_dit(str(out / "dit"))[0], str(run))
    with torch.no_grad():
        a = acestep.reference_forward(base, **inputs)
        b = acestep.reference_forward(adapted.eval(), **inputs)
    assert (a - b).abs().max() > 1e-3


def test_export_without_the_unused_projections_writes_zeros(imported, tmp_path):
    import shutil

    _, out, _ = imported
    copy = tmp_path / "dit"
    shutil.copytree(out / "dit", copy)
    # as a DiT trained in songmill: no kept release config, no unused projections
    (copy / acestep.EXTRAS_FILE).unlink()
    (copy / acestep.RELEASE_CONFIG_FILE).unlink()
    result = acestep.export_release(copy, tmp_path / "export")
    assert any("zeros" in note for note in result["notes"])
    tensors = load_file(str(tmp_path / "export" / "ace_step_transformer" / WEIGHTS))
    assert torch.all(tensors["transformer_blocks.0.cross_attn.add_q_proj.weight"] == 0)
    # the config written from songmill's DiTConfig carries every field the reference reads
    expected = load_manifest()["dit"]["release_config"]
    config = json.loads((tmp_path / "export" / "ace_step_transformer" / "config.json").read_text())
    assert {k: config[k] for k in expected} == expected


def _broken_release(tmp_path: Path, edit) -> Path:
    release = release_dir(tmp_path / "release", parts=("dit",))
    weights = release / "ace_step_transformer" / WEIGHTS
    tensors = load_file(str(weights))
    edit(tensors)
    save_file(tensors, str(weights))
    return release


def test_import_names_missing_unexpected_and_misshaped_tensors(tmp_path):
    def edit(tensors):
        del tensors["transformer_blocks.1.attn.to_v.weight"]
        tensors["transformer_blocks.0.attn.extra.weight"] = torch.zeros(2)
        tensors["final_layer.linear.bias"] = torch.zeros(3)

    release = _broken_release(tmp_path, edit)
    with pytest.raises(WeightsMismatch) as err:
        acestep.import_release(release, tmp_path / "out")
    message = str(err.value)
    assert "missing: transformer_blocks.1.attn.to_v.weight" in message
    assert "unexpected: transformer_blocks.0.attn.extra.weight" in message
    assert "final_layer.linear.bias: file (3,) vs model (128,)" in message
    assert not (tmp_path / "out" / "dit").exists()  # nothing half-written


def test_import_refuses_pickles(tmp_path):
    part = tmp_path / "release" / "ace_step_transformer"
    part.mkdir(parents=True)
    (part / "config.json").write_text("{}")
    (part / "diffusion_pytorch_model.bin").write_bytes(b"\x80\x04not really")
    with pytest.raises(acestep.ReleaseFormatError, match="pickle"):
        acestep.import_release(tmp_path / "release", tmp_path / "out")


def test_cli_import_export_and_one_line_errors(tmp_path, capsys):
    release = release_dir(tmp_path / "release", parts=("dit",))
    assert main(["model", "import-acestep", str(release), "--out", str(tmp_path / "out")]) == 0
    assert "dit:" in capsys.readouterr().out
    listing = sorted(p.name for p in (tmp_path / "out" / "dit").iterdir())
    # re-running replaces, never adds
    assert main(["model", "import-acestep", str(release), "--out", str(tmp_path / "out")]) == 0
    assert sorted(p.name for p in (tmp_path / "out" / "dit").iterdir()) == listing
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["dit"]
    assert (
        main(
            [
                "model",
                "export-acestep",
                str(tmp_path / "out" / "dit"),
                "--out",
                str(tmp_path / "exp"),
            ]
        )
        == 0
    )
    assert (tmp_path / "exp" / "ace_step_transformer" / WEIGHTS).exists()
    capsys.readouterr()
    assert (
        main(["model", "import-acestep", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x")])
        != 0
    )
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not a directory" in err


def test_generate_from_the_imported_release_decodes_with_its_vocoder(tmp_path):
    """A release with all four parts (a tiny random umT5 stands in for umt5-base) -> import ->
    `generate`: the DiT, DCAE, text encoder and ADaMoS vocoder the import wrote are the ones used."""
    import soundfile as sf
    from songmill.model.config import TextEncoderConfig
    from songmill.model.encoders import TextEncoder
    from songmill.train.export import generate_from_checkpoint

    release = release_dir(tmp_path / "release")
    text = TextEncoder.tiny_random(
        TextEncoderConfig(kind="tiny-random", path="", d_model=768, max_length=32)
    )
    text.model.save_pretrained(release / "umt5-base")
    text.tokenizer.save_pretrained(release / "umt5-base")
    written = acestep.import_release(release, tmp_path / "songmill")
    assert set(written) == {"dit", "dcae", "vocoder", "text_encoder"}
    conditioning = json.loads((Path(written["dit"]) / "trainer.json").read_text())["conditioning"]
    assert conditioning["vocoder"] == str(Path(written["vocoder"]).resolve())
    out = generate_from_checkpoint(
        written["dit"], "lofi piano", None, 0.5, str(tmp_path / "a.wav"), steps=2
    )
    audio, rate = sf.read(out)
    assert rate == 44100 and audio.shape == (22050, 2) and abs(audio).max() > 0


def _voicebpe_vocab(path: Path) -> Path:
    """A small vocabulary in VoiceBPE's file format (specials as added tokens, Whitespace
    pre-tokenizer) standing in for ACE-Step's vocab.json, which stays with ACE-Step's code."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = [
        "[STOP]",
        "[UNK]",
        "[SPACE]",
        "[en]",
        "[zh-cn]",
        "hello",
        "world",
        "ni3hao3",
        "[chorus]",
    ]
    vocab = {w: i for i, w in enumerate(words)} | {"[START]": 261}  # VoiceBPE's [START] id
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.add_special_tokens([w for w in [*words, "[START]"] if w.startswith("[")])
    tokenizer.save(str(path))
    return path


def test_voicebpe_lyric_tokenizer_follows_acestep_layout(tmp_path):
    from songmill.model.lyric_tokens import LyricTokenizer

    tokenizer = LyricTokenizer.load(f"voicebpe:{_voicebpe_vocab(tmp_path / 'vocab.json')}")
    ids = tokenizer.encode_ids('[Chorus]\nHello  "World"\n\n你好')
    # [START]; "[en][chorus]" [SPACE]; "[en]hello[SPACE]world" [SPACE]; empty line [SPACE];
    # "[zh-cn]ni3hao3" (pinyin with tones) [SPACE]
    assert ids[0] == 261
    assert ids[1:] == [3, 8, 2, 3, 5, 2, 6, 2, 2, 4, 7, 2]
    # the scheme survives the trip through a checkpoint's conditioning (to_json / from_json)
    again = LyricTokenizer.from_json(tokenizer.to_json())
    assert (
        again.encode_ids("hello world")
        == tokenizer.encode_ids("hello world")
        == [261, 3, 5, 2, 6, 2]
    )
    assert tokenizer.name.startswith("voicebpe-")
    # read as a plain tokenizer.json (how a checkpoint's conditioning embeds the features'
    # tokenizer file), ACE-Step's vocabulary is still recognised by its [START] / [SPACE] ids
    raw = (tmp_path / "vocab.json").read_text()
    assert LyricTokenizer.from_json(raw).encode_ids("hello world") == [261, 3, 5, 2, 6, 2]
    assert LyricTokenizer.load(str(tmp_path / "vocab.json")).scheme == "voicebpe"
    with pytest.raises(FileNotFoundError, match="vocab.json"):
        LyricTokenizer.load(f"voicebpe:{tmp_path / 'missing' / 'vocab.json'}")
