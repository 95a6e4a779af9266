"""YAML reading that refuses a key written twice in one mapping.

PyYAML keeps the last of two equal keys without a word, so a config with `stage2:` twice, or
`cv_folds:` edited in two places, silently runs with one of them. Configs and the run folder's
config.yaml are read through `load_yaml`, which names the key and the line instead.
"""

from __future__ import annotations

import yaml


class _UniqueKeyLoader(yaml.SafeLoader):
    pass


def _mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        try:
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    "while reading a mapping", node.start_mark,
                    f"the key {key!r} appears twice (first on line {seen[key] + 1}); keep one", key_node.start_mark)
            seen[key] = key_node.start_mark.line
        except TypeError:  # an unhashable key: let PyYAML report it
            pass
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)


def load_yaml(text: str):
    """yaml.safe_load, except that a duplicated mapping key raises a yaml.YAMLError naming it and its lines."""
    return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
