"""Training: data from a manifest, the loop, checkpoints, LoRA, multi-process, generation.

Heavy imports (torch, model/) stay inside the modules, so `songmill query` never pays for them.
"""
