"""Linear DiT, its attention, the condition encoders and CFG dropout."""

from __future__ import annotations

import pytest
import torch
from songmill.model.conditions import Conditions, concat_conditions, null_conditions
from songmill.model.config import DiTConfig, LyricEncoderConfig, preset
from songmill.model.dit import LinearDiT
from songmill.model.encoders import TextEncoder, build_lyric_encoder, cfg_dropout
from songmill.model.flow import add_noise, flow_matching_loss
from songmill.model.layers import relu_linear_attention, relu_quadratic_attention


def _tiny_dit(seed: int = 0, **overrides) -> LinearDiT:
    torch.manual_seed(seed)
    cfg = preset("tiny").dit
    dit = LinearDiT(DiTConfig.from_dict({**cfg.to_dict(), **overrides}))
    # the output layer starts at zero (DiT init); give it weights so outputs are informative
    torch.nn.init.normal_(dit.final_layer.linear.weight, std=0.02)
    torch.nn.init.normal_(dit.t_block[1].weight, std=0.02)
    return dit


def _conditions(
    batch: int = 2, seed: int = 0, text_len: int = 7, lyric_len: int = 12
) -> Conditions:
    generator = torch.Generator().manual_seed(seed)
    text_mask = torch.ones(batch, text_len, dtype=torch.bool)
    text_mask[-1, text_len - 2 :] = False
    lyrics_mask = torch.ones(batch, lyric_len, dtype=torch.bool)
    lyrics_mask[0, lyric_len - 3 :] = False
    return Conditions(
        text=torch.randn(batch, text_len, 32, generator=generator),
        text_mask=text_mask,
        lyrics=torch.randint(1, 260, (batch, lyric_len), generator=generator),
        lyrics_mask=lyrics_mask,
        speaker=torch.randn(batch, 512, generator=generator),
    )


def test_linear_attention_equals_quadratic_formula():
    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 50, 8, generator=generator) for _ in range(3))
    mask = torch.ones(2, 50, dtype=torch.bool)
    mask[1, 31:] = False
    assert torch.allclose(
        relu_linear_attention(q, k, v), relu_quadratic_attention(q, k, v), atol=1e-5
    )
    linear = relu_linear_attention(q, k, v, mask)
    assert torch.allclose(linear, relu_quadratic_attention(q, k, v, mask), atol=1e-5)
    # masking equals dropping the padded keys / values altogether
    short = relu_linear_attention(q[1:, :, :31], k[1:, :, :31], v[1:, :, :31])
    assert torch.allclose(linear[1:, :, :31], short, atol=1e-5)


def test_linear_attention_runs_in_fp32_under_autocast():
    q, k, v = (torch.randn(1, 2, 16, 8).bfloat16() for _ in range(3))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = relu_linear_attention(q, k, v)
    assert out.dtype == torch.float32


def test_forward_shapes_and_repa_heads():
    dit = _tiny_dit()
    x = torch.randn(2, 8, 16, 20)
    out = dit(x, torch.tensor([0.3, 0.9]), _conditions())
    assert out.sample.shape == x.shape
    assert set(out.repa) == {"mert", "mhubert"}
    assert out.repa["mert"].shape == (2, 20, 1024) and out.repa["mhubert"].shape == (2, 20, 768)
    assert dit(x, torch.tensor([0.3, 0.9]), _conditions(), return_repa=False).repa == {}


def test_strict_padding_keeps_padded_frames_out_of_real_frames():
    dit = _tiny_dit(strict_padding=True).eval()
    generator = torch.Generator().manual_seed(3)
    real = torch.randn(1, 8, 16, 13, generator=generator)
    cond = _conditions(batch=1)
    sigma = torch.tensor([0.5])
    with torch.no_grad():
        alone = dit(real, sigma, cond)
        garbage = torch.randn(1, 8, 16, 7, generator=generator) * 100
        padded = torch.cat([real, garbage], dim=-1)
        mask = torch.zeros(1, 20, dtype=torch.bool)
        mask[:, :13] = True
        masked = dit(padded, sigma, cond, frame_mask=mask)
        unmasked = dit(padded, sigma, cond)
    assert torch.allclose(masked.sample[..., :13], alone.sample, atol=1e-5)
    assert torch.all(masked.sample[..., 13:] == 0)
    for name in alone.repa:
        assert torch.allclose(masked.repa[name][:, :13], alone.repa[name], atol=1e-5)
    # without the mask the garbage does leak in: the test can fail
    assert not torch.allclose(unmasked.sample[..., :13], alone.sample, atol=1e-3)


def test_acestep_padding_masks_attention_only():
    """ACE-Step's own masking (the default, for parity): attention ignores padded frames, but the
    patch GroupNorm and the FFN's depthwise conv see them; outputs stay finite."""
    dit = _tiny_dit().eval()
    generator = torch.Generator().manual_seed(3)
    real = torch.randn(1, 8, 16, 13, generator=generator)
    padded = torch.cat([real, torch.randn(1, 8, 16, 7, generator=generator) * 100], dim=-1)
    mask = torch.zeros(1, 20, dtype=torch.bool)
    mask[:, :13] = True
    with torch.no_grad():
        alone = dit(real, torch.tensor([0.5]), _conditions(batch=1)).sample
        masked = dit(padded, torch.tensor([0.5]), _conditions(batch=1), frame_mask=mask).sample
    assert torch.isfinite(masked).all()
    assert not torch.allclose(masked[..., :13], alone, atol=1e-3)


def test_conditions_matter_and_padding_in_conditions_does_not():
    dit = _tiny_dit().eval()
    x = torch.randn(1, 8, 16, 10)
    sigma = torch.tensor([0.7])
    cond = _conditions(batch=1)
    with torch.no_grad():
        base = dit(x, sigma, cond).sample
        assert not torch.allclose(base, dit(x, sigma, null_conditions(cond)).sample, atol=1e-4)
        # batching with longer lyrics pads this sample's lyrics at the end: its output must not move
        longer = _conditions(batch=1, seed=5, text_len=7, lyric_len=20)
        batched = dit(torch.cat([x, x]), sigma.expand(2), concat_conditions([cond, longer])).sample
        assert torch.allclose(batched[:1], base, atol=1e-5)
        # padding the text moves the lyric positions; ACE-Step's rotary cross-attention sees that
        longer_text = _conditions(batch=1, seed=5, text_len=11, lyric_len=12)
        moved = dit(
            torch.cat([x, x]), sigma.expand(2), concat_conditions([cond, longer_text])
        ).sample
        assert not torch.allclose(moved[:1], base, atol=1e-5)
    # without rotary cross-attention (an option) any condition padding leaves the output alone
    plain = _tiny_dit(cross_attention_rope=False).eval()
    with torch.no_grad():
        alone = plain(x, sigma, cond).sample
        both = concat_conditions([cond, _conditions(batch=1, seed=5, text_len=11, lyric_len=20)])
        batched = plain(torch.cat([x, x]), sigma.expand(2), both).sample
    assert torch.allclose(batched[:1], alone, atol=1e-5)


def test_bf16_matches_fp32():
    dit = _tiny_dit().eval()
    x = torch.randn(2, 8, 16, 24)
    cond = _conditions()
    sigma = torch.tensor([0.2, 0.8])
    with torch.no_grad():
        ref = dit(x, sigma, cond)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = dit(x, sigma, cond)
    assert low.sample.dtype == torch.bfloat16
    rel = (low.sample.float() - ref.sample).abs().mean() / ref.sample.abs().mean()
    assert rel < 0.05, rel
    rel_repa = (low.repa["mert"].float() - ref.repa["mert"]).abs().mean() / ref.repa[
        "mert"
    ].abs().mean()
    assert rel_repa < 0.05, rel_repa


def test_runs_with_bf16_weights():
    dit = _tiny_dit().eval().to(torch.bfloat16)
    with torch.no_grad():
        out = dit(torch.randn(1, 8, 16, 12), torch.tensor([0.5]), _conditions(batch=1))
    assert out.sample.dtype == torch.bfloat16 and torch.isfinite(out.sample.float()).all()


def test_tiny_dit_overfits_one_batch():
    dit = _tiny_dit()
    generator = torch.Generator().manual_seed(0)
    x0 = torch.randn(2, 8, 16, 16, generator=generator)
    noise = torch.randn(2, 8, 16, 16, generator=generator)
    sigma = torch.tensor([0.3, 0.7])
    cond = _conditions()
    optimizer = torch.optim.AdamW(dit.parameters(), lr=5e-3)
    losses = []
    for _ in range(25):
        out = dit(add_noise(x0, noise, sigma), sigma, cond)
        loss = flow_matching_loss(out.sample, x0, noise)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.2 * losses[0], (losses[0], losses[-1])


def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    cfg = preset("tiny").dit
    plain = LinearDiT(cfg)
    cfg_ckpt = DiTConfig.from_dict({**cfg.to_dict(), "gradient_checkpointing": True})
    checkpointed = LinearDiT(cfg_ckpt)
    checkpointed.load_state_dict(plain.state_dict())
    x = torch.randn(1, 8, 16, 8)
    grads = []
    for model in (plain, checkpointed):
        model.train()
        model(x, torch.tensor([0.4]), _conditions(batch=1)).sample.square().mean().backward()
        grads.append(model.proj_in.early_conv_layers[0].weight.grad.clone())
    assert torch.allclose(grads[0], grads[1], atol=1e-6)


def test_espnet_lyric_encoder_masks_padding_and_knows_order():
    torch.manual_seed(0)
    encoder = build_lyric_encoder(LyricEncoderConfig(width=16, depth=2, heads=2)).eval()
    tokens = torch.randn(1, 9, 16)
    with torch.no_grad():
        alone = encoder(tokens)
        padded = encoder(
            torch.cat([tokens, torch.randn(1, 4, 16) * 50], dim=1),
            torch.tensor([[True] * 9 + [False] * 4]),
        )
        empty = encoder(torch.randn(1, 3, 16), torch.zeros(1, 3, dtype=torch.bool))
        reversed_order = encoder(tokens.flip(1)).flip(1)
    assert padded.shape == (1, 13, 16)
    assert torch.allclose(padded[:, :9], alone, atol=1e-5)
    assert torch.isfinite(empty).all()
    # relative positions: order matters
    assert not torch.allclose(reversed_order, alone, atol=1e-4)


def test_relative_position_shift_aligns_scores_with_key_positions():
    from songmill.model.conformer import rel_shift

    # scores[i, r] for relative position p = T-1-r; after the shift, column j holds p = i - j
    length = 5
    relative = torch.arange(length - 1, -length, -1).float()
    scores = relative.expand(1, 1, length, 2 * length - 1)
    shifted = rel_shift(scores.contiguous())
    rows = torch.arange(length)[:, None]
    assert torch.equal(shifted[0, 0], (rows - torch.arange(length)[None]).float())


def test_macaron_lyric_encoder_option_shapes_and_masking():
    torch.manual_seed(0)
    cfg = LyricEncoderConfig(
        kind="macaron-rope", vocab_size=50, width=16, depth=2, heads=2, conv_kernel=5
    )
    embed = torch.nn.Embedding(50, 16)
    core = build_lyric_encoder(cfg).eval()

    def encoder(ids, mask=None):
        return core(embed(ids), mask)

    ids = torch.randint(1, 50, (1, 9))
    with torch.no_grad():
        alone = encoder(ids)
        padded_ids = torch.cat([ids, torch.randint(1, 50, (1, 4))], dim=1)
        mask = torch.tensor([[True] * 9 + [False] * 4])
        padded = encoder(padded_ids, mask)
        empty = encoder(torch.zeros(1, 3, dtype=torch.long), torch.zeros(1, 3, dtype=torch.bool))
    assert padded.shape == (1, 13, 16)
    assert torch.allclose(padded[:, :9], alone, atol=1e-5)
    assert torch.all(padded[:, 9:] == 0) and torch.isfinite(empty).all()
    # relative positions: the same token pair at another offset gives the same attention logits,
    # so shifting the whole sequence right by padding at the front is not needed; check order matters
    with torch.no_grad():
        assert not torch.allclose(encoder(ids.flip(1)).flip(1), alone, atol=1e-4)


def test_base_lyric_encoder_and_dit_numbers():
    cfg = preset("base")
    assert (cfg.lyrics.depth, cfg.lyrics.width, cfg.lyrics.heads, cfg.lyrics.kind) == (
        6,
        1024,
        16,
        "espnet",
    )
    assert cfg.lyrics.dropout == 0.1 and cfg.lyrics.vocab_size == 6693
    dit = cfg.dit
    assert (dit.depth, dit.width, dit.heads, dit.head_dim, dit.ffn_ratio) == (
        24,
        2560,
        20,
        128,
        2.5,
    )
    # REPA after block index 8 (9 blocks), projectors 2 x width wide, as ACE-Step's config
    assert dit.repa_block == 9 and dit.repa_targets == {"mert": 1024, "mhubert": 768}
    assert (dit.rope_theta, dit.linear_attention_eps, dit.patch_embed) == (1e6, 1e-15, "conv")
    with torch.device("meta"):
        model = LinearDiT(dit)
    assert model.transformer_blocks[0].ff.inverted_conv.conv.out_channels == 2 * 6400
    assert model.projectors[0][0].out_features == 5120
    lyric_params = (
        sum(p.numel() for p in model.lyric_encoder.parameters()) + model.lyric_embs.weight.numel()
    )
    assert 88e6 < lyric_params < 91e6, lyric_params


def test_tiny_text_encoder_is_frozen_deterministic_and_masks_padding():
    encoder = TextEncoder.tiny_random()
    states, mask = encoder(["upbeat synth pop", "slow piano ballad with strings and choir"])
    assert states.shape[0] == 2 and states.shape[2] == 32 and states.dtype == torch.float32
    assert mask.dtype == torch.bool and mask[0].sum() < mask[1].sum()
    assert not any(p.requires_grad for p in encoder.model.parameters())
    again, _ = TextEncoder.tiny_random()(
        ["upbeat synth pop", "slow piano ballad with strings and choir"]
    )
    assert torch.equal(states, again)


def test_text_encoder_from_pretrained_local_directory(tmp_path):
    encoder = TextEncoder.tiny_random()
    encoder.model.save_pretrained(tmp_path)
    encoder.tokenizer.save_pretrained(tmp_path)
    loaded = TextEncoder.from_pretrained(tmp_path, max_length=64)
    prompts = ["lofi hip hop", "death metal"]
    assert torch.equal(loaded(prompts)[0], encoder(prompts)[0])
    assert not list(tmp_path.glob("*.bin"))  # saved and read as safetensors


def test_text_encoder_missing_weights_raise_stage_unavailable(tmp_path):
    from songmill.model.weights import WeightsMissing

    with pytest.raises(WeightsMissing, match="umt5"):
        TextEncoder.from_pretrained(tmp_path / "absent")
    # config and tokenizer present, weights missing: same answer
    encoder = TextEncoder.tiny_random()
    encoder.model.config.save_pretrained(tmp_path)
    encoder.tokenizer.save_pretrained(tmp_path)
    with pytest.raises(WeightsMissing, match="umt5"):
        TextEncoder.from_pretrained(tmp_path)


def test_cfg_dropout_rates_and_semantics():
    batch = 4000
    cond = Conditions(
        text=torch.ones(batch, 2, 3),
        text_mask=torch.ones(batch, 2, dtype=torch.bool),
        lyrics=torch.ones(batch, 4, dtype=torch.long),
        lyrics_mask=torch.ones(batch, 4, dtype=torch.bool),
        speaker=torch.ones(batch, 512),
    )
    dropped = cfg_dropout(cond, generator=torch.Generator().manual_seed(0))
    text_rate = (dropped.text.sum(dim=(1, 2)) == 0).float().mean().item()
    lyric_rate = (dropped.lyrics.sum(dim=1) == 0).float().mean().item()
    speaker_rate = (dropped.speaker.sum(dim=1) == 0).float().mean().item()
    assert text_rate == pytest.approx(0.15, abs=0.03)
    assert lyric_rate == pytest.approx(0.15, abs=0.03)
    assert speaker_rate == pytest.approx(0.5, abs=0.04)
    # a dropped condition is all or nothing per sample, masks untouched
    assert set(dropped.text.sum(dim=(1, 2)).unique().tolist()) <= {0.0, 6.0}
    assert torch.equal(dropped.text_mask, cond.text_mask)
    again = cfg_dropout(cond, generator=torch.Generator().manual_seed(0))
    assert torch.equal(again.speaker, dropped.speaker)


def test_earlier_architecture_choices_stay_available_as_options():
    """songmill's pre-parity choices (one Linear patch embedding, rotate-half RoPE at theta 1e4,
    no RoPE in cross-attention, an extra cross-attention norm, (channel, row) output, the macaron
    lyric Conformer) build and run; an unknown choice is refused."""
    x = torch.randn(1, 8, 16, 10)
    sigma = torch.tensor([0.4])
    cond = _conditions(batch=1)
    lyrics = {**preset("tiny").lyrics.to_dict(), "kind": "macaron-rope"}
    legacy = _tiny_dit(
        patch_embed="linear",
        rope_layout="half",
        rope_theta=1e4,
        cross_attention_rope=False,
        cross_attention_norm=True,
        output_order="channel_row",
        linear_attention_eps=1e-6,
        lyrics=lyrics,
    ).eval()
    assert isinstance(legacy.proj_in.linear, torch.nn.Linear)
    assert legacy.transformer_blocks[0].norm_cross is not None
    with torch.no_grad():
        out = legacy(x, sigma, cond).sample
    assert out.shape == x.shape and torch.isfinite(out).all()
    with pytest.raises(ValueError, match="rope layout"):
        bad = _tiny_dit(rope_layout="spiral").eval()
        with torch.no_grad():
            bad(x, sigma, cond)
