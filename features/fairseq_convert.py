"""fairseq wav2vec 2.0 checkpoints -> a wav2vec2 encoder, without importing fairseq.

The weights are renamed to transformers' ``Wav2Vec2Model`` names and run by the plain-torch
encoder of ``features/wav2vec2_encoder.py`` (transformers' model where that one does not compute
the architecture, e.g. another activation).

Safe loading. A fairseq ``.pt`` is a pickle holding the weights plus the training configuration
(an ``argparse.Namespace`` in older checkpoints such as ``wav2vec_vox_new.pt``, a dict or an
omegaconf ``DictConfig`` in newer ones, and sometimes numpy scalars). We first try
``torch.load(weights_only=True)`` with ``argparse.Namespace`` allowlisted. If the pickle needs
anything else, :class:`RestrictedUnpickler` loads it: it resolves only tensor-rebuild functions,
storages, dtypes, plain builtin containers and scalars, ``OrderedDict``/``defaultdict``, ``Namespace`` and numpy
scalars/arrays; classes of the
configuration libraries (``omegaconf``, ``fairseq``, ``typing``, ``enum``) become inert
:class:`Opaque` records of their pickled state (no code of theirs runs, and omegaconf need not be
installed); any other global (``os.system``, ``builtins.eval``, ...) is refused. No pickled code
is ever executed.

Key mapping (fairseq -> transformers), pretraining-only heads (quantizer, project_q, final_proj,
CTC projection) are dropped:

    feature_extractor.conv_layers.N.0.*     -> feature_extractor.conv_layers.N.conv.*
    feature_extractor.conv_layers.N.2[.1].* -> feature_extractor.conv_layers.N.layer_norm.*
    layer_norm.*                            -> feature_projection.layer_norm.*
    post_extract_proj.*                     -> feature_projection.projection.*
    mask_emb                                -> masked_spec_embed
    encoder.pos_conv.0.{bias,weight_g,weight_v} -> encoder.pos_conv_embed.conv.{bias,
                                               parametrizations.weight.original0, .original1}
    encoder.layer_norm.*                    -> encoder.layer_norm.*
    encoder.layers.N.self_attn.*            -> encoder.layers.N.attention.*
    encoder.layers.N.self_attn_layer_norm.* -> encoder.layers.N.layer_norm.*
    encoder.layers.N.fc1/fc2.*              -> encoder.layers.N.feed_forward.intermediate_dense/output_dense.*
    encoder.layers.N.final_layer_norm.*     -> encoder.layers.N.final_layer_norm.*

Fine-tuned checkpoints (``w2v_encoder.w2v_model.`` prefix) convert their wav2vec 2.0 body.
"""
from __future__ import annotations

import _codecs
import argparse
import ast
import builtins
import collections
import copyreg
import logging
import pickle
import re
import types
from pathlib import Path
from typing import Any

import torch

from core.errors import StageError

log = logging.getLogger(__name__)

_INERT_MODULES = ("omegaconf", "fairseq", "typing", "enum")
_BUILTINS = {"dict", "list", "tuple", "set", "frozenset", "str", "bytes", "bytearray", "int",
             "float", "bool", "complex", "slice", "object"}
_NUMPY = {("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
          ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
          ("numpy", "dtype"), ("numpy", "ndarray")}


class Opaque:
    """Inert stand-in for a pickled object of a configuration library: keeps args and state."""

    _global = "?"

    def __init__(self, *args: Any, **kwargs: Any):
        self.args, self.state = args, None

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __repr__(self) -> str:
        return f"Opaque({self._global})"


def _opaque(module: str, name: str) -> type:
    return type(name, (Opaque,), {"_global": f"{module}.{name}"})


class RestrictedUnpickler(pickle._Unpickler):  # the Python one: its BUILD step can be guarded
    """Resolves only the globals a weights-plus-config checkpoint needs (module docstring), and
    never sets attributes of a class, module or function (a pickle's BUILD on an allowed class,
    e.g. ``argparse.Namespace.__eq__ = ...``, would change it for the whole process)."""

    dispatch = dict(pickle._Unpickler.dispatch)

    def load_build(self) -> None:
        target = self.stack[-2]
        if isinstance(target, (type, types.ModuleType, types.FunctionType, types.BuiltinFunctionType)):
            raise pickle.UnpicklingError(f"refusing to set attributes of {target!r} from a checkpoint")
        pickle._Unpickler.load_build(self)

    dispatch[pickle.BUILD[0]] = load_build

    def find_class(self, module: str, name: str) -> Any:
        if module == "torch._utils" and name.startswith("_rebuild_"):
            if not hasattr(torch._utils, name):
                raise pickle.UnpicklingError(f"refusing to load global {module}.{name} (unknown to "
                                             f"this torch {torch.__version__})")
            return getattr(torch._utils, name)
        if module == "torch" and (name.endswith("Storage") or name in ("Size", "device")
                                  or isinstance(getattr(torch, name, None), torch.dtype)):
            return getattr(torch, name)
        if (module, name) in (("torch.storage", "UntypedStorage"), ("torch.storage", "TypedStorage")):
            return getattr(torch.storage, name)
        if (module, name) in (("collections", "OrderedDict"), ("collections", "defaultdict")):
            return getattr(collections, name)  # a defaultdict's factory goes through here too
        if (module, name) == ("argparse", "Namespace"):
            return argparse.Namespace
        if module in ("builtins", "__builtin__") and name in _BUILTINS:
            return getattr(builtins, name)
        if (module, name) == ("copyreg", "_reconstructor"):  # builds allowlisted/inert classes only
            return copyreg._reconstructor
        if (module, name) == ("_codecs", "encode"):  # how protocol-2 pickles store bytes
            return _codecs.encode
        if (module, name) in _NUMPY:
            return super().find_class(module, name)
        if module.split(".")[0] in _INERT_MODULES:
            return _opaque(module, name)
        raise pickle.UnpicklingError(f"refusing to load global {module}.{name} from a checkpoint")


class _RestrictedPickle:
    """A ``pickle_module`` for ``torch.load`` whose Unpickler is restricted."""

    Unpickler = RestrictedUnpickler
    __name__ = "restricted_pickle"

    @staticmethod
    def load(f, **kwargs):
        return RestrictedUnpickler(f, **kwargs).load()


def load_checkpoint(path: str | Path) -> dict:
    """The checkpoint dict, loaded without executing pickled code (see module docstring)."""
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        log.info("%s: weights_only load refused (%s); using the restricted unpickler",
                 path, str(e).splitlines()[0])
    try:
        return torch.load(path, map_location="cpu", weights_only=False, pickle_module=_RestrictedPickle)
    except pickle.UnpicklingError as e:
        raise StageError(f"{path}: not a plain fairseq checkpoint ({e}); refusing to load it") from e


def plain(obj: Any) -> Any:
    """Namespace / dict / inert omegaconf records -> plain Python values (dicts, lists, scalars)."""
    if isinstance(obj, argparse.Namespace):
        return {k: plain(v) for k, v in vars(obj).items()}
    if isinstance(obj, dict):
        return {k: plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    if isinstance(obj, Opaque):
        state = obj.state if isinstance(obj.state, dict) else {}
        if "_content" in state:  # omegaconf DictConfig / ListConfig
            return plain(state["_content"])
        if "_val" in state:  # omegaconf value node
            return plain(state["_val"])
        return None
    return obj


def checkpoint_config(ckpt: dict) -> dict:
    """Flat model + task hyper-parameters from ``cfg`` (new) or ``args`` (old checkpoints)."""
    cfg = plain(ckpt.get("cfg")) or {}
    args = plain(ckpt.get("args")) or {}
    flat: dict = {}
    if isinstance(args, dict):
        flat.update(plain(args.get("w2v_args")) or {})  # fine-tuned: the pretraining args
        flat.update({k: v for k, v in args.items() if k != "w2v_args"})
    if isinstance(cfg, dict):
        for section in ("task", "model"):
            part = cfg.get(section) or {}
            if isinstance(part, dict):
                inner = part.get("w2v_args") or {}
                if isinstance(inner, dict):
                    flat.update(inner.get("model") or {})
                    flat.update(inner.get("task") or {})
                flat.update({k: v for k, v in part.items() if k != "w2v_args"})
    return flat


def _eval_layers(spec: str) -> list[tuple[int, int, int]]:
    """fairseq's ``conv_feature_layers`` string ("[(512, 10, 5)] + [(512, 3, 2)] * 4 ...")
    evaluated with literals, ``+`` and ``*`` only."""
    def ev(node):
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return node.value
        if isinstance(node, (ast.List, ast.Tuple)):
            vals = [ev(e) for e in node.elts]
            return vals if isinstance(node, ast.List) else tuple(vals)
        if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Mult)):
            a, b = ev(node.left), ev(node.right)
            return a + b if isinstance(node.op, ast.Add) else a * b
        raise StageError(f"unsupported conv_feature_layers expression: {spec!r}")
    return [tuple(x) for x in ev(ast.parse(spec, mode="eval"))]


_RULES = [
    (r"feature_extractor\.conv_layers\.(\d+)\.0\.(weight|bias)", r"feature_extractor.conv_layers.\1.conv.\2"),
    (r"feature_extractor\.conv_layers\.(\d+)\.2(?:\.1)?\.(weight|bias)", r"feature_extractor.conv_layers.\1.layer_norm.\2"),
    (r"layer_norm\.(weight|bias)", r"feature_projection.layer_norm.\1"),
    (r"post_extract_proj\.(weight|bias)", r"feature_projection.projection.\1"),
    (r"mask_emb", r"masked_spec_embed"),
    (r"encoder\.pos_conv\.0\.bias", r"encoder.pos_conv_embed.conv.bias"),
    (r"encoder\.pos_conv\.0\.weight_g", r"encoder.pos_conv_embed.conv.parametrizations.weight.original0"),
    (r"encoder\.pos_conv\.0\.weight_v", r"encoder.pos_conv_embed.conv.parametrizations.weight.original1"),
    (r"encoder\.layer_norm\.(weight|bias)", r"encoder.layer_norm.\1"),
    (r"encoder\.layers\.(\d+)\.self_attn\.(q|k|v|out)_proj\.(weight|bias)", r"encoder.layers.\1.attention.\2_proj.\3"),
    (r"encoder\.layers\.(\d+)\.self_attn_layer_norm\.(weight|bias)", r"encoder.layers.\1.layer_norm.\2"),
    (r"encoder\.layers\.(\d+)\.fc1\.(weight|bias)", r"encoder.layers.\1.feed_forward.intermediate_dense.\2"),
    (r"encoder\.layers\.(\d+)\.fc2\.(weight|bias)", r"encoder.layers.\1.feed_forward.output_dense.\2"),
    (r"encoder\.layers\.(\d+)\.final_layer_norm\.(weight|bias)", r"encoder.layers.\1.final_layer_norm.\2"),
]
_RULES_RE = [(re.compile(p + r"$"), r) for p, r in _RULES]
_DROPPED = ("quantizer.", "project_q.", "final_proj.", "target_glu.", "label_embs_concat", "proj.")


def convert_state_dict(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """fairseq wav2vec 2.0 weights renamed to ``Wav2Vec2Model`` keys (pretraining heads dropped)."""
    out, unknown = {}, []
    for key, value in sd.items():
        key = key.removeprefix("w2v_encoder.w2v_model.").removeprefix("w2v_encoder.")
        for pattern, repl in _RULES_RE:
            if pattern.match(key):
                out[pattern.sub(repl, key)] = value
                break
        else:
            if not key.startswith(_DROPPED):
                unknown.append(key)
    if unknown:
        raise StageError(f"fairseq checkpoint has keys this converter does not know: {unknown[:8]}")
    return out


def encoder_config(sd: dict[str, torch.Tensor], cfg: dict) -> dict[str, Any]:
    """A transformers ``Wav2Vec2Config``'s fields from converted weight shapes, plus what only
    the checkpoint's config knows."""
    convs = sorted(int(k.split(".")[2]) for k in sd if re.match(r"feature_extractor\.conv_layers\.\d+\.conv\.weight$", k))
    conv_w = [sd[f"feature_extractor.conv_layers.{i}.conv.weight"] for i in convs]
    dims, kernels = [w.shape[0] for w in conv_w], [w.shape[2] for w in conv_w]
    if cfg.get("conv_feature_layers"):
        strides = [s for _, _, s in _eval_layers(cfg["conv_feature_layers"])]
    elif kernels == [10, 3, 3, 3, 3, 2, 2]:
        strides = [5, 2, 2, 2, 2, 2, 2]
    else:
        raise StageError("checkpoint has no conv_feature_layers and a non-standard CNN")
    hidden = sd["feature_projection.projection.weight"].shape[0]
    n_layers = 1 + max(int(k.split(".")[2]) for k in sd if k.startswith("encoder.layers."))
    layer_norm_cnn = "feature_extractor.conv_layers.1.layer_norm.weight" in sd
    mode = cfg.get("extractor_mode", "layer_norm" if layer_norm_cnn else "default")
    heads = cfg.get("encoder_attention_heads")
    if heads is None:
        heads = hidden // 64
        log.warning("checkpoint config lacks encoder_attention_heads; assuming %d (64-d heads)", heads)
    ln_first = cfg.get("layer_norm_first")
    if ln_first is None:
        ln_first = mode == "layer_norm"
        log.warning("checkpoint config lacks layer_norm_first; assuming %s", ln_first)
    pos_v = sd["encoder.pos_conv_embed.conv.parametrizations.weight.original1"]  # (D, D/groups, K)
    return dict(
        hidden_size=hidden, num_hidden_layers=n_layers, num_attention_heads=int(heads),
        intermediate_size=sd["encoder.layers.0.feed_forward.intermediate_dense.weight"].shape[0],
        conv_dim=tuple(dims), conv_kernel=tuple(kernels), conv_stride=tuple(strides),
        conv_bias="feature_extractor.conv_layers.0.conv.bias" in sd,
        feat_extract_norm="layer" if mode == "layer_norm" else "group",
        do_stable_layer_norm=bool(ln_first),
        num_conv_pos_embeddings=pos_v.shape[2], num_conv_pos_embedding_groups=hidden // pos_v.shape[1],
        hidden_act=cfg.get("activation_fn", "gelu"),
    )


def _model(path: str | Path, fields: dict[str, Any], sd: dict[str, torch.Tensor]):
    """The plain-torch encoder (``features/wav2vec2_encoder.py``) where it computes this
    architecture, else transformers' ``Wav2Vec2Model``; weights loaded, eval mode."""
    from features.plain_weights import module_state
    from features.wav2vec2_encoder import Wav2Vec2Encoder, Wav2Vec2EncoderConfig, weight_norm_names

    plain = Wav2Vec2EncoderConfig.from_dict({"model_type": "wav2vec2", **fields})
    if plain is not None:
        with torch.device("meta"):  # no random init of weights about to be replaced
            model = Wav2Vec2Encoder(plain)
        # float32 as the transformers model's parameters were (a half-precision checkpoint too)
        sd = module_state(model, sd, "wav2vec2.", weight_norm_names)
        sd = {k: v.float() if v.is_floating_point() else v for k, v in sd.items()}
    else:
        from transformers import Wav2Vec2Config, Wav2Vec2Model

        model = Wav2Vec2Model(Wav2Vec2Config(**fields))
    missing, unexpected = model.load_state_dict(sd, strict=False, assign=plain is not None)
    missing = [k for k in missing if k != "masked_spec_embed"]
    if missing or unexpected:
        raise StageError(f"{path}: converted weights do not fit {type(model).__name__} "
                         f"(missing {missing[:5]}, unexpected {unexpected[:5]})")
    return model.eval().requires_grad_(False)


def load_fairseq_wav2vec2(path: str | Path):
    """(wav2vec2 model in eval mode, whether it was trained on normalised audio)."""
    ckpt = load_checkpoint(path)
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise StageError(f"{path}: not a fairseq checkpoint (no 'model' entry)")
    cfg = checkpoint_config(ckpt)
    sd = convert_state_dict(ckpt["model"])
    model = _model(path, encoder_config(sd, cfg), sd)
    normalize = cfg.get("normalize")
    if normalize is None:
        normalize = model.config.feat_extract_norm == "layer"
    log.info("fairseq %s -> wav2vec2 encoder: %d layers x %d, normalize=%s", Path(path).name,
             model.config.num_hidden_layers, model.config.hidden_size, normalize)
    return model.eval(), bool(normalize)
