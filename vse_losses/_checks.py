"""Input and hyper-parameter guards shared by the functional API, the losses and the miners.

Every check raises ``ValueError`` with a message that says what is wrong and what to do.
"""

from __future__ import annotations

import math

import torch

DIRECTIONS = ("both", "i2t", "t2i")
IMPLS = ("auto", "dense", "chunked", "triton")
REDUCTIONS = ("mean", "sum", "none")


def check_margin(margin: float) -> float:
    if not isinstance(margin, (int, float)) or isinstance(margin, bool) or not math.isfinite(margin):
        raise ValueError(f"margin must be a finite number, got {margin!r}; the paper uses margin=0.2")
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}; the paper uses margin=0.2")
    return float(margin)


def check_k(k: int) -> int:
    if isinstance(k, bool) or not isinstance(k, int):
        raise ValueError(f"k must be an integer >= 1, got {k!r}; k=1 is the max violation loss")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}; k=1 is the max violation loss, a large k the sum of hinges")
    return k


def check_p(p: float) -> float:
    if isinstance(p, bool) or not isinstance(p, (int, float)) or math.isnan(p):
        raise ValueError(f"p must be a number >= 1 (float('inf') allowed), got {p!r}")
    if p < 1:
        raise ValueError(f"p must be >= 1, got {p}; p=1 is the sum of hinges, p=inf the max violation")
    return float(p)


def check_mix(mix: float) -> float:
    if isinstance(mix, bool) or not isinstance(mix, (int, float)) or not 0.0 <= mix <= 1.0:
        raise ValueError(f"mix must be a number in [0, 1], got {mix!r}; 0 is the sum of hinges, 1 the max violation")
    return float(mix)


def check_temperature(temperature):
    """τ > 0: a finite number, or a 0-dim floating-point tensor (which may require grad, as CLIP's
    learned temperature does). Returned as a float, or as the tensor itself."""
    if torch.is_tensor(temperature):
        if temperature.ndim != 0 or not temperature.is_floating_point():
            raise ValueError(
                f"temperature must be a number or a 0-dim floating-point tensor, got a {temperature.dtype} tensor "
                f"of shape {tuple(temperature.shape)}; use t.reshape(()) for a one-element tensor"
            )
        value = float(temperature.detach())
    elif isinstance(temperature, (int, float)) and not isinstance(temperature, bool):
        value = float(temperature)
    else:
        raise ValueError(
            f"temperature must be a number > 0 or a 0-dim tensor, got {temperature!r}; CLIP starts at 0.07"
        )
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"temperature must be finite and > 0, got {value}; CLIP starts at 0.07")
    return temperature if torch.is_tensor(temperature) else value


def check_choice(name: str, value: str, choices: tuple) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")
    return value


def check_embeddings(name: str, emb: torch.Tensor) -> None:
    if not torch.is_tensor(emb):
        raise ValueError(f"{name} must be a torch.Tensor of shape (batch, dim), got {type(emb).__name__}")
    if emb.ndim != 2:
        raise ValueError(
            f"{name} must be 2-D (batch, dim), got shape {tuple(emb.shape)}; "
            "flatten or pool your features to one vector per sample"
        )
    if not emb.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got {emb.dtype}; call .float() first")
    if emb.shape[0] == 0:
        raise ValueError(f"{name} is an empty batch (shape {tuple(emb.shape)}); pass at least one sample")
    if emb.shape[1] == 0:
        raise ValueError(
            f"{name} has no features (shape {tuple(emb.shape)}); every sample needs at least one dimension"
        )


def check_labels(name: str, labels: torch.Tensor | None, n: int, emb_name: str) -> None:
    if labels is None:
        return
    if not torch.is_tensor(labels):
        raise ValueError(f"{name} must be a 1-D torch.Tensor of integer labels, got {type(labels).__name__}")
    if labels.ndim != 1:
        raise ValueError(f"{name} must be 1-D (batch,), got shape {tuple(labels.shape)}; use labels.view(-1)")
    if labels.dtype == torch.bool or labels.is_floating_point() or labels.is_complex():
        # equality of float labels is fragile and bool labels are almost always a mask passed by mistake
        raise ValueError(
            f"{name} must hold integer class ids, got dtype {labels.dtype}; convert them with "
            f"{name}.long() (ids of equal value are positives of each other)"
        )
    if labels.shape[0] != n:
        raise ValueError(f"{name} has {labels.shape[0]} entries but {emb_name} has {n} rows; pass one label per row")


def check_pair(emb: torch.Tensor, ref_emb: torch.Tensor, names=("embeddings", "ref_emb")) -> None:
    check_embeddings(names[0], emb)
    check_embeddings(names[1], ref_emb)
    if emb.shape[1] != ref_emb.shape[1]:
        raise ValueError(
            f"{names[0]} and {names[1]} have different sizes ({emb.shape[1]} vs {ref_emb.shape[1]}); "
            "project both modalities to the same embed_size"
        )


def check_inputs(emb, labels, ref_emb, ref_labels, names=("embeddings", "labels", "ref_emb", "ref_labels")) -> None:
    """Every check of one call's tensors, for the losses, the functions and the miners alike.

    ``names``: what the caller calls the four arguments (the functions say img, labels, cap,
    ref_labels). Without ``ref_emb`` (one modality) the rows are their own reference and
    ``labels`` label them: ``ref_labels`` there is a mistake (PML would ignore it silently)."""
    emb_name, lab_name, ref_name, ref_lab_name = names
    if ref_emb is None:
        check_embeddings(emb_name, emb)
    else:
        check_pair(emb, ref_emb, (emb_name, ref_name))
    check_labels(lab_name, labels, emb.shape[0], emb_name)
    if ref_emb is not None:
        check_labels(ref_lab_name, ref_labels, ref_emb.shape[0], ref_name)
    elif ref_labels is not None:
        raise ValueError(
            f"{ref_lab_name} without {ref_name}: one modality is its own reference, labelled by "
            f"{lab_name}; pass {ref_name} (the other modality) too, or leave {ref_lab_name} out"
        )


def check_scores(scores, labels, ref_labels) -> None:
    """A precomputed (B, M) score matrix and the labels of its rows and columns."""
    check_embeddings("scores", scores)
    check_labels("labels", labels, scores.shape[0], "scores")
    check_labels("ref_labels", ref_labels, scores.shape[1], "scores (columns)")


def split_paired_call(labels, ref_emb, caller: str = "loss"):
    """PML's ``labels`` argument holding the other modality, ``loss(img_emb, cap_emb)``: returns
    ``(labels, ref_emb)`` as they are meant (a 2-D float tensor is embeddings, never labels)."""
    if torch.is_tensor(labels) and labels.ndim == 2 and labels.is_floating_point():
        if ref_emb is not None:
            raise ValueError(f"paired form {caller}(img_emb, cap_emb) got ref_emb too; pass the captions once")
        return None, labels
    return labels, ref_emb
