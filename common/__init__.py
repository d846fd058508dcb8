"""Shared utilities of the deep-learning course.

Modules (each importable alone): ``config`` (run mode, seeding, device, ``synchronize``), ``data``
(download, cache, mirror, dataset loaders), ``plot`` (figures, live training plot),
``train`` (metrics, evaluation, the classification training loop), ``text`` (tokens,
vocabularies, sequence minibatches), ``rnn`` (language-model training), ``seq2seq``
(translation data, masked loss, encoder-decoder training, BLEU), ``attention`` (masked softmax,
attention modules, positional encoding, heatmaps), ``optim`` (the optimisation chapter's
experiments), ``detection`` (boxes, anchors, NMS), ``vision`` (CIFAR-10, ResNet-18, pretrained
backbones, transfer-learning data), ``generative`` (the Fréchet distance, a cached feature
classifier), ``bananas`` (the banana-detection dataset), ``segmentation`` (Pascal VOC
segmentation), ``bert`` (BERT, its masking rule and the cached PTB pretraining),
``paraphrase`` (the fra-eng paraphrase-pair task), ``distributed`` (process launching for the
data-parallel notebooks), ``autodiff`` (the reverse-mode engine built from scratch), ``progress``
(progress bars), ``checks`` (argument checks), ``bench`` (``make bench``), ``results``
(``check_result``), ``book`` (``make book``) and ``notebook`` (the shared notebook header and
notebook tools).
"""
from .config import (
    all_devices,
    device,
    fixed_seed,
    is_smoke,
    pick,
    repo_root,
    run_seed,
    seed_everything,
    setup,
    synchronize,
)
from .results import check_result

__all__ = ["all_devices", "check_result", "device", "fixed_seed", "is_smoke", "pick", "repo_root", "run_seed",
           "seed_everything", "setup", "synchronize"]
