"""The paper's configurations as data: names, aliases, parameter counts, the arithmetic of `info`."""

import pytest

from vggfeat.errors import ArchitectureError, LayerError
from vggfeat.specs import count_params, get_arch, layer_names, layer_table, paper_name, resolve_layer

PAPER_COUNTS = {
    "vgg11": 132_863_336,
    "vgg11-lrn": 132_863_336,
    "vgg13": 133_047_848,
    "vgg16c": 133_638_952,
    "vgg16": 138_357_544,
    "vgg19": 143_667_240,
}


@pytest.mark.parametrize("arch,count", PAPER_COUNTS.items())
def test_parameter_counts_from_arithmetic(arch, count):
    assert count_params(arch) == count


#: torchvision's counts for vgg11_bn..vgg19_bn (sum of parameters' numel: conv, batch norm scale and offset, FC)
TORCHVISION_BN_COUNTS = {
    "vgg11-bn": 132_868_840,
    "vgg13-bn": 133_053_736,
    "vgg16-bn": 138_365_992,
    "vgg19-bn": 143_678_248,
}


@pytest.mark.parametrize("arch,count", TORCHVISION_BN_COUNTS.items())
def test_batch_norm_parameter_counts_equal_torchvisions(arch, count):
    assert count_params(arch) == count
    rows = layer_table(arch)
    assert [r.kind for r in rows][0] == "conv3x3+bn"


@pytest.mark.parametrize("spelling,name", [("vgg16_bn", "vgg16-bn"), ("VGG19-BN", "vgg19-bn"), ("A-BN", "vgg11-bn"),
                                           ("b_bn", "vgg13-bn"), ("vgg16bn", "vgg16-bn")])
def test_batch_norm_names(spelling, name):
    assert get_arch(spelling).name == name


def test_a_batch_norm_networks_conv_features_are_after_the_relu():
    from vggfeat.specs import canonical_layer, resolve_layer

    spec = get_arch("vgg16-bn")
    assert resolve_layer(spec, "conv5_3") == resolve_layer(spec, "block5_conv3") == "block5_relu3"
    assert canonical_layer("block5_relu3") == "conv5_3"
    assert resolve_layer(get_arch("vgg16"), "conv5_3") == "block5_conv3"


@pytest.mark.parametrize("letter,name", [("A", "vgg11"), ("a-lrn", "vgg11-lrn"), ("B", "vgg13"), ("C", "vgg16c"),
                                         ("D", "vgg16"), ("e", "vgg19"), ("VGG16", "vgg16")])
def test_letters_are_aliases(letter, name):
    assert get_arch(letter).name == name


def test_unknown_arch_lists_choices():
    with pytest.raises(ArchitectureError, match=r"unknown architecture 'vgg17'.*vgg16 \(D\)"):
        get_arch("vgg17")


def test_layer_names_follow_keras_applications():
    names = layer_names(get_arch("vgg16"))
    assert names[:3] == ["block1_conv1", "block1_conv2", "block1_pool"]
    assert names[-4:] == ["block5_pool", "fc1", "fc2", "predictions"]
    assert "block5_conv3" in names and "block5_conv4" not in names
    assert "block5_conv4" in layer_names(get_arch("vgg19"))
    assert "block1_lrn" in layer_names(get_arch("vgg11-lrn"))


@pytest.mark.parametrize("given,keras_name", [("conv5_3", "block5_conv3"), ("pool5", "block5_pool"),
                                              ("fc6", "fc1"), ("fc7", "fc2"), ("fc8", "predictions"),
                                              ("FC7", "fc2"), ("block3_conv1", "block3_conv1"), ("fc2", "fc2")])
def test_paper_names_resolve(given, keras_name):
    assert resolve_layer(get_arch("vgg16"), given) == keras_name


def test_paper_name_round_trip():
    for name in layer_names(get_arch("vgg19")):
        assert resolve_layer(get_arch("vgg19"), paper_name(name)) == name


def test_unknown_layer_lists_valid_names():
    with pytest.raises(LayerError) as err:
        resolve_layer(get_arch("vgg16"), "conv5_4")
    assert "conv5_3" in str(err.value) and "fc7" in str(err.value)


def test_fc_layers_absent_without_top():
    with pytest.raises(LayerError, match="fully-convolutional"):
        resolve_layer(get_arch("vgg16"), "fc7", include_top=False)


def test_vgg16c_has_1x1_convs_last_in_blocks_3_to_5():
    rows = {r.name: r for r in layer_table("vgg16c")}
    for b in (3, 4, 5):
        assert rows[f"block{b}_conv3"].kind == "conv1x1"
    assert rows["block2_conv2"].kind == "conv3x3"


def test_receptive_fields_and_macs_of_vgg16():
    rows = {r.alias: r for r in layer_table("vgg16", 224)}
    assert rows["conv1_1"].receptive_field == 3
    assert rows["conv1_2"].receptive_field == 5  # two stacked 3x3 see 5x5
    assert rows["conv2_1"].receptive_field == 10
    assert rows["conv5_3"].receptive_field == 196
    assert rows["pool5"].receptive_field == 212
    assert rows["pool5"].stride == 32
    total = sum(r.macs for r in layer_table("vgg16", 224))
    assert round(total / 1e9, 2) == 15.47


def test_dense_form_table_shapes():
    rows = {r.alias: r for r in layer_table("vgg16", 448, dense=True)}
    assert rows["fc6"].output_shape == (8, 8, 4096)
    assert rows["fc7"].receptive_field == 212 + 6 * 32
    # the same parameters as the standard form
    assert sum(r.params for r in layer_table("vgg16", 448, dense=True)) == PAPER_COUNTS["vgg16"]
    with pytest.raises(ArchitectureError, match="at least 224"):
        layer_table("vgg16", 200, dense=True)


def test_public_functions_stay_functions_when_their_modules_are_imported():
    """No module shares its name with a public function, so importing every module leaves the functions."""
    import subprocess
    import sys

    code = ("import pkgutil, importlib, vggfeat\n"
            "mods = [m.name for m in pkgutil.iter_modules(vggfeat.__path__) if m.name != 'ray_engine']\n"
            "for m in mods: importlib.import_module('vggfeat.' + m)\n"
            "clash = sorted(set(mods) & set(vggfeat.__all__))\n"
            "assert not clash, clash\n"
            "assert callable(vggfeat.extract) and callable(vggfeat.classify) and callable(vggfeat.finetune)\n"
            "print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr[-2000:]
