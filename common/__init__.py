"""Shared utilities of the deep-learning course.

Modules (each importable alone): ``config`` (run mode, seeding, device), ``data``
(download, cache, mirror, dataset loaders), ``plot`` (figures, live training plot),
``train`` (metrics, evaluation, training loops), ``notebook`` (the shared notebook header).
"""
from .config import all_devices, device, is_smoke, pick, repo_root, seed_everything, setup

__all__ = ["all_devices", "device", "is_smoke", "pick", "repo_root", "seed_everything", "setup"]
