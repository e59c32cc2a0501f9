"""Open Inference Protocol v2 (KServe / Triton HTTP): tensors in JSON, and the binary tensor
data extension (a JSON header of ``Inference-Header-Content-Length`` bytes, then the raw
tensors back to back), which tritonclient uses by default."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

DATATYPES = {"BOOL": "bool", "UINT8": "uint8", "INT8": "int8", "INT16": "int16", "INT32": "int32",
             "INT64": "int64", "FP16": "float16", "FP32": "float32", "FP64": "float64"}
TO_DATATYPE = {np.dtype(v).name: k for k, v in DATATYPES.items()}
HEADER_LENGTH = "inference-header-content-length"
MAX_JSON_VALUES = 1 << 31             # far past any body limit: beyond it a shape cannot match its data


class ProtocolError(Exception):
    """A request the protocol cannot accept: answered with 400 and a JSON error."""


@dataclass
class InferRequest:
    inputs: dict[str, np.ndarray]
    outputs: list[str] | None            # None: every output
    binary_outputs: set[str]
    request_id: str | None


def parse_json(body: bytes):
    """A request body as JSON; anything a JSON reader refuses (or cannot nest that deep) is a 400."""
    try:
        return json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"the request is not valid JSON: {exc}") from None
    except RecursionError:
        raise ProtocolError("the request's JSON is nested too deeply") from None


def datatype_of(dtype: np.dtype) -> str:
    return TO_DATATYPE.get(np.dtype(dtype).name, "FP32")


def parse_infer(body: bytes, header_length: str | None) -> InferRequest:
    if header_length is not None:
        try:
            length = int(header_length)
        except ValueError:
            raise ProtocolError("Inference-Header-Content-Length must be a whole number") from None
        if not 0 < length <= len(body):
            raise ProtocolError("Inference-Header-Content-Length is past the end of the body")
        header, binary = body[:length], body[length:]
    else:
        header, binary = body, b""
    request = parse_json(header)
    if not isinstance(request, dict) or not isinstance(request.get("inputs"), list) or not request["inputs"]:
        raise ProtocolError("the request must be an object with a non-empty 'inputs' list")
    inputs, offset = {}, 0
    for index, item in enumerate(request["inputs"]):
        tensor, offset = _tensor(item, index, binary, offset)
        if item["name"] in inputs:
            raise ProtocolError(f"input '{item['name']}' is given twice")
        inputs[item["name"]] = tensor
    if offset != len(binary):
        raise ProtocolError(f"the body has {len(binary) - offset} bytes of binary data no input claims")
    outputs, binary_outputs = None, set()
    default_binary = bool(_parameters(request, "the request").get("binary_data_output", False))
    if "outputs" in request:
        if not isinstance(request["outputs"], list):
            raise ProtocolError("'outputs' must be a list")
        outputs = []
        for item in request["outputs"]:
            if not isinstance(item, dict) or not isinstance(item.get("name"), str):
                raise ProtocolError("each requested output needs a 'name'")
            outputs.append(item["name"])
            if _parameters(item, f"output '{item['name']}'").get("binary_data", default_binary):
                binary_outputs.add(item["name"])
    elif default_binary:
        binary_outputs = {"*"}
    request_id = request.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise ProtocolError(f"'id' must be a string (the protocol's type; got {type(request_id).__name__})")
    return InferRequest(inputs, outputs, binary_outputs, request_id)


# The JSON value kinds each datatype takes (numpy kinds): integers for integer tensors,
# booleans for BOOL, any number for floating point.
_KINDS = {"i": "iu", "u": "iu", "b": "b", "f": "iuf"}
_NAMES = {"i": "integer", "u": "integer", "f": "fractional", "U": "string", "b": "boolean",
          "O": "mixed or out-of-range"}


def _holds_bool(data) -> bool:
    if isinstance(data, bool):
        return True
    return isinstance(data, list) and any(_holds_bool(value) for value in data)


def _parameters(item: dict, where: str) -> dict:
    parameters = item.get("parameters")
    if parameters is None:
        return {}
    if not isinstance(parameters, dict):
        raise ProtocolError(f"{where}: 'parameters' must be an object")
    return parameters


def _tensor(item: Any, index: int, binary: bytes, offset: int) -> tuple[np.ndarray, int]:
    if not isinstance(item, dict) or not isinstance(item.get("name"), str):
        raise ProtocolError(f"input #{index} needs a 'name'")
    name = item["name"]
    shape, datatype = item.get("shape"), item.get("datatype")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise ProtocolError(f"input '{name}': 'shape' must be a list of whole numbers >= 0")
    if datatype not in DATATYPES:
        raise ProtocolError(f"input '{name}': datatype '{datatype}' is not one of {', '.join(DATATYPES)}")
    dtype = np.dtype(DATATYPES[datatype])
    count = math.prod(shape)          # Python integers: a shape whose product overflows int64 stays exact
    size = _parameters(item, f"input '{name}'").get("binary_data_size")
    if size is None and "data" in item and count > MAX_JSON_VALUES:
        raise ProtocolError(f"input '{name}': shape {shape} holds {count} values, more than a JSON request carries")
    if size is not None:
        if not isinstance(size, int) or size != count * dtype.itemsize or offset + size > len(binary):
            raise ProtocolError(f"input '{name}': binary_data_size does not match its shape and datatype")
        array = np.frombuffer(binary[offset:offset + size], dtype=dtype).reshape(shape)
        return array.copy(), offset + size
    data = item.get("data")
    if data is None:
        raise ProtocolError(f"input '{name}' has no 'data'")
    try:
        given = np.asarray(data)          # what the JSON holds: 101.7 or "101" is not an INT64
        # numpy reads [101, true] as integers: a boolean among numbers is looked for itself
        kind = "b" if dtype.kind != "b" and _holds_bool(data) else given.dtype.kind
        if given.size and kind not in _KINDS[dtype.kind]:
            what = "NaN or infinite" if kind == "f" and not np.isfinite(given).all() else _NAMES.get(kind, "other")
            raise ProtocolError(f"input '{name}': data holds {what} values, not {datatype}")
        array = np.asarray(data, dtype=dtype)
    except (ValueError, TypeError, OverflowError) as exc:
        raise ProtocolError(f"input '{name}': data is not {datatype}: {exc}") from None
    if array.size != count:
        raise ProtocolError(f"input '{name}': {array.size} values for shape {shape}")
    return array.reshape(shape), offset


def encode_infer(model_name: str, outputs: dict[str, np.ndarray], binary_outputs: set[str],
                 request_id: str | None) -> tuple[bytes, dict[str, str]]:
    """The response body and its extra headers."""
    tensors, chunks = [], []
    for name, value in outputs.items():
        value = np.ascontiguousarray(value)
        entry: dict[str, Any] = {"name": name, "datatype": datatype_of(value.dtype), "shape": list(value.shape)}
        if name in binary_outputs or "*" in binary_outputs:
            raw = value.tobytes()
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            if value.dtype.kind == "f" and not np.isfinite(value).all():
                raise ProtocolError(f"output '{name}' holds NaN or infinite values, which JSON cannot carry; "
                                    "ask for it as binary data")
            entry["data"] = value.reshape(-1).tolist()
        tensors.append(entry)
    response: dict[str, Any] = {"model_name": model_name, "model_version": "1", "outputs": tensors}
    if request_id is not None:
        response["id"] = request_id
    header = json.dumps(response, separators=(",", ":")).encode()
    if not chunks:
        return header, {"content-type": "application/json"}
    return header + b"".join(chunks), {"content-type": "application/octet-stream",
                                       HEADER_LENGTH: str(len(header))}
