"""The backbones stage 1 can run, as data: one :class:`Backbone` per ``BACKBONE`` name.

Every fact here was read from the installed ``keras.applications`` source (Keras 3) and is
checked by ``tests/test_backbones.py``, which builds every entry with random weights at its
minimum size: the constructor, the no-top weights file that ``weights="imagenet"`` downloads
into Keras' cache, the default and minimum input sizes, the channels of the last block (the
embedding dimension after global avg/max pooling) and of the intermediate layers ``LAYER`` may
name instead.

Only layers with fixed names are listed: Keras numbers unnamed layers per process
(``activation_113``), so their names are not stable. Layers are listed shallow to deep; a
layer's value is its number of channels, i.e. the dimension of its pooled embedding.
"""

from __future__ import annotations

from typing import NamedTuple

WEIGHTS_URL = "https://storage.googleapis.com/tensorflow/keras-applications/{folder}/{file}"


class Backbone(NamedTuple):
    """One ``keras.applications`` model without its classifier top.

    The first three fields keep the order of the earlier ``(constructor, module, weights file)``
    tuples, so ``BACKBONES[name][2]`` still names the weights file.
    """

    constructor: str  # attribute of keras.applications
    module: str  # keras.applications sub-module holding its preprocess_input
    weights_file: str  # no-top ImageNet weights file, as Keras names it in ~/.keras/models/
    url_folder: str  # folder of that file under WEIGHTS_URL
    default_size: int  # the input side the ImageNet weights were trained at
    min_size: int  # the smallest input side the architecture accepts
    dim: int  # channels of the last block: the embedding dimension
    layers: dict  # LAYER name -> channels, shallow to deep (fixed-name layers only)
    last_layer: str | None  # the fixed name of the last block's layer, None when unnamed
    preprocessing_inside: bool  # True: the model rescales its input; preprocess_input does nothing

    @property
    def weights_url(self) -> str:
        """Where Keras downloads the no-top weights from (for copying them offline)."""
        return WEIGHTS_URL.format(folder=self.url_folder, file=self.weights_file)


_VGG_LAYERS = {"block1_pool": 64, "block2_pool": 128, "block3_pool": 256, "block4_pool": 512,
               "block5_pool": 512}

BACKBONES: dict[str, Backbone] = {
    "vgg16": Backbone(
        "VGG16", "vgg16", "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5", "vgg16",
        224, 32, 512, _VGG_LAYERS, "block5_pool", False),
    "vgg19": Backbone(
        "VGG19", "vgg19", "vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5", "vgg19",
        224, 32, 512, _VGG_LAYERS, "block5_pool", False),
    "resnet50v2": Backbone(
        "ResNet50V2", "resnet_v2", "resnet50v2_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "resnet", 224, 32, 2048,
        {"conv2_block3_out": 256, "conv3_block4_out": 512, "conv4_block6_out": 1024,
         "post_relu": 2048}, "post_relu", False),
    "inceptionv3": Backbone(
        "InceptionV3", "inception_v3", "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "inception_v3", 299, 75, 2048,
        {"mixed2": 288, "mixed7": 768, "mixed9": 2048, "mixed10": 2048}, "mixed10", False),
    "xception": Backbone(
        # Xception's residual additions are unnamed; each block*_sepconv1_act is the ReLU of
        # the previous block's output (the sum), i.e. that block's output as the next one sees it.
        "Xception", "xception", "xception_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "xception", 299, 71, 2048,
        {"block3_sepconv1_act": 128, "block4_sepconv1_act": 256, "block5_sepconv1_act": 728,
         "block13_sepconv1_act": 728, "block14_sepconv2_act": 2048},
        "block14_sepconv2_act", False),
    "densenet121": Backbone(
        "DenseNet121", "densenet", "densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "densenet", 224, 32, 1024,
        {"pool2_pool": 128, "pool3_pool": 256, "pool4_pool": 512, "relu": 1024}, "relu", False),
    "efficientnetv2b0": Backbone(
        "EfficientNetV2B0", "efficientnet_v2", "efficientnetv2-b0_notop.h5", "efficientnet_v2",
        224, 32, 1280,
        {"block2b_add": 32, "block3b_add": 48, "block4c_add": 96, "block5e_add": 112,
         "block6h_add": 192, "top_activation": 1280}, "top_activation", True),
    "efficientnetv2s": Backbone(
        "EfficientNetV2S", "efficientnet_v2", "efficientnetv2-s_notop.h5", "efficientnet_v2",
        384, 32, 1280,
        {"block2d_add": 48, "block3d_add": 64, "block4f_add": 128, "block5i_add": 160,
         "block6o_add": 256, "top_activation": 1280}, "top_activation", True),
    "convnexttiny": Backbone(
        # The stage outputs are unnamed additions; each downsampling block's output is the
        # previous stage's output, normalised and projected to the next stage's width.
        "ConvNeXtTiny", "convnext", "convnext_tiny_notop.h5", "convnext", 224, 32, 768,
        {"convnext_tiny_downsampling_block_0": 192, "convnext_tiny_downsampling_block_1": 384,
         "convnext_tiny_downsampling_block_2": 768}, None, True),
    "mobilenetv3large": Backbone(
        "MobileNetV3Large", "mobilenet_v3", "weights_mobilenet_v3_large_224_1.0_float_no_top_v2.h5",
        "mobilenet_v3", 224, 32, 960,
        {"expanded_conv_2_add": 24, "expanded_conv_5_add": 40, "expanded_conv_11_add": 112,
         "expanded_conv_14_add": 160}, None, True),
}
DEFAULT_BACKBONE = "vgg16"


def get(name: str) -> Backbone:
    """Returns the registry entry of ``name``.

    Raises:
        ValueError: ``name`` is not a known backbone (the message lists the known ones).
    """
    if name not in BACKBONES:
        raise ValueError(f"BACKBONE must be one of {', '.join(BACKBONES)}; received {name!r}")
    return BACKBONES[name]


def parse_list(text: str) -> list[str]:
    """Splits a comma-separated ``BACKBONES`` value into known names, in order, without repeats.

    Raises:
        ValueError: an empty list or an unknown name (the message lists the known ones).
    """
    names = list(dict.fromkeys(n.strip() for n in str(text).split(",") if n.strip()))
    if not names:
        raise ValueError(f"BACKBONES must name at least one backbone (comma-separated, from "
                         f"{', '.join(BACKBONES)}); received {text!r}")
    for name in names:
        get(name)
    return names
