"""MobileStyleGAN's published IR files, loaded strictly into ``vhuman.mobilestylegan``'s networks.

Each graph is walked backwards from its output, one expected layer at a time, and every learned constant is
assigned to one named parameter of ours. A layer of another type than expected, a constant missing, one of
another shape, one that no parameter takes, or a layer the walk never reached is a ``CheckpointError`` naming it.
Fixed numbers of the layout (leaky-ReLU slopes, gains, the Haar filters, split sizes) are checked, not assumed.
Integer constants that only carry shapes for reshapes (batch-size plumbing) are checked to feed nothing else.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from vhuman.io import CheckpointError
from vhuman.latents import latent_for_seed
from vhuman.mobilestylegan import BLOCK_CHANNELS, MAPPING_GAIN, SLOPE, MobileStyleGANGenerator
from vhuman.openvino_ir import IRGraph, IRNode

# Layers that only compute shapes or move data; the walk passes through them (their integer constants are checked).
PLUMBING = {"ShapeOf", "Gather", "Unsqueeze", "Concat", "Broadcast", "Tile", "Squeeze", "Reshape", "VariadicSplit"}
HAAR = 1.0 / math.sqrt(2.0)
W_AVG_SAMPLES = 4096  # as the package that ships the files: the mean of the mapping over 4,096 draws
W_AVG_SEED = 0
IR_FILES = ("MappingNetwork.xml", "MappingNetwork.bin", "SynthesisNetwork.xml", "SynthesisNetwork.bin")


class GraphWalk:
    """Reads one IR graph: expected layers, their constants, and a ledger of the layers reached."""

    def __init__(self, graph: IRGraph, shapes: dict[str, tuple[int, ...]]):
        self.g, self.shapes = graph, shapes  # our parameters' shapes, by name
        self.reached: set[str] = set()
        self.state: dict[str, torch.Tensor] = {}

    def fail(self, node: IRNode, message: str) -> CheckpointError:
        return CheckpointError(f"{self.g.describe(node)}: {message}")

    def expect(self, node: IRNode, kind: str) -> IRNode:
        if node.type != kind:
            raise self.fail(node, f"a {kind} layer was expected here")
        self.reached.add(node.id)
        return node

    def split(self, node: IRNode) -> tuple[list[IRNode], list[IRNode]]:
        """The inputs of ``node`` that are layers, and those that are constants, in port order."""
        inputs = [self.g.producer(node, p) for p in range(len(node.inputs))]
        return [n for n in inputs if n.type != "Const"], [n for n in inputs if n.type == "Const"]

    def only_constant(self, node: IRNode) -> IRNode:
        consts = self.split(node)[1]
        if len(consts) != 1:
            raise self.fail(node, f"expected one constant input, found {len(consts)}")
        return consts[0]

    def data_and_constant(self, node: IRNode, kind: str) -> tuple[IRNode, np.ndarray]:
        self.expect(node, kind)
        data, consts = self.split(node)
        if len(data) != 1 or len(consts) != 1:
            raise self.fail(node, "expected one layer input and one constant")
        return data[0], self.g.constant(consts[0])

    def fixed(self, node: IRNode, value: np.ndarray, expected: float, what: str) -> None:
        if value.size == 0 or not np.allclose(value, expected, rtol=1e-6, atol=0):
            raise self.fail(node, f"{what} is {value.ravel()[:4].tolist()}, this network has {expected:.7g}")

    def assign(self, name: str, node: IRNode, value: np.ndarray) -> None:
        if name not in self.shapes:
            raise self.fail(node, f"its constant would go to {name}, which our network does not have")
        shape = self.shapes[name]
        # The export keeps unit dimensions ours drop ([1, C, 1, 1] for a bias of C): compare without them.
        if [d for d in value.shape if d != 1] != [d for d in shape if d != 1]:
            raise self.fail(node, f"a constant of shape {list(value.shape)} for {name}, which is {list(shape)}")
        if name in self.state:
            raise self.fail(node, f"{name} would be loaded twice")
        self.state[name] = torch.from_numpy(np.ascontiguousarray(value, dtype=np.float32)).reshape(shape)

    def finish(self, what: str) -> dict[str, torch.Tensor]:
        """Prove that nothing was left: every learned constant taken, every computing layer reached."""
        for node in self.g.unread_constants():
            if node.attrs["element_type"] not in ("i64", "i32"):
                raise self.fail(node, f"a constant of shape [{node.attrs.get('shape')}] that no part of {what} uses")
            for user in self.g.consumers[node.id]:
                if self.g.node(user).type not in PLUMBING | {"ReduceMean"}:
                    raise self.fail(node, f"an integer constant feeding a {self.g.node(user).type}, not a reshape")
            self.g.constant(node)
        for node in self.g.nodes.values():
            if node.type not in PLUMBING | {"Const", "Parameter", "Result"} and node.id not in self.reached:
                raise self.fail(node, f"a layer that {what} does not have")
        return self.state


def our_shapes(prefix: str) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every loaded tensor of our generator under ``prefix`` (``w_avg`` is ours, not the IR's)."""
    state = MobileStyleGANGenerator().state_dict()
    return {k: tuple(v.shape) for k, v in state.items() if k.startswith(prefix)}


def mapping_state(graph: IRGraph) -> dict[str, torch.Tensor]:
    walk, layers = GraphWalk(graph, our_shapes("mapping.")), []
    x = graph.producer(walk.expect(graph.single("Result"), "Result"), 0)
    while x.type == "Multiply" and any(n.type == "Const" for n in walk.split(x)[1]):
        pre, gain = walk.data_and_constant(x, "Multiply")
        walk.fixed(x, gain, MAPPING_GAIN, "the gain after the activation")
        add, slope = walk.data_and_constant(pre, "PReLU")
        walk.fixed(pre, slope, SLOPE, "the leaky-ReLU slope")
        walk.expect(add, "Add")
        inputs = walk.split(add)[0]
        if len(inputs) != 2:
            raise walk.fail(add, "expected the product plus the reshaped bias")
        matmul, reshape = sorted(inputs, key=lambda n: n.type != "MatMul")
        bias = walk.only_constant(walk.expect(reshape, "Reshape"))
        x, weight = walk.data_and_constant(matmul, "MatMul")
        layers.append((matmul, weight, bias))
        if matmul.attrs.get("transpose_b") != "true":
            raise walk.fail(matmul, "the weights are expected transposed (transpose_b)")
    _read_pixel_norm(walk, x)
    for i, (node, weight, bias) in enumerate(reversed(layers)):
        walk.assign(f"mapping.dense.{i}.weight", node, weight)
        walk.assign(f"mapping.dense.{i}.bias", node, graph.constant(bias))
    return walk.finish("the mapping network")


def _read_pixel_norm(walk: GraphWalk, node: IRNode) -> None:
    """z * (1 / sqrt(mean(z^2) + 1e-8)), as the export spells it out."""
    walk.expect(node, "Multiply")
    if len(walk.split(node)[0]) != 2:
        raise walk.fail(node, "the pixel norm should multiply z by one factor")
    param, factor = sorted(walk.split(node)[0], key=lambda n: n.type != "Parameter")
    walk.expect(param, "Parameter")
    walk.expect(factor, "Multiply")
    walk.fixed(factor, walk.g.constant(walk.only_constant(factor)), 1.0, "the pixel norm's numerator")
    reciprocal = walk.split(factor)[0][0]
    root, exponent = walk.data_and_constant(reciprocal, "Power")
    walk.fixed(reciprocal, exponent, -1.0, "the reciprocal's exponent")
    total, exponent = walk.data_and_constant(root, "Power")
    walk.fixed(root, exponent, 0.5, "the square root's exponent")
    mean, eps = walk.data_and_constant(total, "Add")
    walk.fixed(total, eps, 1e-8, "the pixel norm's epsilon")
    square, axis = walk.data_and_constant(mean, "ReduceMean")
    if axis.tolist() != [1] or mean.attrs.get("keep_dims") != "true":
        raise walk.fail(mean, "the pixel norm should average over the features (axis 1, dims kept)")
    source, exponent = walk.data_and_constant(square, "Power")
    walk.fixed(square, exponent, 2.0, "the square's exponent")
    if source.id != param.id:
        raise walk.fail(square, "the pixel norm should square the input z")


def _read_affine(walk: GraphWalk, node: IRNode, name: str, scaled: bool) -> None:
    """[N, C, 1, 1] factors: (w @ W.T + b), times a constant gain where the layer has one."""
    if scaled:
        node, gain = walk.data_and_constant(node, "Multiply")
        walk.assign(f"{name}.gain", node, gain)
    add = walk.split(walk.expect(node, "Reshape"))[0][0]  # its other input is batch-size plumbing
    matmul, bias = walk.data_and_constant(add, "Add")
    param, weight = walk.data_and_constant(matmul, "MatMul")
    walk.expect(param, "Parameter")
    if matmul.attrs.get("transpose_b") != "true":
        raise walk.fail(matmul, "the affine's weights are expected transposed (transpose_b)")
    walk.assign(f"{name}.weight", matmul, weight)
    walk.assign(f"{name}.bias", add, bias)


def _read_modulation(walk: GraphWalk, node: IRNode, name: str, scaled: bool = True) -> IRNode:
    """x * style: reads the style's affine into ``name`` and returns the layer that gives x."""
    walk.expect(node, "Multiply")
    inputs = walk.split(node)[0]
    styles = [n for n in inputs if n.output_shapes.get(_first_output(n), ())[-2:] == (1, 1)]
    if len(inputs) != 2 or len(styles) != 1:
        raise walk.fail(node, "expected a feature map times one style vector")
    _read_affine(walk, styles[0], name, scaled)
    return next(n for n in inputs if n is not styles[0])


def _first_output(node: IRNode) -> int:
    return min(node.output_shapes) if node.output_shapes else 0


def _read_noise_bias(walk: GraphWalk, node: IRNode, name: str) -> IRNode:
    """leaky ReLU(conv + noise + bias): checks the slope, reads noise and bias, returns the conv layer."""
    add, slope = walk.data_and_constant(node, "PReLU")
    walk.fixed(node, slope, SLOPE, "the leaky-ReLU slope")
    noisy, bias = walk.data_and_constant(add, "Add")
    walk.assign(f"{name}.noise_bias.bias", add, bias)
    conv, noise = walk.data_and_constant(noisy, "Add")
    if noise.ndim != 4 or noise.shape[:2] != (1, 1):
        raise walk.fail(noisy, f"a noise map [1, 1, H, W] was expected, not {list(noise.shape)}")
    walk.assign(f"{name}.noise_bias.noise", noisy, noise)
    return conv


def _conv(walk: GraphWalk, node: IRNode, kind: str, pads: str) -> tuple[IRNode, np.ndarray]:
    x, weight = walk.data_and_constant(node, kind)
    if (
        node.attrs.get("strides") != "1, 1"
        or node.attrs.get("pads_begin") != pads
        or node.attrs.get("pads_end") != pads
        or node.attrs.get("dilations", "1, 1") != "1, 1"
    ):
        raise walk.fail(node, f"expected stride 1, dilation 1 and padding {pads}")
    return x, weight


def _read_separable(walk: GraphWalk, node: IRNode, name: str) -> IRNode:
    pointwise = _read_noise_bias(walk, node, name)
    depthwise, weight_pw = _conv(walk, pointwise, "Convolution", "0, 0")
    walk.assign(f"{name}.weight_pw", pointwise, weight_pw)
    modulated, weight_dw = _conv(walk, depthwise, "GroupConvolution", "1, 1")
    walk.assign(f"{name}.weight_dw", depthwise, weight_dw)
    return _read_modulation(walk, modulated, f"{name}.affine")


def _transposed_haar(walk: GraphWalk, node: IRNode, strides: str) -> bool:
    """One of the six transposed convs: checks it, and says whether its filter is the high-pass one."""
    _, taps = walk.data_and_constant(node, "GroupConvolutionBackpropData")
    if node.attrs.get("strides") != strides or taps.ndim != 5 or taps.shape[1:3] != (1, 1) or taps[0].size != 2:
        raise walk.fail(node, f"an inverse-wavelet step with strides {strides} and 2-tap filters was expected")
    taps = taps.reshape(taps.shape[0], 2)
    for high, filt in ((False, (HAAR, HAAR)), (True, (HAAR, -HAAR))):
        if np.allclose(taps, filt, rtol=1e-6, atol=0):
            return high
    raise walk.fail(node, f"filter {taps[0].tolist()} is neither of the Haar filters")


def _haar_pair(walk: GraphWalk, node: IRNode, strides: str) -> tuple[IRNode, IRNode]:
    """Add(low-pass step, high-pass step): the two steps, low-pass first."""
    walk.expect(node, "Add")
    steps = {_transposed_haar(walk, n, strides): n for n in walk.split(node)[0]}
    if set(steps) != {False, True}:
        raise walk.fail(node, "expected one low-pass and one high-pass step")
    return steps[False], steps[True]


def _split_of(walk: GraphWalk, node: IRNode, port: int = 0) -> tuple[IRNode, int]:
    """The VariadicSplit feeding input ``port`` of ``node``, and which of its outputs that is."""
    split = walk.expect(walk.g.producer(node, port), "VariadicSplit")
    return split, sorted(split.output_shapes).index(walk.g.output_port_of(node, port))


def _split_sizes(walk: GraphWalk, split: IRNode) -> tuple[int, list[int]]:
    axis, sizes = (walk.g.constant(walk.g.producer(split, p)) for p in (1, 2))
    return int(axis), sizes.tolist()


def _read_haar(walk: GraphWalk, node: IRNode) -> IRNode:
    """The inverse Haar transform of ``haar_inverse``: checks its six steps and returns the layer transformed.

    Bands in ``haar_inverse``'s order: low = channels [0, C); b0, b1, b2 = the three high bands of each channel
    (channels C + 3c + k). Rows: low with b0, b1 with b2; then columns: the first sum with the second."""
    row_low, row_high = (walk.g.producer(n, 0) for n in _haar_pair(walk, node, "1, 2"))
    ll_step, b0_step = _haar_pair(walk, row_low, "2, 1")
    b1_step, b2_step = _haar_pair(walk, row_high, "2, 1")
    channels, part = _split_of(walk, ll_step)
    source = walk.g.producer(channels, 0)
    axis, sizes = _split_sizes(walk, channels)
    c = sizes[0] if sizes else 0
    if part != 0 or axis != 1 or sizes != [c, 3 * c]:
        raise walk.fail(channels, f"expected the low band first of a channel split [C, 3C], got axis {axis} {sizes}")
    squeezes = [walk.g.producer(step, 0) for step in (b0_step, b1_step, b2_step)]
    for k, squeeze in enumerate(squeezes):
        _, dims = walk.data_and_constant(squeeze, "Squeeze")
        bands, which = _split_of(walk, squeeze)
        if dims.tolist() != [2] or which != k or bands.id != _split_of(walk, squeezes[0])[0].id:
            raise walk.fail(squeeze, f"high band {k} should be output {k} of one split, its axis 2 squeezed")
    if _split_sizes(walk, bands) != (2, [1, 1, 1]):
        raise walk.fail(bands, "the high bands should be split 1, 1, 1 along axis 2")
    reshape = walk.expect(walk.g.producer(bands, 0), "Reshape")
    if _split_of(walk, reshape) != (channels, 1):
        raise walk.fail(reshape, "the high bands should be the second part of the channel split")
    return source


def _read_first_conv(walk: GraphWalk, node: IRNode) -> None:
    """The 4x4 layer, from its activation back to the learned constant it starts from."""
    conv = _read_noise_bias(walk, node, "synthesis_network.conv")
    modulated, weight = _conv(walk, conv, "Convolution", "1, 1")
    walk.assign("synthesis_network.conv.weight", conv, weight)
    tile = walk.expect(_read_modulation(walk, modulated, "synthesis_network.conv.affine"), "Tile")
    broadcast = walk.expect(walk.g.producer(tile, 0), "Broadcast")
    const = walk.g.producer(broadcast, 0)
    walk.assign("synthesis_network.const", const, walk.g.constant(const))


def synthesis_state(graph: IRGraph) -> dict[str, torch.Tensor]:
    walk = GraphWalk(graph, our_shapes("synthesis_network."))
    bands = _read_haar(walk, graph.producer(walk.expect(graph.single("Result"), "Result"), 0))
    conv, bias = walk.data_and_constant(bands, "Add")
    walk.assign("synthesis_network.to_wavelets.bias", bands, bias)
    x, weight = _conv(walk, conv, "Convolution", "0, 0")
    walk.assign("synthesis_network.to_wavelets.weight", conv, weight)
    x = _read_modulation(walk, x, "synthesis_network.to_wavelets.affine")
    for b in reversed(range(len(BLOCK_CHANNELS))):
        x = _read_separable(walk, x, f"synthesis_network.blocks.{b}.conv2")
        x = _read_haar(walk, _read_separable(walk, x, f"synthesis_network.blocks.{b}.conv1"))
        x = _read_modulation(walk, x, f"synthesis_network.blocks.{b}.up.affine", scaled=False)
    _read_first_conv(walk, x)
    return walk.finish("the synthesis network")


def generator_from_ir(files: dict[str, Path], resolution: int = 256) -> MobileStyleGANGenerator:
    """Our generator from the four IR files (``files`` maps each name of ``IR_FILES`` to its path), loaded strictly;
    ``w_avg`` is the mean of the mapping over 4,096 draws of z (seeds 0..4095)."""
    if set(files) != set(IR_FILES):
        raise CheckpointError(f"MobileStyleGAN's IR needs exactly the files {IR_FILES}, got {sorted(files)}")
    state = mapping_state(IRGraph(files["MappingNetwork.xml"], files["MappingNetwork.bin"]))
    state.update(synthesis_state(IRGraph(files["SynthesisNetwork.xml"], files["SynthesisNetwork.bin"])))
    gen = MobileStyleGANGenerator(resolution=resolution)
    missing = sorted(set(gen.state_dict()) - set(state) - {"w_avg"})
    if missing:
        raise CheckpointError(f"{files['SynthesisNetwork.xml']}: the IR has no constant for {', '.join(missing)}")
    gen.load_state_dict({**state, "w_avg": torch.zeros(gen.w_dim)}, strict=True)
    with torch.no_grad():
        z = torch.stack([latent_for_seed(W_AVG_SEED + i, gen.z_dim) for i in range(W_AVG_SAMPLES)])
        gen.w_avg.copy_(gen.mapping(z).mean(0))
    return gen.eval()


def ir_files_in(folder: str | Path) -> dict[str, Path]:
    return {name: Path(folder) / name for name in IR_FILES}
