"""Every ``keras.applications`` base, derived from one small family table (plain data).

A family says what all its members share: the preprocessing their ImageNet weights expect
(kcnn puts it inside the model), the smallest input they accept, where fine-tuning starts
by default (a named block boundary, following the Keras guides: the last stage, entered
through a single tensor where the architecture has one) and where Keras keeps the no-top
weights.  A member row adds what differs: the constructor, default input size, total
parameters without top and with ``weights=None`` (what ``model.summary()`` prints in Keras
3.15), feature width and ImageNet top-1 accuracy from the Keras applications table
(MobileNetV3: its Keras documentation).  The tests build every member and compare.

kcnn names are snake_case (``resnet50_v2``, ``mobilenet_v3_small``, ``efficientnet_v2_s``).
"""

from __future__ import annotations

from dataclasses import dataclass

from keras_cnn.errors import UserError
from keras_cnn.messages import did_you_mean
from keras_cnn.models.specs import HUB_PREFIX, KERAS_HUB_PREFIX, BaseSpec

_KERAS_APPLICATIONS = "https://storage.googleapis.com/tensorflow/keras-applications/"
# keras.applications' usual no-top file name ("resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5").
_TF_KERNELS_NOTOP = "{key}_weights_tf_dim_ordering_tf_kernels_notop.h5"


@dataclass(frozen=True)
class Member:
    """One constructor of a family (see the module docstring)."""

    name: str
    constructor: str
    keras_name: str
    default_image_size: int
    params: int
    feature_width: int
    top1: float | None
    weights_key: str | None = None          # {key} in the family's weights file name (default: keras_name)
    default_unfreeze: str | None = None     # when the family's default does not fit this member
    download_name: str | None = None        # the file's name at the download address, when it differs


@dataclass(frozen=True)
class Family:
    """What a family's members share."""

    name: str
    preprocessing: str
    default_unfreeze: str                   # "{keras_name}" is replaced by the member's Keras name
    weights_file: str                       # "{key}": the member's weights key
    weights_folder: str                     # download address of the folder holding the files
    members: tuple[Member, ...]
    min_image_size: int = 32
    constructor_kwargs: tuple[tuple[str, object], ...] = ()
    keras_module: str | None = None         # keras.applications module with its preprocess_input (default: name)

    @property
    def module(self) -> str:
        """The ``keras.applications`` module of this family (whose ``preprocess_input`` kcnn reproduces)."""
        return self.keras_module or self.name


FAMILIES: tuple[Family, ...] = (
    Family("vgg", "caffe", "block5_conv1", _TF_KERNELS_NOTOP, _KERAS_APPLICATIONS + "{key}/", (
        Member("vgg16", "VGG16", "vgg16", 224, 14_714_688, 512, 71.3),
        Member("vgg19", "VGG19", "vgg19", 224, 20_024_384, 512, 71.3),
    ), keras_module="vgg16"),
    Family("resnet", "caffe", "conv5_block1", _TF_KERNELS_NOTOP, _KERAS_APPLICATIONS + "resnet/", (
        Member("resnet50", "ResNet50", "resnet50", 224, 23_587_712, 2048, 74.9),
        Member("resnet101", "ResNet101", "resnet101", 224, 42_658_176, 2048, 76.4),
        Member("resnet152", "ResNet152", "resnet152", 224, 58_370_944, 2048, 76.6),
    )),
    Family("resnet_v2", "tf", "conv5_block1", _TF_KERNELS_NOTOP, _KERAS_APPLICATIONS + "resnet/", (
        Member("resnet50_v2", "ResNet50V2", "resnet50v2", 224, 23_564_800, 2048, 76.0),
        Member("resnet101_v2", "ResNet101V2", "resnet101v2", 224, 42_626_560, 2048, 77.2),
        Member("resnet152_v2", "ResNet152V2", "resnet152v2", 224, 58_331_648, 2048, 78.0),
    )),
    Family("inception_v3", "tf", "mixed8", _TF_KERNELS_NOTOP, _KERAS_APPLICATIONS + "inception_v3/", (
        Member("inception_v3", "InceptionV3", "inception_v3", 299, 21_802_784, 2048, 77.9),
    ), min_image_size=75),
    Family("inception_resnet_v2", "tf", "mixed_7a", _TF_KERNELS_NOTOP,
           _KERAS_APPLICATIONS + "inception_resnet_v2/", (
               Member("inception_resnet_v2", "InceptionResNetV2", "inception_resnet_v2", 299, 54_336_736, 1536,
                      80.3),
           ), min_image_size=75),
    Family("xception", "tf", "block14_sepconv1", _TF_KERNELS_NOTOP, _KERAS_APPLICATIONS + "xception/", (
        Member("xception", "Xception", "xception", 299, 20_861_480, 2048, 79.0),
    ), min_image_size=71),
    Family("mobilenet", "tf", "conv_dw_12", "mobilenet_1_0_224_tf_no_top.h5", _KERAS_APPLICATIONS + "mobilenet/", (
        Member("mobilenet", "MobileNet", "mobilenet_1.00_224", 224, 3_228_864, 1024, 70.4),
    )),
    Family("mobilenet_v2", "tf", "block_13", "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5",
           _KERAS_APPLICATIONS + "mobilenet_v2/", (
               Member("mobilenet_v2", "MobileNetV2", "mobilenet_v2_1.00_224", 224, 2_257_984, 1280, 71.3),
           )),
    # MobileNetV3 rescales its own input (include_preprocessing=True, the Keras default).
    Family("mobilenet_v3", "none", "expanded_conv_8", "weights_mobilenet_v3_{key}_224_1.0_float_no_top_v2.h5",
           _KERAS_APPLICATIONS + "mobilenet_v3/", (
               Member("mobilenet_v3_small", "MobileNetV3Small", "MobileNetV3Small", 224, 939_120, 576, 68.1,
                      weights_key="small"),
               Member("mobilenet_v3_large", "MobileNetV3Large", "MobileNetV3Large", 224, 2_996_352, 960, 75.6,
                      weights_key="large", default_unfreeze="expanded_conv_12"),
           ), constructor_kwargs=(("include_preprocessing", True),)),
    Family("densenet", "torch", "conv5_block1", _TF_KERNELS_NOTOP, _KERAS_APPLICATIONS + "densenet/", (
        Member("densenet121", "DenseNet121", "densenet121", 224, 7_037_504, 1024, 75.0),
        Member("densenet169", "DenseNet169", "densenet169", 224, 12_642_880, 1664, 76.2),
        Member("densenet201", "DenseNet201", "densenet201", 224, 18_321_984, 1920, 77.3),
    )),
    Family("nasnet", "tf", "normal_concat_8", "nasnet_{key}_no_top.h5", _KERAS_APPLICATIONS + "nasnet/", (
        Member("nasnet_mobile", "NASNetMobile", "nasnet_mobile", 224, 4_269_716, 1056, 74.4,
               weights_key="mobile", download_name="NASNet-mobile-no-top.h5"),
        Member("nasnet_large", "NASNetLarge", "nasnet_large", 331, 84_916_818, 4032, 82.5,
               weights_key="large", download_name="NASNet-large-no-top.h5", default_unfreeze="normal_concat_12"),
    )),
    # EfficientNet rescales and normalises its own input; fine-tuning from block7a follows
    # the Keras EfficientNet fine-tuning example (top blocks, BatchNorm frozen).
    Family("efficientnet", "none", "block7a", "{key}_notop.h5", "https://storage.googleapis.com/keras-applications/", (
        Member("efficientnet_b0", "EfficientNetB0", "efficientnetb0", 224, 4_049_571, 1280, 77.1),
        Member("efficientnet_b1", "EfficientNetB1", "efficientnetb1", 240, 6_575_239, 1280, 79.1),
        Member("efficientnet_b2", "EfficientNetB2", "efficientnetb2", 260, 7_768_569, 1408, 80.1),
        Member("efficientnet_b3", "EfficientNetB3", "efficientnetb3", 300, 10_783_535, 1536, 81.6),
        Member("efficientnet_b4", "EfficientNetB4", "efficientnetb4", 380, 17_673_823, 1792, 82.9),
        Member("efficientnet_b5", "EfficientNetB5", "efficientnetb5", 456, 28_513_527, 2048, 83.6),
        Member("efficientnet_b6", "EfficientNetB6", "efficientnetb6", 528, 40_960_143, 2304, 84.0),
        Member("efficientnet_b7", "EfficientNetB7", "efficientnetb7", 600, 64_097_687, 2560, 84.3),
    )),
    Family("efficientnet_v2", "none", "block6a", "{key}_notop.h5", _KERAS_APPLICATIONS + "efficientnet_v2/", (
        Member("efficientnet_v2_b0", "EfficientNetV2B0", "efficientnetv2-b0", 224, 5_919_312, 1280, 78.7),
        Member("efficientnet_v2_b1", "EfficientNetV2B1", "efficientnetv2-b1", 240, 6_931_124, 1280, 79.8),
        Member("efficientnet_v2_b2", "EfficientNetV2B2", "efficientnetv2-b2", 260, 8_769_374, 1408, 80.5),
        Member("efficientnet_v2_b3", "EfficientNetV2B3", "efficientnetv2-b3", 300, 12_930_622, 1536, 82.0),
        Member("efficientnet_v2_s", "EfficientNetV2S", "efficientnetv2-s", 384, 20_331_360, 1280, 83.9),
        Member("efficientnet_v2_m", "EfficientNetV2M", "efficientnetv2-m", 480, 53_150_388, 1280, 85.3,
               default_unfreeze="block7a"),
        Member("efficientnet_v2_l", "EfficientNetV2L", "efficientnetv2-l", 480, 117_746_848, 1280, 85.7,
               default_unfreeze="block7a"),
    ), constructor_kwargs=(("include_preprocessing", True),)),
    # ConvNeXt normalises its own input; fine-tuning starts at the last stage's downsampling block.
    Family("convnext", "none", "{keras_name}_downsampling_block_2", "{key}_notop.h5",
           _KERAS_APPLICATIONS + "convnext/", (
               Member("convnext_tiny", "ConvNeXtTiny", "convnext_tiny", 224, 27_820_128, 768, 81.3),
               Member("convnext_small", "ConvNeXtSmall", "convnext_small", 224, 49_454_688, 768, 82.3),
               Member("convnext_base", "ConvNeXtBase", "convnext_base", 224, 87_566_464, 1024, 85.3),
               Member("convnext_large", "ConvNeXtLarge", "convnext_large", 224, 196_230_336, 1536, 86.3),
               Member("convnext_xlarge", "ConvNeXtXLarge", "convnext_xlarge", 224, 348_147_968, 2048, 86.7),
           ), constructor_kwargs=(("include_preprocessing", True),)),
)


def _spec(family: Family, member: Member) -> BaseSpec:
    key = member.weights_key or member.keras_name
    weights_file = family.weights_file.format(key=key)
    folder = family.weights_folder.format(key=key)
    unfreeze = member.default_unfreeze or family.default_unfreeze
    return BaseSpec(
        name=member.name,
        family=family.name,
        kind="keras",
        default_image_size=member.default_image_size,
        preprocessing=family.preprocessing,
        default_unfreeze=unfreeze.format(keras_name=member.keras_name),
        params=member.params,
        feature_width=member.feature_width,
        top1=member.top1,
        min_image_size=family.min_image_size,
        constructor=member.constructor,
        keras_name=member.keras_name,
        constructor_kwargs=family.constructor_kwargs,
        weights_file=weights_file,
        weights_url=folder + (member.download_name or weights_file),
    )


APPLICATION_BASES: dict[str, BaseSpec] = {
    member.name: _spec(family, member) for family in FAMILIES for member in family.members
}


def smallest_member(family: str) -> BaseSpec:
    """The family's member with the fewest parameters (the tests train one per family)."""
    members = [spec for spec in APPLICATION_BASES.values() if spec.family == family]
    return min(members, key=lambda spec: spec.params)


def application_base(name: str) -> BaseSpec:
    """The spec of the ``keras.applications`` base ``name`` (any case); an unknown name is one line
    offering the closest names.  Plain data: the commands check a name here before TensorFlow loads."""
    key = str(name).strip().lower()
    if key not in APPLICATION_BASES:
        raise UserError(
            f"unknown base {name!r}{did_you_mean(key, APPLICATION_BASES)} (`kcnn models` lists the "
            f"{len(APPLICATION_BASES)} bases, e.g. resnet50, mobilenet_v3_small, efficientnet_b0, convnext_tiny; "
            f"or {HUB_PREFIX}HANDLE for a TF Hub module, {KERAS_HUB_PREFIX}PRESET_OR_DIR for a keras-hub preset)"
        )
    return APPLICATION_BASES[key]


def check_base_name(name: str) -> None:
    """Refuse a misspelt ``keras.applications`` base name at once (``hub:`` and ``keras_hub:`` names are
    checked when their module or preset is opened)."""
    if not str(name).startswith((HUB_PREFIX, KERAS_HUB_PREFIX)):
        application_base(name)
