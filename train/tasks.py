"""What is specific to each network: how to build it, its data, its loss and its samples.

The loop (train/loop.py) is the same for both: it asks a task for `model` (the network the
optimizer updates), `dataset` / `collate`, `loss(model, batch, generator)` and `validate(...)`.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.nn.functional as F
from songmill.data_schema.manifest import features_count, read_manifest
from songmill.train.config import TrainConfig
from songmill.train.data import (
    FeatureDataset,
    MelCropDataset,
    collate_features,
    collate_mel,
)
from songmill.train.objective import combine_repa, drop_conditions, masked_mean, repa_loss
from torch import nn

CONDITIONING_FILE = "conditioning.json"


# -- DiT ----------------------------------------------------------------------------------------


class TrainTask:
    """What the loop (train/loop.py) trains: a model, its dataset and collate, its loss, its
    validation, and an optional step of its own after each optimizer step."""

    name: str

    def loss(
        self,
        model: nn.Module,
        batch: dict[str, Any],
        generator: torch.Generator,
        device: torch.device,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        raise NotImplementedError

    def validate(
        self, model: nn.Module, sample_dir: str, step: int, device: torch.device
    ) -> dict[str, str]:
        raise NotImplementedError

    def after_step(self, device: torch.device) -> dict[str, float]:
        """Work after each optimizer step (the DCAE's discriminator update); returns logs."""
        return {}


class DiTTask(TrainTask):
    name = "dit"

    def __init__(self, cfg: TrainConfig, manifest: str):
        from songmill.data_schema.shards import FeatureShard
        from songmill.model.config import preset
        from songmill.model.dit import LinearDiT
        from songmill.train.prepare import FeaturesMissing, missing_features_message

        self.cfg = cfg
        if features_count(manifest)[0] == 0:
            raise FeaturesMissing(missing_features_message(manifest))
        self.rows = read_manifest(manifest, require=("features_url",))
        first = FeatureShard.open(self.rows[0].features_url)
        if not first.text_styles:
            raise ValueError(
                'the features hold no text embeddings (computed with features.text_encoder = "none"): run the '
                "features stage again with a text encoder, offline `--set features.text_encoder=tiny-random`"
            )
        meta = first.meta
        model_preset = preset(cfg.preset)
        text_dim = int(first.text_embedding(first.text_styles[0]).shape[-1])
        pretrained = cfg.base_checkpoint if cfg.lora_rank > 0 else cfg.init_from
        if pretrained:
            # Fine-tuning (LoRA or full): the network is the checkpoint's, config and weights.
            self.model = pretrained_dit(pretrained, text_dim, int(meta.get("lyric_vocab_size", 0)))
            dit_cfg = self.model.cfg
        else:
            dit_cfg = model_preset.dit
            # The DiT's input widths follow the cached features it is trained on.
            dit_cfg.text_dim = text_dim
            dit_cfg.speaker_dim = int(meta.get("speaker_dim", dit_cfg.speaker_dim))
            dit_cfg.lyrics.vocab_size = max(
                int(meta.get("lyric_vocab_size", 0)), dit_cfg.lyrics.vocab_size
            )
            # One REPA projector per cached target (none when REPA is off).
            targets = first.repa_targets() if cfg.repa_weight > 0 else {}
            dit_cfg.repa_targets = {name: int(t.shape[-1]) for name, t in targets.items()}
            self.model = LinearDiT(dit_cfg)
        if (
            cfg.repa_weight <= 0
        ):  # a pretrained DiT's projectors would get no gradient (stalling DDP)
            for projector in getattr(self.model, "projectors", []):
                projector.requires_grad_(False)
        dit_cfg.gradient_checkpointing = cfg.grad_checkpointing
        self.dit_cfg = dit_cfg
        self.model_preset = model_preset
        tokenizer_json = _tokenizer_json(meta.get("lyric_tokenizer_path", ""))
        self.dataset = FeatureDataset(
            self.rows, cfg.max_crop_s, dit_cfg.lyrics.max_tokens, cfg.lyric_crop, tokenizer_json
        )
        self.collate = collate_features
        self.conditioning = {
            "text_encoder": meta.get("text_encoder", "none"),
            "text_encoder_config": model_preset.text.to_dict(),
            "dcae_checkpoint": cfg.dcae_checkpoint or meta.get("dcae_checkpoint", ""),
            "lyric_tokenizer_json": tokenizer_json,
            "mel": model_preset.mel.to_dict(),
            "timestep_shift": cfg.timestep_shift,
            # generation's unconditional input follows what dropout taught the DiT
            "cfg_drop_lyric_mask": cfg.cfg_drop_lyric_mask,
        }
        self._val: dict[str, Any] | None = None

    @property
    def config_dict(self) -> dict[str, Any]:
        return self.dit_cfg.to_dict()

    def loss(
        self,
        model: nn.Module,
        batch: dict[str, Any],
        generator: torch.Generator,
        device: torch.device,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """ACE-Step's objective by default: x0-space denoising loss + the mean of the REPA terms
        (settings loss_space, repa_reduce, cfg_drop_lyric_mask give the other choices)."""
        from songmill.model.conditions import Conditions
        from songmill.model.flow import add_noise, denoising_loss, sample_sigmas

        cfg = self.cfg
        x0 = batch["latent"].to(device)
        frame_mask = batch["frame_mask"].to(device)
        # Noise, timesteps and dropout draw from the trainer's own generator (saved in checkpoints).
        noise = torch.randn(x0.shape, generator=generator).to(device)
        sigma = sample_sigmas(x0.shape[0], cfg.timestep_shift, generator=generator, device=device)
        cond = Conditions(
            batch["text"],
            batch["text_mask"],
            batch["lyrics"],
            batch["lyrics_mask"],
            batch["speaker"],
        )
        cond = drop_conditions(
            cond,
            cfg.cfg_p_text,
            cfg.cfg_p_lyrics,
            cfg.cfg_p_speaker,
            generator=generator,
            drop_lyric_mask=cfg.cfg_drop_lyric_mask,
        ).to(device)
        # Every projector takes part in every step, with a zero-weighted term when its target is
        # missing from the batch: a parameter without a gradient on one rank stalls DDP.
        want_repa = cfg.repa_weight > 0 and bool(self.dit_cfg.repa_targets)
        noisy = add_noise(x0, noise, sigma)
        out = model(noisy, sigma, cond, frame_mask, return_repa=want_repa)
        denoise = denoising_loss(cfg.loss_space, out.sample, noisy, x0, noise, sigma, frame_mask)
        logs = {f"loss/{cfg.loss_space}": float(denoise.detach())}
        loss = denoise
        if want_repa:
            terms = []
            for name, projected in sorted(out.repa.items()):
                if name not in batch["repa"]:
                    loss = loss + 0.0 * projected.sum()
                    continue
                target, target_mask = batch["repa"][name]
                term = repa_loss(projected, frame_mask, target.to(device), target_mask.to(device))
                logs[f"loss/repa_{name}"] = float(term.detach())
                terms.append(term)
            repa = combine_repa(terms, cfg.repa_reduce)
            if repa is not None:
                loss = loss + cfg.repa_weight * repa
        return loss, logs

    def validate(
        self, model: nn.Module, sample_dir: str, step: int, device: torch.device
    ) -> dict[str, str]:
        """Generate from the first manifest track's caption and lyrics with the given weights."""
        from songmill.model.generate import generate, sampler_settings
        from songmill.model.mel import MelSpectrogram, load_vocoder
        from songmill.train.samples import write_sample

        val = self._validation_models(device)
        text = f"prompt: {val['prompt']}\nlyrics: {val['lyrics'] or '[instrumental]'}\nstep: {step}"
        if val["dcae"] is None:
            with open(os.path.join(sample_dir, "NO_DCAE.txt"), "w") as f:
                f.write("validation audio needs the DCAE checkpoint (set dcae_checkpoint)\n")
            return {}
        wav, sr = generate(
            val["dcae"],
            model,
            val["text_encoder"],
            load_vocoder(None, self.model_preset.mel),
            val["prompt"],
            val["lyrics"],
            self.cfg.val_duration_s,
            seed=self.cfg.seed,
            steps=self.cfg.val_steps,
            guidance_scale=self.cfg.val_guidance,
            sampler=sampler_settings(
                self.cfg.val_sampler, uncond_lyric_mask=uncond_lyric_mask(self.conditioning)
            ),
            lyric_tokenizer=val["tokenizer"],
            shift=self.cfg.timestep_shift,
        )
        mel = MelSpectrogram(self.model_preset.mel)(wav.unsqueeze(0))[0]
        return write_sample(sample_dir, step, wav, sr, mel, text)

    def _validation_models(self, device: torch.device) -> dict[str, Any]:
        if self._val is None:
            self._val = load_conditioning(self.conditioning, device)
            from songmill.data_schema.shards import FeatureShard

            shard = FeatureShard.open(self.rows[0].features_url)
            styles = shard.text_styles
            self._val["prompt"] = shard.caption("tags" if "tags" in styles else styles[0])
            self._val["lyrics"] = self.rows[0].lyrics or ""
        return self._val


def pretrained_dit(path: str, text_dim: int, lyric_vocab: int) -> nn.Module:
    """The DiT of a checkpoint (a run, a checkpoint dir, or `songmill model import-acestep`'s
    dit/ dir; EMA weights when present), checked against the features it will train on."""
    from safetensors.torch import load_file
    from songmill.model.dit import LinearDiT
    from songmill.model.weights import load_module
    from songmill.train.checkpoint import resolve_checkpoint

    directory = (
        path if os.path.exists(os.path.join(path, "dit.safetensors")) else resolve_checkpoint(path)
    )
    dit = load_module(LinearDiT, directory, "dit")
    ema = os.path.join(directory, "dit_ema.safetensors")
    if os.path.exists(ema):
        dit.load_state_dict(load_file(ema))
    if dit.cfg.text_dim != text_dim:
        raise ValueError(
            f"the DiT at {path} takes {dit.cfg.text_dim}-d text states but the features hold {text_dim}-d ones: "
            "compute the features with the text encoder that DiT was trained with (features.text_encoder)"
        )
    if lyric_vocab > dit.cfg.lyrics.vocab_size:
        raise ValueError(
            f"the features' lyric tokenizer has {lyric_vocab} ids but the DiT at {path} knows {dit.cfg.lyrics.vocab_size}: "
            "compute the features with its lyric tokenizer (features.lyric_tokenizer)"
        )
    return dit


def uncond_lyric_mask(conditioning: dict[str, Any]) -> str:
    """ "zero" for a DiT trained with dropped lyrics masked out (cfg_drop_lyric_mask), else
    "keep" (ACE-Step's pipeline; imported release checkpoints and older runs)."""
    return "zero" if conditioning.get("cfg_drop_lyric_mask") else "keep"


def _tokenizer_json(path: str) -> str | None:
    if path and os.path.exists(path):
        with open(path) as f:
            return f.read()
    return None


def load_conditioning(
    conditioning: dict[str, Any], device: torch.device | str, dcae_override: str | None = None
) -> dict[str, Any]:
    """The frozen pieces generation needs besides the DiT: text encoder, lyric tokenizer, DCAE."""
    from songmill.annotate.features import build_text_encoder, load_dcae_for_features
    from songmill.model.config import TextEncoderConfig
    from songmill.model.encoders import TextEncoder
    from songmill.model.lyric_tokens import LyricTokenizer

    spec = conditioning.get("text_encoder", "none")
    if spec == "tiny-random":
        text_encoder = TextEncoder.tiny_random(
            TextEncoderConfig.from_dict(conditioning["text_encoder_config"])
        )
    else:
        text_encoder = build_text_encoder(spec, str(device))
    text_encoder.to(device)
    dcae_path = dcae_override or conditioning.get("dcae_checkpoint", "")
    dcae = None
    if dcae_path:
        dcae = load_dcae_for_features(dcae_path, str(device))[0]
    return {
        "text_encoder": text_encoder,
        "tokenizer": LyricTokenizer.from_json(conditioning.get("lyric_tokenizer_json")),
        "dcae": dcae,
    }


# -- DCAE ---------------------------------------------------------------------------------------


def spectral_loss(
    recon: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor,
    scales: tuple[int, ...] = (1, 2, 4, 8),
) -> torch.Tensor:
    """Multi-resolution spectral loss on mel images: L1 at several time-frequency poolings (coarse
    scales weigh spectral envelope, fine ones detail) plus L1 of the frame-to-frame difference,
    which keeps onsets sharp where plain MSE blurs them."""
    total = recon.new_zeros(())
    for s in scales:
        r = F.avg_pool2d(recon, s) if s > 1 else recon
        t = F.avg_pool2d(target, s) if s > 1 else target
        m = F.max_pool1d(mask.float()[:, None], s)[:, 0] > 0 if s > 1 else mask
        total = total + masked_mean((r - t).abs(), m[:, : r.shape[-1]])
    delta_r, delta_t = recon.diff(dim=-1), target.diff(dim=-1)
    total = total + masked_mean((delta_r - delta_t).abs(), mask[:, 1:] & mask[:, :-1])
    return total / (len(scales) + 1)


class PatchDiscriminator(nn.Module):
    """PatchGAN over the stereo mel image: a grid of real / fake logits, plus the intermediate
    features used for feature matching."""

    def __init__(self, channels: int = 2, width: int = 32, layers: int = 4):
        super().__init__()
        convs, c_in = [], channels
        for i in range(layers):
            c_out = width * 2 ** min(i, 3)
            convs.append(
                nn.utils.parametrizations.spectral_norm(
                    nn.Conv2d(c_in, c_out, 4, stride=2 if i < layers - 1 else 1, padding=1)
                )
            )
            c_in = c_out
        self.convs = nn.ModuleList(convs)
        self.head = nn.Conv2d(c_in, 1, 3, padding=1)

    def forward(self, mel: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        features, h = [], mel
        for conv in self.convs:
            h = F.leaky_relu(conv(h), 0.2)
            features.append(h)
        return self.head(h), features


class DCAETask(TrainTask):
    name = "dcae"

    def __init__(self, cfg: TrainConfig, manifest: str):
        from songmill.model.config import preset
        from songmill.model.dcae import MusicDCAE

        self.cfg = cfg
        self.rows = read_manifest(manifest)
        self.model_preset = preset(cfg.preset)
        self.dcae_cfg = self.model_preset.dcae
        self.model: nn.Module = MusicDCAE(self.dcae_cfg)
        self.dataset = MelCropDataset(self.rows, self.model_preset.mel, cfg.max_crop_s)
        self.collate = collate_mel
        self.conditioning = {"mel": self.model_preset.mel.to_dict()}
        self.discriminator: nn.Module | None = None
        self.disc_optimizer: torch.optim.Optimizer | None = None
        if cfg.init_from:  # fine-tune existing weights (phase 1), or phase 2 after phase 1
            self.model.load_state_dict(_phase1_weights(cfg.init_from))
        if cfg.dcae_phase == 2:
            # Phase 2 starts from the phase-1 weights; the encoder (and so the latent space the
            # DiT sees) is frozen, the decoder learns against a discriminator.
            self.model.encoder.requires_grad_(False)
            self.discriminator = PatchDiscriminator(self.dcae_cfg.in_channels)
            self.disc_optimizer = torch.optim.AdamW(
                self.discriminator.parameters(), lr=cfg.disc_lr, betas=(0.5, 0.9)
            )

    @property
    def config_dict(self) -> dict[str, Any]:
        return self.dcae_cfg.to_dict()

    def extra_networks(self) -> dict[str, nn.Module]:
        return {"discriminator": self.discriminator} if self.discriminator is not None else {}

    def extra_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"disc_optimizer": self.disc_optimizer} if self.disc_optimizer is not None else {}

    def loss(
        self,
        model: nn.Module,
        batch: dict[str, Any],
        generator: torch.Generator,
        device: torch.device,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        mel = batch["mel"].to(device)
        mask = batch["frame_mask"].to(device)
        recon, latent = model(mel)
        mse = masked_mean((recon - mel) ** 2, mask)
        spectral = spectral_loss(recon, mel, mask)
        loss = mse + self.cfg.spectral_weight * spectral
        logs = {"loss/mse": float(mse.detach()), "loss/spectral": float(spectral.detach())}
        if self.discriminator is not None:
            self.discriminator.to(device).requires_grad_(False)  # the generator step moves G only
            fake_logits, fake_features = self.discriminator(recon)
            with torch.no_grad():
                _, real_features = self.discriminator(mel)
            adversarial = -fake_logits.mean()  # hinge generator loss
            matching = sum(
                F.l1_loss(f, r) for f, r in zip(fake_features, real_features, strict=True)
            ) / len(fake_features)
            loss = (
                loss + self.cfg.adv_weight * adversarial + self.cfg.feature_match_weight * matching
            )
            logs |= {
                "loss/adversarial": float(adversarial.detach()),
                "loss/feature_match": float(matching.detach()),
            }
            self._last = (mel.detach(), recon.detach())
        self._stats_mel = mel.detach()
        return loss, logs

    def after_step(self, device: torch.device) -> dict[str, float]:
        """Phase 2: one hinge-loss discriminator update on the last real / reconstructed pair."""
        if self.discriminator is None:
            return {}
        real, fake = self._last
        self.discriminator.requires_grad_(True)
        real_logits, _ = self.discriminator(real)
        fake_logits, _ = self.discriminator(fake)
        d_loss = F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean()
        self.disc_optimizer.zero_grad(set_to_none=True)
        d_loss.backward()
        _average_gradients_across_ranks(self.discriminator)
        self.disc_optimizer.step()
        return {"loss/discriminator": float(d_loss.detach())}

    def before_checkpoint(self, model: nn.Module) -> None:
        """Latent shift / scale from the last batch, so encoded latents are ~N(0, 1) for the DiT
        (decode(encode(x)) does not depend on them, so training is unaffected); unless the
        constants stay fixed (setting dcae_latent_stats)."""
        mode = self.cfg.dcae_latent_stats
        if mode == "fixed" or (mode == "auto" and self.cfg.init_from):
            return
        mel = getattr(self, "_stats_mel", None)
        if mel is not None:
            with torch.no_grad():
                model.set_latent_stats(model.encode_raw(mel))

    def validate(
        self, model: nn.Module, sample_dir: str, step: int, device: torch.device
    ) -> dict[str, str]:
        """Reconstruct the start of the first track: input mel above, reconstruction below."""
        from songmill.model.mel import griffin_lim
        from songmill.train.data import SampleKey
        from songmill.train.samples import write_sample

        dataset = MelCropDataset(self.rows[:1], self.model_preset.mel, self.cfg.val_duration_s)
        mel = dataset[SampleKey(0, 0, 0, self.cfg.seed)]["mel"].unsqueeze(0).to(device)
        with torch.no_grad():
            recon, _ = model(mel)
        recon = recon.clamp(-1, 1)
        wav = griffin_lim(recon.float().cpu(), self.cfg.griffin_lim_iters, self.model_preset.mel)[0]
        both = torch.cat(
            [mel[0].cpu(), recon[0].cpu()], dim=0
        )  # input channels above, reconstruction below
        mse = float(((recon - mel) ** 2).mean())
        text = f"reconstruction of {self.rows[0].uri} (first {self.cfg.val_duration_s:g} s)\nstep: {step}\nmse: {mse:.5f}"
        return write_sample(sample_dir, step, wav, self.model_preset.mel.sample_rate, both, text)


def _phase1_weights(path: str) -> dict[str, torch.Tensor]:
    """A DCAE checkpoint's weights, EMA when present (what phase 1 would export)."""
    from safetensors.torch import load_file
    from songmill.train.checkpoint import resolve_checkpoint

    # a plain weights dir (`songmill model import-acestep --out DIR`) or a training run / checkpoint
    ckpt = (
        path if os.path.exists(os.path.join(path, "dcae.safetensors")) else resolve_checkpoint(path)
    )
    name = "dcae_ema" if os.path.exists(os.path.join(ckpt, "dcae_ema.safetensors")) else "dcae"
    return load_file(os.path.join(ckpt, f"{name}.safetensors"))


def _average_gradients_across_ranks(module: nn.Module) -> None:
    """The discriminator is not DDP-wrapped (it runs several forwards per step): average its
    gradients by hand so every rank's copy stays identical."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    for p in module.parameters():
        if p.grad is not None:
            dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
            p.grad /= dist.get_world_size()


def build_task(cfg: TrainConfig, manifest: str):
    return DiTTask(cfg, manifest) if cfg.kind == "dit" else DCAETask(cfg, manifest)
