"""Read YAML as YAML 1.2 reads numbers: `1e12` and `3.35e3` are floats, not text.

PyYAML follows YAML 1.1, where a float needs a dot ('1.0e12'), so `nodes: 1e12` or
`hidden_size: 8e3` used to arrive as the string '1e12'. Every loader of user YAML uses this one.
"""

from __future__ import annotations

import re

import yaml


class Loader(yaml.SafeLoader):
    """SafeLoader plus YAML 1.2 exponent floats without a dot."""


Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def load_yaml(text: str):
    """`yaml.safe_load` with YAML 1.2 floats; raises yaml.YAMLError like it."""
    return yaml.load(text, Loader=Loader)  # noqa: S506 -- a SafeLoader subclass
