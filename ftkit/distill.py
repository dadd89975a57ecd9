"""Knowledge distillation: a student learns from the softened outputs of trained models (its
teachers: runs or named models, one or an ensemble) as well as from the labels.

The loss, as Hinton, Vinyals and Dean (2015) put it::

    loss = (1 - alpha) * CE(student, label) + alpha * T^2 * KL(p_T || softmax(student / T))

``p_T`` is the teachers' mean of ``softmax(log q_k / T)``, where ``q_k`` is teacher k's class
probabilities (with its own preprocessing and test-time augmentation). ``T^2`` keeps the soft
term's gradients the same size whatever the temperature. The hard term is the run's own
cross-entropy (class weights and label smoothing included).

The teachers run once per run, before the first epoch: their log-probabilities on every
training image (not augmented) go to ``RUN/teacher.safetensors``, tied to the training split's
images, so the student's epochs cost no teacher pass and a resumed run reads the same targets.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from rich.console import Console
from torch import nn

from .config import Config, ConfigError
from .data import DataSplits, ImageDataset
from .evaluation import predict_probs
from .progress import progress_bar
from .runs import RunError, read_weights, write_weights
from .transforms import eval_transform
from .zoo import fer2013_provenance, find_model, load_run, match_classes

CACHE = "teacher.safetensors"  # inside the run directory


class DistillLoss(nn.Module):
    """The mix of the hard and the soft term (see the module's docstring). Called with the
    teachers' softened probabilities ``soft`` it returns the mix; without, the hard term alone
    (how the validation loss is measured)."""

    def __init__(self, hard: nn.Module, alpha: float, temperature: float):
        super().__init__()
        self.hard, self.alpha, self.temperature = hard, alpha, temperature

    def forward(self, logits: torch.Tensor, target: torch.Tensor, soft: torch.Tensor | None = None) -> torch.Tensor:
        hard = self.hard(logits, target)
        if soft is None:
            return hard
        t = self.temperature
        kl = nn.functional.kl_div(torch.log_softmax(logits / t, 1), soft, reduction="batchmean")
        return (1 - self.alpha) * hard + self.alpha * t * t * kl


def softened(log_probs: torch.Tensor, temperature: float) -> torch.Tensor:
    """The teachers' mean softened probabilities [N, C] from their log-probabilities [K, N, C]."""
    return torch.softmax(log_probs / temperature, dim=2).mean(0)


class WithSoftTargets(torch.utils.data.Dataset):
    """A training set whose items carry the teachers' softened probabilities: (image, label, soft)."""

    def __init__(self, base: ImageDataset, soft: torch.Tensor):
        if len(base) != len(soft):
            raise ValueError(f"{len(soft)} soft targets for {len(base)} images")
        self.base, self.soft = base, soft

    @property
    def transform(self):  # what loop.seed_worker reseeds in each DataLoader worker
        return self.base.transform

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int):
        return (*self.base[i], self.soft[i])


def teacher_origin(teacher: str) -> dict | None:
    """A named teacher's record of the FER2013 parts it trained on or chose its epoch by (its
    manifest's ``fer2013_seen`` and ``fer2013_digests``), for the note that a run's scores are not
    held out; None for a run directory or a model without one."""
    found = find_model(teacher) if not Path(teacher).is_dir() else None
    seen = fer2013_provenance(found[2]) if found else {}
    return {"name": teacher, **seen} if seen.get("fer2013_seen") else None


def split_tag(keys: list[str]) -> str:
    """What ties cached targets to one training split: a digest of its images' keys, in order."""
    return hashlib.sha256("\n".join(keys).encode()).hexdigest()


def teacher_log_probs(teacher: str, data: DataSplits, device: str, batch_size: int, tta: str = "model",
                      progress=None) -> torch.Tensor:
    """One teacher's log-probabilities [N, C] on the training images, in the student's class
    order, with test-time augmentation ``tta`` (model: the teacher's own); classes the student
    does not have are left out and the rest renormalised."""
    loaded = load_run(teacher, device)
    matched = match_classes(loaded.classes, data.classes)
    missing = [c for i, c in enumerate(data.classes) if i not in matched]
    if missing:
        raise ConfigError(f"teacher {teacher} has no class {', '.join(missing)} (its classes: "
                          f"{', '.join(loaded.classes)}): every class of the data needs a teacher's probability; "
                          "drop those classes (--drop-class) or choose other teachers")
    train = data.splits["train"]
    loader = torch.utils.data.DataLoader(ImageDataset(train, eval_transform(loaded.data_config)), batch_size=batch_size)
    probs, _, _ = predict_probs(loaded.model, loader, loaded.device, loaded.config.tta if tta == "model" else tta,
                                progress=progress)
    columns = [matched[t] for t in range(len(data.classes))]
    picked = torch.from_numpy(probs[:, columns]).float().clamp_min(1e-8)
    return torch.log(picked / picked.sum(1, keepdim=True))


def teacher_targets(run: Path, cfg: Config, data: DataSplits, out: Console) -> torch.Tensor:
    """The teachers' log-probabilities [K, N, C] on the training split: read from the run's
    cache when it holds this split's, else computed (one pass per teacher) and cached."""
    path, keys = run / CACHE, data.splits["train"].keys
    if data.splits["train"].shards is not None:
        raise ConfigError("teacher: a distillation run caches the teachers' outputs per training image, and streamed "
                          "shards are read in an order of their own: give the images as a folder or CSV")
    tag = split_tag(keys)
    if path.is_file():
        tensors, meta = read_weights(path)
        if meta and meta.get("split") == tag and meta.get("teachers") == list(cfg.teacher) and \
                meta.get("tta", "model") == cfg.teacher_tta:
            out.print(f"teachers: {len(cfg.teacher)} model(s), targets read from {path}")
            return tensors["log_probs"]
        raise RunError(f"{path} holds targets of other teachers, another teacher_tta or another training split; it was "
                       "not written for this run: move it away to compute them again")
    rows = []
    with progress_bar(out) as bar:
        for teacher in cfg.teacher:
            task = bar.add_task(f"teacher {teacher}", total=len(keys), info="")
            rows.append(teacher_log_probs(teacher, data, cfg.device, cfg.batch_size * 2, cfg.teacher_tta,
                                          progress=lambda n, task=task: bar.update(task, advance=n)))
    log_probs = torch.stack(rows)
    write_weights(path, {"log_probs": log_probs.contiguous()},
                  {"teachers": list(cfg.teacher), "tta": cfg.teacher_tta, "split": tag, "classes": data.classes,
                   "images": len(keys)})
    agree = (log_probs.mean(0).argmax(1).numpy() == data.splits["train"].labels).mean()
    out.print(f"teachers: {len(cfg.teacher)} model(s) scored {len(keys)} training images once (their mean agrees with "
              f"{agree:.1%} of the labels); targets cached in {path}")
    return log_probs
