"""OpenVINO IR files read as data: the XML graph (layers, ports, edges) and the constants in its binary blob.

Nothing of OpenVINO is needed or run. The reader trusts nothing: every constant's type, shape, offset and size is
checked against the blob, and every edge against the layers it joins, and a failure names the file and the layer.
``IRGraph`` also keeps a ledger of the constants a loader has read, so a loader can prove it left none unused.
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vhuman.io import CheckpointError

DTYPES = {"f32": np.float32, "f16": np.float16, "i64": np.int64, "i32": np.int32, "u8": np.uint8, "i8": np.int8}
SUPPORTED_VERSIONS = ("10", "11")


@dataclass
class IRNode:
    id: str
    type: str
    name: str
    attrs: dict[str, str]
    inputs: list[tuple[str, int]] = field(default_factory=list)  # per input port, in port order: (node id, port)
    output_shapes: dict[int, tuple[int, ...]] = field(default_factory=dict)


def _shape(text: str, where: str) -> tuple[int, ...]:
    try:
        return tuple(int(d) for d in text.split(",") if d.strip())
    except ValueError:
        raise CheckpointError(f"{where}: shape {text!r} is not a list of whole numbers") from None


class IRGraph:
    """One IR model: ``nodes`` by id, their consumers, and the constants' values."""

    def __init__(self, xml_path: str | Path, bin_path: str | Path | None = None):
        self.xml_path = Path(xml_path)
        self.bin_path = Path(bin_path) if bin_path else self.xml_path.with_suffix(".bin")
        for path in (self.xml_path, self.bin_path):
            if not path.is_file():
                raise CheckpointError(f"{path}: no such file; fetch the model's IR files again")
        try:
            root = ET.parse(self.xml_path).getroot()
        except ET.ParseError as exc:
            raise CheckpointError(f"{self.xml_path}: not a readable IR XML file ({exc}); fetch it again") from exc
        if root.tag != "net" or root.get("version") not in SUPPORTED_VERSIONS:
            raise CheckpointError(
                f"{self.xml_path}: not an OpenVINO IR of version {'/'.join(SUPPORTED_VERSIONS)} "
                f"(root <{root.tag} version={root.get('version')!r}>)"
            )
        self.blob = self.bin_path.read_bytes()
        self.nodes: dict[str, IRNode] = {}
        self._parse_layers(root)
        self._parse_edges(root)
        self.consumers: dict[str, list[str]] = {i: [] for i in self.nodes}
        for node in self.nodes.values():
            for src, _ in node.inputs:
                self.consumers[src].append(node.id)
        self.read: set[str] = set()

    def _parse_layers(self, root: ET.Element) -> None:
        layers = root.find("layers")
        if layers is None:
            raise CheckpointError(f"{self.xml_path}: no <layers> element")
        for layer in layers:
            node_id = layer.get("id")
            if node_id is None or node_id in self.nodes:
                raise CheckpointError(f"{self.xml_path}: a layer without an id, or a repeated id {node_id!r}")
            data = layer.find("data")
            node = IRNode(
                node_id, layer.get("type", ""), layer.get("name", ""), dict(data.attrib) if data is not None else {}
            )
            out = layer.find("output")
            for port in out if out is not None else []:
                dims = tuple(int(d.text) for d in port.findall("dim"))
                node.output_shapes[int(port.get("id"))] = dims
            self.nodes[node_id] = node
            if node.type == "Const":
                self._check_constant(node)

    def _parse_edges(self, root: ET.Element) -> None:
        edges = root.find("edges")
        if edges is None:
            raise CheckpointError(f"{self.xml_path}: no <edges> element")
        ports: dict[str, dict[int, tuple[str, int]]] = {i: {} for i in self.nodes}
        for edge in edges:
            src, dst = edge.get("from-layer"), edge.get("to-layer")
            if src not in self.nodes or dst not in self.nodes:
                raise CheckpointError(f"{self.xml_path}: an edge joins a layer that does not exist ({src} -> {dst})")
            ports[dst][int(edge.get("to-port"))] = (src, int(edge.get("from-port")))
        for node_id, by_port in ports.items():
            self.nodes[node_id].inputs = [by_port[p] for p in sorted(by_port)]

    def _where(self, node: IRNode) -> str:
        return f"{self.xml_path}: layer {node.name!r} (id {node.id}, {node.type})"

    def _check_constant(self, node: IRNode) -> None:
        where = self._where(node)
        kind = node.attrs.get("element_type")
        if kind not in DTYPES:
            raise CheckpointError(f"{where}: element type {kind!r} is not one of {sorted(DTYPES)}")
        shape = _shape(node.attrs.get("shape", ""), where)
        try:
            offset, size = int(node.attrs["offset"]), int(node.attrs["size"])
        except (KeyError, ValueError):
            raise CheckpointError(f"{where}: a constant needs whole-number 'offset' and 'size'") from None
        expected = math.prod(shape) * np.dtype(DTYPES[kind]).itemsize
        if size != expected:
            raise CheckpointError(f"{where}: {size} bytes for a {kind} constant of shape {list(shape)} ({expected})")
        if offset < 0 or offset + size > len(self.blob):
            raise CheckpointError(
                f"{where}: bytes {offset}..{offset + size} lie past the end of {self.bin_path} "
                f"({len(self.blob)} bytes): the file is truncated; fetch it again"
            )

    def node(self, node_id: str) -> IRNode:
        return self.nodes[node_id]

    def producer(self, node: IRNode, port: int) -> IRNode:
        """The layer feeding input ``port`` of ``node``."""
        if port >= len(node.inputs):
            raise CheckpointError(f"{self._where(node)}: has no input port {port}")
        return self.nodes[node.inputs[port][0]]

    def output_port_of(self, node: IRNode, port: int) -> int:
        return node.inputs[port][1]

    def constant(self, node: IRNode) -> np.ndarray:
        """A constant's value (a copy), entered in the ledger of constants read."""
        if node.type != "Const":
            raise CheckpointError(f"{self._where(node)}: a constant was expected here")
        offset, size = int(node.attrs["offset"]), int(node.attrs["size"])
        dtype = DTYPES[node.attrs["element_type"]]
        shape = _shape(node.attrs.get("shape", ""), self._where(node))
        self.read.add(node.id)
        return (
            np.frombuffer(self.blob, dtype, count=size // np.dtype(dtype).itemsize, offset=offset).reshape(shape).copy()
        )

    def of_type(self, kind: str) -> list[IRNode]:
        return [n for n in self.nodes.values() if n.type == kind]

    def single(self, kind: str) -> IRNode:
        found = self.of_type(kind)
        if len(found) != 1:
            raise CheckpointError(f"{self.xml_path}: {len(found)} layers of type {kind}, expected exactly one")
        return found[0]

    def unread_constants(self) -> list[IRNode]:
        return [n for n in self.nodes.values() if n.type == "Const" and n.id not in self.read]

    def describe(self, node: IRNode) -> str:
        return self._where(node)
