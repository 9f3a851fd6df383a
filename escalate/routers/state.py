"""A fitted router saved as data: `state.json` (names and numbers) and `arrays.npz` (numpy arrays), never code.

A bundle's router comes from a registry anyone with write access can change, so loading it must not be
able to run code. The state is the router's attributes, walked recursively: numbers, strings, lists,
tuples, dicts and slices go to JSON, every numpy array or scalar to the npz (read so that an object
array is refused, never deserialized), and an object only when its class is on one explicit
list (the registered routers, the probe's Selection and the scikit-learn estimators they fit), rebuilt
without calling its constructor, as the fitted object was. A fitted grid search is saved as the
estimator it chose, which is what scores. A router that holds a checkpoint keeps its path as data; a
bundle re-points it at its own copy (Router.bind_slm).
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.compose import ColumnTransformer
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV
from sklearn.neighbors import KNeighborsClassifier
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import LabelBinarizer, StandardScaler

from escalate.routers.base import Router
from escalate.routers.pik_probe import Selection
from escalate.routers.registry import ROUTERS

STATE_FILE = "state.json"
ARRAYS_FILE = "arrays.npz"
FORMAT_VERSION = 1
# The only classes a state may name; anything else is refused on save and on load.
CLASSES: dict[str, type] = {cls.__name__: cls for cls in (
    *ROUTERS.values(), Selection, LogisticRegression, StandardScaler, PCA, Pipeline, ColumnTransformer,
    KNeighborsClassifier, MLPClassifier, LabelBinarizer,
)}
# Training state that scoring never reads: the optimizer's moments and the RNG continue a fit only.
SKIPPED = {"MLPClassifier": frozenset({"_optimizer", "_random_state"})}


class RouterStateError(ValueError):
    """A router state that cannot be saved or loaded as data; the message names the file or attribute."""


def save_router(router: Router, directory: Path) -> Path:
    """Write `router`'s state under `directory` (created); return the directory."""
    arrays: dict[str, np.ndarray] = {}
    state = {"format_version": FORMAT_VERSION, "router": router.name,
             "state": _encode(router, router.name, arrays)}
    directory.mkdir(parents=True, exist_ok=True)
    (directory / STATE_FILE).write_text(json.dumps(state, indent=1))
    np.savez(directory / ARRAYS_FILE, **arrays)
    return directory


def load_router(directory: Path) -> Router:
    """The router saved in `directory`; RouterStateError naming the file when it is not a state this writes."""
    state_path, arrays_path = directory / STATE_FILE, directory / ARRAYS_FILE
    try:
        state = json.loads(state_path.read_text())
        with np.load(arrays_path, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile) as exc:  # an object array or a non-npz file: ValueError
        raise RouterStateError(f"router state in {directory} unreadable: {type(exc).__name__}: {exc}") from None
    if not isinstance(state, dict) or state.get("format_version") != FORMAT_VERSION:
        raise RouterStateError(f"{state_path}: not a router state of format {FORMAT_VERSION}")
    name = state.get("router")
    if not isinstance(name, str) or name not in ROUTERS:
        raise RouterStateError(f"{state_path}: unknown router {name!r}")
    try:
        router = _decode(state.get("state"), arrays, state_path)
    except (TypeError, AttributeError) as exc:  # a node of the right tag with the wrong shape
        raise RouterStateError(f"{state_path}: malformed state: {type(exc).__name__}: {exc}") from None
    if type(router) is not ROUTERS[name]:
        raise RouterStateError(f"{state_path}: says router {name!r} but holds a {type(router).__name__}")
    return router


def _encode(value: Any, where: str, arrays: dict[str, np.ndarray]) -> Any:
    """`value` as JSON, its arrays added to `arrays`; `where` names it in errors (router.attr[i]...)."""
    if isinstance(value, (np.ndarray, np.generic)):  # first: np.float64 is also a float
        array = np.asarray(value)
        if array.dtype.hasobject:
            raise RouterStateError(f"{where} is an object array, which cannot be stored as data")
        key = f"a{len(arrays)}"
        arrays[key] = array
        return {"array" if isinstance(value, np.ndarray) else "scalar": key}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, list):
        return [_encode(v, f"{where}[{i}]", arrays) for i, v in enumerate(value)]
    if isinstance(value, tuple):
        return {"tuple": [_encode(v, f"{where}[{i}]", arrays) for i, v in enumerate(value)]}
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            raise RouterStateError(f"{where} is a dict with keys that are not strings")
        return {"dict": {k: _encode(v, f"{where}[{k!r}]", arrays) for k, v in value.items()}}
    if isinstance(value, slice):
        return {"slice": [value.start, value.stop, value.step]}
    if isinstance(value, GridSearchCV):
        return _encode(value.best_estimator_, where, arrays)
    cls = type(value)
    if CLASSES.get(cls.__name__) is not cls:
        raise RouterStateError(f"{where} holds a {cls.__module__}.{cls.__qualname__}, which router state "
                               "cannot store as data (add the class to escalate.routers.state.CLASSES if it is)")
    skipped = SKIPPED.get(cls.__name__, frozenset())
    return {"object": cls.__name__, "attrs": {k: _encode(v, f"{where}.{k}", arrays)
                                              for k, v in vars(value).items() if k not in skipped}}


def _decode(node: Any, arrays: dict[str, np.ndarray], source: Path) -> Any:
    """The value `node` (from _encode) stands for; only CLASSES are instantiated, and none by its constructor."""
    if node is None or isinstance(node, (bool, int, float, str)):
        return node
    if isinstance(node, list):
        return [_decode(v, arrays, source) for v in node]
    if not isinstance(node, dict) or len(node) not in (1, 2):
        raise RouterStateError(f"{source}: unexpected node {str(node)[:80]!r}")
    if "array" in node or "scalar" in node:
        key = node.get("array", node.get("scalar"))
        if key not in arrays:
            raise RouterStateError(f"{source}: array {key!r} is not in {ARRAYS_FILE}")
        return arrays[key] if "array" in node else arrays[key][()]
    if "tuple" in node:
        return tuple(_decode(v, arrays, source) for v in node["tuple"])
    if "dict" in node:
        return {k: _decode(v, arrays, source) for k, v in node["dict"].items()}
    if "slice" in node:
        return slice(*node["slice"])
    if "object" in node and node["object"] in CLASSES and isinstance(node.get("attrs"), dict):
        obj = object.__new__(CLASSES[node["object"]])
        obj.__dict__.update({k: _decode(v, arrays, source) for k, v in node["attrs"].items()})
        return obj
    raise RouterStateError(f"{source}: unexpected node {str(node)[:80]!r} (an object must be one of "
                           f"escalate.routers.state.CLASSES)")
