"""`key=value` command-line overrides of a LazyConfig: unknown keys and values of the wrong type are
rejected by name (omegaconf would add the key, or the value would fail deep inside training)."""
import difflib
import inspect
from typing import List

from omegaconf import DictConfig, ListConfig, OmegaConf

from detectron2.config import LazyConfig

__all__ = ["apply_overrides", "UnknownConfigKeyError", "ConfigOverrideError"]

_MISSING = object()


class UnknownConfigKeyError(KeyError):
    def __str__(self):  # KeyError would print the repr (quoted, with escaped newlines)
        return str(self.args[0])


class ConfigOverrideError(ValueError):
    """An override that is not `key=value`, or whose value has the wrong type for its key."""


def _all_keys(cfg, prefix="") -> List[str]:
    keys = []
    if isinstance(cfg, DictConfig):
        for k in cfg.keys():
            full = f"{prefix}{k}"
            keys.append(full)
            v = cfg._get_node(k)
            if isinstance(v, (DictConfig, ListConfig)):
                keys.extend(_all_keys(v, full + "."))
    return keys


def _target_parameters(node):
    """The signature parameters of a LazyCall node's target, or None."""
    target = node.get("_target_") if isinstance(node, DictConfig) else None
    if target is None:
        return None
    if isinstance(target, str):
        from detectron2.utils.registry import locate

        try:
            target = locate(target)
        except Exception:
            return None
    try:
        return inspect.signature(target).parameters
    except (TypeError, ValueError):
        return None


def _target_accepts(node, name: str) -> bool:
    """Whether a LazyCall node's target takes keyword `name` (a default not written in the config)."""
    params = _target_parameters(node)
    if params is None:
        return False
    return name in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def _current_value(cfg, key: str):
    """The value `key` has before the override: in the config, else its target's default."""
    value = OmegaConf.select(cfg, key, default=_MISSING)
    if value is not _MISSING:
        return value
    parent_key, _, name = key.rpartition(".")
    parent = OmegaConf.select(cfg, parent_key, default=_MISSING) if parent_key else cfg
    params = _target_parameters(parent) if parent is not _MISSING else None
    if params and name in params and params[name].default is not inspect.Parameter.empty:
        return params[name].default
    return _MISSING


_KINDS = (  # (what the old value is, what the new one may be, how to say it)
    (bool, (bool,), "true or false"),
    (int, (int,), "an integer"),
    (float, (int, float), "a number"),
    ((list, tuple, ListConfig), (list, tuple, ListConfig), "a list, e.g. [1,2]"),
)


def _check_type(item: str, key: str, old, new) -> None:
    if old is _MISSING or old is None or new is None:
        return
    for old_types, new_types, expected in _KINDS:
        if isinstance(old, old_types):
            if isinstance(new, new_types) and not (isinstance(new, bool) and bool not in new_types):
                return
            raise ConfigOverrideError(
                f"Override '{item}': {key} must be {expected} (it is {old!r} in the config), "
                f"got the {type(new).__name__} {new!r}."
            )


def _check_key(cfg, key: str) -> None:
    if OmegaConf.select(cfg, key, default=_MISSING) is not _MISSING:
        return
    parent_key, _, name = key.rpartition(".")
    parent = OmegaConf.select(cfg, parent_key, default=_MISSING) if parent_key else cfg
    if parent is not _MISSING and _target_accepts(parent, name):
        return  # a constructor argument left at its default in the config file
    candidates = _all_keys(cfg)
    close = difflib.get_close_matches(key, candidates, n=5, cutoff=0.6)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    if parent is _MISSING:
        where = f"'{parent_key}' does not exist in the config"
    else:
        where = f"'{parent_key or '<root>'}' has no key '{name}'"
    raise UnknownConfigKeyError(f"Unknown config key '{key}' in override '{key}=...': {where}.{hint}")


def apply_overrides(cfg, overrides: List[str]):
    """Like LazyConfig.apply_overrides, but an override whose key is neither in the config nor an
    argument of the LazyCall target it belongs to raises UnknownConfigKeyError naming the key and
    the closest existing keys (omegaconf would silently add it), and a value whose type does not fit
    the current one (an int, float, bool or list; e.g. train.max_iter=ten) raises ConfigOverrideError
    naming the key, the value and the expected type. None and strings accept anything."""
    old = {}
    for item in overrides:
        if "=" not in item:
            hint = " Flags (--resume, --num-gpus N ...) go before the overrides." if item.startswith("-") else ""
            raise ConfigOverrideError(
                f"Override '{item}' is not of the form key=value (e.g. train.max_iter=1000).{hint}"
            )
        key = item.split("=", 1)[0].strip().lstrip("+~")
        _check_key(cfg, key)
        old[item] = (key, _current_value(cfg, key))
    cfg = LazyConfig.apply_overrides(cfg, overrides)
    for item, (key, value) in old.items():
        _check_type(item, key, value, OmegaConf.select(cfg, key, default=None))
    return cfg
