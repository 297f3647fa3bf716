"""The models ``benchmarks/zoo.py`` runs refold's passes over: torchvision (classification,
segmentation, detection backbones), tiny transformers configs, the YOLOv8-style detector of
``tests/yolo.py``, rapidocr's PP-OCR ONNX files and the onnx package's light model-zoo graphs.

Every model is a :class:`Case`: a torch module in eval mode (or an ONNX file) and ``sample(batch,
seed)``, which draws inputs of the model's kind (images, token ids, mel features), so calibration
and held-out sets are reproducible in every subprocess. Weights are random; BatchNorm statistics
come from two train-mode batches and are then perturbed (the defaults 0/1 would make BN an
identity and hide mistakes), BN affines are perturbed, and all-zero weight matrices (ViT's head)
are re-initialised so outputs are not all zero.

    >>> names = registry()                          # name -> (family, builder), nothing built
    >>> case = build("tv/resnet18")                 # doctest: +SKIP
    >>> y = case.module(*case.sample(1, 0))         # doctest: +SKIP

torchvision from PyPI is a CUDA build whose ``_C`` cannot load beside the CPU torch: its two
custom ops are defined with ``torch.library`` before the import (``import_torchvision``), which
must happen before anything imports transformers (transformers imports torchvision when present).
"""
from __future__ import annotations

import dataclasses
import glob
import os
import sys
from typing import Callable

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
_TV_LIB = None  # the torch.library.Library defining torchvision's ops: kept alive for the process


def import_torchvision():
    """torchvision, importable beside the CPU torch (its ops defined here first), or None."""
    global _TV_LIB
    import importlib.util

    if importlib.util.find_spec("torchvision") is None:
        return None
    import torch

    if _TV_LIB is None and not hasattr(torch.ops.torchvision, "nms"):
        try:
            torch._C._dispatch_find_schema_or_throw("torchvision::nms", "")
        except RuntimeError:  # not defined yet (the normal case: the CUDA _C did not load)
            _TV_LIB = torch.library.Library("torchvision", "DEF")
            _TV_LIB.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
            _TV_LIB.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Failed to load image Python extension"
        import torchvision
    return torchvision


def optional_pieces() -> dict[str, str | None]:
    """Each optional package the zoo uses: its version, or None when it is missing."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("torchvision", "torch-pruning", "transformers", "onnxscript", "apache-tvm", "rapidocr-onnxruntime"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    return out


@dataclasses.dataclass
class Case:
    """One model: a torch module (eval) or an ONNX file, and how to draw its inputs."""

    name: str
    family: str
    sample: Callable[[int, int], tuple]  # (batch, seed) -> input tensors, in forward order
    module: object = None                # torch.nn.Module, or None for an ONNX-native model
    onnx_path: str | None = None
    note: str = ""


# --------------------------------------------------------------------------------------------
# inputs and weights

def images(size: int | tuple, channels: int = 3):
    h, w = (size, size) if isinstance(size, int) else size

    def sample(batch: int, seed: int) -> tuple:
        import torch

        return (torch.randn(batch, channels, h, w, generator=torch.Generator().manual_seed(seed)),)
    return sample


def features(channels: int, length: int):
    """Audio features (log-mel frames): [batch, channels, length]."""
    def sample(batch: int, seed: int) -> tuple:
        import torch

        return (torch.randn(batch, channels, length, generator=torch.Generator().manual_seed(seed)),)
    return sample


def token_ids(seq: int = 8, vocab: int = 99):
    def sample(batch: int, seed: int) -> tuple:
        import torch

        return (torch.randint(0, vocab, (batch, seq), generator=torch.Generator().manual_seed(seed)),)
    return sample


def settle(model, sample, seed: int = 1):
    """Trained-looking weights: BN statistics measured on two train-mode batches of ``sample``
    inputs, then perturbed, as are the BN affines; all-zero weight matrices re-initialised."""
    import torch

    g = torch.Generator().manual_seed(seed)
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2 and not p.any():  # a zero-initialised head (ViT's): outputs all zero
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)
        if bns:
            for bn in bns:
                bn.reset_running_stats()
                bn.momentum = None  # a cumulative average over the batches
            model.train()
            for i in range(2):
                model(*sample(2, 100 + i))
            for bn in bns:
                bn.momentum = 0.1
                n = bn.num_features
                bn.running_mean.add_(0.1 * bn.running_var.sqrt() * torch.randn(n, generator=g))
                bn.running_var.mul_(0.75 + 0.5 * torch.rand(n, generator=g))
                if bn.weight is not None:
                    bn.weight.mul_(1 + 0.2 * torch.randn(n, generator=g))
                    bn.bias.add_(0.1 * torch.randn(n, generator=g))
    return model.eval()


def _first_size(model, sizes, channels: int = 3) -> int:
    """The first of ``sizes`` the model runs at (some need >= 75 px, some a fixed 224)."""
    import torch

    last = None
    for s in sizes:
        try:
            with torch.no_grad():
                model.eval()(torch.randn(1, channels, s, s))
            return s
        except Exception as e:  # noqa: BLE001 - too small for this architecture: try the next size
            last = e
    raise RuntimeError(f"runs at none of {sizes}: {type(last).__name__}: {last}")


# --------------------------------------------------------------------------------------------
# torchvision

TV_HEAVY = {"regnet_y_128gf", "vit_h_14", "vit_l_16", "vit_l_32", "regnet_y_32gf", "vgg11", "vgg11_bn",
            "vgg13", "vgg13_bn", "vgg16", "vgg16_bn", "vgg19", "vgg19_bn", "regnet_y_16gf", "efficientnet_b7",
            "efficientnet_b6", "regnet_x_32gf", "efficientnet_v2_l", "convnext_large", "swin_v2_b", "swin_b",
            "vit_b_16", "vit_b_32", "maxvit_t", "wide_resnet101_2", "resnext101_64x4d", "resnext101_32x8d"}
TV_DETECTION = ("fasterrcnn_resnet50_fpn", "fasterrcnn_resnet50_fpn_v2", "fasterrcnn_mobilenet_v3_large_fpn",
                "retinanet_resnet50_fpn", "retinanet_resnet50_fpn_v2", "fcos_resnet50_fpn", "ssd300_vgg16",
                "ssdlite320_mobilenet_v3_large")


def tv_names(tv, heavy: bool | None = None) -> dict[str, tuple[str, Callable]]:
    """torchvision's rows; ``heavy`` True / False: only the big classifiers / all but them."""
    out = {}
    for n in tv.models.list_models(module=tv.models):
        if heavy is None or heavy == (n in TV_HEAVY):
            out[f"tv/{n}"] = ("torchvision", lambda n=n: tv_classifier(n))
    if heavy:
        return out
    for n in tv.models.list_models(module=tv.models.segmentation):
        out[f"tv-seg/{n}"] = ("torchvision-seg", lambda n=n: tv_segmentation(n))
    for n in TV_DETECTION:
        out[f"tv-det/{n}"] = ("torchvision-det", lambda n=n: tv_backbone(n))
    return out


def tv_classifier(name: str) -> Case:
    import torch

    tv = import_torchvision()
    torch.manual_seed(0)
    kwargs = {}
    if name.startswith("vit_"):  # any image size divisible by the patch: 4x4 patches
        patch = int(name.rsplit("_", 1)[1])
        kwargs["image_size"] = 4 * patch
    model = tv.models.get_model(name, weights=None, **kwargs).eval()
    size = kwargs.get("image_size") or _first_size(model, (64, 96, 128, 224))
    return Case(f"tv/{name}", "torchvision", images(size), settle(model, images(size)), note=f"{size}px")


def tv_segmentation(name: str) -> Case:
    import torch

    tv = import_torchvision()
    torch.manual_seed(0)
    model = tv.models.get_model(name, weights=None, weights_backbone=None).eval()
    size = _first_size(model, (64, 96, 128))
    return Case(f"tv-seg/{name}", "torchvision-seg", images(size), settle(model, images(size)), note=f"{size}px")


def tv_backbone(name: str) -> Case:
    """A detection model's backbone (+FPN where it has one): torch.export cannot capture the
    detectors themselves (data-dependent box filtering, NMS)."""
    import torch

    tv = import_torchvision()
    torch.manual_seed(0)
    model = tv.models.get_model(name, weights=None, weights_backbone=None).backbone.eval()
    size = _first_size(model, (128, 160, 224, 300, 320))
    return Case(f"tv-det/{name}", "torchvision-det", images(size), settle(model, images(size)),
                note=f"backbone, {size}px")


# --------------------------------------------------------------------------------------------
# transformers: tiny configs, random weights

ENC = dict(num_hidden_layers=2, hidden_size=32, num_attention_heads=2, intermediate_size=64, vocab_size=99,
           max_position_embeddings=64)
DEC = dict(num_hidden_layers=2, hidden_size=32, num_attention_heads=4, intermediate_size=64, vocab_size=99,
           max_position_embeddings=64)
VIS = dict(num_hidden_layers=2, hidden_size=32, num_attention_heads=2, intermediate_size=64, image_size=32,
           patch_size=8)


def _hf_specs() -> dict[str, tuple[Callable, Callable]]:
    """name -> (model factory taking the transformers module, input sampler)."""
    ids, img32, img64 = token_ids(), images(32), images(64)
    stages = dict(hidden_sizes=[16, 32], depths=[1, 1])
    return {
        # encoders (Post-LN)
        "bert": (lambda tf: tf.BertModel(tf.BertConfig(**ENC), add_pooling_layer=False), ids),
        "roberta": (lambda tf: tf.RobertaModel(tf.RobertaConfig(**ENC, pad_token_id=1), add_pooling_layer=False), ids),
        "distilbert": (lambda tf: tf.DistilBertModel(tf.DistilBertConfig(n_layers=2, dim=32, n_heads=2, hidden_dim=64,
                                                                          vocab_size=99)), ids),
        "albert": (lambda tf: tf.AlbertModel(tf.AlbertConfig(**ENC, embedding_size=16), add_pooling_layer=False), ids),
        "electra": (lambda tf: tf.ElectraModel(tf.ElectraConfig(**ENC, embedding_size=16)), ids),
        "deberta-v2": (lambda tf: tf.DebertaV2Model(tf.DebertaV2Config(**ENC)), ids),
        "mpnet": (lambda tf: tf.MPNetModel(tf.MPNetConfig(**ENC), add_pooling_layer=False), ids),
        "t5-encoder": (lambda tf: tf.T5EncoderModel(tf.T5Config(d_model=32, d_kv=8, d_ff=64, num_layers=2,
                                                                num_heads=4, vocab_size=99)), ids),
        # decoders (Pre-LN / RMSNorm; caches on, as users bring them)
        "gpt2": (lambda tf: tf.GPT2Model(tf.GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=99,
                                                       n_positions=64, bos_token_id=0, eos_token_id=0)), ids),
        "gpt-neox": (lambda tf: tf.GPTNeoXModel(tf.GPTNeoXConfig(**DEC)), ids),
        "llama-gqa": (lambda tf: tf.LlamaModel(_eager(tf.LlamaConfig(**DEC, num_key_value_heads=2))), ids),
        "mistral": (lambda tf: tf.MistralModel(_eager(tf.MistralConfig(**DEC, num_key_value_heads=2))), ids),
        "qwen2": (lambda tf: tf.Qwen2Model(_eager(tf.Qwen2Config(**DEC, num_key_value_heads=2))), ids),
        "phi": (lambda tf: tf.PhiModel(_eager(tf.PhiConfig(**DEC))), ids),
        "gemma": (lambda tf: tf.GemmaModel(_eager(tf.GemmaConfig(**DEC, num_key_value_heads=1, head_dim=8))), ids),
        "opt": (lambda tf: tf.OPTModel(tf.OPTConfig(num_hidden_layers=2, hidden_size=32, ffn_dim=64,
                                                    num_attention_heads=2, word_embed_proj_dim=32, vocab_size=99,
                                                    max_position_embeddings=64)), ids),
        "falcon-mqa": (lambda tf: tf.FalconModel(tf.FalconConfig(num_hidden_layers=2, hidden_size=32,
                                                                 num_attention_heads=4, multi_query=True,
                                                                 new_decoder_architecture=False,
                                                                 vocab_size=99)), ids),
        "bloom": (lambda tf: tf.BloomModel(tf.BloomConfig(n_layer=2, hidden_size=32, n_head=4, vocab_size=99)), ids),
        "gptj": (lambda tf: tf.GPTJModel(tf.GPTJConfig(n_layer=2, n_embd=32, n_head=4, rotary_dim=4,
                                                       vocab_size=99, n_positions=64)), ids),
        # vision transformers
        "vit": (lambda tf: tf.ViTModel(tf.ViTConfig(**VIS), add_pooling_layer=False), img32),
        "deit": (lambda tf: tf.DeiTModel(tf.DeiTConfig(**VIS), add_pooling_layer=False), img32),
        "beit": (lambda tf: tf.BeitModel(tf.BeitConfig(**VIS, use_relative_position_bias=True),
                                         add_pooling_layer=False), img32),
        "dinov2": (lambda tf: tf.Dinov2Model(tf.Dinov2Config(**VIS)), img32),
        "swin": (lambda tf: tf.SwinModel(tf.SwinConfig(image_size=64, patch_size=4, embed_dim=16, depths=[1, 1],
                                                       num_heads=[2, 2], window_size=4)), img64),
        "segformer": (lambda tf: tf.SegformerModel(tf.SegformerConfig(
            num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1], hidden_sizes=[16, 32], patch_sizes=[7, 3],
            strides=[4, 2], num_attention_heads=[1, 2], mlp_ratios=[2, 2])), img64),
        "whisper-encoder": (lambda tf: tf.WhisperModel(tf.WhisperConfig(
            d_model=32, encoder_layers=2, decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=2,
            encoder_ffn_dim=64, decoder_ffn_dim=64, num_mel_bins=16, max_source_positions=16,
            vocab_size=99, pad_token_id=0, bos_token_id=0, eos_token_id=0,
            decoder_start_token_id=1)).get_encoder(), features(16, 32)),
        # convolutional
        "convnext": (lambda tf: tf.ConvNextModel(tf.ConvNextConfig(hidden_sizes=[8, 16, 32, 64], depths=[1, 1, 1, 1])),
                     img64),
        "resnet": (lambda tf: tf.ResNetModel(tf.ResNetConfig(embedding_size=16, **stages, layer_type="basic")), img64),
        "mobilenetv2": (lambda tf: tf.MobileNetV2Model(tf.MobileNetV2Config(depth_multiplier=0.35, image_size=64)),
                        img64),
        "efficientnet": (lambda tf: tf.EfficientNetModel(tf.EfficientNetConfig(
            width_coefficient=0.25, depth_coefficient=0.25, image_size=64, hidden_dim=320)), img64),
        "regnet": (lambda tf: tf.RegNetModel(tf.RegNetConfig(embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1],
                                                             groups_width=8)), img64),
        "mobilevit": (lambda tf: tf.MobileViTModel(tf.MobileViTConfig(
            image_size=64, hidden_sizes=[16, 24, 32], neck_hidden_sizes=[8, 8, 16, 16, 24, 32, 64])), img64),
    }


def _eager(cfg):
    cfg._attn_implementation = "eager"  # the legacy ONNX exporter fails on grouped-query SDPA
    return cfg


def hf_names() -> dict[str, tuple[str, Callable]]:
    return {f"hf/{n}": ("transformers", lambda n=n: hf_model(n)) for n in _hf_specs()}


def hf_model(name: str) -> Case:
    """A transformers model from a tiny config (random weights, eval), as a user brings it:
    its own output class, caches on."""
    import torch

    import_torchvision()  # transformers imports torchvision when installed: its ops first
    import transformers as tf

    factory, sample = _hf_specs()[name]
    torch.manual_seed(0)
    model = factory(tf).eval()
    return Case(f"hf/{name}", "transformers", sample, settle(model, sample))


# --------------------------------------------------------------------------------------------
# YOLO, PP-OCR, onnx's light model zoo

def yolo_names() -> dict[str, tuple[str, Callable]]:
    # HOOK: tests/yolo.py (another worker's YOLOv8-style detector: C2f, SPPF, DFL head). When it is
    # missing (or its builders are renamed), these rows report "builder missing" instead of running.
    return {"yolo/yolov8": ("yolo", lambda: yolo_case("yolov8")),
            "yolo/csp-backbone": ("yolo", lambda: yolo_case("csp"))}


def yolo_case(which: str) -> Case:
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    try:
        import yolo
    except ImportError as e:
        raise ModuleNotFoundError(f"tests/yolo.py is not importable ({e}): the YOLO hook has nothing to run") from None
    if which == "yolov8":
        net, x = yolo.yolov8(width=0.125, depth=0.33, imgsz=128)
    else:
        net, x = yolo.csp_backbone()
    return Case(f"yolo/{'yolov8' if which == 'yolov8' else 'csp-backbone'}", "yolo", images(x.shape[-1]),
                net.eval(), note=f"{x.shape[-1]}px, tests/yolo.py")


def ppocr_names() -> dict[str, tuple[str, Callable]]:
    return {f"ppocr/{k}": ("ppocr", lambda k=k: ppocr_case(k)) for k in ("cls", "det", "rec")}


def ppocr_case(kind: str) -> Case:
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    import zoo

    def sample(batch: int, seed: int) -> tuple:
        """Rendered text, normalised as PP-OCR does: crops (cls, rec) or pages (det), so that
        calibration and the quantized SQNR see the models' own input distribution."""
        import numpy as np
        import torch

        import quantize as q  # benchmarks/quantize.py: text lines and pages drawn with PIL

        if kind == "cls":
            x = [zoo.cls_input(c) for c in zoo.text_crops(batch, seed=seed)]
        else:
            rng = np.random.default_rng(seed)
            x = [q.det_normalise(q.text_page(rng, 160)) if kind == "det" else q.normalise(q.text_line(rng))
                 for _ in range(batch)]
        return (torch.from_numpy(np.concatenate(x)).float(),)
    return Case(f"ppocr/{kind}", "ppocr", sample, onnx_path=zoo.ppocr_path(kind),
                note="rapidocr's ONNX, real weights")


def light_names() -> dict[str, tuple[str, Callable]]:
    import onnx

    folder = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "light")
    out = {}
    for path in sorted(glob.glob(os.path.join(folder, "light_*.onnx"))):
        n = os.path.basename(path)[len("light_"):-len(".onnx")]
        out[f"onnx-zoo/{n}"] = ("onnx-zoo", lambda p=path, n=n: light_case(p, n))
    return out


def light_case(path: str, name: str) -> Case:
    """A model-zoo graph (opset 9) given random weights (tests/zoo.random_weights), written to a
    temporary file: the rows pass it to refold as a path."""
    import tempfile

    import onnx

    sys.path.insert(0, os.path.join(ROOT, "tests"))
    import zoo

    m = zoo.random_weights(onnx.load(path))
    inits = {t.name for t in m.graph.initializer}  # below IR 4 the weights are graph inputs too
    data = next(i for i in m.graph.input if i.name not in inits)
    dims = [d.dim_value or 1 for d in data.type.tensor_type.shape.dim]
    out = os.path.join(tempfile.mkdtemp(prefix="zoo-light-"), f"{name}.onnx")
    onnx.save(m, out)
    return Case(f"onnx-zoo/{name}", "onnx-zoo", images(tuple(dims[2:]), dims[1]), onnx_path=out,
                note="onnx light model zoo, random weights")


# --------------------------------------------------------------------------------------------

VARIANTS = ("torch", "onnx", "ts", "dynamo")


def registry(variants=VARIANTS) -> dict[str, tuple[str, Callable]]:
    """Every row name -> (family, builder), nothing built. Torch models get one row per variant
    (``torch``: ``name``, the module itself; ``ts`` / ``dynamo``: ``name@ts`` / ``name@dynamo``,
    its ONNX exports); ``onnx`` is the ONNX-native files (PP-OCR, the light model zoo). Families
    whose package is missing are left out.

    Order, for time-boxed runs: the cheap families first (transformers, YOLO: every variant), the
    ONNX-native files, torchvision (all torch rows, then each exporter's), its big classifiers last."""
    tv = import_torchvision()
    groups = [{**hf_names(), **yolo_names()}, "onnx"]
    if tv is not None:
        groups += [tv_names(tv, heavy=False), tv_names(tv, heavy=True)]
    out: dict[str, tuple[str, Callable]] = {}
    for group in groups:
        if group == "onnx":
            if "onnx" in variants:
                out.update(ppocr_names())
                out.update(light_names())
            continue
        for v in variants:
            if v != "onnx":
                out.update({name if v == "torch" else f"{name}@{v}": entry for name, entry in group.items()})
    return out


def build(row: str) -> Case:
    """The Case of a row (``tv/resnet18@ts`` builds ``tv/resnet18``)."""
    name = row.split("@", 1)[0]
    table = {}
    if name.startswith("tv"):
        tv = import_torchvision()
        if tv is None:
            raise ModuleNotFoundError("torchvision is not installed")
        table = tv_names(tv)
    elif name.startswith("hf/"):
        table = hf_names()
    elif name.startswith("yolo/"):
        table = yolo_names()
    elif name.startswith("ppocr/"):
        table = ppocr_names()
    elif name.startswith("onnx-zoo/"):
        table = light_names()
    if name not in table:
        raise KeyError(f"no model '{name}'")
    return table[name][1]()
