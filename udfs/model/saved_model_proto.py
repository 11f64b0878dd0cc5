"""The few SavedModel protobuf messages the driver needs to read a signature, without TensorFlow.

Importing TensorFlow costs the driver seconds; `saved_model.pb` is a plain protobuf, so
the messages on the path to a signature's tensors are declared here with the `protobuf`
package alone: SavedModel -> MetaGraphDef -> signature_def -> SignatureDef -> TensorInfo
{name, dtype, tensor_shape} -> TensorShapeProto {dim {size}, unknown_rank}, and the object
graph's children names (MetaGraphDef -> object_graph_def -> nodes -> children {node_id,
local_name}: the stages of `model.placement: split`). Field numbers are TensorFlow's
(tensorflow/core/protobuf/meta_graph.proto, saved_model.proto, saved_object_graph.proto,
trackable_object_graph.proto, framework/tensor_shape.proto); the parser skips every field
not declared (the graph, functions, assets).
"""
from __future__ import annotations

from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

_F = descriptor_pb2.FieldDescriptorProto
_PACKAGE = "batchscore_savedmodel"

# TF DataType enum number -> TF dtype name (tensorflow/core/framework/types.proto);
# `_ref` variants are the number + 100.
DTYPE_NAMES: dict[int, str] = {
    1: "float32", 2: "float64", 3: "int32", 4: "uint8", 5: "int16", 6: "int8", 7: "string",
    8: "complex64", 9: "int64", 10: "bool", 11: "qint8", 12: "quint8", 13: "qint32", 14: "bfloat16",
    15: "qint16", 16: "quint16", 17: "uint16", 18: "complex128", 19: "float16", 20: "resource",
    21: "variant", 22: "uint32", 23: "uint64",
}


def dtype_name(number: int) -> str:
    """TF's name for a DataType number (`float32`, `string`, ...); unknown numbers read `dtype_<n>`."""
    if number > 100 and number - 100 in DTYPE_NAMES:
        return DTYPE_NAMES[number - 100] + "_ref"
    return DTYPE_NAMES.get(number, f"dtype_{number}")


def _field(msg: descriptor_pb2.DescriptorProto, name: str, number: int, ftype: int, *,
           label: int = _F.LABEL_OPTIONAL, type_name: str = "") -> None:
    f = msg.field.add(name=name, number=number, type=ftype, label=label)
    if type_name:
        f.type_name = f".{_PACKAGE}.{type_name}"


def _map_field(msg: descriptor_pb2.DescriptorProto, name: str, number: int, value_type: str) -> None:
    """A `map<string, value_type>` field: a repeated nested `<Name>Entry` message, as protoc makes it."""
    entry = msg.nested_type.add(name="".join(p.title() for p in name.split("_")) + "Entry")
    entry.options.map_entry = True
    _field(entry, "key", 1, _F.TYPE_STRING)
    _field(entry, "value", 2, _F.TYPE_MESSAGE, type_name=value_type)
    _field(msg, name, number, _F.TYPE_MESSAGE, label=_F.LABEL_REPEATED,
           type_name=f"{msg.name}.{entry.name}")


def _file() -> descriptor_pb2.FileDescriptorProto:
    fd = descriptor_pb2.FileDescriptorProto(name="batchscore_savedmodel.proto", package=_PACKAGE, syntax="proto3")
    shape = fd.message_type.add(name="TensorShapeProto")
    dim = shape.nested_type.add(name="Dim")
    _field(dim, "size", 1, _F.TYPE_INT64)
    _field(dim, "name", 2, _F.TYPE_STRING)
    _field(shape, "dim", 2, _F.TYPE_MESSAGE, label=_F.LABEL_REPEATED, type_name="TensorShapeProto.Dim")
    _field(shape, "unknown_rank", 3, _F.TYPE_BOOL)
    info = fd.message_type.add(name="TensorInfo")
    _field(info, "name", 1, _F.TYPE_STRING)
    _field(info, "dtype", 2, _F.TYPE_INT32)  # an enum on the wire is a varint: read as its number
    _field(info, "tensor_shape", 3, _F.TYPE_MESSAGE, type_name="TensorShapeProto")
    sig = fd.message_type.add(name="SignatureDef")
    _map_field(sig, "inputs", 1, "TensorInfo")
    _map_field(sig, "outputs", 2, "TensorInfo")
    _field(sig, "method_name", 3, _F.TYPE_STRING)
    ref = fd.message_type.add(name="ObjectReference")  # TrackableObject.ObjectReference
    _field(ref, "node_id", 1, _F.TYPE_INT32)
    _field(ref, "local_name", 2, _F.TYPE_STRING)
    obj = fd.message_type.add(name="SavedObject")
    _field(obj, "children", 1, _F.TYPE_MESSAGE, label=_F.LABEL_REPEATED, type_name="ObjectReference")
    graph = fd.message_type.add(name="SavedObjectGraph")
    _field(graph, "nodes", 1, _F.TYPE_MESSAGE, label=_F.LABEL_REPEATED, type_name="SavedObject")
    meta = fd.message_type.add(name="MetaGraphDef")
    _map_field(meta, "signature_def", 5, "SignatureDef")
    _field(meta, "object_graph_def", 7, _F.TYPE_MESSAGE, type_name="SavedObjectGraph")
    saved = fd.message_type.add(name="SavedModel")
    _field(saved, "saved_model_schema_version", 1, _F.TYPE_INT64)
    _field(saved, "meta_graphs", 2, _F.TYPE_MESSAGE, label=_F.LABEL_REPEATED, type_name="MetaGraphDef")
    return fd


_pool = descriptor_pool.DescriptorPool()
_pool.Add(_file())
SavedModel: Any = message_factory.GetMessageClass(_pool.FindMessageTypeByName(f"{_PACKAGE}.SavedModel"))


def parse_saved_model(data: bytes) -> Any:
    """A `SavedModel` message (only the signature path filled in) from `saved_model.pb` bytes.

    Raises:
        google.protobuf.message.DecodeError: the bytes are not a SavedModel.
    """
    sm = SavedModel()
    sm.ParseFromString(data)
    return sm
