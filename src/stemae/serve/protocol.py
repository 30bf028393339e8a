"""The Open Inference Protocol's (KServe v2) inference request and
response bodies: JSON tensors and the binary tensor data extension.

A body with binary tensors is a JSON header of ``Inference-Header-Content-Length``
bytes followed by the raw little-endian tensors, in the order the header
lists them, each of ``parameters.binary_data_size`` bytes. Outputs are sent
binary when the request asks for it (an output's ``binary_data`` parameter,
or the request's ``binary_data_output``), as JSON lists otherwise.
"""

from __future__ import annotations

import json

import numpy as np

from stemae.serve.models import DATATYPES, Model

#: Header giving the length of the JSON part of a body with binary tensors.
HEADER_LENGTH = "Inference-Header-Content-Length"


class ProtocolError(ValueError):
    """A request the server answers with a 4xx status and this message."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def decode_request(body: bytes, header_length: int | None, model: Model, max_batch: int) -> tuple[dict, np.ndarray]:
    """The request's JSON and its one input, checked against the model.

    Parameters
    ----------
    body : the whole request body
    header_length : the ``Inference-Header-Content-Length`` header, or None
    model : the model asked for (its input's name, datatype and shape)
    max_batch : the largest batch a request may hold

    Returns
    -------
    request : the JSON part
    x : (B, ...) the input, in the model's datatype

    Raises
    ------
    ProtocolError
        Unreadable JSON, a missing or unknown input, a wrong datatype or
        shape, binary data of the wrong size, or a batch over ``max_batch``.
    """
    n = len(body) if header_length is None else header_length
    if not 0 <= n <= len(body):
        raise ProtocolError(f"{HEADER_LENGTH} {n} does not fit a body of {len(body)} bytes")
    try:
        request = json.loads(body[:n])
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ProtocolError(f"the request is not valid JSON: {e}") from None
    if not isinstance(request, dict) or not isinstance(request.get("inputs"), list) or not request["inputs"]:
        raise ProtocolError("the request needs an 'inputs' list")
    spec = model.inputs[0]
    binary, offset, x = body[n:], 0, None
    for item in request["inputs"]:
        if not isinstance(item, dict):
            raise ProtocolError("each input is an object with name, shape, datatype and data")
        size = (item.get("parameters") or {}).get("binary_data_size")
        if item.get("name") != spec.name:
            raise ProtocolError(f"model {model.name!r} has one input, {spec.name!r}; got {item.get('name')!r}")
        if item.get("datatype") != spec.datatype:
            raise ProtocolError(f"input {spec.name!r} is {spec.datatype}, got {item.get('datatype')!r}")
        shape = item.get("shape")
        if (not isinstance(shape, list) or len(shape) != len(spec.shape)
                or not all(isinstance(s, int) and s >= 0 for s in shape)
                or any(want != -1 and got != want for got, want in zip(shape, spec.shape))):
            raise ProtocolError(f"input {spec.name!r} has shape {list(spec.shape)} (-1: any batch), got {shape}")
        if shape[0] > max_batch:
            raise ProtocolError(f"a request holds at most {max_batch} items (the limit), got {shape[0]}", 413)
        dtype = np.dtype(DATATYPES[spec.datatype])
        count = int(np.prod(shape))
        if size is not None:
            if not isinstance(size, int) or size != count * dtype.itemsize or offset + size > len(binary):
                raise ProtocolError(f"input {spec.name!r}: binary_data_size {size!r} does not match its shape "
                                    f"{shape} of {spec.datatype} or the {len(binary) - offset} bytes left")
            x = np.frombuffer(binary, dtype, count, offset).reshape(shape)
            offset += size
        else:
            try:
                x = np.asarray(item.get("data"), dtype=dtype)
            except (TypeError, ValueError) as e:
                raise ProtocolError(f"input {spec.name!r}: data are not {spec.datatype} numbers: {e}") from None
            if x.size != count:
                raise ProtocolError(f"input {spec.name!r}: {x.size} values for shape {shape}")
            x = x.reshape(shape)
    if offset != len(binary):
        raise ProtocolError(f"{len(binary) - offset} bytes of binary data belong to no input")
    return request, x


def requested_outputs(request: dict, model: Model) -> list[tuple[str, bool]]:
    """The outputs to return and whether each goes binary: those the
    request names (all when it names none)."""
    default = bool((request.get("parameters") or {}).get("binary_data_output", False))
    names = {t.name for t in model.outputs}
    asked = request.get("outputs")
    if asked is None:
        return [(t.name, default) for t in model.outputs]
    if not isinstance(asked, list) or not all(isinstance(o, dict) for o in asked):
        raise ProtocolError("'outputs' is a list of objects with a name")
    out = []
    for o in asked:
        if o.get("name") not in names:
            raise ProtocolError(f"model {model.name!r} has no output {o.get('name')!r}; it has {sorted(names)}")
        out.append((o["name"], bool((o.get("parameters") or {}).get("binary_data", default))))
    return out


def encode_response(request: dict, model: Model, results: dict[str, np.ndarray]) -> tuple[bytes, int | None]:
    """The response body and, when it holds binary tensors, the length of
    its JSON part (for ``Inference-Header-Content-Length``)."""
    dtypes = {t.name: t.datatype for t in model.outputs}
    outputs, blobs = [], []
    for name, binary in requested_outputs(request, model):
        a = results[name]
        entry = {"name": name, "datatype": dtypes[name], "shape": list(a.shape)}
        if binary:
            blob = np.ascontiguousarray(a, DATATYPES[dtypes[name]]).tobytes()
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = a.ravel().tolist()
        outputs.append(entry)
    response = {"model_name": model.name, "model_version": model.version, "outputs": outputs}
    if "id" in request:
        response["id"] = request["id"]
    head = json.dumps(response).encode()
    return (head + b"".join(blobs), len(head)) if blobs else (head, None)
