"""The VSE++ model: an image encoder and a text encoder projected to one l2-normalised space.

As in the original ``model.py``: ``EncoderImagePrecomp`` (a linear layer on precomputed
features), ``EncoderImageFull`` (a CNN, pooled features, a linear layer) and ``EncoderText``
(word embeddings and a GRU whose last hidden state is the caption embedding). Added: a small
CNN for the embedded demo, any torchvision classification model by name, and an optional
Hugging Face text encoder read from a local directory.
"""

from __future__ import annotations

import os
from collections import OrderedDict

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.rnn import pack_padded_sequence

from .errors import ConfigError
from .vocab import VocabTokenizer, Vocabulary

SMALL_CNNS = ("smallcnn",)


def l2norm(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x, p=2, dim=-1)


def _xavier_fc(fc: nn.Linear) -> None:
    """The original code's init for the projection layers."""
    r = np.sqrt(6.0) / np.sqrt(fc.in_features + fc.out_features)
    fc.weight.data.uniform_(-r, r)
    fc.bias.data.fill_(0)


class SmallCNN(nn.Module):
    """Three conv blocks and a linear layer, for small images (the embedded demo's ``--cnn_type``).

    Spatial layout is kept (flattened, not pooled away) because captions name positions.
    """

    def __init__(self, in_size: int = 32, width: int = 16, out_dim: int = 512):
        super().__init__()
        c = [3, width, 2 * width, 4 * width]
        layers = []
        for i in range(3):
            layers += [
                nn.Conv2d(c[i], c[i + 1], 3, padding=1, bias=False),
                nn.BatchNorm2d(c[i + 1]),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            ]
        self.features = nn.Sequential(*layers)
        side = in_size // 8
        self.fc = nn.Sequential(nn.Flatten(), nn.Linear(c[3] * side * side, out_dim), nn.ReLU(inplace=True))
        self.out_dim = out_dim

    def forward(self, x):
        return self.fc(self.features(x))


def _replace_last_linear(model: nn.Module) -> int:
    """Replace a torchvision classifier's final ``nn.Linear`` by ``Identity``; return its input size.

    For VGG this drops only the last layer of ``classifier`` (4096-d fc7 features) and for
    ResNet the ``fc`` layer (2048-d pooled features), exactly what the original code used.
    """
    last_name, last = None, None
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            last_name, last = name, module
    if last is None:
        raise ConfigError("--cnn_type", "this model has no final nn.Linear classifier layer to replace")
    parent = model
    *path, leaf = last_name.split(".")
    for p in path:
        parent = getattr(parent, p)
    setattr(parent, leaf, nn.Identity())
    return last.in_features


def build_cnn(cnn_type: str, weights_path: str | None, crop_size: int, log=print):
    """The image backbone and its feature size. Weights come only from a local file."""
    if weights_path and not os.path.isfile(weights_path):
        raise ConfigError(
            weights_path,
            "--cnn_weights: no such file (nothing is downloaded; save a torchvision state_dict there first)",
        )
    if cnn_type == "smallcnn":
        net = SmallCNN(in_size=crop_size)
        dim = net.out_dim
    else:
        import torchvision

        names = torchvision.models.list_models(module=torchvision.models)
        if cnn_type not in names:
            raise ConfigError(
                "--cnn_type",
                f"unknown model {cnn_type!r}: use smallcnn or a torchvision "
                "classification model name (resnet152, vgg19, resnet18, mobilenet_v3_small, ...)",
            )
        kwargs = {"aux_logits": False, "init_weights": True} if cnn_type in ("inception_v3", "googlenet") else {}
        net = torchvision.models.get_model(cnn_type, weights=None, **kwargs)
        if weights_path:
            _load_weights(net, weights_path)
        dim = _replace_last_linear(net)
        if weights_path:
            log(f"loaded CNN weights from {weights_path}")
    if weights_path and cnn_type == "smallcnn":
        _load_weights(net, weights_path)
        log(f"loaded CNN weights from {weights_path}")
    if not weights_path:
        log(f"notice: no --cnn_weights given: the {cnn_type} image encoder starts from random initialisation")
    return net, dim


def _load_weights(net: nn.Module, path: str) -> None:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - turned into a one-line error
        raise ConfigError(path, f"cannot read CNN weights: {str(e).splitlines()[0]}") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ConfigError(path, "CNN weights must be a state_dict (a dict of tensors)")
    state = OrderedDict((k[len("module.") :] if k.startswith("module.") else k, v) for k, v in state.items())
    own = net.state_dict()
    # inception_v3/googlenet are built without their auxiliary classifiers: drop those weights
    state = OrderedDict(
        (k, v) for k, v in state.items() if k in own or not k.startswith(("AuxLogits.", "aux1.", "aux2."))
    )
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ConfigError(path, "CNN weights do not fit the model: " + " ".join(str(e).split())[:300]) from None


class EncoderImagePrecomp(nn.Module):
    def __init__(self, img_dim: int, embed_size: int, no_imgnorm: bool = False, use_abs: bool = False):
        super().__init__()
        self.fc = nn.Linear(img_dim, embed_size)
        _xavier_fc(self.fc)
        self.no_imgnorm, self.use_abs = no_imgnorm, use_abs

    def forward(self, images):
        x = self.fc(images)
        if not self.no_imgnorm:
            x = l2norm(x)
        return x.abs() if self.use_abs else x


class EncoderImageFull(nn.Module):
    def __init__(
        self,
        embed_size: int,
        cnn_type: str,
        finetune: bool,
        crop_size: int,
        cnn_weights: str | None = None,
        no_imgnorm: bool = False,
        use_abs: bool = False,
        log=print,
        feature_norm: bool = False,
    ):
        super().__init__()
        self.cnn, dim = build_cnn(cnn_type, cnn_weights, crop_size, log=log)
        for p in self.cnn.parameters():
            p.requires_grad = finetune
        self.finetune = finetune
        self.fc = nn.Linear(dim, embed_size)
        _xavier_fc(self.fc)
        self.no_imgnorm, self.use_abs, self.feature_norm = no_imgnorm, use_abs, feature_norm

    def train(self, mode: bool = True):
        super().train(mode)
        if not self.finetune:  # frozen: BatchNorm keeps its running statistics too (fixed features)
            self.cnn.eval()
        return self

    def forward(self, images):
        x = self.cnn(images)
        if self.feature_norm:  # the original code's l2norm of the CNN's features (--cnn_feature_norm)
            x = l2norm(x)
        x = self.fc(x)
        if not self.no_imgnorm:
            x = l2norm(x)
        return x.abs() if self.use_abs else x


class EncoderText(nn.Module):
    """Word embeddings, a GRU, and its output at each caption's last word."""

    def __init__(self, vocab_size: int, word_dim: int, embed_size: int, num_layers: int = 1, use_abs: bool = False):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, word_dim)
        self.embed.weight.data.uniform_(-0.1, 0.1)
        self.rnn = nn.GRU(word_dim, embed_size, num_layers, batch_first=True)
        self.use_abs = use_abs

    def forward(self, text):
        ids, lengths = text["ids"], text["lengths"]
        packed = pack_padded_sequence(self.embed(ids), lengths.cpu(), batch_first=True, enforce_sorted=False)
        _, hidden = self.rnn(packed)  # hidden: layers × B × H, in the batch's order
        x = l2norm(hidden[-1])
        return x.abs() if self.use_abs else x


def _from_pretrained(cls, path: str):
    """``cls.from_pretrained(path)`` read locally, any failure one ConfigError naming the folder: a
    folder that is not a saved model or tokenizer (OSError, ValueError), or a model class this
    torch cannot run (ImportError: transformers 5 builds BERT only with torch >= 2.6)."""
    try:
        return cls.from_pretrained(path, local_files_only=True)
    except (ImportError, OSError, ValueError) as e:
        first = next((ln.strip() for ln in str(e).splitlines() if ln.strip()), type(e).__name__)
        raise ConfigError(path, f"--text_encoder: transformers cannot load it: {first}") from None


def _local_transformers(path: str):
    """The transformers module, once ``path`` is known to be a local directory: a name that is
    not a directory would otherwise be taken for a Hub repository id."""
    try:
        import transformers
    except ImportError:
        raise ConfigError("--text_encoder", "needs the transformers package (pip install transformers)") from None
    if not os.path.isdir(path):
        raise ConfigError(path, "--text_encoder: no such directory (models are read locally, never downloaded)")
    return transformers


class EncoderTextHF(nn.Module):
    """A Hugging Face encoder from a local directory, mean-pooled and projected (optional)."""

    def __init__(self, path: str, embed_size: int, finetune: bool = True, use_abs: bool = False):
        super().__init__()
        transformers = _local_transformers(path)
        self.model = _from_pretrained(transformers.AutoModel, path)
        for p in self.model.parameters():
            p.requires_grad = finetune
        self.fc = nn.Linear(self.model.config.hidden_size, embed_size)
        _xavier_fc(self.fc)
        self.use_abs = use_abs

    def forward(self, text):
        mask = text["attention_mask"]
        out = self.model(input_ids=text["input_ids"], attention_mask=mask).last_hidden_state
        m = mask.unsqueeze(-1).to(out.dtype)
        x = l2norm(self.fc((out * m).sum(1) / m.sum(1).clamp_min(1)))
        return x.abs() if self.use_abs else x


class HFTokenizer:
    """Collate-side tokeniser for :class:`EncoderTextHF` (picklable for DataLoader workers)."""

    def __init__(self, path: str, max_length: int = 64):
        transformers = _local_transformers(path)
        self.tok = _from_pretrained(transformers.AutoTokenizer, path)
        self.max_length = max_length

    def __call__(self, captions):
        enc = self.tok(list(captions), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


def make_tokenizer(opt, vocab: Vocabulary | None):
    """The tokeniser of the text encoder ``opt`` names: the HF model's own, or the vocabulary's."""
    if getattr(opt, "text_encoder", None):
        return HFTokenizer(opt.text_encoder)
    return VocabTokenizer(vocab)


class VSEModel(nn.Module):
    """Both encoders; ``forward(images, text)`` returns the two B×embed_size embeddings."""

    def __init__(self, img_enc: nn.Module, txt_enc: nn.Module):
        super().__init__()
        self.img_enc, self.txt_enc = img_enc, txt_enc

    def forward(self, images, text):
        return self.img_enc(images), self.txt_enc(text)


def build_model(opt, vocab_size: int, log=print) -> VSEModel:
    """The model ``opt`` (a namespace of train_coco.py's options) describes."""
    if opt.precomp:
        img_enc = EncoderImagePrecomp(opt.img_dim, opt.embed_size, opt.no_imgnorm, opt.use_abs)
    else:
        img_enc = EncoderImageFull(
            opt.embed_size,
            opt.cnn_type,
            opt.finetune,
            opt.crop_size,
            opt.cnn_weights,
            opt.no_imgnorm,
            opt.use_abs,
            log=log,
            feature_norm=getattr(opt, "cnn_feature_norm", False),
        )
    if getattr(opt, "text_encoder", None):
        txt_enc = EncoderTextHF(opt.text_encoder, opt.embed_size, use_abs=opt.use_abs)
    else:
        txt_enc = EncoderText(vocab_size, opt.word_dim, opt.embed_size, opt.num_layers, opt.use_abs)
    return VSEModel(img_enc, txt_enc)
