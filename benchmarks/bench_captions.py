"""Caption throughput: captions per second and the memory peak, batched vs one prompt at a time.

Runs CaptionStage.describe (the production path: processor, batched greedy `generate`, decoding)
over `--tracks` 30 s clips and every prompt style, first with batch 1 (the same-run baseline),
then with `--batch` (default 8). bf16 on CUDA.

Weights: `--model DIR` is a downloaded Qwen2-Audio-7B-Instruct / Qwen2.5-Omni folder (`songmill
models fetch qwen2-audio-7b-instruct`). Without one, `--size full` builds the release-size
Qwen2-Audio (the default Qwen2AudioConfig: Whisper-large encoder + 7B Qwen2) with random weights
and a byte-level tokenizer made here; random weights rarely stop early, so every prompt decodes
its full token budget (a worst case for tokens per caption). `--size tiny` is a seconds-long check
that the script runs (CPU). The GPU figures need a GPU machine; none was lent when this was written.

    .venv/bin/python benchmarks/bench_captions.py --size full --batch 8 --tracks 16 [--model DIR]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SPECIALS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|AUDIO|>",
    "<|audio_bos|>",
    "<|audio_eos|>",
]


def byte_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=1000,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(
        ["genre: rock, pop\nmood: happy\ninstruments: guitar, drums. Describe this music."] * 50,
        trainer=trainer,
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=SPECIALS[1:],
    )


def random_qwen2_audio(folder: str, size: str, device: str) -> None:
    import torch
    from transformers import (
        Qwen2AudioConfig,
        Qwen2AudioForConditionalGeneration,
        Qwen2AudioProcessor,
        WhisperFeatureExtractor,
    )

    tok = byte_tokenizer()
    if size == "tiny":
        config = Qwen2AudioConfig(
            audio_config=dict(d_model=32, encoder_layers=1, encoder_attention_heads=2, encoder_ffn_dim=64, num_mel_bins=128),
            text_config=dict(model_type="qwen2", vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                             num_attention_heads=2, num_key_value_heads=1),
        )  # fmt: skip
    else:
        config = Qwen2AudioConfig()  # the release's sizes
    config.audio_token_index = tok.convert_tokens_to_ids("<|AUDIO|>")
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    with torch.device(device):
        model = Qwen2AudioForConditionalGeneration(config).to(dtype)
    model.save_pretrained(folder)
    Qwen2AudioProcessor(
        feature_extractor=WhisperFeatureExtractor(feature_size=128), tokenizer=tok
    ).save_pretrained(folder)
    del model


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="")
    parser.add_argument("--backend", default="qwen2-audio", choices=["qwen2-audio", "qwen2.5-omni"])
    parser.add_argument("--size", default="full", choices=["full", "tiny"])
    parser.add_argument("--tracks", type=int, default=16)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument(
        "--token-scale", type=float, default=1.0, help="scale of each style's max_new_tokens"
    )
    args = parser.parse_args(argv)

    import torch
    from songmill.annotate.audio import to_mono_resampled
    from songmill.annotate.caption import CaptionConfig, CaptionStage
    from songmill.testaudio.synth import STYLES, render_track

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu" and args.size == "full" and not args.model:
        print(
            "note: no GPU here; the full-size run is meant for a GPU machine (it will be very slow on CPU)"
        )
    clips = [
        to_mono_resampled(
            render_track(90 + 5 * i, "C", "major", 30.0, seed=i, style=STYLES[i % len(STYLES)]),
            44100,
            16000,
        )
        for i in range(args.tracks)
    ]
    with tempfile.TemporaryDirectory() as tmp:
        path = args.model
        if not path:
            random_qwen2_audio(tmp, args.size, device)
            path = tmp
        stage = CaptionStage(
            CaptionConfig(
                backend=args.backend,
                model=path,
                batch_size=1,
                max_new_tokens_scale=args.token_scale,
            )
        )
        stage.setup()
        results = {}
        for batch in (1, args.batch):
            stage.config.batch_size = batch
            stage.describe(clips[:1])  # warm-up
            if device == "cuda":
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            started = time.perf_counter()
            stage.describe(clips if batch > 1 else clips[: max(1, args.tracks // 4)])
            if device == "cuda":
                torch.cuda.synchronize()
            wall = time.perf_counter() - started
            n = len(clips) if batch > 1 else max(1, args.tracks // 4)
            peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else float("nan")
            results[batch] = (n * len(stage.config.styles) / wall, n / wall, peak)
    print(
        f"{args.backend} ({'weights ' + args.model if args.model else args.size + ' random'}), {device}, {len(stage.config.styles)} styles per track, 30 s clips"
    )
    for batch, (captions, tracks, peak) in results.items():
        print(
            f"batch {batch:>2}: {captions:7.2f} captions/s  {tracks:6.2f} tracks/s  peak {peak:.1f} GiB"
        )
    print(f"ratio batch {args.batch} / batch 1: {results[args.batch][0] / results[1][0]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
